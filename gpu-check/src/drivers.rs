//! The devices the run half can use: the CUDA driver (feature `cuda`) on
//! the GPU machine, the CPU driver (feature `cpu`) here. The run half is
//! generic over [`Backend`], so every line of it above the driver runs in
//! the tests.

use std::collections::HashMap;
use std::sync::OnceLock;

use attnforge_codegen::kernels::KernelSpec;
use attnforge_codegen::{CodeObject, CodeObjects};
use attnforge_runtime::driver::Driver;

use crate::error::Error;

/// Makes drivers: one per group of cases (each with its bundled item's
/// code objects), so groups run in parallel threads.
pub trait Backend: Sync {
    /// The driver.
    type D: Driver;
    /// `cuda` or `cpu`.
    fn name(&self) -> &'static str;
    /// A driver for device 0, with `registry`'s code objects where it has
    /// them (the CUDA driver compiles the rest with NVRTC).
    fn open(&self, registry: Option<&'static CodeObjects>) -> Result<Self::D, Error>;
}

/// A bundled item's code objects, with its layout's append added to an
/// attention's (the registry a driver gets holds one item's objects, and
/// [`attnforge_runtime::launch::Kernels::load`] loads the append too).
pub fn registry(item: &str) -> Option<&'static CodeObjects> {
    static MERGED: OnceLock<HashMap<&'static str, &'static CodeObjects>> = OnceLock::new();
    let map = MERGED.get_or_init(|| {
        let all = attnforge_kernels::ALL;
        all.iter()
            .map(|b| {
                let mut objects: Vec<CodeObject> = b.objects.objects.to_vec();
                if let KernelSpec::Decode(a) = b.kernel {
                    let layout = all.iter().find(|x| x.kernel == KernelSpec::Append(a.kv));
                    if let Some(l) = layout {
                        objects.extend_from_slice(l.objects.objects);
                    }
                }
                // Leaked once per process: a driver keeps `&'static` code objects.
                let objects: &'static [CodeObject] = Box::leak(objects.into_boxed_slice());
                let merged: &'static CodeObjects = Box::leak(Box::new(CodeObjects {
                    objects,
                    ..b.objects
                }));
                (b.name, merged)
            })
            .collect()
    });
    map.get(item).copied()
}

/// The CPU driver at a GPU arch's target (sm_90's warp of 32 by default):
/// the same kernels the GPU runs, on the CPU backend.
#[cfg(feature = "cpu")]
pub struct CpuBackend {
    /// Kernels compiled once for every driver made.
    pub kernels: std::sync::Arc<attnforge_runtime::cpu::CpuDevice>,
    /// The target.
    pub target: attnforge_codegen::Target,
    /// Fast or checked.
    pub mode: attnforge_runtime::cpu::Mode,
}

#[cfg(feature = "cpu")]
impl CpuBackend {
    /// At sm_90, fast.
    pub fn sm90() -> CpuBackend {
        CpuBackend {
            kernels: Default::default(),
            target: attnforge_codegen::Arch::Sm90.target(),
            mode: attnforge_runtime::cpu::Mode::Fast,
        }
    }
}

#[cfg(feature = "cpu")]
impl Backend for CpuBackend {
    type D = attnforge_runtime::driver::cpu::CpuDriver;
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn open(&self, _: Option<&'static CodeObjects>) -> Result<Self::D, Error> {
        Ok(attnforge_runtime::driver::cpu::CpuDriver::with_kernels(
            self.kernels.clone(),
            self.target,
            self.mode,
        ))
    }
}

/// The CUDA driver on one device.
#[cfg(feature = "cuda")]
pub struct CudaBackend {
    /// The device's ordinal.
    pub ordinal: i32,
}

#[cfg(feature = "cuda")]
impl Backend for CudaBackend {
    type D = attnforge_runtime::driver::cuda::CudaDriver;
    fn name(&self) -> &'static str {
        "cuda"
    }
    fn open(&self, registry: Option<&'static CodeObjects>) -> Result<Self::D, Error> {
        attnforge_runtime::driver::cuda::CudaDriver::new(self.ordinal, registry).map_err(|e| {
            Error::Device {
                driver: "CUDA",
                message: e.to_string(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_attention_registry_holds_its_layouts_append() {
        let r = super::registry("llama3_8b").unwrap();
        let kv = super::registry("llama3_kv").unwrap();
        assert_eq!(
            r.objects.len(),
            attnforge_kernels::ALL[1].objects.objects.len() + kv.objects.len()
        );
        assert!(super::registry("no such item").is_none());
    }
}
