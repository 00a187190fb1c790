//! The build-script helper: compiles the kernels of a crate's specs with
//! hipcc at build time, as `cxx-build` does for C++.
//!
//! ```no_run
//! // in build.rs's `fn main`:
//! attnforge_codegen::build::Build::new()
//!     .file("src/lib.rs")
//!     .archs(&attnforge_codegen::Arch::ALL)
//!     .hip(std::env::var_os("CARGO_FEATURE_HIP").is_some())
//!     .run();
//! ```
//!
//! It parses the files with syn, finds every `#[kv_layout]` and
//! `#[attention]` item, runs them through the same front-end as the macros,
//! generates each kernel for each arch, and compiles the HIP with hipcc, in
//! parallel. Code objects are cached in `OUT_DIR` by a hash of their source,
//! arch and compiler, so an unchanged rebuild compiles nothing. Finally it
//! writes one registry file per item, which that item's macro expansion
//! includes, and `registry.rs`, a list of every code object.

use std::collections::{BTreeMap, HashSet};
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::frontend::{self, parse};
use crate::kernels::{generate, CodegenError, KernelSpec};
use crate::registry::{KernelKind, HIP_DISABLED};
use crate::target::Arch;

/// Configures and runs one build.
#[derive(Clone, Debug, Default)]
pub struct Build {
    files: Vec<PathBuf>,
    archs: Vec<Arch>,
    hip: Option<bool>,
    out_dir: Option<PathBuf>,
    hipcc: Option<PathBuf>,
    jobs: Option<usize>,
    shared_cache: Option<PathBuf>,
    kinds: Option<Vec<KernelKind>>,
}

/// A problem in a source file, with its location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Specs with errors (every error of every file).
    #[error("invalid attnforge specs:\n{}", list(.0))]
    Source(Vec<SourceError>),
    /// No `OUT_DIR` (not running in a build script) and none given.
    #[error("no output directory: run from a build script or call Build::out_dir")]
    NoOutDir,
    /// hipcc is needed but missing.
    #[error(
        "hipcc was not found (looked for {looked}).\n\
         Install it (Debian/Ubuntu: `apt-get install hipcc`, or ROCm's hipcc) or set HIPCC to its path;\n\
         or build without HIP code objects by turning off the `hip` feature \
         (for attnforge: `default-features = false`)."
    )]
    NoHipcc {
        /// Where it looked.
        looked: String,
    },
    /// hipcc failed.
    #[error("hipcc failed ({status}) compiling {symbol} for {arch}\ncommand: {command}\n{log}")]
    Hipcc {
        /// The kernel.
        symbol: String,
        /// The arch.
        arch: Arch,
        /// The full command line.
        command: String,
        /// Exit status.
        status: String,
        /// hipcc's whole output.
        log: String,
    },
    /// Code generation failed.
    #[error("code generation failed for {item}: {source}")]
    Codegen {
        /// The spec item.
        item: String,
        /// The error.
        source: CodegenError,
    },
}

fn list(errors: &[SourceError]) -> String {
    errors.iter().map(|e| format!("  {e}\n")).collect()
}

/// One spec item the build found.
#[derive(Clone, Debug)]
pub struct BuiltItem {
    /// The struct's name.
    pub ident: String,
    /// Its spec name (snake case).
    pub name: String,
    /// The kernels it owns (for an attention decode, prefill, split-K decode
    /// and its merge; for a layout append).
    pub kernels: Vec<KernelSpec>,
}

/// One compiled (or cached) code object.
#[derive(Clone, Debug)]
pub struct BuiltObject {
    /// Which kernel.
    pub kind: KernelKind,
    /// The kernel's symbol.
    pub symbol: String,
    /// The arch.
    pub arch: Arch,
    /// The code object file.
    pub path: PathBuf,
    /// Whether hipcc ran for it in this build (false: taken from the cache).
    pub compiled: bool,
}

/// What a build did.
#[derive(Clone, Debug, Default)]
pub struct BuildReport {
    /// Every spec item found, in file order.
    pub items: Vec<BuiltItem>,
    /// Every code object, one per distinct (kernel, arch).
    pub objects: Vec<BuiltObject>,
}

impl BuildReport {
    /// Code objects hipcc compiled in this build.
    pub fn compiled(&self) -> usize {
        self.objects.iter().filter(|o| o.compiled).count()
    }

    /// Code objects reused from the cache.
    pub fn cached(&self) -> usize {
        self.objects.len() - self.compiled()
    }
}

impl Build {
    /// A build with no files, every supported arch, and HIP on.
    pub fn new() -> Build {
        Build {
            archs: Arch::ALL.to_vec(),
            ..Build::default()
        }
    }

    /// Adds a Rust source file to scan for spec items.
    pub fn file(&mut self, path: impl AsRef<Path>) -> &mut Build {
        self.files.push(path.as_ref().to_path_buf());
        self
    }

    /// Sets the archs to compile for.
    pub fn archs(&mut self, archs: &[Arch]) -> &mut Build {
        self.archs = archs.to_vec();
        self
    }

    /// Compiles only kernels of these kinds (default: every kernel of every
    /// item). The registry then holds only those; `attnforge build
    /// --kernel` uses it to compile one kernel.
    pub fn kinds(&mut self, kinds: &[KernelKind]) -> &mut Build {
        self.kinds = Some(kinds.to_vec());
        self
    }

    /// Turns hipcc on or off. Off, specs are still parsed, checked and
    /// generated, and the registry says the kernels were built without HIP.
    pub fn hip(&mut self, on: bool) -> &mut Build {
        self.hip = Some(on);
        self
    }

    /// Output directory (default: `OUT_DIR`).
    pub fn out_dir(&mut self, dir: impl AsRef<Path>) -> &mut Build {
        self.out_dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// The hipcc to run (default: `HIPCC`, else `hipcc` on `PATH`, else
    /// `/opt/rocm/bin/hipcc`).
    pub fn hipcc(&mut self, path: impl AsRef<Path>) -> &mut Build {
        self.hipcc = Some(path.as_ref().to_path_buf());
        self
    }

    /// A code-object cache shared between builds (cargo profiles, target
    /// directories, crates): an object whose source, arch, flags and hipcc
    /// version are unchanged is copied from it instead of compiled, and every
    /// object compiled is added to it. Entries are keyed by a SHA-256 of all
    /// of that, written atomically, and one that is not an ELF file is
    /// ignored and rebuilt. Off by default; [`user_cache_dir`] is the usual
    /// place.
    pub fn shared_cache(&mut self, dir: impl Into<PathBuf>) -> &mut Build {
        self.shared_cache = Some(dir.into());
        self
    }

    /// Parallel hipcc jobs (default: cargo's `NUM_JOBS`, else the CPU count).
    pub fn jobs(&mut self, n: usize) -> &mut Build {
        self.jobs = Some(n.max(1));
        self
    }

    /// For build.rs: prints `rerun-if-changed` lines, builds, and on failure
    /// prints the whole error and exits with status 1 (no panic, no backtrace).
    pub fn run(&self) -> BuildReport {
        for f in &self.files {
            println!("cargo:rerun-if-changed={}", f.display());
        }
        println!("cargo:rerun-if-env-changed=HIPCC");
        match self.compile() {
            Ok(report) => report,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
    }

    /// Builds and reports what it did.
    pub fn compile(&self) -> Result<BuildReport, BuildError> {
        let out_dir = match &self.out_dir {
            Some(d) => d.clone(),
            None => std::env::var_os("OUT_DIR")
                .map(PathBuf::from)
                .ok_or(BuildError::NoOutDir)?,
        };
        let hip = self.hip.unwrap_or(true);
        let items = self.scan()?;

        // One job per distinct (symbol, arch).
        let mut jobs: BTreeMap<(String, Arch), KernelSpec> = BTreeMap::new();
        for item in &items {
            for &arch in &self.archs {
                for kernel in &item.kernels {
                    if let Some(kinds) = &self.kinds {
                        if !kinds.contains(&kernel.kind()) {
                            continue;
                        }
                    }
                    let symbol = crate::kernels::symbol(kernel);
                    jobs.entry((symbol, arch)).or_insert(*kernel);
                }
            }
        }
        // Generating (and verifying) every kernel runs with HIP off too.
        let mut sources = Vec::new();
        for ((symbol, arch), spec) in &jobs {
            let k = generate(spec, arch.target()).map_err(|source| BuildError::Codegen {
                item: symbol.clone(),
                source,
            })?;
            sources.push((spec.kind(), symbol.clone(), *arch, k.to_string()));
        }

        let objects_dir = out_dir.join("attnforge").join("objects");
        let registry_dir = out_dir.join("attnforge").join("registry");
        for d in [&objects_dir, &registry_dir] {
            std::fs::create_dir_all(d).map_err(|source| BuildError::Io {
                path: d.clone(),
                source,
            })?;
        }

        let mut report = BuildReport {
            items: items.clone(),
            objects: Vec::new(),
        };
        if hip {
            let hipcc = self.find_hipcc()?;
            let version = hipcc_version(&hipcc)?;
            report.objects = self.compile_all(&hipcc, &version, &objects_dir, sources)?;
        }
        write_registry(&out_dir, &report, hip)?;
        Ok(report)
    }

    /// Parses every file and resolves every attention's layout.
    fn scan(&self) -> Result<Vec<BuiltItem>, BuildError> {
        let mut errors = Vec::new();
        let mut layouts: Vec<(PathBuf, parse::ParsedKvLayout)> = Vec::new();
        let mut attentions: Vec<(PathBuf, parse::ParsedAttention)> = Vec::new();
        for file in &self.files {
            let text = std::fs::read_to_string(file).map_err(|source| BuildError::Io {
                path: file.clone(),
                source,
            })?;
            let ast = match syn::parse_file(&text) {
                Ok(ast) => ast,
                Err(e) => {
                    errors.extend(source_errors(file, e));
                    continue;
                }
            };
            let mut structs = Vec::new();
            collect_structs(&ast.items, &mut structs);
            for s in structs {
                for attr in &s.attrs {
                    let Some(last) = attr.path().segments.last() else {
                        continue;
                    };
                    let args = match &attr.meta {
                        syn::Meta::List(l) => l.tokens.clone(),
                        _ => proc_macro2::TokenStream::new(),
                    };
                    let kind = last.ident.to_string();
                    match kind.as_str() {
                        "kv_layout" => match parse::kv_layout(args, s) {
                            Ok(p) => layouts.push((file.clone(), p)),
                            Err(e) => errors.extend(source_errors(file, e)),
                        },
                        "attention" => match parse::attention(args, s) {
                            Ok(p) => attentions.push((file.clone(), p)),
                            Err(e) => errors.extend(source_errors(file, e)),
                        },
                        _ => {}
                    }
                }
            }
        }

        let mut seen: HashSet<String> = HashSet::new();
        let idents = layouts
            .iter()
            .map(|(f, l)| (f, &l.ident))
            .chain(attentions.iter().map(|(f, a)| (f, &a.ident)));
        for (file, ident) in idents {
            if !seen.insert(ident.to_string()) {
                let msg = format!(
                    "two spec items are named `{ident}`; the build helper's registry needs distinct names"
                );
                errors.extend(source_errors(file, syn::Error::new(ident.span(), msg)));
            }
        }

        let mut items: Vec<BuiltItem> = layouts
            .iter()
            .map(|(_, l)| BuiltItem {
                ident: l.ident.to_string(),
                name: l.name.clone(),
                kernels: vec![KernelSpec::Append(l.spec)],
            })
            .collect();
        for (file, a) in &attentions {
            let target = a.kv.segments.last().map(|s| s.ident.to_string());
            let layout = layouts
                .iter()
                .find(|(_, l)| Some(l.ident.to_string()) == target);
            let Some((_, layout)) = layout else {
                let names: Vec<String> = layouts.iter().map(|(_, l)| l.ident.to_string()).collect();
                let msg = format!(
                    "`kv = {}` does not name a #[kv_layout] struct in the build's files (found: {})",
                    target.unwrap_or_default(),
                    if names.is_empty() { "none".into() } else { names.join(", ") }
                );
                errors.extend(source_errors(file, syn::Error::new(a.span_of("kv"), msg)));
                continue;
            };
            match a.resolve(layout.spec) {
                Ok(spec) => items.push(BuiltItem {
                    ident: a.ident.to_string(),
                    name: a.name.clone(),
                    kernels: crate::kernels::attention_kernels(&spec).to_vec(),
                }),
                Err(e) => errors.extend(source_errors(file, e)),
            }
        }
        if errors.is_empty() {
            Ok(items)
        } else {
            Err(BuildError::Source(errors))
        }
    }

    fn find_hipcc(&self) -> Result<PathBuf, BuildError> {
        if let Some(p) = &self.hipcc {
            return Ok(p.clone());
        }
        if let Some(p) = std::env::var_os("HIPCC") {
            return Ok(PathBuf::from(p));
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        let candidates = std::env::split_paths(&path)
            .map(|d| d.join("hipcc"))
            .chain(std::iter::once(PathBuf::from("/opt/rocm/bin/hipcc")));
        for c in candidates {
            if c.is_file() {
                return Ok(c);
            }
        }
        Err(BuildError::NoHipcc {
            looked: "$HIPCC, hipcc on PATH, /opt/rocm/bin/hipcc".into(),
        })
    }

    fn compile_all(
        &self,
        hipcc: &Path,
        version: &str,
        dir: &Path,
        sources: Vec<(KernelKind, String, Arch, String)>,
    ) -> Result<Vec<BuiltObject>, BuildError> {
        let jobs = self.jobs.unwrap_or_else(|| {
            std::env::var("NUM_JOBS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        });
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Result<BuiltObject, BuildError>>> = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..jobs.min(sources.len()).max(1) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((kind, symbol, arch, source)) = sources.get(i) else {
                        break;
                    };
                    let job = Job {
                        hipcc,
                        version,
                        dir,
                        shared: self.shared_cache.as_deref(),
                    };
                    let r = job.compile(*kind, symbol, *arch, source);
                    results.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                });
            }
        });
        let mut objects = Vec::new();
        for r in results.into_inner().unwrap_or_else(|e| e.into_inner()) {
            objects.push(r?);
        }
        objects.sort_by(|a, b| (&a.symbol, a.arch).cmp(&(&b.symbol, b.arch)));
        Ok(objects)
    }
}

fn collect_structs<'a>(items: &'a [syn::Item], out: &mut Vec<&'a syn::ItemStruct>) {
    for item in items {
        match item {
            syn::Item::Struct(s) => out.push(s),
            syn::Item::Mod(m) => {
                if let Some((_, inner)) = &m.content {
                    collect_structs(inner, out);
                }
            }
            _ => {}
        }
    }
}

fn source_errors(file: &Path, e: syn::Error) -> Vec<SourceError> {
    e.into_iter()
        .map(|e| {
            let start = e.span().start();
            SourceError {
                file: file.to_path_buf(),
                line: start.line,
                column: start.column + 1,
                message: e.to_string(),
            }
        })
        .collect()
}

fn hipcc_version(hipcc: &Path) -> Result<String, BuildError> {
    let out = Command::new(hipcc)
        .arg("--version")
        .output()
        .map_err(|_| BuildError::NoHipcc {
            looked: hipcc.display().to_string(),
        })?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The hipcc arguments for one kernel (part of the cache key).
fn hipcc_args(arch: Arch, src: &Path, out: &Path) -> Vec<String> {
    vec![
        "--genco".into(),
        format!("--offload-arch={}", arch.name()),
        // One raw ELF per arch, not a clang offload bundle.
        "--no-gpu-bundle-output".into(),
        "-O3".into(),
        "-o".into(),
        out.display().to_string(),
        src.display().to_string(),
    ]
}

/// attnforge's cache directory for the user: `$ATTNFORGE_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/attnforge`, else `$HOME/.cache/attnforge` (`None`
/// without any of them). The SmolLM2 model is fetched beside it.
pub fn user_cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("ATTNFORGE_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("attnforge")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("attnforge")))
}

/// What every hipcc job of a build shares.
struct Job<'a> {
    hipcc: &'a Path,
    version: &'a str,
    dir: &'a Path,
    shared: Option<&'a Path>,
}

/// Whether `path` holds what looks like a code object (an ELF file).
fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// Copies `from` to `to` through a temporary file beside `to`, so that
/// `to` is either absent or whole.
fn copy_atomic(from: &Path, to: &Path) -> std::io::Result<()> {
    let tmp = to.with_extension(format!("tmp{}", std::process::id()));
    std::fs::copy(from, &tmp)?;
    std::fs::rename(&tmp, to).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

impl Job<'_> {
    fn compile(
        &self,
        kind: KernelKind,
        symbol: &str,
        arch: Arch,
        source: &str,
    ) -> Result<BuiltObject, BuildError> {
        let (hipcc, dir) = (self.hipcc, self.dir);
        let mut h = Sha256::new();
        for part in [
            source,
            arch.name(),
            self.version,
            &hipcc_args(arch, Path::new(""), Path::new("")).join(" "),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        let hash: String = h.finalize().iter().take(8).fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        });
        let stem = format!("{symbol}.{}.{hash}", arch.name());
        let object = dir.join(format!("{stem}.co"));
        let built = |compiled| BuiltObject {
            kind,
            symbol: symbol.into(),
            arch,
            path: object.clone(),
            compiled,
        };
        if object.is_file() {
            return Ok(built(false));
        }
        let shared = self.shared.map(|d| d.join(format!("{stem}.co")));
        if let Some(cached) = &shared {
            // A foreign or damaged entry is not trusted: it is rebuilt.
            if is_elf(cached) && copy_atomic(cached, &object).is_ok() {
                return Ok(built(false));
            }
        }
        let src = dir.join(format!("{stem}.hip"));
        std::fs::write(&src, source).map_err(|source| BuildError::Io {
            path: src.clone(),
            source,
        })?;
        // Write beside the final name, then rename: a crash or a parallel
        // build never leaves a half-written object under the cached name.
        let tmp = dir.join(format!("{stem}.co.tmp{}", std::process::id()));
        let args = hipcc_args(arch, &src, &tmp);
        let command = format!("{} {}", hipcc.display(), args.join(" "));
        // hipcc's clang leaves a directory of intermediates in $TMPDIR for
        // some invocations; give it a private one and remove it afterwards,
        // so building never litters the user's temporary directory.
        let scratch = dir.join(format!("{stem}.tmp{}", std::process::id()));
        std::fs::create_dir_all(&scratch).map_err(|source| BuildError::Io {
            path: scratch.clone(),
            source,
        })?;
        let out = Command::new(hipcc)
            .args(&args)
            .env("TMPDIR", &scratch)
            .output();
        let _ = std::fs::remove_dir_all(&scratch);
        let out = out.map_err(|source| BuildError::Io {
            path: hipcc.to_path_buf(),
            source,
        })?;
        if !out.status.success() || !tmp.is_file() {
            let _ = std::fs::remove_file(&tmp);
            return Err(BuildError::Hipcc {
                symbol: symbol.into(),
                arch,
                command,
                status: out.status.to_string(),
                log: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        std::fs::rename(&tmp, &object).map_err(|source| BuildError::Io {
            path: object.clone(),
            source,
        })?;
        // The shared cache is best-effort: a build never fails on it.
        if let (Some(cached), Some(parent)) = (&shared, self.shared) {
            if std::fs::create_dir_all(parent).is_ok() {
                let _ = copy_atomic(&object, cached);
            }
        }
        Ok(built(true))
    }
}

fn code_object_tokens<'a>(objects: impl Iterator<Item = &'a BuiltObject>) -> String {
    let mut s = String::new();
    for o in objects {
        let _ = writeln!(
            s,
            "    __attnforge::CodeObject {{ kind: __attnforge::KernelKind::{:?}, symbol: {:?}, \
             arch: __attnforge::Arch::{:?}, bytes: include_bytes!({:?}) }},",
            o.kind,
            o.symbol,
            o.arch,
            o.path.display().to_string()
        );
    }
    s
}

fn write_file(path: &Path, text: &str) -> Result<(), BuildError> {
    // Unchanged content keeps its timestamp, so nothing downstream rebuilds.
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(());
    }
    std::fs::write(path, text).map_err(|source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write_registry(out_dir: &Path, report: &BuildReport, hip: bool) -> Result<(), BuildError> {
    let header =
        "// Generated by attnforge_codegen::build. Included by the item's macro expansion,\n\
                  // which names attnforge-codegen `__attnforge`.\n";
    for item in &report.items {
        let body = if hip {
            let symbols: Vec<String> = item.kernels.iter().map(crate::kernels::symbol).collect();
            let objs = code_object_tokens(
                report
                    .objects
                    .iter()
                    .filter(|o| symbols.contains(&o.symbol)),
            );
            format!("__attnforge::HipKernels::Built(&[\n{objs}])\n")
        } else {
            format!("__attnforge::HipKernels::NotBuilt({HIP_DISABLED:?})\n")
        };
        write_file(
            &frontend::registry_file(out_dir, &item.ident),
            &format!("{header}{body}"),
        )?;
    }
    let all = format!(
        "// Generated by attnforge_codegen::build: every code object of this crate.\n\
         /// Every HIP code object compiled for this crate's spec items.\n\
         pub const CODE_OBJECTS: &[__attnforge::CodeObject] = &[\n{}];\n",
        code_object_tokens(report.objects.iter())
    );
    write_file(&out_dir.join("attnforge").join("registry.rs"), &all)
}
