//! A bounds check of a GGUF file's structure, run before candle reads it.
//!
//! candle's GGUF reader trusts the lengths a file declares: a string,
//! array or tensor whose length field is damaged makes it allocate that
//! many bytes up front, which aborts the process instead of failing. This
//! walk reads the header, every metadata value and every tensor's
//! description, and refuses any length that cannot fit in the bytes left
//! in the file (or in `usize`), so a truncated or corrupted file is a typed
//! error. Its format knowledge is GGUF's published layout (versions 1 to
//! 3): magic, version, tensor and key-value counts, then `key, type,
//! value` triples, then tensor infos (name, dimensions, ggml type, offset).
//! It checks lengths (and refuses empty tensors, which candle reads
//! through a dangling pointer); candle still does the reading.

use std::io::{Read, Seek, SeekFrom};

use crate::LlamaError;

/// Nested arrays deeper than this are refused (GGUF files hold flat arrays).
const MAX_DEPTH: u32 = 4;
/// ggml tensors have at most 4 dimensions.
const MAX_DIMS: u32 = 4;

struct Walk<'a, R> {
    r: &'a mut R,
    pos: u64,
    len: u64,
    wide: bool, // counts and lengths are u64 (versions 2 and 3), else u32
}

fn bad(what: &str, at: u64) -> LlamaError {
    LlamaError::BadKey(
        "(file structure)".into(),
        format!("{what} at byte {at} does not fit in the file: truncated or corrupted"),
    )
}

impl<R: Read> Walk<'_, R> {
    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N], LlamaError> {
        let mut b = [0u8; N];
        self.r.read_exact(&mut b).map_err(|_| bad(what, self.pos))?;
        self.pos += N as u64;
        Ok(b)
    }
    fn u32(&mut self, what: &str) -> Result<u32, LlamaError> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, LlamaError> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }
    fn count(&mut self, what: &str) -> Result<u64, LlamaError> {
        match self.wide {
            true => self.u64(what),
            false => self.u32(what).map(u64::from),
        }
    }
    /// Skips `n` bytes, which must lie in the file.
    fn skip(&mut self, n: u64, what: &str) -> Result<(), LlamaError> {
        if n > self.len.saturating_sub(self.pos) {
            return Err(bad(what, self.pos));
        }
        let got = std::io::copy(&mut self.r.by_ref().take(n), &mut std::io::sink())
            .map_err(|_| bad(what, self.pos))?;
        if got != n {
            return Err(bad(what, self.pos));
        }
        self.pos += n;
        Ok(())
    }
    /// `n` items of at least `min` bytes each must fit in what is left.
    fn fits(&self, n: u64, min: u64, what: &str) -> Result<(), LlamaError> {
        match n.checked_mul(min) {
            Some(b) if b <= self.len.saturating_sub(self.pos) => Ok(()),
            _ => Err(bad(what, self.pos)),
        }
    }
    fn string(&mut self, what: &str) -> Result<(), LlamaError> {
        let n = self.count(what)?;
        self.skip(n, what)
    }
    fn value(&mut self, ty: u32, depth: u32) -> Result<(), LlamaError> {
        let fixed = |ty| match ty {
            0 | 1 | 7 => Some(1), // u8, i8, bool
            2 | 3 => Some(2),     // u16, i16
            4..=6 => Some(4),     // u32, i32, f32
            10..=12 => Some(8),   // u64, i64, f64
            _ => None,
        };
        match ty {
            8 => self.string("a string value"),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(bad("an array nested too deep", self.pos));
                }
                let item = self.u32("an array's item type")?;
                let n = self.count("an array's length")?;
                match fixed(item) {
                    Some(size) => {
                        self.fits(n, size, "an array")?;
                        self.skip(n * size, "an array")
                    }
                    None => {
                        // Strings and arrays take at least their length field.
                        self.fits(n, if self.wide { 8 } else { 4 }, "an array")?;
                        for _ in 0..n {
                            self.value(item, depth + 1)?;
                        }
                        Ok(())
                    }
                }
            }
            t => match fixed(t) {
                Some(size) => self.skip(size, "a value"),
                None => Err(LlamaError::BadKey(
                    "(file structure)".into(),
                    format!("unknown GGUF value type {t} at byte {}", self.pos),
                )),
            },
        }
    }
}

/// Checks the structure of the GGUF file `r` holds (`len` bytes), then
/// rewinds it. Every declared length must fit in the file; a tensor's data
/// (at least a quarter byte per element, the densest ggml type) too.
pub(crate) fn check<R: Read + Seek>(r: &mut R, len: u64) -> Result<(), LlamaError> {
    r.seek(SeekFrom::Start(0))
        .map_err(|e| LlamaError::Io("the model file".into(), e))?;
    let mut w = Walk {
        r,
        pos: 0,
        len,
        wide: true,
    };
    if &w.bytes::<4>("the magic")? != b"GGUF" {
        return Err(LlamaError::BadKey(
            "(file structure)".into(),
            "not a GGUF file (no GGUF magic)".into(),
        ));
    }
    let version = w.u32("the version")?;
    if !(1..=3).contains(&version) {
        return Err(LlamaError::BadKey(
            "(file structure)".into(),
            format!("GGUF version {version} (versions 1 to 3 are known)"),
        ));
    }
    w.wide = version >= 2;
    let tensors = w.count("the tensor count")?;
    let kvs = w.count("the metadata count")?;
    // A key-value pair takes at least a key length and a type.
    w.fits(kvs, 8, "the metadata")?;
    for _ in 0..kvs {
        w.string("a metadata key")?;
        let ty = w.u32("a value type")?;
        w.value(ty, 0)?;
    }
    // A tensor info takes at least a name length, a dimension count, a
    // type and an offset.
    w.fits(tensors, 20, "the tensor infos")?;
    let mut infos = Vec::new();
    for _ in 0..tensors {
        w.string("a tensor name")?;
        let dims = w.u32("a tensor's dimension count")?;
        if dims > MAX_DIMS {
            return Err(bad("a tensor with more than 4 dimensions", w.pos));
        }
        let mut elems: u64 = 1;
        for _ in 0..dims {
            let d = w.count("a tensor dimension")?;
            elems = elems
                .checked_mul(d)
                .ok_or_else(|| bad("a tensor's element count", w.pos))?;
        }
        // candle views an empty tensor's data through a dangling pointer
        // (undefined behaviour for f32); no model has one.
        if elems == 0 {
            return Err(bad("a tensor with no elements", w.pos));
        }
        w.u32("a tensor's type")?;
        let offset = w.u64("a tensor's offset")?;
        infos.push((elems, offset));
    }
    let data_start = w.pos;
    for (elems, offset) in infos {
        let end = data_start
            .checked_add(offset)
            .and_then(|s| s.checked_add(elems / 4));
        if end.is_none_or(|e| e > len) {
            return Err(bad("a tensor's data", data_start.saturating_add(offset)));
        }
    }
    r.seek(SeekFrom::Start(0))
        .map_err(|e| LlamaError::Io("the model file".into(), e))?;
    Ok(())
}
