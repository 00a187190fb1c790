//! The build-script helper: compiles the kernels of a crate's specs at
//! build time, with hipcc for AMD archs and nvcc for NVIDIA archs, as
//! `cxx-build` does for C++.
//!
//! ```no_run
//! // in build.rs's `fn main`:
//! attnforge_codegen::build::Build::new()
//!     .file("src/lib.rs")
//!     .archs(&attnforge_codegen::Arch::ALL)
//!     .hip(std::env::var_os("CARGO_FEATURE_HIP").is_some())
//!     .cuda(std::env::var_os("CARGO_FEATURE_CUDA").is_some())
//!     .run();
//! ```
//!
//! It parses the files with syn, finds every `#[kv_layout]` and
//! `#[attention]` item, runs them through the same front-end as the macros,
//! generates each kernel for each arch, and compiles the text (one printer,
//! the helper header branching per vendor) with the arch's compiler, in
//! parallel. Code objects are cached in `OUT_DIR` by a hash of their source,
//! arch and compiler, so an unchanged rebuild compiles nothing. Finally it
//! writes one registry file per item, which that item's macro expansion
//! includes, and `registry.rs`, a list of every code object.

mod compile;
mod registry;
mod scan;
mod tools;

pub use tools::{find_hipcc, find_nvcc, find_nvdisasm, user_cache_dir, NVCC_PLACES};

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::kernels::{generate, CodegenError, KernelSpec};
use crate::registry::KernelKind;
use crate::target::{Arch, Vendor};
use compile::{Compiler, Job};

/// Configures and runs one build.
#[derive(Clone, Debug, Default)]
pub struct Build {
    files: Vec<PathBuf>,
    archs: Vec<Arch>,
    hip: Option<bool>,
    cuda: Option<bool>,
    out_dir: Option<PathBuf>,
    hipcc: Option<PathBuf>,
    nvcc: Option<PathBuf>,
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
    /// nvcc is needed but missing.
    #[error(
        "nvcc was not found (looked for {looked}).\n\
         Run scripts/setup.sh (it installs NVIDIA's compiler from PyPI into attnforge's cache), \
         install the CUDA toolkit, or set NVCC to its path;\n\
         or build without CUDA cubins by turning off the `cuda` feature."
    )]
    NoNvcc {
        /// Where it looked.
        looked: String,
    },
    /// A compiler (hipcc or nvcc) failed.
    #[error(
        "{compiler} failed ({status}) compiling {symbol} for {arch}\ncommand: {command}\n{log}"
    )]
    Compiler {
        /// `hipcc` or `nvcc`.
        compiler: &'static str,
        /// The kernel.
        symbol: String,
        /// The arch.
        arch: Arch,
        /// The full command line.
        command: String,
        /// Exit status.
        status: String,
        /// The compiler's whole output.
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
    /// The compiler's output for it (nvcc's, with ptxas's resource lines;
    /// `None` for hipcc, whose objects carry their metadata).
    pub log: Option<PathBuf>,
    /// Whether the compiler ran for it in this build (false: taken from a cache).
    pub compiled: bool,
}

/// What a build did.
#[derive(Clone, Debug, Default)]
pub struct BuildReport {
    /// Every spec item found, in file order.
    pub items: Vec<BuiltItem>,
    /// Every code object, one per distinct (kernel, arch).
    pub objects: Vec<BuiltObject>,
    /// The vendors whose compiler ran (the others' archs have no objects).
    pub vendors: Vec<Vendor>,
}

impl BuildReport {
    /// Code objects a compiler compiled in this build.
    pub fn compiled(&self) -> usize {
        self.objects.iter().filter(|o| o.compiled).count()
    }

    /// Code objects reused from the cache.
    pub fn cached(&self) -> usize {
        self.objects.len() - self.compiled()
    }
}

impl Build {
    /// A build with no files, every supported arch, HIP on and CUDA off
    /// (CUDA needs NVIDIA's compiler, which `scripts/setup.sh` installs).
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

    /// Sets the archs to compile for: the AMD ones among them with hipcc
    /// (when [`Build::hip`] is on), the NVIDIA ones with nvcc (when
    /// [`Build::cuda`] is on).
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

    /// Turns hipcc on or off (default on). Off, specs are still parsed,
    /// checked and generated for the AMD archs, and the registry says the
    /// kernels were built without HIP.
    pub fn hip(&mut self, on: bool) -> &mut Build {
        self.hip = Some(on);
        self
    }

    /// Turns nvcc on or off (default off). Off, specs are still generated
    /// for the NVIDIA archs, and the registry says there are no cubins.
    pub fn cuda(&mut self, on: bool) -> &mut Build {
        self.cuda = Some(on);
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

    /// The nvcc to run (default: see [`find_nvcc`]).
    pub fn nvcc(&mut self, path: impl AsRef<Path>) -> &mut Build {
        self.nvcc = Some(path.as_ref().to_path_buf());
        self
    }

    /// A code-object cache shared between builds (cargo profiles, target
    /// directories, crates): an object whose source, arch, flags and
    /// compiler version are unchanged is copied from it instead of
    /// compiled, and every object compiled is added to it (hipcc's `.co`,
    /// nvcc's `.cubin` with its `.log`). Entries are keyed by a SHA-256 of
    /// all of that, written atomically, and one that is not an ELF file (or
    /// a cubin without its log) is ignored and rebuilt. Off by default;
    /// [`user_cache_dir`]`/objects` is the usual place.
    pub fn shared_cache(&mut self, dir: impl Into<PathBuf>) -> &mut Build {
        self.shared_cache = Some(dir.into());
        self
    }

    /// Parallel compiler jobs (default: cargo's `NUM_JOBS`, else the CPU count).
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
        for var in [
            "HIPCC",
            "NVCC",
            "CUDA_PATH",
            "NVCC_CCBIN",
            "ATTNFORGE_CACHE_DIR",
        ] {
            println!("cargo:rerun-if-env-changed={var}");
        }
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
        let mut vendors = Vec::new();
        if self.hip.unwrap_or(true) {
            vendors.push(Vendor::Amd);
        }
        if self.cuda.unwrap_or(false) {
            vendors.push(Vendor::Nvidia);
        }
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
        // Generating (and verifying) every kernel runs with the compilers off too.
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

        let mut compilers = Vec::new();
        for &vendor in &vendors {
            if sources.iter().any(|s| s.2.vendor() == Some(vendor)) {
                compilers.push(match vendor {
                    Vendor::Amd => Compiler::new(vendor, self.find_hipcc()?)?,
                    Vendor::Nvidia => Compiler::new(vendor, self.find_nvcc()?)?,
                });
            }
        }
        sources.retain(|s| s.2.vendor().is_some_and(|v| vendors.contains(&v)));
        let objects = self.compile_all(&compilers, &objects_dir, sources)?;
        let report = BuildReport {
            items,
            objects,
            vendors,
        };
        registry::write(&out_dir, &report)?;
        Ok(report)
    }

    fn find_hipcc(&self) -> Result<PathBuf, BuildError> {
        if let Some(p) = &self.hipcc {
            return Ok(p.clone());
        }
        find_hipcc().ok_or_else(|| BuildError::NoHipcc {
            looked: "$HIPCC, hipcc on PATH, /opt/rocm/bin/hipcc".into(),
        })
    }

    fn find_nvcc(&self) -> Result<PathBuf, BuildError> {
        if let Some(p) = &self.nvcc {
            return Ok(p.clone());
        }
        find_nvcc().ok_or_else(|| BuildError::NoNvcc {
            looked: NVCC_PLACES.into(),
        })
    }

    fn compile_all(
        &self,
        compilers: &[Compiler],
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
                    let Some(compiler) = compilers.iter().find(|c| Some(c.vendor) == arch.vendor())
                    else {
                        continue;
                    };
                    let job = Job {
                        compiler,
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
