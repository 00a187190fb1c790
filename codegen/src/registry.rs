//! What the build helper leaves behind: code objects (AMDGPU ELFs and
//! NVIDIA cubins), compiled at build time, embedded in the binary and found
//! through the spec's item.
//!
//! The build helper writes one Rust file per `#[kv_layout]`/`#[attention]`
//! item into `OUT_DIR`; the macro expansion `include!`s it as the item's
//! `CODE_OBJECTS` constant. Without a build helper run the constant says so.

use crate::target::{Arch, Vendor};

/// The kernels attnforge generates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KernelKind {
    /// Paged decode attention: one query token per sequence.
    Decode,
    /// KV append: new K/V rows written into their slots.
    Append,
    /// Paged prefill attention: a ragged batch of new query tokens per sequence.
    Prefill,
    /// Split-K decode: one chunk of each sequence's KV per block, partial outputs.
    DecodeSplit,
    /// The merge of split-K decode's partial outputs.
    DecodeMerge,
}

impl KernelKind {
    /// Every kernel kind.
    pub const ALL: [KernelKind; 5] = [
        KernelKind::Decode,
        KernelKind::Append,
        KernelKind::Prefill,
        KernelKind::DecodeSplit,
        KernelKind::DecodeMerge,
    ];

    /// Short lower-case name (`decode`, `append`).
    pub const fn name(self) -> &'static str {
        match self {
            KernelKind::Decode => "decode",
            KernelKind::Append => "append",
            KernelKind::Prefill => "prefill",
            KernelKind::DecodeSplit => "decode_split",
            KernelKind::DecodeMerge => "decode_merge",
        }
    }
}

impl std::fmt::Display for KernelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One kernel compiled for one arch: a raw AMDGPU ELF code object or an
/// NVIDIA cubin (an ELF of machine `EM_CUDA`).
#[derive(Clone, Copy, Debug)]
pub struct CodeObject {
    /// Which kernel.
    pub kind: KernelKind,
    /// The kernel's symbol (see [`crate::kernels::symbol`]).
    pub symbol: &'static str,
    /// The arch it was compiled for (its vendor says which kind of ELF).
    pub arch: Arch,
    /// The ELF bytes, ready for `hipModuleLoadData` or `cuModuleLoadData`.
    pub bytes: &'static [u8],
}

/// The code objects compiled at build time for one spec item, every
/// vendor's, and why a vendor's are absent.
#[derive(Clone, Copy, Debug)]
pub struct CodeObjects {
    /// Every code object built for the item.
    pub objects: &'static [CodeObject],
    /// Why there are none for the AMD archs (`None`: hipcc ran).
    pub hip: Option<&'static str>,
    /// Why there are none for the NVIDIA archs (`None`: nvcc ran).
    pub cuda: Option<&'static str>,
}

impl CodeObjects {
    /// No code objects for any vendor, for one reason.
    pub const fn not_built(reason: &'static str) -> CodeObjects {
        CodeObjects {
            objects: &[],
            hip: Some(reason),
            cuda: Some(reason),
        }
    }

    /// Why `vendor`'s compiler did not run for this item, if it did not.
    pub fn missing(&self, vendor: Vendor) -> Option<&'static str> {
        match vendor {
            Vendor::Amd => self.hip,
            Vendor::Nvidia => self.cuda,
        }
    }

    /// The code object of `kind` for `arch`, or why there is none.
    pub fn find(&self, kind: KernelKind, arch: Arch) -> Result<&'static CodeObject, String> {
        let Some(vendor) = arch.vendor() else {
            return Err(format!(
                "{arch} is the CPU backend's target: it has no code objects"
            ));
        };
        if let Some(reason) = self.missing(vendor) {
            return Err(reason.to_string());
        }
        let objects = self.objects;
        objects
            .iter()
            .find(|o| o.kind == kind && o.arch == arch)
            .ok_or_else(|| {
                let built: Vec<_> = objects
                    .iter()
                    .filter(|o| o.kind == kind)
                    .map(|o| o.arch.name())
                    .collect();
                format!(
                    "no {kind} code object for {arch}; this build has it for: {}",
                    if built.is_empty() {
                        "no arch".to_string()
                    } else {
                        built.join(", ")
                    }
                )
            })
    }

    /// Every compiled code object (empty when none was built).
    pub fn objects(&self) -> &'static [CodeObject] {
        self.objects
    }
}

/// The reason used when no build helper registry exists for an item.
pub const NO_BUILD_HELPER: &str = "no code objects were built for this item: call \
attnforge_codegen::build::Build from the crate's build.rs to compile them with hipcc and nvcc";

/// The reason used when the build helper ran with HIP turned off.
pub const HIP_DISABLED: &str = "this crate was built without HIP code objects (its `hip` \
feature is off); enable it, with hipcc installed, to compile them";

/// The reason used when the build helper ran with CUDA turned off.
pub const CUDA_DISABLED: &str = "this crate was built without CUDA cubins (its `cuda` \
feature is off); enable it, with nvcc installed (scripts/setup.sh installs it), to compile them";
