//! The serving simulation shared by the per-model examples.
//!
//! A stream of requests with varied prompt and output lengths enters a
//! `KvCache` of limited capacity. Each step admits waiting requests (their
//! prompts' K/V go in through the append kernel), then decodes one token for
//! every running sequence: it appends the new token's K/V and runs the
//! decode kernel on every layer. Q/K/V are random; the shapes are the
//! model's.
//!
//! When the cache is full, `append_tokens` returns `CapacityExceeded` and
//! nothing is evicted behind the engine's back. The engine then preempts
//! explicitly: the most recently admitted sequence leaves the cache and
//! goes back to the front of the queue. It is recomputed later, as vLLM's
//! recompute preemption does: its prompt is appended again and its output
//! decoded again from the start, so the decoded-token count includes that
//! redone work. Preemptions are counted. A sample of steps is checked against the
//! f64 reference.
//!
//! A prompt's attention runs on the prefill kernel: its K/V appended, then
//! every prompt token attends to the tokens before it (causal) in one launch
//! per layer.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use attnforge::prelude::*;
use attnforge::runtime::cpu::{Element, Mode};
use attnforge::runtime::driver::cpu::CpuDriver;
use attnforge::runtime::driver::hip::HipDriver;
use attnforge::runtime::driver::Driver;
use attnforge::runtime::launch::{Gpu, Kernels, LaunchParams, Workspace, WorkspaceLimits};
use attnforge::runtime::{
    reference, AllocError, CacheError, KvCache, PageTable, RuntimeError, SeqId, Split,
};
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// The CPU device: kernels JIT-compiled through LLVM (host target).
    Cpu,
    /// The HIP device (an AMD GPU with ROCm).
    Hip,
}

#[derive(Parser, Debug)]
pub struct Args {
    /// Where the kernels run.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub backend: Backend,
    /// Requests in the stream.
    #[arg(long, default_value_t = 24, value_parser = small)]
    pub requests: usize,
    /// Most sequences decoded together.
    #[arg(long, default_value_t = 8, value_parser = small)]
    pub max_batch: usize,
    /// Pages per layer in the cache (the capacity limit).
    #[arg(long, default_value_t = 160)]
    pub max_pages: u32,
    /// Layers simulated (the K/V of each is real; fewer than the model's
    /// keep the default run short).
    #[arg(long, default_value_t = 2)]
    pub layers: u32,
    /// Prompt lengths are drawn from MIN..=MAX.
    #[arg(long, default_value_t = 32, value_parser = small)]
    pub prompt_min: usize,
    #[arg(long, default_value_t = 512, value_parser = small)]
    pub prompt_max: usize,
    /// Output lengths are drawn from MIN..=MAX.
    #[arg(long, default_value_t = 16, value_parser = small)]
    pub output_min: usize,
    #[arg(long, default_value_t = 128, value_parser = small)]
    pub output_max: usize,
    /// Check every Nth step against the f64 reference (0: never).
    #[arg(long, default_value_t = 16)]
    pub check_every: usize,
    /// Seed for lengths and values.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Counts and lengths: 1 to 10^6.
fn small(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a number from 1 to 1000000")),
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
    fn value(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    }
}

#[derive(Clone, Copy)]
struct Request {
    id: usize,
    prompt: usize,
    output: usize,
}

struct Running {
    req: Request,
    seq: SeqId,
    done: usize,
}

/// What a run measured.
#[derive(Default, Debug)]
pub struct Stats {
    pub steps: usize,
    pub decoded: usize,
    pub prefilled: usize,
    pub preemptions: usize,
    pub deferred: usize,
    pub checks: usize,
    pub worst: f64,
    pub util_sum: f64,
    pub decode_time: Duration,
    pub prefill_time: Duration,
}

impl Stats {
    /// Counts a check; a NaN error is the worst of all (`f64::max` would
    /// drop it).
    pub fn record(&mut self, err: f64) {
        self.checks += 1;
        if err.is_nan() || err > self.worst {
            self.worst = err;
        }
    }
}

/// Parses the command line and runs the simulation for a model whose
/// layers use `specs` in turn (one spec, or Gemma-2's global/local pair),
/// over K/V elements of type `T`.
pub fn main<T: Element + Default>(model: &str, model_layers: u32, specs: &[AttentionSpec]) {
    let args = Args::parse();
    if let Err(e) = run::<T>(model, model_layers, specs, &args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Runs the simulation with parsed arguments; returns what it measured.
pub fn run<T: Element + Default>(
    model: &str,
    model_layers: u32,
    specs: &[AttentionSpec],
    args: &Args,
) -> Result<Stats, Box<dyn std::error::Error>> {
    if args.requests == 0 || args.max_batch == 0 || args.layers == 0 {
        return Err("--requests, --max-batch and --layers must be at least 1".into());
    }
    if args.prompt_min == 0 || args.prompt_min > args.prompt_max {
        return Err("need 1 <= --prompt-min <= --prompt-max".into());
    }
    if args.output_min == 0 || args.output_min > args.output_max {
        return Err("need 1 <= --output-min <= --output-max".into());
    }
    println!(
        "{model}: {} query / {} KV heads of {}, {}, pages of {}; {} of its {model_layers} layers \
         simulated; backend {:?}",
        specs[0].q_heads,
        specs[0].kv.kv_heads,
        specs[0].kv.head_dim,
        specs[0].kv.dtype,
        specs[0].kv.page_size,
        args.layers,
        args.backend
    );
    match args.backend {
        Backend::Cpu => {
            let gpu = Gpu::new(CpuDriver::new(Arch::Host.target(), Mode::Fast));
            simulate::<T, _>(&gpu, specs, args)
        }
        Backend::Hip => {
            let driver = HipDriver::new(0, None).map_err(|e| {
                format!("the HIP backend is not available here: {e} (use --backend cpu)")
            })?;
            simulate::<T, _>(&Gpu::new(driver), specs, args)
        }
    }
}

/// The serving loop on the launch path: per step, the cache's bookkeeping,
/// one plan, then per layer an append and one attention launch on a stream.
fn simulate<T: Element + Default, D: Driver>(
    gpu: &Gpu<D>,
    specs: &[AttentionSpec],
    args: &Args,
) -> Result<Stats, Box<dyn std::error::Error>> {
    let layout = specs[0].kv;
    let mut rng = Rng(args.seed.max(1).wrapping_mul(0x9e3779b97f4a7c15) | 1);
    let mut waiting: VecDeque<Request> = (0..args.requests)
        .map(|id| Request {
            id,
            prompt: rng.range(args.prompt_min, args.prompt_max),
            output: rng.range(args.output_min, args.output_max),
        })
        .collect();
    let tokens_needed = waiting
        .iter()
        .map(|r| r.prompt + r.output)
        .max()
        .unwrap_or(0);
    let capacity = args.max_pages as usize * layout.page_size as usize;
    if tokens_needed > capacity {
        return Err(format!(
            "a request needs {tokens_needed} tokens but the cache holds {capacity}; raise --max-pages"
        )
        .into());
    }
    // Set-up, once: a stream, every spec's kernels, the cache (its arena in
    // the device's memory), a workspace and the activations' buffers.
    let stream = gpu.stream()?;
    let kernels: Vec<Kernels<D>> = specs
        .iter()
        .map(|s| Kernels::load(gpu, s))
        .collect::<Result<_, _>>()?;
    let mut cache = KvCache::<T, _>::new_on_gpu(gpu, &stream, layout, args.layers, args.max_pages)?;
    let most_rows = args.prompt_max.max(args.max_batch);
    let limits = WorkspaceLimits::new(args.max_batch as u32, args.max_pages, most_rows as u32);
    let mut ws = Workspace::new(gpu, specs, limits)?;
    let row = (layout.kv_heads * layout.head_dim) as usize;
    let q_row = (specs[0].q_heads * layout.head_dim) as usize;
    let mut k_buf = gpu.alloc::<T>(most_rows * row)?;
    let mut v_buf = gpu.alloc::<T>(most_rows * row)?;
    let mut q_buf = gpu.alloc::<T>(most_rows * q_row)?;
    let mut out_buf = gpu.alloc::<T>(most_rows * q_row)?;
    let params = LaunchParams::default();
    let mut running: Vec<Running> = Vec::new();
    let mut admitted = 0usize;
    let mut stats = Stats::default();
    let total_out: usize = waiting.iter().map(|r| r.output).sum();
    let progress = Progress::new(total_out);
    let t0 = Instant::now();
    let random =
        |n: usize, rng: &mut Rng| -> Vec<T> { (0..n).map(|_| T::from_f64(rng.value())).collect() };

    while !waiting.is_empty() || !running.is_empty() {
        // Admit while there is room in the batch and in the cache.
        while running.len() < args.max_batch {
            let Some(req) = waiting.front().copied() else {
                break;
            };
            let seq = cache.add_sequence();
            match cache.append_tokens(seq, req.prompt) {
                Ok(slots) => {
                    waiting.pop_front();
                    // Prefill: the prompt's K/V through the append kernel,
                    // then its attention through the prefill kernel.
                    let q_len = [req.prompt as u32];
                    let check = args.check_every > 0 && admitted.is_multiple_of(args.check_every);
                    let plan =
                        cache.plan_prefill(&mut ws, &stream, specs, &[seq], &q_len, &slots)?;
                    let (n, nq) = (req.prompt * row, req.prompt * q_row);
                    for layer in 0..args.layers {
                        let i = layer as usize % specs.len();
                        let spec = &specs[i];
                        let k = random(n, &mut rng);
                        let v = random(n, &mut rng);
                        k_buf.view_mut().slice(0..n)?.upload(&stream, &k)?;
                        v_buf.view_mut().slice(0..n)?.upload(&stream, &v)?;
                        let (kn, vn) = (k_buf.view().slice(0..n)?, v_buf.view().slice(0..n)?);
                        cache.append_step(&kernels[i], &stream, &plan, layer, kn, vn)?;
                        let q: Vec<T> = (0..nq).map(|_| T::from_f64(3.0 * rng.value())).collect();
                        q_buf.view_mut().slice(0..nq)?.upload(&stream, &q)?;
                        let tp = Instant::now();
                        let (qv, ov) =
                            (q_buf.view().slice(0..nq)?, out_buf.view_mut().slice(0..nq)?);
                        cache.prefill_step(&kernels[i], &stream, &plan, layer, &params, qv, ov)?;
                        stream.synchronize()?;
                        stats.prefill_time += tp.elapsed();
                        if check {
                            let mut out = vec![T::default(); nq];
                            out_buf.view().slice(0..nq)?.read_into(&stream, &mut out)?;
                            let table = cache.page_table(&[seq])?;
                            let (ka, va) = cache.layer_to_host(layer)?;
                            let f = |x: &[T]| x.iter().map(|e| e.to_f64()).collect::<Vec<f64>>();
                            let want = reference::prefill_with(
                                spec,
                                &reference::Variants::default(),
                                &f(&q),
                                &[0, req.prompt as i32],
                                &f(&ka),
                                &f(&va),
                                &table,
                            );
                            stats.record(reference::rel_l2(&f(&out), &want));
                        }
                    }
                    admitted += 1;
                    stats.prefilled += req.prompt;
                    running.push(Running { req, seq, done: 0 });
                }
                Err(e) if is_full(&e) => {
                    cache.remove(seq)?;
                    stats.deferred += 1;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if running.is_empty() {
            return Err("no request fits in the cache; raise --max-pages".into());
        }

        // One decode step: a slot for every running sequence, preempting
        // the most recently admitted while the cache is full.
        let mut slots = Vec::with_capacity(running.len());
        let mut i = 0;
        while i < running.len() {
            match cache.append_tokens(running[i].seq, 1) {
                Ok(s) => {
                    slots.extend(s);
                    i += 1;
                }
                Err(e) if is_full(&e) => {
                    let victim = running.pop().expect("running is not empty");
                    cache.remove(victim.seq)?;
                    // Slots were taken in order, so the victim (the last)
                    // has none yet; it is recomputed from scratch later.
                    waiting.push_front(victim.req);
                    stats.preemptions += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let batch: Vec<SeqId> = running.iter().map(|r| r.seq).collect();
        let check = args.check_every > 0 && stats.steps.is_multiple_of(args.check_every);
        let ts = Instant::now();
        // One plan for the step: its table and slots go up once, whatever
        // the number of layers.
        let plan = cache.plan_decode(&mut ws, &stream, specs, &batch, &slots, Split::Auto)?;
        let (n, nq) = (batch.len() * row, batch.len() * q_row);
        for layer in 0..args.layers {
            let i = layer as usize % specs.len();
            let spec = &specs[i];
            let (k, v) = (random(n, &mut rng), random(n, &mut rng));
            k_buf.view_mut().slice(0..n)?.upload(&stream, &k)?;
            v_buf.view_mut().slice(0..n)?.upload(&stream, &v)?;
            let (kn, vn) = (k_buf.view().slice(0..n)?, v_buf.view().slice(0..n)?);
            cache.append_step(&kernels[i], &stream, &plan, layer, kn, vn)?;
            let q: Vec<T> = (0..nq).map(|_| T::from_f64(3.0 * rng.value())).collect();
            q_buf.view_mut().slice(0..nq)?.upload(&stream, &q)?;
            let (qv, ov) = (q_buf.view().slice(0..nq)?, out_buf.view_mut().slice(0..nq)?);
            cache.decode_step(&kernels[i], &stream, &plan, layer, &params, qv, ov)?;
            if check {
                let mut out = vec![T::default(); nq];
                out_buf.view().slice(0..nq)?.read_into(&stream, &mut out)?;
                stats.record(check_layer(&mut cache, spec, layer, &batch, &q, &out)?);
            }
        }
        stream.synchronize()?;
        stats.decode_time += ts.elapsed();
        stats.steps += 1;
        stats.decoded += batch.len();
        stats.util_sum += cache.allocator().used_pages() as f64 / args.max_pages as f64;

        // Finished sequences leave the cache.
        let mut k = 0;
        while k < running.len() {
            running[k].done += 1;
            if running[k].done >= running[k].req.output {
                let r = running.remove(k);
                cache.remove(r.seq)?;
                progress.finished(r.req.id, stats.decoded, &stats);
            } else {
                k += 1;
            }
        }
        progress.step(stats.decoded, &stats);
    }
    progress.done();
    cache.check_invariants()?;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{} requests: {} steps, {} tokens decoded, {} prompt tokens prefilled in {secs:.2} s",
        args.requests, stats.steps, stats.decoded, stats.prefilled
    );
    println!(
        "prefill attention: {:.0} prompt tokens/s ({:.2} s, {} layers, on the prefill kernel)",
        stats.prefilled as f64 / stats.prefill_time.as_secs_f64().max(1e-9),
        stats.prefill_time.as_secs_f64(),
        args.layers
    );
    println!(
        "throughput: {:.0} decoded tokens/s overall, {:.0} in decode steps ({} layers); \
         mean page utilisation {:.0}%",
        stats.decoded as f64 / secs,
        stats.decoded as f64 / stats.decode_time.as_secs_f64().max(1e-9),
        args.layers,
        100.0 * stats.util_sum / stats.steps.max(1) as f64
    );
    println!(
        "capacity: {} preemptions (sequence sent back to the queue), {} admissions deferred; \
         checks: {} layer-launches against the f64 reference, worst relative L2 error {:.1e}",
        stats.preemptions, stats.deferred, stats.checks, stats.worst
    );
    let tolerance = reference::tolerance(layout.dtype);
    if stats.worst.is_nan() || stats.worst > tolerance {
        return Err(format!(
            "a checked step differs from the reference by {:.1e} (tolerance {:.0e})",
            stats.worst, tolerance
        )
        .into());
    }
    Ok(stats)
}

fn is_full(e: &CacheError) -> bool {
    matches!(
        e,
        CacheError::Alloc {
            source: AllocError::CapacityExceeded { .. },
            ..
        }
    )
}

/// Relative L2 error of one layer's decode output against the reference.
fn check_layer<T: Element, A: attnforge::runtime::Arena<T>>(
    cache: &mut KvCache<T, A>,
    spec: &AttentionSpec,
    layer: u32,
    batch: &[SeqId],
    q: &[T],
    out: &[T],
) -> Result<f64, RuntimeError> {
    let table = cache.page_table(batch)?;
    let (k, v) = cache.layer_to_host(layer)?;
    Ok(check_table(spec, q, &k, &v, &table, out))
}

/// Relative L2 error of a decode output over `table` against the reference.
fn check_table<T: Element>(
    spec: &AttentionSpec,
    q: &[T],
    k: &[T],
    v: &[T],
    table: &PageTable,
    out: &[T],
) -> f64 {
    let f = |x: &[T]| x.iter().map(|e| e.to_f64()).collect::<Vec<f64>>();
    let want = reference::decode(spec, &f(q), &f(k), &f(v), table);
    reference::rel_l2(&f(out), &want)
}

/// A progress bar (indicatif) on a terminal; a plain line per finished
/// request otherwise.
struct Progress {
    bar: indicatif::ProgressBar,
    tty: bool,
    start: Instant,
}

impl Progress {
    fn new(total: usize) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let bar = if tty {
            indicatif::ProgressBar::new(total as u64).with_style(
                indicatif::ProgressStyle::with_template(
                    "[{bar:30}] {percent:>3}% {pos}/{len} tokens, {per_sec}, {msg}",
                )
                .expect("a valid template")
                .progress_chars("#>-"),
            )
        } else {
            indicatif::ProgressBar::hidden()
        };
        Progress {
            bar,
            tty,
            start: Instant::now(),
        }
    }

    fn step(&self, decoded: usize, s: &Stats) {
        self.bar.set_position(decoded as u64);
        self.bar
            .set_message(format!("{} preemptions", s.preemptions));
    }

    fn finished(&self, id: usize, decoded: usize, s: &Stats) {
        if self.tty {
            return;
        }
        eprintln!(
            "request {id} finished; {decoded} tokens decoded, {} preemptions so far, {:.1} s",
            s.preemptions,
            self.start.elapsed().as_secs_f64()
        );
    }

    fn done(&self) {
        self.bar.finish();
    }
}
