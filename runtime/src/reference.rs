//! A plain f64 implementation of paged attention, written independently of
//! the kernel IR, to check every generated kernel against.
//!
//! It reads the same arenas and page tables as the kernels (values already
//! converted to f64), computes each logit, the soft-cap, the window and the
//! softmax directly (no online rescaling, no base-2 tricks), and returns f64.

use attnforge_codegen::{AttentionSpec, DType, KvLayoutSpec, Order};

use crate::table::PageTable;

/// Element offset of (page, token in page, head) in one arena.
fn offset(l: &KvLayoutSpec, page: usize, token: usize, head: usize) -> usize {
    let (p, h, d) = (
        l.page_size as usize,
        l.kv_heads as usize,
        l.head_dim as usize,
    );
    match l.order {
        Order::Nhd => page * p * h * d + token * h * d + head * d,
        Order::Hnd => page * h * p * d + head * p * d + token * d,
    }
}

/// Decode attention: `q` is [batch][q_heads][head_dim]; returns the same shape.
pub fn decode(
    spec: &AttentionSpec,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    table: &PageTable,
) -> Vec<f64> {
    let l = &spec.kv;
    let d = l.head_dim as usize;
    let qh = spec.q_heads as usize;
    let group = qh / l.kv_heads as usize;
    let scale = spec.scale.map(f64::from).unwrap_or(1.0 / (d as f64).sqrt());
    let mut out = vec![0.0; table.batch() * qh * d];
    for b in 0..table.batch() {
        let len = table.seq_len(b, l.page_size);
        let first = match spec.sliding_window {
            Some(w) => len.saturating_sub(w as usize),
            None => 0,
        };
        let pages = &table.indices[table.indptr[b] as usize..table.indptr[b + 1] as usize];
        for h in 0..qh {
            let kvh = h / group;
            let qv = &q[(b * qh + h) * d..][..d];
            let rows: Vec<usize> = (first..len)
                .map(|t| {
                    offset(
                        l,
                        pages[t / l.page_size as usize] as usize,
                        t % l.page_size as usize,
                        kvh,
                    )
                })
                .collect();
            let logits: Vec<f64> = rows
                .iter()
                .map(|&r| {
                    let dot: f64 = qv.iter().zip(&k[r..r + d]).map(|(a, b)| a * b).sum();
                    let s = dot * scale;
                    match spec.logits_soft_cap {
                        Some(cap) => f64::from(cap) * (s / f64::from(cap)).tanh(),
                        None => s,
                    }
                })
                .collect();
            let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = logits.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            let o = &mut out[(b * qh + h) * d..][..d];
            for (w, &r) in weights.iter().zip(&rows) {
                for (oi, vi) in o.iter_mut().zip(&v[r..r + d]) {
                    *oi += w / total * vi;
                }
            }
        }
    }
    out
}

/// Relative L2 error `‖got − want‖ / ‖want‖`; NaN if `got` holds NaN.
pub fn rel_l2(got: &[f64], want: &[f64]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(a, b)| (a - b) * (a - b)).sum();
    let den: f64 = want.iter().map(|b| b * b).sum();
    (num / den.max(1e-300)).sqrt()
}

/// The relative L2 error a kernel's output may have against [`decode`]
/// when its inputs and output are stored in `d`.
pub fn tolerance(d: DType) -> f64 {
    match d {
        DType::F32 => 1e-5,
        DType::F16 => 2e-3,
        DType::BF16 => 1e-2,
    }
}

/// KV append: writes token i's rows of `k_new`/`v_new` ([tokens][kv_heads][head_dim])
/// into slot `slots[i]` of the arenas; negative slots are skipped.
pub fn append<T: Copy>(
    l: &KvLayoutSpec,
    k_new: &[T],
    v_new: &[T],
    slots: &[i64],
    k: &mut [T],
    v: &mut [T],
) {
    let (h, d, p) = (
        l.kv_heads as usize,
        l.head_dim as usize,
        l.page_size as usize,
    );
    for (i, &slot) in slots.iter().enumerate() {
        if slot < 0 {
            continue;
        }
        let (page, token) = (slot as usize / p, slot as usize % p);
        for head in 0..h {
            let src = (i * h + head) * d;
            let dst = offset(l, page, token, head);
            k[dst..dst + d].copy_from_slice(&k_new[src..src + d]);
            v[dst..dst + d].copy_from_slice(&v_new[src..src + d]);
        }
    }
}
