use attnforge::prelude::*;

#[kv_layout(page_size = 16, kv_heads = 8, head_dim = 128, dtype = fp8_e4m3)]
pub struct Fp8Kv;

#[attention(kv = Fp8Kv, q_heads = 32)]
pub struct Attn;

fn main() {}
