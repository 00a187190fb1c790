// Every key of both attributes, accepted together.
use attnforge::prelude::*;

#[kv_layout(page_size = 1, kv_heads = 1, head_dim = 8, dtype = f32, order = HND, name = "tiny")]
pub struct Tiny;

#[attention(
    kv = Tiny,
    q_heads = 4,
    scale = 0.5,
    causal = false,
    sliding_window = 7,
    logits_soft_cap = 30,
    q_dtype = f16,
    alibi = given,
    sinks,
    name = "tiny_mqa"
)]
pub struct TinyMqa;

#[attention(kv = Tiny, q_heads = 2, causal, alibi, sinks = false)]
pub struct TinyAlibi;

mod nested {
    use attnforge::prelude::*;

    #[kv_layout(page_size = 512, kv_heads = 1024, head_dim = 256, dtype = bf16)]
    pub struct Largest;
}

#[attention(kv = nested::Largest, q_heads = 1024)]
pub struct LargestMha;

#[kv_layout(page_size = 16, kv_heads = 2, head_dim = 64, dtype = fp8_e4m3, kv_scale = per_head)]
pub struct Fp8PerHead;

#[kv_layout(page_size = 16, kv_heads = 2, head_dim = 64, dtype = fp8_e4m3)]
pub struct Fp8Default;

#[attention(kv = Fp8PerHead, q_heads = 8, q_dtype = bf16, causal)]
pub struct Fp8Attn;

fn main() {
    assert_eq!(<Tiny as KvLayout>::NAME, "tiny");
    assert_eq!(TinyMqa::SPEC.group_size(), 4);
    assert_eq!(TinyMqa::SPEC.scale, Some(0.5));
    assert_eq!(TinyMqa::SPEC.logits_soft_cap, Some(30.0));
    assert_eq!(TinyMqa::SPEC.alibi, Some(Alibi::Given));
    assert!(TinyMqa::SPEC.sinks);
    assert_eq!(TinyMqa::SPEC.query_dtype(), DType::F16);
    assert_eq!(TinyAlibi::SPEC.alibi, Some(Alibi::Computed));
    assert!(TinyAlibi::SPEC.causal && !TinyAlibi::SPEC.sinks);
    assert_eq!(LargestMha::SPEC.kv.page_size, 512);
    assert_eq!(Fp8Attn::SPEC.kv.dtype, DType::F8E4M3);
    assert_eq!(Fp8Attn::SPEC.kv.scale, KvScale::PerHead);
    assert_eq!(<Fp8Default as KvLayout>::SPEC.scale, KvScale::PerTensor);
    assert_eq!(Fp8Attn::SPEC.query_dtype(), DType::BF16);
    assert_eq!(LargestMha::SPEC.kv.scale, KvScale::Unscaled);
}
