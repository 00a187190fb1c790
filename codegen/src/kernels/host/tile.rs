//! One tile of the host schedules: `R` softmax rows (a decode block's
//! query heads, or a prefill block's packed query rows) against TILE
//! consecutive KV tokens of one KV head.
//!
//! ```text
//! logits   s[r·TILE + i]   each K chunk loaded and converted once, multiplied into
//!                          HEADS rows' FMA chains; chains and lanes summed in a fixed order
//! softmax  per row: new max, alpha = 2^(m_old - m_new), p = 2^(s - m_new) (8 lanes at once)
//! V        rows[i·d + j]   the tile's V rows in f32, converted once
//! acc      per row, VGROUP chunks in registers: acc = acc·alpha + Σ_i p_i·v_i
//! ```

use crate::ir::builder::KernelBuilder;
use crate::ir::{BufId, Expr, Scalar};
use crate::spec::{AttentionSpec, KvLayoutSpec};

use super::super::{kv_offset, kv_vector_lanes, logit2};
use super::{lanes_fold, load_chunk_f32, splat, TILE, W};

/// W-lane accumulator chains per dot product (over consecutive chunks,
/// summed pairwise). One: the HEADS rows of a K chunk are independent
/// chains already, and this order keeps the SmolLM2 demo's greedy tokens
/// equal to llama.cpp's on the reference prompts (the sums of the other
/// orders tried, 2, 4 and 8 chains, tip a near-tie in the first prompt at
/// its 15th token).
pub(crate) const CHAINS: u32 = 1;

/// Rows whose logits share each converted K chunk.
const HEADS: u32 = 4;

/// Chunks of an accumulator row kept in registers while the tile's V rows
/// stream past.
const VGROUP: u32 = 8;

/// Rows per register block of the V accumulation.
const VROWS: u32 = 2;

fn i32(v: u32) -> Expr {
    Expr::i32(v as i32)
}

fn i64(e: Expr) -> Expr {
    e.cast(Scalar::I64)
}

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

    /// Prefetches token `t + TILE`'s row of `cache`, a cache line at a time.
    pub fn prefetch_next(&self, b: &mut KernelBuilder, cache: BufId, t: Expr) {
        let next = self.base(b, t + i32(TILE));
        let per_line = 64 / self.kv.dtype.size_bytes();
        b.unroll("pf", self.kv.head_dim.div_ceil(per_line), |b, pf| {
            b.prefetch(cache, next.clone() + i64(pf * i32(per_line)));
        });
    }
}

/// The per-tile state of R softmax rows (all local arrays).
pub(crate) struct Tile {
    /// Softmax rows.
    pub rows: u32,
    /// Queries in f32: `qf[r·d + j]`.
    pub qf: BufId,
    /// Running max (base 2) and sum per row.
    pub m: BufId,
    pub l: BufId,
    /// Accumulators: `acc[r·d + j]`.
    pub acc: BufId,
    /// Logits, then weights: `s[r·TILE + i]`.
    pub s: BufId,
    alpha: BufId,
    vrows: BufId,
}

impl Tile {
    /// Declares the state of `rows` softmax rows of `d` elements.
    pub fn new(b: &mut KernelBuilder, rows: u32, d: u32) -> Tile {
        let ninf = Expr::f32(f32::NEG_INFINITY);
        Tile {
            rows,
            qf: b.local("qf", Scalar::F32, rows * d),
            m: b.local_filled("m", Scalar::F32, rows, ninf),
            l: b.local_filled("l", Scalar::F32, rows, Expr::f32(0.0)),
            acc: b.local_filled("acc", Scalar::F32, rows * d, Expr::f32(0.0)),
            s: b.local("s", Scalar::F32, rows * TILE),
            alpha: b.local("alpha", Scalar::F32, rows),
            vrows: b.local("vrows", Scalar::F32, TILE * d),
        }
    }

    /// The logits of the tile's tokens `t0 + i`: row r's raw dot product
    /// goes through `logit(b, r, i, dot)`, which returns the base-2 logit
    /// or −∞ where row r may not see the token.
    pub fn logits(
        &self,
        b: &mut KernelBuilder,
        spec: &AttentionSpec,
        at: &Rows<'_>,
        k_cache: BufId,
        t0: &Expr,
        logit: &dyn Fn(&mut KernelBuilder, &Expr, &Expr, Expr) -> Expr,
    ) {
        b.unroll("i", TILE, |b, i| {
            let t = b.let_("t", t0.clone() + i.clone());
            let base = at.base(b, t.clone());
            at.prefetch_next(b, k_cache, t);
            let mut r0 = 0;
            while r0 < self.rows {
                let n = HEADS.min(self.rows - r0);
                let groups = (self.rows - r0) / n;
                b.unroll("rb", groups, |b, rb| {
                    let first = b.let_("r_first", rb * i32(n) + i32(r0));
                    let dots = self.dots(b, spec, k_cache, &base, &first, n, CHAINS);
                    for (k, dot) in dots.into_iter().enumerate() {
                        let r = b.let_("r", first.clone() + i32(k as u32));
                        let s = logit(b, &r, &i, dot);
                        b.store(self.s, r * i32(TILE) + i.clone(), s);
                    }
                });
                r0 += groups * n;
            }
        });
    }

    /// Rows `first..first + n`'s dot products with the K row at `base`.
    #[allow(clippy::too_many_arguments)]
    fn dots(
        &self,
        b: &mut KernelBuilder,
        spec: &AttentionSpec,
        k_cache: BufId,
        base: &Expr,
        first: &Expr,
        n: u32,
        chains: u32,
    ) -> Vec<Expr> {
        let d = spec.kv.head_dim;
        let chunks = d / W;
        let chains = if chunks.is_multiple_of(chains) {
            chains
        } else {
            1
        };
        let zero = splat(Expr::f32(0.0));
        let regs: Vec<Vec<_>> = (0..n)
            .map(|_| (0..chains).map(|_| b.var("dv", zero.clone())).collect())
            .collect();
        b.unroll("c", chunks / chains, |b, c| {
            for k in 0..chains {
                let cc = c.clone() * i32(chains) + i32(k);
                // One W-lane chunk of K in f32.
                let kv = load_chunk_f32(k_cache, base, &cc, spec.kv.dtype);
                let kv = b.let_("kv", kv);
                for (h, hr) in regs.iter().enumerate() {
                    let qrow = (first.clone() + i32(h as u32)) * i32(d);
                    let q = Expr::load(self.qf, qrow + cc.clone() * i32(W), W as u8);
                    let r = hr[k as usize];
                    b.set(r, q.fma(kv.clone(), Expr::Var(r)));
                }
            }
        });
        regs.iter()
            .map(|hr| {
                let mut sum: Vec<Expr> = hr.iter().map(|r| Expr::Var(*r)).collect();
                while sum.len() > 1 {
                    let half = sum.len() / 2;
                    sum = (0..half)
                        .map(|j| sum[j].clone() + sum[j + half].clone())
                        .collect();
                }
                let v = b.let_("dsum", sum.pop().unwrap_or(zero.clone()));
                lanes_fold(v, |p, q| p + q)
            })
            .collect()
    }

    /// The online softmax over the tile's logits: each row's new max, its
    /// rescale factor (kept for [`Tile::accumulate`]) and sum; `s` becomes
    /// the weights 2^(s − max).
    pub fn softmax(&self, b: &mut KernelBuilder) {
        let ninf = Expr::f32(f32::NEG_INFINITY);
        b.unroll("r", self.rows, |b, r| {
            let row = |v: u32| r.clone() * i32(TILE) + i32(v * W);
            let sv: Vec<Expr> = (0..TILE / W)
                .map(|v| b.let_("sv", Expr::load(self.s, row(v), W as u8)))
                .collect();
            let vmax = sv
                .iter()
                .cloned()
                .reduce(|x, y| x.max(y))
                .expect("a tile has lanes");
            let mt = lanes_fold(b.let_("vmax", vmax), |x, y| x.max(y));
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
            let mut psum = None;
            for (v, x) in sv.into_iter().enumerate() {
                let p = b.let_("pv", (x - splat(m_safe.clone())).exp2());
                b.store(self.s, row(v as u32), p.clone());
                psum = Some(match psum {
                    None => p,
                    Some(acc) => acc + p,
                });
            }
            let psum = lanes_fold(b.let_("vsum", psum.expect("a tile has lanes")), |x, y| {
                x + y
            });
            let l_old = Expr::load(self.l, r.clone(), 1);
            let alpha = Expr::load(self.alpha, r.clone(), 1);
            b.store(self.l, r.clone(), l_old.fma(alpha, psum));
            b.store(self.m, r, m_new);
        });
    }

    /// `acc = acc·alpha + Σ_i p_i·v_i` for every row over the tile's V rows
    /// (tokens `t0 + i`).
    pub fn accumulate(
        &self,
        b: &mut KernelBuilder,
        kv: &KvLayoutSpec,
        at: &Rows<'_>,
        v_cache: BufId,
        t0: &Expr,
    ) {
        let d = kv.head_dim;
        b.unroll("i", TILE, |b, i| {
            let t = t0.clone() + i.clone();
            let base = at.base(b, t.clone());
            at.prefetch_next(b, v_cache, t);
            let vec = kv_vector_lanes(kv);
            b.unroll("c", d / vec, |b, c| {
                let raw = Expr::load(v_cache, base.clone() + i64(c.clone() * i32(vec)), vec as u8);
                b.store(
                    self.vrows,
                    i.clone() * i32(d) + c * i32(vec),
                    raw.cast(Scalar::F32),
                );
            });
        });
        // Register blocks of VROWS rows × VGROUP/VROWS chunks: each V chunk
        // loaded serves VROWS rows.
        let chunks = d / W;
        let per = (VGROUP / VROWS).min(chunks);
        let mut r0 = 0;
        while r0 < self.rows {
            let nr = VROWS.min(self.rows - r0);
            let blocks = (self.rows - r0) / nr;
            b.unroll("rb", blocks, |b, rb| {
                let first = b.let_("r_first", rb * i32(nr) + i32(r0));
                // Whole groups of `per` chunks in a loop, then the rest.
                let groups = chunks / per;
                let rest = chunks % per;
                let block = |b: &mut KernelBuilder, c0: Expr, n: u32| {
                    let at = |r: u32, k: u32| {
                        (first.clone() + i32(r)) * i32(d) + (c0.clone() + i32(k)) * i32(W)
                    };
                    let regs: Vec<Vec<_>> = (0..nr)
                        .map(|r| {
                            let a = splat(Expr::load(self.alpha, first.clone() + i32(r), 1));
                            (0..n)
                                .map(|k| {
                                    b.var("av", Expr::load(self.acc, at(r, k), W as u8) * a.clone())
                                })
                                .collect()
                        })
                        .collect();
                    b.unroll("i", TILE, |b, i| {
                        let v: Vec<Expr> = (0..n)
                            .map(|k| {
                                let at = i.clone() * i32(d) + (c0.clone() + i32(k)) * i32(W);
                                b.let_("vv", Expr::load(self.vrows, at, W as u8))
                            })
                            .collect();
                        for (r, row) in regs.iter().enumerate() {
                            let sat = (first.clone() + i32(r as u32)) * i32(TILE) + i.clone();
                            let p = b.let_("pv", splat(Expr::load(self.s, sat, 1)));
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
                b.unroll("cg", groups, |b, cg| block(b, cg * i32(per), per));
                if rest > 0 {
                    block(b, i32(groups * per), rest);
                }
            });
            r0 += blocks * nr;
        }
    }
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
