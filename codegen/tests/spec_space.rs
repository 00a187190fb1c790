//! Every spec the rules accept generates: random specs over the whole spec
//! space (head counts and group sizes up to 128, every head dim, page size,
//! dtype, order and variant), each kernel kind at every arch, generated,
//! verified and printed. The rules and the generator cannot disagree.

use attnforge_codegen::kernels::{attention_kernels, generate, KernelSpec};
use attnforge_codegen::spec::{Alibi, AttentionSpec, DType, KvLayoutSpec, KvScale, Order};
use attnforge_codegen::Arch;

#[path = "../../tests/support/splitmix.rs"]
mod splitmix;
use splitmix::Rng;

/// A random spec the rules accept; edges (1, the largest values) come up
/// often.
fn random_spec(r: &mut Rng) -> AttentionSpec {
    let dtype = r.pick(&DType::ALL);
    let scale = match dtype {
        DType::F8E4M3 => r.pick(&[KvScale::PerTensor, KvScale::PerHead]),
        _ => KvScale::Unscaled,
    };
    let kv_heads = match r.below(4) {
        0 => 1,
        1 => r.pick(&[2, 8, 32, 128]),
        _ => 1 + r.below(16) as u32,
    };
    let group = match r.below(4) {
        0 => 1,
        1 => r.pick(&[16, 48, 64, 71, 127, 128]),
        _ => 1 + r.below(128) as u32,
    };
    let kv = KvLayoutSpec {
        page_size: match r.below(3) {
            0 => r.pick(&[1, 16, 512]),
            _ => 1 + r.below(512) as u32,
        },
        kv_heads,
        head_dim: 8 * (1 + r.below(32) as u32),
        dtype,
        order: r.pick(&[Order::Nhd, Order::Hnd]),
        scale,
    };
    let q_dtype = match (dtype, r.below(3)) {
        (DType::F8E4M3, _) => Some(r.pick(&DType::FLOAT)),
        (_, 0) => Some(r.pick(&DType::FLOAT)),
        _ => None,
    };
    AttentionSpec {
        kv,
        q_heads: (kv_heads * group).min(1024 / kv_heads * kv_heads),
        scale: r.coin().then(|| 0.01 + r.below(1000) as f32 / 100.0),
        causal: r.coin(),
        sliding_window: r.coin().then(|| 1 + r.below(8192) as u32),
        logits_soft_cap: r.coin().then(|| 1.0 + r.below(100) as f32),
        q_dtype,
        alibi: match r.below(3) {
            0 => Some(Alibi::Computed),
            1 => Some(Alibi::Given),
            _ => None,
        },
        sinks: r.coin(),
    }
}

#[test]
fn every_kernel_of_every_valid_spec_generates_and_verifies_at_every_arch() {
    let mut r = Rng(0x5eed_a77e);
    let archs = [Arch::Gfx90a, Arch::Gfx940, Arch::Gfx1030, Arch::Host];
    let mut kernels = 0;
    for case in 0..300 {
        let spec = random_spec(&mut r);
        spec.validate()
            .unwrap_or_else(|e| panic!("case {case}: the test made an invalid spec {spec:?}: {e}"));
        let all = attention_kernels(&spec);
        let every = all.iter().copied().chain([KernelSpec::Append(spec.kv)]);
        for ks in every {
            for arch in archs {
                let g = generate(&ks, arch.target())
                    .unwrap_or_else(|e| panic!("case {case}: {ks:?} at {}: {e}", arch.name()));
                // The printer takes every verified kernel too.
                if arch != Arch::Host {
                    assert!(g.to_string().contains("extern \"C\""), "case {case}");
                }
                kernels += 1;
            }
        }
    }
    assert_eq!(kernels, 300 * 5 * 4);
}
