//! The on-disk cache of the CPU backend's machine code.
//!
//! ```text
//! <dir>/<key hex>.o:  "AFJITOB1" | key (32) | SHA-256 of the object (32) | frame bytes (u64 LE) | object
//! ```
//!
//! The key hashes everything the code depends on: the kernel's IR, the
//! mode, the host CPU and its features, the LLVM version and the lowering's
//! own source. An entry is used only if its header names the key and its
//! object matches its checksum; anything else (truncated, damaged, foreign)
//! is ignored and rebuilt. Entries are written to a temporary file and
//! renamed into place, so a reader never sees half an entry.
//!
//! The directory is `$ATTNFORGE_JIT_CACHE`, else `jit` in the user's
//! attnforge cache ([`crate::build::user_cache_dir`]); `ATTNFORGE_JIT_CACHE=off`
//! turns the cache off.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::jit::Key;

const MAGIC: &[u8; 8] = b"AFJITOB1";
const HEADER: usize = 8 + 32 + 32 + 8;

/// The source of the lowering: a change to it changes every key.
const LOWERING: &[&str] = &[
    include_str!("mod.rs"),
    include_str!("lower.rs"),
    include_str!("convert.rs"),
    include_str!("split.rs"),
    include_str!("check.rs"),
    include_str!("mma.rs"),
    // The matrix instructions' lane layouts, which the lowering embeds.
    include_str!("../ir/mma.rs"),
];

/// The cache directory, or `None` when it is off or there is no home.
pub(crate) fn dir() -> Option<PathBuf> {
    match std::env::var_os("ATTNFORGE_JIT_CACHE") {
        Some(v) if v == "off" || v == "0" => None,
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => crate::build::user_cache_dir().map(|d| d.join("jit")),
    }
}

/// The key of a kernel's code: `parts` (its IR, mode and host) with the
/// LLVM version and the lowering's source.
pub(crate) fn key(parts: &[&[u8]]) -> Key {
    let mut h = Sha256::new();
    // The LLVM major version inkwell is built for (LLVM 15's C API has no
    // version query; a patch release emits equivalent code).
    h.update(b"llvm 15\0");
    for src in LOWERING {
        h.update(src.as_bytes());
        h.update([0]);
    }
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().into()
}

fn hex(key: &Key) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fn path(dir: &Path, key: &Key) -> PathBuf {
    dir.join(format!("{}.o", hex(key)))
}

/// The entry for `key`: its frame size and object, if whole and genuine.
pub(crate) fn read(dir: &Path, key: &Key) -> Option<(u64, Vec<u8>)> {
    let bytes = std::fs::read(path(dir, key)).ok()?;
    if bytes.len() <= HEADER || &bytes[..8] != MAGIC || bytes[8..40] != key[..] {
        return None;
    }
    let object = &bytes[HEADER..];
    let sum: [u8; 32] = Sha256::digest(object).into();
    if bytes[40..72] != sum {
        return None;
    }
    let frame = u64::from_le_bytes(bytes[72..80].try_into().ok()?);
    Some((frame, object.to_vec()))
}

/// Adds an entry; best-effort (a full disk or a read-only home only means
/// the next process compiles again).
pub(crate) fn write(dir: &Path, key: &Key, frame_bytes: u64, object: &[u8]) {
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let mut bytes = Vec::with_capacity(HEADER + object.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(&Sha256::digest(object));
    bytes.extend_from_slice(&frame_bytes.to_le_bytes());
    bytes.extend_from_slice(object);
    let dst = path(dir, key);
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dst.with_extension(format!("tmp{}.{n}", std::process::id()));
    if std::fs::write(&tmp, &bytes).is_ok() && std::fs::rename(&tmp, &dst).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// The symbol a kernel's code defines: unique per key, so that every
/// kernel can live in one JIT.
pub(crate) fn symbol(key: &Key) -> String {
    format!("af_block_{}", &hex(key)[..32])
}
