//! # attnforge-codegen
//!
//! The compiler layer of attnforge: everything between a spec and a kernel's
//! source. It depends on no runtime and no GPU.
//!
//! - [`spec`]: the spec types and their rules, shared by the macros and the
//!   build helper through [`frontend`];
//! - [`ir`]: the structured SIMT kernel IR, its builder and its verifier;
//! - [`kernels`]: the kernels (decode, append), each named by [`kernels::symbol`];
//! - [`hip`]: the HIP C++ printer;
//! - [`build`]: the build-script helper that compiles the kernels of a crate's
//!   specs with hipcc; [`registry`] is what it leaves behind;
//! - [`codeobj`]: a reader for the AMDGPU code objects hipcc writes (symbols,
//!   target, per-kernel registers and LDS) and their occupancy.
//!
//! ```
//! use attnforge_codegen::kernels::{generate, KernelSpec};
//! use attnforge_codegen::spec::{AttentionSpec, DType, KvLayoutSpec, KvScale, Order};
//! use attnforge_codegen::target::Arch;
//!
//! let kv = KvLayoutSpec { page_size: 16, kv_heads: 8, head_dim: 128, dtype: DType::F16, order: Order::Nhd, scale: KvScale::Unscaled };
//! let llama3 = AttentionSpec { causal: true, ..AttentionSpec::new(kv, 32) };
//! let decode = generate(&KernelSpec::Decode(llama3), Arch::Gfx90a.target()).unwrap();
//! let hip = decode.to_string(); // a complete HIP translation unit
//! assert!(hip.contains("extern \"C\" __global__"));
//! assert!(hip.contains(decode.symbol()));
//! ```

pub mod build;
pub mod codeobj;
#[cfg(feature = "cpu")]
pub mod cpu;
pub mod cubin;
pub mod fp8;
pub mod frontend;
pub mod hip;
pub mod ir;
pub mod kernels;
pub mod pod;
pub mod registry;
pub mod spec;
pub mod target;

pub use fp8::F8E4M3;
pub use registry::{CodeObject, CodeObjects, KernelKind};
pub use spec::{
    Alibi, Attention, AttentionSpec, DType, KvLayout, KvLayoutSpec, KvScale, Order, SpecError,
};
pub use target::{Arch, Target, Vendor};
