//! `attnforge build`: the spec's kernels through the build helper (hipcc,
//! in parallel, cached by content hash as a crate's build script does),
//! and each code object's resources read from its AMDGPU metadata.

use std::path::PathBuf;

use attnforge::codegen::build::{user_cache_dir, Build};
use attnforge::codegen::codeobj::{occupancy, parse_elf};
use attnforge::codegen::kernels::generate;
use indicatif::{ProgressBar, ProgressStyle};

use crate::spec::{self, KernelChoice, SpecArgs};
use crate::{table, Failure};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    spec: SpecArgs,
    /// GPU archs: comma-separated (gfx90a, gfx940, gfx1030) or `all`.
    #[arg(long, default_value = "all")]
    arch: String,
    /// The kernel; every kernel of the spec when left out.
    #[arg(long, value_enum)]
    kernel: Option<KernelChoice>,
    /// Where the code objects go (default: a temporary directory, removed
    /// afterwards).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// JSON: one object per code object.
    #[arg(long)]
    json: bool,
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(a: Args) -> Result<(), Failure> {
    let spec = a.spec.resolve()?;
    let archs = spec::archs(&a.arch, false)?;
    let wanted = spec.select(a.kernel)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let scratch = Scratch(
        std::env::temp_dir().join(format!("attnforge-build-{}-{nanos}", std::process::id())),
    );
    std::fs::create_dir_all(&scratch.0)?;
    let out_dir = a.out_dir.clone().unwrap_or_else(|| scratch.0.join("out"));
    // The spec as a model file: the build helper reads it as it reads a
    // crate's sources (its text was checked above, by the same front-end).
    let file = scratch.0.join("spec.rs");
    let mut text = format!("#[kv_layout({})]\npub struct Layout;\n", spec.args.layout);
    if let Some(att) = &spec.args.attention {
        text += &format!("#[attention(kv = Layout, {att})]\npub struct Attention;\n");
    }
    std::fs::write(&file, text)?;
    let mut build = Build::new();
    let kinds: Vec<_> = wanted.iter().map(|k| k.kind()).collect();
    build
        .file(&file)
        .archs(&archs)
        .kinds(&kinds)
        .out_dir(&out_dir);
    if let Some(dir) = user_cache_dir() {
        build.shared_cache(dir.join("hipcc"));
    }
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} [{elapsed}] {msg}").expect("a valid template"),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar.set_message(format!(
        "hipcc: {} kernels for {}",
        wanted.len(),
        archs
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let report = build.compile();
    bar.finish_and_clear();
    let report = report?;
    let mut rows = Vec::new();
    let mut all = Vec::new();
    for o in &report.objects {
        let Some(kernel) = wanted.iter().find(|k| k.kind() == o.kind) else {
            continue;
        };
        let bytes = std::fs::read(&o.path)?;
        let elf = parse_elf(&bytes)?;
        let block = generate(kernel, o.arch.target())?.block_dim();
        let r = elf.kernel_resources(&o.symbol).ok_or_else(|| {
            Failure::Step(format!(
                "{}: the {} code object has no metadata for its kernel",
                o.symbol, o.arch
            ))
        })?;
        let occ = occupancy(o.arch.name(), r, block);
        let occ_text = occ.map_or("?".to_string(), |w| w.to_string());
        rows.push(vec![
            o.symbol.clone(),
            o.arch.name().to_string(),
            block.to_string(),
            r.vgprs.to_string(),
            r.agprs.to_string(),
            r.sgprs.to_string(),
            format!("{}/{}", r.vgpr_spills, r.sgpr_spills),
            r.scratch_bytes.to_string(),
            r.lds_bytes.to_string(),
            occ_text,
            bytes.len().to_string(),
            if o.compiled { "compiled" } else { "cached" }.to_string(),
        ]);
        all.push(serde_json::json!({
            "symbol": o.symbol, "kind": o.kind.name(), "arch": o.arch.name(),
            "block_threads": block, "vgprs": r.vgprs, "agprs": r.agprs, "sgprs": r.sgprs,
            "vgpr_spills": r.vgpr_spills, "sgpr_spills": r.sgpr_spills,
            "scratch_bytes": r.scratch_bytes, "lds_bytes": r.lds_bytes,
            "waves_per_simd": occ, "bytes": bytes.len(), "compiled": o.compiled,
            "path": a.out_dir.as_ref().map(|_| o.path.display().to_string()),
        }));
    }
    if a.json {
        table::json(&serde_json::Value::Array(all));
    } else {
        table::print(
            &[
                "kernel",
                "arch",
                ">threads",
                ">VGPRs",
                ">AGPRs",
                ">SGPRs",
                ">spills v/s",
                ">scratch",
                ">LDS bytes",
                ">waves/SIMD",
                ">bytes",
                "hipcc",
            ],
            &rows,
        );
        let n = report.objects.len();
        table::out(&format!(
            "\n{n} code object{}: {} compiled by hipcc, {} from the cache",
            if n == 1 { "" } else { "s" },
            report.compiled(),
            report.cached()
        ));
    }
    Ok(())
}
