//! A tile's logits with the tokens in the vector lanes, for prefill's many
//! rows: the K tile is converted and transposed once (`kt[j·TILE + i]`),
//! then each row's dot products with the tile's TILE tokens are W vector
//! FMA chains, one per element lane of [`Tile::logits`]'s chain, folded the
//! same way, in registers. Every lane therefore does exactly the operations
//! of the row-by-row dot product: the logits, and so prefill's outputs,
//! have the bits of the decode schedule's (tested), without its per-token
//! horizontal sums.

use crate::ir::builder::KernelBuilder;
use crate::ir::{BufId, Expr, Scalar};
use crate::spec::AttentionSpec;

use super::tile::{Tile, CHAINS};
use super::{load_chunk_f32, splat, splat_n, TILE, W};

/// Rows per register block: RB rows × 4 element lanes of chains, each a
/// vector of the tile's TILE tokens (16 accumulators).
const RB: u32 = 4;

// The fold below restates Tile::logits's reduction for one chain.
const _: () = assert!(CHAINS == 1 && W == 8);

fn i32(v: u32) -> Expr {
    Expr::i32(v as i32)
}

/// The state [`logits_by_tokens`] needs beside a [`Tile`].
pub(crate) struct ByTokens {
    kt: BufId,
}

impl ByTokens {
    /// Declares it for a tile of `rows` rows (a multiple of RB) of `d`.
    pub fn new(b: &mut KernelBuilder, rows: u32, d: u32) -> ByTokens {
        assert!(rows.is_multiple_of(RB), "rows in whole register blocks");
        ByTokens {
            kt: b.local("kt", Scalar::F32, d * TILE),
        }
    }

    /// The logits of the tile's tokens `t0 + i` into `tile.s`. Where `full`
    /// (block-uniform) holds, every row sees every token, and `vlogit(b, r,
    /// lane0, dots)` turns W raw dots (tokens `lane0..lane0 + W`) into
    /// logits; elsewhere `logit(b, r, i, dot)` masks them one by one, as
    /// for [`Tile::logits`].
    #[allow(clippy::too_many_arguments)]
    pub fn logits(
        &self,
        b: &mut KernelBuilder,
        tile: &Tile,
        spec: &AttentionSpec,
        k_cache: BufId,
        full: &Expr,
        vlogit: &dyn Fn(&mut KernelBuilder, &Expr, u32, Expr) -> Expr,
        logit: &dyn Fn(&mut KernelBuilder, &Expr, &Expr, Expr) -> Expr,
    ) {
        let d = spec.kv.head_dim;
        let rows = tile.rows;
        // W tokens × W elements at a time: W row chunks in, their transpose
        // out, in registers.
        b.unroll("ig", TILE / W, |b, ig| {
            b.unroll("c", d / W, |b, c| {
                let krows: Vec<Expr> = (0..W)
                    .map(|k| {
                        let base = Expr::load(tile.bases, ig.clone() * i32(W) + i32(k), 1);
                        let v = load_chunk_f32(k_cache, &base, &c, spec.kv.dtype);
                        b.let_("krow", v)
                    })
                    .collect();
                for e in 0..W {
                    let col = Expr::Vector(krows.iter().map(|r| r.clone().lane(e as u8)).collect());
                    let at = (c.clone() * i32(W) + i32(e)) * i32(TILE) + ig.clone() * i32(W);
                    b.store(self.kt, at, col);
                }
            });
        });
        // Row r's chain for token i has W lanes e, each a vector FMA chain
        // over the chunks with the tile's TILE tokens in its lanes; they
        // fold as the row-by-row dot folds its lanes:
        // ((p0 + p4) + (p1 + p5)) + ((p2 + p6) + (p3 + p7)). So a register
        // block of RB rows runs the chains of lanes {0, 4, 1, 5}, folds
        // them into its rows' logits, then those of {2, 6, 3, 7}, and adds.
        const _: () = assert!(W == 8);
        b.unroll("rb", rows / RB, |b, rb| {
            for half in 0..2u32 {
                let lanes = [2 * half, 2 * half + 4, 2 * half + 1, 2 * half + 5];
                let zero = splat_n(Expr::f32(0.0), TILE);
                let regs: Vec<Vec<_>> = (0..RB)
                    .map(|_| lanes.iter().map(|_| b.var("pv", zero.clone())).collect())
                    .collect();
                b.unroll("c", d / W, |b, c| {
                    let ks: Vec<Expr> = lanes
                        .iter()
                        .map(|&e| {
                            let j = (c.clone() * i32(W) + i32(e)) * i32(TILE);
                            b.let_("ktv", Expr::load(self.kt, j, TILE as u8))
                        })
                        .collect();
                    for (rr, row) in regs.iter().enumerate() {
                        let r = rb.clone() * i32(RB) + i32(rr as u32);
                        for ((reg, kv), &e) in row.iter().zip(&ks).zip(&lanes) {
                            let at = r.clone() * i32(d) + c.clone() * i32(W) + i32(e);
                            let q = b.let_("qb", splat_n(Expr::load(tile.qf, at, 1), TILE));
                            b.set(*reg, q.fma(kv.clone(), Expr::Var(*reg)));
                        }
                    }
                });
                for (rr, row) in regs.iter().enumerate() {
                    let r = rb.clone() * i32(RB) + i32(rr as u32);
                    let p = |k: usize| Expr::Var(row[k]);
                    let sum = (p(0) + p(1)) + (p(2) + p(3));
                    let at = r * i32(TILE);
                    let dots = match half {
                        0 => sum,
                        _ => Expr::load(tile.s, at.clone(), TILE as u8) + sum,
                    };
                    b.store(tile.s, at, dots);
                }
            }
        });
        let vecs = TILE / W;
        b.if_else(
            full.clone(),
            |b| {
                b.unroll("r", rows, |b, r| {
                    for h in 0..vecs {
                        let at = r.clone() * i32(TILE) + i32(h * W);
                        let dots = Expr::load(tile.s, at.clone(), W as u8);
                        let v = vlogit(b, &r, h * W, dots);
                        b.store(tile.s, at, v);
                    }
                });
            },
            |b| {
                b.unroll("r", rows, |b, r| {
                    b.unroll("i", TILE, |b, i| {
                        let at = r.clone() * i32(TILE) + i.clone();
                        let dot = Expr::load(tile.s, at.clone(), 1);
                        let v = logit(b, &r, &i, dot);
                        b.store(tile.s, at, v);
                    });
                });
            },
        );
    }
}

/// [`super::super::logit2`] over W dots, lane by lane exactly as the scalar
/// form: scaled (times K's fp8 scale first), soft-capped (tanh per lane),
/// plus a bias vector already in base 2.
pub(crate) fn vector_logit(
    spec: &AttentionSpec,
    dots: Expr,
    k_scale: Option<&Expr>,
    bias: Option<Expr>,
) -> Expr {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    let dots = match k_scale {
        Some(ks) => dots * splat(ks.clone()),
        None => dots,
    };
    let scale = spec.effective_scale();
    let (x, factor) = match spec.logits_soft_cap {
        None => (dots, scale * LOG2_E),
        Some(cap) => {
            let lanes = (0..W as u8)
                .map(|e| Expr::f32(cap) * (dots.clone().lane(e) * Expr::f32(scale / cap)).tanh())
                .collect();
            (Expr::Vector(lanes), LOG2_E)
        }
    };
    match bias {
        Some(bv) => x.fma(splat(Expr::f32(factor)), bv),
        None => x * splat(Expr::f32(factor)),
    }
}
