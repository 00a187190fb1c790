//! The kernels attnforge generates, each a function from a spec and a
//! target to a verified [`GeneratedKernel`].
//!
//! [`symbol`] is the one place a kernel's name is made; codegen names the
//! `extern "C"` function with it and launchers look the function up with it.

mod append;
mod decode;
mod host;
mod merge;
mod mma;
mod prefill;

use std::fmt;

use crate::hip;
use crate::ir::verify::{verify, Analysis, VerifyErrors};
use crate::ir::Kernel;
use crate::registry::KernelKind;
use crate::spec::{Alibi, AttentionSpec, KvLayoutSpec, KvScale, SpecError};
use crate::target::{Arch, Target};

pub use decode::{decode_head_blocks, DECODE_WARPS};
pub use host::decode_kv_heads_per_block;
pub use host::prefill::HOST_PREFILL_ROWS;
pub use mma::matrix_instr;
pub use prefill::{prefill_kv_tile, PREFILL_ROWS};

/// The matrix instruction decode (and split-K decode) uses on `target`:
/// where [`matrix_instr`] has one and a block holds at least 4 of the
/// group's query heads (fewer keep the SIMT decode).
pub fn decode_instr(spec: &AttentionSpec, target: Target) -> Option<crate::ir::mma::MmaInstr> {
    matrix_instr(spec, target).filter(|_| mma::decode::applies(spec))
}

/// Packed query rows (tokens × the group's query heads) per prefill block
/// on `target`: the prefill grid's x counts tiles of this many rows.
/// [`PREFILL_ROWS`] for the SIMT kernel, 16 per warp for the matrix-core
/// one ([`matrix_instr`]): 64, or 32 for head dims over 128 on NVIDIA;
/// [`HOST_PREFILL_ROWS`] for the host schedule.
pub fn prefill_rows(spec: &AttentionSpec, target: Target) -> u32 {
    prefill_rows_path(spec, target, KernelPath::Auto)
}

/// [`prefill_rows`] of the prefill kernel `path` gives.
pub fn prefill_rows_path(spec: &AttentionSpec, target: Target, path: KernelPath) -> u32 {
    match (matrix_instr(spec, target), path) {
        _ if target.arch == Arch::Host => host::prefill::HOST_PREFILL_ROWS,
        (Some(instr), KernelPath::Auto) => mma::prefill::block_rows(spec.kv.head_dim, instr),
        _ => PREFILL_ROWS,
    }
}

/// A kernel to generate: its kind and the spec it is generated from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KernelSpec {
    /// Paged decode attention for an attention spec.
    Decode(AttentionSpec),
    /// KV append for a layout.
    Append(KvLayoutSpec),
    /// Paged prefill attention for an attention spec.
    Prefill(AttentionSpec),
    /// Split-K decode: partial outputs of one KV chunk per block.
    DecodeSplit(AttentionSpec),
    /// The merge of split-K decode's partial outputs into the output.
    DecodeMerge(AttentionSpec),
}

impl KernelSpec {
    /// Which kernel.
    pub fn kind(&self) -> KernelKind {
        match self {
            KernelSpec::Decode(_) => KernelKind::Decode,
            KernelSpec::Append(_) => KernelKind::Append,
            KernelSpec::Prefill(_) => KernelKind::Prefill,
            KernelSpec::DecodeSplit(_) => KernelKind::DecodeSplit,
            KernelSpec::DecodeMerge(_) => KernelKind::DecodeMerge,
        }
    }

    /// The layout the kernel reads or writes.
    pub fn layout(&self) -> KvLayoutSpec {
        match self {
            KernelSpec::Append(l) => *l,
            KernelSpec::Decode(a)
            | KernelSpec::Prefill(a)
            | KernelSpec::DecodeSplit(a)
            | KernelSpec::DecodeMerge(a) => a.kv,
        }
    }

    /// The attention, for every kernel but append.
    pub fn attention(&self) -> Option<&AttentionSpec> {
        match self {
            KernelSpec::Append(_) => None,
            KernelSpec::Decode(a)
            | KernelSpec::Prefill(a)
            | KernelSpec::DecodeSplit(a)
            | KernelSpec::DecodeMerge(a) => Some(a),
        }
    }

    /// The launch grid for a call. `n` is the batch size, or the number of
    /// new tokens for append; `m` is the number of query tiles for prefill
    /// (see [`PREFILL_ROWS`]) and of splits for split-K decode, and unused
    /// otherwise.
    ///
    /// Decode: one block per (KV head, sequence), or per (head block, KV
    /// head, sequence) for a group too large for one block (see
    /// [`decode_head_blocks`]). Append: one block per token.
    /// Prefill: one block per (query tile, KV head, sequence). Split-K
    /// decode: one per (KV head, sequence, split). Merge: one per (query
    /// head, sequence).
    pub fn grid(&self, n: u32, m: u32) -> [u32; 3] {
        self.grid_serving(n, m, 1)
    }

    /// [`KernelSpec::grid`] with each host decode block serving
    /// `kv_heads_per_block` KV heads (from [`decode_kv_heads_per_block`],
    /// which gives more than one only at the host target, for specs whose
    /// host kernel reads its share from the grid). A value that does not
    /// divide the KV heads, or a spec whose group spreads over several
    /// blocks, gives the one-head grid, which every kernel runs correctly;
    /// the other kernels' grids do not depend on it.
    pub fn grid_serving(&self, n: u32, m: u32, kv_heads_per_block: u32) -> [u32; 3] {
        let decode_x = |a: &AttentionSpec| {
            let (blocks, p) = (decode_head_blocks(a).0, kv_heads_per_block.max(1));
            match blocks == 1 && a.kv.kv_heads.is_multiple_of(p) {
                true => a.kv.kv_heads / p,
                false => a.kv.kv_heads * blocks,
            }
        };
        match self {
            KernelSpec::Decode(a) => [decode_x(a), n, 1],
            KernelSpec::Append(_) => [n, 1, 1],
            KernelSpec::Prefill(a) => [m, a.kv.kv_heads, n],
            KernelSpec::DecodeSplit(a) => [decode_x(a), n, m],
            KernelSpec::DecodeMerge(a) => [a.q_heads, n, 1],
        }
    }

    /// The grid's axes in words, for listings and the printed preamble.
    pub fn grid_axes(&self) -> &'static str {
        let spread = |a: &AttentionSpec| decode_head_blocks(a).0 > 1;
        match self {
            KernelSpec::Decode(a) if spread(a) => "(kv_heads × head blocks, batch)",
            KernelSpec::Decode(_) => "(kv_heads, batch)",
            KernelSpec::Append(_) => "(new tokens)",
            KernelSpec::Prefill(_) => "(query tiles, kv_heads, batch)",
            KernelSpec::DecodeSplit(a) if spread(a) => "(kv_heads × head blocks, batch, splits)",
            KernelSpec::DecodeSplit(_) => "(kv_heads, batch, splits)",
            KernelSpec::DecodeMerge(_) => "(q_heads, batch)",
        }
    }
}

/// Every kernel an attention owns: decode, prefill, split-K decode and its
/// merge.
pub fn attention_kernels(a: &AttentionSpec) -> [KernelSpec; 4] {
    [
        KernelSpec::Decode(*a),
        KernelSpec::Prefill(*a),
        KernelSpec::DecodeSplit(*a),
        KernelSpec::DecodeMerge(*a),
    ]
}

/// The kernel's symbol, built from everything its code depends on:
/// operation, dtype, order, page size, heads, head_dim and variants.
///
/// ```
/// use attnforge_codegen::kernels::{symbol, KernelSpec};
/// use attnforge_codegen::spec::{DType, KvLayoutSpec, KvScale, Order};
/// let kv = KvLayoutSpec { page_size: 16, kv_heads: 8, head_dim: 128, dtype: DType::F16, order: Order::Nhd, scale: KvScale::Unscaled };
/// assert_eq!(symbol(&KernelSpec::Append(kv)), "af_append_f16_nhd_p16_h8_d128");
/// ```
pub fn symbol(spec: &KernelSpec) -> String {
    let kv = spec.layout();
    let layout = format!(
        "{}{}_{}_p{}",
        kv.dtype.name(),
        match kv.scale {
            KvScale::Unscaled => "",
            KvScale::PerTensor => "_st",
            KvScale::PerHead => "_sh",
        },
        kv.order.name().to_ascii_lowercase(),
        kv.page_size
    );
    match spec {
        KernelSpec::Append(_) => format!("af_append_{layout}_h{}_d{}", kv.kv_heads, kv.head_dim),
        KernelSpec::Decode(a) => format!("af_decode_{layout}{}", attention_suffix(a, false)),
        KernelSpec::DecodeSplit(a) => {
            format!("af_decode_split_{layout}{}", attention_suffix(a, false))
        }
        KernelSpec::Prefill(a) => format!("af_prefill_{layout}{}", attention_suffix(a, true)),
        KernelSpec::DecodeMerge(a) => {
            // The merge reads only f32 partials: the cache's layout and the
            // logit variants do not change its code.
            let mut s = format!(
                "af_decode_merge_{}_h{}_d{}",
                a.query_dtype().name(),
                a.q_heads,
                kv.head_dim
            );
            if a.sinks {
                s += "_sinks";
            }
            s
        }
    }
}

/// Heads, head_dim and every variant of an attention, as symbol text.
fn attention_suffix(a: &AttentionSpec, causal_matters: bool) -> String {
    let kv = a.kv;
    let mut s = format!("_h{}x{}_d{}", kv.kv_heads, a.group_size(), kv.head_dim);
    if causal_matters && a.causal {
        s += "_causal";
    }
    if let Some(w) = a.sliding_window {
        s += &format!("_w{w}");
    }
    if let Some(c) = a.logits_soft_cap {
        s += &format!("_cap{}", number(c));
    }
    if let Some(sc) = a.scale {
        s += &format!("_s{}", number(sc));
    }
    if a.q_dtype.is_some_and(|d| d != kv.dtype) {
        s += &format!("_q{}", a.query_dtype().name());
    }
    match a.alibi {
        Some(Alibi::Computed) => s += "_alibi",
        Some(Alibi::Given) => s += "_alibig",
        None => {}
    }
    if a.sinks {
        s += "_sinks";
    }
    s
}

/// A float as identifier text: the integer when exact, else its bits.
fn number(v: f32) -> String {
    if v.fract() == 0.0 && v.abs() < 1e6 {
        format!("{}", v as i64)
    } else {
        format!("x{:08x}", v.to_bits())
    }
}

/// Why a kernel could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    /// The spec breaks a rule.
    #[error("invalid spec: {0}")]
    Spec(#[from] SpecError),
    /// The generated IR failed verification: a bug in attnforge.
    #[error("generated kernel failed verification (an attnforge bug):\n{0}")]
    Verify(#[from] VerifyErrors),
}

/// A generated, verified kernel: a value that prints itself as HIP C++.
#[derive(Clone, Debug)]
pub struct GeneratedKernel {
    /// What it was generated from.
    pub spec: KernelSpec,
    /// The verified IR.
    pub kernel: Kernel,
    /// What the verifier learned (uniformity of every variable).
    pub analysis: Analysis,
}

impl GeneratedKernel {
    /// The kernel's symbol.
    pub fn symbol(&self) -> &str {
        &self.kernel.name
    }

    /// Threads per block the kernel must be launched with.
    pub fn block_dim(&self) -> u32 {
        self.kernel.block_dim
    }

    /// The target it was generated for.
    pub fn target(&self) -> Target {
        self.kernel.target
    }

    /// Whether it uses a matrix instruction.
    pub fn uses_matrix_unit(&self) -> bool {
        fn any(stmts: &[crate::ir::Stmt]) -> bool {
            use crate::ir::{Collective, Stmt};
            stmts.iter().any(|s| match s {
                Stmt::Collective {
                    op: Collective::Mma { .. },
                    ..
                } => true,
                Stmt::For { body, .. } | Stmt::While { body, .. } | Stmt::Unroll { body, .. } => {
                    any(body)
                }
                Stmt::If {
                    then, otherwise, ..
                } => any(then) || any(otherwise),
                _ => false,
            })
        }
        any(&self.kernel.body)
    }
}

impl fmt::Display for GeneratedKernel {
    /// The HIP translation unit.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut preamble = vec![format!("kernel: {}", self.spec.kind())];
        preamble.push(match &self.spec {
            KernelSpec::Append(l) => format!("layout: {l:?}"),
            KernelSpec::Decode(a)
            | KernelSpec::Prefill(a)
            | KernelSpec::DecodeSplit(a)
            | KernelSpec::DecodeMerge(a) => format!("attention: {a:?}"),
        });
        preamble.push(format!(
            "target: {}; block: {} threads; grid: {}",
            self.kernel.target,
            self.kernel.block_dim,
            self.spec.grid_axes()
        ));
        hip::print(&self.kernel, &preamble, f)
    }
}

/// Generates and verifies a kernel for a target.
pub fn generate(spec: &KernelSpec, target: Target) -> Result<GeneratedKernel, CodegenError> {
    spec.layout().validate()?;
    let name = symbol(spec);
    if let Some(a) = spec.attention() {
        a.validate()?;
    }
    let kernel = match spec {
        KernelSpec::Decode(a) | KernelSpec::DecodeSplit(a) => {
            let split = matches!(spec, KernelSpec::DecodeSplit(_));
            match decode_instr(a, target) {
                Some(instr) => mma::decode::build(a, target, &name, split, instr),
                None => decode::build(a, target, &name, split),
            }
        }
        KernelSpec::DecodeMerge(a) => merge::build(a, target, &name),
        KernelSpec::Prefill(a) => match matrix_instr(a, target) {
            Some(instr) => mma::prefill::build(a, target, &name, instr),
            None => prefill::build(a, target, &name),
        },
        KernelSpec::Append(l) => append::build(l, target, &name),
    };
    let analysis = verify(&kernel)?;
    Ok(GeneratedKernel {
        spec: *spec,
        kernel,
        analysis,
    })
}

/// Which form of a kernel to generate where a target has two: the
/// matrix-core kernels ([`matrix_instr`], [`decode_instr`]) or the SIMT
/// ones (f32 FMAs only), which every target has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KernelPath {
    /// The matrix-core kernel where the target and dtypes have one (what
    /// [`generate`] gives and the build helper compiles), else SIMT.
    #[default]
    Auto,
    /// Always the SIMT kernel: to compare the two, or to rule the matrix
    /// unit out.
    Simt,
}

/// Whether `path` changes `spec`'s kernel on `target` (a matrix-core
/// kernel that [`KernelPath::Simt`] replaces).
fn simt_differs(spec: &KernelSpec, target: Target) -> bool {
    match spec {
        KernelSpec::Prefill(a) => matrix_instr(a, target).is_some(),
        KernelSpec::Decode(a) | KernelSpec::DecodeSplit(a) => decode_instr(a, target).is_some(),
        _ => false,
    }
}

/// The symbol of `spec`'s kernel on `target` by `path`: [`symbol`], with
/// `_simt` after it where the SIMT form is not the one [`generate`] gives.
pub fn path_symbol(spec: &KernelSpec, target: Target, path: KernelPath) -> String {
    match path {
        KernelPath::Simt if simt_differs(spec, target) => format!("{}_simt", symbol(spec)),
        _ => symbol(spec),
    }
}

/// Generates and verifies `spec`'s kernel on `target` by `path`: the same
/// parameters, grid rule and results either way (both are proven against
/// the same reference), named by [`path_symbol`].
pub fn generate_path(
    spec: &KernelSpec,
    target: Target,
    path: KernelPath,
) -> Result<GeneratedKernel, CodegenError> {
    if path == KernelPath::Auto || !simt_differs(spec, target) {
        return generate(spec, target);
    }
    spec.layout().validate()?;
    let name = path_symbol(spec, target, path);
    let kernel = match spec {
        KernelSpec::Prefill(a) => {
            a.validate()?;
            prefill::build(a, target, &name)
        }
        KernelSpec::Decode(a) | KernelSpec::DecodeSplit(a) => {
            a.validate()?;
            decode::build(a, target, &name, matches!(spec, KernelSpec::DecodeSplit(_)))
        }
        _ => unreachable!("simt_differs holds for prefill and decode only"),
    };
    let analysis = verify(&kernel)?;
    Ok(GeneratedKernel {
        spec: *spec,
        kernel,
        analysis,
    })
}

/// Elements per 16-byte vector access of `dtype` (4 for f32, 8 for f16/bf16,
/// 16 for fp8).
pub(crate) fn vector_lanes(dtype: crate::spec::DType) -> u32 {
    16 / dtype.size_bytes()
}

/// Elements per vector access of a layout's K/V rows: 16 bytes, or 8 when
/// an fp8 row (a multiple of 8 elements) does not split into 16.
pub(crate) fn kv_vector_lanes(kv: &KvLayoutSpec) -> u32 {
    let v = vector_lanes(kv.dtype);
    if kv.head_dim.is_multiple_of(v) {
        v
    } else {
        8
    }
}

/// The source dtype of a layout's append kernel: the cache's own, or f32
/// for an fp8 cache (quantized in the kernel with the layout's scales).
pub fn append_source_dtype(kv: &KvLayoutSpec) -> crate::spec::DType {
    if kv.dtype.is_fp8() {
        crate::spec::DType::F32
    } else {
        kv.dtype
    }
}

/// The `k_scale` and `v_scale` kernel buffers of an fp8 layout (one f32 per
/// tensor or per KV head, see [`crate::spec::KvScale`]), declared after the
/// variants' buffers; `None` for an unscaled layout.
pub(crate) fn kv_scale_params(
    b: &mut crate::ir::builder::KernelBuilder,
    kv: &KvLayoutSpec,
) -> Option<(crate::ir::BufId, crate::ir::BufId)> {
    use crate::ir::{Access, Scalar};
    (kv.scale != KvScale::Unscaled).then(|| {
        (
            b.global("k_scale", Scalar::F32, Access::Read),
            b.global("v_scale", Scalar::F32, Access::Read),
        )
    })
}

/// The K and V scales of KV head `head` (an i32 expression), as variables.
pub(crate) fn kv_scale_values(
    b: &mut crate::ir::builder::KernelBuilder,
    kv: &KvLayoutSpec,
    bufs: Option<(crate::ir::BufId, crate::ir::BufId)>,
    head: &crate::ir::Expr,
) -> Option<(crate::ir::Expr, crate::ir::Expr)> {
    use crate::ir::Expr;
    let (k, v) = bufs?;
    let at = match kv.scale {
        KvScale::PerHead => head.clone(),
        _ => Expr::i32(0),
    };
    Some((
        b.let_("k_scale_h", Expr::load(k, at.clone(), 1)),
        b.let_("v_scale_h", Expr::load(v, at, 1)),
    ))
}

/// `layout.offset(page, token, head)` as an i64 IR expression.
pub(crate) fn kv_offset(
    kv: &KvLayoutSpec,
    page: crate::ir::Expr,
    token: crate::ir::Expr,
    head: crate::ir::Expr,
) -> crate::ir::Expr {
    use crate::ir::Expr;
    let (p, h, d) = (
        Expr::i64(kv.page_size as i64),
        Expr::i64(kv.kv_heads as i64),
        Expr::i64(kv.head_dim as i64),
    );
    match kv.order {
        crate::spec::Order::Nhd => ((page * p + token) * h + head) * d,
        crate::spec::Order::Hnd => ((page * h + head) * p + token) * d,
    }
}

/// ALiBi's slope for query head `qhead` (an i32 expression), or `None`
/// without ALiBi. `slopes` is the launch's slope buffer under
/// [`Alibi::Given`]. The slope is in natural-log logit units.
pub(crate) fn alibi_slope(
    spec: &AttentionSpec,
    qhead: crate::ir::Expr,
    slopes: Option<crate::ir::BufId>,
) -> Option<crate::ir::Expr> {
    use crate::ir::{Expr, Scalar};
    match (spec.alibi?, slopes) {
        (Alibi::Given, Some(buf)) => Some(Expr::load(buf, qhead, 1)),
        (Alibi::Given, None) => None,
        (Alibi::Computed, _) => {
            // p: the largest power of two ≤ q_heads (see Alibi::Computed).
            let p = 1u32 << (31 - spec.q_heads.leading_zeros());
            let h = qhead.clone().cast(Scalar::F32);
            let pf = p as f32;
            let first = (h.clone() + Expr::f32(1.0)) * Expr::f32(-8.0 / pf);
            let rest = (h * Expr::f32(2.0) - Expr::f32(2.0 * pf - 1.0)) * Expr::f32(-4.0 / pf);
            Some(qhead.lt(Expr::i32(p as i32)).select(first, rest).exp2())
        }
    }
}

/// The kernel buffers for the launch-time parameters of an attention's
/// variants, declared in this order after the page table: the sinks (one
/// f32 logit per query head) when `sinks` is set and asked for, then the
/// ALiBi slopes (one f32 per query head) under [`Alibi::Given`].
pub(crate) fn variant_params(
    b: &mut crate::ir::builder::KernelBuilder,
    spec: &AttentionSpec,
    with_sinks: bool,
) -> (Option<crate::ir::BufId>, Option<crate::ir::BufId>) {
    use crate::ir::{Access, Scalar};
    let sinks = (spec.sinks && with_sinks).then(|| b.global("sinks", Scalar::F32, Access::Read));
    let slopes = (spec.alibi == Some(Alibi::Given))
        .then(|| b.global("alibi_slopes", Scalar::F32, Access::Read));
    (sinks, slopes)
}

/// A logit in the base-2 domain from a raw dot product: scaled, soft-capped,
/// plus an ALiBi bias already in base 2. scale·log2(e) folds into one
/// constant unless the soft-cap's tanh sits between them.
pub(crate) fn logit2(
    spec: &AttentionSpec,
    dot: crate::ir::Expr,
    bias: Option<crate::ir::Expr>,
) -> crate::ir::Expr {
    use crate::ir::Expr;
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    let scale = spec.effective_scale();
    let (x, factor) = match spec.logits_soft_cap {
        None => (dot, scale * LOG2_E),
        Some(cap) => (
            Expr::f32(cap) * (dot * Expr::f32(scale / cap)).tanh(),
            LOG2_E,
        ),
    };
    match bias {
        Some(b) => x.fma(Expr::f32(factor), b),
        None => x * Expr::f32(factor),
    }
}

/// Sequence `seq`'s first page-table entry and its length in tokens, from
/// the CSR page table (`kv_indptr`, `kv_last_page_len`); 0 tokens for a
/// sequence without pages.
pub(crate) fn seq_pages(
    b: &mut crate::ir::builder::KernelBuilder,
    kv: &KvLayoutSpec,
    indptr: crate::ir::BufId,
    last_len: crate::ir::BufId,
    seq: &crate::ir::Expr,
) -> (crate::ir::Expr, crate::ir::Expr) {
    use crate::ir::Expr;
    let page_begin = b.let_("page_begin", Expr::load(indptr, seq.clone(), 1));
    let npages = b.let_(
        "num_pages",
        Expr::load(indptr, seq.clone() + Expr::i32(1), 1) - page_begin.clone(),
    );
    let full = (npages.clone() - Expr::i32(1)) * Expr::i32(kv.page_size as i32)
        + Expr::load(last_len, seq.clone(), 1);
    let kv_len = b.let_("kv_len", npages.gt(Expr::i32(0)).select(full, Expr::i32(0)));
    (page_begin, kv_len)
}
