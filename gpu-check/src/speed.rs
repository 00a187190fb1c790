//! The speed part: decode bandwidth (bytes of K/V read per second) beside
//! the device-to-device copy bandwidth of the same run, prefill TFLOP/s,
//! and paging overhead (shuffled against contiguous pages). Inputs are
//! drawn on the GPU machine from a seed and spread on the device by
//! copies; nothing is compared but the two paging layouts' outputs. Times
//! are wall-clock around N launches and one synchronize, after warm-up.

mod runs;
mod setup;

use std::path::Path;
use std::time::Instant;

use attnforge_codegen::{AttentionSpec, DType, KvLayoutSpec, KvScale, Order};
use attnforge_runtime::arena::Arena;
use attnforge_runtime::driver::Driver;
use attnforge_runtime::launch::{DeviceArena, Gpu, Stream};
use serde::{Deserialize, Serialize};

use crate::drivers::{registry, Backend};
use crate::error::Error;

/// What the speed part measures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpeedConfig {
    /// Tokens per page.
    pub page_size: u32,
    /// KV heads.
    pub kv_heads: u32,
    /// Head dimension.
    pub head_dim: u32,
    /// Query heads.
    pub q_heads: u32,
    /// Decode batch sizes.
    pub batches: Vec<u32>,
    /// Decode context lengths (tokens per sequence).
    pub contexts: Vec<u32>,
    /// Cache dtypes (fp8 with one scale per tensor and f16 queries).
    pub dtypes: Vec<String>,
    /// Decode shapes whose K/V exceed this many bytes are skipped.
    pub max_kv_bytes: u64,
    /// The dtype whose decode also runs on contiguous pages.
    pub paging_dtype: String,
    /// Prefill prompt lengths (batch 1, causal).
    pub prefill_tokens: Vec<u32>,
    /// Prefill's dtype.
    pub prefill_dtype: String,
    /// The prompt length whose prefill also runs on shuffled pages.
    pub prefill_paging_tokens: Option<u32>,
    /// Bytes per device-to-device copy measured.
    pub copy_bytes: u64,
    /// Each figure times at least this long (after one calibration launch).
    pub min_seconds: f64,
    /// Launches before timing.
    pub warmup: u32,
    /// The most launches one figure times.
    pub max_iters: u32,
    /// The inputs' seed.
    pub seed: u64,
}

impl SpeedConfig {
    /// Llama-3-8B's attention (8 KV heads of 128, 32 query heads, pages of
    /// 16), the batches, contexts and dtypes.
    pub fn full() -> SpeedConfig {
        SpeedConfig {
            page_size: 16,
            kv_heads: 8,
            head_dim: 128,
            q_heads: 32,
            batches: vec![1, 16, 64, 256],
            contexts: vec![1024, 8192, 32768],
            dtypes: vec!["f16".into(), "bf16".into(), "fp8_e4m3".into()],
            max_kv_bytes: 60 << 30,
            paging_dtype: "f16".into(),
            prefill_tokens: vec![1024, 2048, 4096, 8192, 16384],
            prefill_dtype: "f16".into(),
            prefill_paging_tokens: Some(8192),
            copy_bytes: 1 << 30,
            min_seconds: 0.1,
            warmup: 2,
            max_iters: 200,
            seed: 0x5eed,
        }
    }

    /// Tiny shapes, for the tests on the CPU driver.
    pub fn quick() -> SpeedConfig {
        SpeedConfig {
            kv_heads: 1,
            head_dim: 64,
            q_heads: 4,
            batches: vec![1, 3],
            contexts: vec![40, 100],
            dtypes: vec!["f16".into(), "fp8_e4m3".into()],
            // f16's largest shape (76,800 bytes of K/V) is skipped.
            max_kv_bytes: 60_000,
            prefill_tokens: vec![32, 48],
            prefill_paging_tokens: Some(48),
            copy_bytes: 1 << 16,
            min_seconds: 0.0,
            warmup: 1,
            max_iters: 2,
            ..SpeedConfig::full()
        }
    }

    /// The attention measured for a cache dtype.
    pub fn spec(&self, dtype: DType) -> AttentionSpec {
        let kv = KvLayoutSpec {
            page_size: self.page_size,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            dtype,
            order: Order::Nhd,
            scale: if dtype.is_fp8() {
                KvScale::PerTensor
            } else {
                KvScale::Unscaled
            },
        };
        AttentionSpec {
            causal: true,
            q_dtype: dtype.is_fp8().then_some(DType::F16),
            ..AttentionSpec::new(kv, self.q_heads)
        }
    }
}

/// The copy bandwidth every decode figure is divided by.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CopyFigure {
    /// Bytes copied per timed call (two copies of half as many).
    pub bytes: u64,
    /// Calls timed.
    pub iters: u32,
    /// Seconds per call.
    pub seconds: f64,
    /// `2 · bytes / seconds` (bytes read plus bytes written), in GB/s.
    pub gb_per_s: f64,
}

/// One decode figure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecodeFigure {
    /// Cache dtype.
    pub dtype: String,
    /// Sequences.
    pub batch: u32,
    /// Tokens per sequence.
    pub context: u32,
    /// `shuffled` (each page a random one of the arena) or `contiguous`.
    pub pages: String,
    /// K and V bytes a step reads.
    pub kv_bytes: u64,
    /// Split-K chunks the planner chose (1: the plain kernel).
    pub splits: u32,
    /// Steps timed.
    pub iters: u32,
    /// Microseconds per step (one launch, two with split-K).
    pub us_per_step: f64,
    /// `kv_bytes` per second, in GB/s.
    pub gb_per_s: f64,
    /// `gb_per_s` over the copy bandwidth.
    pub fraction_of_copy: Option<f64>,
    /// The kernel: `matrix` (the matrix-core decode) or `simt` (where the
    /// device has both, each shape runs on both; else the one it has).
    #[serde(default)]
    pub kernel: String,
    /// The step's K/V are under [`L2_RESIDENT_BYTES`]: every timed step
    /// re-reads the same pages, so after the first they may come from L2,
    /// and the figure is not HBM bandwidth (it may exceed the copy's).
    #[serde(default)]
    pub l2_resident: bool,
}

/// Twice the L2 of an H100/H200 (50 MB), rounded up: K/V smaller than this
/// may stay in L2 from one timed step to the next.
pub const L2_RESIDENT_BYTES: u64 = 128 << 20;

/// One prefill figure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrefillFigure {
    /// dtype.
    pub dtype: String,
    /// Prompt tokens (batch 1, causal).
    pub tokens: u32,
    /// `contiguous` or `shuffled`.
    pub pages: String,
    /// Launches timed.
    pub iters: u32,
    /// Microseconds per launch.
    pub us_per_launch: f64,
    /// `4 · q_heads · head_dim · tokens·(tokens+1)/2`.
    pub flops: f64,
    /// TFLOP/s.
    pub tflops: f64,
    /// The kernel: `matrix` or `simt`.
    #[serde(default)]
    pub kernel: String,
}

/// Shuffled against contiguous pages, same shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PagingFigure {
    /// The shape, in words.
    pub what: String,
    /// Microseconds on contiguous pages.
    pub contiguous_us: f64,
    /// Microseconds on shuffled pages.
    pub shuffled_us: f64,
    /// `shuffled / contiguous − 1`.
    pub overhead: f64,
    /// Whether both layouts gave the same output bits (prefill only).
    pub same_bits: Option<bool>,
}

/// Everything the speed part measured (`speed.json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SpeedReport {
    /// The driver.
    pub driver: String,
    /// Device-to-device copies.
    pub copy: Option<CopyFigure>,
    /// Decode.
    pub decode: Vec<DecodeFigure>,
    /// Prefill.
    pub prefill: Vec<PrefillFigure>,
    /// Paging overhead.
    pub paging: Vec<PagingFigure>,
    /// Shapes not run, and why.
    pub skipped: Vec<String>,
    /// What failed.
    pub errors: Vec<String>,
}

/// Times `step`: `warmup` runs, one calibration run, then as many as fill
/// `min_seconds` (at least 3 unless `max_iters` is lower) with one
/// synchronize. Returns the runs timed and the seconds per run.
fn time<D: Driver>(
    cfg: &SpeedConfig,
    stream: &Stream<D>,
    mut step: impl FnMut() -> Result<(), Error>,
) -> Result<(u32, f64), Error> {
    for _ in 0..cfg.warmup {
        step()?;
    }
    stream.synchronize()?;
    let t = Instant::now();
    step()?;
    stream.synchronize()?;
    let one = t.elapsed().as_secs_f64().max(1e-7);
    let cap = cfg.max_iters.max(1);
    let n = ((cfg.min_seconds / one).ceil() as u32).max(3).min(cap);
    let t = Instant::now();
    for _ in 0..n {
        step()?;
    }
    stream.synchronize()?;
    Ok((n, t.elapsed().as_secs_f64() / f64::from(n)))
}

fn copy_bandwidth<D: Driver>(gpu: &Gpu<D>, cfg: &SpeedConfig) -> Result<CopyFigure, Error> {
    let stream = gpu.stream()?;
    let half = (cfg.copy_bytes / 2) as usize;
    let mut arena = DeviceArena::<u8, D>::zeroed(gpu, &stream, 2 * half)?;
    let (iters, seconds) = time(cfg, &stream, || {
        arena.copy_within(0, half, half).map_err(|m| Error::Device {
            driver: "copy",
            message: m,
        })
    })?;
    let bytes = 2 * half as u64;
    Ok(CopyFigure {
        bytes,
        iters,
        seconds,
        gb_per_s: 2.0 * bytes as f64 / seconds / 1e9,
    })
}

/// Whether the run half's step deadline (`$ATTNFORGE_GPU_DEADLINE`,
/// seconds since the epoch, which run.sh sets) is less than 3 s away.
pub fn past_deadline() -> bool {
    let Some(d) = std::env::var("ATTNFORGE_GPU_DEADLINE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
    else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |t| t.as_secs_f64());
    d > 0.0 && now + 3.0 > d
}

/// The report with its paging figures paired.
fn finished(report: &SpeedReport) -> SpeedReport {
    let mut r = report.clone();
    runs::paging_figures(&mut r);
    r
}

/// Runs the speed part on device 0 of `backend`; writes the prefill
/// inputs and outputs under `scratch/prefill` for the Python part when
/// `scratch` is given. `save` gets the report so far after each part (a
/// run cut short keeps what it measured); shapes past the step's deadline
/// are skipped.
pub fn run<B: Backend>(
    backend: &B,
    cfg: &SpeedConfig,
    scratch: Option<&Path>,
    save: &mut dyn FnMut(&SpeedReport),
) -> SpeedReport {
    let mut report = SpeedReport {
        driver: backend.name().into(),
        ..SpeedReport::default()
    };
    if let Err(e) = cfg.spec(DType::F16).validate() {
        report.errors.push(format!("the speed part's shape: {e}"));
        return report;
    }
    // The Llama-3 f16 spec is the bundled item's: its cubins.
    let gpu = match backend.open(registry("llama3_8b")) {
        Ok(d) => Gpu::new(d),
        Err(e) => {
            report.errors.push(e.to_string());
            return report;
        }
    };
    match copy_bandwidth(&gpu, cfg) {
        Ok(c) => report.copy = Some(c),
        Err(e) => report.errors.push(format!("copy bandwidth: {e}")),
    }
    save(&report);
    for name in &cfg.dtypes {
        match DType::from_name(name) {
            Some(d) => runs::decode(&gpu, cfg, d, &mut report),
            None => report.errors.push(format!("unknown dtype `{name}`")),
        }
        save(&finished(&report));
    }
    match DType::from_name(&cfg.prefill_dtype) {
        Some(d) => runs::prefill(&gpu, cfg, d, scratch, &mut report),
        None => report
            .errors
            .push(format!("unknown dtype `{}`", cfg.prefill_dtype)),
    }
    let report = finished(&report);
    save(&report);
    report
}
