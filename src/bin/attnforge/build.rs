//! `attnforge build`: the spec's kernels through the build helper (hipcc
//! and nvcc, in parallel, cached by content hash as a crate's build script
//! does), and each code object's resources ([`crate::resources`]).

use std::path::PathBuf;

use attnforge::codegen::build::Build;
use indicatif::{ProgressBar, ProgressStyle};

use crate::resources;
use crate::spec::{self, KernelChoice, SpecArgs};
use crate::Failure;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    spec: SpecArgs,
    /// GPU archs: comma-separated (gfx90a, gfx940, gfx1030, sm_80, sm_90)
    /// or `all`. NVIDIA archs need nvcc (scripts/setup.sh installs it).
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
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A fresh directory under the temporary directory.
    pub fn new(what: &str) -> std::io::Result<Scratch> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("attnforge-{what}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `f` with a spinner showing `message` on a terminal.
pub fn with_spinner<T>(message: &str, f: impl FnOnce() -> T) -> T {
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} [{elapsed}] {msg}").expect("a valid template"),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar.set_message(message.to_string());
    let r = f();
    bar.finish_and_clear();
    r
}

pub fn run(a: Args) -> Result<(), Failure> {
    let spec = a.spec.resolve()?;
    let archs = resources::available(&a.arch, spec::archs(&a.arch, false)?);
    let wanted = spec.select(a.kernel)?;
    let scratch = Scratch::new("build")?;
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
    build.file(&file).kinds(&kinds).out_dir(&out_dir);
    resources::configure(&mut build, &archs);
    let report = with_spinner(
        &format!(
            "{} kernels for {}",
            wanted.len(),
            archs
                .iter()
                .map(|a| a.name())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        || build.compile(),
    )?;
    let mut rows = resources::collect(&report, &wanted)?;
    if a.out_dir.is_some() {
        for r in &mut rows {
            r.json["path"] = serde_json::json!(r.object.path.display().to_string());
            if let Some(log) = &r.object.log {
                r.json["log"] = serde_json::json!(log.display().to_string());
            }
        }
    }
    resources::print(&rows, a.json, &report);
    Ok(())
}
