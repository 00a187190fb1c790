//! The pack's manifest (`manifest.json`): every correctness case with its
//! spec, lengths, seed, the SHA-256 of its inputs and its expected-output
//! files, and the speed part's configuration.

use std::path::Path;

use attnforge_codegen::kernels::{symbol, KernelSpec};
use attnforge_codegen::AttentionSpec;
use attnforge_runtime::reference::tolerance;
use serde::{Deserialize, Serialize};

use crate::error::{read_json, Error};
use crate::raw::Ty;
use crate::spec_json::SpecJson;
use crate::speed::SpeedConfig;

/// The manifest's schema name.
pub const PACK_SCHEMA: &str = "attnforge-gpu-check/pack-1";

/// Which launches a case makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Decode, one launch (no split).
    Decode,
    /// Split-K decode with a fixed chunk: the split kernel, then the merge.
    Split,
    /// Prefill of a ragged batch.
    Prefill,
    /// KV append into shuffled slots (one padding slot); bit-exact.
    Append,
}

/// A file of the pack or of the scratch folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileRef {
    /// The array's name (`out`, `k`, `v`, ...).
    pub name: String,
    /// The file, relative to the folder of the JSON that names it.
    pub file: String,
    /// Its element type.
    pub ty: Ty,
    /// Its element count.
    pub count: usize,
}

/// One correctness case.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Case {
    /// Unique, file-name safe.
    pub id: String,
    /// `bundled` (an item of attnforge_kernels::ALL) or `variant`.
    pub group: String,
    /// The bundled item's name.
    pub item: Option<String>,
    /// What it covers, in words.
    pub label: String,
    /// Its launches.
    pub kind: Kind,
    /// The spec.
    pub spec: SpecJson,
    /// Context lengths of the batch (empty for an append).
    pub lens: Vec<usize>,
    /// Fixed split-K chunk, for a split case.
    pub split_chunk: Option<u32>,
    /// The input generator's seed.
    pub seed: u64,
    /// The symbols launched, in order.
    pub kernels: Vec<String>,
    /// Largest relative L2 error allowed (0: bit-exact, for appends).
    pub tolerance: f64,
    /// SHA-256 of every input array, in order (the build half's).
    #[serde(default)]
    pub inputs_sha256: Option<String>,
    /// The CPU backend's outputs (`cpu.*`) and the f64 reference's
    /// (`ref.out`, as f32), relative to the pack.
    #[serde(default)]
    pub expected: Vec<FileRef>,
    /// The CPU backend's own error against the f64 reference (fraction
    /// of differing elements for an append).
    #[serde(default, with = "crate::compare::float::option")]
    pub cpu_vs_reference: Option<f64>,
}

impl Case {
    /// A case of `kind` for attention `a`.
    pub fn attention(
        id: String,
        label: String,
        kind: Kind,
        a: &AttentionSpec,
        lens: &[usize],
        seed: u64,
    ) -> Case {
        let kernels = match kind {
            Kind::Decode => vec![KernelSpec::Decode(*a)],
            Kind::Split => vec![KernelSpec::DecodeSplit(*a), KernelSpec::DecodeMerge(*a)],
            Kind::Prefill => vec![KernelSpec::Prefill(*a)],
            Kind::Append => vec![KernelSpec::Append(a.kv)],
        };
        let tol = match a.kv.dtype {
            // The reference runs on the dequantized cache: what is left is
            // the query dtype's rounding (as the numeric tests' harness).
            attnforge_codegen::DType::F8E4M3 => tolerance(a.query_dtype()),
            kv => tolerance(kv).max(tolerance(a.query_dtype())),
        };
        let longest = lens.iter().copied().max().unwrap_or(1);
        Case {
            id,
            group: "variant".into(),
            item: None,
            label,
            kind,
            spec: if kind == Kind::Append {
                SpecJson::layout(&a.kv)
            } else {
                SpecJson::attention(a)
            },
            lens: if kind == Kind::Append {
                Vec::new()
            } else {
                lens.to_vec()
            },
            split_chunk: (kind == Kind::Split).then(|| (longest / 4).max(5) as u32),
            seed,
            kernels: kernels.iter().map(symbol).collect(),
            tolerance: if kind == Kind::Append { 0.0 } else { tol },
            inputs_sha256: None,
            expected: Vec::new(),
            cpu_vs_reference: None,
        }
    }

    /// The kernels' specs, from the case's spec.
    pub fn kernel_specs(&self) -> Result<Vec<KernelSpec>, Error> {
        let bad = |m: String| Error::bad_case(&self.id, m);
        Ok(match self.kind {
            Kind::Append => vec![KernelSpec::Append(self.spec.to_layout().map_err(bad)?)],
            k => {
                let a = self.spec.to_attention().map_err(bad)?;
                match k {
                    Kind::Decode => vec![KernelSpec::Decode(a)],
                    Kind::Split => vec![KernelSpec::DecodeSplit(a), KernelSpec::DecodeMerge(a)],
                    _ => vec![KernelSpec::Prefill(a)],
                }
            }
        })
    }
}

/// The whole manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`PACK_SCHEMA`].
    pub schema: String,
    /// What computed the expected outputs (`the CPU backend at sm_90 (warp 32)`).
    pub expected_by: String,
    /// The correctness cases.
    pub cases: Vec<Case>,
    /// The speed part.
    pub speed: SpeedConfig,
}

impl Manifest {
    /// Reads `dir/manifest.json`, checking its schema and that case ids are
    /// unique and file-name safe.
    pub fn load(dir: &Path) -> Result<Manifest, Error> {
        let path = dir.join("manifest.json");
        let m: Manifest = read_json(&path, "pack manifest")?;
        if m.schema != PACK_SCHEMA {
            return Err(Error::bad_file(
                &path,
                format!(
                    "schema `{}`, but this runner reads `{PACK_SCHEMA}`",
                    m.schema
                ),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for c in &m.cases {
            if !safe_id(&c.id) {
                return Err(Error::bad_file(
                    &path,
                    format!("case id `{}` is not file-name safe", c.id),
                ));
            }
            if !seen.insert(c.id.as_str()) {
                return Err(Error::bad_file(
                    &path,
                    format!("case id `{}` appears twice", c.id),
                ));
            }
        }
        Ok(m)
    }
}

/// Letters, digits, `_`, `-` and `.` only (not leading).
pub fn safe_id(id: &str) -> bool {
    !id.is_empty()
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}
