//! One case on any [`Device`]: draw its inputs, launch, and return inputs
//! and outputs as raw arrays. The build half runs it on the CPU backend,
//! the run half on a `Gpu` over the CUDA driver (or the CPU driver here).

use attnforge_codegen::kernels::append_source_dtype;
use attnforge_codegen::{AttentionSpec, KvLayoutSpec};
use attnforge_runtime::device::Device;
use attnforge_runtime::reference::{self, Variants};
use attnforge_runtime::{KvScales, Params, Split};
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::inputs::{AppendInputs, AttentionInputs};
use crate::manifest::{Case, Kind};
use crate::raw::{with_raw, Array, RawElement, WithRaw};

/// What a case ran on and produced.
pub struct Executed {
    /// Its inputs, in a fixed order.
    pub inputs: Vec<Array>,
    /// Its outputs: `out`, or an append's `k` and `v` after it.
    pub outputs: Vec<Array>,
    /// SHA-256 of the inputs (see [`digest`]).
    pub sha256: String,
    /// The f64 reference's output (attention cases, when asked for).
    pub reference: Option<Vec<f64>>,
}

/// SHA-256 over each array's name, type, length and bytes.
pub fn digest(arrays: &[Array]) -> String {
    let mut h = Sha256::new();
    for a in arrays {
        h.update(a.name.as_bytes());
        h.update([0]);
        h.update(format!("{:?}", a.ty).as_bytes());
        h.update((a.bytes.len() as u64).to_le_bytes());
        h.update(&a.bytes);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `case` on `dev`, with the f64 reference's output too when
/// `reference` is set (attention cases).
pub fn execute<Dev: Device>(dev: &Dev, case: &Case, reference: bool) -> Result<Executed, Error> {
    let bad = |m: String| Error::bad_case(&case.id, m);
    let mut run = if case.kind == Kind::Append {
        let l = case.spec.to_layout().map_err(bad)?;
        with_raw(append_source_dtype(&l), l.dtype, AppendRun { dev, l, case })?
    } else {
        let a = case.spec.to_attention().map_err(bad)?;
        with_raw(
            a.query_dtype(),
            a.kv.dtype,
            AttentionRun {
                dev,
                a,
                case,
                reference,
            },
        )?
    };
    run.sha256 = digest(&run.inputs);
    Ok(run)
}

struct AttentionRun<'a, Dev> {
    dev: &'a Dev,
    a: AttentionSpec,
    case: &'a Case,
    reference: bool,
}

impl<Dev: Device> WithRaw for AttentionRun<'_, Dev> {
    type Output = Result<Executed, Error>;
    fn run<Q: RawElement, T: RawElement>(self) -> Result<Executed, Error> {
        let AttentionRun {
            dev,
            a,
            case,
            reference,
        } = self;
        let prefill = case.kind == Kind::Prefill;
        let x = AttentionInputs::<Q, T>::draw(&a, &case.lens, prefill, case.seed);
        let split = match (case.kind, case.split_chunk) {
            (Kind::Split, Some(chunk_tokens)) => Split::Fixed { chunk_tokens },
            (Kind::Split, None) => {
                return Err(Error::bad_case(
                    &case.id,
                    "a split case without split_chunk",
                ))
            }
            _ => Split::Off,
        };
        let params = Params {
            sinks: x.sinks.as_deref(),
            alibi_slopes: x.slopes.as_deref(),
            split,
            kv_scales: x.scales.as_ref().map(|(k, v)| KvScales { k, v }),
        };
        let mut out = vec![Q::from_f64(f64::NAN); x.q.len()];
        if prefill {
            dev.prefill(
                &a,
                &params,
                &x.q,
                &x.qo_indptr,
                &x.k,
                &x.v,
                &x.table,
                &mut out,
            )?;
        } else {
            dev.decode_ext(&a, &params, &x.q, &x.k, &x.v, &x.table, &mut out)?;
        }
        let mut inputs = vec![
            Array::new("k", &x.k),
            Array::new("v", &x.v),
            Array::new("kv_indptr", &x.table.indptr),
            Array::new("kv_indices", &x.table.indices),
            Array::new("kv_last_page_len", &x.table.last_page_len),
            Array::new("qo_indptr", &x.qo_indptr),
            Array::new("q", &x.q),
        ];
        if let Some(s) = &x.sinks {
            inputs.push(Array::new("sinks", s));
        }
        if let Some(s) = &x.slopes {
            inputs.push(Array::new("alibi_slopes", s));
        }
        if let Some((k, v)) = &x.scales {
            inputs.push(Array::new("k_scale", k));
            inputs.push(Array::new("v_scale", v));
        }
        let reference = reference.then(|| reference_output(&a, &x, prefill));
        Ok(Executed {
            inputs,
            outputs: vec![Array::new("out", &out)],
            sha256: String::new(),
            reference,
        })
    }
}

/// The f64 reference on the dequantized arenas.
fn reference_output<Q: RawElement, T: RawElement>(
    a: &AttentionSpec,
    x: &AttentionInputs<Q, T>,
    prefill: bool,
) -> Vec<f64> {
    let f = |s: &Option<Vec<f32>>| {
        s.as_ref()
            .map(|v| v.iter().map(|&e| f64::from(e)).collect())
    };
    let var = Variants {
        sinks: f(&x.sinks),
        alibi_slopes: f(&x.slopes),
    };
    let (ks, vs) = match &x.scales {
        Some((k, v)) => (Some(&k[..]), Some(&v[..])),
        None => (None, None),
    };
    let k = dequantize(&a.kv, &x.k, ks);
    let v = dequantize(&a.kv, &x.v, vs);
    let q: Vec<f64> = x.q.iter().map(|e| e.to_f64()).collect();
    // A decode query is its sequence's last token: what a causal query there sees.
    let spec = AttentionSpec {
        causal: a.causal || !prefill,
        ..*a
    };
    reference::prefill_with(&spec, &var, &q, &x.qo_indptr, &k, &v, &x.table)
}

/// An arena's values in f64, times its KV head's scale when scaled.
pub fn dequantize<T: RawElement>(l: &KvLayoutSpec, x: &[T], scales: Option<&[f32]>) -> Vec<f64> {
    let (d, h, p) = (
        l.head_dim as usize,
        l.kv_heads as usize,
        l.page_size as usize,
    );
    x.iter()
        .enumerate()
        .map(|(i, e)| {
            let head = match l.order {
                attnforge_codegen::Order::Nhd => (i / d) % h,
                attnforge_codegen::Order::Hnd => (i / (d * p)) % h,
            };
            match scales {
                Some(s) => e.to_f64() * f64::from(s[if s.len() == 1 { 0 } else { head }]),
                None => e.to_f64(),
            }
        })
        .collect()
}

struct AppendRun<'a, Dev> {
    dev: &'a Dev,
    l: KvLayoutSpec,
    case: &'a Case,
}

impl<Dev: Device> WithRaw for AppendRun<'_, Dev> {
    type Output = Result<Executed, Error>;
    fn run<S: RawElement, T: RawElement>(self) -> Result<Executed, Error> {
        let AppendRun { dev, l, case } = self;
        let x = AppendInputs::<S, T>::draw(&l, case.seed);
        let (mut k, mut v) = (x.k.clone(), x.v.clone());
        let scales = x.scales.as_ref().map(|(k, v)| KvScales { k, v });
        dev.append_ext(&l, scales, &x.k_new, &x.v_new, &x.slots, &mut k, &mut v)?;
        let mut inputs = vec![
            Array::new("k_before", &x.k),
            Array::new("v_before", &x.v),
            Array::new("k_new", &x.k_new),
            Array::new("v_new", &x.v_new),
            Array::new("slots", &x.slots),
        ];
        if let Some((k, v)) = &x.scales {
            inputs.push(Array::new("k_scale", k));
            inputs.push(Array::new("v_scale", v));
        }
        Ok(Executed {
            inputs,
            outputs: vec![Array::new("k", &k), Array::new("v", &v)],
            sha256: String::new(),
            reference: None,
        })
    }
}

/// The reference append of a case, for the build half: its arenas after
/// the append, fp8 rows quantized on the host (`x / scale`, rounded to
/// nearest even and saturated, as the numeric tests' harness does).
pub fn reference_append(l: &KvLayoutSpec, inputs: &[Array]) -> Option<(Array, Array)> {
    let get = |n: &str| inputs.iter().find(|a| a.name == n);
    with_raw(append_source_dtype(l), l.dtype, RefAppend { l, get: &get })
}

type Getter<'a> = &'a dyn Fn(&str) -> Option<&'a Array>;

struct RefAppend<'a> {
    l: &'a KvLayoutSpec,
    get: Getter<'a>,
}

impl WithRaw for RefAppend<'_> {
    type Output = Option<(Array, Array)>;
    fn run<S: RawElement, T: RawElement>(self) -> Option<(Array, Array)> {
        let mut k = (self.get)("k_before")?.typed::<T>()?;
        let mut v = (self.get)("v_before")?.typed::<T>()?;
        let scale = |name: &str| match (self.get)(name) {
            Some(a) => a.typed::<f32>(),
            None => Some(vec![1.0]),
        };
        let (ks, vs) = (scale("k_scale")?, scale("v_scale")?);
        let (d, h) = (self.l.head_dim as usize, self.l.kv_heads as usize);
        let quantize = |rows: Vec<S>, s: &[f32]| -> Vec<T> {
            rows.iter()
                .enumerate()
                .map(|(i, x)| {
                    if !self.l.dtype.is_fp8() {
                        return T::from_f64(x.to_f64());
                    }
                    let sc = s[if s.len() == 1 { 0 } else { (i / d) % h }];
                    T::from_f64(f64::from(x.to_f64() as f32 / sc))
                })
                .collect()
        };
        let kn = quantize((self.get)("k_new")?.typed::<S>()?, &ks);
        let vn = quantize((self.get)("v_new")?.typed::<S>()?, &vs);
        let slots = (self.get)("slots")?.typed::<i64>()?;
        reference::append(self.l, &kn, &vn, &slots, &mut k, &mut v);
        Some((Array::new("k", &k), Array::new("v", &v)))
    }
}
