use attnforge::prelude::*;

#[kv_layout(page_size = 16, kv_heads = 8, head_dim = 128, dtype = f16)]
pub struct Kv;

#[attention(kv = Kv, q_heads = 32, sinks = 1, alibi = "given")]
pub struct Attn;

fn main() {}
