//! The HIP device, in three layers (as cudarc does):
//! - [`sys`]: raw FFI (`hip-sys`, plus hiprtc);
//! - [`result`]: every call returns a `Result` with HIP's own error string;
//! - this module: [`HipDevice`] (a device opened, its arch and compute
//!   units). Memory, streams, modules and launches are the HIP driver's
//!   ([`crate::driver::hip::HipDriver`]), under the launch path every
//!   device shares ([`crate::launch`]).
//!
//! Code objects come from the build-time registry (an item's `HIP`
//! constant) or, for specs built at run time, from hiprtc via [`rtc`],
//! cached on disk. **No launch has run on a GPU yet** (none was available):
//! the launch path is written and type-checked, and only the paths that need
//! no device are tested (no device found; hiprtc compilation and its cache).

#[cfg(feature = "hip")]
pub mod result;
#[cfg(feature = "hip")]
pub mod rtc;
#[cfg(feature = "hip")]
pub mod sys;

use attnforge_codegen::Arch;

/// Why the HIP device could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HipError {
    /// attnforge-runtime was built without its `hip` feature.
    #[error("attnforge-runtime was built without its `hip` feature: enable it (and install hipcc/libamdhip64) to use HIP devices")]
    NotCompiledWithHip,
    /// The HIP runtime answered but has no device.
    #[error("no HIP device: {0}")]
    NoDevice(String),
    /// The device's architecture has no attnforge target.
    #[error("the device is a {0}, for which attnforge generates no kernels (supported: gfx90a, gfx940, gfx1030)")]
    UnsupportedArch(String),
    /// A HIP call failed.
    #[error("{call} failed: {status}")]
    Hip {
        /// The call.
        call: &'static str,
        /// HIP's message.
        status: String,
    },
    /// No code object for the kernel and arch, and none could be made.
    #[error("no code object: {0}")]
    NoCodeObject(String),
    /// hiprtc failed.
    #[error("hiprtc failed in {what} (options: {options}):\n{log}")]
    Rtc {
        /// The step that failed.
        what: String,
        /// The compile options.
        options: String,
        /// hiprtc's log.
        log: String,
    },
    /// The on-disk code-object cache could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// A HIP GPU.
#[derive(Debug)]
pub struct HipDevice {
    ordinal: i32,
    arch: Arch,
    arch_name: String,
    compute_units: u32,
}

impl HipDevice {
    /// Opens device `ordinal`: `NoDevice` when the HIP runtime has none,
    /// `NotCompiledWithHip` without the `hip` feature.
    pub fn new(ordinal: i32) -> Result<HipDevice, HipError> {
        #[cfg(not(feature = "hip"))]
        {
            let _ = ordinal;
            Err(HipError::NotCompiledWithHip)
        }
        #[cfg(feature = "hip")]
        {
            let n = result::device_count().map_err(|s| HipError::NoDevice(format!("{s:?}")))?;
            if ordinal < 0 || ordinal >= n {
                return Err(HipError::NoDevice(format!("device {ordinal} of {n}")));
            }
            let (arch_name, compute_units) =
                result::arch_name(ordinal).map_err(|s| HipError::Hip {
                    call: "hipGetDeviceProperties",
                    status: s.to_string(),
                })?;
            let arch = Arch::from_name(&arch_name)
                .ok_or_else(|| HipError::UnsupportedArch(arch_name.clone()))?;
            Ok(HipDevice {
                ordinal,
                arch,
                arch_name,
                compute_units,
            })
        }
    }

    /// The device's arch.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The device's full arch name (with feature flags).
    pub fn arch_name(&self) -> &str {
        &self.arch_name
    }

    /// The device's compute units (what the split-K planner fills).
    pub fn compute_units(&self) -> u32 {
        self.compute_units
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> i32 {
        self.ordinal
    }
}
