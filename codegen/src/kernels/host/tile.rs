//! One tile of the host schedules: `R` softmax rows (a decode block's
//! query heads, or a prefill block's packed query rows) against TILE
//! consecutive KV tokens, in passes ([`Span`]) of one KV head each (a
//! decode block may serve several KV heads).
//!
//! ```text
//! locate   bases[i]        one page-table lookup per token for K and V, for this tile and the
//!                          next (whose rows each pass prefetches a share of: `Span::next`)
//! logits   s[r·TILE + i]   two tokens' K chunks per 16-lane vector, converted once, multiplied
//!                          into HEADS rows' FMA chains; a shuffle tree folds rows × tokens in
//!                          `lanes_fold`'s order
//!          (prefill: `super::by_rows`, token-major `s[i·rows + r]`, a row per lane)
//! softmax  per row: new max, alpha = 2^(m_old - m_new), p = 2^(s - m_new) (16 lanes at once);
//!          16 rows' maxima, factors and sums to a vector where the rows come in 16s
//! V        rows[i·d + j]   the tile's V rows in f32, converted once (blocks of > VROWS rows;
//!                          smaller ones convert each chunk straight into their FMAs)
//! acc      per row, VGROUP chunks in registers: acc = acc·alpha + Σ_i p_i·v_i
//! ```

use crate::ir::builder::KernelBuilder;
use crate::ir::{BufId, Expr, Scalar};
use crate::spec::{AttentionSpec, KvLayoutSpec};

use super::super::{kv_offset, kv_vector_lanes, logit2};
use super::{
    converts_in_pairs, fold_in_order, halves, i32, i64, kv_f32, lanes_fold, lanes_of,
    load_pair_f32, load_pairs_f32, load_row_f32, load_wide_f32, splat_n, wide_lanes, TILE, W,
};

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

/// Chunks of an accumulator row kept in registers while the tile's V rows
/// stream past.
const VGROUP: u32 = 16;

/// Rows per register block of the V accumulation.
const VROWS: u32 = 4;

/// Where a block's tokens are: one KV head of one sequence's pages.
pub(crate) struct Rows<'a> {
    pub kv: &'a KvLayoutSpec,
    pub indices: BufId,
    pub page_begin: &'a Expr,
    pub head: &'a Expr,
    /// Tokens at or past `last` read token `last − 1` (a valid row).
    pub last: &'a Expr,
}

impl Rows<'_> {
    /// The arena offset of token `t`'s row (clamped below `last`).
    pub fn base(&self, b: &mut KernelBuilder, t: Expr) -> Expr {
        let tc = b.let_("tc", t.min(self.last.clone() - Expr::i32(1)));
        let page = Expr::load(
            self.indices,
            self.page_begin.clone() + tc.clone() / i32(self.kv.page_size),
            1,
        );
        let slot = tc % i32(self.kv.page_size);
        b.let_(
            "row_base",
            kv_offset(self.kv, i64(page), i64(slot), i64(self.head.clone())),
        )
    }
}

/// The rows one pass over a tile works on: `n` of the tile's rows from
/// `first`, whose K and V rows sit `off` elements past the rows
/// [`Tile::locate`] found (another KV head of the same tokens, for a
/// block serving several).
pub(crate) struct Span {
    /// The first row (i32).
    pub first: Expr,
    /// How many rows.
    pub n: u32,
    /// The arena offset from the located rows (i64).
    pub off: Expr,
    /// What the pass prefetches for the block ([`Span::next_row`]):
    /// without it, the next tile's rows at the located ones.
    pub next: Option<PageOrder>,
}

/// The prefetches of a pass of a block that may serve every KV head of
/// NHD pages: while `all` holds, the pass prefetches its share of the next
/// tile's rows in address order (pass `pass` of `heads` takes rows `pass ·
/// TILE .. (pass + 1) · TILE` of the tile's `TILE · heads`, token-major),
/// so the passes of a tile read the next tile's pages whole, in order, a
/// tile ahead; otherwise (a block serving fewer heads) the next tile's rows
/// of its head.
pub(crate) struct PageOrder {
    /// Whether the block serves every KV head (bool).
    pub all: Expr,
    /// The pass: the block's KV head (i32; an unroll variable).
    pub pass: Expr,
    /// The KV heads.
    pub heads: u32,
    /// The arena offset from one KV head's row to the next's (i64).
    pub stride: Expr,
}

impl Span {
    /// Rows `first..first + n` at the located K/V rows.
    pub fn rows(first: u32, n: u32) -> Span {
        Span {
            first: Expr::i32(first as i32),
            n,
            off: Expr::i64(0),
            next: None,
        }
    }

    /// Row `first + k`.
    fn row(&self, k: Expr) -> Expr {
        self.first.clone() + k
    }

    /// The span's K/V row of the token whose located row is `base`.
    fn at(&self, base: Expr) -> Expr {
        base + self.off.clone()
    }

    /// The `i`-th (0..TILE) of the rows the pass prefetches (see
    /// [`Span::next`]).
    fn next_row(&self, bases: BufId, i: Expr) -> Expr {
        let next_tile = Expr::load(bases, i.clone() + i32(TILE), 1);
        match &self.next {
            None => next_tile,
            Some(order) => {
                let q = order.pass.clone() * i32(TILE) + i;
                let h = i32(order.heads);
                let token = Expr::load(bases, q.clone() / h.clone() + i32(TILE), 1);
                let row = token + (q % h).cast(Scalar::I64) * order.stride.clone();
                order.all.clone().select(row, next_tile + self.off.clone())
            }
        }
    }
}

/// The per-tile state of R softmax rows (all local arrays).
pub(crate) struct Tile {
    /// Softmax rows.
    pub rows: u32,
    /// The layout of the K/V rows.
    kv: KvLayoutSpec,
    /// Queries in f32: `qf[r·d + j]` (prefill: transposed, see
    /// [`super::by_rows::transposed_queries`]).
    pub qf: BufId,
    /// Running max (base 2) and sum per row.
    pub m: BufId,
    pub l: BufId,
    /// Accumulators: `acc[r·d + j]`.
    pub acc: BufId,
    /// Logits, then weights: `s[r·TILE + i]`.
    pub s: BufId,
    /// The arena offsets of the tile's tokens' rows (`Tile::locate`).
    pub bases: BufId,
    alpha: BufId,
    vrows: BufId,
    /// Whether `s` is token-major (`s[i·rows + r]`, [`Tile::token_major`])
    /// rather than row-major (`s[r·TILE + i]`).
    token_major: bool,
    /// The rows that hold real work (i32): rows from it on are padding,
    /// whose softmax and accumulation are skipped a vector (or register
    /// block) at a time. `None`: every row is real.
    pub live: Option<Expr>,
}

impl Tile {
    /// Declares the state of `rows` softmax rows against K/V rows of `kv`.
    pub fn new(b: &mut KernelBuilder, rows: u32, kv: &KvLayoutSpec) -> Tile {
        let ninf = Expr::f32(f32::NEG_INFINITY);
        let d = kv.head_dim;
        Tile {
            rows,
            kv: *kv,
            qf: b.local("qf", Scalar::F32, rows * d),
            m: b.local_filled("m", Scalar::F32, rows, ninf),
            l: b.local_filled("l", Scalar::F32, rows, Expr::f32(0.0)),
            acc: b.local_filled("acc", Scalar::F32, rows * d, Expr::f32(0.0)),
            s: b.local("s", Scalar::F32, rows * TILE),
            bases: b.local("kv_base", Scalar::I64, 2 * TILE),
            alpha: b.local("alpha", Scalar::F32, rows),
            vrows: b.local("vrows", Scalar::F32, TILE * d),
            token_major: false,
            live: None,
        }
    }

    /// The same tile with its logits and weights token-major: `s[i·rows +
    /// r]`, a vector of ROW_LANES rows per token (what [`super::by_rows`]
    /// writes; the rows must be whole vectors of ROW_LANES), and only its
    /// first `live` rows (i32, block-uniform) real: the work of vectors
    /// and register blocks wholly past them is skipped, so a short prompt
    /// costs about what its rows need.
    pub fn token_major(self, live: Expr) -> Tile {
        assert!(self.rows.is_multiple_of(ROW_LANES), "rows in whole vectors");
        Tile {
            token_major: true,
            live: Some(live),
            ..self
        }
    }

    /// Runs `f` where row `first` is real (always, without [`Tile::live`]).
    pub fn if_live(&self, b: &mut KernelBuilder, first: Expr, f: impl FnOnce(&mut KernelBuilder)) {
        match &self.live {
            Some(live) => b.if_(first.lt(live.clone()), f),
            None => f(b),
        }
    }

    /// Where row r's logit (then weight) for token i is in `s`.
    pub fn s_at(&self, r: Expr, i: Expr) -> Expr {
        match self.token_major {
            true => i * i32(self.rows) + r,
            false => r * i32(TILE) + i,
        }
    }

    /// Every row, at the located K/V rows.
    pub fn all(&self) -> Span {
        Span::rows(0, self.rows)
    }

    /// Finds the rows of the tile's tokens `t0 + i` (one page-table lookup
    /// per token, for K and V alike), and those of the next tile's, for
    /// [`Tile::prefetch_next`].
    pub fn locate(&self, b: &mut KernelBuilder, at: &Rows<'_>, t0: &Expr) {
        b.unroll("i", TILE, |b, i| {
            let t = b.let_("t", t0.clone() + i.clone());
            let base = at.base(b, t.clone());
            b.store(self.bases, i.clone(), base);
            let next = at.base(b, t + i32(TILE));
            b.store(self.bases, i.clone() + i32(TILE), next);
        });
    }

    /// Prefetches the rows of `cache` of tokens `from .. from + n` of the
    /// pass after the span's ([`Span::next`]), a cache line at a time.
    pub fn prefetch_next(
        &self,
        b: &mut KernelBuilder,
        span: &Span,
        cache: BufId,
        from: &Expr,
        n: u32,
    ) {
        b.unroll("pi", n, |b, pi| {
            let next = b.let_("next_base", span.next_row(self.bases, from.clone() + pi));
            self.prefetch_part(b, cache, &next, i32(0), self.kv.head_dim);
        });
    }

    /// Prefetches elements `from .. from + elems` of the row of `cache` at
    /// `row`, a cache line at a time.
    fn prefetch_part(
        &self,
        b: &mut KernelBuilder,
        cache: BufId,
        row: &Expr,
        from: Expr,
        elems: u32,
    ) {
        let per_line = 64 / self.kv.dtype.size_bytes();
        b.unroll("pf", elems.div_ceil(per_line), |b, pf| {
            b.prefetch(cache, row.clone() + i64(from.clone() + pf * i32(per_line)));
        });
    }

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
            let mut r0 = 0;
            while r0 < span.n {
                let n = HEADS.min(span.n - r0);
                let groups = (span.n - r0) / n;
                b.unroll("rb", groups, |b, rb| {
                    let first = b.let_("r_first", span.row(rb * i32(n) + i32(r0)));
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
                r0 += groups * n;
            }
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

    /// The tile's rows of `cache` (at the span's K/V rows) converted to
    /// f32 into `dst`: `dst[i·d + j]`.
    pub fn rows_f32(&self, b: &mut KernelBuilder, span: &Span, cache: BufId, dst: BufId) {
        let d = self.kv.head_dim;
        let vec = kv_vector_lanes(&self.kv);
        b.unroll("i", TILE, |b, i| {
            let base = b.let_("row_base", span.at(Expr::load(self.bases, i.clone(), 1)));
            b.unroll("c", d / vec, |b, c| {
                let raw = Expr::load(cache, base.clone() + i64(c.clone() * i32(vec)), vec as u8);
                let at = i.clone() * i32(d) + c * i32(vec);
                b.store(dst, at, kv_f32(raw, self.kv.dtype, vec));
            });
        });
    }

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
        let mut r0 = 0;
        while r0 < span.n {
            let nr = VROWS.min(span.n - r0);
            let blocks = (span.n - r0) / nr;
            b.unroll("rb", blocks, |b, rb| {
                let first = b.let_("r_first", span.row(rb * i32(nr) + i32(r0)));
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
                                    b.var(
                                        "av",
                                        Expr::load(self.acc, at(r, k), wv as u8) * a.clone(),
                                    )
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
            r0 += blocks * nr;
        }
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
