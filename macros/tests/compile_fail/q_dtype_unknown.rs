use attnforge::prelude::*;

#[kv_layout(page_size = 16, kv_heads = 2, head_dim = 64, dtype = f16)]
pub struct Kv;

#[attention(kv = Kv, q_heads = 4, q_dtype = fp8)]
pub struct Attn;

fn main() {}
