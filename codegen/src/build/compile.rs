//! The compilers the build runs, one job per (kernel, arch): hipcc for the
//! AMD archs, nvcc for the NVIDIA ones, each job cached by a hash of what
//! determines its output.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use super::{BuildError, BuiltObject};
use crate::cubin::{parse_cubin, parse_ptxas_log};
use crate::registry::KernelKind;
use crate::target::{Arch, Vendor};

/// One vendor's compiler, found and asked for its version.
#[derive(Clone, Debug)]
pub(super) struct Compiler {
    pub vendor: Vendor,
    pub path: PathBuf,
    /// Its `--version` output (part of every cache key).
    pub version: String,
    /// nvcc's host compiler (`-ccbin`), when not its default.
    pub ccbin: Option<PathBuf>,
}

impl Compiler {
    /// Runs `path --version`; a compiler that does not start is missing.
    pub fn new(vendor: Vendor, path: PathBuf) -> Result<Compiler, BuildError> {
        let missing = || match vendor {
            Vendor::Amd => BuildError::NoHipcc {
                looked: path.display().to_string(),
            },
            Vendor::Nvidia => BuildError::NoNvcc {
                looked: path.display().to_string(),
            },
        };
        let out = Command::new(&path)
            .arg("--version")
            .output()
            .map_err(|_| missing())?;
        if vendor == Vendor::Nvidia && !out.status.success() {
            return Err(missing());
        }
        // nvcc preprocesses with a host C++ compiler; without g++ it takes
        // clang++ where one is installed (hipcc's clang, for instance).
        let ccbin = match vendor {
            Vendor::Nvidia => std::env::var_os("NVCC_CCBIN")
                .map(PathBuf::from)
                .or_else(|| {
                    (!on_path("g++")).then(|| first_on_path(&["clang++-15", "clang++"]))?
                }),
            Vendor::Amd => None,
        };
        Ok(Compiler {
            vendor,
            version: String::from_utf8_lossy(&out.stdout).into_owned(),
            path,
            ccbin,
        })
    }

    /// The file extensions of a job's source and object.
    fn extensions(&self) -> (&'static str, &'static str) {
        match self.vendor {
            Vendor::Amd => ("hip", "co"),
            Vendor::Nvidia => ("cu", "cubin"),
        }
    }

    /// The arguments for one kernel (part of the cache key, with empty paths).
    pub fn args(&self, arch: Arch, src: &Path, out: &Path) -> Vec<String> {
        let mut args: Vec<String> = match self.vendor {
            Vendor::Amd => vec![
                "--genco".into(),
                format!("--offload-arch={}", arch.name()),
                // One raw ELF per arch, not a clang offload bundle.
                "--no-gpu-bundle-output".into(),
                "-O3".into(),
            ],
            Vendor::Nvidia => vec![
                // SASS for exactly this arch, no PTX: the device's driver
                // loads it as it is, whatever PTX version it understands.
                "-cubin".into(),
                format!("-arch={}", arch.name()),
                "-O3".into(),
                "-std=c++17".into(),
                // ptxas's resource lines (registers, spills, shared memory)
                // go to the log the resource report reads.
                "-Xptxas".into(),
                "-v".into(),
            ],
        };
        if let Some(ccbin) = &self.ccbin {
            args.push(format!("-ccbin={}", ccbin.display()));
        }
        args.extend([
            "-o".into(),
            out.display().to_string(),
            src.display().to_string(),
        ]);
        args
    }
}

fn on_path(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| d.join(name).is_file())
}

fn first_on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
}

/// What every job of one compiler shares.
pub(super) struct Job<'a> {
    pub compiler: &'a Compiler,
    /// The build's own object directory (`OUT_DIR/attnforge/objects`).
    pub dir: &'a Path,
    /// The cache shared between builds, if any.
    pub shared: Option<&'a Path>,
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

/// A temporary name beside `to`, private to this process, this call and
/// `to` (an object and its log never share one, nor two builds of one
/// process sharing a cache).
fn temporary(to: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = to.file_name().unwrap_or_default().to_string_lossy();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    to.with_file_name(format!("{name}.tmp{}.{n}", std::process::id()))
}

/// Copies `from` to `to` through a temporary file beside `to`, so that
/// `to` is either absent or whole.
fn copy_atomic(from: &Path, to: &Path) -> std::io::Result<()> {
    let tmp = temporary(to);
    std::fs::copy(from, &tmp)?;
    std::fs::rename(&tmp, to).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Writes `text` to `to` through a temporary file beside it.
fn write_atomic(to: &Path, text: &[u8]) -> std::io::Result<()> {
    let tmp = temporary(to);
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, to).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Job<'_> {
    /// The object of one kernel: from this build's directory, else from the
    /// shared cache, else compiled. nvcc's log (ptxas's resource lines)
    /// travels with its cubin: an entry without it is not whole.
    pub fn compile(
        &self,
        kind: KernelKind,
        symbol: &str,
        arch: Arch,
        source: &str,
    ) -> Result<BuiltObject, BuildError> {
        let c = self.compiler;
        let mut h = Sha256::new();
        for part in [
            source,
            arch.name(),
            &c.version,
            &c.args(arch, Path::new(""), Path::new("")).join(" "),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        let hash: String = h.finalize().iter().take(8).fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        });
        let (src_ext, obj_ext) = c.extensions();
        let stem = format!("{symbol}.{}.{hash}", arch.name());
        let object = self.dir.join(format!("{stem}.{obj_ext}"));
        let wants_log = c.vendor == Vendor::Nvidia;
        let log_path = |dir: &Path| dir.join(format!("{stem}.log"));
        let log = wants_log.then(|| log_path(self.dir));
        let built = |compiled| BuiltObject {
            kind,
            symbol: symbol.into(),
            arch,
            path: object.clone(),
            log: log.clone(),
            compiled,
        };
        // An entry is whole when it is an ELF (for nvcc: a cubin for this
        // arch, and a log in which ptxas reported this kernel).
        let whole = |obj: &Path, dir: &Path| {
            if !wants_log {
                return is_elf(obj);
            }
            let cubin = std::fs::read(obj).ok().and_then(|b| parse_cubin(&b).ok());
            let log = std::fs::read_to_string(log_path(dir)).unwrap_or_default();
            cubin.is_some_and(|c| c.arch() == arch.name())
                && parse_ptxas_log(&log).iter().any(|r| r.name == symbol)
        };
        if whole(&object, self.dir) {
            return Ok(built(false));
        }
        let shared = self.shared.map(|d| d.join(format!("{stem}.{obj_ext}")));
        if let (Some(cached), Some(sdir)) = (&shared, self.shared) {
            // A foreign or damaged entry is not trusted: it is rebuilt. The
            // log first, so that an object present means its log is too.
            if whole(cached, sdir)
                && (!wants_log || copy_atomic(&log_path(sdir), &log_path(self.dir)).is_ok())
                && copy_atomic(cached, &object).is_ok()
            {
                return Ok(built(false));
            }
        }
        let src = self.dir.join(format!("{stem}.{src_ext}"));
        std::fs::write(&src, source).map_err(io(&src))?;
        // Write beside the final name, then rename: a crash or a parallel
        // build never leaves a half-written object under the cached name.
        let tmp = self
            .dir
            .join(format!("{stem}.{obj_ext}.tmp{}", std::process::id()));
        let args = c.args(arch, &src, &tmp);
        let command = format!("{} {}", c.path.display(), args.join(" "));
        // hipcc's clang and nvcc leave intermediates in $TMPDIR; give them
        // a private one and remove it afterwards, so building never litters
        // the user's temporary directory.
        let scratch = self.dir.join(format!("{stem}.tmp{}", std::process::id()));
        std::fs::create_dir_all(&scratch).map_err(io(&scratch))?;
        let out = Command::new(&c.path)
            .args(&args)
            .env("TMPDIR", &scratch)
            .output();
        let _ = std::fs::remove_dir_all(&scratch);
        let out = out.map_err(io(&c.path))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() || !tmp.is_file() {
            let _ = std::fs::remove_file(&tmp);
            return Err(BuildError::Compiler {
                compiler: c.vendor.compiler(),
                symbol: symbol.into(),
                arch,
                command,
                status: out.status.to_string(),
                log: text,
            });
        }
        if let Some(log) = &log {
            write_atomic(log, text.as_bytes()).map_err(io(log))?;
        }
        std::fs::rename(&tmp, &object).map_err(io(&object))?;
        // The shared cache is best-effort: a build never fails on it.
        if let (Some(cached), Some(parent)) = (&shared, self.shared) {
            if std::fs::create_dir_all(parent).is_ok()
                && (!wants_log || write_atomic(&log_path(parent), text.as_bytes()).is_ok())
            {
                let _ = copy_atomic(&object, cached);
            }
        }
        Ok(built(true))
    }
}
