//! Where the build finds its compilers and its cache: hipcc, nvcc (a
//! system CUDA, or the toolchain `scripts/setup.sh` installs from PyPI),
//! and the user's attnforge cache directory.

use std::path::PathBuf;

/// hipcc: `$HIPCC`, else `hipcc` on `PATH`, else `/opt/rocm/bin/hipcc`.
pub fn find_hipcc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HIPCC").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("hipcc"))
        .chain(std::iter::once(PathBuf::from("/opt/rocm/bin/hipcc")))
        .find(|c| c.is_file())
}

/// The places [`find_nvcc`] looks, in its order (for error messages).
pub const NVCC_PLACES: &str =
    "$NVCC, $CUDA_PATH/bin/nvcc, nvcc on PATH, /usr/local/cuda/bin/nvcc, \
and the toolchain scripts/setup.sh installs under attnforge's cache (cuda/*/nvidia/cu13/bin/nvcc)";

/// NVIDIA's compiler: `$NVCC`, else `$CUDA_PATH/bin/nvcc`, else `nvcc` on
/// `PATH`, else `/usr/local/cuda/bin/nvcc`, else the newest toolchain
/// `scripts/setup.sh` installed from PyPI under [`user_cache_dir`]`/cuda`.
pub fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVCC").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(cuda) = std::env::var_os("CUDA_PATH").filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(cuda).join("bin").join("nvcc"));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    candidates.extend(std::env::split_paths(&path).map(|d| d.join("nvcc")));
    candidates.push(PathBuf::from("/usr/local/cuda/bin/nvcc"));
    if let Some(root) = user_cache_dir().map(|d| d.join("cuda")) {
        // Only a whole install: the script marks one `.complete` last.
        let mut installed: Vec<PathBuf> = std::fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join(".complete").is_file())
            .map(|e| {
                e.path()
                    .join("nvidia")
                    .join("cu13")
                    .join("bin")
                    .join("nvcc")
            })
            .collect();
        // Newest first, by version number (13.10 after 13.9).
        let version = |p: &PathBuf| -> Vec<u64> {
            let dir = p.ancestors().nth(4).and_then(|d| d.file_name());
            let text = dir
                .map(|d| d.to_string_lossy().into_owned())
                .unwrap_or_default();
            text.split('.').map(|n| n.parse().unwrap_or(0)).collect()
        };
        installed.sort_by_key(|p| std::cmp::Reverse(version(p)));
        candidates.extend(installed);
    }
    candidates.into_iter().find(|c| c.is_file())
}

/// NVIDIA's SASS disassembler (for reading back which instructions a cubin
/// holds): `nvdisasm` beside [`find_nvcc`]'s nvcc (a CUDA install's, or the
/// one `scripts/fetch-cuda.sh` installs with it), else on `PATH`.
pub fn find_nvdisasm() -> Option<PathBuf> {
    let beside = find_nvcc().and_then(|n| n.parent().map(|d| d.join("nvdisasm")));
    let path = std::env::var_os("PATH").unwrap_or_default();
    beside
        .into_iter()
        .chain(std::env::split_paths(&path).map(|d| d.join("nvdisasm")))
        .find(|c| c.is_file())
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
