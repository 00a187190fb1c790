use attnforge::prelude::*;

#[kv_layout(page_size = 16)]
pub struct Kv;

#[attention(causal)]
pub struct Attn;

fn main() {}
