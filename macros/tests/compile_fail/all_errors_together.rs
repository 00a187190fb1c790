use attnforge::prelude::*;

// Every problem of the item is reported in one go.
#[kv_layout(page_size = 0, kv_heads = 8, head_dim = 12, dtype = f8, order = NCHW, colour = 3)]
pub struct Kv;

fn main() {}
