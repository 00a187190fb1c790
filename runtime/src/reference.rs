//! A plain f64 implementation of paged attention, written independently of
//! the kernel IR, to check every generated kernel against.
//!
//! It reads the same arenas and page tables as the kernels (values already
//! converted to f64), computes each logit, the soft-cap, the window and the
//! softmax directly (no online rescaling, no base-2 tricks), and returns f64.

use attnforge_codegen::{Alibi, AttentionSpec, DType, KvLayoutSpec, Order};

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

/// Decode attention: `q` is [batch][q_heads][head_dim]; returns the same
/// shape. No sinks, and computed ALiBi slopes if any (see [`decode_with`]).
pub fn decode(
    spec: &AttentionSpec,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    table: &PageTable,
) -> Vec<f64> {
    decode_with(spec, &Variants::default(), q, k, v, table)
}

/// The launch-time values of an attention's variants, for the reference.
#[derive(Clone, Debug, Default)]
pub struct Variants {
    /// One sink logit per query head (natural-log units).
    pub sinks: Option<Vec<f64>>,
    /// One ALiBi slope per query head, for `alibi = given` only (with
    /// `alibi = computed` the reference builds the paper's slopes itself).
    pub alibi_slopes: Option<Vec<f64>>,
}

/// The ALiBi paper's slopes for `n` heads, built the way its reference code
/// builds them: a geometric sequence for the largest power of two `p ≤ n`,
/// then every other slope of the sequence for `2p`.
pub fn paper_slopes(n: usize) -> Vec<f64> {
    fn pow2(n: usize) -> Vec<f64> {
        let start = 2f64.powf(-(2f64.powf(-((n as f64).log2() - 3.0))));
        (0..n).map(|i| start * start.powi(i as i32)).collect()
    }
    if n.is_power_of_two() {
        return pow2(n);
    }
    let p = 1 << n.ilog2();
    let mut s = pow2(p);
    s.extend(pow2(2 * p).into_iter().step_by(2).take(n - p));
    s
}

/// Decode attention with sinks and given ALiBi slopes: each sequence's one
/// query is its last token.
pub fn decode_with(
    spec: &AttentionSpec,
    var: &Variants,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    table: &PageTable,
) -> Vec<f64> {
    let qo: Vec<i32> = (0..=table.batch() as i32).collect();
    // One query per sequence at its last position sees what a causal query
    // there sees; the spec's causal flag is about prefill.
    let spec = AttentionSpec {
        causal: true,
        ..*spec
    };
    prefill_with(&spec, var, q, &qo, k, v, table)
}

/// Prefill attention: sequence b's queries are rows `qo_indptr[b]..qo_indptr[b+1]`
/// of `q` ([rows][q_heads][head_dim]); the last of them is its last KV token.
/// Returns the same shape as `q`.
pub fn prefill_with(
    spec: &AttentionSpec,
    var: &Variants,
    q: &[f64],
    qo_indptr: &[i32],
    k: &[f64],
    v: &[f64],
    table: &PageTable,
) -> Vec<f64> {
    let l = &spec.kv;
    let d = l.head_dim as usize;
    let qh = spec.q_heads as usize;
    let group = qh / l.kv_heads as usize;
    let scale = spec.scale.map(f64::from).unwrap_or(1.0 / (d as f64).sqrt());
    // The reference is an oracle for tests: a mix-up of variants there is a
    // bug in the test, so it stops rather than guessing slopes.
    let slopes: Option<Vec<f64>> = match (spec.alibi, &var.alibi_slopes) {
        (Some(Alibi::Given), Some(s)) => {
            assert_eq!(s.len(), qh, "reference: one ALiBi slope per query head");
            Some(s.clone())
        }
        (Some(Alibi::Given), None) => panic!("reference: ALiBi = given needs slopes"),
        (Some(Alibi::Computed), None) => Some(paper_slopes(qh)),
        (None, None) => None,
        (_, Some(_)) => {
            panic!("reference: ALiBi slopes given for a spec that computes them or has no ALiBi")
        }
    };
    let mut out = vec![0.0; q.len()];
    for b in 0..table.batch() {
        let len = table.seq_len(b, l.page_size);
        let pages = &table.indices[table.indptr[b] as usize..table.indptr[b + 1] as usize];
        let (q0, q1) = (qo_indptr[b] as usize, qo_indptr[b + 1] as usize);
        if q1 - q0 > len {
            // A decode query over an empty context: the kernels write zeros.
            continue;
        }
        for (i, row) in (q0..q1).enumerate() {
            let pos = len - (q1 - q0) + i;
            let last = if spec.causal { pos } else { len - 1 };
            let first = match spec.sliding_window {
                Some(w) => (pos + 1).saturating_sub(w as usize),
                None => 0,
            };
            for h in 0..qh {
                let kvh = h / group;
                let qv = &q[(row * qh + h) * d..][..d];
                let rows: Vec<(usize, usize)> = (first..=last)
                    .map(|t| {
                        let at = offset(
                            l,
                            pages[t / l.page_size as usize] as usize,
                            t % l.page_size as usize,
                            kvh,
                        );
                        (t, at)
                    })
                    .collect();
                let logits: Vec<f64> = rows
                    .iter()
                    .map(|&(t, r)| {
                        let dot: f64 = qv.iter().zip(&k[r..r + d]).map(|(a, b)| a * b).sum();
                        let s = dot * scale;
                        let s = match spec.logits_soft_cap {
                            Some(cap) => f64::from(cap) * (s / f64::from(cap)).tanh(),
                            None => s,
                        };
                        match &slopes {
                            Some(sl) => s + sl[h] * (t as f64 - pos as f64),
                            None => s,
                        }
                    })
                    .collect();
                let sink = var.sinks.as_ref().filter(|_| spec.sinks).map(|s| s[h]);
                let max = logits
                    .iter()
                    .cloned()
                    .chain(sink)
                    .fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = logits.iter().map(|s| (s - max).exp()).collect();
                let total: f64 =
                    weights.iter().sum::<f64>() + sink.map_or(0.0, |s| (s - max).exp());
                let o = &mut out[(row * qh + h) * d..][..d];
                for (w, &(_, r)) in weights.iter().zip(&rows) {
                    for (oi, vi) in o.iter_mut().zip(&v[r..r + d]) {
                        *oi += w / total * vi;
                    }
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
        // The bound for fp8 caches, against the reference on the
        // dequantized cache (the error left is the query's and f32's).
        DType::F8E4M3 => 5e-2,
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
