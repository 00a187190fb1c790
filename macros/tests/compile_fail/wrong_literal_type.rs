use attnforge::prelude::*;

#[kv_layout(page_size = "16", kv_heads = 8.0, head_dim = 128, dtype = "f16")]
pub struct Kv;

fn main() {}
