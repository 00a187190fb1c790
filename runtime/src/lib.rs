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
//! - [`hip::HipDevice`], on hip-sys (feature `hip`): code objects from the
//!   build-time registry or compiled at run time with hiprtc (cached on
//!   disk). **Never run on a GPU yet**: no launch has been tested on hardware.
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

pub mod alloc;
pub mod arena;
pub mod bench;
mod cache;
#[cfg(feature = "cpu")]
pub mod check;
#[cfg(feature = "cpu")]
pub mod cpu;
pub mod device;
pub mod hip;
pub mod launch;
pub mod plan;
pub mod reference;
mod table;

pub use alloc::{AllocError, BlockHash, PageAllocator, PageId};
pub use arena::{Arena, HostArena};
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
    /// The launch was refused, or checked mode found problems.
    #[cfg(feature = "cpu")]
    #[error(transparent)]
    Launch(#[from] attnforge_codegen::cpu::LaunchError),
}
