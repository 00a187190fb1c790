//! The CUDA device, on cudarc's lower layers (its `sys` FFI and `result`
//! wrappers over the driver API and NVRTC, both loaded at run time, so a
//! build needs no CUDA and a machine without it gets an error, not a
//! failed start):
//! - this module: [`CudaDevice`] (a device opened, its arch, SM count and
//!   name). Memory, streams, modules and launches are the CUDA driver's
//!   ([`crate::driver::cuda::CudaDriver`]), under the launch path every
//!   device shares ([`crate::launch`]);
//! - [`rtc`]: NVRTC, generated kernels compiled at run time into cubins,
//!   cached on disk.
//!
//! Cubins come from the build-time registry (nvcc) or, for specs built at
//! run time, from NVRTC via [`rtc`]. **Nothing has been launched on an
//! NVIDIA GPU yet** (none was available): the driver is written and
//! type-checked, and only what needs no device is tested (no driver or
//! device found; NVRTC compiling generated kernels into sm_80 and sm_90
//! cubins, and its cache).

#[cfg(feature = "cuda")]
pub mod rtc;

use attnforge_codegen::Arch;

/// Why the CUDA device could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// attnforge-runtime was built without its `cuda` feature.
    #[error("attnforge-runtime was built without its `cuda` feature: enable it (and install the NVIDIA driver) to use CUDA devices")]
    NotCompiledWithCuda,
    /// No NVIDIA driver (libcuda), or the driver has no such device.
    #[error("no CUDA device: {0}")]
    NoDevice(String),
    /// The device's compute capability has no attnforge target.
    #[error("the device has {0}, for which attnforge generates no kernels (supported: 8.x as sm_80, 9.x as sm_90)")]
    UnsupportedArch(String),
    /// A CUDA driver call failed.
    #[error("{call} failed: {status}")]
    Cuda {
        /// The call.
        call: &'static str,
        /// CUDA's name and message for the status.
        status: String,
    },
    /// No cubin for the kernel and arch, and none could be made.
    #[error("no code object: {0}")]
    NoCodeObject(String),
    /// libnvrtc was not found (the message says where it was looked for).
    #[error("NVRTC could not be loaded: {0}")]
    NoNvrtc(String),
    /// NVRTC failed.
    #[error("NVRTC failed in {what} (options: {options}):\n{log}")]
    Rtc {
        /// The step that failed (`nvrtcCompileProgram`, ...).
        what: String,
        /// The compile options.
        options: String,
        /// NVRTC's log, or why it could not be loaded.
        log: String,
    },
    /// The on-disk cubin cache could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// A CUDA GPU.
#[derive(Debug)]
pub struct CudaDevice {
    ordinal: i32,
    arch: Arch,
    compute_capability: (i32, i32),
    name: String,
    compute_units: u32,
}

impl CudaDevice {
    /// Opens device `ordinal`: `NoDevice` when there is no NVIDIA driver
    /// (libcuda) or it has no such device, `UnsupportedArch` below compute
    /// capability 8.0, `NotCompiledWithCuda` without the `cuda` feature.
    pub fn new(ordinal: i32) -> Result<CudaDevice, CudaError> {
        #[cfg(not(feature = "cuda"))]
        {
            let _ = ordinal;
            Err(CudaError::NotCompiledWithCuda)
        }
        #[cfg(feature = "cuda")]
        {
            use cudarc::driver::sys::CUdevice_attribute as A;
            let dev = open(ordinal)?;
            let attr = |a: A| {
                // SAFETY: `dev` came from cuDeviceGet (in `open`).
                unsafe { cudarc::driver::result::device::get_attribute(dev, a) }
                    .map_err(cuda("cuDeviceGetAttribute"))
            };
            let major = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
            let minor = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
            let sms = attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
            let name =
                cudarc::driver::result::device::get_name(dev).map_err(cuda("cuDeviceGetName"))?;
            let arch = Arch::from_compute_capability(major, minor).ok_or_else(|| {
                CudaError::UnsupportedArch(format!("compute capability {major}.{minor} ({name})"))
            })?;
            Ok(CudaDevice {
                ordinal,
                arch,
                compute_capability: (major, minor),
                name,
                compute_units: u32::try_from(sms).unwrap_or(1).max(1),
            })
        }
    }

    /// The device's arch (the newest attnforge target it runs).
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The device's compute capability (major, minor).
    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }

    /// The device's name (`NVIDIA H100 80GB HBM3`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device's streaming multiprocessors (what the split-K planner fills).
    pub fn compute_units(&self) -> u32 {
        self.compute_units
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> i32 {
        self.ordinal
    }
}

/// CUDA's name and message for a status (`CUDA_ERROR_NO_DEVICE: no
/// CUDA-capable device is detected`).
#[cfg(feature = "cuda")]
pub(crate) fn status(e: cudarc::driver::DriverError) -> String {
    let name = e.error_name().map(|s| s.to_string_lossy().into_owned());
    let text = e.error_string().map(|s| s.to_string_lossy().into_owned());
    match (name, text) {
        (Ok(n), Ok(t)) => format!("{n}: {t}"),
        _ => format!("{:?}", e.0),
    }
}

#[cfg(feature = "cuda")]
fn cuda(call: &'static str) -> impl Fn(cudarc::driver::DriverError) -> CudaError {
    move |e| CudaError::Cuda {
        call,
        status: status(e),
    }
}

/// The driver's handle of device `ordinal`, after loading libcuda (checked
/// first: cudarc panics on a library it cannot load) and `cuInit`.
#[cfg(feature = "cuda")]
pub(crate) fn open(ordinal: i32) -> Result<cudarc::driver::sys::CUdevice, CudaError> {
    use cudarc::driver::result;
    // SAFETY: dlopen of the driver's library by its names; nothing of it runs.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(CudaError::NoDevice(
            "the NVIDIA driver's library (libcuda.so.1) could not be loaded: no NVIDIA driver \
             is installed, or it is not on the loader's path"
                .into(),
        ));
    }
    result::init().map_err(|e| CudaError::NoDevice(format!("cuInit: {}", status(e))))?;
    let n = result::device::get_count().map_err(|e| CudaError::NoDevice(status(e)))?;
    if ordinal < 0 || ordinal >= n {
        return Err(CudaError::NoDevice(format!("device {ordinal} of {n}")));
    }
    result::device::get(ordinal).map_err(cuda("cuDeviceGet"))
}
