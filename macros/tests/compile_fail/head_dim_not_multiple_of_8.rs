use attnforge::prelude::*;

#[kv_layout(page_size = 16, kv_heads = 8, head_dim = 100, dtype = f16)]
pub struct Kv;

fn main() {}
