//! Qwen2.5-7B's attention (GQA groups of 7) in a serving simulation.
//! `--help` for the options.
//!
//! Run: `cargo run --release --example qwen2_5 -- --backend cpu`

use attnforge::prelude::*;
use half::bf16;

mod common;

/// Qwen2.5-7B: 4 KV heads of 128, bf16.
#[kv_layout(page_size = 16, kv_heads = 4, head_dim = 128, dtype = bf16, order = NHD)]
pub struct QwenKv;

/// 28 query heads (GQA groups of 7), causal.
#[attention(kv = QwenKv, q_heads = 28, causal)]
pub struct Qwen;

fn main() {
    common::main::<bf16>("Qwen2.5-7B", 28, &[Qwen::SPEC]);
}
