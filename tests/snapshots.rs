//! Snapshots of the generated HIP, at a wave64 (gfx90a) and a wave32
//! (gfx1030) target, named `<kernel>__<spec>@<arch>`: every bundled spec's
//! primary kernel (decode or append), and a representative set of the other
//! kernels (prefill, split-K decode and its merge) and of the variants
//! (ALiBi computed and given, sinks), and fp8 caches. The CUDA flavour
//! (`@sm_90`: the same printer, warp 32, 48 KiB of shared memory) for every
//! kernel of Llama 3, of Gemma 2's local layers (window and soft-cap) and
//! of the fp8 cache with per-head scales. Every kernel that runs on the
//! matrix unit is also snapshotted at each arch that has one (gfx90a and
//! gfx940: MFMA; sm_90: mma.sync). CI runs with INSTA_UPDATE=no: a change
//! to the generated code must come with its reviewed snapshot.

use attnforge::codegen::kernels::{attention_kernels, generate, GeneratedKernel, KernelSpec};
use attnforge::{Alibi, Arch, AttentionSpec, DType, KvLayoutSpec, KvScale, Order};

/// The specs whose kernels are also snapshotted in the CUDA flavour.
const CUDA_SET: &[&str] = &["llama3_8b", "llama3_kv", "gemma2_9b_local", "fp8_per_head"];

fn gen(kernel: &KernelSpec, name: &str, arch: Arch) -> GeneratedKernel {
    generate(kernel, arch.target()).unwrap_or_else(|e| panic!("{name} for {arch}: {e}"))
}

fn snapshot(kernel: &KernelSpec, name: &str) {
    let matrix = |arch: Arch| gen(kernel, name, arch).uses_matrix_unit();
    let mut archs = vec![Arch::Gfx90a, Arch::Gfx1030];
    if matrix(Arch::Gfx940) {
        archs.push(Arch::Gfx940);
    }
    if CUDA_SET.contains(&name) || matrix(Arch::Sm90) {
        archs.push(Arch::Sm90);
    }
    for arch in archs {
        let k = gen(kernel, name, arch);
        let file = format!("{}__{}@{}", kernel.kind(), name, arch);
        insta::assert_snapshot!(file, k.to_string());
    }
}

#[test]
fn generated_hip_of_every_bundled_kernel() {
    for b in attnforge::kernels::ALL {
        snapshot(&b.kernel, b.name);
    }
}

#[test]
fn generated_hip_of_prefill_split_k_and_the_variants() {
    // Llama 3 (GQA 4, causal) and Gemma 2's local layers (window, soft-cap):
    // every kernel they own.
    for b in attnforge::kernels::ALL {
        if matches!(b.name, "llama3_8b" | "gemma2_9b_local") {
            for kernel in b.kernels() {
                if !matches!(kernel, KernelSpec::Decode(_)) {
                    snapshot(&kernel, b.name);
                }
            }
        }
    }
    // gpt-oss-like sinks with a window, and BLOOM-like ALiBi (computed
    // slopes over 12 heads, a power of two and the rest; given slopes).
    let kv = |kv_heads, head_dim, dtype| KvLayoutSpec {
        page_size: 16,
        kv_heads,
        head_dim,
        dtype,
        order: Order::Nhd,
        scale: KvScale::Unscaled,
    };
    let sinks = AttentionSpec {
        causal: true,
        sliding_window: Some(128),
        sinks: true,
        ..AttentionSpec::new(kv(8, 64, DType::BF16), 64)
    };
    let alibi = AttentionSpec {
        causal: true,
        alibi: Some(Alibi::Computed),
        ..AttentionSpec::new(kv(12, 64, DType::F16), 12)
    };
    let given = AttentionSpec {
        alibi: Some(Alibi::Given),
        ..alibi
    };
    for (spec, name) in [(sinks, "sinks"), (alibi, "alibi"), (given, "alibi_given")] {
        for kernel in attention_kernels(&spec) {
            snapshot(&kernel, name);
        }
    }
}

#[test]
fn generated_hip_of_fp8_caches() {
    // Llama 3's shape over an fp8 cache with per-head scales (f16 queries),
    // and one with a per-tensor scale whose rows split into 8-element
    // vectors (head dim 40, bf16 queries): every kernel and the append.
    let fp8 = |head_dim, scale| KvLayoutSpec {
        page_size: 16,
        kv_heads: 8,
        head_dim,
        dtype: DType::F8E4M3,
        order: Order::Nhd,
        scale,
    };
    let head = AttentionSpec {
        causal: true,
        q_dtype: Some(DType::F16),
        ..AttentionSpec::new(fp8(128, KvScale::PerHead), 32)
    };
    let tensor = AttentionSpec {
        causal: true,
        q_dtype: Some(DType::BF16),
        ..AttentionSpec::new(fp8(40, KvScale::PerTensor), 8)
    };
    for (spec, name) in [(head, "fp8_per_head"), (tensor, "fp8_per_tensor_d40")] {
        snapshot(&KernelSpec::Append(spec.kv), name);
        for kernel in attention_kernels(&spec) {
            if !matches!(kernel, KernelSpec::DecodeMerge(_)) {
                snapshot(&kernel, name);
            }
        }
    }
}

/// Every CUDA kernel is proven on the CPU backend: a SIMT kernel is the
/// wave32 kernel the numeric tests prove at gfx1030 (the sm_80 and sm_90
/// text is gfx1030's but for the line naming the target), and a
/// matrix-core kernel is the one they prove at sm_90 (sm_80's text is
/// sm_90's). Where a kernel ever differs otherwise (a shared-memory limit
/// that binds), this fails, and that kernel needs its own numeric cases.
#[test]
fn nvidia_kernels_are_the_kernels_the_cpu_backend_proves() {
    let strip = |k: GeneratedKernel| -> String {
        k.to_string()
            .lines()
            .filter(|l| !l.starts_with("// target:"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (mut simt, mut matrix) = (0, 0);
    for b in attnforge::kernels::ALL {
        for kernel in b.kernels() {
            let sm90 = gen(&kernel, b.name, Arch::Sm90);
            let proven = if sm90.uses_matrix_unit() {
                matrix += 1;
                Arch::Sm90
            } else {
                simt += 1;
                Arch::Gfx1030
            };
            let want = strip(gen(&kernel, b.name, proven));
            for arch in Arch::NVIDIA {
                let nv = strip(gen(&kernel, b.name, arch));
                assert!(nv == want, "{} at {arch} differs from {proven}", b.name);
            }
        }
    }
    // Decode and split-K decode of the three specs with groups of 4 to 16
    // heads (Llama 3, Mistral, Qwen 2.5), and the prefill of the six with
    // f16 or bf16 queries (all but SmolLM2).
    assert_eq!((simt, matrix), (6 + 7 * 4 - 12, 12));
}
