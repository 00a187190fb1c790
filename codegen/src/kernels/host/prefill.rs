//! Prefill on the host target: one thread per block serves a tile of
//! [`HOST_PREFILL_ROWS`] packed query rows (token × query head of the KV
//! head's group, as in the GPU kernel) of one KV head of one sequence,
//! against the KV tiles its rows can see, TILE tokens at a time: each K and
//! V row is read and converted once for all of the tile's rows. The logits
//! come with the rows in the vector lanes ([`super::by_rows`]), then the
//! softmax and the accumulation of [`super::tile`].
//!
//! Each row goes through exactly the arithmetic of the host decode kernel
//! (the same tiles from token 0, dot products, softmax and accumulation,
//! masked tokens weighing an exact 0), so without a sliding window a
//! prompt token's output has the bits decode gives it: a sequence's results
//! do not depend on whether its tokens came in as one prompt or one by one.
//!
//! Parameters and results are those of the GPU prefill kernel (see
//! [`crate::kernels::prefill`]); its grid counts tiles of
//! [`HOST_PREFILL_ROWS`] rows.

use crate::ir::builder::KernelBuilder;
use crate::ir::{Expr, Kernel, Scalar};
use crate::spec::AttentionSpec;
use crate::target::Target;

use super::super::prefill::{declare, prefill_block, PrefillBlock, PREFILL_ROWS};
use super::super::{alibi_slope, vector_lanes};
use super::by_rows::{transposed_queries, vector_logit, ByRows};
use super::tile::{masked_logit, Rows, Tile, ROW_LANES};
use super::{finish_row, unit_scales, write_row, TILE};

const LOG2_E: f32 = std::f32::consts::LOG2_E;

/// Packed query rows per host prefill block: 64, four vectors of the
/// per-row values. A tile's K and V rows are converted, its page-table
/// lookups and prefetches made, once for all of a block's rows; with 64
/// rows that costs a quarter of what it does per row with 16, and the
/// logits' register blocks reuse each K element for two vectors of rows
/// (BENCHMARKS.md: 128 rows gained nothing more).
pub const HOST_PREFILL_ROWS: u32 = 4 * PREFILL_ROWS;

pub(crate) fn build(spec: &AttentionSpec, target: Target, name: &str) -> Kernel {
    let kv = spec.kv;
    let q_elem = Scalar::of_dtype(spec.query_dtype());
    let d = kv.head_dim;
    let g = spec.group_size();
    let rows = HOST_PREFILL_ROWS;
    let i32 = |v: u32| Expr::i32(v as i32);
    let i64 = |e: Expr| e.cast(Scalar::I64);

    let mut b = KernelBuilder::new(name, target, 1);
    let io = declare(&mut b, spec);
    b.comment(format!(
        "host schedule: {rows} query rows ({g} heads per KV head) x tiles of {TILE} KV tokens"
    ));
    let PrefillBlock {
        head,
        qo_begin,
        q_len,
        page_begin,
        kv_len,
        scales,
        packed,
        row0,
    } = prefill_block(&mut b, spec, &io, rows);
    let scales = unit_scales(&mut b, spec.kv.dtype, scales);

    b.if_(row0.clone().lt(packed.clone()), |b| {
        // Each row's query token, query head, position and whether it is a
        // real row (rows past the sequence's last are padding).
        let tok = b.local("tok", Scalar::I32, rows);
        let qhead = b.local("qhead", Scalar::I32, rows);
        let pos = b.local("pos", Scalar::I32, rows);
        let real = b.local("real", Scalar::I32, rows);
        b.unroll("r", rows, |b, r| {
            let prow = b.let_("prow", row0.clone() + r.clone());
            let pc = b.let_("pc", prow.clone().min(packed.clone() - Expr::i32(1)));
            let qi = b.let_("qi", pc.clone() / i32(g));
            b.store(tok, r.clone(), qo_begin.clone() + qi.clone());
            b.store(qhead, r.clone(), head.clone() * i32(g) + pc % i32(g));
            b.store(pos, r.clone(), kv_len.clone() - q_len.clone() + qi);
            let ok = prow.lt(packed.clone());
            b.store(real, r, ok.select(Expr::i32(1), Expr::i32(0)));
        });

        // The KV range the tile's rows can see.
        let (kv_lo, kv_hi) =
            super::super::prefill::visible_kv(b, spec, &row0, rows, &q_len, &kv_len);

        // Rows from `live` on are padding (past the sequence's last): their
        // vectors' work is skipped.
        let live = b.let_("live_rows", packed.clone() - row0.clone());
        let tile = Tile::new(b, rows, &kv).token_major(live);
        let by_rows = ByRows::new(b, rows, d);
        // The rows' queries in f32 (padding rows as zeros), transposed.
        let qvec = vector_lanes(spec.query_dtype());
        b.unroll("r", rows, |b, r| {
            let t = Expr::load(tok, r.clone(), 1);
            let h = Expr::load(qhead, r.clone(), 1);
            let base = b.let_(
                "q_base",
                (i64(t) * Expr::i64(spec.q_heads as i64) + i64(h)) * Expr::i64(d as i64),
            );
            let ok = b.let_("ok", Expr::load(real, r.clone(), 1).ne_(Expr::i32(0)));
            let zero = Expr::Vector(vec![Expr::f32(0.0); qvec as usize]);
            b.unroll("c", d / qvec, |b, c| {
                let raw = Expr::load(io.q, base.clone() + i64(c.clone() * i32(qvec)), qvec as u8);
                let x = b.let_("qx", ok.clone().select(raw.cast(Scalar::F32), zero.clone()));
                for k in 0..qvec {
                    let j = c.clone() * i32(qvec) + i32(k);
                    let at = transposed_queries(rows, &r, &j);
                    b.store(tile.qf, at, x.clone().lane(k as u8));
                }
            });
        });
        // ALiBi: each row's slope (base 2).
        let slope2 = spec.alibi.is_some().then(|| {
            let slope2 = b.local("slope2", Scalar::F32, rows);
            b.unroll("r", rows, |b, r| {
                let h = Expr::load(qhead, r.clone(), 1);
                let s = alibi_slope(spec, h, io.slopes).expect("the spec has ALiBi");
                b.store(slope2, r, s * Expr::f32(LOG2_E));
            });
            slope2
        });

        let at = Rows {
            kv: &kv,
            indices: io.indices,
            page_begin: &page_begin,
            head: &head,
            last: &kv_hi,
        };
        b.comment("Walk the visible KV tiles.");
        b.for_("kv0", kv_lo, kv_hi.clone(), i32(TILE), |b, kv0| {
            let logit = |b: &mut KernelBuilder, r: &Expr, i: &Expr, dot: Expr| {
                let t = b.let_("kt", kv0.clone() + i.clone());
                let p = b.let_("row_pos", Expr::load(pos, r.clone(), 1));
                let mut ok = Expr::load(real, r.clone(), 1)
                    .ne_(Expr::i32(0))
                    .and_then(t.clone().lt(kv_hi.clone()));
                if spec.causal {
                    ok = ok.and_then(t.clone().le(p.clone()));
                }
                if let Some(win) = spec.sliding_window {
                    ok = ok.and_then(t.clone().ge(p.clone() - i32(win) + Expr::i32(1)));
                }
                let bias =
                    slope2.map(|sl| (t - p).cast(Scalar::F32) * Expr::load(sl, r.clone(), 1));
                masked_logit(spec, dot, scales.as_ref().map(|s| &s.0), bias, ok)
            };
            // Every row sees every token of the tile: the tile inside the
            // visible range, before the first row's position (causal) and
            // inside the last row's window. Padding rows (past the last real
            // one) may see them too: they repeat the last real row's position,
            // their queries are zeros, so their logits are finite, and their
            // results are not written; a block's last tile of rows keeps the
            // vector path.
            let mut full = (kv0.clone() + i32(TILE)).le(kv_hi.clone());
            if spec.causal {
                let p0 = Expr::load(pos, Expr::i32(0), 1);
                full = full.and_then((kv0.clone() + i32(TILE - 1)).le(p0));
            }
            if let Some(win) = spec.sliding_window {
                let p1 = Expr::load(pos, i32(rows - 1), 1);
                full = full.and_then(kv0.clone().ge(p1 - i32(win) + Expr::i32(1)));
            }
            let full = b.let_("full", full);
            let vlogit = |b: &mut KernelBuilder, g: &Expr, i: &Expr, dots: Expr| {
                // ALiBi: slope·(t − pos), t − pos in i32 then f32, as decode.
                let bias = slope2.map(|slope2| {
                    let r0 = g.clone() * i32(ROW_LANES);
                    let t = b.let_("kt", kv0.clone() + i.clone());
                    let lanes = (0..ROW_LANES).map(|k| {
                        let p = Expr::load(pos, r0.clone() + i32(k), 1);
                        (t.clone() - p).cast(Scalar::F32)
                    });
                    let dist = b.let_("dist", Expr::Vector(lanes.collect()));
                    dist * Expr::load(slope2, r0, ROW_LANES as u8)
                });
                vector_logit(spec, dots, scales.as_ref().map(|s| &s.0), bias, ROW_LANES)
            };
            tile.locate(b, &at, &kv0);
            let all = tile.all();
            for cache in [io.k_cache, io.v_cache] {
                tile.prefetch_next(b, &all, cache, &Expr::i32(0), TILE);
            }
            by_rows.logits(b, &tile, spec, io.k_cache, &full, &vlogit, &logit);
            tile.softmax(b, &all);
            tile.accumulate(b, &all, io.v_cache, false);
        });

        b.comment("Normalise (with the sink in the denominator) and write the real rows.");
        b.unroll("r", rows, |b, r| {
            let h = b.let_("h", Expr::load(qhead, r.clone(), 1));
            let mx = b.let_("mx", Expr::load(tile.m, r.clone(), 1));
            let lsum = Expr::load(tile.l, r.clone(), 1);
            let vscale = scales.as_ref().map(|(_, vs)| vs);
            let (inv, _) = finish_row(b, io.sinks, &h, &mx, lsum, vscale);
            let ok = Expr::load(real, r.clone(), 1).ne_(Expr::i32(0));
            b.if_(ok, |b| {
                let t = Expr::load(tok, r.clone(), 1);
                let base = b.let_(
                    "out_base",
                    (i64(t) * Expr::i64(spec.q_heads as i64) + i64(h.clone()))
                        * Expr::i64(d as i64),
                );
                let at = r.clone() * i32(d);
                write_row(b, tile.acc, &at, &inv, io.out, &base, q_elem, d);
            });
        });
    });
    b.finish()
}
