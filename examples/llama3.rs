//! Llama-3-8B's attention in a serving simulation: requests of varied
//! lengths through a paged KV cache of limited capacity, decode step by
//! step, sampled checks against the reference. `--help` for the options.
//!
//! Run: `cargo run --release --example llama3 -- --backend cpu`

use attnforge::prelude::*;
use half::f16;

mod common;

/// Llama-3-8B: 8 KV heads of 128, f16.
#[kv_layout(page_size = 16, kv_heads = 8, head_dim = 128, dtype = f16, order = NHD)]
pub struct Llama3Kv;

/// 32 query heads (GQA groups of 4), causal.
#[attention(kv = Llama3Kv, q_heads = 32, causal)]
pub struct Llama3;

fn main() {
    common::main::<f16>("Llama-3-8B", 32, &[Llama3::SPEC]);
}
