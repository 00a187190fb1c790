//! Phi-3-mini's attention (MHA, head_dim 96, HND pages) in a serving
//! simulation. `--help` for the options.
//!
//! Run: `cargo run --release --example phi3 -- --backend cpu`

use attnforge::prelude::*;
use half::f16;

mod common;

/// Phi-3-mini: 32 KV heads of 96, f16, head-major pages.
#[kv_layout(page_size = 16, kv_heads = 32, head_dim = 96, dtype = f16, order = HND)]
pub struct Phi3Kv;

/// 32 query heads (one per KV head), causal.
#[attention(kv = Phi3Kv, q_heads = 32, causal)]
pub struct Phi3;

fn main() {
    common::main::<f16>("Phi-3-mini", 32, &[Phi3::SPEC]);
}
