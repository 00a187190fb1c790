//! # attnforge
//!
//! Paged-attention kernels generated for your model's exact shape: declare
//! the KV page layout and the attention with two attributes, and attnforge
//! generates the kernels as a structured SIMT IR, prints them as HIP C++ and
//! compiles them at build time: with hipcc for AMD GPUs (gfx90a, gfx940,
//! gfx1030) and, from the same text, with nvcc for NVIDIA GPUs (sm_80,
//! sm_90; feature `cuda`).
//!
//! This is the facade crate: it re-exports the layers below.
//!
//! | crate | layer |
//! |---|---|
//! | [`codegen`] | specs, the one front-end, kernel IR, verifier, HIP printer, build helper |
//! | `attnforge-macros` | `#[kv_layout]`, `#[attention]` (re-exported here) |
//! | [`kernels`] | the bundled model specs and their code objects, built at build time |
//! | [`runtime`] | KV pages, sequences, the launch path and its drivers (CPU, HIP, CUDA) |
//!
//! ```
//! use attnforge::prelude::*;
//!
//! #[kv_layout(page_size = 16, kv_heads = 8, head_dim = 128, dtype = f16, order = NHD)]
//! pub struct Llama3Kv;
//!
//! #[attention(kv = Llama3Kv, q_heads = 32, causal)]
//! pub struct Llama3;
//!
//! assert_eq!(Llama3::SPEC.group_size(), 4);
//!
//! // The decode kernel for an MI200 (wave64), as HIP C++:
//! let decode = Llama3::decode_kernel(Arch::Gfx90a.target()).unwrap();
//! assert!(decode.to_string().contains(decode.symbol()));
//!
//! // This crate has no build helper, so no code objects were compiled for
//! // these two items; `attnforge::kernels` shows a crate that has one.
//! assert!(Llama3::CODE_OBJECTS.find(KernelKind::Decode, Arch::Gfx90a).is_err());
//! ```

extern crate self as attnforge;

pub use attnforge_codegen as codegen;
pub use attnforge_kernels as kernels;
pub use attnforge_macros::{attention, kv_layout};
pub use attnforge_runtime as runtime;

pub use attnforge_codegen::{
    Alibi, Arch, Attention, AttentionSpec, CodeObject, CodeObjects, DType, KernelKind, KvLayout,
    KvLayoutSpec, KvScale, Order, SpecError, Target, F8E4M3,
};

/// Everything a model file needs.
pub mod prelude {
    pub use crate::runtime::device::AttentionHandle;
    pub use crate::runtime::launch::{Gpu, Kernels, LaunchParams, Workspace, WorkspaceLimits};
    pub use crate::runtime::{KvScales, Params, Split};
    pub use crate::{
        attention, kv_layout, Alibi, Arch, Attention, AttentionSpec, CodeObjects, DType,
        KernelKind, KvLayout, KvLayoutSpec, KvScale, Order, Target, F8E4M3,
    };
}
