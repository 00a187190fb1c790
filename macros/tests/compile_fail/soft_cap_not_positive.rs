use attnforge::prelude::*;

#[kv_layout(page_size = 16, kv_heads = 8, head_dim = 256, dtype = bf16)]
pub struct Kv;

#[attention(kv = Kv, q_heads = 16, logits_soft_cap = -50.0)]
pub struct Attn;

fn main() {}
