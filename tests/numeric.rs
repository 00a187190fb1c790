//! Every bundled spec's kernels (decode, split-K decode and its merge,
//! prefill, append), run on the CPU backend at
//! a wave64 (gfx90a) and a wave32 (gfx1030) target, and at the host target
//! (a warp of one, the CPU device's fast path), and the matrix-core kernels
//! at gfx90a (MFMA) and sm_90 (mma.sync) too, fast and in checked mode,
//! against the independent f64 reference in `attnforge::runtime::reference`.
//!
//! Inputs are fresh each run; the seed is printed and set with ATTNFORGE_SEED.
//! Pages are scattered in random order; free pages and the unused tail of
//! each last page hold NaN, and outputs are NaN before the launch, so a
//! kernel that reads past a sequence or skips an output fails.

use attnforge::codegen::kernels::{attention_kernels, KernelSpec};
use attnforge::runtime::check::{self, Rng};
use attnforge::runtime::cpu::{CpuDevice, Element, Mode};
use attnforge::runtime::{PageTable, Params, Split};
use attnforge::{Alibi, Arch, AttentionSpec, DType, KvLayoutSpec, KvScale, Order};
use half::f16;

fn seed() -> u64 {
    let s = std::env::var("ATTNFORGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("seed {s} (rerun with ATTNFORGE_SEED={s})");
    s
}

/// Runs `kernel` at the gfx90a, gfx1030 and host targets (and sm_90 where
/// it has a matrix-core form) on every case of
/// `attnforge::runtime::check::CASES`, fast and checked.
fn check(device: &CpuDevice, name: &str, kernel: &KernelSpec, seed: u64) {
    check_on(device, name, kernel, seed, check::ARCHS, check::CASES)
}

/// `attnforge::runtime::check::check_kernel`, every outcome asserted, at
/// `archs` and wherever the kernel runs on the matrix unit
/// (`check::archs_for`: gfx90a and sm_90).
fn check_on(
    device: &CpuDevice,
    name: &str,
    kernel: &KernelSpec,
    seed: u64,
    archs: &[Arch],
    cases: &[&[usize]],
) {
    let archs = check::archs_for(kernel, archs);
    let cases = check::Cases {
        lens: cases,
        archs: &archs,
        modes: &[Mode::Fast, Mode::Checked],
    };
    let outcomes = check::check_kernel(device, kernel, seed, &cases)
        .unwrap_or_else(|e| panic!("{name} seed {seed}: {e}"));
    assert!(!outcomes.is_empty(), "{name}: nothing was checked");
    for o in outcomes {
        assert!(o.passed(), "{name} seed {seed}: {o}");
    }
}

#[test]
fn bundled_kernels_match_the_reference() {
    let seed = seed();
    let device = CpuDevice::new();
    for b in attnforge::kernels::ALL {
        for kernel in b.kernels() {
            // The merge is checked with split-K decode.
            if !matches!(kernel, KernelSpec::DecodeMerge(_)) {
                check(&device, b.name, &kernel, seed);
            }
        }
    }
}

#[test]
fn shapes_beyond_the_bundled_set_match_the_reference() {
    let seed = seed();
    let device = CpuDevice::new();
    let kv = |page_size, kv_heads, head_dim, dtype, order| KvLayoutSpec {
        page_size,
        kv_heads,
        head_dim,
        dtype,
        order,
        scale: KvScale::Unscaled,
    };
    let specs = [
        // A short window inside one page and across pages, with a soft-cap.
        AttentionSpec {
            kv: kv(16, 2, 64, DType::F32, Order::Nhd),
            q_heads: 4,
            scale: Some(0.2),
            causal: true,
            sliding_window: Some(37),
            logits_soft_cap: Some(5.0),
            q_dtype: None,
            alibi: None,
            sinks: false,
        },
        // MQA, rows wider than a wave32 warp (f32 head_dim 256), HND, page size 1.
        AttentionSpec {
            kv: kv(1, 1, 256, DType::F32, Order::Hnd),
            q_heads: 8,
            scale: None,
            causal: true,
            sliding_window: None,
            logits_soft_cap: None,
            q_dtype: None,
            alibi: None,
            sinks: false,
        },
        // Head dim 80 (padded rows), GQA groups of 7, bf16, pages of 128.
        AttentionSpec {
            kv: kv(128, 2, 80, DType::BF16, Order::Hnd),
            q_heads: 14,
            scale: None,
            causal: true,
            sliding_window: None,
            logits_soft_cap: None,
            q_dtype: None,
            alibi: None,
            sinks: false,
        },
        // f32 queries and outputs over an f16 cache (llama.cpp's precision:
        // the output is not rounded to the cache's dtype), GQA groups of 3.
        AttentionSpec {
            kv: kv(16, 3, 64, DType::F16, Order::Nhd),
            q_heads: 9,
            scale: None,
            causal: true,
            sliding_window: None,
            logits_soft_cap: None,
            q_dtype: Some(DType::F32),
            alibi: None,
            sinks: false,
        },
        // bf16 queries over an f32 cache, HND, a window.
        AttentionSpec {
            kv: kv(8, 2, 96, DType::F32, Order::Hnd),
            q_heads: 4,
            scale: None,
            causal: true,
            sliding_window: Some(100),
            logits_soft_cap: None,
            q_dtype: Some(DType::BF16),
            alibi: None,
            sinks: false,
        },
    ];
    for (i, a) in specs.iter().enumerate() {
        let name = format!("extra spec {i}");
        for kernel in attention_kernels(a) {
            if !matches!(kernel, KernelSpec::DecodeMerge(_)) {
                check(&device, &name, &kernel, seed);
            }
        }
        check(&device, &name, &KernelSpec::Append(a.kv), seed);
    }
}

#[test]
fn an_invalid_page_table_is_refused_before_any_launch() {
    let kv = KvLayoutSpec {
        page_size: 4,
        kv_heads: 1,
        head_dim: 8,
        dtype: DType::F32,
        order: Order::Nhd,
        scale: KvScale::Unscaled,
    };
    let spec = AttentionSpec {
        kv,
        q_heads: 1,
        scale: None,
        causal: true,
        sliding_window: None,
        logits_soft_cap: None,
        q_dtype: None,
        alibi: None,
        sinks: false,
    };
    let (k, v) = (vec![0f32; 2 * 32], vec![0f32; 2 * 32]);
    let q = vec![0f32; 8];
    let mut out = vec![0f32; 8];
    let device = CpuDevice::new();
    let table = PageTable::from_sequences(4, [(&[2][..], 3)]); // page 2 of 2
    let err = device
        .decode(
            &spec,
            Arch::Gfx90a.target(),
            Mode::Fast,
            &q,
            &k,
            &v,
            &table,
            &mut out,
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("page 2 (at kv_indices[0]) is not below max_pages = 2"),
        "{err}"
    );
    let half_q = vec![f16::ZERO; 8];
    let mut half_out = vec![f16::ZERO; 8];
    let hk = vec![f16::ZERO; 64];
    let table = PageTable::from_sequences(4, [(&[1][..], 3)]);
    let err = device
        .decode(
            &spec,
            Arch::Gfx90a.target(),
            Mode::Fast,
            &half_q,
            &hk,
            &hk,
            &table,
            &mut half_out,
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("stores f32 but the buffers hold f16"),
        "{err}"
    );
}

/// Decode over head dims (multiples of 8 from 32 to 256), page sizes 1 to
/// 128, GQA group sizes 1, 2, 4, 7 and 8 and MQA, every dtype and order:
/// a covering set (each value appears, in varied combinations), at a wave64
/// and a wave32 target, fast and checked, on small contexts; and the append
/// kernel of each layout.
#[test]
fn decode_over_head_dims_page_sizes_and_group_sizes() {
    let seed = seed();
    let device = CpuDevice::new();
    #[allow(clippy::type_complexity)]
    let shapes: &[(u32, u32, u32, u32, DType, Order, Option<u32>, Option<f32>)] = &[
        // (head_dim, page_size, kv_heads, q_heads, dtype, order, window, soft-cap)
        (32, 1, 4, 4, DType::F32, Order::Nhd, None, None),
        (64, 8, 2, 4, DType::F16, Order::Hnd, None, None),
        (80, 16, 2, 8, DType::BF16, Order::Nhd, None, None),
        (96, 32, 1, 7, DType::F16, Order::Nhd, None, None),
        (128, 64, 2, 16, DType::BF16, Order::Hnd, None, None),
        (192, 128, 2, 2, DType::F32, Order::Nhd, None, None),
        (256, 16, 1, 8, DType::F16, Order::Hnd, None, None),
        (192, 8, 2, 14, DType::BF16, Order::Hnd, Some(20), Some(30.0)),
        (40, 32, 3, 6, DType::F16, Order::Nhd, Some(9), None),
        (136, 1, 1, 4, DType::F32, Order::Hnd, None, Some(10.0)),
        (248, 64, 2, 4, DType::F16, Order::Nhd, None, None),
        (64, 128, 1, 1, DType::BF16, Order::Hnd, None, None),
    ];
    let small: &[&[usize]] = &[&[1], &[13], &[1, 17, 100, 33, 2], &[300]];
    for &(head_dim, page_size, kv_heads, q_heads, dtype, order, window, cap) in shapes {
        let spec = AttentionSpec {
            kv: KvLayoutSpec {
                page_size,
                kv_heads,
                head_dim,
                dtype,
                order,
                scale: KvScale::Unscaled,
            },
            q_heads,
            scale: None,
            causal: true,
            sliding_window: window,
            logits_soft_cap: cap,
            q_dtype: None,
            alibi: None,
            sinks: false,
        };
        spec.validate().unwrap();
        let name = format!("d{head_dim} p{page_size} {q_heads}/{kv_heads} {dtype:?} {order:?}");
        check_on(
            &device,
            &name,
            &KernelSpec::Decode(spec),
            seed,
            &[Arch::Gfx90a, Arch::Gfx1030, Arch::Host],
            small,
        );
        check(&device, &name, &KernelSpec::Append(spec.kv), seed);
    }
}

/// Groups too large for one decode block (MQA with many query heads, as in
/// Falcon-7B and StarCoder) are spread over several blocks per KV head
/// (`decode_head_blocks`), evenly or with a partial last block: decode,
/// split-K decode and prefill against the reference, with variants that
/// depend on the query head (ALiBi, sinks).
#[test]
fn large_query_groups_match_the_reference() {
    let seed = seed();
    let device = CpuDevice::new();
    #[allow(clippy::type_complexity)]
    let shapes: &[(u32, u32, u32, u32, DType, Option<Alibi>, bool)] = &[
        // (head_dim, page_size, kv_heads, q_heads, dtype, alibi, sinks)
        (64, 16, 1, 71, DType::BF16, None, false), // Falcon-7B: 5 blocks, the last partial
        (128, 16, 1, 48, DType::F16, None, true),  // StarCoder: 3 blocks of 16
        (256, 16, 1, 16, DType::F16, Some(Alibi::Computed), false), // shared memory: 2 of 8
        (8, 1, 1, 128, DType::F32, None, false),   // 4 blocks of 32
        (96, 8, 2, 80, DType::F16, Some(Alibi::Given), true), // GQA 40 over 2 KV heads
    ];
    let small: &[&[usize]] = &[&[1, 40], &[70]];
    for &(head_dim, page_size, kv_heads, q_heads, dtype, alibi, sinks) in shapes {
        let spec = AttentionSpec {
            kv: KvLayoutSpec {
                page_size,
                kv_heads,
                head_dim,
                dtype,
                order: Order::Nhd,
                scale: KvScale::Unscaled,
            },
            q_heads,
            scale: None,
            causal: true,
            sliding_window: Some(50),
            logits_soft_cap: None,
            q_dtype: None,
            alibi,
            sinks,
        };
        spec.validate().unwrap();
        let (blocks, _) = attnforge::codegen::kernels::decode_head_blocks(&spec);
        assert!(
            blocks > 1,
            "{q_heads}/{kv_heads} d{head_dim} fits one block"
        );
        let name = format!("d{head_dim} {q_heads}/{kv_heads} {dtype:?}");
        for kernel in [
            KernelSpec::Decode(spec),
            KernelSpec::DecodeSplit(spec),
            KernelSpec::Prefill(spec),
        ] {
            check_on(
                &device,
                &name,
                &kernel,
                seed,
                &[Arch::Gfx90a, Arch::Gfx1030, Arch::Host],
                small,
            );
        }
    }
}

/// Every combination of the variants (causal or not, a window, a soft-cap,
/// ALiBi computed or given, sinks), each with decode, split-K decode and
/// prefill, on small shapes: the dtype pair, head dim, page size, order
/// and group size rotate through their values across the combinations.
#[test]
fn every_variant_combination_in_decode_split_k_and_prefill() {
    let seed = seed();
    let device = CpuDevice::new();
    let dtypes = [
        (DType::F16, DType::F16),
        (DType::F32, DType::F32),
        (DType::BF16, DType::BF16),
        (DType::F32, DType::F16),
        (DType::F16, DType::F32),
    ];
    // (head_dim, page_size, kv_heads, q_heads, order)
    let shapes = [
        (64, 16, 2, 8, Order::Nhd),
        (32, 1, 1, 7, Order::Hnd),
        (80, 8, 2, 2, Order::Nhd),
        (128, 32, 1, 1, Order::Hnd),
        (96, 64, 2, 4, Order::Hnd),
        (64, 128, 1, 8, Order::Nhd),
    ];
    let cases: &[&[usize]] = &[&[1], &[13], &[1, 17, 90, 33, 2]];
    let mut specs = Vec::new();
    let mut i = 0;
    for causal in [true, false] {
        for window in [None, Some(9)] {
            for cap in [None, Some(20.0)] {
                for alibi in [None, Some(Alibi::Computed), Some(Alibi::Given)] {
                    for sinks in [false, true] {
                        let (q_dtype, dtype) = dtypes[i % dtypes.len()];
                        let (head_dim, page_size, kv_heads, q_heads, order) =
                            shapes[i % shapes.len()];
                        i += 1;
                        let kv = KvLayoutSpec {
                            page_size,
                            kv_heads,
                            head_dim,
                            dtype,
                            order,
                            scale: KvScale::Unscaled,
                        };
                        let spec = AttentionSpec {
                            causal,
                            sliding_window: window,
                            logits_soft_cap: cap,
                            alibi,
                            sinks,
                            q_dtype: Some(q_dtype),
                            ..AttentionSpec::new(kv, q_heads)
                        };
                        // Wave64 and wave32 alternate: every variant value
                        // meets both, and the JIT time stays in bounds;
                        // the host schedule runs every combination.
                        specs.push((spec, [Arch::Gfx90a, Arch::Gfx1030][i % 2]));
                    }
                }
            }
        }
    }
    // Two threads: the JIT compiles of the kernels dominate, one per thread.
    let (device, specs) = (&device, &specs);
    std::thread::scope(|scope| {
        for part in 0..2 {
            scope.spawn(move || {
                for (spec, arch) in specs.iter().skip(part).step_by(2) {
                    let name = format!("{spec:?}");
                    for kernel in attention_kernels(spec) {
                        if !matches!(kernel, KernelSpec::DecodeMerge(_)) {
                            check_on(device, &name, &kernel, seed, &[*arch, Arch::Host], cases);
                        }
                    }
                }
            });
        }
    });
}

/// Prefill over head dims 64 to 256, page sizes 1 to 128, GQA groups 1, 2,
/// 4, 7 and 8 and MQA, every dtype and order (a covering set), with a long
/// cached prefix and a mixed batch.
#[test]
fn prefill_over_head_dims_page_sizes_and_group_sizes() {
    let seed = seed();
    let device = CpuDevice::new();
    // (head_dim, page_size, kv_heads, q_heads, dtype, order)
    let shapes = [
        (64, 1, 2, 2, DType::F16, Order::Nhd),
        (80, 8, 2, 4, DType::BF16, Order::Hnd),
        (96, 16, 1, 7, DType::F32, Order::Nhd),
        (128, 32, 2, 16, DType::F16, Order::Hnd),
        (192, 64, 1, 8, DType::BF16, Order::Nhd),
        (256, 128, 2, 2, DType::F16, Order::Hnd),
        (40, 16, 3, 3, DType::F32, Order::Hnd),
    ];
    let cases: &[&[usize]] = &[&[70], &[1, 17, 300, 33, 2]];
    for (head_dim, page_size, kv_heads, q_heads, dtype, order) in shapes {
        let kv = KvLayoutSpec {
            page_size,
            kv_heads,
            head_dim,
            dtype,
            order,
            scale: KvScale::Unscaled,
        };
        let spec = AttentionSpec {
            causal: true,
            ..AttentionSpec::new(kv, q_heads)
        };
        let name = format!("d{head_dim} p{page_size} {q_heads}/{kv_heads} {dtype:?} {order:?}");
        check_on(
            &device,
            &name,
            &KernelSpec::Prefill(spec),
            seed,
            &[Arch::Gfx90a, Arch::Gfx1030, Arch::Host],
            cases,
        );
    }
}

/// fp8 e4m3 caches with per-tensor and per-head scales: decode, split-K
/// decode and prefill against the reference on the dequantized cache, over
/// head dims that split into 16-element vectors and ones that do not (40,
/// 136), f16/bf16/f32 queries, both orders, GQA and MHA, with and without
/// variants; and each layout's quantizing append, bit for bit.
#[test]
fn fp8_kv_with_per_tensor_and_per_head_scales() {
    let seed = seed();
    let device = CpuDevice::new();
    // (head_dim, page_size, kv_heads, q_heads, scale, q dtype, order, window, cap, arch)
    #[allow(clippy::type_complexity)]
    let shapes: &[(
        u32,
        u32,
        u32,
        u32,
        KvScale,
        DType,
        Order,
        Option<u32>,
        Option<f32>,
        Arch,
    )] = &[
        (
            128,
            16,
            2,
            8,
            KvScale::PerHead,
            DType::F16,
            Order::Nhd,
            None,
            None,
            Arch::Gfx90a,
        ),
        (
            64,
            8,
            3,
            3,
            KvScale::PerTensor,
            DType::BF16,
            Order::Hnd,
            None,
            None,
            Arch::Gfx1030,
        ),
        (
            40,
            1,
            2,
            14,
            KvScale::PerHead,
            DType::F16,
            Order::Hnd,
            Some(9),
            None,
            Arch::Gfx1030,
        ),
        (
            256,
            32,
            1,
            4,
            KvScale::PerTensor,
            DType::F32,
            Order::Nhd,
            None,
            Some(20.0),
            Arch::Gfx90a,
        ),
        (
            136,
            64,
            2,
            4,
            KvScale::PerHead,
            DType::BF16,
            Order::Nhd,
            None,
            None,
            Arch::Gfx90a,
        ),
        // Rows of whole 16-element vectors but not 32 (the host reads V
        // two chunks at a time in two loads).
        (
            80,
            16,
            2,
            8,
            KvScale::PerHead,
            DType::F16,
            Order::Nhd,
            None,
            None,
            Arch::Gfx1030,
        ),
    ];
    let cases: &[&[usize]] = &[&[1], &[13], &[1, 17, 90, 33, 2]];
    for &(head_dim, page_size, kv_heads, q_heads, scale, q_dtype, order, window, cap, arch) in
        shapes
    {
        let kv = KvLayoutSpec {
            page_size,
            kv_heads,
            head_dim,
            dtype: DType::F8E4M3,
            order,
            scale,
        };
        let spec = AttentionSpec {
            causal: true,
            sliding_window: window,
            logits_soft_cap: cap,
            q_dtype: Some(q_dtype),
            ..AttentionSpec::new(kv, q_heads)
        };
        spec.validate().unwrap();
        let name =
            format!("fp8 {scale:?} d{head_dim} p{page_size} {q_heads}/{kv_heads} q{q_dtype}");
        for kernel in attention_kernels(&spec) {
            if !matches!(kernel, KernelSpec::DecodeMerge(_)) {
                check_on(&device, &name, &kernel, seed, &[arch, Arch::Host], cases);
            }
        }
        check(&device, &name, &KernelSpec::Append(kv), seed);
    }
}

/// Every head dim the spec allows from 32 to 256 (each multiple of 8), in
/// decode and prefill, fast and checked: the KV dtype (fp8 with per-head
/// scales among them), page size, group size and order rotate, and wave64
/// and wave32 alternate.
#[test]
fn every_head_dim_from_32_to_256_in_decode_and_prefill() {
    let seed = seed();
    let device = CpuDevice::new();
    // (kv dtype, q dtype, scale)
    let dtypes = [
        (DType::F16, DType::F16, KvScale::Unscaled),
        (DType::BF16, DType::BF16, KvScale::Unscaled),
        (DType::F32, DType::F32, KvScale::Unscaled),
        (DType::F8E4M3, DType::F16, KvScale::PerHead),
    ];
    let pages = [1, 8, 16, 32, 64, 128];
    // (kv_heads, q_heads): MHA, GQA 2/4/7/8, MQA
    let groups = [(2, 2), (1, 2), (2, 8), (1, 7), (1, 8), (1, 4)];
    let specs: Vec<(AttentionSpec, Arch)> = (32..=256)
        .step_by(8)
        .enumerate()
        .map(|(i, head_dim)| {
            let (dtype, q_dtype, scale) = dtypes[i % dtypes.len()];
            let (kv_heads, q_heads) = groups[i % groups.len()];
            let kv = KvLayoutSpec {
                page_size: pages[i % pages.len()],
                kv_heads,
                head_dim,
                dtype,
                order: [Order::Nhd, Order::Hnd][(i / 2) % 2],
                scale,
            };
            let spec = AttentionSpec {
                causal: true,
                q_dtype: Some(q_dtype),
                ..AttentionSpec::new(kv, q_heads)
            };
            (spec, [Arch::Gfx90a, Arch::Gfx1030][i % 2])
        })
        .collect();
    assert_eq!(specs.len(), 29);
    let cases: &[&[usize]] = &[&[13], &[1, 40, 7]];
    let (device, specs) = (&device, &specs);
    std::thread::scope(|scope| {
        for part in 0..2 {
            scope.spawn(move || {
                for (spec, arch) in specs.iter().skip(part).step_by(2) {
                    let name = format!("{spec:?}");
                    for kernel in [KernelSpec::Decode(*spec), KernelSpec::Prefill(*spec)] {
                        check_on(device, &name, &kernel, seed, &[*arch, Arch::Host], cases);
                    }
                }
            });
        }
    });
}

/// The matrix-core kernels and the SIMT kernels they replace, on the same
/// inputs (the same seed draws them), both within tolerance of the f64
/// reference: decode, split-K decode and prefill at gfx90a (MFMA) and sm_90
/// (mma.sync), fast and checked, over f16, bf16 and an fp8 cache with
/// padded head dims, windows, soft-caps, ALiBi and sinks.
#[test]
fn matrix_core_and_simt_kernels_agree_with_the_reference() {
    use attnforge::codegen::kernels::{generate_path, KernelPath};
    let seed = seed();
    let (matrix, simt) = (CpuDevice::new(), CpuDevice::with_path(KernelPath::Simt));
    let kv = |dtype, page_size, kv_heads, head_dim, scale| KvLayoutSpec {
        page_size,
        kv_heads,
        head_dim,
        dtype,
        order: Order::Nhd,
        scale,
    };
    let specs = [
        AttentionSpec {
            causal: true,
            ..AttentionSpec::new(kv(DType::F16, 16, 2, 128, KvScale::Unscaled), 8)
        },
        AttentionSpec {
            causal: true,
            sliding_window: Some(70),
            logits_soft_cap: Some(30.0),
            alibi: Some(Alibi::Computed),
            sinks: true,
            ..AttentionSpec::new(kv(DType::BF16, 8, 1, 40, KvScale::Unscaled), 7)
        },
        AttentionSpec {
            causal: true,
            q_dtype: Some(DType::F16),
            alibi: Some(Alibi::Given),
            ..AttentionSpec::new(kv(DType::F8E4M3, 16, 2, 96, KvScale::PerHead), 16)
        },
    ];
    let cases: &[&[usize]] = &[&[1], &[1, 17, 100, 33, 2], &[700, 300]];
    for (i, spec) in specs.iter().enumerate() {
        for kernel in [
            KernelSpec::Decode(*spec),
            KernelSpec::DecodeSplit(*spec),
            KernelSpec::Prefill(*spec),
        ] {
            for arch in [Arch::Gfx90a, Arch::Sm90] {
                for (device, path) in [(&matrix, KernelPath::Auto), (&simt, KernelPath::Simt)] {
                    let g = generate_path(&kernel, arch.target(), path).unwrap();
                    assert_eq!(g.uses_matrix_unit(), path == KernelPath::Auto);
                    let cases = check::Cases {
                        lens: cases,
                        archs: &[arch],
                        modes: &[Mode::Fast, Mode::Checked],
                    };
                    let outcomes = check::check_kernel(device, &kernel, seed, &cases)
                        .unwrap_or_else(|e| panic!("spec {i} {path:?}: {e}"));
                    assert_eq!(outcomes.len(), 6, "spec {i} {path:?}");
                    for o in outcomes {
                        assert!(o.passed(), "spec {i} {path:?} seed {seed}: {o}");
                    }
                }
            }
        }
    }
}

/// The host schedules run each prefill row through exactly the arithmetic
/// of the host decode kernel: without a window, every new token's prefill
/// output has the bits that decode gives it over the same cache prefix
/// (ALiBi, sinks and a soft-cap included), so a sequence's results do not
/// depend on whether its tokens came as one prompt or one at a time.
#[test]
fn host_prefill_rows_have_the_bits_of_host_decode() {
    let seed = seed();
    let device = CpuDevice::new();
    let kv = KvLayoutSpec {
        page_size: 8,
        kv_heads: 2,
        head_dim: 64,
        dtype: DType::F16,
        order: Order::Nhd,
        scale: KvScale::Unscaled,
    };
    let specs = [
        AttentionSpec {
            causal: true,
            q_dtype: Some(DType::F32),
            ..AttentionSpec::new(kv, 6)
        },
        AttentionSpec {
            causal: true,
            logits_soft_cap: Some(30.0),
            alibi: Some(Alibi::Computed),
            sinks: true,
            ..AttentionSpec::new(
                KvLayoutSpec {
                    order: Order::Hnd,
                    ..kv
                },
                8,
            )
        },
        // 16 query heads per KV head: decode's softmax then keeps 16 rows'
        // values in one vector too, as prefill's does.
        AttentionSpec {
            causal: true,
            ..AttentionSpec::new(kv, 32)
        },
    ];
    for spec in specs {
        dispatch_bits(&device, &spec, seed);
    }
}

fn dispatch_bits(device: &CpuDevice, spec: &AttentionSpec, seed: u64) {
    match spec.query_dtype() {
        DType::F32 => prefill_vs_decode_bits::<f32>(device, spec, seed),
        _ => prefill_vs_decode_bits::<f16>(device, spec, seed),
    }
}

fn prefill_vs_decode_bits<Q: Element>(device: &CpuDevice, spec: &AttentionSpec, seed: u64) {
    let mut rng = Rng(seed ^ 0xb175);
    let (len, new) = (70usize, 37usize);
    let s = check::paged_inputs::<f16>(&spec.kv, &[len], &mut rng);
    let row = spec.q_heads as usize * spec.kv.head_dim as usize;
    let q: Vec<Q> = (0..new * row)
        .map(|_| Q::from_f64(3.0 * rng.uniform()))
        .collect();
    let sinks: Vec<f32> = (0..spec.q_heads).map(|_| rng.uniform() as f32).collect();
    let params = Params {
        sinks: spec.sinks.then_some(&sinks[..]),
        split: Split::Off,
        ..Params::default()
    };
    let t = Arch::Host.target();
    let mut out = vec![Q::from_f64(f64::NAN); q.len()];
    let qo = [0, new as i32];
    device
        .prefill(
            spec,
            t,
            Mode::Fast,
            &params,
            &q,
            &qo,
            &s.k,
            &s.v,
            &s.table,
            &mut out,
        )
        .unwrap();
    let pages = &s.table.indices;
    let p = spec.kv.page_size as usize;
    for i in 0..new {
        // Token i of the new ones sits at position len − new + i.
        let prefix = len - new + i + 1;
        let table =
            PageTable::from_sequences(spec.kv.page_size, [(&pages[..prefix.div_ceil(p)], prefix)]);
        let mut one = vec![Q::from_f64(f64::NAN); row];
        device
            .decode_ext(
                spec,
                t,
                Mode::Fast,
                &params,
                &q[i * row..(i + 1) * row],
                &s.k,
                &s.v,
                &table,
                &mut one,
            )
            .unwrap();
        let bits = |x: &[Q]| x.iter().map(|v| v.to_f64().to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&out[i * row..(i + 1) * row]),
            bits(&one),
            "{spec:?}: new token {i} (position {}) differs from decode",
            prefix - 1
        );
    }
}

/// A host decode block that serves several KV heads (NHD pages, where
/// reading a page whole is what keeps the memory busy) runs each head's
/// arithmetic exactly as a block serving one: every decomposition a launch
/// may pick (`decode_kv_heads_per_block`) gives the bits of one head per
/// block, plain and split-K, with the variants, fp8 per-head scales and
/// ragged, partial pages, fast and checked. (One head per block is checked
/// against the reference by the tests above.)
#[test]
fn host_decode_blocks_serving_several_kv_heads_have_the_bits_of_one_head_per_block() {
    let seed = seed();
    let device = CpuDevice::new();
    let kv = nhd_eight_heads();
    let three = KvLayoutSpec { kv_heads: 3, ..kv };
    let fp8 = KvLayoutSpec {
        kv_heads: 4,
        dtype: DType::F8E4M3,
        scale: KvScale::PerHead,
        ..kv
    };
    let specs = [
        AttentionSpec::new(kv, 32),
        AttentionSpec {
            logits_soft_cap: Some(30.0),
            alibi: Some(Alibi::Computed),
            sinks: true,
            sliding_window: Some(40),
            ..AttentionSpec::new(three, 9)
        },
        AttentionSpec {
            q_dtype: Some(DType::F16),
            ..AttentionSpec::new(fp8, 8)
        },
    ];
    for spec in specs {
        spec.validate().unwrap();
        match spec.kv.dtype {
            DType::F8E4M3 => several_heads_bits::<attnforge::F8E4M3>(&device, &spec, seed),
            _ => several_heads_bits::<f16>(&device, &spec, seed),
        }
    }
}

fn several_heads_bits<T: Element>(device: &CpuDevice, spec: &AttentionSpec, seed: u64) {
    use attnforge::codegen::kernels::decode_kv_heads_per_block;
    let mut rng = Rng(seed ^ 0x4ead5);
    let lens = [70usize, 33, 5];
    let s = check::paged_inputs::<T>(&spec.kv, &lens, &mut rng);
    let scales = check::kv_scales(&spec.kv, &mut rng);
    let q = random_queries(spec, lens.len(), &mut rng);
    let sinks: Vec<f32> = (0..spec.q_heads).map(|_| rng.uniform() as f32).collect();
    // The most a block serves: what a launch with plenty of blocks picks.
    let most = decode_kv_heads_per_block(spec, Arch::Host.target(), 1 << 20, 1);
    assert!(most > 1, "{spec:?} serves one KV head per block");
    let (splits, chunk) = (3u32, 32i32);
    assert!(
        splits as usize * chunk as usize >= lens[0],
        "the chunks cover every token"
    );
    let name = format!("{} kv_heads {}", spec.kv.dtype, spec.kv.kv_heads);
    for split in [None, Some((splits, chunk))] {
        let run = |per_block: u32, mode: Mode| {
            let launch = HostDecode {
                spec,
                split,
                q: &q,
                sinks: &sinks,
                scales: scales.as_ref(),
            };
            launch.bits(device, &s, per_block, mode)
        };
        let one = run(1, Mode::Fast);
        for per_block in (2..=most).filter(|h| most.is_multiple_of(*h)) {
            for mode in [Mode::Fast, Mode::Checked] {
                let got = run(per_block, mode);
                let diff = one.iter().zip(&got).position(|(a, b)| a != b);
                assert_eq!(
                    diff, None,
                    "{name} split {split:?}: {per_block} KV heads per block ({mode:?}) \
                     differ from one at element {diff:?}, seed {seed}"
                );
            }
        }
    }
}

/// The NHD layout of the host decode block tests: 8 KV heads of 64, f16,
/// pages of 16.
fn nhd_eight_heads() -> KvLayoutSpec {
    KvLayoutSpec {
        page_size: 16,
        kv_heads: 8,
        head_dim: 64,
        dtype: DType::F16,
        order: Order::Nhd,
        scale: KvScale::Unscaled,
    }
}

/// Random f16 queries for `batch` sequences of `spec`.
fn random_queries(spec: &AttentionSpec, batch: usize, rng: &mut Rng) -> Vec<f16> {
    (0..batch * spec.q_heads as usize * spec.kv.head_dim as usize)
        .map(|_| f16::from_f64(2.0 * rng.uniform() - 1.0))
        .collect()
}

/// One raw launch of the host decode kernel, or with `split` (chunks,
/// tokens per chunk) of the split-K decode kernel.
struct HostDecode<'a> {
    spec: &'a AttentionSpec,
    split: Option<(u32, i32)>,
    q: &'a [f16],
    sinks: &'a [f32],
    scales: Option<&'a (Vec<f32>, Vec<f32>)>,
}

impl HostDecode<'_> {
    /// The output's bits (or the partials' and their (max, sum)'s) with
    /// each block serving `per_block` KV heads.
    fn bits<T: Element>(
        &self,
        device: &CpuDevice,
        s: &check::PagedInputs<T>,
        per_block: u32,
        mode: Mode,
    ) -> Vec<u32> {
        use attnforge::codegen::cpu::Arg;
        let spec = self.spec;
        let batch = s.table.batch();
        let ks = match self.split {
            None => KernelSpec::Decode(*spec),
            Some(_) => KernelSpec::DecodeSplit(*spec),
        };
        let kernel = device.kernel(&ks, Arch::Host.target(), mode).unwrap();
        let splits = self.split.map_or(1, |(n, _)| n);
        let rows = batch * spec.q_heads as usize * splits as usize;
        let mut out = vec![f16::from_f64(f64::NAN); self.q.len()];
        let mut part = vec![f32::NAN; rows * spec.kv.head_dim as usize];
        let mut ml = vec![f32::NAN; rows * 2];
        let mut args: Vec<Arg> = vec![
            Arg::input(self.q),
            Arg::input(&s.k),
            Arg::input(&s.v),
            Arg::input(&s.table.indptr),
            Arg::input(&s.table.indices),
            Arg::input(&s.table.last_page_len),
        ];
        if spec.sinks && self.split.is_none() {
            args.push(Arg::input(self.sinks));
        }
        if let Some((k, v)) = self.scales {
            args.extend([Arg::input(k), Arg::input(v)]);
        }
        match self.split {
            None => args.push(Arg::output(&mut out)),
            Some((_, chunk)) => args.extend([
                Arg::output(&mut part),
                Arg::output(&mut ml),
                Arg::I32(chunk),
            ]),
        }
        let grid = ks.grid_serving(batch as u32, splits, per_block);
        // SAFETY: the table was built over these arenas, q and out (or the
        // partials, `splits` rows per query row, whose chunks cover the
        // longest sequence) have the batch's shape, the sinks and scales
        // one value per query and KV head.
        unsafe { kernel.launch(grid, &mut args) }.unwrap();
        drop(args);
        match self.split {
            None => out.iter().map(|x| x.to_bits() as u32).collect(),
            Some(_) => part.iter().chain(&ml).map(|x| x.to_bits()).collect(),
        }
    }
}

/// The launch path picks whole-page blocks by itself: a batch of four
/// sequences per core through `CpuDevice::decode_ext` (the planner gives a
/// block every KV head) has the bits of one head per block.
#[test]
fn host_decode_of_a_large_batch_plans_whole_page_blocks_with_the_same_bits() {
    let seed = seed();
    let device = CpuDevice::new();
    let kv = nhd_eight_heads();
    let spec = AttentionSpec::new(kv, 32);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let lens: Vec<usize> = (0..4 * cores).map(|i| 1 + (i * 37) % 90).collect();
    let target = Arch::Host.target();
    let plan = attnforge::runtime::plan_decode(
        &spec,
        target,
        lens.iter().copied(),
        Split::Off,
        cores as u32,
    )
    .unwrap();
    assert_eq!(plan.kv_heads_per_block, 8, "the planner serves every head");
    let mut rng = Rng(seed ^ 0xba7c4);
    let s = check::paged_inputs::<f16>(&kv, &lens, &mut rng);
    let q = random_queries(&spec, lens.len(), &mut rng);
    let params = Params {
        split: Split::Off,
        ..Params::default()
    };
    let mut got = vec![f16::from_f64(f64::NAN); q.len()];
    device
        .decode_ext(
            &spec,
            target,
            Mode::Fast,
            &params,
            &q,
            &s.k,
            &s.v,
            &s.table,
            &mut got,
        )
        .unwrap();
    let one = HostDecode {
        spec: &spec,
        split: None,
        q: &q,
        sinks: &[],
        scales: None,
    }
    .bits(&device, &s, 1, Mode::Fast);
    let diff = one
        .iter()
        .zip(&got)
        .position(|(a, b)| *a != b.to_bits() as u32);
    assert_eq!(diff, None, "first differing element, seed {seed}");
}

/// A batch too small for four blocks per core, with long contexts: at the
/// host target the planner cuts it into chunks whose blocks read every KV
/// head's rows of whole pages (`Split::Auto`), and the split-K launch and
/// its merge, planned and launched by `CpuDevice::decode`, agree with the
/// f64 reference.
#[test]
fn host_decode_of_a_small_batch_splits_into_whole_page_blocks_and_matches_the_reference() {
    use attnforge::runtime::reference;
    let seed = seed();
    let device = CpuDevice::new();
    let kv = nhd_eight_heads();
    let spec = AttentionSpec::new(kv, 32);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Enough sequences that each is cut into at most 32 chunks, for four
    // blocks per core: the first into `per` chunks and one more (its last
    // page partial), the others (300 tokens, two chunks) left with empty
    // chunks.
    let seqs = (4 * cores).div_ceil(32).max(2);
    let per = (4 * cores).div_ceil(seqs);
    let lens: Vec<usize> = (0..seqs)
        .map(|i| if i == 0 { 256 * per.max(2) + 37 } else { 300 })
        .collect();
    let target = Arch::Host.target();
    let plan = attnforge::runtime::plan_decode(
        &spec,
        target,
        lens.iter().copied(),
        Split::Auto,
        cores as u32,
    )
    .unwrap();
    assert!(
        plan.split && plan.kv_heads_per_block == 8,
        "the planner cuts the batch into whole-page blocks: {plan:?}"
    );
    let mut rng = Rng(seed ^ 0x5b11);
    let s = check::paged_inputs::<f16>(&kv, &lens, &mut rng);
    let q = random_queries(&spec, lens.len(), &mut rng);
    let mut got = vec![f16::from_f64(f64::NAN); q.len()];
    device
        .decode(
            &spec,
            target,
            Mode::Fast,
            &q,
            &s.k,
            &s.v,
            &s.table,
            &mut got,
        )
        .unwrap();
    let f = |x: &[f16]| x.iter().map(|e| e.to_f64()).collect::<Vec<_>>();
    let want = reference::decode(&spec, &f(&q), &f(&s.k), &f(&s.v), &s.table);
    let err = reference::rel_l2(&f(&got), &want);
    assert!(
        err <= reference::tolerance(DType::F16),
        "relative L2 error {err:.2e}, seed {seed}"
    );
}
