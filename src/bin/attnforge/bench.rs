//! `attnforge bench`: the spec's CPU figures. Decode at the host target in
//! GB/s of K/V read, beside memcpy of as many bytes measured in the same
//! run; a causal prompt's prefill in attention TFLOP/s; JIT compile time of
//! every kernel at each target, fast and checked.

use std::time::{Duration, Instant};

use attnforge::codegen::cpu::{compile, CodeSource, CpuOptions};
use attnforge::codegen::kernels::{generate, symbol};
use attnforge::runtime::bench::{median_time, memcpy};
use attnforge::runtime::check::{kv_scales, paged_inputs, Rng};
use attnforge::runtime::cpu::{CpuDevice, Element, Mode};
use attnforge::runtime::launch::{with_elements, WithElements};
use attnforge::runtime::{KvScales, Params, Split};
use attnforge::{Alibi, Arch, AttentionSpec};
use indicatif::{ProgressBar, ProgressStyle};

use crate::spec::{self, SpecArgs};
use crate::{table, Failure};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    spec: SpecArgs,
    /// Decode: sequences in the batch.
    #[arg(long, default_value_t = 16)]
    seqs: usize,
    /// Decode: tokens per sequence.
    #[arg(long, default_value_t = 2048)]
    len: usize,
    /// Prefill: tokens of the one prompt.
    #[arg(long, default_value_t = 1024)]
    prompt: usize,
    /// Timed runs per figure (their median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Targets whose JIT compile time is measured: comma-separated or `all`.
    #[arg(long, default_value = "gfx90a,gfx1030,host")]
    jit_arch: String,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One figure: what, how long, and its rate.
struct Figure {
    what: String,
    time: Duration,
    rate: String,
    json: serde_json::Value,
}

pub fn run(a: Args) -> Result<(), Failure> {
    // Compile times, not cache reads: set before any thread starts.
    std::env::set_var("ATTNFORGE_JIT_CACHE", "off");
    let spec = a.spec.resolve()?;
    let jit_archs = spec::archs(&a.jit_arch, true)?;
    if a.seqs == 0 || a.len == 0 || a.prompt == 0 {
        return Err(Failure::Usage(
            "--seqs, --len and --prompt must be at least 1".into(),
        ));
    }
    let kernels = spec.kernels();
    let steps = kernels.len() * jit_archs.len() * 2 + 2 * usize::from(spec.attention.is_some());
    let bar = ProgressBar::new(steps as u64).with_style(
        ProgressStyle::with_template("{spinner} [{elapsed}] {bar:30} {pos}/{len} {msg}")
            .expect("a valid template"),
    );
    // JIT first: the decode and prefill runs below reuse what it compiled.
    let mut jit = Vec::new();
    for k in &kernels {
        for &arch in &jit_archs {
            for checked in [false, true] {
                bar.set_message(format!("JIT {} @{arch}", symbol(k)));
                let start = Instant::now();
                let g = generate(k, arch.target())?;
                let c = compile(&g.kernel, &g.analysis, CpuOptions { checked })?;
                let time = start.elapsed();
                if c.code_source() != CodeSource::Compiled {
                    return Err(Failure::Step(format!(
                        "{}: the JIT served a cached compilation; nothing to time",
                        symbol(k)
                    )));
                }
                jit.push((symbol(k), k.kind().name(), arch, checked, time));
                bar.inc(1);
            }
        }
    }
    let mut figures = Vec::new();
    if let Some(att) = &spec.attention {
        let device = CpuDevice::new();
        bar.set_message("decode");
        figures.extend(dispatch(&device, att, &a, Work::Decode)?);
        bar.inc(1);
        bar.set_message("prefill");
        figures.extend(dispatch(&device, att, &a, Work::Prefill)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    if a.json {
        table::json(&serde_json::json!({
            "figures": figures.iter().map(|f| f.json.clone()).collect::<Vec<_>>(),
            "jit": jit.iter().map(|(s, kind, arch, checked, t)| serde_json::json!({
                "symbol": s, "kind": kind, "arch": arch.name(),
                "mode": if *checked { "checked" } else { "fast" }, "ms": ms(*t),
            })).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    if !figures.is_empty() {
        let rows: Vec<Vec<String>> = figures
            .iter()
            .map(|f| {
                vec![
                    f.what.clone(),
                    format!("{:.2} ms", ms(f.time)),
                    f.rate.clone(),
                ]
            })
            .collect();
        table::print(&["host target (CPU)", ">median", "rate"], &rows);
        table::out("");
    }
    let rows: Vec<Vec<String>> = jit
        .iter()
        .map(|(s, _, arch, checked, t)| {
            vec![
                s.clone(),
                arch.name().to_string(),
                if *checked { "checked" } else { "fast" }.to_string(),
                format!("{:.0} ms", ms(*t)),
            ]
        })
        .collect();
    table::print(&["JIT compile", "target", "mode", ">time"], &rows);
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Work {
    Decode,
    Prefill,
}

/// One figure's measurement, run with the host types of the spec's dtypes.
struct Measure<'a> {
    device: &'a CpuDevice,
    spec: &'a AttentionSpec,
    args: &'a Args,
    work: Work,
}

impl WithElements for Measure<'_> {
    type Output = Result<Vec<Figure>, Failure>;
    fn run<Q: Element, T: Element>(self) -> Self::Output {
        measure::<Q, T>(self.device, self.spec, self.args, self.work)
    }
}

/// `measure` with the host types of the spec's dtypes (fp8 queries are
/// refused by the spec's validation before this).
fn dispatch(
    device: &CpuDevice,
    spec: &AttentionSpec,
    args: &Args,
    work: Work,
) -> Result<Vec<Figure>, Failure> {
    let m = Measure {
        device,
        spec,
        args,
        work,
    };
    with_elements(spec.query_dtype(), spec.kv.dtype, m)
}

/// Visible (query, key) pairs of a `prompt`-token prompt under `spec`'s
/// mask (causal, sliding window).
fn visible_pairs(spec: &AttentionSpec, prompt: usize) -> u64 {
    (0..prompt as u64)
        .map(|i| {
            let seen = if spec.causal { i + 1 } else { prompt as u64 };
            match spec.sliding_window {
                Some(w) if spec.causal => seen.min(u64::from(w)),
                _ => seen,
            }
        })
        .sum()
}

fn measure<Q: Element, T: Element>(
    device: &CpuDevice,
    spec: &AttentionSpec,
    a: &Args,
    work: Work,
) -> Result<Vec<Figure>, Failure> {
    let mut rng = Rng(0x5eed);
    let (seqs, len) = match work {
        Work::Decode => (a.seqs, a.len),
        Work::Prefill => (1, a.prompt),
    };
    let lens = vec![len; seqs];
    let s = paged_inputs::<T>(&spec.kv, &lens, &mut rng);
    let rows = match work {
        Work::Decode => seqs,
        Work::Prefill => a.prompt,
    };
    let row = spec.q_heads as usize * spec.kv.head_dim as usize;
    let q: Vec<Q> = (0..rows * row)
        .map(|_| Q::from_f64(rng.uniform()))
        .collect();
    let mut out = vec![Q::default(); q.len()];
    let per_head: Vec<f32> = (0..spec.q_heads).map(|_| 0.1).collect();
    let scales = kv_scales(&spec.kv, &mut rng);
    let params = Params {
        sinks: spec.sinks.then_some(&per_head[..]),
        alibi_slopes: (spec.alibi == Some(Alibi::Given)).then_some(&per_head[..]),
        split: Split::Off,
        kv_scales: scales.as_ref().map(|(k, v)| KvScales { k, v }),
    };
    let t = Arch::Host.target();
    let mut failure = None;
    let mut timed = |f: &mut dyn FnMut() -> Result<(), attnforge::runtime::RuntimeError>| {
        median_time(a.runs, || {
            if let Err(e) = f() {
                failure.get_or_insert(e);
            }
        })
    };
    let d = spec.kv.head_dim as u64;
    let figures = match work {
        Work::Decode => {
            // K/V bytes the batch reads: every token's row of every KV head.
            let bytes = 2
                * seqs
                * len
                * spec.kv.kv_heads as usize
                * spec.kv.head_dim as usize
                * spec.kv.dtype.size_bytes() as usize;
            let time = timed(&mut || {
                device.decode_ext(
                    spec,
                    t,
                    Mode::Fast,
                    &params,
                    &q,
                    &s.k,
                    &s.v,
                    &s.table,
                    &mut out,
                )
            });
            let m = memcpy(bytes);
            let gbs = bytes as f64 / time.as_secs_f64() / 1e9;
            vec![Figure {
                what: format!("decode, {seqs} × {len} tokens"),
                time,
                rate: format!(
                    "{gbs:.2} GB/s of K/V = {:.0}% of {}-thread memcpy ({:.2} GB/s)",
                    100.0 * gbs / m.all_threads,
                    m.threads,
                    m.all_threads
                ),
                json: serde_json::json!({
                    "figure": "decode", "seqs": seqs, "len": len, "ms": time.as_secs_f64() * 1e3,
                    "kv_bytes": bytes, "gb_per_s": gbs, "memcpy_gb_per_s": m.all_threads,
                    "memcpy_1_thread_gb_per_s": m.one_thread, "threads": m.threads,
                }),
            }]
        }
        Work::Prefill => {
            let qo = [0, a.prompt as i32];
            let time = timed(&mut || {
                device.prefill(
                    spec,
                    t,
                    Mode::Fast,
                    &params,
                    &q,
                    &qo,
                    &s.k,
                    &s.v,
                    &s.table,
                    &mut out,
                )
            });
            // Q·Kᵀ and P·V: 2·d multiply-adds each per visible pair and head.
            let flops = 4 * d * visible_pairs(spec, a.prompt) * u64::from(spec.q_heads);
            let tflops = flops as f64 / time.as_secs_f64() / 1e12;
            vec![Figure {
                what: format!("prefill, a {}-token prompt", a.prompt),
                time,
                rate: format!("{tflops:.3} attention TFLOP/s"),
                json: serde_json::json!({
                    "figure": "prefill", "prompt": a.prompt, "ms": time.as_secs_f64() * 1e3,
                    "flops": flops, "tflop_per_s": tflops,
                }),
            }]
        }
    };
    match failure {
        Some(e) => Err(Failure::Step(e.to_string())),
        None => Ok(figures),
    }
}
