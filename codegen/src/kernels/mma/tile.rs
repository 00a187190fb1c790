//! The matrix-core kernels' tiles: what the prefill and the grouped decode
//! share. The block stages each KV tile into shared memory ([`step`]), each
//! warp runs `S = Q·Kᵀ`, the masks and variants, the online softmax and
//! `O += P·V` on it, and at the end [`finish_rows`] gives each row's
//! normalisation.

use crate::ir::builder::KernelBuilder;
use crate::ir::{BufId, Expr, Scalar, VarId};
use crate::spec::AttentionSpec;

use super::super::{kv_offset, kv_vector_lanes, logit2};
use super::{load_fragment, runs, Plan, Tile};

const LOG2_E: f32 = std::f32::consts::LOG2_E;

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

/// The block's K and V tiles in shared memory, and where they come from.
pub(crate) struct Tiles<'a> {
    pub k_cache: BufId,
    pub v_cache: BufId,
    pub indices: BufId,
    pub sm_k: BufId,
    pub sm_v: BufId,
    pub tid: &'a Expr,
    pub threads: u32,
    /// The sequence's first page-table entry.
    pub page_begin: &'a Expr,
    /// The KV head.
    pub head: &'a Expr,
    /// Tokens per tile.
    pub bn: u32,
    /// A row's stride ([`tile_stride`]).
    pub stride: u32,
    /// The query dtype (the instruction's input).
    pub input: Scalar,
}

/// What a warp keeps from tile to tile.
pub(crate) struct Warp<'a> {
    pub lane: &'a Expr,
    /// The lane's query rows, one per slot.
    pub slots: &'a [RowSlot],
    /// Each accumulator element's slot ([`Plan::row_slots`]).
    pub slot_of: &'a [u32],
    /// The shuffles that join the lanes sharing a row ([`Plan::row_masks`]).
    pub masks: &'a [i32],
    /// fp8: K's scale, which multiplies the logits.
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
    /// This warp's output fragments: `o_frags` from `o_first` on.
    pub o_first: Expr,
    pub o_frags: u32,
}

/// One tile of the walk: the block stages tokens `kv0..tile_end` of K and V
/// into shared memory, then each warp adds them to its rows' softmax and
/// outputs. `rows` are the positions of the warp's first and last real
/// rows: where every token is visible to every one of them ([`whole_tile`],
/// warp-uniform) the masks are skipped.
pub(crate) fn step(
    b: &mut KernelBuilder,
    spec: &AttentionSpec,
    plan: &Plan,
    tiles: &Tiles<'_>,
    warp: &Warp<'_>,
    (kv0, tile_end): (&Expr, &Expr),
    (first_pos, last_pos): (&Expr, &Expr),
) {
    b.barrier();
    stage(b, spec, tiles, kv0, tile_end);
    b.barrier();
    let full = whole_tile(spec, kv0, tiles.bn, tile_end, first_pos, last_pos);
    let full = b.let_("full", full);
    tile_step(b, spec, plan, tiles, warp, (kv0, tile_end, &full));
}

/// A row's normalisation at the end: `out = acc · inv`; `max` and `sum`
/// are the row's running max and its sum over the lanes that share it
/// (what split-K writes), without the sink.
pub(crate) struct Finished {
    pub inv: Expr,
    pub max: Expr,
    pub sum: Expr,
}

/// Every row slot's [`Finished`]: the lanes' partial sums joined by
/// shuffles; a sink (base 2) joins the denominator when `sinks` is given;
/// fp8's V scale multiplies the factor; a row that saw nothing gets 0.
pub(crate) fn finish_rows(
    b: &mut KernelBuilder,
    warp: &Warp<'_>,
    ws: u32,
    sinks: Option<BufId>,
    v_scale: Option<&Expr>,
) -> Vec<Finished> {
    let ninf = Expr::f32(f32::NEG_INFINITY);
    let mut out = Vec::new();
    for (s, slot) in warp.slots.iter().enumerate() {
        let at = Expr::i32(s as i32);
        let mut sum = b.let_(&format!("lsum{s}"), Expr::load(warp.l, at.clone(), 1));
        for &mask in warp.masks {
            let o = b.shfl_xor(&format!("lx{s}_{mask}"), sum.clone(), mask, ws);
            sum = b.let_(&format!("lr{s}_{mask}"), sum + o);
        }
        let max = b.let_(&format!("mfin{s}"), Expr::load(warp.m, at, 1));
        let mut factor = Expr::f32(1.0);
        let mut den = sum.clone();
        if let Some(buf) = sinks {
            let sink = b.let_(
                &format!("sink{s}"),
                Expr::load(buf, slot.qhead.clone(), 1) * Expr::f32(LOG2_E),
            );
            let mf = b.let_(&format!("msink{s}"), max.clone().max(sink.clone()));
            let keep = b.let_(
                &format!("keep{s}"),
                max.clone()
                    .eq_(ninf.clone())
                    .select(Expr::f32(0.0), (max.clone() - mf.clone()).exp2()),
            );
            den = b.let_(
                &format!("lsink{s}"),
                sum.clone().fma(keep.clone(), (sink - mf).exp2()),
            );
            factor = keep;
        }
        if let Some(vs) = v_scale {
            factor = factor * vs.clone();
        }
        let inv = b.let_(
            &format!("inv{s}"),
            den.clone()
                .gt(Expr::f32(0.0))
                .select(factor / den, Expr::f32(0.0)),
        );
        out.push(Finished { inv, max, sum });
    }
    out
}

/// Every thread of the block copies part of tokens `kv0..kv0 + bn` of K
/// and V into shared memory, converted to `input`: tokens at or past
/// `tile_end` and padding dims as zeros (so NaN in free pages never reaches
/// a product).
fn stage(
    b: &mut KernelBuilder,
    spec: &AttentionSpec,
    tiles: &Tiles<'_>,
    kv0: &Expr,
    tile_end: &Expr,
) {
    let kv = spec.kv;
    let (d, dp) = (kv.head_dim, padded_dim(kv.head_dim));
    let vec = kv_vector_lanes(&kv);
    let chunks = dp / vec;
    let i32 = |v: u32| Expr::i32(v as i32);
    let i64 = |e: Expr| e.cast(Scalar::I64);
    let elem = Scalar::of_dtype(kv.dtype);
    b.for_(
        "i",
        tiles.tid.clone(),
        i32(tiles.bn * chunks),
        i32(tiles.threads),
        |b, i| {
            let kr = b.let_("kr", i.clone() / i32(chunks));
            let c = b.let_("c", i % i32(chunks));
            let t = b.let_("t", kv0.clone() + kr.clone());
            let mut ok = t.clone().lt(tile_end.clone());
            let mut col = c.clone() * i32(vec);
            if dp != d {
                ok = ok.and_then(col.clone().lt(i32(d)));
                col = col.min(i32(d - vec));
            }
            let ok = b.let_("ok", ok);
            let tc = b.let_("tc", t.min(tile_end.clone() - Expr::i32(1)));
            let page = b.let_(
                "page",
                Expr::load(
                    tiles.indices,
                    tiles.page_begin.clone() + tc.clone() / i32(kv.page_size),
                    1,
                ),
            );
            let slot = tc % i32(kv.page_size);
            let off = b.let_(
                "off",
                kv_offset(&kv, i64(page), i64(slot), i64(tiles.head.clone())) + i64(col),
            );
            let dst = b.let_("dst", kr * i32(tiles.stride) + c * i32(vec));
            for (cache, sm, what) in [
                (tiles.k_cache, tiles.sm_k, "k"),
                (tiles.v_cache, tiles.sm_v, "v"),
            ] {
                let raw = b.let_(
                    &format!("{what}raw"),
                    Expr::load(cache, off.clone(), vec as u8),
                );
                let x = if elem == tiles.input {
                    raw
                } else {
                    raw.cast(tiles.input)
                };
                let x = b.let_(
                    &format!("{what}x"),
                    ok.clone().select(x, zeros(tiles.input, vec)),
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

/// One warp's work on a staged tile: logits on the matrix unit, masks and
/// variants, the online softmax, then `O += P·V` on the matrix unit.
fn tile_step(
    b: &mut KernelBuilder,
    spec: &AttentionSpec,
    plan: &Plan,
    tiles: &Tiles<'_>,
    t: &Warp<'_>,
    (kv0, tile_end, full): (&Expr, &Expr, &Expr),
) {
    let d_steps = padded_dim(spec.kv.head_dim) / plan.k;
    let kv_steps = tiles.bn / plan.k;
    let ws = plan.warp_size();
    let (qn, kvn, accn) = plan.lanes();
    let input = plan.instr.input();
    let s_frags = tiles.bn / plan.outer;
    let nslots = t.slots.len();
    let i32 = |v: u32| Expr::i32(v as i32);
    let ninf = Expr::f32(f32::NEG_INFINITY);
    let lane = t.lane;

    b.comment("S = Q·Kᵀ on the matrix unit.");
    let k_runs = runs(kvn, ws, |l, i| plan.kv_at(l, i));
    let q_runs = runs(qn, ws, |l, i| plan.q_at(l, i));
    b.unroll("sf", s_frags, |b, sf| {
        let acc = b.var("sa", zeros(Scalar::F32, accn as u32));
        b.unroll("ks", d_steps, |b, ks| {
            let qfrag = match t.queries {
                Queries::Registers(qf) => Expr::load(*qf, ks.clone() * i32(qn as u32), qn),
                Queries::Shared { buf, first } => match plan.ldsm(Tile::Q) {
                    Some(l) => load_fragment(b, "qf", *buf, lane, l, |r, c| {
                        (first.clone() + r) * i32(tiles.stride) + ks.clone() * i32(plan.k) + c
                    }),
                    None => gather(b, "qf", *buf, qn, &q_runs, |i| {
                        let (r, k) = plan.q_expr(lane, i);
                        (first.clone() + r) * i32(tiles.stride) + ks.clone() * i32(plan.k) + k
                    }),
                },
            };
            let k_at = |outer: Expr, k: Expr| {
                (sf.clone() * i32(plan.outer) + outer) * i32(tiles.stride)
                    + ks.clone() * i32(plan.k)
                    + k
            };
            let kfrag = match plan.ldsm(Tile::K) {
                Some(l) => load_fragment(b, "kf", tiles.sm_k, lane, l, k_at),
                None => gather(b, "kf", tiles.sm_k, kvn, &k_runs, |i| {
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
                let tok = b.let_("tk", kv0.clone() + sf.clone() * i32(plan.outer) + outer);
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
                    let mut ok = slot.ok.clone().and_then(tok.clone().lt(tile_end.clone()));
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
    b.if_else(full.clone(), |b| logits(b, false), |b| logits(b, true));
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
    b.unroll("kk", kv_steps, |b, kk| {
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
                (kk.clone() * i32(plan.k) + k) * i32(tiles.stride)
                    + (t.o_first.clone() + of.clone()) * i32(plan.outer)
                    + outer
            };
            let vfrag = match plan.ldsm(Tile::V) {
                Some(l) => load_fragment(b, "vf", tiles.sm_v, lane, l, v_at),
                None => gather(b, "vf", tiles.sm_v, kvn, &v_runs, |i| {
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
