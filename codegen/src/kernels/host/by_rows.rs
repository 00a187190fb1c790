//! A tile's logits with the rows in the vector lanes, for prefill's many
//! rows: the block's queries are transposed once (`qf[j·rows + r]`, see
//! [`transposed_queries`]), each tile's K rows converted once
//! (`kf[i·d + j]`), and the logits come out token-major (`s[i·rows + r]`,
//! [`Tile::token_major`]), ROW_LANES rows per vector.
//!
//! Row r's dot product with token i is, in the row-by-row schedule, a
//! W-lane FMA chain over the row's chunks whose lanes then fold as
//! `((p0 + p4) + (p1 + p5)) + ((p2 + p6) + (p3 + p7))`. Here each of those
//! W chains is a vector FMA chain with a row in each lane: every lane does
//! exactly the row-by-row operations, so the logits, and prefill's outputs,
//! have the bits of the decode schedule's (tested). Each K element
//! broadcast serves two vectors of rows, each query vector four tokens: a
//! register block of 2 chains × 2 row vectors × 4 tokens runs 16 FMAs per
//! 4 vector loads and 8 broadcasts.

use crate::ir::builder::KernelBuilder;
use crate::ir::{BufId, Expr, Scalar};
use crate::spec::AttentionSpec;

use super::tile::{Tile, CHAINS, ROW_LANES};
use super::{i32, splat_n, TILE, W};

// The fold below restates Tile::logits's reduction for one chain.
const _: () = assert!(CHAINS == 1 && W == 8);

/// Row vectors per register block.
const GROUPS: u32 = 2;
/// Tokens per register block.
const TOKENS: u32 = 4;

/// Where [`ByRows`] expects the block's f32 queries: element j of row r at
/// `qf[j·rows + r]` (the transpose of [`Tile::qf`]'s row-major layout).
pub(crate) fn transposed_queries(rows: u32, r: &Expr, j: &Expr) -> Expr {
    j.clone() * i32(rows) + r.clone()
}

/// The state [`ByRows::logits`] needs beside a [`Tile`].
pub(crate) struct ByRows {
    /// The tile's K rows in f32: `kf[i·d + j]`.
    kf: BufId,
    /// The two halves of each logit's fold, `(p0 + p4) + (p1 + p5)` at
    /// `half[i·rows + r]` and `(p2 + p6) + (p3 + p7)` a tile's logits
    /// further.
    half: BufId,
}

impl ByRows {
    /// Declares it for a tile of `rows` rows (whole register blocks of
    /// GROUPS row vectors) of `d`.
    pub fn new(b: &mut KernelBuilder, rows: u32, d: u32) -> ByRows {
        assert!(
            rows.is_multiple_of(GROUPS * ROW_LANES),
            "rows in whole register blocks"
        );
        ByRows {
            kf: b.local("kf", Scalar::F32, TILE * d),
            half: b.local("half", Scalar::F32, 2 * rows * TILE),
        }
    }

    /// The logits of the tile's tokens `t0 + i` into `tile.s`, token-major.
    /// Where `full` (block-uniform) holds, every row sees every token, and
    /// `vlogit(b, g, i, dots)` turns the raw dots of rows `g·ROW_LANES..`
    /// with token i into logits; elsewhere `logit(b, r, i, dot)` masks them
    /// one by one, as for [`Tile::logits`].
    #[allow(clippy::too_many_arguments)]
    pub fn logits(
        &self,
        b: &mut KernelBuilder,
        tile: &Tile,
        spec: &AttentionSpec,
        k_cache: BufId,
        full: &Expr,
        vlogit: &dyn Fn(&mut KernelBuilder, &Expr, &Expr, Expr) -> Expr,
        logit: &dyn Fn(&mut KernelBuilder, &Expr, &Expr, Expr) -> Expr,
    ) {
        let d = spec.kv.head_dim;
        let rows = tile.rows;
        // The tile's K rows in f32, once for every row.
        tile.rows_f32(b, &tile.all(), k_cache, self.kf);
        // Chains e and e + 4 together, e = 0..4: their sum is the fold's
        // a_e. `half` gets a0 + a1 in its first part, a2 + a3 in its
        // second; s their sum.
        let s_at = |g: &Expr, t: &Expr| t.clone() * i32(rows) + g.clone() * i32(ROW_LANES);
        let part = rows * TILE;
        b.unroll("e", W / 2, |b, e| {
            let first = b.let_("first_of_pair", (e.clone() % i32(2)).eq_(i32(0)));
            let to = b.let_("to", (e.clone() / i32(2)) * i32(part));
            b.unroll("gb", rows / (GROUPS * ROW_LANES), |b, gb| {
                let r0 = gb.clone() * i32(GROUPS * ROW_LANES);
                tile.if_live(b, r0, |b| {
                    b.unroll("ib", TILE / TOKENS, |b, ib| {
                        let zero = splat_n(Expr::f32(0.0), ROW_LANES);
                        // regs[lane][group][token]: lanes e and e + 4.
                        let regs: Vec<Vec<Vec<_>>> = (0..2)
                            .map(|_| {
                                (0..GROUPS)
                                    .map(|_| {
                                        (0..TOKENS).map(|_| b.var("dv", zero.clone())).collect()
                                    })
                                    .collect()
                            })
                            .collect();
                        b.unroll("c", d / W, |b, c| {
                            for (lane, per_group) in regs.iter().enumerate() {
                                let j = c.clone() * i32(W) + e.clone() + i32(lane as u32 * W / 2);
                                let j = b.let_("j", j);
                                let qs: Vec<Expr> = (0..GROUPS)
                                    .map(|g| {
                                        let r0 =
                                            (gb.clone() * i32(GROUPS) + i32(g)) * i32(ROW_LANES);
                                        let at = transposed_queries(rows, &r0, &j);
                                        b.let_("qv", Expr::load(tile.qf, at, ROW_LANES as u8))
                                    })
                                    .collect();
                                let ks: Vec<Expr> = (0..TOKENS)
                                    .map(|t| {
                                        let i = ib.clone() * i32(TOKENS) + i32(t);
                                        let k = Expr::load(self.kf, i * i32(d) + j.clone(), 1);
                                        b.let_("kb", splat_n(k, ROW_LANES))
                                    })
                                    .collect();
                                for (q, per_token) in qs.iter().zip(per_group) {
                                    for (k, reg) in ks.iter().zip(per_token) {
                                        b.set(*reg, q.clone().fma(k.clone(), Expr::Var(*reg)));
                                    }
                                }
                            }
                        });
                        for g in 0..GROUPS {
                            for t in 0..TOKENS {
                                let group = gb.clone() * i32(GROUPS) + i32(g);
                                let i = ib.clone() * i32(TOKENS) + i32(t);
                                let at = b.let_("at", to.clone() + s_at(&group, &i));
                                let (g, t) = (g as usize, t as usize);
                                let a = Expr::Var(regs[0][g][t]) + Expr::Var(regs[1][g][t]);
                                let a = b.let_("a", a);
                                let old = Expr::load(self.half, at.clone(), ROW_LANES as u8);
                                b.store(self.half, at, first.clone().select(a.clone(), old + a));
                            }
                        }
                    });
                });
            });
        });
        b.unroll("g", rows / ROW_LANES, |b, g| {
            tile.if_live(b, g.clone() * i32(ROW_LANES), |b| {
                b.unroll("i", TILE, |b, i| {
                    let at = s_at(&g, &i);
                    let half =
                        |k: u32| Expr::load(self.half, at.clone() + i32(k * part), ROW_LANES as u8);
                    b.store(tile.s, at.clone(), half(0) + half(1));
                });
            });
        });
        b.if_else(
            full.clone(),
            |b| {
                b.unroll("g", rows / ROW_LANES, |b, g| {
                    tile.if_live(b, g.clone() * i32(ROW_LANES), |b| {
                        b.unroll("i", TILE, |b, i| {
                            let at = s_at(&g, &i);
                            let dots = Expr::load(tile.s, at.clone(), ROW_LANES as u8);
                            let v = vlogit(b, &g, &i, dots);
                            b.store(tile.s, at, v);
                        });
                    });
                });
            },
            |b| {
                b.unroll("r", rows, |b, r| {
                    b.unroll("i", TILE, |b, i| {
                        let at = i.clone() * i32(rows) + r.clone();
                        let dot = Expr::load(tile.s, at.clone(), 1);
                        let v = logit(b, &r, &i, dot);
                        b.store(tile.s, at, v);
                    });
                });
            },
        );
    }
}

/// [`super::super::logit2`] over `lanes` dots, lane by lane exactly as the
/// scalar form: scaled (times K's fp8 scale first), soft-capped (tanh per
/// lane), plus a bias vector already in base 2.
pub(crate) fn vector_logit(
    spec: &AttentionSpec,
    dots: Expr,
    k_scale: Option<&Expr>,
    bias: Option<Expr>,
    lanes: u32,
) -> Expr {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    let dots = match k_scale {
        Some(ks) => dots * splat_n(ks.clone(), lanes),
        None => dots,
    };
    let scale = spec.effective_scale();
    let (x, factor) = match spec.logits_soft_cap {
        None => (dots, scale * LOG2_E),
        Some(cap) => {
            let capped = (0..lanes as u8)
                .map(|e| Expr::f32(cap) * (dots.clone().lane(e) * Expr::f32(scale / cap)).tanh())
                .collect();
            (Expr::Vector(capped), LOG2_E)
        }
    };
    match bias {
        Some(bv) => x.fma(splat_n(Expr::f32(factor), lanes), bv),
        None => x * splat_n(Expr::f32(factor), lanes),
    }
}
