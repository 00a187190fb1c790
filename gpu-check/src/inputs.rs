//! Seeded inputs, drawn the way the numeric tests' harness
//! (`attnforge_runtime::check`) draws them: each sequence's pages scattered
//! over an arena half again as large, everything outside the sequences
//! NaN, values in [-1, 1), queries three times larger. The harness needs
//! the CPU backend; this copy does not, so the CUDA runner draws the same
//! inputs on the GPU machine from each case's seed (the tests check it
//! against the harness's functions, and every run checks the inputs'
//! SHA-256 against the build half's).

use attnforge_codegen::{Alibi, AttentionSpec, KvLayoutSpec, F8E4M3};
use attnforge_runtime::launch::Element;
use attnforge_runtime::PageTable;

#[path = "../../tests/support/splitmix.rs"]
mod splitmix;
pub use splitmix::Rng;

/// Random paged K/V for sequences of `lens` tokens, NaN elsewhere: what
/// `attnforge_runtime::check::paged_inputs` returns, field for field.
pub fn paged_inputs<T: Element>(
    l: &KvLayoutSpec,
    lens: &[usize],
    rng: &mut Rng,
) -> (Vec<T>, Vec<T>, PageTable) {
    let p = l.page_size as usize;
    let need: usize = lens.iter().map(|n| n.div_ceil(p)).sum();
    let max_pages = need + need / 2 + 3;
    let mut ids: Vec<i32> = (0..max_pages as i32).collect();
    rng.shuffle(&mut ids);
    let nan = T::from_f64(f64::NAN);
    let elems = max_pages * l.page_elems() as usize;
    let (mut k, mut v) = (vec![nan; elems], vec![nan; elems]);
    let mut next = 0;
    let mut seqs = Vec::new();
    for &len in lens {
        let pages = &ids[next..next + len.div_ceil(p)];
        next += pages.len();
        for t in 0..len {
            for h in 0..l.kv_heads as u64 {
                let at = l.offset(pages[t / p] as u64, (t % p) as u64, h) as usize;
                for i in 0..l.head_dim as usize {
                    k[at + i] = T::from_f64(rng.uniform());
                    v[at + i] = T::from_f64(rng.uniform());
                }
            }
        }
        seqs.push((pages, len));
    }
    let table = PageTable::from_sequences(l.page_size, seqs.iter().map(|(pg, n)| (*pg, *n)));
    (k, v, table)
}

/// Random K and V scales in [0.25, 2] for a scaled layout (as the
/// harness's `kv_scales`).
pub fn kv_scales(l: &KvLayoutSpec, rng: &mut Rng) -> Option<(Vec<f32>, Vec<f32>)> {
    let n = l.scale.len(l.kv_heads);
    let mut one = || {
        (0..n)
            .map(|_| (1.125 + 0.875 * rng.uniform()) as f32)
            .collect()
    };
    (n > 0).then(|| (one(), one()))
}

/// New query tokens per sequence for prefill (the harness's `q_lens`).
pub fn q_lens(lens: &[usize]) -> Vec<usize> {
    lens.iter()
        .enumerate()
        .map(|(i, &len)| {
            if len <= 64 {
                len
            } else {
                1 + (len * 7 + i * 13) % 48
            }
        })
        .collect()
}

/// A prefix sum from 0.
pub fn indptr(counts: &[usize]) -> Vec<i32> {
    std::iter::once(0)
        .chain(counts.iter().scan(0i32, |acc, &n| {
            *acc += n as i32;
            Some(*acc)
        }))
        .collect()
}

/// One attention case's inputs.
pub struct AttentionInputs<Q, T> {
    /// The K arena.
    pub k: Vec<T>,
    /// The V arena.
    pub v: Vec<T>,
    /// The batch's pages.
    pub table: PageTable,
    /// Query rows per sequence (decode: one each).
    pub qo_indptr: Vec<i32>,
    /// `[rows][q_heads][head_dim]`.
    pub q: Vec<Q>,
    /// One sink logit per query head.
    pub sinks: Option<Vec<f32>>,
    /// One ALiBi slope per query head (`alibi = given`).
    pub slopes: Option<Vec<f32>>,
    /// fp8 K and V scales.
    pub scales: Option<(Vec<f32>, Vec<f32>)>,
}

impl<Q: Element, T: Element> AttentionInputs<Q, T> {
    /// The inputs of a decode (`prefill` false) or prefill case, in the
    /// harness's order of draws.
    pub fn draw(spec: &AttentionSpec, lens: &[usize], prefill: bool, seed: u64) -> Self {
        let mut rng = Rng(seed);
        let (k, v, table) = paged_inputs::<T>(&spec.kv, lens, &mut rng);
        let qo_indptr = if prefill {
            indptr(&q_lens(lens))
        } else {
            (0..=lens.len() as i32).collect()
        };
        let rows = *qo_indptr.last().unwrap_or(&0) as usize;
        let n = rows * spec.q_heads as usize * spec.kv.head_dim as usize;
        let q = (0..n).map(|_| Q::from_f64(3.0 * rng.uniform())).collect();
        let sinks = spec.sinks.then(|| {
            (0..spec.q_heads)
                .map(|_| (3.0 * rng.uniform()) as f32)
                .collect()
        });
        let slopes = (spec.alibi == Some(Alibi::Given)).then(|| {
            (0..spec.q_heads)
                .map(|_| (0.3 * rng.uniform().abs()) as f32)
                .collect()
        });
        let scales = kv_scales(&spec.kv, &mut rng);
        AttentionInputs {
            k,
            v,
            table,
            qo_indptr,
            q,
            sinks,
            slopes,
            scales,
        }
    }
}

/// One append case's inputs: arenas of 9 pages, new rows, shuffled slots.
pub struct AppendInputs<S, T> {
    /// K before the append.
    pub k: Vec<T>,
    /// V before the append.
    pub v: Vec<T>,
    /// New K rows `[tokens][kv_heads][head_dim]`, in the source dtype.
    pub k_new: Vec<S>,
    /// New V rows.
    pub v_new: Vec<S>,
    /// One slot per row, one of them padding (-1).
    pub slots: Vec<i64>,
    /// fp8 scales.
    pub scales: Option<(Vec<f32>, Vec<f32>)>,
}

/// Shuffled slots over 9 pages, 37 tokens (fewer when that is more than
/// the slots), one of them padding.
fn slots(l: &KvLayoutSpec, rng: &mut Rng) -> Vec<i64> {
    let mut slots: Vec<i64> = (0..(9 * l.page_size as usize) as i64).collect();
    rng.shuffle(&mut slots);
    let tokens = 37.min(slots.len());
    slots.truncate(tokens);
    slots[tokens / 2] = -1;
    slots
}

impl<S: Element, T: Element> AppendInputs<S, T> {
    /// An unscaled layout: random arenas and rows of its dtype (`S` = `T`).
    /// An fp8 layout: NaN arenas, f32 rows from 2^-14 to 2^10 with an
    /// infinity (subnormals to saturation), and scales.
    pub fn draw(l: &KvLayoutSpec, seed: u64) -> Self {
        let mut rng = Rng(seed);
        let elems = 9 * l.page_elems() as usize;
        let row = l.kv_heads as usize * l.head_dim as usize;
        if !l.dtype.is_fp8() {
            let k: Vec<T> = (0..elems).map(|_| T::from_f64(rng.uniform())).collect();
            let v: Vec<T> = (0..elems).map(|_| T::from_f64(rng.uniform())).collect();
            let slots = slots(l, &mut rng);
            let n = slots.len() * row;
            let k_new = (0..n).map(|_| S::from_f64(rng.uniform())).collect();
            let v_new = (0..n).map(|_| S::from_f64(rng.uniform())).collect();
            return AppendInputs {
                k,
                v,
                k_new,
                v_new,
                slots,
                scales: None,
            };
        }
        let nan = T::from_f64(F8E4M3::from_f32(f32::NAN).to_f64());
        let slots = slots(l, &mut rng);
        let scales = kv_scales(l, &mut rng);
        let mut x = |_| {
            let e = rng.below(25) as i32 - 14;
            S::from_f64(f64::from((rng.uniform() * 2f64.powi(e)) as f32))
        };
        let n = slots.len() * row;
        let mut k_new: Vec<S> = (0..n).map(&mut x).collect();
        let v_new = (0..n).map(&mut x).collect();
        if let Some(first) = k_new.get_mut(3) {
            *first = S::from_f64(f64::INFINITY);
        }
        AppendInputs {
            k: vec![nan; elems],
            v: vec![nan; elems],
            k_new,
            v_new,
            slots,
            scales,
        }
    }
}
