use attnforge::prelude::*;

pub struct NotALayout;

#[attention(kv = NotALayout, q_heads = 32)]
pub struct Attn;

fn main() {}
