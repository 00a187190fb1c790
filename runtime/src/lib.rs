//! # attnforge-runtime
//!
//! The runtime layer: what an inference engine holds between kernel
//! launches, and the devices that launch generated kernels. It depends on
//! `attnforge-codegen` for specs and kernels.
//!
//! Present now:
//! - [`PageAllocator`], the capacity-checked, reference-counted page
//!   allocator with prefix caching and explicit LRU eviction;
//! - [`KvCache`], sequences over the allocator and the K/V arenas of every
//!   layer: all-or-nothing appends, forks with copy-on-write, explicit LRU
//!   eviction, sliding-window release, CSR and 2-D block tables;
//! - [`PageTable`], the CSR page table, validated before any launch;
//! - [`cpu::CpuDevice`], which JIT-compiles generated kernels through LLVM
//!   and runs them on the host, fast or in checked (sanitizer) mode;
//! - [`device::Device`], one launch API for both devices, and launches
//!   through a [`KvCache`] on any of them;
//! - [`reference`], an independent f64 implementation to check kernels against,
//!   and [`check`], which runs any generated kernel on seeded random paged
//!   inputs against it (the numeric tests and `attnforge check` share it).
//!
//! - [`launch`], the GPU launch path written once against the
//!   [`driver::Driver`] seam: device views, streams, plan once per step
//!   into a workspace, one launch per layer (two with split-K), nothing
//!   allocated, copied or synchronized per launch;
//! - [`driver::cpu::CpuDriver`], which runs that path here with the CPU
//!   backend's kernels and records every driver call, and
//!   [`driver::hip::HipDriver`] on hip-sys (feature `hip`): code objects
//!   from the build-time registry or compiled at run time with hiprtc
//!   (cached on disk); [`driver::cuda::CudaDriver`] on the CUDA driver API
//!   through cudarc (feature `cuda`): cubins from the registry or compiled
//!   at run time with NVRTC (cached on disk). **Neither GPU driver has run
//!   on a GPU yet.**
//!
//! ```
//! use attnforge_codegen::{AttentionSpec, DType, KvLayoutSpec, KvScale, Order, Arch};
//! use attnforge_runtime::{cpu::{CpuDevice, Mode}, PageTable};
//!
//! let kv = KvLayoutSpec { page_size: 4, kv_heads: 1, head_dim: 8, dtype: DType::F32, order: Order::Nhd, scale: KvScale::Unscaled };
//! let spec = AttentionSpec { causal: true, ..AttentionSpec::new(kv, 2) };
//! // Two pages; one sequence of 6 tokens on pages 1 then 0.
//! let k = vec![0.5f32; 2 * 4 * 8];
//! let v: Vec<f32> = (0..64).map(|i| (i / 8) as f32).collect();
//! let table = PageTable::from_sequences(4, [(&[1, 0][..], 6)]);
//! let q = vec![1.0f32; 2 * 8];
//! let mut out = vec![f32::NAN; 2 * 8];
//! let device = CpuDevice::new();
//! device.decode(&spec, Arch::Gfx90a.target(), Mode::Checked, &q, &k, &v, &table, &mut out).unwrap();
//! // Equal keys: the output is the mean of the 6 value rows (4,5,6,7 then 0,1).
//! assert!((out[0] - 23.0 / 6.0).abs() < 1e-5);
//! ```

pub mod bench;
mod cache;
#[cfg(feature = "cpu")]
pub mod check;
#[cfg(feature = "cpu")]
pub mod cpu;
pub mod cuda;
pub mod device;
pub mod driver;
pub mod hip;
pub mod launch;
pub mod plan;
pub mod reference;
#[cfg(any(feature = "hip", feature = "cuda"))]
mod rtc_cache;

pub use alloc::{AllocError, BlockHash, PageAllocator, PageId};
pub use arena::{Arena, HostArena};
pub(crate) use cache::table;
pub use cache::{alloc, arena};
pub use cache::{BlockTable, CacheError, KvCache, SeqId};
pub use plan::{plan_decode, DecodePlan, KvScales, Params, Split};
pub use table::{validate_slots, PageTable, TableError};

/// Why a runtime call failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A spec breaks a rule.
    #[error("invalid spec: {0}")]
    Spec(#[from] attnforge_codegen::SpecError),
    /// A KV cache operation failed; nothing changed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A page table or slot mapping is invalid; nothing was launched.
    #[error("invalid page table: {0}")]
    Table(#[from] TableError),
    /// Buffers of the wrong size; nothing was launched.
    #[error("wrong shape: {0}")]
    Shape(String),
    /// A launch parameter of a variant (sinks, ALiBi slopes, split) is
    /// missing, unexpected or malformed; nothing was launched.
    #[error("launch parameter `{param}`: {message}")]
    Param {
        /// The parameter.
        param: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// Host elements of another dtype than the spec's.
    #[error("the spec stores {spec} but the buffers hold {given}")]
    DType {
        /// The spec's dtype.
        spec: attnforge_codegen::DType,
        /// The buffers' dtype.
        given: attnforge_codegen::DType,
    },
    /// Code generation failed.
    #[error(transparent)]
    Codegen(#[from] attnforge_codegen::kernels::CodegenError),
    /// JIT compilation failed.
    #[cfg(feature = "cpu")]
    #[error(transparent)]
    Jit(#[from] attnforge_codegen::cpu::CpuError),
    /// The HIP device could not be used, or a HIP call failed.
    #[error(transparent)]
    Hip(#[from] hip::HipError),
    /// The CUDA device could not be used, or a CUDA call failed.
    #[error(transparent)]
    Cuda(#[from] cuda::CudaError),
    /// A driver call failed (or queued work failed when its stream ran it).
    #[error(transparent)]
    Driver(#[from] driver::DriverError),
    /// A view of another element type than the spec's; nothing was queued.
    #[error("{what}: the spec needs {spec} but the view holds {given}")]
    ViewDType {
        /// The view.
        what: String,
        /// The spec's dtype.
        spec: attnforge_codegen::DType,
        /// The view's.
        given: attnforge_codegen::DType,
    },
    /// An object of one device used with another; nothing was queued.
    #[error("{what} is on device {found}, but the launch is on device {expected}")]
    WrongDevice {
        /// The object.
        what: String,
        /// Its device.
        found: u32,
        /// The stream's device.
        expected: u32,
    },
    /// Memory with queued work on another stream; nothing was queued.
    #[error(
        "{what} has queued work on stream {stream}, not yet synchronized: synchronize it          before using the memory on stream {asked}"
    )]
    Busy {
        /// The memory.
        what: String,
        /// The stream with queued work on it.
        stream: u64,
        /// The stream asked for.
        asked: u64,
    },
    /// A step plan that no longer holds, or is for another batch, spec or
    /// cache; nothing was queued.
    #[error("stale or mismatched step plan: {0}")]
    StalePlan(String),
    /// A step does not fit in its workspace; nothing was queued.
    #[error("the step needs {need} {what} but the workspace holds {have}: make it with larger WorkspaceLimits")]
    Workspace {
        /// What is short (batch, pages, new tokens, splits, ...).
        what: &'static str,
        /// What the step needs.
        need: u64,
        /// What the workspace holds.
        have: u64,
    },
    /// The launch was refused, or checked mode found problems.
    #[cfg(feature = "cpu")]
    #[error(transparent)]
    Launch(#[from] attnforge_codegen::cpu::LaunchError),
}
