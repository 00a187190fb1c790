//! The run-time compilers' on-disk cache (hiprtc's code objects, NVRTC's
//! cubins): entries named by a hash of what determines them, written so
//! that readers see an entry whole or not at all (the bytes go to a
//! temporary file beside it, unique to this process and call, then are
//! renamed into place).

use std::path::Path;

use sha2::{Digest, Sha256};

/// The entry of `parts` (source, arch, options, compiler version) in
/// `dir`, named `<hash>.<suffix>`: read when it exists and `valid` accepts
/// it, else made by `compile` and written (best-effort: a read-only or full
/// disk costs a later compile, never this one's result). Returns the bytes
/// and whether `compile` ran.
pub(crate) fn cached<E>(
    dir: &Path,
    parts: &[&str],
    suffix: &str,
    valid: impl Fn(&[u8]) -> bool,
    compile: impl FnOnce() -> Result<Vec<u8>, E>,
) -> Result<(Vec<u8>, bool), E> {
    let mut h = Sha256::new();
    for part in parts {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let hash: String = h
        .finalize()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    let path = dir.join(format!("{hash}.{suffix}"));
    if let Ok(bytes) = std::fs::read(&path) {
        if valid(&bytes) {
            return Ok((bytes, false));
        }
    }
    let bytes = compile()?;
    let _ = write(&path, &bytes);
    Ok((bytes, true))
}
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `bytes` to `path` atomically (creating its directory). Two
/// writers of the same entry, threads or processes, never share a
/// temporary file; the last rename wins with complete bytes.
fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
