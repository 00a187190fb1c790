//! Runtime compilation of generated CUDA with NVRTC into cubins (SASS for
//! exactly the device's arch, as the build helper's nvcc makes them), for
//! specs built at run time, cached on disk by a hash of the source, arch,
//! options and NVRTC's version.
//!
//! libnvrtc is found where the dynamic loader finds it (`LD_LIBRARY_PATH`,
//! the system's library path), else, loaded by its full path, in
//! `$CUDA_PATH/lib64`, in the CUDA 13.0 wheels `scripts/fetch-cuda.sh`
//! installs into attnforge's cache, or in `/usr/local/cuda/lib64`; once
//! loaded, cudarc's own lookup by name resolves to it.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use attnforge_codegen::cubin::parse_cubin;
use attnforge_codegen::Arch;
use cudarc::nvrtc::{result, sys};

use super::CudaError;

/// The CUDA version of the wheels `scripts/fetch-cuda.sh` installs.
const WHEELS: &str = "13.0.88";

/// The library names tried in each directory, newest first.
const NAMES: [&str; 3] = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"];

/// NVRTC's options: SASS for exactly `arch` (nvrtcGetCUBIN), C++17 as the
/// build helper's nvcc, and the CUDA headers (NVRTC 13.0 has no built-in
/// `cuda_fp16.h`).
fn options(arch: Arch) -> Vec<String> {
    let mut opts = vec![format!("-arch={}", arch.name()), "-std=c++17".into()];
    if let Some(dir) = include_dir() {
        opts.push(format!("-I{}", dir.display()));
    }
    opts
}

/// The CUDA headers' directory (the one holding `cuda_fp16.h`): beside the
/// libnvrtc loaded from [`search_dirs`] (its `../include`), else the first
/// of `$CUDA_PATH/include`, the wheels' and `/usr/local/cuda/include`.
pub fn include_dir() -> Option<PathBuf> {
    let beside = loaded_from().and_then(|d| Some(d.parent()?.join("include")));
    let mut dirs: Vec<PathBuf> = beside.into_iter().collect();
    dirs.extend(
        search_dirs()
            .iter()
            .filter_map(|d| Some(d.parent()?.join("include"))),
    );
    dirs.into_iter().find(|d| d.join("cuda_fp16.h").is_file())
}

fn cache_root() -> PathBuf {
    attnforge_codegen::build::user_cache_dir()
        .unwrap_or_else(|| std::env::temp_dir().join("attnforge"))
}

/// The default cache directory: `nvrtc/` under attnforge's cache
/// (`$ATTNFORGE_CACHE_DIR`, else `$XDG_CACHE_HOME/attnforge`, else
/// `~/.cache/attnforge`, else the temp dir), apart from hiprtc's objects.
pub fn default_cache_dir() -> PathBuf {
    cache_root().join("nvrtc")
}

/// The directories searched for libnvrtc when the loader does not find it.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for var in ["CUDA_PATH", "CUDA_HOME"] {
        if let Some(d) = std::env::var_os(var) {
            dirs.push(PathBuf::from(&d).join("lib64"));
            dirs.push(PathBuf::from(d).join("lib"));
        }
    }
    let wheels = cache_root().join("cuda").join(WHEELS).join("nvidia/cu13");
    dirs.push(wheels.join("lib"));
    dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
    dirs
}

/// Loads the shared library at `path` for the rest of the process (as
/// cudarc keeps its own handle), so that a later load by its soname finds it.
fn keep_loaded(path: &Path) -> bool {
    // SAFETY: loading NVRTC's libraries runs only their initializers, which
    // have no preconditions.
    match unsafe { libloading::Library::new(path) } {
        Ok(lib) => {
            std::mem::forget(lib);
            true
        }
        Err(_) => false,
    }
}

/// Makes libnvrtc loadable by cudarc (once per process): the loader's own
/// search, else the first of [`search_dirs`] that holds it, loaded by full
/// path and kept loaded, so that cudarc's lookup by soname resolves to it.
pub fn load() -> Result<(), CudaError> {
    loaded().clone().map(drop).map_err(CudaError::NoNvrtc)
}

/// The directory libnvrtc was loaded from by full path (`None` when the
/// loader found it, or it was not found).
fn loaded_from() -> Option<PathBuf> {
    loaded().clone().ok().flatten()
}

fn loaded() -> &'static Result<Option<PathBuf>, String> {
    static LOADED: OnceLock<Result<Option<PathBuf>, String>> = OnceLock::new();
    LOADED.get_or_init(|| {
        // SAFETY: dlopen by name (NVRTC's initializers only), then closed.
        if unsafe { sys::is_culib_present() } {
            return Ok(None);
        }
        let dirs = search_dirs();
        for path in dirs.iter().flat_map(|d| NAMES.map(|n| d.join(n))) {
            if !path.is_file() {
                continue;
            }
            if !keep_loaded(&path) {
                continue;
            }
            // NVRTC opens its builtins (libnvrtc-builtins.so.13.0) by name
            // when it compiles: load them from beside it too.
            let dir = path.parent().unwrap_or(Path::new("."));
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = entry.file_name();
                if name.to_string_lossy().starts_with("libnvrtc-builtins.so.") {
                    keep_loaded(&entry.path());
                }
            }
            // SAFETY: as above; it now resolves to the library loaded.
            if unsafe { sys::is_culib_present() } {
                return Ok(Some(dir.to_path_buf()));
            }
        }
        let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        Err(format!(
            "libnvrtc (CUDA's runtime compiler) was not found on the loader's path nor in {}: \
             run scripts/setup.sh (it installs CUDA 13.0's NVRTC), or set CUDA_PATH to a CUDA \
             installation",
            searched.join(", ")
        ))
    })
}

/// NVRTC's (major, minor) version, loading it first.
pub fn version() -> Result<(i32, i32), CudaError> {
    load()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two valid out-pointers.
    let r = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    r.result()
        .map_err(|e| fail("nvrtcVersion", String::new(), e.0))?;
    Ok((major, minor))
}

/// Whether `bytes` are a cubin for `arch` (what a cache entry must be).
fn is_cubin_for(bytes: &[u8], arch: Arch) -> bool {
    parse_cubin(bytes).is_ok_and(|c| c.arch() == arch.name())
}

/// The cubin of `source` for `arch`: read from `cache_dir` when an earlier
/// call compiled the same source with the same NVRTC (and the file is a
/// cubin for `arch`; anything else is rebuilt), else compiled with NVRTC and
/// written there atomically (a temporary file renamed into place). Returns
/// the bytes and whether NVRTC ran.
pub fn compile_cached(
    source: &str,
    arch: Arch,
    cache_dir: &Path,
) -> Result<(Vec<u8>, bool), CudaError> {
    let (major, minor) = version()?;
    let nvrtc = format!("nvrtc {major}.{minor}");
    crate::rtc_cache::cached(
        cache_dir,
        &[source, arch.name(), &options(arch).join(" "), &nvrtc],
        &format!("{}.cubin", arch.name()),
        |bytes| is_cubin_for(bytes, arch),
        || compile(source, arch),
    )
}

fn message(r: sys::nvrtcResult) -> String {
    // SAFETY: nvrtcGetErrorString returns a static string for any status.
    let p = unsafe { sys::nvrtcGetErrorString(r) };
    if p.is_null() {
        return format!("{r:?}");
    }
    // SAFETY: non-null, static and NUL-terminated.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn fail(what: &str, options: String, r: sys::nvrtcResult) -> CudaError {
    CudaError::Rtc {
        what: what.into(),
        options,
        log: message(r),
    }
}

/// Compiles one translation unit with NVRTC into a cubin for `arch`.
pub fn compile(source: &str, arch: Arch) -> Result<Vec<u8>, CudaError> {
    load()?;
    let opts = options(arch);
    let joined = opts.join(" ");
    let src = CString::new(source).map_err(|_| CudaError::Rtc {
        what: "source".into(),
        options: joined.clone(),
        log: "the source holds a NUL byte".into(),
    })?;
    let prog = result::create_program(&src, Some(c"attnforge.cu"))
        .map_err(|e| fail("nvrtcCreateProgram", joined.clone(), e.0))?;
    struct Prog(sys::nvrtcProgram);
    impl Drop for Prog {
        fn drop(&mut self) {
            // SAFETY: created above and destroyed exactly once, here.
            let _ = unsafe { result::destroy_program(self.0) };
        }
    }
    let prog = Prog(prog);
    // SAFETY: a live program; the options are plain strings without NULs.
    if let Err(e) = unsafe { result::compile_program(prog.0, &opts) } {
        // SAFETY: a live program.
        let log = unsafe { result::get_program_log(prog.0) }.unwrap_or_default();
        let log: Vec<u8> = log.iter().map(|&c| c as u8).collect();
        let log = String::from_utf8_lossy(&log)
            .trim_end_matches('\0')
            .to_string();
        let hint = if include_dir().is_none() {
            "\n(no CUDA headers found beside NVRTC nor in the CUDA directories: run \
             scripts/setup.sh, or set CUDA_PATH)"
        } else {
            ""
        };
        return Err(CudaError::Rtc {
            what: "nvrtcCompileProgram".into(),
            options: joined,
            log: format!("{}\n{log}{hint}", message(e.0)),
        });
    }
    let mut size = 0usize;
    // SAFETY: a compiled program and a valid out-pointer.
    let r = unsafe { sys::nvrtcGetCUBINSize(prog.0, &mut size) };
    r.result()
        .map_err(|e| fail("nvrtcGetCUBINSize", joined.clone(), e.0))?;
    let mut code = vec![0u8; size];
    // SAFETY: `code` holds `size` bytes, as NVRTC reported.
    let r = unsafe { sys::nvrtcGetCUBIN(prog.0, code.as_mut_ptr().cast()) };
    r.result()
        .map_err(|e| fail("nvrtcGetCUBIN", joined.clone(), e.0))?;
    if size == 0 {
        return Err(CudaError::Rtc {
            what: "nvrtcGetCUBIN".into(),
            options: joined,
            log: "NVRTC made no cubin (a virtual arch?)".into(),
        });
    }
    Ok(code)
}
