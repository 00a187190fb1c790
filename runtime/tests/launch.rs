//! The launch path through the CPU driver: the exact driver calls a GPU
//! step makes, run here against the reference (tests/README.md, "launch
//! path"). One binary, three parts: a serving loop in checked mode, the
//! call trace of a step, and every typed error and asynchrony rule.
#![cfg(feature = "cpu")]

use std::sync::{Arc, OnceLock};

use attnforge_codegen::{Arch, AttentionSpec, DType, KvLayoutSpec, KvScale, Order};
use attnforge_runtime::cpu::{CpuDevice, Element, Mode};
use attnforge_runtime::driver::cpu::{Call, CpuDriver};
use attnforge_runtime::launch::{
    DeviceArena, DeviceBuffer, Gpu, Kernels, LaunchParams, Stream, Workspace, WorkspaceLimits,
};
use attnforge_runtime::{reference, KvCache, SeqId};
use half::f16;

#[path = "launch/errors.rs"]
mod errors;
#[path = "launch/serving.rs"]
mod serving;
#[path = "launch/trace.rs"]
mod trace;

/// Sliding window, causal, GQA (2 query heads per KV head), small pages.
pub fn spec() -> AttentionSpec {
    let kv = KvLayoutSpec {
        page_size: 4,
        kv_heads: 2,
        head_dim: 16,
        dtype: DType::F16,
        order: Order::Nhd,
        scale: KvScale::Unscaled,
    };
    AttentionSpec {
        causal: true,
        sliding_window: Some(12),
        ..AttentionSpec::new(kv, 4)
    }
}

pub const LAYERS: u32 = 2;
pub const MAX_PAGES: u32 = 24;
pub const ROW: usize = 2 * 16;
pub const Q_ROW: usize = 4 * 16;

/// One kernel cache for the whole binary: each kernel compiles once.
fn kernels_cache() -> Arc<CpuDevice> {
    static DEVICE: OnceLock<Arc<CpuDevice>> = OnceLock::new();
    DEVICE.get_or_init(Arc::default).clone()
}

/// A device of its own (its own trace), with the shared kernels, checked.
pub fn gpu(ordinal: u32) -> Gpu<CpuDriver> {
    let d = CpuDriver::with_kernels(kernels_cache(), Arch::Host.target(), Mode::Checked);
    Gpu::new(d.with_ordinal(ordinal).recording())
}

/// Everything an engine sets up once.
pub struct Setup {
    pub gpu: Gpu<CpuDriver>,
    pub stream: Stream<CpuDriver>,
    pub kernels: Kernels<CpuDriver>,
    pub cache: KvCache<f16, DeviceArena<f16, CpuDriver>>,
    pub ws: Workspace<CpuDriver>,
}

pub fn setup(limits: WorkspaceLimits) -> Setup {
    let gpu = gpu(0);
    let stream = gpu.stream().unwrap();
    let kernels = Kernels::load(&gpu, &spec()).unwrap();
    let cache = KvCache::new_on_gpu(&gpu, &stream, spec().kv, LAYERS, MAX_PAGES)
        .unwrap()
        .with_sliding_window(spec().sliding_window)
        .unwrap();
    let ws = Workspace::new(&gpu, &[spec()], limits).unwrap();
    stream.synchronize().unwrap();
    Setup {
        gpu,
        stream,
        kernels,
        cache,
        ws,
    }
}

/// Seeded values in [-1, 1), as f16.
pub fn values(n: usize, seed: u64) -> Vec<f16> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            f16::from_f64((x >> 11) as f64 / (1u64 << 52) as f64 - 1.0)
        })
        .collect()
}

pub fn f64s<T: Element>(x: &[T]) -> Vec<f64> {
    x.iter().map(|e| e.to_f64()).collect()
}

/// Decode of `batch` at `layer` against the reference, from what the
/// cache holds (read back from the device).
pub fn decode_error(
    cache: &mut KvCache<f16, DeviceArena<f16, CpuDriver>>,
    layer: u32,
    batch: &[SeqId],
    q: &[f16],
    out: &[f16],
) -> f64 {
    let table = cache.page_table(batch).unwrap();
    let (k, v) = cache.layer_to_host(layer).unwrap();
    let want = reference::decode(&spec(), &f64s(q), &f64s(&k), &f64s(&v), &table);
    reference::rel_l2(&f64s(out), &want)
}

/// A buffer holding `host`, uploaded and waited for.
pub fn buffer(s: &Setup, host: &[f16]) -> DeviceBuffer<f16, CpuDriver> {
    let b = s.gpu.upload(&s.stream, host).unwrap();
    s.stream.synchronize().unwrap();
    b
}

pub fn no_params() -> LaunchParams<'static, CpuDriver> {
    LaunchParams::default()
}

/// The calls a run may make after planning: launches only.
pub fn launches_only(calls: &[Call]) -> Result<(), String> {
    match calls.iter().find(|c| !matches!(c, Call::Launch(..))) {
        Some(c) => Err(format!("a run made {c:?} (calls: {calls:?})")),
        None => Ok(()),
    }
}
