//! The spec arguments every command shares, read by the one front-end.

use attnforge::codegen::frontend::text;
use attnforge::codegen::kernels::{attention_kernels, KernelSpec};
use attnforge::{Arch, AttentionSpec, KernelKind, KvLayoutSpec};

use crate::Failure;

/// A spec, as the attributes write it.
#[derive(clap::Args, Clone, Debug)]
pub struct SpecArgs {
    /// The KV page layout, with `#[kv_layout]`'s keys, for example
    /// "page_size=16, kv_heads=8, head_dim=128, dtype=f16".
    #[arg(long)]
    pub layout: String,
    /// The attention, with `#[attention]`'s keys (its layout is --layout,
    /// so no `kv`), for example "q_heads=32, causal, sliding_window=4096".
    /// Without it, the layout's append kernel alone.
    #[arg(long)]
    pub attention: Option<String>,
}

/// A checked spec.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The layout.
    pub layout: KvLayoutSpec,
    /// The attention over it, when one was given.
    pub attention: Option<AttentionSpec>,
    /// The arguments it was read from.
    pub args: SpecArgs,
}

impl SpecArgs {
    /// Parses and checks both arguments; every problem, one per line.
    pub fn resolve(&self) -> Result<Spec, Failure> {
        let usage = |e: text::ArgErrors| Failure::Usage(e.to_string());
        let layout = text::kv_layout(&self.layout).map_err(usage)?.spec;
        let attention = match &self.attention {
            Some(a) => Some(text::attention(a, &layout).map_err(usage)?),
            None => None,
        };
        Ok(Spec {
            layout,
            attention,
            args: self.clone(),
        })
    }
}

impl Spec {
    /// Every kernel of the spec: the layout's append, then the attention's
    /// decode, prefill, split-K decode and merge.
    pub fn kernels(&self) -> Vec<KernelSpec> {
        let mut all = vec![KernelSpec::Append(self.layout)];
        if let Some(a) = &self.attention {
            all.extend(attention_kernels(a));
        }
        all
    }

    /// The kernels `choice` selects (`None`: all of them).
    pub fn select(&self, choice: Option<KernelChoice>) -> Result<Vec<KernelSpec>, Failure> {
        let Some(choice) = choice else {
            return Ok(self.kernels());
        };
        let kind = choice.kind();
        let found: Vec<KernelSpec> = self
            .kernels()
            .into_iter()
            .filter(|k| k.kind() == kind)
            .collect();
        if found.is_empty() {
            return Err(Failure::Usage(format!(
                "--kernel {}: that kernel needs an attention; give --attention",
                kind.name().replace('_', "-")
            )));
        }
        Ok(found)
    }
}

/// A kernel kind on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum KernelChoice {
    /// Paged decode attention.
    Decode,
    /// Paged prefill attention for ragged batches.
    Prefill,
    /// Split-K decode (partials of one KV chunk per block).
    DecodeSplit,
    /// The merge of split-K decode's partials.
    DecodeMerge,
    /// KV append.
    Append,
}

impl KernelChoice {
    fn kind(self) -> KernelKind {
        match self {
            KernelChoice::Decode => KernelKind::Decode,
            KernelChoice::Prefill => KernelKind::Prefill,
            KernelChoice::DecodeSplit => KernelKind::DecodeSplit,
            KernelChoice::DecodeMerge => KernelKind::DecodeMerge,
            KernelChoice::Append => KernelKind::Append,
        }
    }
}

/// An `--arch` list: comma-separated arch names, or `all` (every GPU arch;
/// with `host` too when `host` is allowed).
pub fn archs(text: &str, host_allowed: bool) -> Result<Vec<Arch>, Failure> {
    let mut out = Vec::new();
    for name in text.split(',').map(str::trim) {
        if name == "all" {
            out.extend(Arch::ALL);
            if host_allowed {
                out.push(Arch::Host);
            }
            continue;
        }
        match Arch::from_name(name).or((name == "host").then_some(Arch::Host)) {
            Some(Arch::Host) if !host_allowed => return Err(Failure::Usage(
                "--arch host: the host target has no GPU code; choose gfx90a, gfx940, gfx1030, sm_80 or sm_90"
                    .into(),
            )),
            Some(a) => out.push(a),
            None => {
                let mut known: Vec<&str> = Arch::ALL.iter().map(|a| a.name()).collect();
                if host_allowed {
                    known.push("host");
                }
                return Err(Failure::Usage(format!(
                    "--arch `{name}`: unknown arch; expected {} or all",
                    known.join(", ")
                )));
            }
        }
    }
    out.dedup();
    Ok(out)
}
