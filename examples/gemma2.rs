//! Gemma-2-9B's attention in a serving simulation: layers alternate
//! between a 4096-token sliding window (local) and the whole context
//! (global), both with logits soft-capped at 50. `--help` for the options.
//!
//! Run: `cargo run --release --example gemma2 -- --backend cpu`

use attnforge::prelude::*;
use half::bf16;

mod common;

/// Gemma-2-9B: 8 KV heads of 256, bf16.
#[kv_layout(page_size = 16, kv_heads = 8, head_dim = 256, dtype = bf16, order = NHD)]
pub struct Gemma2Kv;

/// Local layers: 16 query heads, window 4096, soft-cap 50.
#[attention(kv = Gemma2Kv, q_heads = 16, causal, sliding_window = 4096, logits_soft_cap = 50.0)]
pub struct Gemma2Local;

/// Global layers: the same without the window.
#[attention(kv = Gemma2Kv, q_heads = 16, causal, logits_soft_cap = 50.0)]
pub struct Gemma2Global;

fn main() {
    // Layer 0 is local, layer 1 global, and so on, as in the model. The
    // cache keeps every page (global layers need them all).
    common::main::<bf16>("Gemma-2-9B", 42, &[Gemma2Local::SPEC, Gemma2Global::SPEC]);
}
