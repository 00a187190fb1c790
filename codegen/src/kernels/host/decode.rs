//! Decode (and split-K decode) on the host target: one thread per block
//! serves one KV head of one sequence and every query head of its group,
//! one tile of TILE tokens at a time (see [`super::tile`]).
//!
//! Parameters, grid and results are those of the GPU decode kernel (see
//! [`crate::kernels::decode`]); a token past the end is read at the last
//! token (a valid row) and weighs nothing, so NaN in free pages never
//! reaches the output.

use crate::ir::builder::KernelBuilder;
use crate::ir::{Dim, Expr, Kernel, Scalar, Special};
use crate::spec::AttentionSpec;
use crate::target::Target;

use super::super::decode::{declare, walk, HeadBlock, Output};
use super::super::{alibi_slope, kv_scale_values, seq_pages, vector_lanes};
use super::tile::{masked_logit, Rows, Tile};
use super::{finish_row, TILE};

const LOG2_E: f32 = std::f32::consts::LOG2_E;

pub(crate) fn build(spec: &AttentionSpec, target: Target, name: &str, split: bool) -> Kernel {
    let kv = spec.kv;
    let q_elem = Scalar::of_dtype(spec.query_dtype());
    let d = kv.head_dim;
    let i32 = |v: u32| Expr::i32(v as i32);
    let i64 = |e: Expr| e.cast(Scalar::I64);

    let mut b = KernelBuilder::new(name, target, 1);
    let io = declare(&mut b, spec, split);
    // The query heads this block serves: the group, or its share of it (the
    // GPU kernel's grid, see `decode_head_blocks`).
    let g = super::super::decode_head_blocks(spec).1;
    b.comment(format!(
        "host schedule: {g} query heads per {}, tiles of {TILE} tokens",
        if super::super::decode_head_blocks(spec).0 == 1 {
            "KV head"
        } else {
            "block"
        }
    ));
    let heads = HeadBlock::new(&mut b, spec);
    let head = heads.kv_head.clone();
    let seq = b.let_("seq", Expr::special(Special::BlockIdx(Dim::Y)));
    let (page_begin, kv_len) = seq_pages(&mut b, &kv, io.indptr, io.last_len, &seq);
    let scales = kv_scale_values(&mut b, &kv, io.scales, &head);
    let (start, end) = walk(&mut b, spec, &io.out, &kv_len);

    let tile = Tile::new(&mut b, g, d);
    // The group's queries in f32.
    let qvec = vector_lanes(spec.query_dtype());
    b.unroll("gi", g, |b, gi| {
        let qhead = heads.qhead(gi.clone());
        let base = b.let_(
            "q_base",
            (i64(seq.clone()) * Expr::i64(spec.q_heads as i64) + i64(qhead)) * Expr::i64(d as i64),
        );
        b.unroll("c", d / qvec, |b, c| {
            let raw = Expr::load(io.q, base.clone() + i64(c.clone() * i32(qvec)), qvec as u8);
            b.store(
                tile.qf,
                gi.clone() * i32(d) + c * i32(qvec),
                raw.cast(Scalar::F32),
            );
        });
    });
    let slope2 = spec.alibi.is_some().then(|| {
        let buf = b.local("slope2", Scalar::F32, g);
        b.unroll("gi", g, |b, gi| {
            let qhead = heads.qhead(gi.clone());
            let s = alibi_slope(spec, qhead, io.slopes).expect("the spec has ALiBi");
            b.store(buf, gi, s * Expr::f32(LOG2_E));
        });
        buf
    });

    let rows = Rows {
        kv: &kv,
        indices: io.indices,
        page_begin: &page_begin,
        head: &head,
        last: &end,
    };
    b.comment("Walk the tokens a tile at a time.");
    b.for_("t0", start, end.clone(), i32(TILE), |b, t0| {
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
        tile.locate(b, &rows, [io.k_cache, io.v_cache], &t0);
        tile.logits(b, spec, io.k_cache, &logit);
        tile.softmax(b);
        tile.accumulate(b, &kv, io.v_cache);
    });

    b.comment("Normalise and write every query head's row.");
    b.unroll("gi", g, |b, gi| {
        // A head past the group (in its last, partial block) writes nothing.
        let real = heads.real(gi.clone());
        let write = |b: &mut KernelBuilder| {
            let qhead = b.let_("qhead", heads.qhead(gi.clone()));
            let mx = b.let_("mx", Expr::load(tile.m, gi.clone(), 1));
            let lsum = Expr::load(tile.l, gi.clone(), 1);
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
            b.unroll("j", d, |b, j| {
                let o = Expr::load(tile.acc, gi.clone() * i32(d) + j.clone(), 1) * inv.clone();
                b.store(dst, base.clone() + i64(j), o.cast(elem));
            });
        };
        match real {
            Some(real) => b.if_(real, write),
            None => write(b),
        }
    });
    b.finish()
}
