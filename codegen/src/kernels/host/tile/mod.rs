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
//!
//! This file holds the tile, its page walk and prefetches; the phases are
//! `logits.rs`, `softmax.rs` and `accumulate.rs`.

mod accumulate;
mod logits;
mod softmax;

use crate::ir::builder::KernelBuilder;
use crate::ir::{BufId, Expr, Scalar};
use crate::spec::KvLayoutSpec;

use super::super::{kv_offset, kv_vector_lanes};
use super::{i32, i64, kv_f32, TILE};

pub(crate) use logits::{masked_logit, CHAINS};
pub(crate) use softmax::ROW_LANES;

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

    /// The span's rows in register blocks of `size` (the last ones
    /// smaller where `size` does not divide them): `f(b, first, n)` for
    /// each block of `n` rows from `first` (an i32 `let`).
    fn row_blocks(
        &self,
        b: &mut KernelBuilder,
        size: u32,
        mut f: impl FnMut(&mut KernelBuilder, Expr, u32),
    ) {
        let mut r0 = 0;
        while r0 < self.n {
            let n = size.min(self.n - r0);
            let blocks = (self.n - r0) / n;
            b.unroll("rb", blocks, |b, rb| {
                let first = b.let_("r_first", self.row(rb * i32(n) + i32(r0)));
                f(b, first, n);
            });
            r0 += blocks * n;
        }
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
}
