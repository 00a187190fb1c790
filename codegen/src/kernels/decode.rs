//! Paged decode attention: one query token per sequence.
//!
//! ```text
//! q, out:    [batch][q_heads][head_dim]            (the spec's query dtype)
//! k_cache, v_cache: the two arenas, in the layout's order
//! kv_indptr: [batch+1] i32, kv_indices: [pages] i32, kv_last_page_len: [batch] i32
//! grid: (kv_heads, batch); block: DECODE_WARPS warps
//! ```
//!
//! One block serves one KV head of one sequence and all `G = q_heads /
//! kv_heads` query heads that share it, so each K/V row is read once per
//! group. A K/V row of `head_dim` elements is split into 16-byte chunks read by
//! a *row group* of `R` lanes (`R` = chunks rounded up to a power of two, at
//! most the warp size; a lane reads several chunks when a row has more chunks
//! than a warp has lanes). A warp holds `warp_size / R` row groups, each
//! walking its own tokens; every row group keeps an online softmax state
//! (running max `m`, sum `l`, accumulator) per query head in f32, in the base-2
//! domain. At the end the row groups of a warp merge through shuffles and the
//! warps through shared memory.
//!
//! Tokens past the sequence are never read: a row group past the end reads a
//! clamped, valid token and masks its weight to zero, so NaN in free pages
//! never reaches the output. A sliding window starts the walk at the first
//! token inside the window, so pages before it are never touched.
//!
//! ALiBi adds `slope·(t − (kv_len − 1))` to token t's logit (the slope
//! computed from the head index, or loaded from `alibi_slopes`); sinks
//! (`sinks`, one logit per query head) join the denominator when the warps
//! merge. The split-K form (see [`build`]) writes per-chunk partials instead,
//! and leaves the sinks to the merge kernel.

use crate::ir::builder::KernelBuilder;
use crate::ir::{Access, BufId, Dim, Expr, Kernel, Scalar, Special, VarId};
use crate::spec::AttentionSpec;
use crate::target::Target;

use super::{
    alibi_slope, kv_offset, kv_scale_params, kv_scale_values, kv_vector_lanes, logit2, seq_pages,
    variant_params, vector_lanes,
};

/// Warps per decode block.
pub const DECODE_WARPS: u32 = 4;

const LOG2_E: f32 = std::f32::consts::LOG2_E;

/// The decode kernel, or with `split` the split-K decode kernel: block z of
/// a sequence reads tokens `[start + z·chunk, start + (z+1)·chunk)` of its
/// walk (`chunk_tokens` a launch argument) and writes its normalised partial
/// output and `(max, sum)` in f32, for [`super::merge`] to combine.
pub(super) fn build(spec: &AttentionSpec, target: Target, name: &str, split: bool) -> Kernel {
    let kv = spec.kv;
    let elem = Scalar::of_dtype(kv.dtype);
    let q_elem = Scalar::of_dtype(spec.query_dtype());
    let ws = target.warp_size;
    let d = kv.head_dim;
    let g = spec.group_size();
    let vec = kv_vector_lanes(&kv);
    let chunks = d / vec;
    let lanes_per_row = chunks.next_power_of_two().min(ws);
    let chunks_per_lane = chunks.div_ceil(lanes_per_row);
    let rows_per_warp = ws / lanes_per_row;
    let rows = DECODE_WARPS * rows_per_warp;
    let i32 = |v: u32| Expr::i32(v as i32);
    let i64 = |e: Expr| e.cast(Scalar::I64);
    let ninf = Expr::f32(f32::NEG_INFINITY);

    let mut b = KernelBuilder::new(name, target, DECODE_WARPS * ws);
    let q = b.global("q", q_elem, Access::Read);
    let k_cache = b.global("k_cache", elem, Access::Read);
    let v_cache = b.global("v_cache", elem, Access::Read);
    let indptr = b.global("kv_indptr", Scalar::I32, Access::Read);
    let indices = b.global("kv_indices", Scalar::I32, Access::Read);
    let last_len = b.global("kv_last_page_len", Scalar::I32, Access::Read);
    // Split-K leaves the sinks to the merge: they join the denominator once.
    let (sinks, slopes) = variant_params(&mut b, spec, !split);
    let scale_bufs = kv_scale_params(&mut b, &kv);
    let out = if split {
        Output::Partial {
            out: b.global("part_out", Scalar::F32, Access::ReadWrite),
            ml: b.global("part_ml", Scalar::F32, Access::ReadWrite),
            chunk: b.scalar_param("chunk_tokens", Scalar::I32),
        }
    } else {
        Output::Final(b.global("out", q_elem, Access::ReadWrite))
    };
    let sm_m = b.shared("sm_m", Scalar::F32, DECODE_WARPS * g);
    let sm_l = b.shared("sm_l", Scalar::F32, DECODE_WARPS * g);
    let sm_acc = b.shared("sm_acc", Scalar::F32, DECODE_WARPS * g * d);

    b.comment(format!(
        "{g} query heads per KV head; {chunks} chunks of {vec} per row, read by {lanes_per_row} \
         lanes ({chunks_per_lane} each); {rows} rows in flight per block"
    ));
    let lane = b.let_("lane", Expr::special(Special::LaneId));
    let warp = b.let_("warp", Expr::special(Special::WarpId));
    let r = b.let_("r", lane.clone() % i32(lanes_per_row));
    let row = b.let_(
        "row",
        warp.clone() * i32(rows_per_warp) + lane.clone() / i32(lanes_per_row),
    );
    let head = b.let_("kv_head", Expr::special(Special::BlockIdx(Dim::X)));
    let seq = b.let_("seq", Expr::special(Special::BlockIdx(Dim::Y)));
    let (page_begin, kv_len) = seq_pages(&mut b, &kv, indptr, last_len, &seq);
    // fp8: K's scale multiplies the dot product, V's the output.
    let scales = kv_scale_values(&mut b, &kv, scale_bufs, &head);
    let start = match spec.sliding_window {
        Some(w) => b.let_("start", (kv_len.clone() - i32(w)).max(Expr::i32(0))),
        None => Expr::i32(0),
    };
    // The tokens this block walks: all of them, or its split's chunk.
    let (start, end) = match &out {
        Output::Final(_) => (start, kv_len.clone()),
        Output::Partial { chunk, .. } => {
            let z = Expr::special(Special::BlockIdx(Dim::Z));
            let lo = b.let_("chunk_start", start + z * chunk.clone());
            let hi = b.let_(
                "chunk_end",
                (lo.clone() + chunk.clone()).min(kv_len.clone()),
            );
            (lo, hi)
        }
    };

    // The chunks this lane reads: chunk c of the lane is r + c·R, clamped to
    // the last real chunk (its contribution is masked when it is padding).
    let mut chunk_idx = Vec::new();
    let mut chunk_ok = Vec::new();
    for c in 0..chunks_per_lane {
        let ci = r.clone() + i32(c * lanes_per_row);
        if (c + 1) * lanes_per_row <= chunks {
            chunk_idx.push(b.let_(&format!("chunk{c}"), ci));
            chunk_ok.push(None);
        } else {
            let ok = b.let_(&format!("chunk{c}_ok"), ci.clone().lt(i32(chunks)));
            chunk_idx.push(b.let_(&format!("chunk{c}"), ci.min(i32(chunks - 1))));
            chunk_ok.push(Some(ok));
        }
    }

    // Query heads of the group, in f32 registers: q[gi][c·vec + e].
    let mut qv: Vec<Vec<Expr>> = Vec::new();
    for gi in 0..g {
        let qhead = head.clone() * i32(g) + i32(gi);
        let base = b.let_(
            &format!("q_base{gi}"),
            (i64(seq.clone()) * Expr::i64(spec.q_heads as i64) + i64(qhead)) * Expr::i64(d as i64),
        );
        let mut regs = Vec::new();
        for (c, ci) in chunk_idx.iter().enumerate() {
            // A query chunk is as many elements as a K/V chunk, read in
            // 16-byte pieces (two when the query is wider than the cache).
            let off = base.clone() + i64(ci.clone()) * Expr::i64(vec as i64);
            let qvec = vec.min(vector_lanes(spec.query_dtype()));
            let raws: Vec<Expr> = (0..vec / qvec)
                .map(|p| {
                    let name = if vec == qvec {
                        format!("q{gi}_{c}")
                    } else {
                        format!("q{gi}_{c}_{p}")
                    };
                    let o = match p {
                        0 => off.clone(),
                        _ => off.clone() + Expr::i64((p * qvec) as i64),
                    };
                    b.let_(&name, Expr::load(q, o, qvec as u8))
                })
                .collect();
            for e in 0..vec {
                let raw = &raws[(e / qvec) as usize];
                let x = raw.clone().lane((e % qvec) as u8).cast(Scalar::F32);
                let x = match &chunk_ok[c] {
                    Some(ok) => ok.clone().select(x, Expr::f32(0.0)),
                    None => x,
                };
                regs.push(b.let_(&format!("qf{gi}_{c}_{e}"), x));
            }
        }
        qv.push(regs);
    }

    // Online softmax state per query head, base 2.
    let m: Vec<VarId> = (0..g)
        .map(|gi| b.var(&format!("m{gi}"), ninf.clone()))
        .collect();
    let l: Vec<VarId> = (0..g)
        .map(|gi| b.var(&format!("l{gi}"), Expr::f32(0.0)))
        .collect();
    let acc: Vec<Vec<VarId>> = (0..g)
        .map(|gi| {
            (0..chunks_per_lane * vec)
                .map(|j| b.var(&format!("acc{gi}_{j}"), Expr::f32(0.0)))
                .collect()
        })
        .collect();
    // ALiBi's slope per query head, times log2(e): the bias of token t is
    // slope·(t − (kv_len − 1)) in the base-2 domain.
    let slope2: Vec<Option<Expr>> = (0..g)
        .map(|gi| {
            let qhead = head.clone() * i32(g) + i32(gi);
            alibi_slope(spec, qhead, slopes)
                .map(|s| b.let_(&format!("slope{gi}"), s * Expr::f32(LOG2_E)))
        })
        .collect();

    b.comment("Walk the tokens: each row group takes one token per step.");
    b.for_("t0", start, end.clone(), i32(rows), |b, t0| {
        let t = b.let_("t", t0 + row.clone());
        let valid = b.let_("valid", t.clone().lt(end.clone()));
        let tc = b.let_("tc", t.clone().min(end.clone() - Expr::i32(1)));
        let dist = slope2.iter().any(Option::is_some).then(|| {
            b.let_(
                "dist",
                (t.clone() - kv_len.clone() + Expr::i32(1)).cast(Scalar::F32),
            )
        });
        let page_pos = page_begin.clone() + tc.clone() / i32(kv.page_size);
        let page = b.let_("page", Expr::load(indices, page_pos, 1));
        let slot = b.let_("slot", tc % i32(kv.page_size));
        let row_base = b.let_(
            "row_base",
            kv_offset(&kv, i64(page), i64(slot), i64(head.clone())),
        );
        let mut kf = Vec::new();
        let mut vf = Vec::new();
        for (c, ci) in chunk_idx.iter().enumerate() {
            let off = b.let_(
                &format!("off{c}"),
                row_base.clone() + i64(ci.clone()) * Expr::i64(vec as i64),
            );
            let kraw = b.let_(
                &format!("k{c}"),
                Expr::load(k_cache, off.clone(), vec as u8),
            );
            let vraw = b.let_(&format!("v{c}"), Expr::load(v_cache, off, vec as u8));
            for e in 0..vec as u8 {
                kf.push(b.let_(
                    &format!("kf{c}_{e}"),
                    kraw.clone().lane(e).cast(Scalar::F32),
                ));
                vf.push(b.let_(
                    &format!("vf{c}_{e}"),
                    vraw.clone().lane(e).cast(Scalar::F32),
                ));
            }
        }
        // Partial dots of every query head, then one butterfly over the row
        // group for all of them (the shuffles of a step are independent).
        // A statement per 16-byte chunk keeps every expression shallow,
        // however many chunks a lane reads.
        let mut dots: Vec<Expr> = (0..g as usize)
            .map(|gi| {
                let dot = b.var(&format!("dot{gi}"), Expr::f32(0.0));
                for (qc, kc) in qv[gi].chunks(vec as usize).zip(kf.chunks(vec as usize)) {
                    let mut sum = Expr::Var(dot);
                    for (qx, kx) in qc.iter().zip(kc) {
                        sum = qx.clone().fma(kx.clone(), sum);
                    }
                    b.set(dot, sum);
                }
                Expr::Var(dot)
            })
            .collect();
        let mut mask = lanes_per_row / 2;
        while mask > 0 {
            let others: Vec<Expr> = dots
                .iter()
                .enumerate()
                .map(|(gi, d)| b.shfl_xor(&format!("dot{gi}_x{mask}"), d.clone(), mask as i32, ws))
                .collect();
            dots = dots
                .into_iter()
                .zip(others)
                .enumerate()
                .map(|(gi, (d, o))| b.let_(&format!("dot{gi}_r{mask}"), d + o))
                .collect();
            mask /= 2;
        }
        for (gi, dot) in dots.into_iter().enumerate() {
            let bias = match (&slope2[gi], &dist) {
                (Some(s), Some(d)) => Some(d.clone() * s.clone()),
                _ => None,
            };
            let dot = match &scales {
                Some((ks, _)) => dot * ks.clone(),
                None => dot,
            };
            let s = logit2(spec, dot, bias);
            let s = b.let_(&format!("s{gi}"), valid.clone().select(s, ninf.clone()));
            let m_old = Expr::Var(m[gi]);
            let m_new = b.let_(&format!("m_new{gi}"), m_old.clone().max(s.clone()));
            let alpha = b.let_(
                &format!("alpha{gi}"),
                m_new
                    .clone()
                    .eq_(ninf.clone())
                    .select(Expr::f32(1.0), (m_old - m_new.clone()).exp2()),
            );
            let p = b.let_(
                &format!("p{gi}"),
                valid
                    .clone()
                    .select((s - m_new.clone()).exp2(), Expr::f32(0.0)),
            );
            b.set(l[gi], Expr::Var(l[gi]).fma(alpha.clone(), p.clone()));
            for (a, v) in acc[gi].iter().zip(&vf) {
                let scaled = Expr::Var(*a) * alpha.clone();
                b.set(*a, p.clone().fma(v.clone(), scaled));
            }
            b.set(m[gi], m_new);
        }
    });

    b.comment("Merge the row groups of each warp.");
    let mut off = lanes_per_row;
    while off < ws {
        // Every shuffle of the step first (they read the states as they are),
        // then the merges.
        let mut other = Vec::new();
        for gi in 0..g as usize {
            let name = |s: &str| format!("{s}{gi}_o{off}");
            let m_o = b.shfl_xor(&name("m"), Expr::Var(m[gi]), off as i32, ws);
            let l_o = b.shfl_xor(&name("l"), Expr::Var(l[gi]), off as i32, ws);
            let acc_o: Vec<Expr> = acc[gi]
                .iter()
                .enumerate()
                .map(|(j, a)| {
                    b.shfl_xor(
                        &format!("acc{gi}_{j}_o{off}"),
                        Expr::Var(*a),
                        off as i32,
                        ws,
                    )
                })
                .collect();
            other.push((m_o, l_o, acc_o));
        }
        for (gi, (m_o, l_o, acc_o)) in other.into_iter().enumerate() {
            let name = |s: &str| format!("{s}{gi}_o{off}");
            let m_new = b.let_(&name("mm"), Expr::Var(m[gi]).max(m_o.clone()));
            let is_empty = m_new.clone().eq_(ninf.clone());
            let fa = b.let_(
                &name("fa"),
                is_empty
                    .clone()
                    .select(Expr::f32(0.0), (Expr::Var(m[gi]) - m_new.clone()).exp2()),
            );
            let fb = b.let_(
                &name("fb"),
                is_empty.select(Expr::f32(0.0), (m_o - m_new.clone()).exp2()),
            );
            b.set(l[gi], Expr::Var(l[gi]) * fa.clone() + l_o * fb.clone());
            for (a, a_o) in acc[gi].iter().zip(acc_o) {
                b.set(*a, Expr::Var(*a) * fa.clone() + a_o * fb.clone());
            }
            b.set(m[gi], m_new);
        }
        off *= 2;
    }

    b.comment("The first row group of each warp hands its state to shared memory:");
    b.comment("lane 0 the running max and sum, every lane of the group its chunks.");
    b.if_(lane.clone().eq_(Expr::i32(0)), |b| {
        for gi in 0..g {
            let slot = warp.clone() * i32(g) + i32(gi);
            b.store(sm_m, slot.clone(), Expr::Var(m[gi as usize]));
            b.store(sm_l, slot, Expr::Var(l[gi as usize]));
        }
    });
    b.if_(lane.clone().lt(i32(lanes_per_row)), |b| {
        for gi in 0..g {
            let slot = warp.clone() * i32(g) + i32(gi);
            for (c, ci) in chunk_idx.iter().enumerate() {
                let store = |b: &mut KernelBuilder| {
                    for e in 0..vec {
                        let idx = slot.clone() * i32(d) + ci.clone() * i32(vec) + i32(e);
                        let a = acc[gi as usize][c * vec as usize + e as usize];
                        b.store(sm_acc, idx, Expr::Var(a));
                    }
                };
                match &chunk_ok[c] {
                    Some(ok) => b.if_(ok.clone(), store),
                    None => store(b),
                }
            }
        }
    });
    b.barrier();

    b.comment("Merge the warps and write the normalised output.");
    let tid = Expr::special(Special::ThreadIdx);
    b.for_(
        "i",
        tid,
        i32(g * d),
        Expr::special(Special::BlockDim),
        |b, i| {
            let gi = b.let_("gi", i.clone() / i32(d));
            let dd = b.let_("dd", i % i32(d));
            let ms: Vec<Expr> = (0..DECODE_WARPS)
                .map(|w| {
                    let idx = i32(w * g) + gi.clone();
                    b.let_(&format!("mw{w}"), Expr::load(sm_m, idx, 1))
                })
                .collect();
            let qhead = b.let_("qhead", head.clone() * i32(g) + gi.clone());
            let mut mx = ms[0].clone();
            for mw in &ms[1..] {
                mx = mx.max(mw.clone());
            }
            // A sink is one more logit in the denominator (base 2 here).
            let sink = sinks.map(|buf| {
                b.let_(
                    "sink",
                    Expr::load(buf, qhead.clone(), 1) * Expr::f32(LOG2_E),
                )
            });
            if let Some(sk) = &sink {
                mx = mx.max(sk.clone());
            }
            let mx = b.let_("mx", mx);
            let mut lsum = match &sink {
                Some(sk) => (sk.clone() - mx.clone()).exp2(),
                None => Expr::f32(0.0),
            };
            let mut asum = Expr::f32(0.0);
            for (w, mw) in ms.iter().enumerate() {
                let idx = i32(w as u32 * g) + gi.clone();
                let f = b.let_(
                    &format!("f{w}"),
                    mx.clone()
                        .eq_(ninf.clone())
                        .select(Expr::f32(0.0), (mw.clone() - mx.clone()).exp2()),
                );
                let lw = Expr::load(sm_l, idx.clone(), 1);
                lsum = lw.fma(f.clone(), lsum);
                let aw = Expr::load(sm_acc, idx * i32(d) + dd.clone(), 1);
                asum = aw.fma(f, asum);
            }
            let lsum = b.let_("lsum", lsum);
            let asum = b.let_("asum", asum);
            let o = match &scales {
                Some((_, vs)) => asum / lsum.clone() * vs.clone(),
                None => asum / lsum.clone(),
            };
            let o = lsum.clone().gt(Expr::f32(0.0)).select(o, Expr::f32(0.0));
            let row = i64(seq.clone()) * Expr::i64(spec.q_heads as i64) + i64(qhead);
            match &out {
                Output::Final(out) => {
                    let idx = row * Expr::i64(d as i64) + i64(dd);
                    b.store(*out, idx, o.cast(q_elem));
                }
                Output::Partial { out, ml, .. } => {
                    // Partial p of (sequence, query head) row r sits at
                    // r·splits + p: out holds head_dim floats, ml (max, sum).
                    let splits = Expr::special(Special::GridDim(Dim::Z)).cast(Scalar::I64);
                    let z = Expr::special(Special::BlockIdx(Dim::Z)).cast(Scalar::I64);
                    let part = b.let_("part", row * splits + z);
                    b.store(
                        *out,
                        part.clone() * Expr::i64(d as i64) + i64(dd.clone()),
                        o,
                    );
                    b.if_(dd.eq_(Expr::i32(0)), |b| {
                        b.store(*ml, part.clone() * Expr::i64(2), mx.clone());
                        b.store(*ml, part * Expr::i64(2) + Expr::i64(1), lsum);
                    });
                }
            }
        },
    );
    b.finish()
}

/// Where a decode kernel's result goes.
enum Output {
    /// The normalised output, in the query dtype.
    Final(BufId),
    /// Split-K: the chunk's normalised output and its (max, sum), in f32.
    Partial { out: BufId, ml: BufId, chunk: Expr },
}
