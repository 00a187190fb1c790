//! CPU schedules for the host target (`Arch::Host`, a warp of one thread).
//!
//! The GPU schedules spread a K/V row over the lanes of a warp and merge
//! them with shuffles; on the host a block is one thread, so the same
//! kernels (same symbol, parameters, grid and results) are laid out for a
//! CPU core instead: tokens in tiles of [`TILE`], each K/V row converted to
//! f32 once and used by every query head of the group, the softmax rescaled
//! once per tile, and every inner loop a loop over a row's elements that
//! LLVM vectorises. They are never printed for a GPU.

mod by_rows;
pub(crate) mod decode;
pub(crate) mod prefill;
mod tile;

use crate::ir::builder::KernelBuilder;
use crate::ir::{BufId, Expr, Scalar};
use crate::spec::{AttentionSpec, DType, Order};
use crate::target::{Arch, Target};

/// Tokens per tile of the host schedules.
pub const TILE: u32 = 16;

/// The f32 query (and accumulator) elements a host decode block may keep
/// for the KV heads it serves: 16 KiB each, the most one unrolled loop
/// fills ([`crate::ir::verify::MAX_UNROLL`]).
const BLOCK_ROW_ELEMS: u32 = 4096;

/// The most KV heads one host decode block serves (its passes are a loop
/// of that many iterations).
const MAX_BLOCK_KV_HEADS: u32 = 16;

/// The KV heads one host decode block can serve (each with its whole group
/// of query heads): every one, for NHD pages with at most
/// [`MAX_BLOCK_KV_HEADS`] KV heads whose f32 query and accumulator rows fit
/// [`BLOCK_ROW_ELEMS`] each; otherwise one (HND pages,
/// where a head's rows are contiguous already, and a group spread over
/// several blocks).
///
/// Why: in an NHD page a KV head's rows are `head_dim` elements every
/// `kv_heads · head_dim`, so a block walking one head reads a few cache
/// lines in every 2 KB and the core's prefetchers never get ahead. A block
/// serving every KV head reads each page whole, head by head, and
/// prefetches the next tile's pages whole, in address order (BENCHMARKS.md).
/// Each head's arithmetic is the same either way, so the outputs have the
/// same bits.
pub(crate) fn max_kv_heads_per_block(spec: &AttentionSpec) -> u32 {
    let kv = &spec.kv;
    let every = kv.order == Order::Nhd
        && (2..=MAX_BLOCK_KV_HEADS).contains(&kv.kv_heads)
        && super::decode_head_blocks(spec).0 == 1
        && spec.q_heads * kv.head_dim <= BLOCK_ROW_ELEMS;
    if every {
        kv.kv_heads
    } else {
        1
    }
}

/// The KV heads each block of a decode (or split-K decode) launch serves
/// at `target`, given `per_kv_head` blocks per KV head (sequences × chunks)
/// on a device of `compute_units` cores: 1 except at the host target,
/// where a block serves every KV head when it can ([`max_kv_heads_per_block`])
/// and that still leaves four blocks per core to balance uneven sequences.
///
/// The launch's grid x is then `kv_heads / kv_heads_per_block` (see
/// [`crate::kernels::KernelSpec::grid_serving`]); the host kernel reads
/// its share from the grid.
pub fn decode_kv_heads_per_block(
    spec: &AttentionSpec,
    target: Target,
    per_kv_head: u64,
    compute_units: u32,
) -> u32 {
    let most = max_kv_heads_per_block(spec);
    let enough = per_kv_head >= 4 * compute_units.max(1) as u64;
    if target.arch == Arch::Host && enough {
        most
    } else {
        1
    }
}

/// Lanes of the host schedules' vectors: one 256-bit register of f32.
pub(crate) const W: u32 = 8;

/// Lanes of the host schedules' element-wise vector work (work whose
/// every lane does its own sum, so the width changes no bit): 16, one
/// 512-bit register of f32, where a row of `d` elements holds whole ones;
/// LLVM splits them in two 256-bit halves on CPUs without AVX-512.
pub(crate) fn wide_lanes(d: u32) -> u32 {
    if d.is_multiple_of(16) {
        16
    } else {
        W
    }
}

/// An i32 literal.
pub(crate) fn i32(v: u32) -> Expr {
    Expr::i32(v as i32)
}

/// `e` as an i64.
pub(crate) fn i64(e: Expr) -> Expr {
    e.cast(Scalar::I64)
}

/// A 2W-lane vector's two W-lane halves.
pub(crate) fn halves(x: &Expr) -> (Expr, Expr) {
    (lanes_of(x, 0, W), lanes_of(x, W, W))
}

/// `x` in every lane of a vector of `n` lanes.
pub(crate) fn splat_n(x: Expr, n: u32) -> Expr {
    Expr::Vector(vec![x; n as usize])
}

/// The loads (32 bytes at most: one AVX register) of chunk `chunk` (`lanes` elements from
/// `chunk·lanes`) of the row of `buf` at element `base`, in storage type,
/// and the elements each holds.
fn chunk_loads(
    buf: BufId,
    base: &Expr,
    chunk: &Expr,
    lanes: u32,
    dtype: DType,
) -> (Vec<Expr>, u32) {
    let per_load = (32 / dtype.size_bytes()).min(lanes);
    let loads = (0..lanes / per_load)
        .map(|p| {
            let off = chunk.clone() * Expr::i32(lanes as i32) + Expr::i32((p * per_load) as i32);
            Expr::load(buf, base.clone() + off.cast(Scalar::I64), per_load as u8)
        })
        .collect();
    (loads, per_load)
}

/// The factor the host schedules hold K/V elements of `dtype` by in f32:
/// 2^-8 for fp8, 1 for the others.
///
/// The CPU lowering converts an fp8 code through an f16 whose value is the
/// code's 2^-8 (bias 15 against e4m3's 7) and multiplies by 2^8; asked for
/// the value times 2^-8 it leaves that multiply out (one vector operation
/// fewer per 16 elements, in the loops that bound fp8 decode on a CPU).
/// The 2^8 goes into K's and V's scales instead ([`unit_scales`]): a dot
/// product or accumulator over elements times 2^-8 is the plain one times
/// 2^-8 exactly (each FMA rounds the same, a power of two apart) while it
/// stays in f32's normal range, so the logits and accumulators keep their
/// bits wherever the plain partial sums are 0 or at least 2^-118 in
/// magnitude, and so do the outputs, whose factor (V's scale, times the
/// sink's share where there are sinks, over the sum) is then the plain one
/// times 2^8 exactly; where the plain factor is subnormal (a sink's share
/// below about 2^-126 / V's scale) the scaled one keeps bits the plain one
/// lost. Scales are assumed below 2^120 (times 2^8, still finite).
pub(crate) fn kv_unit(dtype: DType) -> f32 {
    match dtype {
        DType::F8E4M3 => 1.0 / 256.0,
        _ => 1.0,
    }
}

/// `raw` (`lanes` K/V elements of `dtype`) in f32, times [`kv_unit`].
pub(crate) fn kv_f32(raw: Expr, dtype: DType, lanes: u32) -> Expr {
    let x = raw.cast(Scalar::F32);
    match kv_unit(dtype) {
        1.0 => x,
        unit if lanes == 1 => x * Expr::f32(unit),
        unit => x * splat_n(Expr::f32(unit), lanes),
    }
}

/// K's and V's scales (`kv_scale_values`' pair) as the host schedules
/// apply them: divided by [`kv_unit`] (exact: a power of two). An fp8
/// layout always has scales (the spec's rules); one without would get
/// 1/[`kv_unit`] itself, so its values still come out whole.
pub(crate) fn unit_scales(
    b: &mut KernelBuilder,
    dtype: DType,
    scales: Option<(Expr, Expr)>,
) -> Option<(Expr, Expr)> {
    let unit = kv_unit(dtype);
    let Some((k, v)) = scales else {
        let up = Expr::f32(1.0 / unit);
        return (unit != 1.0).then(|| (up.clone(), up));
    };
    Some(match unit {
        1.0 => (k, v),
        unit => {
            let up = Expr::f32(1.0 / unit);
            (
                b.let_("k_scale_u", k * up.clone()),
                b.let_("v_scale_u", v * up),
            )
        }
    })
}

/// The loads' elements in order, converted to f32 together (times
/// [`kv_unit`]): one vector of `loads.len() · per_load` lanes (the load
/// itself where there is one).
fn gather_f32(loads: &[Expr], per_load: u32, dtype: DType) -> Expr {
    let raw = match loads {
        [one] => one.clone(),
        _ => Expr::Vector(
            (0..loads.len() as u32 * per_load)
                .map(|e| {
                    loads[(e / per_load) as usize]
                        .clone()
                        .lane((e % per_load) as u8)
                })
                .collect(),
        ),
    };
    kv_f32(raw, dtype, loads.len() as u32 * per_load)
}

/// Chunk `chunk` (`lanes` elements from `chunk·lanes`) of the row of
/// `buf` at element `base`, in f32, loaded 32 bytes at a time.
pub(crate) fn load_row_f32(
    buf: BufId,
    base: &Expr,
    chunk: &Expr,
    lanes: u32,
    dtype: DType,
) -> Expr {
    let (loads, per_load) = chunk_loads(buf, base, chunk, lanes, dtype);
    gather_f32(&loads, per_load, dtype)
}

/// Chunk `chunk` of the rows at `base0` and `base1` in one 2W-lane f32
/// vector: lanes 0..W the first row's (as [`load_row_f32`] gives them),
/// W..2W the second's, converted together.
pub(crate) fn load_pair_f32(
    buf: BufId,
    base0: &Expr,
    base1: &Expr,
    chunk: &Expr,
    dtype: DType,
) -> Expr {
    let (mut loads, per_load) = chunk_loads(buf, base0, chunk, W, dtype);
    loads.extend(chunk_loads(buf, base1, chunk, W, dtype).0);
    gather_f32(&loads, per_load, dtype)
}

/// Whether the host schedules convert K/V rows of `d` elements of `dtype`
/// 32 elements at a time (two chunks of 2W, or two tokens' two chunks of
/// W): for fp8, whose bit work is done in 16-bit lanes, so 32 elements fill
/// one 512-bit register where 16 fill half of one (f16 and bf16 gain
/// nothing), in rows of whole 16-element vectors (each access aligned to
/// its lanes).
pub(crate) fn converts_in_pairs(dtype: DType, d: u32) -> bool {
    dtype.size_bytes() == 1 && d.is_multiple_of(2 * W)
}

/// Elements `from..from + 4W` of the row of `buf` at `base` (a row of `d`
/// elements), in f32 times [`kv_unit`]: one 4W-lane access where rows are
/// whole 4W-element vectors, two of 2W otherwise (each access aligned to
/// its lanes).
pub(crate) fn load_wide_f32(buf: BufId, base: &Expr, from: &Expr, d: u32, dtype: DType) -> Expr {
    let at = |k: u32| base.clone() + (from.clone() + i32(k)).cast(Scalar::I64);
    let raw = if d.is_multiple_of(4 * W) {
        Expr::load(buf, at(0), (4 * W) as u8)
    } else {
        let (a, b) = (
            Expr::load(buf, at(0), (2 * W) as u8),
            Expr::load(buf, at(2 * W), (2 * W) as u8),
        );
        Expr::Vector(
            (0..4 * W)
                .map(|e| match e < 2 * W {
                    true => a.clone().lane(e as u8),
                    false => b.clone().lane((e - 2 * W) as u8),
                })
                .collect(),
        )
    };
    kv_f32(raw, dtype, 4 * W)
}

/// Chunks `2·pair` and `2·pair + 1` of the rows at `base0` and `base1`
/// converted together: one 4W-lane f32 vector whose halves are
/// [`load_pair_f32`]'s vectors of the two chunks.
pub(crate) fn load_pairs_f32(
    buf: BufId,
    base0: &Expr,
    base1: &Expr,
    pair: &Expr,
    dtype: DType,
) -> Expr {
    let at = |base: &Expr| base.clone() + (pair.clone() * i32(2 * W)).cast(Scalar::I64);
    let (r0, r1) = (
        Expr::load(buf, at(base0), (2 * W) as u8),
        Expr::load(buf, at(base1), (2 * W) as u8),
    );
    let lanes = (0..4 * W)
        .map(|e| {
            let row = if (e / W).is_multiple_of(2) { &r0 } else { &r1 };
            row.clone().lane(((e / (2 * W)) * W + e % W) as u8)
        })
        .collect();
    kv_f32(Expr::Vector(lanes), dtype, 4 * W)
}

/// Lanes `from..from + n` of `x`.
pub(crate) fn lanes_of(x: &Expr, from: u32, n: u32) -> Expr {
    Expr::Vector((from..from + n).map(|e| x.clone().lane(e as u8)).collect())
}

/// The W lanes of `v` combined in a fixed order: the upper half onto the
/// lower half, then neighbours pairwise (`_mm256_extractf128` and two
/// `hadd`s, as ggml reduces on AVX).
pub(crate) fn lanes_fold(v: Expr, f: impl Fn(Expr, Expr) -> Expr) -> Expr {
    fold_in_order((0..W).map(|i| v.clone().lane(i as u8)).collect(), f)
}

/// W values (scalars, or vectors whose every lane is its own fold)
/// combined in [`lanes_fold`]'s order.
pub(crate) fn fold_in_order(x: Vec<Expr>, f: impl Fn(Expr, Expr) -> Expr) -> Expr {
    let half = x.len() / 2;
    let mut lanes: Vec<Expr> = (0..half)
        .map(|i| f(x[i].clone(), x[i + half].clone()))
        .collect();
    while lanes.len() > 1 {
        lanes = lanes
            .chunks(2)
            .map(|p| f(p[0].clone(), p[1].clone()))
            .collect();
    }
    lanes.pop().unwrap_or_else(|| Expr::f32(0.0))
}

/// Writes `d` elements of `acc` from element `at` (i32), times `inv`, as
/// `elem` to `dst` from element `base` (i64): element-wise, `wide_lanes(d)`
/// at a time.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_row(
    b: &mut KernelBuilder,
    acc: BufId,
    at: &Expr,
    inv: &Expr,
    dst: BufId,
    base: &Expr,
    elem: Scalar,
    d: u32,
) {
    let n = wide_lanes(d);
    b.unroll("j", d / n, |b, j| {
        let first = j * Expr::i32(n as i32);
        let o = Expr::load(acc, at.clone() + first.clone(), n as u8) * splat_n(inv.clone(), n);
        b.store(dst, base.clone() + first.cast(Scalar::I64), o.cast(elem));
    });
}

/// A softmax row's normaliser: from its running max `mx` and sum `lsum`
/// (base 2), with the query head's sink (when the spec has sinks) in the
/// denominator and V's fp8 scale, the factor that turns its accumulator
/// into the output (0 for a row that saw nothing), and the final sum.
pub(crate) fn finish_row(
    b: &mut KernelBuilder,
    sinks: Option<BufId>,
    qhead: &Expr,
    mx: &Expr,
    lsum: Expr,
    vscale: Option<&Expr>,
) -> (Expr, Expr) {
    let ninf = Expr::f32(f32::NEG_INFINITY);
    // The factor the accumulator still needs, and the denominator.
    let (factor, lsum) = match sinks {
        Some(buf) => {
            let sink = b.let_(
                "sink",
                Expr::load(buf, qhead.clone(), 1) * Expr::f32(std::f32::consts::LOG2_E),
            );
            let mf = b.let_("m_final", mx.clone().max(sink.clone()));
            let keep = b.let_(
                "keep",
                mx.clone()
                    .eq_(ninf)
                    .select(Expr::f32(0.0), (mx.clone() - mf.clone()).exp2()),
            );
            let lf = b.let_("l_final", lsum.fma(keep.clone(), (sink - mf).exp2()));
            (keep, lf)
        }
        None => (Expr::f32(1.0), b.let_("lsum", lsum)),
    };
    let factor = match vscale {
        Some(vs) => factor * vs.clone(),
        None => factor,
    };
    let inv = b.let_(
        "inv",
        lsum.clone()
            .gt(Expr::f32(0.0))
            .select(factor / lsum.clone(), Expr::f32(0.0)),
    );
    (inv, lsum)
}
