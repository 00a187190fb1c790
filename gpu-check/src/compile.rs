//! The kernels a pack's cases load that have no cubin in the bundled
//! registry (every variant spec's), and (feature `cuda`) their NVRTC
//! compiles, in parallel, into the driver's on-disk cache: the run half's
//! `compile` step, so that NVRTC's time is measured apart and the
//! correctness step finds every kernel compiled.

use std::collections::BTreeMap;

use attnforge_codegen::kernels::{attention_kernels, symbol, KernelSpec};
use attnforge_codegen::Arch;
use serde::{Deserialize, Serialize};

use crate::drivers::registry;
use crate::error::Error;
use crate::manifest::{Case, Kind};
use crate::speed::SpeedConfig;

/// Every kernel `cases` and the speed part load (an attention's five, as
/// `Kernels::load` loads them), by symbol, less those the bundled registry
/// has for `arch`.
pub fn needed(cases: &[Case], speed: &SpeedConfig, arch: Arch) -> Result<Vec<KernelSpec>, Error> {
    let mut out = BTreeMap::new();
    let llama = registry("llama3_8b");
    for d in speed.dtypes.iter().chain([&speed.prefill_dtype]) {
        let Some(d) = attnforge_codegen::DType::from_name(d) else {
            continue;
        };
        let a = speed.spec(d);
        for k in attention_kernels(&a)
            .into_iter()
            .chain([KernelSpec::Append(a.kv)])
        {
            let name = symbol(&k);
            if !llama.is_some_and(|r| r.objects.iter().any(|o| o.symbol == name && o.arch == arch))
            {
                out.insert(name, k);
            }
        }
    }
    for c in cases {
        let specs: Vec<KernelSpec> = match c.kind {
            Kind::Append => c.kernel_specs()?,
            _ => {
                let a = c
                    .spec
                    .to_attention()
                    .map_err(|m| Error::bad_case(&c.id, m))?;
                let mut v = attention_kernels(&a).to_vec();
                v.push(KernelSpec::Append(a.kv));
                v
            }
        };
        let reg = c.item.as_deref().and_then(registry);
        for k in specs {
            let name = symbol(&k);
            let bundled =
                reg.is_some_and(|r| r.objects.iter().any(|o| o.symbol == name && o.arch == arch));
            if !bundled {
                out.insert(name, k);
            }
        }
    }
    Ok(out.into_values().collect())
}

/// One kernel's NVRTC compile.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Compiled {
    /// Its symbol.
    pub symbol: String,
    /// Wall time of the compile (0 for a cache hit).
    pub seconds: f64,
    /// Whether NVRTC ran (false: the cache had it).
    pub compiled: bool,
    /// The cubin's size.
    pub bytes: usize,
    /// Why it failed.
    pub error: Option<String>,
}

/// Compiles `kernels` for `arch` with NVRTC on `jobs` threads, into the
/// CUDA driver's cache (`$ATTNFORGE_CACHE_DIR/nvrtc`).
#[cfg(feature = "cuda")]
pub fn compile(kernels: &[KernelSpec], arch: Arch, jobs: usize) -> Vec<Compiled> {
    use attnforge_runtime::cuda::rtc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let next = AtomicUsize::new(0);
    let out = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, kernels.len().max(1)) {
            s.spawn(|| {
                while let Some(k) = kernels.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let t = std::time::Instant::now();
                    let r = attnforge_codegen::kernels::generate(k, arch.target())
                        .map_err(|e| e.to_string())
                        .and_then(|g| {
                            rtc::compile_cached(&g.to_string(), arch, &rtc::default_cache_dir())
                                .map_err(|e| e.to_string())
                        });
                    let c = Compiled {
                        symbol: symbol(k),
                        seconds: t.elapsed().as_secs_f64(),
                        compiled: r.as_ref().is_ok_and(|x| x.1),
                        bytes: r.as_ref().map_or(0, |x| x.0.len()),
                        error: r.err(),
                    };
                    eprintln!(
                        "{:8} {:70} {:6.2}s {}",
                        if c.error.is_some() {
                            "FAILED"
                        } else if c.compiled {
                            "compiled"
                        } else {
                            "cached"
                        },
                        c.symbol,
                        c.seconds,
                        c.error.as_deref().unwrap_or("")
                    );
                    out.lock().unwrap_or_else(|e| e.into_inner()).push(c);
                }
            });
        }
    });
    out.into_inner().unwrap_or_else(|e| e.into_inner())
}
