//! Which kernels run on the matrix unit, and why the numeric tests' two
//! matrix-core targets (gfx90a, sm_90) prove the other two (gfx940, sm_80).

use attnforge_codegen::ir::mma::MmaInstr;
use attnforge_codegen::kernels::{
    attention_kernels, decode_instr, generate, generate_path, matrix_instr, path_symbol,
    prefill_rows, symbol, KernelPath, KernelSpec, PREFILL_ROWS,
};
use attnforge_codegen::spec::{Alibi, AttentionSpec, DType, KvLayoutSpec, KvScale, Order};
use attnforge_codegen::target::Arch;

fn kv(dtype: DType, kv_heads: u32, head_dim: u32) -> KvLayoutSpec {
    KvLayoutSpec {
        page_size: 16,
        kv_heads,
        head_dim,
        dtype,
        order: Order::Nhd,
        scale: if dtype == DType::F8E4M3 {
            KvScale::PerHead
        } else {
            KvScale::Unscaled
        },
    }
}

#[test]
fn the_matrix_unit_serves_f16_and_bf16_queries_on_cdna_and_nvidia() {
    let spec = |dtype, q: Option<DType>, heads| AttentionSpec {
        q_dtype: q,
        ..AttentionSpec::new(kv(dtype, 2, 128), heads)
    };
    let f16 = spec(DType::F16, None, 8);
    let bf16 = spec(DType::BF16, None, 8);
    let t = |a: Arch| a.target();
    assert_eq!(
        matrix_instr(&f16, t(Arch::Gfx90a)),
        Some(MmaInstr::Mfma16x16x16F16)
    );
    assert_eq!(
        matrix_instr(&bf16, t(Arch::Gfx940)),
        Some(MmaInstr::Mfma16x16x16Bf16)
    );
    assert_eq!(
        matrix_instr(&f16, t(Arch::Sm80)),
        Some(MmaInstr::Mma16x8x16F16)
    );
    assert_eq!(
        matrix_instr(&bf16, t(Arch::Sm90)),
        Some(MmaInstr::Mma16x8x16Bf16)
    );
    // No matrix instructions on RDNA2 or the host.
    for a in [Arch::Gfx1030, Arch::Host] {
        assert_eq!(matrix_instr(&f16, t(a)), None, "{a}");
    }
    // f32 queries (over any cache), and f16 queries over bf16, stay SIMT;
    // an fp8 cache is dequantized to the queries' f16 or bf16.
    for (cache, q) in [
        (DType::F32, None),
        (DType::F16, Some(DType::F32)),
        (DType::BF16, Some(DType::F16)),
        (DType::F8E4M3, Some(DType::F32)),
    ] {
        assert_eq!(
            matrix_instr(&spec(cache, q, 8), t(Arch::Sm90)),
            None,
            "{cache:?} {q:?}"
        );
    }
    let fp8 = spec(DType::F8E4M3, Some(DType::BF16), 8);
    assert_eq!(
        matrix_instr(&fp8, t(Arch::Sm90)),
        Some(MmaInstr::Mma16x8x16Bf16)
    );
    // Decode takes it from 4 heads per block (4 to 16 of the group: 2 KV
    // heads here); the prefill whatever the group.
    for (heads, want) in [(2, false), (4, false), (8, true), (32, true), (64, true)] {
        let s = spec(DType::F16, None, heads);
        assert_eq!(
            decode_instr(&s, t(Arch::Sm90)).is_some(),
            want,
            "{heads} heads"
        );
        assert!(matrix_instr(&s, t(Arch::Sm90)).is_some());
    }
    // The prefill's query tile follows the kernel.
    assert_eq!(prefill_rows(&f16, t(Arch::Sm90)), 64);
    assert_eq!(prefill_rows(&f16, t(Arch::Gfx1030)), PREFILL_ROWS);
    let d256 = AttentionSpec::new(kv(DType::BF16, 2, 256), 8);
    assert_eq!(prefill_rows(&d256, t(Arch::Sm90)), 32);
    assert_eq!(prefill_rows(&d256, t(Arch::Gfx90a)), 64);
}

/// The generated IR but for the target it names.
fn ir(k: &attnforge_codegen::kernels::GeneratedKernel) -> String {
    let mut k = k.kernel.clone();
    k.target = Arch::Host.target();
    format!("{k:?}")
}

/// gfx940's matrix-core kernels are gfx90a's (the same wave64 MFMA code),
/// sm_80's are sm_90's: over every variant combination, dtype and a spread
/// of head dims and groups, for every kernel kind. The numeric tests run
/// gfx90a and sm_90 (`attnforge_runtime::check::archs_for`).
#[test]
fn gfx940_kernels_are_gfx90as_and_sm80s_are_sm90s() {
    let mut compared = 0;
    for i in 0..48u32 {
        let dtype = [DType::F16, DType::BF16, DType::F8E4M3][i as usize % 3];
        let (kv_heads, q_heads, head_dim) =
            [(2, 8, 128), (1, 7, 64), (2, 16, 40), (1, 4, 256)][(i / 3) as usize % 4];
        let spec = AttentionSpec {
            causal: i & 1 != 0,
            sliding_window: (i & 2 != 0).then_some(50),
            logits_soft_cap: (i & 4 != 0).then_some(30.0),
            alibi: match (i / 8) % 3 {
                0 => None,
                1 => Some(Alibi::Computed),
                _ => Some(Alibi::Given),
            },
            sinks: i & 16 != 0,
            q_dtype: (dtype == DType::F8E4M3).then_some(DType::BF16),
            ..AttentionSpec::new(kv(dtype, kv_heads, head_dim), q_heads)
        };
        for kernel in attention_kernels(&spec) {
            for (a, b) in [(Arch::Gfx940, Arch::Gfx90a), (Arch::Sm80, Arch::Sm90)] {
                let (x, y) = (generate(&kernel, a.target()), generate(&kernel, b.target()));
                let (x, y) = (x.unwrap(), y.unwrap());
                assert_eq!(x.uses_matrix_unit(), y.uses_matrix_unit());
                assert!(ir(&x) == ir(&y), "{} at {a} and {b}", symbol(&kernel));
                compared += usize::from(x.uses_matrix_unit());
            }
        }
    }
    // Every spec's prefill, and decode and split-K decode of those with 4
    // to 16 heads per block, at both pairs.
    assert!(compared >= 48 * 2, "{compared}");
}

/// The SIMT form on demand: another symbol where the matrix-core kernel
/// is the default, no matrix instruction, the same parameters.
#[test]
fn the_simt_path_names_and_builds_the_simt_kernel() {
    let spec = AttentionSpec {
        causal: true,
        ..AttentionSpec::new(kv(DType::F16, 2, 128), 8)
    };
    for kernel in [
        KernelSpec::Decode(spec),
        KernelSpec::DecodeSplit(spec),
        KernelSpec::Prefill(spec),
    ] {
        for arch in [Arch::Gfx90a, Arch::Sm90] {
            let t = arch.target();
            let auto = generate_path(&kernel, t, KernelPath::Auto).unwrap();
            let simt = generate_path(&kernel, t, KernelPath::Simt).unwrap();
            assert!(auto.uses_matrix_unit() && !simt.uses_matrix_unit());
            assert_eq!(auto.symbol(), symbol(&kernel));
            assert_eq!(simt.symbol(), format!("{}_simt", symbol(&kernel)));
            assert_eq!(path_symbol(&kernel, t, KernelPath::Simt), simt.symbol());
            assert_eq!(auto.kernel.params.len(), simt.kernel.params.len());
            // Where there is no matrix-core form, the path changes nothing.
            let rdna = generate_path(&kernel, Arch::Gfx1030.target(), KernelPath::Simt).unwrap();
            assert_eq!(rdna.symbol(), symbol(&kernel));
        }
    }
}
