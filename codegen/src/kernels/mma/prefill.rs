//! Paged prefill on matrix cores, the FlashAttention-2 way.
//!
//! ```text
//! parameters, grid: as the SIMT prefill (kernels/prefill.rs), with query
//! tiles of 16 rows per warp: (query tiles, kv_heads, batch)
//! block: 4 warps (2 for large head dims on NVIDIA); warp w owns packed
//! rows row0 + 16w .. + 16
//! ```
//!
//! Each warp keeps its 16 rows' queries in registers as query-side
//! fragments (see [`super::Plan`]), or, where the output accumulators of
//! a large head dim leave no room for them (NVIDIA, head dims over 128),
//! in shared memory. The block walks the KV tiles its rows
//! can see; every thread helps stage a tile of `BN` tokens of K and V into
//! shared memory, converted to the query dtype (fp8 dequantized) and with
//! tokens past the range as zeros. Then each warp computes its logits
//! `S = Q·Kᵀ` on the matrix unit, masks them (length, causal, window),
//! applies scale, soft-cap and ALiBi, updates its rows' online softmax in
//! f32 (row maxima by shuffles across the lanes sharing a row), rescales
//! its output accumulators, and adds `P·V` with P rounded to the query
//! dtype, again on the matrix unit. Row sums stay per lane until the end,
//! where sinks join the denominator and fp8's V scale the factor.
//!
//! Head dims that are not a multiple of 16 are padded with zeros to one in
//! shared memory and in the query fragments.

use crate::ir::builder::KernelBuilder;
use crate::ir::mma::MmaInstr;
use crate::ir::{BufId, Dim, Expr, Kernel, Scalar, Special, VarId};
use crate::spec::AttentionSpec;
use crate::target::Target;

use super::super::prefill::{declare, visible_kv};
use super::super::{alibi_slope, kv_offset, kv_scale_values, kv_vector_lanes, logit2, seq_pages};
use super::{load_fragment, runs, Plan, Tile, WARP_ROWS};

/// Shared memory a matrix-core prefill block uses at most (every target's
/// static limit is 48 KiB or more).
const SHARED_BUDGET: u32 = 46 * 1024;
const LOG2_E: f32 = std::f32::consts::LOG2_E;

/// How a matrix-core prefill block is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Warps per block, 16 packed rows each.
    pub warps: u32,
    /// KV tokens per tile.
    pub bn: u32,
    /// The queries wait in shared memory instead of registers.
    pub q_shared: bool,
}

/// The block layout for a head dim on an instruction: four warps with
/// their queries in registers, and the largest KV tile whose K and V fit;
/// on NVIDIA above head dim 128 (where the 16 rows' output accumulators
/// take 4·head_dim/8 registers per lane), two warps with their queries in
/// shared memory.
pub(crate) fn shape(head_dim: u32, instr: MmaInstr) -> Shape {
    let row_bytes = tile_stride(head_dim) * 2;
    let q_shared = instr.warp_size() == 32 && padded_dim(head_dim) > 128;
    let warps = if q_shared { 2 } else { 4 };
    let q_bytes = if q_shared {
        warps * WARP_ROWS * row_bytes
    } else {
        0
    };
    let bn = [64u32, 32, 16]
        .into_iter()
        .find(|bn| q_bytes + 2 * bn * row_bytes <= SHARED_BUDGET)
        .unwrap_or(16);
    Shape {
        warps,
        bn,
        q_shared,
    }
}

/// Packed query rows per matrix-core prefill block.
pub(crate) fn block_rows(head_dim: u32, instr: MmaInstr) -> u32 {
    shape(head_dim, instr).warps * WARP_ROWS
}

/// Head dims padded to whole reduction steps of 16.
pub(crate) fn padded_dim(head_dim: u32) -> u32 {
    head_dim.next_multiple_of(16)
}

/// Row stride of a K or V tile in shared memory: 8 elements of padding
/// put consecutive rows 16 bytes apart in the banks.
pub(crate) fn tile_stride(head_dim: u32) -> u32 {
    padded_dim(head_dim) + 8
}

/// A zero vector of `n` elements of `s` (or a scalar zero).
pub(crate) fn zeros(s: Scalar, n: u32) -> Expr {
    let z = match s {
        Scalar::F32 => Expr::f32(0.0),
        _ => Expr::f32(0.0).cast(s),
    };
    if n == 1 {
        z
    } else {
        Expr::Vector(vec![z; n as usize])
    }
}

/// A fragment of `lanes` elements gathered by runs: `index(i)` is the
/// buffer index of element `i`; each run of [`runs`] is one load.
pub(crate) fn gather(
    b: &mut KernelBuilder,
    name: &str,
    buf: BufId,
    lanes: u8,
    parts: &[(u32, u32)],
    index: impl Fn(u32) -> Expr,
) -> Expr {
    if parts.len() == 1 {
        return Expr::load(buf, index(0), lanes);
    }
    let mut items = Vec::new();
    for (j, &(i, len)) in parts.iter().enumerate() {
        let v = b.let_(&format!("{name}{j}"), Expr::load(buf, index(i), len as u8));
        if len == 1 {
            items.push(v);
        } else {
            items.extend((0..len).map(|x| v.clone().lane(x as u8)));
        }
    }
    Expr::Vector(items)
}

/// What one warp knows of one of its lane's query rows.
pub(crate) struct RowSlot {
    /// The packed row is one of the block's real rows.
    pub ok: Expr,
    /// Its query token within the sequence's new tokens (clamped).
    pub tok: Expr,
    /// Its query head.
    pub qhead: Expr,
    /// Its position in the sequence.
    pub pos: Expr,
    /// ALiBi's slope in base 2, when the spec has ALiBi.
    pub slope2: Option<Expr>,
}

pub(in crate::kernels) fn build(
    spec: &AttentionSpec,
    target: Target,
    name: &str,
    instr: MmaInstr,
) -> Kernel {
    let plan = Plan::new(instr);
    let kv = spec.kv;
    let (d, dp) = (kv.head_dim, padded_dim(kv.head_dim));
    let g = spec.group_size();
    let ws = target.warp_size;
    let sh = shape(d, instr);
    let threads = sh.warps * ws;
    let rows = sh.warps * WARP_ROWS;
    let bn = sh.bn;
    let stride = tile_stride(d);
    let input = instr.input();
    let q_elem = Scalar::of_dtype(spec.query_dtype());
    let (_, _, accn) = plan.lanes();
    let (s_frags, o_frags) = (bn / plan.outer, dp / plan.outer);
    let (d_steps, kv_steps) = (dp / plan.k, bn / plan.k);
    let (slot_of, nslots) = plan.row_slots();
    let masks = plan.row_masks();
    let i32 = |v: u32| Expr::i32(v as i32);
    let i64 = |e: Expr| e.cast(Scalar::I64);
    let ninf = Expr::f32(f32::NEG_INFINITY);

    let mut b = KernelBuilder::new(name, target, threads);
    let io = declare(&mut b, spec);
    let sm_k = b.shared("sm_k", input, bn * stride);
    let sm_v = b.shared("sm_v", input, bn * stride);
    b.comment(format!(
        "{}: {} warps x {WARP_ROWS} packed rows ({g} heads per KV head), \
         KV tiles of {bn}; {s_frags} logit and {o_frags} output fragments per warp; \
         queries in {}",
        instr.mnemonic(),
        sh.warps,
        if sh.q_shared {
            "shared memory"
        } else {
            "registers"
        }
    ));
    let tid = b.let_("tid", Expr::special(Special::ThreadIdx));
    let tile = b.let_("tile", Expr::special(Special::BlockIdx(Dim::X)));
    let head = b.let_("kv_head", Expr::special(Special::BlockIdx(Dim::Y)));
    let seq = b.let_("seq", Expr::special(Special::BlockIdx(Dim::Z)));
    let qo_begin = b.let_("qo_begin", Expr::load(io.qo_indptr, seq.clone(), 1));
    let q_len = b.let_(
        "q_len",
        Expr::load(io.qo_indptr, seq.clone() + Expr::i32(1), 1) - qo_begin.clone(),
    );
    let (page_begin, kv_len) = seq_pages(&mut b, &kv, io.indptr, io.last_len, &seq);
    let scales = kv_scale_values(&mut b, &kv, io.scales, &head);
    let packed = b.let_("packed_rows", q_len.clone() * i32(g));
    let row0 = b.let_("row0", tile * i32(rows));

    b.if_(row0.clone().lt(packed.clone()), |b| {
        let lane = b.let_("lane", Expr::special(Special::LaneId));
        let warp = b.let_("warp", Expr::special(Special::WarpId));
        let wrow0 = b.let_("wrow0", row0.clone() + warp * i32(WARP_ROWS));
        let (kv_lo, kv_hi) = visible_kv(b, spec, &row0, rows, &q_len, &kv_len);

        // This lane's query rows (one per slot).
        let slots: Vec<RowSlot> = (0..nslots)
            .map(|s| {
                let e = slot_of.iter().position(|&x| x == s).unwrap_or(0) as u32;
                let prow = b.let_(
                    &format!("prow{s}"),
                    wrow0.clone() + plan.acc_expr(&lane, e).0,
                );
                let ok = b.let_(&format!("row_ok{s}"), prow.clone().lt(packed.clone()));
                let pc = b.let_(
                    &format!("prow_c{s}"),
                    prow.min(packed.clone() - Expr::i32(1)),
                );
                let tok = b.let_(&format!("qi{s}"), pc.clone() / i32(g));
                let qhead = b.let_(&format!("qhead{s}"), head.clone() * i32(g) + pc % i32(g));
                let pos = b.let_(
                    &format!("pos{s}"),
                    kv_len.clone() - q_len.clone() + tok.clone(),
                );
                let slope2 = alibi_slope(spec, qhead.clone(), io.slopes)
                    .map(|sl| b.let_(&format!("slope2_{s}"), sl * Expr::f32(LOG2_E)));
                RowSlot {
                    ok,
                    tok,
                    qhead,
                    pos,
                    slope2,
                }
            })
            .collect();

        let queries = if sh.q_shared {
            b.comment("The block's queries in shared memory (padding rows and dims as zeros).");
            let sm_q = b.shared("sm_q", input, rows * stride);
            let chunks = dp / 8;
            b.for_(
                "i",
                tid.clone(),
                i32(rows * chunks),
                i32(threads),
                |b, i| {
                    let rr = b.let_("rr", i.clone() / i32(chunks));
                    let c = b.let_("c", i % i32(chunks));
                    let pr = b.let_("pr", row0.clone() + rr.clone());
                    let mut ok = pr.clone().lt(packed.clone());
                    let mut col = c.clone() * Expr::i32(8);
                    if dp != d {
                        ok = ok.and_then(col.clone().lt(i32(d)));
                        col = col.min(i32(d - 8));
                    }
                    let ok = b.let_("ok", ok);
                    let pc = b.let_("pc", pr.min(packed.clone() - Expr::i32(1)));
                    let tok = qo_begin.clone() + pc.clone() / i32(g);
                    let qh = head.clone() * i32(g) + pc % i32(g);
                    let off = (i64(tok) * Expr::i64(spec.q_heads as i64) + i64(qh))
                        * Expr::i64(d as i64)
                        + i64(col);
                    let raw = b.let_("qraw", Expr::load(io.q, off, 8));
                    b.store(
                        sm_q,
                        rr * i32(stride) + c * Expr::i32(8),
                        ok.select(raw, zeros(input, 8)),
                    );
                },
            );
            let first = b.let_("wq0", wrow0.clone() - row0.clone());
            Queries::Shared { buf: sm_q, first }
        } else {
            let row = |b: &mut KernelBuilder, r: Expr| {
                let prow = b.let_("qrow", wrow0.clone() + r);
                let ok = prow.clone().lt(packed.clone());
                let pc = b.let_("qrow_c", prow.min(packed.clone() - Expr::i32(1)));
                let tok = qo_begin.clone() + pc.clone() / i32(g);
                let qh = head.clone() * i32(g) + pc % i32(g);
                let base =
                    (i64(tok) * Expr::i64(spec.q_heads as i64) + i64(qh)) * Expr::i64(d as i64);
                (ok, base)
            };
            Queries::Registers(queries_in_registers(b, spec, &plan, &lane, io.q, &row))
        };

        let m = b.local_filled("m", Scalar::F32, nslots, ninf.clone());
        let l = b.local_filled("l", Scalar::F32, nslots, Expr::f32(0.0));
        let oacc = b.local_filled("o", Scalar::F32, o_frags * accn as u32, Expr::f32(0.0));
        let sacc = b.local("s", Scalar::F32, s_frags * accn as u32);

        // The positions of the warp's first and last real rows.
        let pos_of = |row: Expr| kv_len.clone() - q_len.clone() + row / i32(g);
        let first_pos = b.let_(
            "first_pos",
            pos_of(wrow0.clone().min(packed.clone() - Expr::i32(1))),
        );
        let last_pos = b.let_(
            "last_pos",
            pos_of((wrow0.clone() + i32(WARP_ROWS - 1)).min(packed.clone() - Expr::i32(1))),
        );
        b.comment("Walk the visible KV tiles.");
        b.for_("kv0", kv_lo, kv_hi.clone(), i32(bn), |b, kv0| {
            let tile_end = b.let_("tile_end", (kv0.clone() + i32(bn)).min(kv_hi.clone()));
            b.barrier();
            stage(
                b,
                spec,
                &io_tile(&io, sm_k, sm_v),
                &StageAt {
                    tid: &tid,
                    threads,
                    kv0: &kv0,
                    tile_end: &tile_end,
                    page_begin: &page_begin,
                    head: &head,
                    bn,
                    stride,
                    input,
                },
            );
            b.barrier();
            let full = b.let_(
                "full",
                whole_tile(spec, &kv0, bn, &tile_end, &first_pos, &last_pos),
            );
            tile_step(
                b,
                spec,
                &plan,
                &TileStep {
                    lane: &lane,
                    slots: &slots,
                    slot_of: &slot_of,
                    masks: &masks,
                    kv0: &kv0,
                    tile_end: &tile_end,
                    k_scale: scales.as_ref().map(|s| &s.0),
                    queries: &queries,
                    sacc,
                    oacc,
                    m,
                    l,
                    sm_k,
                    sm_v,
                    bn,
                    stride,
                    d_steps,
                    kv_steps,
                    o_first: Expr::i32(0),
                    o_frags,
                    full: Some(&full),
                },
            );
        });

        b.comment("Normalise (the sink in the denominator) and write the rows.");
        let mut inv = Vec::new();
        for (s, slot) in slots.iter().enumerate() {
            let mut lsum = b.let_(&format!("lsum{s}"), Expr::load(l, i32(s as u32), 1));
            for &mask in &masks {
                let o = b.shfl_xor(&format!("lx{s}_{mask}"), lsum.clone(), mask, ws);
                lsum = b.let_(&format!("lr{s}_{mask}"), lsum + o);
            }
            let mx = b.let_(&format!("mfin{s}"), Expr::load(m, i32(s as u32), 1));
            let mut factor = Expr::f32(1.0);
            if let Some(buf) = io.sinks {
                let sink = b.let_(
                    &format!("sink{s}"),
                    Expr::load(buf, slot.qhead.clone(), 1) * Expr::f32(LOG2_E),
                );
                let mf = b.let_(&format!("msink{s}"), mx.clone().max(sink.clone()));
                let keep = b.let_(
                    &format!("keep{s}"),
                    mx.clone()
                        .eq_(ninf.clone())
                        .select(Expr::f32(0.0), (mx - mf.clone()).exp2()),
                );
                lsum = b.let_(
                    &format!("lsink{s}"),
                    lsum.fma(keep.clone(), (sink - mf).exp2()),
                );
                factor = keep;
            }
            if let Some((_, vs)) = &scales {
                factor = factor * vs.clone();
            }
            inv.push(
                b.let_(
                    &format!("inv{s}"),
                    lsum.clone()
                        .gt(Expr::f32(0.0))
                        .select(factor / lsum, Expr::f32(0.0)),
                ),
            );
        }
        let out_runs = runs(accn, ws, |l, e| plan.acc_at(l, e));
        b.unroll("of", o_frags, |b, of| {
            for &(e0, len) in &out_runs {
                let s = slot_of[e0 as usize] as usize;
                let (_, outer) = plan.acc_expr(&lane, e0);
                let dim = b.let_("odim", of.clone() * i32(plan.outer) + outer);
                let slot = &slots[s];
                let mut ok = slot.ok.clone();
                if dp != d {
                    ok = ok.and_then(dim.clone().lt(i32(d)));
                }
                let vals: Vec<Expr> = (e0..e0 + len)
                    .map(|e| {
                        (Expr::load(oacc, of.clone() * i32(accn as u32) + i32(e), 1)
                            * inv[s].clone())
                        .cast(q_elem)
                    })
                    .collect();
                let tok = qo_begin.clone() + slot.tok.clone();
                let at = (i64(tok) * Expr::i64(spec.q_heads as i64) + i64(slot.qhead.clone()))
                    * Expr::i64(d as i64)
                    + i64(dim);
                let v = if len == 1 {
                    vals[0].clone()
                } else {
                    Expr::Vector(vals)
                };
                b.if_(ok, |b| b.store(io.out, at, v));
            }
        });
    });
    b.finish()
}

/// The global buffers a tile is staged from.
pub(crate) struct TileIo {
    pub k_cache: BufId,
    pub v_cache: BufId,
    pub indices: BufId,
    pub sm_k: BufId,
    pub sm_v: BufId,
}

fn io_tile(io: &super::super::prefill::PrefillIo, sm_k: BufId, sm_v: BufId) -> TileIo {
    TileIo {
        k_cache: io.k_cache,
        v_cache: io.v_cache,
        indices: io.indices,
        sm_k,
        sm_v,
    }
}

/// Where a tile comes from and goes.
pub(crate) struct StageAt<'a> {
    pub tid: &'a Expr,
    pub threads: u32,
    pub kv0: &'a Expr,
    pub tile_end: &'a Expr,
    pub page_begin: &'a Expr,
    pub head: &'a Expr,
    pub bn: u32,
    pub stride: u32,
    pub input: Scalar,
}

/// Every thread of the block copies part of tokens `kv0..kv0 + bn` of K
/// and V into shared memory, converted to `input`: tokens at or past
/// `tile_end` and padding dims as zeros (so NaN in free pages never reaches
/// a product).
pub(crate) fn stage(b: &mut KernelBuilder, spec: &AttentionSpec, io: &TileIo, at: &StageAt<'_>) {
    let kv = spec.kv;
    let (d, dp) = (kv.head_dim, padded_dim(kv.head_dim));
    let vec = kv_vector_lanes(&kv);
    let chunks = dp / vec;
    let i32 = |v: u32| Expr::i32(v as i32);
    let i64 = |e: Expr| e.cast(Scalar::I64);
    let elem = Scalar::of_dtype(kv.dtype);
    b.for_(
        "i",
        at.tid.clone(),
        i32(at.bn * chunks),
        i32(at.threads),
        |b, i| {
            let kr = b.let_("kr", i.clone() / i32(chunks));
            let c = b.let_("c", i % i32(chunks));
            let t = b.let_("t", at.kv0.clone() + kr.clone());
            let mut ok = t.clone().lt(at.tile_end.clone());
            let mut col = c.clone() * i32(vec);
            if dp != d {
                ok = ok.and_then(col.clone().lt(i32(d)));
                col = col.min(i32(d - vec));
            }
            let ok = b.let_("ok", ok);
            let tc = b.let_("tc", t.min(at.tile_end.clone() - Expr::i32(1)));
            let page = b.let_(
                "page",
                Expr::load(
                    io.indices,
                    at.page_begin.clone() + tc.clone() / i32(kv.page_size),
                    1,
                ),
            );
            let slot = tc % i32(kv.page_size);
            let off = b.let_(
                "off",
                kv_offset(&kv, i64(page), i64(slot), i64(at.head.clone())) + i64(col),
            );
            let dst = b.let_("dst", kr * i32(at.stride) + c * i32(vec));
            for (cache, sm, what) in [(io.k_cache, io.sm_k, "k"), (io.v_cache, io.sm_v, "v")] {
                let raw = b.let_(
                    &format!("{what}raw"),
                    Expr::load(cache, off.clone(), vec as u8),
                );
                let x = if elem == at.input {
                    raw
                } else {
                    raw.cast(at.input)
                };
                let x = b.let_(
                    &format!("{what}x"),
                    ok.clone().select(x, zeros(at.input, vec)),
                );
                // 16-byte stores.
                let per = 8u32.min(vec);
                for h in 0..vec / per {
                    let part = if per == vec {
                        x.clone()
                    } else {
                        Expr::Vector(
                            (0..per)
                                .map(|j| x.clone().lane((h * per + j) as u8))
                                .collect(),
                        )
                    };
                    b.store(sm, dst.clone() + i32(h * per), part);
                }
            }
        },
    );
}

/// One warp's state and one tile's bounds for [`tile_step`].
pub(crate) struct TileStep<'a> {
    pub lane: &'a Expr,
    pub slots: &'a [RowSlot],
    pub slot_of: &'a [u32],
    pub masks: &'a [i32],
    pub kv0: &'a Expr,
    pub tile_end: &'a Expr,
    pub k_scale: Option<&'a Expr>,
    /// Where the warp's queries are.
    pub queries: &'a Queries,
    /// The tile's logits, then weights.
    pub sacc: BufId,
    /// The output accumulators.
    pub oacc: BufId,
    /// Running max and sum per row slot.
    pub m: BufId,
    pub l: BufId,
    pub sm_k: BufId,
    pub sm_v: BufId,
    pub bn: u32,
    pub stride: u32,
    pub d_steps: u32,
    pub kv_steps: u32,
    /// This warp's output fragments: `o_frags` from `o_first` on.
    pub o_first: Expr,
    pub o_frags: u32,
    /// Warp-uniform: every token of the tile is visible to every real row
    /// of the warp (the masks can be skipped).
    pub full: Option<&'a Expr>,
}

/// One warp's work on a staged tile: logits on the matrix unit, masks and
/// variants, the online softmax, then `O += P·V` on the matrix unit.
pub(crate) fn tile_step(
    b: &mut KernelBuilder,
    spec: &AttentionSpec,
    plan: &Plan,
    t: &TileStep<'_>,
) {
    let ws = plan.warp_size();
    let (qn, kvn, accn) = plan.lanes();
    let input = plan.instr.input();
    let s_frags = t.bn / plan.outer;
    let nslots = t.slots.len();
    let i32 = |v: u32| Expr::i32(v as i32);
    let ninf = Expr::f32(f32::NEG_INFINITY);
    let lane = t.lane;

    b.comment("S = Q·Kᵀ on the matrix unit.");
    let k_runs = runs(kvn, ws, |l, i| plan.kv_at(l, i));
    let q_runs = runs(qn, ws, |l, i| plan.q_at(l, i));
    b.unroll("sf", s_frags, |b, sf| {
        let acc = b.var("sa", zeros(Scalar::F32, accn as u32));
        b.unroll("ks", t.d_steps, |b, ks| {
            let qfrag = match t.queries {
                Queries::Registers(qf) => Expr::load(*qf, ks.clone() * i32(qn as u32), qn),
                Queries::Shared { buf, first } => match plan.ldsm(Tile::Q) {
                    Some(l) => load_fragment(b, "qf", *buf, lane, l, |r, c| {
                        (first.clone() + r) * i32(t.stride) + ks.clone() * i32(plan.k) + c
                    }),
                    None => gather(b, "qf", *buf, qn, &q_runs, |i| {
                        let (r, k) = plan.q_expr(lane, i);
                        (first.clone() + r) * i32(t.stride) + ks.clone() * i32(plan.k) + k
                    }),
                },
            };
            let k_at = |outer: Expr, k: Expr| {
                (sf.clone() * i32(plan.outer) + outer) * i32(t.stride)
                    + ks.clone() * i32(plan.k)
                    + k
            };
            let kfrag = match plan.ldsm(Tile::K) {
                Some(l) => load_fragment(b, "kf", t.sm_k, lane, l, k_at),
                None => gather(b, "kf", t.sm_k, kvn, &k_runs, |i| {
                    let (outer, k) = plan.kv_expr(lane, i);
                    k_at(outer, k)
                }),
            };
            let r = plan.mma(b, "sr", qfrag, kfrag, Expr::Var(acc));
            b.set(acc, r);
        });
        b.store(t.sacc, sf * i32(accn as u32), Expr::Var(acc));
    });

    b.comment("Mask, scale, soft-cap and bias the logits; the tile's row maxima.");
    let tmax: Vec<VarId> = (0..nslots)
        .map(|s| b.var(&format!("tmax{s}"), ninf.clone()))
        .collect();
    let logits = |b: &mut KernelBuilder, masked: bool| {
        b.unroll("sf", s_frags, |b, sf| {
            for e in 0..accn as u32 {
                let s = t.slot_of[e as usize] as usize;
                let slot = &t.slots[s];
                let (_, outer) = plan.acc_expr(lane, e);
                let tok = b.let_("tk", t.kv0.clone() + sf.clone() * i32(plan.outer) + outer);
                let at = sf.clone() * i32(accn as u32) + i32(e);
                let mut dot = Expr::load(t.sacc, at.clone(), 1);
                if let Some(ks) = t.k_scale {
                    dot = dot * ks.clone();
                }
                let bias = slot
                    .slope2
                    .as_ref()
                    .map(|sl| (tok.clone() - slot.pos.clone()).cast(Scalar::F32) * sl.clone());
                let logit = logit2(spec, dot, bias);
                let logit = if masked {
                    let mut ok = slot.ok.clone().and_then(tok.clone().lt(t.tile_end.clone()));
                    if spec.causal {
                        ok = ok.and_then(tok.clone().le(slot.pos.clone()));
                    }
                    if let Some(win) = spec.sliding_window {
                        ok = ok.and_then(tok.ge(slot.pos.clone() - i32(win) + Expr::i32(1)));
                    }
                    ok.select(logit, ninf.clone())
                } else {
                    logit
                };
                let logit = b.let_("lg", logit);
                b.store(t.sacc, at, logit.clone());
                b.set(tmax[s], Expr::Var(tmax[s]).max(logit));
            }
        });
    };
    // A tile every row of the warp sees whole needs no mask (rows past the
    // sequence get finite logits there, and nothing of them is written).
    match t.full {
        Some(full) => b.if_else(full.clone(), |b| logits(b, false), |b| logits(b, true)),
        None => logits(b, true),
    }
    let mut alpha = Vec::new();
    let mut mnew = Vec::new();
    for (s, tm) in tmax.iter().enumerate() {
        let mut mt = Expr::Var(*tm);
        for &mask in t.masks {
            let o = b.shfl_xor(&format!("mx{s}_{mask}"), mt.clone(), mask, ws);
            mt = b.let_(&format!("mr{s}_{mask}"), mt.max(o));
        }
        let mold = b.let_(&format!("mold{s}"), Expr::load(t.m, i32(s as u32), 1));
        let mn = b.let_(&format!("mnew{s}"), mold.clone().max(mt));
        alpha.push(
            b.let_(
                &format!("alpha{s}"),
                mn.clone()
                    .eq_(ninf.clone())
                    .select(Expr::f32(1.0), (mold - mn.clone()).exp2()),
            ),
        );
        b.store(t.m, i32(s as u32), mn.clone());
        mnew.push(mn);
    }

    b.comment("Weights P = 2^(S - m); the rows' sums, per lane until the end.");
    let psum: Vec<VarId> = (0..nslots)
        .map(|s| b.var(&format!("psum{s}"), Expr::f32(0.0)))
        .collect();
    b.unroll("sf", s_frags, |b, sf| {
        for e in 0..accn as u32 {
            let s = t.slot_of[e as usize] as usize;
            let at = sf.clone() * i32(accn as u32) + i32(e);
            let x = b.let_("sx", Expr::load(t.sacc, at.clone(), 1));
            let p = b.let_(
                "p",
                x.clone()
                    .eq_(ninf.clone())
                    .select(Expr::f32(0.0), (x - mnew[s].clone()).exp2()),
            );
            b.store(t.sacc, at, p.clone());
            b.set(psum[s], Expr::Var(psum[s]) + p);
        }
    });
    for s in 0..nslots {
        let at = i32(s as u32);
        let old = Expr::load(t.l, at.clone(), 1);
        b.store(t.l, at, old.fma(alpha[s].clone(), Expr::Var(psum[s])));
    }
    b.unroll("of", t.o_frags, |b, of| {
        for e in 0..accn as u32 {
            let at = of.clone() * i32(accn as u32) + i32(e);
            let a = alpha[t.slot_of[e as usize] as usize].clone();
            b.store(t.oacc, at.clone(), Expr::load(t.oacc, at, 1) * a);
        }
    });

    b.comment("O += P·V on the matrix unit (P rounded to the query dtype).");
    let per_step = plan.k / plan.outer;
    // V's elements are contiguous along the outer index (a row of V).
    let v_runs = runs(kvn, ws, |l, i| {
        let (o, k) = plan.kv_at(l, i);
        (k, o)
    });
    b.unroll("kk", t.kv_steps, |b, kk| {
        let items: Vec<Expr> = (0..qn as u32)
            .map(|i| {
                let (f, e) = plan.regroup(i);
                let at = (kk.clone() * i32(per_step) + i32(f)) * i32(accn as u32) + i32(e);
                Expr::load(t.sacc, at, 1)
            })
            .collect();
        let pf = b.let_("pf", Expr::Vector(items).cast(input));
        b.unroll("of", t.o_frags, |b, of| {
            let v_at = |k: Expr, outer: Expr| {
                (kk.clone() * i32(plan.k) + k) * i32(t.stride)
                    + (t.o_first.clone() + of.clone()) * i32(plan.outer)
                    + outer
            };
            let vfrag = match plan.ldsm(Tile::V) {
                Some(l) => load_fragment(b, "vf", t.sm_v, lane, l, v_at),
                None => gather(b, "vf", t.sm_v, kvn, &v_runs, |i| {
                    let (outer, k) = plan.kv_expr(lane, i);
                    v_at(k, outer)
                }),
            };
            let at = of.clone() * i32(accn as u32);
            let cur = Expr::load(t.oacc, at.clone(), accn);
            let r = plan.mma(b, "or", pf.clone(), vfrag, cur);
            b.store(t.oacc, at, r);
        });
    });
}

/// Where a warp's queries wait for the logits.
pub(crate) enum Queries {
    /// In registers: query-side fragments, one per reduction step.
    Registers(BufId),
    /// In shared memory, a row per packed row; the warp's first is `first`.
    Shared { buf: BufId, first: Expr },
}

/// Loads the warp's 16 rows of queries from global memory into query-side
/// fragments in a local array: `row(b, r)` gives row `r`'s (whether it is
/// real, the element offset of its first dimension); rows that are not
/// real and padding dims are zeros.
pub(crate) fn queries_in_registers(
    b: &mut KernelBuilder,
    spec: &AttentionSpec,
    plan: &Plan,
    lane: &Expr,
    q: BufId,
    row: &dyn Fn(&mut KernelBuilder, Expr) -> (Expr, Expr),
) -> BufId {
    let (d, dp) = (spec.kv.head_dim, padded_dim(spec.kv.head_dim));
    let input = plan.instr.input();
    let (qn, _, _) = plan.lanes();
    let d_steps = dp / plan.k;
    let i32 = |v: u32| Expr::i32(v as i32);
    let i64 = |e: Expr| e.cast(Scalar::I64);
    b.comment("The warp's queries, as query-side fragments in registers.");
    let qf = b.local("qf", input, d_steps * qn as u32);
    let q_runs = runs(qn, plan.warp_size(), |l, i| plan.q_at(l, i));
    b.unroll("ks", d_steps, |b, ks| {
        for &(i, len) in &q_runs {
            let (r, k) = plan.q_expr(lane, i);
            let dim = b.let_("qdim", ks.clone() * i32(plan.k) + k);
            let (mut ok, base) = row(b, r);
            let mut at_dim = dim.clone();
            if dp != d {
                ok = ok.and_then(dim.clone().lt(i32(d)));
                at_dim = dim.clone().min(i32(d - len));
            }
            let ok = b.let_("qok", ok);
            let raw = b.let_("qraw", Expr::load(q, base + i64(at_dim), len as u8));
            let v = ok.select(raw, zeros(input, len));
            b.store(qf, ks.clone() * i32(qn as u32) + i32(i), v);
        }
    });
    qf
}

/// Whether every token of the tile `kv0..kv0 + bn` is visible to every row
/// whose positions lie in `first_pos..=last_pos`: the tile is whole (not
/// cut by `tile_end`), before the first row's causal bound and inside the
/// last row's window.
pub(crate) fn whole_tile(
    spec: &AttentionSpec,
    kv0: &Expr,
    bn: u32,
    tile_end: &Expr,
    first_pos: &Expr,
    last_pos: &Expr,
) -> Expr {
    let end = kv0.clone() + Expr::i32(bn as i32);
    let mut full = tile_end.clone().eq_(end.clone());
    if spec.causal {
        full = full.and_then((end - Expr::i32(1)).le(first_pos.clone()));
    }
    if let Some(w) = spec.sliding_window {
        full = full.and_then(kv0.clone().ge(last_pos.clone() - Expr::i32(w as i32 - 1)));
    }
    full
}
