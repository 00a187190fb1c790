use attnforge::prelude::*;

#[kv_layout(page_size = 16, kv_heads = 8, head_dim = 128, dtype = f16)]
pub struct Kv;

// 12 query heads cannot be split evenly over 8 KV heads.
#[attention(kv = Kv, q_heads = 12, causal)]
pub struct Attn;

fn main() {}
