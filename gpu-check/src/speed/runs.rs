//! The speed part's launches, through a cache as an engine makes them
//! (`KvCache::new_on_gpu`'s arena, `plan_decode`/`plan_prefill`, then
//! `decode_step`/`prefill_step`): decode of every shape of a dtype,
//! prefill of every prompt length, and the paging figures.

use std::path::Path;

use attnforge_codegen::kernels::KernelPath;
use attnforge_codegen::{AttentionSpec, DType, KvLayoutSpec, Order};
use attnforge_runtime::driver::Driver;
use attnforge_runtime::launch::{DeviceArena, Gpu, Kernels, Workspace, WorkspaceLimits};

use super::setup::{arena_error, filled_arena, Setup};
use super::{PagingFigure, PrefillFigure, SpeedConfig, SpeedReport};
use crate::error::{write, write_json, Error};
use crate::inputs::Rng;
use crate::raw::{with_raw, Array, RawElement, WithRaw};

struct DecodeRun<'a, D: Driver> {
    gpu: &'a Gpu<D>,
    cfg: &'a SpeedConfig,
    dtype: DType,
    report: &'a mut SpeedReport,
}

impl<D: Driver> WithRaw for DecodeRun<'_, D> {
    type Output = Result<(), Error>;
    fn run<Q: RawElement, T: RawElement>(self) -> Result<(), Error> {
        let DecodeRun {
            gpu,
            cfg,
            dtype,
            report,
        } = self;
        let spec = cfg.spec(dtype);
        let (l, p) = (spec.kv, u64::from(cfg.page_size));
        let token_bytes = 2 * u64::from(l.kv_heads * l.head_dim) * std::mem::size_of::<T>() as u64;
        let mut shapes = Vec::new();
        for &b in &cfg.batches {
            for &c in &cfg.contexts {
                let bytes = u64::from(b) * u64::from(c) * token_bytes;
                if bytes > cfg.max_kv_bytes {
                    report.skipped.push(format!(
                        "decode {dtype} batch {b} context {c}: {bytes} bytes of K/V, over {}",
                        cfg.max_kv_bytes
                    ));
                } else {
                    shapes.push((b, c));
                }
            }
        }
        let Some(pages) = shapes
            .iter()
            .map(|&(b, c)| u64::from(b) * u64::from(c).div_ceil(p))
            .max()
        else {
            return Ok(());
        };
        let max_batch = shapes.iter().map(|s| s.0).max().unwrap_or(1);
        let stream = gpu.stream()?;
        let row = spec.q_heads as usize * l.head_dim as usize;
        let mut rng = Rng(cfg.seed ^ 0xdec0de);
        let hq: Vec<Q> = (0..max_batch as usize * row)
            .map(|_| Q::from_f64(rng.uniform()))
            .collect();
        let mut s = Setup {
            gpu,
            cfg,
            spec,
            kernels: Kernels::load(gpu, &spec)?,
            ws: Workspace::new(
                gpu,
                &[spec],
                WorkspaceLimits::new(max_batch, pages as u32, 1),
            )?,
            slot: Some(filled_arena::<T, D>(
                gpu,
                &stream,
                &l,
                pages as usize,
                cfg.seed,
            )?),
            q: gpu.upload(&stream, &hq)?,
            out: gpu.alloc(hq.len())?,
            stream,
            rng,
        };
        let both = dtype.name() == cfg.paging_dtype;
        let copy = report.copy.as_ref().map(|c| c.gb_per_s);
        // The SIMT decode too, where the device also has the matrix-core one.
        let mut paths = vec![KernelPath::Auto];
        if s.kernels.decode_is_matrix() {
            paths.push(KernelPath::Simt);
        }
        for path in paths {
            if path == KernelPath::Simt {
                s.kernels = Kernels::load_path(gpu, &spec, path)?;
            }
            for &(b, c) in &shapes {
                if super::past_deadline() {
                    report.skipped.push(format!(
                        "decode {dtype} batch {b} context {c}: the step's deadline"
                    ));
                    continue;
                }
                for shuffled in [true, false] {
                    if !shuffled && (!both || path == KernelPath::Simt) {
                        continue;
                    }
                    match s.decode_one(b, c, shuffled) {
                        Ok(mut f) => {
                            f.fraction_of_copy = copy.map(|g| f.gb_per_s / g);
                            report.decode.push(f);
                        }
                        Err(e) => report
                            .errors
                            .push(format!("decode {dtype} batch {b} context {c}: {e}")),
                    }
                    if s.slot.is_none() {
                        return Err(arena_error("the arena was lost".into()));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Decode of every shape at `dtype`.
pub(super) fn decode<D: Driver>(
    gpu: &Gpu<D>,
    cfg: &SpeedConfig,
    dtype: DType,
    report: &mut SpeedReport,
) {
    let q = cfg.spec(dtype).query_dtype();
    if let Err(e) = with_raw(
        q,
        dtype,
        DecodeRun {
            gpu,
            cfg,
            dtype,
            report,
        },
    ) {
        report.errors.push(format!("decode {dtype}: {e}"));
    }
}

struct PrefillRun<'a, D: Driver> {
    gpu: &'a Gpu<D>,
    cfg: &'a SpeedConfig,
    dtype: DType,
    scratch: Option<&'a Path>,
    report: &'a mut SpeedReport,
}

impl<D: Driver> WithRaw for PrefillRun<'_, D> {
    type Output = Result<(), Error>;
    fn run<Q: RawElement, T: RawElement>(self) -> Result<(), Error> {
        let PrefillRun {
            gpu,
            cfg,
            dtype,
            scratch,
            report,
        } = self;
        let spec = AttentionSpec {
            kv: KvLayoutSpec {
                order: Order::Nhd,
                ..cfg.spec(dtype).kv
            },
            ..cfg.spec(dtype)
        };
        let Some(&max_n) = cfg.prefill_tokens.iter().max() else {
            return Ok(());
        };
        let pages = max_n.div_ceil(cfg.page_size);
        let (kv_row, row) = (
            (spec.kv.kv_heads * spec.kv.head_dim) as usize,
            (spec.q_heads * spec.kv.head_dim) as usize,
        );
        let stream = gpu.stream()?;
        let mut s: Setup<'_, Q, T, D> = Setup {
            gpu,
            cfg,
            spec,
            kernels: Kernels::load(gpu, &spec)?,
            ws: Workspace::new(gpu, &[spec], WorkspaceLimits::new(1, pages, max_n))?,
            slot: Some(DeviceArena::zeroed(
                gpu,
                &stream,
                pages as usize * spec.kv.page_elems() as usize,
            )?),
            q: gpu.alloc(max_n as usize * row)?,
            out: gpu.alloc(max_n as usize * row)?,
            stream,
            rng: Rng(cfg.seed ^ 0x9e3f),
        };
        let matrix = s.kernels.prefill_is_matrix();
        let mut listed = Vec::new();
        for &n in &cfg.prefill_tokens {
            if super::past_deadline() {
                report
                    .skipped
                    .push(format!("prefill {dtype} {n} tokens: the step's deadline"));
                continue;
            }
            let mut rng = Rng(cfg.seed ^ u64::from(n));
            let mut draw = |len: usize| {
                (0..len)
                    .map(|_| T::from_f64(rng.uniform()))
                    .collect::<Vec<T>>()
            };
            let (hk, hv) = (draw(n as usize * kv_row), draw(n as usize * kv_row));
            let hq: Vec<Q> = (0..n as usize * row)
                .map(|_| Q::from_f64(rng.uniform()))
                .collect();
            let r =
                s.q.view_mut()
                    .slice(0..hq.len())
                    .and_then(|mut v| v.upload(&s.stream, &hq))
                    .map_err(Error::from)
                    .and_then(|_| s.prefill_one(n, false, &hk, &hv));
            let (iters, secs, out) = match r {
                Ok(x) => x,
                Err(e) => {
                    report
                        .errors
                        .push(format!("prefill {dtype} {n} tokens: {e}"));
                    continue;
                }
            };
            let flops = 4.0
                * f64::from(spec.q_heads * spec.kv.head_dim)
                * f64::from(n)
                * (f64::from(n) + 1.0)
                / 2.0;
            let figure = |pages: &str, iters, secs: f64| PrefillFigure {
                dtype: dtype.name().into(),
                tokens: n,
                pages: pages.into(),
                iters,
                us_per_launch: secs * 1e6,
                flops,
                tflops: flops / secs / 1e12,
                kernel: if matrix { "matrix" } else { "simt" }.into(),
            };
            report.prefill.push(figure("contiguous", iters, secs));
            if let Some(dir) = scratch {
                match write_prefill(dir, n, &spec, [&hq[..]], [&hk[..], &hv[..]], &out, secs) {
                    Ok(entry) => listed.push(entry),
                    Err(e) => report
                        .errors
                        .push(format!("prefill {n} tokens, files for Python: {e}")),
                }
            }
            if cfg.prefill_paging_tokens == Some(n) {
                match s.prefill_one(n, true, &hk, &hv) {
                    Ok((i2, s2, out2)) => {
                        report.prefill.push(figure("shuffled", i2, s2));
                        report.paging.push(PagingFigure {
                            what: format!("prefill {dtype}, {n} tokens"),
                            contiguous_us: secs * 1e6,
                            shuffled_us: s2 * 1e6,
                            overhead: s2 / secs - 1.0,
                            same_bits: Some(Array::new("o", &out) == Array::new("o", &out2)),
                        });
                    }
                    Err(e) => report
                        .errors
                        .push(format!("prefill {dtype} {n} tokens, shuffled: {e}")),
                }
            }
        }
        if let Some(dir) = scratch {
            write_json(&dir.join("prefill").join("prefill.json"), &listed)?;
        }
        Ok(())
    }
}

/// Writes one prompt's q, k, v (token order) and our output for SDPA.
fn write_prefill<Q: RawElement, T: RawElement>(
    dir: &Path,
    n: u32,
    spec: &AttentionSpec,
    q: [&[Q]; 1],
    kv: [&[T]; 2],
    out: &[Q],
    secs: f64,
) -> Result<serde_json::Value, Error> {
    let dir = dir.join("prefill");
    let arrays = [
        Array::new("q", q[0]),
        Array::new("k", kv[0]),
        Array::new("v", kv[1]),
        Array::new("out", out),
    ];
    let mut files = serde_json::Map::new();
    for a in &arrays {
        let file = format!("{n}.{}.bin", a.name);
        write(&dir.join(&file), &a.bytes)?;
        files.insert(
            a.name.clone(),
            serde_json::json!({"file": file, "ty": a.ty, "count": a.len()}),
        );
    }
    Ok(serde_json::json!({
        "tokens": n, "q_heads": spec.q_heads, "kv_heads": spec.kv.kv_heads,
        "head_dim": spec.kv.head_dim, "scale": spec.effective_scale(), "causal": spec.causal,
        "dtype": spec.query_dtype().name(), "ours_us": secs * 1e6, "files": files,
    }))
}

/// Prefill of every prompt length at `dtype`.
pub(super) fn prefill<D: Driver>(
    gpu: &Gpu<D>,
    cfg: &SpeedConfig,
    dtype: DType,
    scratch: Option<&Path>,
    report: &mut SpeedReport,
) {
    let q = cfg.spec(dtype).query_dtype();
    if let Err(e) = with_raw(
        q,
        dtype,
        PrefillRun {
            gpu,
            cfg,
            dtype,
            scratch,
            report,
        },
    ) {
        report.errors.push(format!("prefill {dtype}: {e}"));
    }
}

/// Pairs each shuffled decode figure with its contiguous twin.
pub(super) fn paging_figures(report: &mut SpeedReport) {
    let pairs: Vec<PagingFigure> = report
        .decode
        .iter()
        .filter(|f| f.pages == "contiguous")
        .filter_map(|c| {
            let s = report.decode.iter().find(|s| {
                s.pages == "shuffled"
                    && (s.dtype.as_str(), s.batch, s.context)
                        == (c.dtype.as_str(), c.batch, c.context)
            })?;
            Some(PagingFigure {
                what: format!(
                    "decode {}, batch {}, context {}",
                    c.dtype, c.batch, c.context
                ),
                contiguous_us: c.us_per_step,
                shuffled_us: s.us_per_step,
                overhead: s.us_per_step / c.us_per_step - 1.0,
                same_bits: None,
            })
        })
        .collect();
    report.paging.extend(pairs);
}
