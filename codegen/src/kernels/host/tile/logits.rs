//! The logits phase of a tile: K rows against the rows' queries.

use crate::ir::builder::KernelBuilder;
use crate::ir::{BufId, Expr};
use crate::spec::AttentionSpec;

use super::super::super::logit2;
use super::super::{
    converts_in_pairs, i32, lanes_of, load_pair_f32, load_pairs_f32, splat_n, TILE, W,
};
use super::{Span, Tile};

/// W-lane accumulator chains per dot product (over consecutive chunks,
/// summed pairwise). One: the HEADS rows of a K chunk are independent
/// chains already, and this order keeps the SmolLM2 demo's greedy tokens
/// equal to llama.cpp's on the reference prompts (the sums of the other
/// orders tried, 2, 4 and 8 chains, tip a near-tie in the first prompt at
/// its 15th token).
pub(crate) const CHAINS: u32 = 1;

/// Rows whose logits share each converted K chunk.
const HEADS: u32 = 4;

/// Tokens whose logits are computed together (in pairs, see `Tile::logits`).
const STEP: u32 = 4;

impl Tile {
    /// The logits of the tile's tokens `t0 + i`: row r's raw dot product
    /// goes through `logit(b, r, i, dot)`, which returns the base-2 logit
    /// or −∞ where row r may not see the token; only the span's rows. With
    /// `ahead`, each step of STEP tokens first prefetches the K rows of the
    /// block's next pass at the same positions ([`Span::next`]): spread over
    /// the pass, one pass ahead, the prefetches keep the memory busy while
    /// the FMAs run (one burst per tile, or a shorter distance, left it
    /// idle: BENCHMARKS.md).
    pub fn logits(
        &self,
        b: &mut KernelBuilder,
        spec: &AttentionSpec,
        span: &Span,
        k_cache: BufId,
        ahead: bool,
        logit: &dyn Fn(&mut KernelBuilder, &Expr, &Expr, Expr) -> Expr,
    ) {
        // STEP tokens at a time, in pairs: a pair's K chunks share one
        // 16-lane vector (lanes 0..W the first token's, W..2W the second's),
        // so every lane does the W-lane chain's operations, and the STEP/2
        // pairs' chains are independent while each FMA waits for the last.
        b.unroll("ig", TILE / STEP, |b, ig| {
            if ahead {
                let from = ig.clone() * i32(STEP);
                self.prefetch_next(b, span, k_cache, &from, STEP);
            }
            let bases: Vec<Expr> = (0..STEP)
                .map(|k| {
                    let i = ig.clone() * i32(STEP) + i32(k);
                    b.let_("row_base", span.at(Expr::load(self.bases, i, 1)))
                })
                .collect();
            span.row_blocks(b, HEADS, |b, first, n| {
                let dots = self.dots(b, spec, k_cache, &bases, &first, n);
                for (k, per_token) in dots.into_iter().enumerate() {
                    let r = b.let_("r", first.clone() + i32(k as u32));
                    for (tk, dot) in per_token.into_iter().enumerate() {
                        let i = b.let_("i", ig.clone() * i32(STEP) + i32(tk as u32));
                        let s = logit(b, &r, &i, dot);
                        b.store(self.s, r.clone() * i32(TILE) + i, s);
                    }
                }
            });
        });
    }

    /// Rows `first..first + n`'s dot products with the K rows at `bases`
    /// (an even count of tokens): `[row][token]`. Each is one W-lane FMA
    /// chain over the row's chunks, its lanes then folded (`lanes_fold`);
    /// two tokens' chains share a 16-lane vector.
    fn dots(
        &self,
        b: &mut KernelBuilder,
        spec: &AttentionSpec,
        k_cache: BufId,
        bases: &[Expr],
        first: &Expr,
        n: u32,
    ) -> Vec<Vec<Expr>> {
        const _: () = assert!(CHAINS == 1);
        let d = spec.kv.head_dim;
        let zero = splat_n(Expr::f32(0.0), 2 * W);
        let pairs = bases.len() / 2;
        let regs: Vec<Vec<_>> = (0..n)
            .map(|_| (0..pairs).map(|_| b.var("dv", zero.clone())).collect())
            .collect();
        // fp8: two chunks' K converted at once (`converts_in_pairs`), their
        // FMAs in the same order as one chunk at a time.
        let dtype = spec.kv.dtype;
        let step = if converts_in_pairs(dtype, d) { 2 } else { 1 };
        b.unroll("c", d / (W * step), |b, cs| {
            // ks[sub][p]: chunk cs·step + sub of token pair p.
            let mut ks: Vec<Vec<Expr>> = vec![Vec::new(); step as usize];
            for p in 0..pairs {
                let (b0, b1) = (&bases[2 * p], &bases[2 * p + 1]);
                if step == 2 {
                    let both = b.let_("kv2", load_pairs_f32(k_cache, b0, b1, &cs, dtype));
                    for (sub, k) in ks.iter_mut().enumerate() {
                        k.push(b.let_("kv", lanes_of(&both, sub as u32 * 2 * W, 2 * W)));
                    }
                } else {
                    ks[0].push(b.let_("kv", load_pair_f32(k_cache, b0, b1, &cs, dtype)));
                }
            }
            for (sub, ks) in ks.iter().enumerate() {
                let c = cs.clone() * i32(step) + i32(sub as u32);
                for (h, hr) in regs.iter().enumerate() {
                    let qrow = (first.clone() + i32(h as u32)) * i32(d);
                    let q = b.let_("q", Expr::load(self.qf, qrow + c.clone() * i32(W), W as u8));
                    let q2 =
                        Expr::Vector((0..2 * W).map(|e| q.clone().lane((e % W) as u8)).collect());
                    let q2 = b.let_("q2", q2);
                    for (p, r) in hr.iter().enumerate() {
                        b.set(*r, q2.clone().fma(ks[p].clone(), Expr::Var(*r)));
                    }
                }
            }
        });
        fold_dots(b, &regs)
    }
}

/// The dot products of `regs[row][pair]` (16-lane chains, two tokens each:
/// at most HEADS rows, STEP/2 = 2 pairs) as `[row][token]`, each chain's W
/// lanes folded exactly as [`lanes_fold`] folds them (lane e onto lane
/// e + W/2, then neighbours pairwise), but four chains per vector add:
///
/// ```text
/// fold 1  per row: the two pairs' quads lo + hi     -> quarter t: token t's 4 partials
/// fold 2  rows (0,1), (2,3): partials 2k + 2k+1     -> quarter t: 2 per row
/// fold 3  the two results: again 2k + 2k+1          -> lane 4t + r: row r, token t
/// ```
fn fold_dots(b: &mut KernelBuilder, regs: &[Vec<crate::ir::VarId>]) -> Vec<Vec<Expr>> {
    const _: () = assert!(STEP == 4 && W == 8 && HEADS == 4);
    // Lanes `idx` of the 32 lanes of `x` then `y`.
    let pick = |x: &Expr, y: &Expr, idx: &[u32]| {
        Expr::Vector(
            idx.iter()
                .map(|&i| match i {
                    0..16 => x.clone().lane(i as u8),
                    _ => y.clone().lane((i - 16) as u8),
                })
                .collect(),
        )
    };
    // Per 4-lane quarter q of the result: lanes (q, q+2) of x's and y's
    // quarter q as evens, (q+1, q+3) as odds: `evens + odds` sums
    // neighbours, x's two then y's two.
    let pairwise = |b: &mut KernelBuilder, x: &Expr, y: &Expr| {
        let (mut ev, mut od) = (Vec::new(), Vec::new());
        for q in 0..4 {
            for (src, k) in [(0, 0), (0, 2), (16, 0), (16, 2)] {
                ev.push(src + 4 * q + k);
                od.push(src + 4 * q + k + 1);
            }
        }
        b.let_("fold", pick(x, y, &ev) + pick(x, y, &od))
    };
    let zero = splat_n(Expr::f32(0.0), 2 * W);
    let first: Vec<Expr> = (0..HEADS as usize)
        .map(|r| match regs.get(r) {
            Some(hr) => {
                let (x, y) = (Expr::Var(hr[0]), Expr::Var(hr[1]));
                // Quarter t: token t's low quad (lanes 0..4 of its 8), and
                // its high quad.
                let lo = pick(
                    &x,
                    &y,
                    &[0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27],
                );
                let hi = pick(
                    &x,
                    &y,
                    &[4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31],
                );
                b.let_("fold", lo + hi)
            }
            None => zero.clone(),
        })
        .collect();
    let a = pairwise(b, &first[0], &first[1]);
    let c = pairwise(b, &first[2], &first[3]);
    let u = pairwise(b, &a, &c);
    (0..regs.len())
        .map(|r| {
            (0..STEP)
                .map(|t| u.clone().lane((4 * t + r as u32) as u8))
                .collect()
        })
        .collect()
}

/// The base-2 logit of a raw dot product, times K's fp8 scale when there is
/// one, or −∞ where `visible` is false.
pub(crate) fn masked_logit(
    spec: &AttentionSpec,
    dot: Expr,
    k_scale: Option<&Expr>,
    bias: Option<Expr>,
    visible: Expr,
) -> Expr {
    let dot = match k_scale {
        Some(ks) => dot * ks.clone(),
        None => dot,
    };
    visible.select(logit2(spec, dot, bias), Expr::f32(f32::NEG_INFINITY))
}
