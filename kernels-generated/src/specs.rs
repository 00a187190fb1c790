//! The bundled model specs, declared as model code declares them.
//!
//! Shapes are the models' published configurations. Where a model's weights
//! are bf16 its KV cache is bf16 here; the others use f16, and Phi-3 uses the
//! HND order, so the bundled set covers every dtype and order.

use attnforge_macros::{attention, kv_layout};

/// Llama-3-8B: 8 KV heads of 128.
#[kv_layout(page_size = 16, kv_heads = 8, head_dim = 128, dtype = f16, order = NHD)]
pub struct Llama3Kv;

/// Llama-3-8B: 32 query heads, GQA groups of 4.
#[attention(kv = Llama3Kv, q_heads = 32, causal, name = "llama3_8b")]
pub struct Llama3;

/// Mistral-7B: 8 KV heads of 128, bf16.
#[kv_layout(page_size = 16, kv_heads = 8, head_dim = 128, dtype = bf16, order = NHD)]
pub struct MistralKv;

/// Mistral-7B: 32 query heads, sliding window of 4096 tokens.
#[attention(kv = MistralKv, q_heads = 32, causal, sliding_window = 4096, name = "mistral_7b")]
pub struct Mistral;

/// Qwen2.5-7B: 4 KV heads of 128, bf16.
#[kv_layout(page_size = 16, kv_heads = 4, head_dim = 128, dtype = bf16, order = NHD)]
pub struct QwenKv;

/// Qwen2.5-7B: 28 query heads, GQA groups of 7.
#[attention(kv = QwenKv, q_heads = 28, causal, name = "qwen2_5_7b")]
pub struct Qwen;

/// Gemma-2-9B: 8 KV heads of 256, bf16.
#[kv_layout(page_size = 16, kv_heads = 8, head_dim = 256, dtype = bf16, order = NHD)]
pub struct Gemma2Kv;

/// Gemma-2-9B global layers: 16 query heads, logits soft-capped at 50.
#[attention(kv = Gemma2Kv, q_heads = 16, causal, logits_soft_cap = 50.0, name = "gemma2_9b_global")]
pub struct Gemma2Global;

/// Gemma-2-9B local layers (every other layer): as global, within a 4096-token window.
#[attention(
    kv = Gemma2Kv,
    q_heads = 16,
    causal,
    logits_soft_cap = 50.0,
    sliding_window = 4096,
    name = "gemma2_9b_local"
)]
pub struct Gemma2Local;

/// Phi-3-mini: 32 KV heads of 96, HND order.
#[kv_layout(page_size = 16, kv_heads = 32, head_dim = 96, dtype = f16, order = HND)]
pub struct Phi3Kv;

/// Phi-3-mini: 32 query heads (MHA).
#[attention(kv = Phi3Kv, q_heads = 32, causal, name = "phi3_mini")]
pub struct Phi3;

/// SmolLM2-135M: 3 KV heads of 64.
#[kv_layout(page_size = 16, kv_heads = 3, head_dim = 64, dtype = f16, order = NHD, name = "smollm2_kv")]
pub struct SmolLM2Kv;

/// SmolLM2-135M: 9 query heads, GQA groups of 3; f32 queries and outputs
/// over the f16 cache, as `examples/smollm2.rs` runs it.
#[attention(kv = SmolLM2Kv, q_heads = 9, causal, q_dtype = f32, name = "smollm2_135m")]
pub struct SmolLM2;
