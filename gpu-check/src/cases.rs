//! The correctness cases: every bundled kernel, and a set of specs over the
//! variants, dtypes, page sizes, head dims and group sizes, each a few
//! small batches (the GPU's inputs are drawn there from each case's seed).

use attnforge_codegen::kernels::KernelSpec;
use attnforge_codegen::{Alibi, AttentionSpec, DType, KvLayoutSpec, KvScale, Order};

use crate::manifest::{Case, Kind};

/// A mixed decode or prefill batch: one token, partly filled pages, a
/// sequence of several pages.
pub const MIXED: &[usize] = &[1, 17, 100, 33, 2];
/// Split-K decode: a long context cut into four chunks beside short ones
/// (which have empty chunks).
pub const SPLIT: &[usize] = &[300, 77, 1];
/// Past a 4096-token window (the bundled windowed specs).
pub const LONG: &[usize] = &[4100, 50];

/// One variant spec: a name and the spec.
struct Variant {
    name: &'static str,
    spec: AttentionSpec,
}

#[allow(clippy::too_many_arguments)]
const fn kv(
    dtype: DType,
    scale: KvScale,
    order: Order,
    page_size: u32,
    kv_heads: u32,
    head_dim: u32,
) -> KvLayoutSpec {
    KvLayoutSpec {
        page_size,
        kv_heads,
        head_dim,
        dtype,
        order,
        scale,
    }
}

fn variants() -> Vec<Variant> {
    use DType::*;
    use KvScale::{PerHead, PerTensor, Unscaled};
    use Order::{Hnd, Nhd};
    let causal = |kv: KvLayoutSpec, group: u32| AttentionSpec {
        causal: true,
        ..AttentionSpec::new(kv, kv.kv_heads * group)
    };
    let v = |name, spec: AttentionSpec| Variant { name, spec };
    vec![
        v(
            "f16_p16_d128_g4_window40",
            AttentionSpec {
                sliding_window: Some(40),
                ..causal(kv(F16, Unscaled, Nhd, 16, 2, 128), 4)
            },
        ),
        v(
            "bf16_p1_d64_g7_softcap30",
            AttentionSpec {
                logits_soft_cap: Some(30.0),
                ..causal(kv(BF16, Unscaled, Nhd, 1, 3, 64), 7)
            },
        ),
        v(
            "f32_p128_d96_g1_alibi",
            AttentionSpec {
                alibi: Some(Alibi::Computed),
                ..causal(kv(F32, Unscaled, Nhd, 128, 2, 96), 1)
            },
        ),
        v(
            "f16_hnd_p16_d256_g4_sinks",
            AttentionSpec {
                sinks: true,
                ..causal(kv(F16, Unscaled, Hnd, 16, 2, 256), 4)
            },
        ),
        v(
            "bf16_p16_d128_g7_alibig_scale",
            AttentionSpec {
                alibi: Some(Alibi::Given),
                scale: Some(0.05),
                ..causal(kv(BF16, Unscaled, Nhd, 16, 1, 128), 7)
            },
        ),
        v(
            "fp8h_qf16_p16_d128_g4",
            AttentionSpec {
                q_dtype: Some(F16),
                ..causal(kv(F8E4M3, PerHead, Nhd, 16, 2, 128), 4)
            },
        ),
        v(
            "fp8t_qbf16_p16_d64_g1_window64_softcap20",
            AttentionSpec {
                q_dtype: Some(BF16),
                sliding_window: Some(64),
                logits_soft_cap: Some(20.0),
                ..causal(kv(F8E4M3, PerTensor, Nhd, 16, 4, 64), 1)
            },
        ),
        v(
            "fp8h_qf32_p128_d256_g4_sinks",
            AttentionSpec {
                q_dtype: Some(F32),
                sinks: true,
                ..causal(kv(F8E4M3, PerHead, Nhd, 128, 1, 256), 4)
            },
        ),
        v(
            "f16_p1_d96_g1_noncausal_scale",
            AttentionSpec {
                scale: Some(0.2),
                ..AttentionSpec::new(kv(F16, Unscaled, Nhd, 1, 4, 96), 4)
            },
        ),
        v(
            "f32_p16_d64_g7_window100_alibi_sinks_softcap",
            AttentionSpec {
                sliding_window: Some(100),
                alibi: Some(Alibi::Computed),
                sinks: true,
                logits_soft_cap: Some(40.0),
                ..causal(kv(F32, Unscaled, Nhd, 16, 1, 64), 7)
            },
        ),
        v(
            "bf16_hnd_p128_d64_g4_softcap20_alibig",
            AttentionSpec {
                logits_soft_cap: Some(20.0),
                alibi: Some(Alibi::Given),
                ..causal(kv(BF16, Unscaled, Hnd, 128, 2, 64), 4)
            },
        ),
        // A group too large for one block (Falcon-7B's 71 heads over one).
        v(
            "f16_p16_d64_g71",
            causal(kv(F16, Unscaled, Nhd, 16, 1, 64), 71),
        ),
        v(
            "fp8t_qf16_hnd_p1_d96_g4",
            AttentionSpec {
                q_dtype: Some(F16),
                ..causal(kv(F8E4M3, PerTensor, Hnd, 1, 2, 96), 4)
            },
        ),
    ]
}

/// A seed per case, from its id (FNV-1a), so that adding a case changes
/// no other case's inputs.
pub fn seed_of(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn case(prefix: &str, label: &str, kind: Kind, a: &AttentionSpec, lens: &[usize]) -> Case {
    let suffix = match kind {
        Kind::Decode => "decode",
        Kind::Split => "split",
        Kind::Prefill => "prefill",
        Kind::Append => "append",
    };
    let long = if lens == LONG { "_long" } else { "" };
    let id = format!("{prefix}.{suffix}{long}");
    let seed = seed_of(&id);
    Case::attention(id, label.to_string(), kind, a, lens, seed)
}

/// Every case of the full set: the bundled kernels first.
pub fn all() -> Vec<Case> {
    let mut out = Vec::new();
    for b in attnforge_kernels::ALL {
        let mut push = |mut c: Case| {
            c.group = "bundled".into();
            c.item = Some(b.name.to_string());
            out.push(c);
        };
        let prefix = format!("b.{}", b.name);
        match b.kernel {
            KernelSpec::Append(l) => {
                let a = AttentionSpec::new(l, l.kv_heads);
                push(case(
                    &prefix,
                    "bundled layout: append",
                    Kind::Append,
                    &a,
                    &[],
                ));
            }
            KernelSpec::Decode(a) => {
                push(case(&prefix, "bundled: decode", Kind::Decode, &a, MIXED));
                push(case(
                    &prefix,
                    "bundled: split-K decode and merge",
                    Kind::Split,
                    &a,
                    SPLIT,
                ));
                push(case(&prefix, "bundled: prefill", Kind::Prefill, &a, MIXED));
                if a.sliding_window.is_some_and(|w| (w as usize) < LONG[0]) {
                    push(case(
                        &prefix,
                        "bundled: decode past the window",
                        Kind::Decode,
                        &a,
                        LONG,
                    ));
                    push(case(
                        &prefix,
                        "bundled: prefill past the window",
                        Kind::Prefill,
                        &a,
                        LONG,
                    ));
                }
            }
            _ => {}
        }
    }
    for v in variants() {
        let prefix = format!("v.{}", v.name);
        for (kind, lens, what) in [
            (Kind::Decode, MIXED, "decode"),
            (Kind::Split, SPLIT, "split-K decode and merge"),
            (Kind::Prefill, MIXED, "prefill"),
            (Kind::Append, &[][..], "append"),
        ] {
            out.push(case(
                &prefix,
                &format!("{}: {what}", v.name),
                kind,
                &v.spec,
                lens,
            ));
        }
    }
    out
}

/// The few cases the tests run: one small variant spec (fp8, window,
/// soft-cap) with all four kinds, and the bundled SmolLM2 decode.
pub fn quick() -> Vec<Case> {
    all()
        .into_iter()
        .filter(|c| c.id.starts_with("v.fp8t_qbf16_p16_d64_g1") || c.id == "b.smollm2_135m.decode")
        .collect()
}

/// `cases` whose id contains one of the comma-separated `patterns`.
pub fn only(cases: Vec<Case>, patterns: &str) -> Vec<Case> {
    let pats: Vec<&str> = patterns.split(',').filter(|p| !p.is_empty()).collect();
    cases
        .into_iter()
        .filter(|c| pats.iter().any(|p| c.id.contains(p)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_covers_what_it_says() {
        let cases = all();
        let specs: Vec<AttentionSpec> = cases
            .iter()
            .filter_map(|c| c.spec.to_attention().ok())
            .collect();
        for p in [1, 16, 128] {
            assert!(specs.iter().any(|s| s.kv.page_size == p), "page size {p}");
        }
        for d in [64, 96, 128, 256] {
            assert!(specs.iter().any(|s| s.kv.head_dim == d), "head_dim {d}");
        }
        for g in [1, 4, 7] {
            assert!(specs.iter().any(|s| s.group_size() == g), "group {g}");
        }
        for dt in DType::ALL {
            assert!(specs.iter().any(|s| s.kv.dtype == dt), "{dt}");
        }
        assert!(specs.iter().any(|s| s.kv.scale == KvScale::PerTensor));
        assert!(specs.iter().any(|s| s.kv.scale == KvScale::PerHead));
        assert!(specs
            .iter()
            .any(|s| s.sliding_window.is_some() && s.logits_soft_cap.is_some()));
        assert!(
            specs.iter().any(|s| s.alibi == Some(Alibi::Given)) && specs.iter().any(|s| s.sinks)
        );
        let want: std::collections::BTreeSet<String> = attnforge_kernels::ALL
            .iter()
            .flat_map(|b| b.kernels())
            .map(|k| attnforge_codegen::kernels::symbol(&k))
            .collect();
        let bundled: std::collections::BTreeSet<String> = cases
            .iter()
            .filter(|c| c.group == "bundled")
            .flat_map(|c| c.kernels.iter().cloned())
            .collect();
        assert_eq!(bundled, want, "every bundled kernel is launched");
        let mut ids: Vec<&str> = cases.iter().map(|c| c.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), cases.len());
        assert!(cases.iter().all(|c| crate::manifest::safe_id(&c.id)));
    }
}
