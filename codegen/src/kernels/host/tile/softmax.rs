//! The online softmax over a tile's logits.

use crate::ir::builder::KernelBuilder;
use crate::ir::Expr;

use super::super::{fold_in_order, halves, i32, lanes_fold, splat_n, TILE, W};
use super::{Span, Tile};

impl Tile {
    /// The online softmax over the tile's logits: each row's new max, its
    /// rescale factor (kept for [`Tile::accumulate`]) and sum; `s` becomes
    /// the weights 2^(s − max).
    pub fn softmax(&self, b: &mut KernelBuilder, span: &Span) {
        if self.token_major {
            return self.softmax_token_major(b, span);
        }
        if span.n.is_multiple_of(ROW_LANES) {
            return self.softmax_by_rows(b, span);
        }
        let ninf = Expr::f32(f32::NEG_INFINITY);
        // A row's TILE logits in one vector; the max and the sum fold its
        // two W-lane halves onto each other first, then the W lanes.
        const _: () = assert!(TILE == 2 * W);
        b.unroll("r", span.n, |b, r| {
            let r = b.let_("row", span.row(r));
            let row = r.clone() * i32(TILE);
            let sv = b.let_("sv", Expr::load(self.s, row.clone(), TILE as u8));
            let (lo, hi) = halves(&sv);
            let mt = lanes_fold(b.let_("vmax", lo.max(hi)), |x, y| x.max(y));
            let m_old = b.let_("m_old", Expr::load(self.m, r.clone(), 1));
            let m_new = b.let_("m_new", m_old.clone().max(mt));
            let empty = m_new.clone().eq_(ninf.clone());
            let a = empty
                .clone()
                .select(Expr::f32(1.0), (m_old - m_new.clone()).exp2());
            b.store(self.alpha, r.clone(), a);
            // 2^(s − max): 0 for masked tokens (−∞), also while every token
            // so far is masked (then the max is −∞: subtract 0 instead).
            let m_safe = b.let_("m_safe", empty.select(Expr::f32(0.0), m_new.clone()));
            let p = b.let_("pv", (sv - splat_n(m_safe, TILE)).exp2());
            b.store(self.s, row, p.clone());
            let (lo, hi) = halves(&p);
            let psum = lanes_fold(b.let_("vsum", lo + hi), |x, y| x + y);
            let l_old = Expr::load(self.l, r.clone(), 1);
            let alpha = Expr::load(self.alpha, r.clone(), 1);
            b.store(self.l, r.clone(), l_old.fma(alpha, psum));
            b.store(self.m, r, m_new);
        });
    }

    /// [`Tile::softmax`] for ROW_LANES rows at a time, with every per-row
    /// value (max, rescale factor, sum) in a lane of one vector: the rows'
    /// maxima and sums fold across rows ([`fold_rows`], in `lanes_fold`'s
    /// order), and one vector `exp2` gives every row's rescale factor.
    /// Each lane does the per-row schedule's operations, so the weights,
    /// sums and maxima have its bits, but for two values no later result
    /// depends on:
    /// - a row with no visible token yet (max −∞) subtracts −f32::MAX
    ///   instead of 0 from its logits (−∞ either way, so weight 0) and
    ///   rescales by 2^0 = 1, as there;
    /// - at a row's first visible token its rescale factor is
    ///   2^(−f32::MAX − max) (0, or a finite number) instead of 0, which
    ///   multiplies the zero sum and accumulators the same.
    fn softmax_by_rows(&self, b: &mut KernelBuilder, span: &Span) {
        b.unroll("rg", span.n / ROW_LANES, |b, rg| {
            let first = b.let_("rg_first", span.row(rg * i32(ROW_LANES)));
            let row = |k: u32| (first.clone() + i32(k)) * i32(TILE);
            let svs: Vec<Expr> = (0..ROW_LANES)
                .map(|k| b.let_("sv", Expr::load(self.s, row(k), TILE as u8)))
                .collect();
            let maxes = svs
                .iter()
                .map(|sv| {
                    let (lo, hi) = halves(sv);
                    b.let_("vmax", lo.max(hi))
                })
                .collect();
            let mt = fold_rows(b, maxes, |x, y| x.max(y));
            let (m_new, m_safe, alpha) = self.rescale_rows(b, &first, mt);
            let sums = svs
                .into_iter()
                .enumerate()
                .map(|(k, sv)| {
                    let m = splat_n(m_safe.clone().lane(k as u8), TILE);
                    let p = b.let_("pv", (sv - m).exp2());
                    b.store(self.s, row(k as u32), p.clone());
                    let (lo, hi) = halves(&p);
                    b.let_("vsum", lo + hi)
                })
                .collect();
            let psum = fold_rows(b, sums, |x, y| x + y);
            self.update_rows(b, &first, alpha, psum, m_new);
        });
    }

    /// ROW_LANES rows from `first` whose tile maxima are `mt`: their new
    /// maxima, the maxima floored at −f32::MAX (what the weights subtract)
    /// and their rescale factors, stored for [`Tile::accumulate`] (see
    /// [`Tile::softmax_by_rows`] for the floor).
    fn rescale_rows(&self, b: &mut KernelBuilder, first: &Expr, mt: Expr) -> (Expr, Expr, Expr) {
        let floor = splat_n(Expr::f32(-f32::MAX), ROW_LANES);
        let m_old = b.let_("m_old", Expr::load(self.m, first.clone(), ROW_LANES as u8));
        let m_new = b.let_("m_new", m_old.clone().max(mt));
        let m_safe = b.let_("m_safe", m_new.clone().max(floor.clone()));
        let alpha = b.let_("alpha", (m_old.max(floor) - m_safe.clone()).exp2());
        b.store(self.alpha, first.clone(), alpha.clone());
        (m_new, m_safe, alpha)
    }

    /// The sums `l·alpha + psum` and the maxima `m_new` of ROW_LANES rows
    /// from `first`.
    fn update_rows(
        &self,
        b: &mut KernelBuilder,
        first: &Expr,
        alpha: Expr,
        psum: Expr,
        m_new: Expr,
    ) {
        let l_old = Expr::load(self.l, first.clone(), ROW_LANES as u8);
        b.store(self.l, first.clone(), l_old.fma(alpha, psum));
        b.store(self.m, first.clone(), m_new);
    }

    /// [`Tile::softmax_by_rows`] over token-major logits: each token's
    /// logits for ROW_LANES rows are one vector, so the maxima and sums
    /// fold token by token, vector by vector (the sums in `lanes_fold`'s
    /// order over the two halves' sums, as the row-by-row schedule folds
    /// its lanes).
    fn softmax_token_major(&self, b: &mut KernelBuilder, span: &Span) {
        b.unroll("rg", span.n / ROW_LANES, |b, rg| {
            let first = b.let_("rg_first", span.row(rg * i32(ROW_LANES)));
            self.if_live(b, first.clone(), |b| {
                self.softmax_rows_token_major(b, &first)
            });
        });
    }

    /// [`Tile::softmax_token_major`] for the ROW_LANES rows from `first`.
    fn softmax_rows_token_major(&self, b: &mut KernelBuilder, first: &Expr) {
        let at = |i: Expr| self.s_at(first.clone(), i);
        // The max is exact: any order gives the same value.
        let mt = b.var("vmax", splat_n(Expr::f32(f32::NEG_INFINITY), ROW_LANES));
        b.unroll("i", TILE, |b, i| {
            let sv = Expr::load(self.s, at(i), ROW_LANES as u8);
            b.set(mt, Expr::Var(mt).max(sv));
        });
        let (m_new, m_safe, alpha) = self.rescale_rows(b, first, Expr::Var(mt));
        b.unroll("i", TILE, |b, i| {
            let sv = Expr::load(self.s, at(i.clone()), ROW_LANES as u8);
            b.store(self.s, at(i), (sv - m_safe.clone()).exp2());
        });
        let ps: Vec<Expr> = (0..TILE)
            .map(|i| Expr::load(self.s, at(i32(i)), ROW_LANES as u8))
            .collect();
        const _: () = assert!(TILE == 2 * W);
        let halves = (0..W as usize)
            .map(|k| b.let_("vsum", ps[k].clone() + ps[k + W as usize].clone()))
            .collect();
        let psum = fold_in_order(halves, |x, y| x + y);
        self.update_rows(b, first, alpha, psum, m_new);
    }
}

/// Rows whose per-row softmax values share one vector
/// ([`Tile::softmax_by_rows`]).
pub(crate) const ROW_LANES: u32 = 2 * W;

/// ROW_LANES rows' W-lane vectors folded into one vector whose lane k is
/// row k's fold, each lane combining its row's lanes exactly as
/// [`lanes_fold`] does (lane e with lane e + W/2, then neighbours
/// pairwise), two rows per `f` in the first round, four in the second,
/// eight in the third:
///
/// ```text
/// round 1  rows 2k, 2k+1:  lanes e (< 4) with e + 4       -> 4 partials per row
/// round 2  rows 4k..4k+3:  partials 2j with 2j + 1         -> 2 per row
/// round 3  rows 8k..8k+7:  again                           -> 1 per row
/// ```
fn fold_rows(b: &mut KernelBuilder, rows: Vec<Expr>, f: impl Fn(Expr, Expr) -> Expr) -> Expr {
    const _: () = assert!(W == 8 && ROW_LANES == 16);
    debug_assert_eq!(rows.len(), ROW_LANES as usize);
    // Lanes `idx` of the 2W lanes of `x` then `y`.
    let pick = |x: &Expr, y: &Expr, idx: &[u32]| {
        Expr::Vector(
            idx.iter()
                .map(|&i| match i < W {
                    true => x.clone().lane(i as u8),
                    false => y.clone().lane((i - W) as u8),
                })
                .collect(),
        )
    };
    let round = |b: &mut KernelBuilder, v: Vec<Expr>, lo: [u32; 8], hi: [u32; 8]| {
        v.chunks(2)
            .map(|p| b.let_("fold", f(pick(&p[0], &p[1], &lo), pick(&p[0], &p[1], &hi))))
            .collect::<Vec<_>>()
    };
    const EVENS: [u32; 8] = [0, 2, 4, 6, 8, 10, 12, 14];
    const ODDS: [u32; 8] = [1, 3, 5, 7, 9, 11, 13, 15];
    let x = round(
        b,
        rows,
        [0, 1, 2, 3, 8, 9, 10, 11],
        [4, 5, 6, 7, 12, 13, 14, 15],
    );
    let y = round(b, x, EVENS, ODDS);
    let z = round(b, y, EVENS, ODDS);
    Expr::Vector(
        (0..ROW_LANES)
            .map(|k| z[(k / W) as usize].clone().lane((k % W) as u8))
            .collect(),
    )
}
