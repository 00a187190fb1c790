//! # attnforge-kernels
//!
//! The build-only kernels crate: the bundled model specs ([`specs`]) and
//! the code objects its build script compiled for them: HIP code objects
//! for gfx90a, gfx940 and gfx1030 (feature `hip`), CUDA cubins for sm_80
//! and sm_90 (feature `cuda`). It holds no runtime code; the code objects
//! are embedded constants, reached through each spec's `CODE_OBJECTS`
//! constant or the crate-wide [`CODE_OBJECTS`].
//!
//! ```
//! use attnforge_codegen::{Attention, Arch, KernelKind};
//! use attnforge_kernels::specs::Llama3;
//!
//! assert_eq!(Llama3::SPEC.group_size(), 4);
//! match Llama3::CODE_OBJECTS.find(KernelKind::Decode, Arch::Gfx90a) {
//!     Ok(object) => assert!(object.bytes.starts_with(b"\x7fELF")),
//!     Err(reason) => println!("built without HIP: {reason}"),
//! }
//! ```
//!
//! Without the `hip` (or `cuda`) feature the specs are the same and every
//! `CODE_OBJECTS` constant says the crate was built without that vendor's
//! code objects.

pub mod specs;

mod registry {
    use attnforge_codegen as __attnforge;
    include!(concat!(env!("OUT_DIR"), "/attnforge/registry.rs"));
}

use attnforge_codegen::kernels::KernelSpec;
use attnforge_codegen::{Attention, CodeObjects, KvLayout};

pub use registry::CODE_OBJECTS;

/// One bundled spec item and the kernel it owns.
#[derive(Clone, Copy, Debug)]
pub struct Bundled {
    /// The spec's name (`llama3_8b`, `llama3_kv`, ...).
    pub name: &'static str,
    /// Its primary kernel: decode for an attention, append for a layout.
    pub kernel: KernelSpec,
    /// Its code objects (HIP and CUDA).
    pub objects: CodeObjects,
}

impl Bundled {
    /// Every kernel the item owns: for an attention decode, prefill,
    /// split-K decode and its merge; for a layout append.
    pub fn kernels(&self) -> Vec<KernelSpec> {
        match self.kernel {
            KernelSpec::Decode(a) => attnforge_codegen::kernels::attention_kernels(&a).to_vec(),
            k => vec![k],
        }
    }
}

const fn layout<T: KvLayout>() -> Bundled {
    Bundled {
        name: T::NAME,
        kernel: KernelSpec::Append(T::SPEC),
        objects: T::CODE_OBJECTS,
    }
}

const fn attention<T: Attention>() -> Bundled {
    Bundled {
        name: T::NAME,
        kernel: KernelSpec::Decode(T::SPEC),
        objects: T::CODE_OBJECTS,
    }
}

/// Every bundled spec item: the layouts (append) and the attentions (decode).
pub const ALL: &[Bundled] = {
    use specs::*;
    &[
        layout::<Llama3Kv>(),
        attention::<Llama3>(),
        layout::<MistralKv>(),
        attention::<Mistral>(),
        layout::<QwenKv>(),
        attention::<Qwen>(),
        layout::<Gemma2Kv>(),
        attention::<Gemma2Global>(),
        attention::<Gemma2Local>(),
        layout::<Phi3Kv>(),
        attention::<Phi3>(),
        layout::<SmolLM2Kv>(),
        attention::<SmolLM2>(),
    ]
};
