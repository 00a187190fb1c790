//! Paged prefill attention for a ragged batch, tiled the FlashAttention way.
//!
//! ```text
//! q, out:    [total_q_tokens][q_heads][head_dim]        (the spec's query dtype)
//! qo_indptr: [batch+1] i32    sequence b's new tokens are rows qo_indptr[b]..qo_indptr[b+1]
//! k_cache, v_cache, kv_indptr, kv_indices, kv_last_page_len: as for decode
//! (sinks, alibi_slopes: [q_heads] f32, when the spec has them)
//! grid: (query tiles, kv_heads, batch); block: 16 rows × 8 threads (× 1 on the host)
//! ```
//!
//! Sequence b brings `q_len` new query tokens, already appended to its KV,
//! which holds `kv_len ≥ q_len` tokens: new token i sits at position
//! `kv_len − q_len + i`. Under `causal` it sees positions up to its own;
//! a sliding window of `w` also hides positions before `pos − w + 1`.
//!
//! A block serves one KV head of one sequence and a tile of
//! [`PREFILL_ROWS`] query rows, where row `r` of the sequence is query
//! token `r / G` and head `kv_head·G + r % G` (the `G` query heads sharing
//! the KV head are packed together, so each K/V tile is read once for all of
//! them). The Q tile is staged in shared memory as f32; the block then walks
//! the KV tiles that the tile's rows can see (only those: with a causal mask
//! or a window, tiles outside every row's range are never read), each staged
//! in shared memory as f32. Eight threads share a query row (one on the
//! host target, whose warp is one thread): each computes a slice of the
//! row's logits, the row's max and sum come from three shuffles, and each
//! thread keeps the online-softmax rescaled accumulator of its
//! `head_dim / 8` output elements in f32.
//!
//! K/V rows past the tile's range are staged as zeros and masked, so NaN in
//! free pages never reaches an output.

use crate::ir::builder::KernelBuilder;
use crate::ir::{Access, BufId, Dim, Expr, Kernel, Scalar, Special, VarId};
use crate::spec::AttentionSpec;
use crate::target::{Arch, Target};

use super::{
    alibi_slope, kv_offset, kv_scale_params, kv_scale_values, kv_vector_lanes, logit2, seq_pages,
    variant_params, vector_lanes,
};

/// Query rows (token × head of a KV head's group) per prefill block.
pub const PREFILL_ROWS: u32 = 16;
/// Threads that share a query row: eight, or a warp when warps are
/// smaller (the host target's warp of one), since a row reduces by shuffles.
fn threads_per_row(target: Target) -> u32 {
    target.warp_size.min(8)
}
/// Shared memory a prefill block may use (the 48 KiB every GPU target,
/// CUDA's static limit included, allows).
const SHARED_BUDGET: u32 = 48 * 1024;

const LOG2_E: f32 = std::f32::consts::LOG2_E;

/// KV tokens per shared-memory tile for a head dimension: the largest
/// multiple of 8, at most 64, whose K, V, Q and score tiles fit the budget.
pub fn prefill_kv_tile(head_dim: u32) -> u32 {
    let bytes = |tk: u32| 4 * (PREFILL_ROWS * head_dim + 2 * tk * head_dim + PREFILL_ROWS * tk);
    (1..=8)
        .rev()
        .map(|i| i * 8)
        .find(|&tk| bytes(tk) <= SHARED_BUDGET)
        .unwrap_or(8)
}

pub(super) fn build(spec: &AttentionSpec, target: Target, name: &str) -> Kernel {
    let kv = spec.kv;
    let q_elem = Scalar::of_dtype(spec.query_dtype());
    let d = kv.head_dim;
    let g = spec.group_size();
    let rows = PREFILL_ROWS;
    let tk = prefill_kv_tile(d);
    let vec = kv_vector_lanes(&kv);
    let qvec = vector_lanes(spec.query_dtype());
    // Output elements per thread, read from shared memory `w` at a time.
    let per_thread = d / threads_per_row(target);
    let w = [4u32, 2, 1]
        .into_iter()
        .find(|w| per_thread.is_multiple_of(*w))
        .unwrap_or(1);
    let tpr = threads_per_row(target);
    let threads = rows * tpr;
    let cols = tk / tpr;
    let i32 = |v: u32| Expr::i32(v as i32);
    let i64 = |e: Expr| e.cast(Scalar::I64);
    let ninf = Expr::f32(f32::NEG_INFINITY);

    if target.arch == Arch::Host {
        return super::host::prefill::build(spec, target, name);
    }
    let mut b = KernelBuilder::new(name, target, threads);
    let io = declare(&mut b, spec);
    let (q, k_cache, v_cache, indices) = (io.q, io.k_cache, io.v_cache, io.indices);
    let (sinks, slopes, out) = (io.sinks, io.slopes, io.out);
    let sm_q = b.shared("sm_q", Scalar::F32, rows * d);
    let sm_k = b.shared("sm_k", Scalar::F32, tk * d);
    let sm_v = b.shared("sm_v", Scalar::F32, tk * d);
    let sm_p = b.shared("sm_p", Scalar::F32, rows * tk);

    b.comment(format!(
        "{rows} query rows ({g} heads per KV head) x {tk} KV tokens per tile; \
         {tpr} threads per row, {cols} logits and {per_thread} outputs each"
    ));
    let tid = b.let_("tid", Expr::special(Special::ThreadIdx));
    let PrefillBlock {
        head,
        qo_begin,
        q_len,
        page_begin,
        kv_len,
        scales,
        packed,
        row0,
    } = prefill_block(&mut b, spec, &io, rows);

    b.if_(row0.clone().lt(packed.clone()), |b| {
        // This thread's row and its place in it.
        let r = b.let_("r", tid.clone() / i32(tpr));
        let sub = b.let_("sub", tid.clone() % i32(tpr));
        let prow = b.let_("prow", row0.clone() + r.clone());
        let row_ok = b.let_("row_ok", prow.clone().lt(packed.clone()));
        let prow_c = b.let_("prow_c", prow.min(packed.clone() - Expr::i32(1)));
        let qi = b.let_("qi", prow_c.clone() / i32(g));
        let qhead = b.let_("qhead", head.clone() * i32(g) + prow_c % i32(g));
        let pos = b.let_("pos", kv_len.clone() - q_len.clone() + qi.clone());

        // The KV range the tile's rows can see.
        let (kv_lo, kv_hi) = visible_kv(b, spec, &row0, rows, &q_len, &kv_len);

        b.comment("Stage the Q tile in shared memory as f32 (padding rows as zeros).");
        let q_chunks = d / qvec;
        b.for_(
            "i",
            tid.clone(),
            i32(rows * q_chunks),
            i32(threads),
            |b, i| {
                let rr = b.let_("rr", i.clone() / i32(q_chunks));
                let c = b.let_("c", i % i32(q_chunks));
                let pr = b.let_("pr", row0.clone() + rr.clone());
                let ok = b.let_("ok", pr.clone().lt(packed.clone()));
                let pc = b.let_("pc", pr.min(packed.clone() - Expr::i32(1)));
                let tok = qo_begin.clone() + pc.clone() / i32(g);
                let qh = head.clone() * i32(g) + pc % i32(g);
                let off = (i64(tok) * Expr::i64(spec.q_heads as i64) + i64(qh))
                    * Expr::i64(d as i64)
                    + i64(c.clone() * i32(qvec));
                let raw = b.let_("qraw", Expr::load(q, off, qvec as u8));
                store_f32(b, sm_q, rr * i32(d) + c * i32(qvec), &raw, qvec, &ok);
            },
        );

        // Per-row variants: the ALiBi slope and the sink, base 2.
        let slope2 = alibi_slope(spec, qhead.clone(), slopes)
            .map(|s| b.let_("slope2", s * Expr::f32(LOG2_E)));
        let m = b.var("m", ninf.clone());
        let l = b.var("l", Expr::f32(0.0));
        let acc: Vec<VarId> = (0..per_thread)
            .map(|j| b.var(&format!("acc{j}"), Expr::f32(0.0)))
            .collect();

        b.comment("Walk the visible KV tiles.");
        let kv_chunks = d / vec;
        b.for_("kv0", kv_lo, kv_hi.clone(), i32(tk), |b, kv0| {
            let tile_end = b.let_("tile_end", (kv0.clone() + i32(tk)).min(kv_hi.clone()));
            // Everyone is done reading the previous tile.
            b.barrier();
            b.for_(
                "i",
                tid.clone(),
                i32(tk * kv_chunks),
                i32(threads),
                |b, i| {
                    let kr = b.let_("kr", i.clone() / i32(kv_chunks));
                    let c = b.let_("c", i % i32(kv_chunks));
                    let t = b.let_("t", kv0.clone() + kr.clone());
                    let ok = b.let_("ok", t.clone().lt(tile_end.clone()));
                    let tc = b.let_("tc", t.min(tile_end.clone() - Expr::i32(1)));
                    let page = b.let_(
                        "page",
                        Expr::load(
                            indices,
                            page_begin.clone() + tc.clone() / i32(kv.page_size),
                            1,
                        ),
                    );
                    let slot = tc % i32(kv.page_size);
                    let off = b.let_(
                        "off",
                        kv_offset(&kv, i64(page), i64(slot), i64(head.clone()))
                            + i64(c.clone() * i32(vec)),
                    );
                    let kraw = b.let_("kraw", Expr::load(k_cache, off.clone(), vec as u8));
                    let vraw = b.let_("vraw", Expr::load(v_cache, off, vec as u8));
                    let at = b.let_("at", kr * i32(d) + c * i32(vec));
                    store_f32(b, sm_k, at.clone(), &kraw, vec, &ok);
                    store_f32(b, sm_v, at, &vraw, vec, &ok);
                },
            );
            b.barrier();

            // Logits of this thread's columns: sub, sub + 8, ...
            let dots: Vec<VarId> = (0..cols)
                .map(|j| b.var(&format!("dot{j}"), Expr::f32(0.0)))
                .collect();
            b.for_("dc", Expr::i32(0), i32(d / 4), Expr::i32(1), |b, dc| {
                let qv = b.let_(
                    "qv",
                    Expr::load(sm_q, r.clone() * i32(d) + dc.clone() * i32(4), 4),
                );
                for (j, dot) in dots.iter().enumerate() {
                    let col = sub.clone() + i32(j as u32 * tpr);
                    let kv4 = b.let_(
                        &format!("kv{j}"),
                        Expr::load(sm_k, col * i32(d) + dc.clone() * i32(4), 4),
                    );
                    let mut sum = Expr::Var(*dot);
                    for e in 0..4 {
                        sum = qv.clone().lane(e).fma(kv4.clone().lane(e), sum);
                    }
                    b.set(*dot, sum);
                }
            });
            let mut s = Vec::new();
            for (j, dot) in dots.iter().enumerate() {
                let t = b.let_(
                    &format!("t{j}"),
                    kv0.clone() + sub.clone() + i32(j as u32 * tpr),
                );
                let mut ok = row_ok.clone().and_then(t.clone().lt(tile_end.clone()));
                if spec.causal {
                    ok = ok.and_then(t.clone().le(pos.clone()));
                }
                if let Some(win) = spec.sliding_window {
                    ok = ok.and_then(t.clone().ge(pos.clone() - i32(win) + Expr::i32(1)));
                }
                let ok = b.let_(&format!("ok{j}"), ok);
                let bias = slope2
                    .as_ref()
                    .map(|sl| (t - pos.clone()).cast(Scalar::F32) * sl.clone());
                let dot = match &scales {
                    Some((ks, _)) => Expr::Var(*dot) * ks.clone(),
                    None => Expr::Var(*dot),
                };
                let logit = logit2(spec, dot, bias);
                s.push((
                    b.let_(&format!("s{j}"), ok.clone().select(logit, ninf.clone())),
                    ok,
                ));
            }

            // The row's max over its eight threads.
            let mut mt = s[0].0.clone();
            for (sj, _) in &s[1..] {
                mt = mt.max(sj.clone());
            }
            let mut mt = b.let_("mt", mt);
            let mut mask = tpr / 2;
            while mask > 0 {
                let o = b.shfl_xor(
                    &format!("mt_x{mask}"),
                    mt.clone(),
                    mask as i32,
                    target.warp_size,
                );
                mt = b.let_(&format!("mt_r{mask}"), mt.max(o));
                mask /= 2;
            }
            let m_new = b.let_("m_new", Expr::Var(m).max(mt));
            let alpha = b.let_(
                "alpha",
                m_new
                    .clone()
                    .eq_(ninf.clone())
                    .select(Expr::f32(1.0), (Expr::Var(m) - m_new.clone()).exp2()),
            );
            let mut psum = Expr::f32(0.0);
            for (j, (sj, ok)) in s.iter().enumerate() {
                let p = b.let_(
                    &format!("p{j}"),
                    ok.clone()
                        .select((sj.clone() - m_new.clone()).exp2(), Expr::f32(0.0)),
                );
                let col = sub.clone() + i32(j as u32 * tpr);
                b.store(sm_p, r.clone() * i32(tk) + col, p.clone());
                psum = psum + p;
            }
            let mut psum = b.let_("psum", psum);
            let mut mask = tpr / 2;
            while mask > 0 {
                let o = b.shfl_xor(
                    &format!("ps_x{mask}"),
                    psum.clone(),
                    mask as i32,
                    target.warp_size,
                );
                psum = b.let_(&format!("ps_r{mask}"), psum + o);
                mask /= 2;
            }
            b.set(l, Expr::Var(l).fma(alpha.clone(), psum));
            b.set(m, m_new);
            for a in &acc {
                b.set(*a, Expr::Var(*a) * alpha.clone());
            }
            b.barrier();

            b.comment("O += P·V for this thread's output elements.");
            b.for_("c", Expr::i32(0), i32(tk), Expr::i32(1), |b, c| {
                let p = b.let_("pc", Expr::load(sm_p, r.clone() * i32(tk) + c.clone(), 1));
                for k in 0..per_thread / w {
                    let at = c.clone() * i32(d) + sub.clone() * i32(per_thread) + i32(k * w);
                    let vv = b.let_(&format!("vv{k}"), Expr::load(sm_v, at, w as u8));
                    for e in 0..w {
                        let a = acc[(k * w + e) as usize];
                        let ve = if w == 1 {
                            vv.clone()
                        } else {
                            vv.clone().lane(e as u8)
                        };
                        b.set(a, p.clone().fma(ve, Expr::Var(a)));
                    }
                }
            });
        });

        b.comment("Normalise (with the sink in the denominator) and write the row.");
        let mut mx = Expr::Var(m);
        let mut lsum = Expr::Var(l);
        if let Some(buf) = sinks {
            let sink = b.let_(
                "sink",
                Expr::load(buf, qhead.clone(), 1) * Expr::f32(LOG2_E),
            );
            let mf = b.let_("m_final", mx.clone().max(sink.clone()));
            let keep = b.let_(
                "keep",
                mx.clone()
                    .eq_(ninf.clone())
                    .select(Expr::f32(0.0), (mx - mf.clone()).exp2()),
            );
            lsum = b.let_(
                "l_final",
                lsum.fma(keep.clone(), (sink - mf.clone()).exp2()),
            );
            mx = keep;
        } else {
            mx = Expr::f32(1.0);
        }
        // `mx` is now the factor the accumulators still need.
        if let Some((_, vs)) = &scales {
            mx = mx * vs.clone();
        }
        let inv = b.let_(
            "inv",
            lsum.clone()
                .gt(Expr::f32(0.0))
                .select(mx / lsum, Expr::f32(0.0)),
        );
        b.if_(row_ok.clone(), |b| {
            let tok = qo_begin.clone() + qi.clone();
            let base = b.let_(
                "out_base",
                (i64(tok) * Expr::i64(spec.q_heads as i64) + i64(qhead.clone()))
                    * Expr::i64(d as i64)
                    + i64(sub.clone() * i32(per_thread)),
            );
            for (j, a) in acc.iter().enumerate() {
                b.store(
                    out,
                    base.clone() + Expr::i64(j as i64),
                    (Expr::Var(*a) * inv.clone()).cast(q_elem),
                );
            }
        });
    });
    b.finish()
}

/// Stores the `n` lanes of `raw`, converted to f32, at `sm[at..at + n]`, or
/// zeros where `ok` is false; in 4-lane f32 vectors.
fn store_f32(b: &mut KernelBuilder, sm: crate::ir::BufId, at: Expr, raw: &Expr, n: u32, ok: &Expr) {
    let lane = |e: u32| {
        let x = if n == 1 {
            raw.clone()
        } else {
            raw.clone().lane(e as u8)
        };
        ok.clone().select(x.cast(Scalar::F32), Expr::f32(0.0))
    };
    let mut e = 0;
    while e < n {
        let width = (n - e).min(4);
        let value = if width == 1 {
            lane(e)
        } else {
            Expr::Vector((e..e + width).map(lane).collect())
        };
        let idx = if e == 0 {
            at.clone()
        } else {
            at.clone() + Expr::i32(e as i32)
        };
        b.store(sm, idx, value);
        e += width;
    }
}

/// A prefill kernel's buffers, declared in the order every prefill kernel
/// (GPU or host schedule) shares.
pub(super) struct PrefillIo {
    pub q: BufId,
    pub k_cache: BufId,
    pub v_cache: BufId,
    pub qo_indptr: BufId,
    pub indptr: BufId,
    pub indices: BufId,
    pub last_len: BufId,
    pub sinks: Option<BufId>,
    pub slopes: Option<BufId>,
    pub scales: Option<(BufId, BufId)>,
    pub out: BufId,
}

/// Declares the parameters of a prefill kernel.
pub(super) fn declare(b: &mut KernelBuilder, spec: &AttentionSpec) -> PrefillIo {
    let elem = Scalar::of_dtype(spec.kv.dtype);
    let q_elem = Scalar::of_dtype(spec.query_dtype());
    let q = b.global("q", q_elem, Access::Read);
    let k_cache = b.global("k_cache", elem, Access::Read);
    let v_cache = b.global("v_cache", elem, Access::Read);
    let qo_indptr = b.global("qo_indptr", Scalar::I32, Access::Read);
    let indptr = b.global("kv_indptr", Scalar::I32, Access::Read);
    let indices = b.global("kv_indices", Scalar::I32, Access::Read);
    let last_len = b.global("kv_last_page_len", Scalar::I32, Access::Read);
    let (sinks, slopes) = variant_params(b, spec, true);
    let scales = kv_scale_params(b, &spec.kv);
    let out = b.global("out", q_elem, Access::ReadWrite);
    PrefillIo {
        q,
        k_cache,
        v_cache,
        qo_indptr,
        indptr,
        indices,
        last_len,
        sinks,
        slopes,
        scales,
        out,
    }
}

/// What every prefill block (SIMT, matrix-core or host schedule) knows
/// from its grid position and the launch's tables.
pub(super) struct PrefillBlock {
    /// The KV head (grid y).
    pub head: Expr,
    /// The sequence (grid z) and its new tokens' first row of q and out.
    pub qo_begin: Expr,
    /// Its new tokens.
    pub q_len: Expr,
    /// Its first page-table entry and its length in tokens.
    pub page_begin: Expr,
    pub kv_len: Expr,
    /// fp8: the KV head's K and V scales.
    pub scales: Option<(Expr, Expr)>,
    /// Packed rows of the sequence (new tokens × the group's heads).
    pub packed: Expr,
    /// The block's first packed row: query tile (grid x) × `rows`.
    pub row0: Expr,
}

/// Declares the block's [`PrefillBlock`] values, for tiles of `rows`
/// packed rows.
pub(super) fn prefill_block(
    b: &mut KernelBuilder,
    spec: &AttentionSpec,
    io: &PrefillIo,
    rows: u32,
) -> PrefillBlock {
    let i32 = |v: u32| Expr::i32(v as i32);
    let tile = b.let_("tile", Expr::special(Special::BlockIdx(Dim::X)));
    let head = b.let_("kv_head", Expr::special(Special::BlockIdx(Dim::Y)));
    let seq = b.let_("seq", Expr::special(Special::BlockIdx(Dim::Z)));
    let qo_begin = b.let_("qo_begin", Expr::load(io.qo_indptr, seq.clone(), 1));
    let q_len = b.let_(
        "q_len",
        Expr::load(io.qo_indptr, seq.clone() + Expr::i32(1), 1) - qo_begin.clone(),
    );
    let (page_begin, kv_len) = seq_pages(b, &spec.kv, io.indptr, io.last_len, &seq);
    // fp8: K's scale multiplies the dot product, V's the output.
    let scales = kv_scale_values(b, &spec.kv, io.scales, &head);
    let packed = b.let_("packed_rows", q_len.clone() * i32(spec.group_size()));
    let row0 = b.let_("row0", tile * i32(rows));
    PrefillBlock {
        head,
        qo_begin,
        q_len,
        page_begin,
        kv_len,
        scales,
        packed,
        row0,
    }
}

/// The KV tokens `[kv_lo, kv_hi)` a prefill tile's `rows` packed rows from
/// `row0` can see (the group's query heads per token): causal ends at the
/// last row's token, a sliding window starts at the first row's.
pub(super) fn visible_kv(
    b: &mut KernelBuilder,
    spec: &AttentionSpec,
    row0: &Expr,
    rows: u32,
    q_len: &Expr,
    kv_len: &Expr,
) -> (Expr, Expr) {
    let i32 = |v: u32| Expr::i32(v as i32);
    let g = spec.group_size();
    let first_tok = row0.clone() / i32(g);
    let last_tok = ((row0.clone() + i32(rows - 1)) / i32(g)).min(q_len.clone() - Expr::i32(1));
    let kv_hi = match spec.causal {
        true => b.let_(
            "kv_hi",
            kv_len.clone() - q_len.clone() + last_tok + Expr::i32(1),
        ),
        false => kv_len.clone(),
    };
    let kv_lo = match spec.sliding_window {
        Some(win) => b.let_(
            "kv_lo",
            (kv_len.clone() - q_len.clone() + first_tok - i32(win) + Expr::i32(1))
                .max(Expr::i32(0)),
        ),
        None => Expr::i32(0),
    };
    (kv_lo, kv_hi)
}
