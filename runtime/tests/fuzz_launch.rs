//! Fuzzing every launch of the CPU device (and so the validation it shares
//! with the HIP device): seeded random page tables, slot mappings,
//! `qo_indptr`, launch parameters and buffer sizes, valid ones and ones
//! broken at one place with an extreme value. Each call returns `Ok` with
//! the reference's result or a typed error that wrote nothing; nothing
//! panics, and guard zones around every arena and output prove that no
//! launch writes outside its outputs. Run in the release profile too
//! (scripts/test.sh), where overflow wraps instead of panicking.

use attnforge_codegen::{Alibi, Arch, AttentionSpec, DType, KvLayoutSpec, KvScale, Order};
use attnforge_runtime::cpu::{CpuDevice, Mode};
use attnforge_runtime::reference::{self, Variants};
use attnforge_runtime::{PageTable, Params, Split};

#[path = "../../tests/support/splitmix.rs"]
mod splitmix;
use splitmix::Rng;

/// An extreme i32: the edges, and just past the valid ones.
fn extreme(r: &mut Rng, near: i32) -> i32 {
    let xs = [
        0,
        1,
        -1,
        near,
        near + 1,
        near - 1,
        i32::MAX,
        i32::MIN,
        i32::MAX - 1,
    ];
    xs[r.below(xs.len())]
}

const PAGES: usize = 6;
const GUARD: usize = 64;
const POISON: u32 = 0x7fc0_dead;

fn layout() -> KvLayoutSpec {
    KvLayoutSpec {
        page_size: 4,
        kv_heads: 2,
        head_dim: 8,
        dtype: DType::F32,
        order: Order::Nhd,
        scale: KvScale::Unscaled,
    }
}

fn spec() -> AttentionSpec {
    AttentionSpec {
        causal: true,
        sinks: true,
        alibi: Some(Alibi::Given),
        ..AttentionSpec::new(layout(), 4)
    }
}

/// `n` values between guard zones of poison.
struct Guarded {
    buf: Vec<f32>,
    n: usize,
}

impl Guarded {
    fn new(n: usize, fill: impl FnMut() -> f32) -> Guarded {
        let mut buf = vec![f32::from_bits(POISON); GUARD];
        buf.extend(std::iter::repeat_with(fill).take(n));
        buf.extend(vec![f32::from_bits(POISON); GUARD]);
        Guarded { buf, n }
    }
    fn inner(&self) -> &[f32] {
        &self.buf[GUARD..GUARD + self.n]
    }
    fn inner_mut(&mut self) -> &mut [f32] {
        &mut self.buf[GUARD..GUARD + self.n]
    }
    fn guards_intact(&self) -> bool {
        let (a, b) = (&self.buf[..GUARD], &self.buf[GUARD + self.n..]);
        a.iter().chain(b).all(|x| x.to_bits() == POISON)
    }
}

/// A random batch's page table: valid, or (with `broken`) broken at one
/// place.
fn table(r: &mut Rng, broken: bool) -> PageTable {
    let p = layout().page_size as usize;
    let batch = r.below(4);
    let seqs: Vec<(Vec<i32>, usize)> = (0..batch)
        .map(|_| {
            let n = 1 + r.below(3);
            let pages = (0..n).map(|_| r.below(PAGES) as i32).collect();
            (pages, (n - 1) * p + 1 + r.below(p))
        })
        .collect();
    let mut t = PageTable::from_sequences(4, seqs.iter().map(|(pg, l)| (&pg[..], *l)));
    if !broken {
        return t;
    }
    match r.below(5) {
        0 if !t.indices.is_empty() => {
            let i = r.below(t.indices.len());
            t.indices[i] = extreme(r, PAGES as i32);
        }
        1 => {
            let i = r.below(t.indptr.len());
            let near = t.indptr[i];
            t.indptr[i] = extreme(r, near);
        }
        2 if !t.last_page_len.is_empty() => {
            let i = r.below(t.last_page_len.len());
            t.last_page_len[i] = extreme(r, p as i32);
        }
        3 => {
            t.indptr.push(extreme(r, 0));
        }
        _ => {
            t.last_page_len.push(1);
        }
    }
    t
}

/// `n`, or (with `broken`) a length near it: one off, none, or far off.
fn near(r: &mut Rng, n: usize, broken: bool) -> usize {
    if !broken {
        return n;
    }
    match r.below(4) {
        0 => n + 1,
        1 if n > 0 => n - 1,
        2 if n > 0 => 0,
        _ => n * 2 + 3,
    }
}

/// What a case breaks: nothing (half the cases), or one input.
fn breaks(r: &mut Rng, inputs: usize) -> Option<usize> {
    (!r.one_in(2)).then(|| r.below(inputs))
}

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| f64::from(v)).collect()
}

/// Compares a launch's output with the reference's (a row that sees no key
/// is 0 in the kernels; the sinks here always give it a denominator).
fn assert_close(got: &[f32], want: &[f64], what: &str) {
    let got = f64s(got);
    let err = reference::rel_l2(&got, want);
    assert!(err <= 1e-4, "{what}: relative L2 error {err}");
}

#[test]
fn decode_launches_are_ok_and_right_or_typed_errors_that_write_nothing() {
    let dev = CpuDevice::new();
    let (l, s) = (layout(), spec());
    let arena_len = PAGES * l.page_elems() as usize;
    let row = (s.q_heads * l.head_dim) as usize;
    let mut r = Rng(0xdec0de);
    let (mut ok, mut refused) = (0, 0);
    for case in 0..10_000 {
        let k = Guarded::new(arena_len, || r.f32());
        let v = Guarded::new(arena_len, || r.f32());
        let bad = breaks(&mut r, 7);
        let t = table(&mut r, bad == Some(0));
        let batch = t.batch();
        let q: Vec<f32> = (0..near(&mut r, batch * row, bad == Some(1)))
            .map(|_| r.f32())
            .collect();
        let mut out = Guarded::new(near(&mut r, batch * row, bad == Some(2)), || 7.0);
        let sinks: Vec<f32> = (0..near(&mut r, 4, bad == Some(3)))
            .map(|_| r.f32())
            .collect();
        let slopes: Vec<f32> = (0..near(&mut r, 4, bad == Some(4)))
            .map(|_| r.f32().abs())
            .collect();
        let split = match (bad == Some(5), r.below(4)) {
            (true, _) => Split::Fixed {
                chunk_tokens: [0, u32::MAX][r.below(2)],
            },
            (false, 0) => Split::Off,
            (false, 1) => Split::Fixed {
                chunk_tokens: [1, 3, 4, 1000][r.below(4)],
            },
            _ => Split::Auto,
        };
        let params = Params {
            sinks: (bad != Some(6)).then_some(&sinks[..]),
            alibi_slopes: (bad != Some(6) || r.one_in(2)).then_some(&slopes[..]),
            split,
            kv_scales: None,
        };
        let (k_before, v_before) = (k.inner().to_vec(), v.inner().to_vec());
        let res = dev.decode_ext(
            &s,
            Arch::Host.target(),
            Mode::Fast,
            &params,
            &q,
            k.inner(),
            v.inner(),
            &t,
            out.inner_mut(),
        );
        assert!(
            k.guards_intact() && v.guards_intact() && out.guards_intact(),
            "case {case}"
        );
        assert!(
            k.inner() == k_before && v.inner() == v_before,
            "case {case}: an input changed"
        );
        match res {
            Ok(()) => {
                ok += 1;
                let var = Variants {
                    sinks: Some(f64s(&sinks)),
                    alibi_slopes: Some(f64s(&slopes)),
                };
                let want = reference::decode_with(
                    &s,
                    &var,
                    &f64s(&q),
                    &f64s(k.inner()),
                    &f64s(v.inner()),
                    &t,
                );
                assert_close(out.inner(), &want, &format!("case {case}"));
            }
            Err(e) => {
                refused += 1;
                assert!(!e.to_string().is_empty());
                assert!(
                    out.inner().iter().all(|&x| x == 7.0),
                    "case {case}: {e} wrote"
                );
            }
        }
    }
    // Both outcomes are exercised, many times.
    assert!(ok > 1000 && refused > 1000, "{ok} ok, {refused} refused");
}

#[test]
fn prefill_launches_are_ok_and_right_or_typed_errors_that_write_nothing() {
    let dev = CpuDevice::new();
    let (l, s) = (layout(), spec());
    let arena_len = PAGES * l.page_elems() as usize;
    let row = (s.q_heads * l.head_dim) as usize;
    let mut r = Rng(0x9ef111);
    let (mut ok, mut refused) = (0, 0);
    for case in 0..10_000 {
        let k = Guarded::new(arena_len, || r.f32());
        let v = Guarded::new(arena_len, || r.f32());
        let bad = breaks(&mut r, 6);
        let t = table(&mut r, bad == Some(0));
        let batch = t.batch();
        // New tokens per sequence: at most its KV (valid), or broken.
        let mut indptr = vec![0i32];
        for b in 0..batch {
            let kv = t.seq_len(b, l.page_size).min(64);
            let n = 1 + r.below(kv.max(1));
            indptr.push(indptr[b] + n as i32);
        }
        if bad == Some(1) {
            match r.below(4) {
                0 => {
                    indptr.pop();
                }
                1 => indptr.push(indptr[indptr.len() - 1] + 1),
                _ => {
                    let i = r.below(indptr.len());
                    let near_v = indptr[i];
                    indptr[i] = extreme(&mut r, near_v);
                }
            }
        }
        let rows = indptr.last().copied().unwrap_or(0).clamp(0, 4096) as usize;
        let q: Vec<f32> = (0..near(&mut r, rows * row, bad == Some(2)))
            .map(|_| r.f32())
            .collect();
        let mut out = Guarded::new(near(&mut r, rows * row, bad == Some(3)), || 7.0);
        let sinks: Vec<f32> = (0..near(&mut r, 4, bad == Some(4)))
            .map(|_| r.f32())
            .collect();
        let slopes: Vec<f32> = (0..near(&mut r, 4, bad == Some(5)))
            .map(|_| r.f32().abs())
            .collect();
        let params = Params {
            sinks: Some(&sinks),
            alibi_slopes: Some(&slopes),
            ..Params::default()
        };
        let res = dev.prefill(
            &s,
            Arch::Host.target(),
            Mode::Fast,
            &params,
            &q,
            &indptr,
            k.inner(),
            v.inner(),
            &t,
            out.inner_mut(),
        );
        assert!(
            k.guards_intact() && v.guards_intact() && out.guards_intact(),
            "case {case}"
        );
        match res {
            Ok(()) => {
                ok += 1;
                let var = Variants {
                    sinks: Some(f64s(&sinks)),
                    alibi_slopes: Some(f64s(&slopes)),
                };
                let want = reference::prefill_with(
                    &s,
                    &var,
                    &f64s(&q),
                    &indptr,
                    &f64s(k.inner()),
                    &f64s(v.inner()),
                    &t,
                );
                assert_close(out.inner(), &want, &format!("case {case}"));
            }
            Err(e) => {
                refused += 1;
                assert!(
                    out.inner().iter().all(|&x| x == 7.0),
                    "case {case}: {e} wrote"
                );
            }
        }
    }
    assert!(ok > 1000 && refused > 1000, "{ok} ok, {refused} refused");
}

#[test]
fn append_launches_write_their_slots_or_are_typed_errors_that_write_nothing() {
    let dev = CpuDevice::new();
    let l = layout();
    let arena_len = PAGES * l.page_elems() as usize;
    let slots_max = (PAGES * l.page_size as usize) as i64;
    let row = (l.kv_heads * l.head_dim) as usize;
    let mut r = Rng(0xa99e4d);
    let (mut ok, mut refused) = (0, 0);
    for case in 0..10_000 {
        let mut k = Guarded::new(arena_len, || 0.5);
        let mut v = Guarded::new(arena_len, || -0.5);
        let bad = breaks(&mut r, 3);
        let tokens = r.below(6);
        // Distinct slots (or -1, skipped), sometimes one broken.
        let mut all: Vec<i64> = (0..slots_max).collect();
        let mut slots: Vec<i64> = (0..tokens)
            .map(|_| match r.one_in(6) {
                true => -1,
                false => all.swap_remove(r.below(all.len())),
            })
            .collect();
        if tokens > 0 && bad == Some(0) {
            let i = r.below(tokens);
            let xs = [
                slots_max,
                slots_max + 1,
                -2,
                i64::MAX,
                i64::MIN,
                slots_max * 1000,
            ];
            slots[i] = xs[r.below(xs.len())];
        }
        let k_new: Vec<f32> = (0..near(&mut r, tokens * row, bad == Some(1)))
            .map(|_| r.f32())
            .collect();
        let v_new: Vec<f32> = (0..near(&mut r, tokens * row, bad == Some(2)))
            .map(|_| r.f32())
            .collect();
        let (mut k_want, mut v_want) = (k.inner().to_vec(), v.inner().to_vec());
        let res = dev.append(
            &l,
            Arch::Host.target(),
            Mode::Fast,
            &k_new,
            &v_new,
            &slots,
            k.inner_mut(),
            v.inner_mut(),
        );
        assert!(k.guards_intact() && v.guards_intact(), "case {case}");
        match res {
            Ok(()) => {
                ok += 1;
                reference::append(&l, &k_new, &v_new, &slots, &mut k_want, &mut v_want);
                assert!(k.inner() == k_want && v.inner() == v_want, "case {case}");
            }
            Err(e) => {
                refused += 1;
                assert!(
                    k.inner() == k_want && v.inner() == v_want,
                    "case {case}: {e} wrote"
                );
            }
        }
    }
    assert!(ok > 1000 && refused > 1000, "{ok} ok, {refused} refused");
}
