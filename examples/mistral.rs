//! Mistral-7B's attention (sliding window of 4096) in a serving simulation.
//! `--help` for the options.
//!
//! Run: `cargo run --release --example mistral -- --backend cpu`

use attnforge::prelude::*;
use half::bf16;

mod common;

/// Mistral-7B: 8 KV heads of 128, bf16.
#[kv_layout(page_size = 16, kv_heads = 8, head_dim = 128, dtype = bf16, order = NHD)]
pub struct MistralKv;

/// 32 query heads, each seeing the 4096 most recent tokens.
#[attention(kv = MistralKv, q_heads = 32, causal, sliding_window = 4096)]
pub struct Mistral;

fn main() {
    common::main::<bf16>("Mistral-7B", 32, &[Mistral::SPEC]);
}
