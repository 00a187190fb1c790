//! The V phase of a tile: the accumulators rescaled and the weighted V rows added.

use crate::ir::builder::KernelBuilder;
use crate::ir::{BufId, Expr};

use super::super::{
    converts_in_pairs, i32, lanes_of, load_row_f32, load_wide_f32, splat_n, wide_lanes, TILE, W,
};
use super::{Span, Tile};

/// Chunks of an accumulator row kept in registers while the tile's V rows
/// stream past.
const VGROUP: u32 = 16;

/// Rows per register block of the V accumulation.
const VROWS: u32 = 4;

impl Tile {
    /// Chunks `c0..c0 + n` (of `wv` lanes) of the V row at `base` in f32;
    /// fp8 two at a time where they pair up ([`converts_in_pairs`]).
    fn v_chunks(
        &self,
        b: &mut KernelBuilder,
        v_cache: BufId,
        base: &Expr,
        c0: &Expr,
        n: u32,
        wv: u32,
    ) -> Vec<Expr> {
        let (d, dtype) = (self.kv.head_dim, self.kv.dtype);
        if converts_in_pairs(dtype, d) && wv == 2 * W && n.is_multiple_of(2) {
            (0..n / 2)
                .flat_map(|k| {
                    let from = (c0.clone() + i32(2 * k)) * i32(wv);
                    let both = load_wide_f32(v_cache, base, &from, d, dtype);
                    let both = b.let_("vv2", both);
                    [0, wv].map(|from| b.let_("vv", lanes_of(&both, from, wv)))
                })
                .collect()
        } else {
            (0..n)
                .map(|k| {
                    let v = load_row_f32(v_cache, base, &(c0.clone() + i32(k)), wv, dtype);
                    b.let_("vv", v)
                })
                .collect()
        }
    }

    /// `acc = acc·alpha + Σ_i p_i·v_i` for the span's rows over the tile's
    /// V rows (tokens `t0 + i`). With `ahead`, each sweep over the tile's
    /// tokens prefetches the part of the next pass's V rows it reads.
    pub fn accumulate(&self, b: &mut KernelBuilder, span: &Span, v_cache: BufId, ahead: bool) {
        let kv = &self.kv;
        let d = kv.head_dim;
        let wv = wide_lanes(d);
        // With one register block of rows, each V chunk is used once: it is
        // converted where the FMAs use it; otherwise the tile's V rows are
        // converted to f32 once, for every block.
        let direct = span.n <= VROWS;
        if !direct {
            self.rows_f32(b, span, v_cache, self.vrows);
        }
        // Register blocks of VROWS rows × VGROUP/VROWS chunks of `wv` lanes:
        // each V chunk loaded serves VROWS rows. Element-wise, so the lane
        // count changes no sum.
        let chunks = d / wv;
        let per = (VGROUP / VROWS).min(chunks);
        span.row_blocks(b, VROWS, |b, first, nr| {
            // Whole groups of `per` chunks in a loop, then the rest.
            let groups = chunks / per;
            let rest = chunks % per;
            let block = |b: &mut KernelBuilder, c0: Expr, n: u32| {
                let at = |r: u32, k: u32| {
                    (first.clone() + i32(r)) * i32(d) + (c0.clone() + i32(k)) * i32(wv)
                };
                let regs: Vec<Vec<_>> = (0..nr)
                    .map(|r| {
                        let a = splat_n(Expr::load(self.alpha, first.clone() + i32(r), 1), wv);
                        (0..n)
                            .map(|k| {
                                b.var("av", Expr::load(self.acc, at(r, k), wv as u8) * a.clone())
                            })
                            .collect()
                    })
                    .collect();
                b.unroll("i", TILE, |b, i| {
                    if ahead {
                        // The part of the next pass's V row i this sweep reads.
                        let next = span.next_row(self.bases, i.clone());
                        let next = b.let_("next_base", next);
                        let from = c0.clone() * i32(wv);
                        self.prefetch_part(b, v_cache, &next, from, n * wv);
                    }
                    let v: Vec<Expr> = if direct {
                        let base = span.at(Expr::load(self.bases, i.clone(), 1));
                        self.v_chunks(b, v_cache, &base, &c0, n, wv)
                    } else {
                        (0..n)
                            .map(|k| {
                                let at = i.clone() * i32(d) + (c0.clone() + i32(k)) * i32(wv);
                                b.let_("vv", Expr::load(self.vrows, at, wv as u8))
                            })
                            .collect()
                    };
                    for (r, row) in regs.iter().enumerate() {
                        let sat = self.s_at(first.clone() + i32(r as u32), i.clone());
                        let p = b.let_("pv", splat_n(Expr::load(self.s, sat, 1), wv));
                        for (k, reg) in row.iter().enumerate() {
                            b.set(*reg, p.clone().fma(v[k].clone(), Expr::Var(*reg)));
                        }
                    }
                });
                for (r, row) in regs.iter().enumerate() {
                    for (k, reg) in row.iter().enumerate() {
                        b.store(self.acc, at(r as u32, k as u32), Expr::Var(*reg));
                    }
                }
            };
            self.if_live(b, first.clone(), |b| {
                b.unroll("cg", groups, |b, cg| block(b, cg * i32(per), per));
                if rest > 0 {
                    block(b, i32(groups * per), rest);
                }
            });
        });
    }
}
