//! What the build helper leaves behind: HIP code objects, compiled at build
//! time, embedded in the binary and found through the spec's item.
//!
//! The build helper writes one Rust file per `#[kv_layout]`/`#[attention]`
//! item into `OUT_DIR`; the macro expansion `include!`s it as the item's
//! `HIP` constant. Without a build helper run the constant says so.

use crate::target::Arch;

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

/// One kernel compiled for one arch: a raw AMDGPU ELF code object.
#[derive(Clone, Copy, Debug)]
pub struct CodeObject {
    /// Which kernel.
    pub kind: KernelKind,
    /// The kernel's symbol (see [`crate::kernels::symbol`]).
    pub symbol: &'static str,
    /// The arch it was compiled for.
    pub arch: Arch,
    /// The ELF bytes, ready for `hipModuleLoadData`.
    pub bytes: &'static [u8],
}

/// The HIP code objects available for one spec item.
#[derive(Clone, Copy, Debug)]
pub enum HipKernels {
    /// Compiled at build time.
    Built(&'static [CodeObject]),
    /// Not compiled; the reason says why and what to do.
    NotBuilt(&'static str),
}

impl HipKernels {
    /// The code object of `kind` for `arch`, or why there is none.
    pub fn find(&self, kind: KernelKind, arch: Arch) -> Result<&'static CodeObject, String> {
        match *self {
            HipKernels::Built(objects) => objects
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
                }),
            HipKernels::NotBuilt(reason) => Err(reason.to_string()),
        }
    }

    /// The compiled code objects (empty when not built).
    pub fn objects(&self) -> &'static [CodeObject] {
        match *self {
            HipKernels::Built(objects) => objects,
            HipKernels::NotBuilt(_) => &[],
        }
    }
}

/// The reason used when no build helper registry exists for an item.
pub const NO_BUILD_HELPER: &str = "no HIP code objects were built for this item: call \
attnforge_codegen::build::Build from the crate's build.rs to compile them with hipcc";

/// The reason used when the build helper ran with HIP turned off.
pub const HIP_DISABLED: &str = "this crate was built without HIP code objects (its `hip` \
feature is off); enable it, with hipcc installed, to compile them";
