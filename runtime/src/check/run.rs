//! The launches of [`super::check_kernel`]: attention (decode, split-K,
//! prefill) and append, each compared with the reference.

use attnforge_codegen::{Alibi, Arch, AttentionSpec, DType, KernelKind, KvLayoutSpec, F8E4M3};

use super::{dequantize, kv_scales, paged_inputs, q_lens, Cases, CheckError, Outcome, Rng, Run};
use crate::cpu::{CpuDevice, Element, Mode};
use crate::launch::WithElements;
use crate::reference::{self, rel_l2, tolerance};
use crate::{KvScales, Params, Split};

/// One batch (case number `case` of the seed), at every arch and mode of
/// `cases`, run with the host types of the spec's dtypes.
pub(super) struct Batch<'a> {
    pub device: &'a CpuDevice,
    pub kind: KernelKind,
    pub spec: &'a AttentionSpec,
    pub run: Run,
    pub seed: u64,
    pub case: usize,
    pub lens: &'a [usize],
    pub cases: &'a Cases<'a>,
    pub out: &'a mut Vec<Outcome>,
}

impl WithElements for Batch<'_> {
    type Output = Result<(), CheckError>;
    fn run<Q: Element, T: Element>(self) -> Result<(), CheckError> {
        check_attention::<Q, T>(self)
    }
}

fn check_attention<Q: Element, T: Element>(b: Batch<'_>) -> Result<(), CheckError> {
    let Batch {
        device,
        kind,
        spec,
        run,
        seed,
        case,
        lens,
        cases,
        out,
    } = b;
    // fp8: the reference runs on the dequantized cache, so what is left is
    // the query dtype's rounding: its tolerance, stricter than the 5e-2
    // that `tolerance(F8E4M3)` allows.
    let tol = match spec.kv.dtype {
        DType::F8E4M3 => tolerance(spec.query_dtype()),
        kv => tolerance(kv).max(tolerance(spec.query_dtype())),
    };
    let mut rng = Rng(seed ^ (case as u64 * 7919));
    let s = paged_inputs::<T>(&spec.kv, lens, &mut rng);
    let qo: Vec<i32> = match run {
        Run::Prefill => std::iter::once(0)
            .chain(q_lens(lens).iter().scan(0, |acc, &n| {
                *acc += n as i32;
                Some(*acc)
            }))
            .collect(),
        _ => (0..=lens.len() as i32).collect(),
    };
    let rows = *qo.last().unwrap_or(&0) as usize;
    let n = rows * spec.q_heads as usize * spec.kv.head_dim as usize;
    // Larger queries make the softmax peaked, not uniform.
    let q: Vec<Q> = (0..n).map(|_| Q::from_f64(3.0 * rng.uniform())).collect();
    let sinks: Option<Vec<f32>> = spec.sinks.then(|| {
        (0..spec.q_heads)
            .map(|_| (3.0 * rng.uniform()) as f32)
            .collect()
    });
    let slopes: Option<Vec<f32>> = (spec.alibi == Some(Alibi::Given)).then(|| {
        (0..spec.q_heads)
            .map(|_| (0.3 * rng.uniform().abs()) as f32)
            .collect()
    });
    let scales = kv_scales(&spec.kv, &mut rng);
    let fq = |x: &[Q]| x.iter().map(|e| e.to_f64()).collect::<Vec<f64>>();
    let f32s = |x: &Option<Vec<f32>>| {
        x.as_ref()
            .map(|v| v.iter().map(|&e| f64::from(e)).collect())
    };
    let var = reference::Variants {
        sinks: f32s(&sinks),
        alibi_slopes: f32s(&slopes),
    };
    let (k, v) = (
        dequantize(&spec.kv, &s.k, scales.as_ref().map(|s| &s.0[..])),
        dequantize(&spec.kv, &s.v, scales.as_ref().map(|s| &s.1[..])),
    );
    let want = reference::prefill_with(
        &match run {
            Run::Prefill => *spec,
            // A decode query is its sequence's last token.
            _ => AttentionSpec {
                causal: true,
                ..*spec
            },
        },
        &var,
        &fq(&q),
        &qo,
        &k,
        &v,
        &s.table,
    );
    let work: usize = lens.iter().zip(q_lens(lens)).map(|(l, q)| l * q).sum();
    for &arch in cases.archs {
        for &mode in cases.modes {
            if run == Run::Prefill && work > 50_000 && mode == Mode::Checked {
                continue;
            }
            let params = Params {
                sinks: sinks.as_deref(),
                alibi_slopes: slopes.as_deref(),
                split: match run {
                    Run::Decode(split) => split,
                    _ => Split::Off,
                },
                kv_scales: scales.as_ref().map(|(k, v)| KvScales { k, v }),
            };
            let mut o = vec![Q::from_f64(f64::NAN); n];
            let t = arch.target();
            match run {
                Run::Prefill => device.prefill(
                    spec, t, mode, &params, &q, &qo, &s.k, &s.v, &s.table, &mut o,
                ),
                _ => device.decode_ext(spec, t, mode, &params, &q, &s.k, &s.v, &s.table, &mut o),
            }
            .map_err(|source| CheckError {
                kind,
                run,
                arch,
                mode,
                lens: lens.to_vec(),
                source: Box::new(source),
            })?;
            let got = fq(&o);
            let error = if got.iter().all(|x| x.is_finite()) {
                rel_l2(&got, &want)
            } else {
                f64::INFINITY
            };
            out.push(Outcome {
                kind,
                run,
                arch,
                mode,
                lens: lens.to_vec(),
                error,
                tolerance: tol,
            });
        }
    }
    Ok(())
}

/// The fraction of elements whose bits differ.
fn mismatch<T: Element>(got: &[T], want: &[T], bits: impl Fn(T) -> u64) -> f64 {
    let bad = got
        .iter()
        .zip(want)
        .filter(|(a, b)| bits(**a) != bits(**b))
        .count();
    bad as f64 / got.len().max(1) as f64
}

/// Shuffled slots over 9 pages, 37 tokens (fewer when that is more than
/// the slots), one of them padding (-1, skipped).
fn slots(l: &KvLayoutSpec, rng: &mut Rng) -> Vec<i64> {
    let mut slots: Vec<i64> = (0..(9 * l.page_size as usize) as i64).collect();
    rng.shuffle(&mut slots);
    let tokens = 37.min(slots.len());
    slots.truncate(tokens);
    slots[tokens / 2] = -1;
    slots
}

fn append_error(arch: Arch, mode: Mode, source: crate::RuntimeError) -> CheckError {
    CheckError {
        kind: KernelKind::Append,
        run: Run::Append,
        arch,
        mode,
        lens: Vec::new(),
        source: Box::new(source),
    }
}

/// An append's outcome: `error` is the fraction of arena elements that
/// differ from the reference's, and none may.
fn append_outcome(arch: Arch, mode: Mode, error: f64) -> Outcome {
    Outcome {
        kind: KernelKind::Append,
        run: Run::Append,
        arch,
        mode,
        lens: Vec::new(),
        error,
        tolerance: 0.0,
    }
}

/// Append of random rows into random arenas, bit for bit against the
/// reference append.
pub(super) fn append<T: Element>(
    device: &CpuDevice,
    l: &KvLayoutSpec,
    arch: Arch,
    mode: Mode,
    seed: u64,
) -> Result<Outcome, CheckError> {
    let mut rng = Rng(seed ^ 0xa99e);
    let elems = 9 * l.page_elems() as usize;
    let k0: Vec<T> = (0..elems).map(|_| T::from_f64(rng.uniform())).collect();
    let v0: Vec<T> = (0..elems).map(|_| T::from_f64(rng.uniform())).collect();
    let slots = slots(l, &mut rng);
    let row = l.kv_heads as usize * l.head_dim as usize;
    let k_new: Vec<T> = (0..slots.len() * row)
        .map(|_| T::from_f64(rng.uniform()))
        .collect();
    let v_new: Vec<T> = (0..slots.len() * row)
        .map(|_| T::from_f64(rng.uniform()))
        .collect();
    let (mut kw, mut vw) = (k0.clone(), v0.clone());
    reference::append(l, &k_new, &v_new, &slots, &mut kw, &mut vw);
    let (mut k, mut v) = (k0, v0);
    device
        .append(
            l,
            arch.target(),
            mode,
            &k_new,
            &v_new,
            &slots,
            &mut k,
            &mut v,
        )
        .map_err(|e| append_error(arch, mode, e))?;
    // Bits, so that a NaN written where the reference has one matches.
    let bits = |x: T| x.to_f64().to_bits();
    Ok(append_outcome(
        arch,
        mode,
        (mismatch(&k, &kw, bits) + mismatch(&v, &vw, bits)) / 2.0,
    ))
}

/// fp8 append: f32 rows quantized with the layout's scales. The expected
/// arenas come from the host conversion (`F8E4M3::from_f32`, itself checked
/// against a search over every code), so this checks the kernel's rounding
/// and saturation bit for bit.
pub(super) fn append_fp8(
    device: &CpuDevice,
    l: &KvLayoutSpec,
    arch: Arch,
    mode: Mode,
    seed: u64,
) -> Result<Outcome, CheckError> {
    let mut rng = Rng(seed ^ 0xf8a9);
    let elems = 9 * l.page_elems() as usize;
    let nan = F8E4M3::from_f32(f32::NAN);
    let (k0, v0) = (vec![nan; elems], vec![nan; elems]);
    let slots = slots(l, &mut rng);
    let given = kv_scales(l, &mut rng);
    let (ks, vs) = given.clone().unwrap_or_else(|| (vec![1.0], vec![1.0]));
    let (d, h) = (l.head_dim as usize, l.kv_heads as usize);
    // Magnitudes from 2^-14 to 2^10 (subnormals to saturation), with an
    // infinity: every branch of the conversion.
    let mut x = |_| {
        let e = rng.below(25) as i32 - 14;
        (rng.uniform() * 2f64.powi(e)) as f32
    };
    let mut k_new: Vec<f32> = (0..slots.len() * h * d).map(&mut x).collect();
    let v_new: Vec<f32> = (0..slots.len() * h * d).map(&mut x).collect();
    if let Some(first) = k_new.get_mut(3) {
        *first = f32::INFINITY;
    }
    let quantize = |rows: &[f32], s: &[f32]| -> Vec<F8E4M3> {
        rows.iter()
            .enumerate()
            .map(|(i, &x)| F8E4M3::from_f32(x / s[if s.len() == 1 { 0 } else { (i / d) % h }]))
            .collect()
    };
    let (mut kw, mut vw) = (k0.clone(), v0.clone());
    let (kq, vq) = (quantize(&k_new, &ks), quantize(&v_new, &vs));
    reference::append(l, &kq, &vq, &slots, &mut kw, &mut vw);
    let (mut k, mut v) = (k0, v0);
    let scales = given.as_ref().map(|(k, v)| KvScales { k, v });
    device
        .append_ext(
            l,
            arch.target(),
            mode,
            scales,
            &k_new,
            &v_new,
            &slots,
            &mut k,
            &mut v,
        )
        .map_err(|e| append_error(arch, mode, e))?;
    let bits = |x: F8E4M3| u64::from(x.0);
    Ok(append_outcome(
        arch,
        mode,
        (mismatch(&k, &kw, bits) + mismatch(&v, &vw, bits)) / 2.0,
    ))
}
