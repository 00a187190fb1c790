use attnforge::prelude::*;

#[kv_layout(page_size = 16, kv_heads = 8, head_dim = 128, dtype = f16, kv_scale = per_head)]
pub struct Kv;

#[kv_layout(page_size = 16, kv_heads = 8, head_dim = 128, dtype = fp8_e4m3, kv_scale = per_token)]
pub struct Fp8Kv;

fn main() {}
