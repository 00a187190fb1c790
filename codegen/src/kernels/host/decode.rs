//! Decode (and split-K decode) on the host target: one thread per block
//! serves one KV head of one sequence and every query head of its group,
//! or with NHD pages every KV head of the sequence (`kv_heads / gridDim.x`
//! of them, see [`super::decode_kv_heads_per_block`]), one tile of TILE
//! tokens at a time, head after head (see [`super::tile`]).
//!
//! Parameters and results are those of the GPU decode kernel (see
//! [`crate::kernels::decode`]), and so is the grid with one KV head per
//! block (`KernelSpec::grid_serving`); a token past the end is read at the last
//! token (a valid row) and weighs nothing, so NaN in free pages never
//! reaches the output.

use crate::ir::builder::KernelBuilder;
use crate::ir::{Dim, Expr, Kernel, Scalar, Special};
use crate::spec::AttentionSpec;
use crate::target::Target;

use super::super::decode::{declare, walk, HeadBlock, Output};
use super::super::{alibi_slope, kv_offset, kv_scale_values, seq_pages, vector_lanes};
use super::tile::{masked_logit, PageOrder, Rows, Span, Tile};
use super::{finish_row, max_kv_heads_per_block, unit_scales, write_row, TILE};

const LOG2_E: f32 = std::f32::consts::LOG2_E;

pub(crate) fn build(spec: &AttentionSpec, target: Target, name: &str, split: bool) -> Kernel {
    let kv = spec.kv;
    let q_elem = Scalar::of_dtype(spec.query_dtype());
    let d = kv.head_dim;
    let i32 = |v: u32| Expr::i32(v as i32);
    let i64 = |e: Expr| e.cast(Scalar::I64);

    let mut b = KernelBuilder::new(name, target, 1);
    let io = declare(&mut b, spec, split);
    // The query heads this block serves per KV head: the group, or its
    // share of it (the GPU kernel's grid, see `decode_head_blocks`).
    let g = super::super::decode_head_blocks(spec).1;
    // KV heads per block: up to `most`, as many as the launch's grid leaves
    // (`kv_heads / gridDim.x`, see `decode_kv_heads_per_block`).
    let most = max_kv_heads_per_block(spec);
    b.comment(format!(
        "host schedule: {g} query heads per {}, tiles of {TILE} tokens{}",
        if super::super::decode_head_blocks(spec).0 == 1 {
            "KV head"
        } else {
            "block"
        },
        if most > 1 {
            format!(", up to {most} KV heads per block, a tile's pages read head by head")
        } else {
            String::new()
        }
    ));
    let heads = HeadBlock::new(&mut b, spec);
    let (head0, per_block) = match most {
        1 => (heads.kv_head.clone(), None),
        _ => {
            let n = Expr::i32(kv.kv_heads as i32) / Expr::special(Special::GridDim(Dim::X));
            let n = b.let_("kv_heads_per_block", n);
            (
                b.let_("kv_head0", heads.kv_head.clone() * n.clone()),
                Some(n),
            )
        }
    };
    // Runs `body` for each KV head of the block: (its heads, its first
    // tile row, its K/V rows' offset from the first head's).
    let each_head =
        |b: &mut KernelBuilder, body: &mut dyn FnMut(&mut KernelBuilder, &HeadBlock, &Span)| {
            match &per_block {
                None => body(b, &heads, &Span::rows(0, g)),
                // A loop of `most` (local arrays take unroll indices), the
                // heads past the grid's share skipped.
                Some(n) => b.unroll("hh", most, |b, hh| {
                    b.if_(hh.clone().lt(n.clone()), |b| {
                        let at = heads.of_kv_head(head0.clone() + hh.clone());
                        let stride = kv_offset(&kv, Expr::i64(0), Expr::i64(0), Expr::i64(1));
                        let span = Span {
                            first: b.let_("row0", hh.clone() * i32(g)),
                            n: g,
                            off: b.let_("head_off", i64(hh.clone()) * stride.clone()),
                            next: Some(PageOrder {
                                all: n.clone().eq_(i32(most)),
                                pass: hh,
                                heads: most,
                                stride,
                            }),
                        };
                        body(b, &at, &span)
                    })
                }),
            }
        };
    let seq = b.let_("seq", Expr::special(Special::BlockIdx(Dim::Y)));
    let (page_begin, kv_len) = seq_pages(&mut b, &kv, io.indptr, io.last_len, &seq);
    let (start, end) = walk(&mut b, spec, &io.out, &kv_len);

    let tile = Tile::new(&mut b, most * g, &kv);
    // The queries in f32, and ALiBi's slopes in base 2, per row.
    let qvec = vector_lanes(spec.query_dtype());
    let slope2 = spec
        .alibi
        .is_some()
        .then(|| b.local("slope2", Scalar::F32, most * g));
    each_head(&mut b, &mut |b, heads, span| {
        b.unroll("gi", g, |b, gi| {
            let qhead = heads.qhead(gi.clone());
            let r = b.let_("r", span.first.clone() + gi.clone());
            let base = b.let_(
                "q_base",
                (i64(seq.clone()) * Expr::i64(spec.q_heads as i64) + i64(qhead.clone()))
                    * Expr::i64(d as i64),
            );
            b.unroll("c", d / qvec, |b, c| {
                let raw = Expr::load(io.q, base.clone() + i64(c.clone() * i32(qvec)), qvec as u8);
                b.store(
                    tile.qf,
                    r.clone() * i32(d) + c * i32(qvec),
                    raw.cast(Scalar::F32),
                );
            });
            if let Some(buf) = slope2 {
                let s = alibi_slope(spec, qhead, io.slopes).expect("the spec has ALiBi");
                b.store(buf, r, s * Expr::f32(LOG2_E));
            }
        });
    });

    let rows = Rows {
        kv: &kv,
        indices: io.indices,
        page_begin: &page_begin,
        head: &head0,
        last: &end,
    };
    b.comment("Walk the tokens a tile at a time (each of the block's KV heads in turn).");
    b.for_("t0", start, end.clone(), i32(TILE), |b, t0| {
        tile.locate(b, &rows, &t0);
        each_head(b, &mut |b, heads, span| {
            let scales = kv_scale_values(b, &kv, io.scales, &heads.kv_head);
            let scales = unit_scales(b, kv.dtype, scales);
            let logit = |_: &mut KernelBuilder, r: &Expr, i: &Expr, dot: Expr| {
                let t = t0.clone() + i.clone();
                // ALiBi: slope·(t − (kv_len − 1)), base 2.
                let bias = slope2.map(|sl| {
                    (t.clone() - kv_len.clone() + Expr::i32(1)).cast(Scalar::F32)
                        * Expr::load(sl, r.clone(), 1)
                });
                let k_scale = scales.as_ref().map(|s| &s.0);
                masked_logit(spec, dot, k_scale, bias, t.lt(end.clone()))
            };
            tile.logits(b, spec, span, io.k_cache, true, &logit);
            tile.softmax(b, span);
            tile.accumulate(b, span, io.v_cache, true);
        });
    });

    b.comment("Normalise and write every query head's row.");
    each_head(&mut b, &mut |b, heads, span| {
        let scales = kv_scale_values(b, &kv, io.scales, &heads.kv_head);
        let scales = unit_scales(b, kv.dtype, scales);
        b.unroll("gi", g, |b, gi| {
            // A head past the group (in its last, partial block) writes nothing.
            let real = heads.real(gi.clone());
            let r = b.let_("r", span.first.clone() + gi.clone());
            let write = |b: &mut KernelBuilder| {
                let qhead = b.let_("qhead", heads.qhead(gi.clone()));
                let mx = b.let_("mx", Expr::load(tile.m, r.clone(), 1));
                let lsum = Expr::load(tile.l, r.clone(), 1);
                let vscale = scales.as_ref().map(|(_, vs)| vs);
                let (inv, lsum) = finish_row(b, io.sinks, &qhead, &mx, lsum, vscale);
                let row_id = i64(seq.clone()) * Expr::i64(spec.q_heads as i64) + i64(qhead);
                let (dst, base, elem) = match &io.out {
                    Output::Final(out) => (
                        *out,
                        b.let_("out_base", row_id * Expr::i64(d as i64)),
                        q_elem,
                    ),
                    Output::Partial { out, ml, .. } => {
                        // Partial p of (sequence, query head) row r sits at
                        // r·splits + p: out holds head_dim floats, ml (max, sum).
                        let splits = Expr::special(Special::GridDim(Dim::Z)).cast(Scalar::I64);
                        let z = Expr::special(Special::BlockIdx(Dim::Z)).cast(Scalar::I64);
                        let part = b.let_("part", row_id * splits + z);
                        b.store(*ml, part.clone() * Expr::i64(2), mx.clone());
                        b.store(*ml, part.clone() * Expr::i64(2) + Expr::i64(1), lsum);
                        (
                            *out,
                            b.let_("out_base", part * Expr::i64(d as i64)),
                            Scalar::F32,
                        )
                    }
                };
                let at = r.clone() * i32(d);
                write_row(b, tile.acc, &at, &inv, dst, &base, elem, d);
            };
            match real {
                Some(real) => b.if_(real, write),
                None => write(b),
            }
        });
    });
    b.finish()
}
