//! Reading AMDGPU code objects produced by `hipcc --genco`.
//!
//! hipcc writes either a clang offload bundle (the default) or, with
//! `--no-gpu-bundle-output`, a bare AMDGPU ELF. This module unpacks both, so
//! that a code object can be checked (right target, expected kernels present)
//! before it is handed to the HIP module loader. It only reads: every offset
//! and size is bounds-checked, and malformed input gives an error, never a panic.

// Clang offload bundle layout (all integers u64 little-endian; offsets are
// from the start of the file):
//
//   +------------------------------+  0
//   | "__CLANG_OFFLOAD_BUNDLE__"   |  24-byte magic
//   +------------------------------+  24
//   | entry count N                |
//   +------------------------------+  32
//   | offset | size | id_len | id  |  entry 0, e.g. "host-x86_64-unknown-linux"
//   | offset | size | id_len | id  |  entry 1, e.g. "hipv4-amdgcn-amd-amdhsa--gfx90a"
//   | ...                          |
//   +------------------------------+
//   | entry bytes (host: empty,    |  each at its offset, `size` bytes long
//   |  device: an AMDGPU ELF)      |
//   +------------------------------+

use std::collections::BTreeSet;
use thiserror::Error;

/// ELF `e_machine` value for AMD GPUs.
pub const EM_AMDGPU: u16 = 224;

const BUNDLE_MAGIC: &[u8; 24] = b"__CLANG_OFFLOAD_BUNDLE__";
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const SHT_SYMTAB: u64 = 2;
const SHT_DYNSYM: u64 = 11;
const ELF64_HEADER_LEN: usize = 64;
const ELF64_SHDR_LEN: usize = 64;
const ELF64_SYM_LEN: usize = 24;

/// Why a code object could not be read.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CodeObjectError {
    /// A field or region lies (partly) past the end of the input.
    #[error("truncated input: {what} at offset {offset} runs past the end")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where it starts, from the start of the buffer being parsed.
        offset: usize,
    },
    /// The input is neither an ELF file nor a clang offload bundle.
    #[error("bad magic: neither an ELF file nor a clang offload bundle")]
    BadMagic,
    /// The input is an ELF file, but not one this reader handles.
    #[error("unsupported ELF: {reason}")]
    UnsupportedElf {
        /// What is not supported.
        reason: &'static str,
    },
    /// A field holds a value that makes no sense.
    #[error("malformed {what} at offset {offset}")]
    Malformed {
        /// What is wrong.
        what: &'static str,
        /// Where the offending field or data starts.
        offset: usize,
    },
}

/// One entry of a clang offload bundle, borrowing from the bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleEntry<'a> {
    /// Target id, e.g. `hipv4-amdgcn-amd-amdhsa--gfx90a`.
    pub id: &'a str,
    /// The entry's bytes (empty for hipcc's host entry).
    pub bytes: &'a [u8],
}

/// What this module reads out of one ELF code object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfCodeObject {
    /// `e_machine` (`EM_AMDGPU` for GPU code).
    pub machine: u16,
    /// `e_flags`; for AMDGPU the low byte names the GPU (`EF_AMDGPU_MACH`).
    pub flags: u32,
    /// Names of all symbols in `.symtab` and `.dynsym`, sorted, deduplicated.
    pub symbols: Vec<String>,
}

impl ElfCodeObject {
    /// The gfx target named by `flags`, if known.
    pub fn arch(&self) -> Option<&'static str> {
        gfx_arch_from_flags(self.flags)
    }

    /// True when both the kernel symbol `name` and its descriptor `name.kd` exist.
    pub fn has_kernel(&self, name: &str) -> bool {
        let has = |s: &str| self.symbols.binary_search_by(|x| x.as_str().cmp(s)).is_ok();
        has(name) && has(&format!("{name}.kd"))
    }
}

/// Maps the `EF_AMDGPU_MACH` field (`flags & 0xff`) to a gfx target name.
pub fn gfx_arch_from_flags(flags: u32) -> Option<&'static str> {
    // Values from LLVM's AMDGPUUsage ELF header table; the gfx9xx/gfx1010/
    // gfx1030 ones were also checked against hipcc output.
    Some(match flags & 0xff {
        0x2c => "gfx900",
        0x2f => "gfx906",
        0x30 => "gfx908",
        0x33 => "gfx1010",
        0x36 => "gfx1030",
        0x3f => "gfx90a",
        0x40 => "gfx940",
        0x41 => "gfx1100",
        0x46 => "gfx1101",
        0x47 => "gfx1102",
        0x48 => "gfx1200",
        0x4b => "gfx941",
        0x4c => "gfx942",
        0x4e => "gfx1201",
        0x4f => "gfx950",
        _ => return None,
    })
}

fn at(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

fn malformed(what: &'static str, offset: usize) -> CodeObjectError {
    CodeObjectError::Malformed { what, offset }
}

/// Returns `len` bytes at `offset`, or `Truncated` if they are not all there.
fn region<'a>(
    b: &'a [u8],
    offset: usize,
    len: u64,
    what: &'static str,
) -> Result<&'a [u8], CodeObjectError> {
    let end = offset.saturating_add(at(len));
    b.get(offset..end)
        .ok_or(CodeObjectError::Truncated { what, offset })
}

/// Reads an `n`-byte little-endian unsigned integer at `off`.
fn uint(b: &[u8], off: usize, n: u64, what: &'static str) -> Result<u64, CodeObjectError> {
    let r = region(b, off, n, what)?;
    Ok(r.iter().rev().fold(0, |acc, &x| (acc << 8) | u64::from(x)))
}

/// Parses a clang offload bundle into its entries.
pub fn parse_offload_bundle(bytes: &[u8]) -> Result<Vec<BundleEntry<'_>>, CodeObjectError> {
    if !bytes.starts_with(BUNDLE_MAGIC) {
        return Err(CodeObjectError::BadMagic);
    }
    let count = uint(bytes, BUNDLE_MAGIC.len(), 8, "bundle entry count")?;
    let mut pos = BUNDLE_MAGIC.len() + 8;
    let mut entries = Vec::new();
    for _ in 0..count {
        let offset = at(uint(bytes, pos, 8, "bundle entry offset")?);
        let size = uint(bytes, pos + 8, 8, "bundle entry size")?;
        let id_len = uint(bytes, pos + 16, 8, "bundle entry id length")?;
        let id_bytes = region(bytes, pos + 24, id_len, "bundle entry id")?;
        let id = std::str::from_utf8(id_bytes)
            .map_err(|_| malformed("bundle entry id (not UTF-8)", pos + 24))?;
        let bytes = region(bytes, offset, size, "bundle entry data")?;
        entries.push(BundleEntry { id, bytes });
        pos += 24 + id_bytes.len();
    }
    Ok(entries)
}

/// Returns the AMDGPU ELFs of a bundle (host and non-ELF entries skipped), or a bare ELF alone.
pub fn amdgpu_elf_objects(bytes: &[u8]) -> Result<Vec<ElfCodeObject>, CodeObjectError> {
    if bytes.starts_with(ELF_MAGIC) {
        return Ok(vec![parse_elf(bytes)?]);
    }
    let mut out = Vec::new();
    for entry in parse_offload_bundle(bytes)? {
        if entry.bytes.starts_with(ELF_MAGIC) {
            let obj = parse_elf(entry.bytes)?;
            if obj.machine == EM_AMDGPU {
                out.push(obj);
            }
        }
    }
    Ok(out)
}

/// Parses an ELF64 little-endian file: machine, flags and all symbol names.
pub fn parse_elf(bytes: &[u8]) -> Result<ElfCodeObject, CodeObjectError> {
    if !bytes.starts_with(ELF_MAGIC) {
        return Err(CodeObjectError::BadMagic);
    }
    let unsupported = |reason| Err(CodeObjectError::UnsupportedElf { reason });
    match region(bytes, 0, 6, "ELF identification")? {
        [.., c, _] if *c != 2 => return unsupported("not ELF64 (EI_CLASS != 2)"),
        [.., d] if *d != 1 => return unsupported("not little-endian (EI_DATA != 1)"),
        _ => {}
    }
    let header = region(bytes, 0, ELF64_HEADER_LEN as u64, "ELF header")?;
    let field = |off, n| uint(header, off, n, "ELF header field");
    let (machine, flags) = (field(18, 2)? as u16, field(48, 4)? as u32);
    let (shoff, shentsize) = (at(field(40, 8)?), at(field(58, 2)?));
    let (mut shnum, shstrndx) = (at(field(60, 2)?), at(field(62, 2)?));
    if shoff != 0 && shentsize < ELF64_SHDR_LEN {
        return Err(malformed("e_shentsize (below 64)", 58));
    }
    let sh_len = |n: usize| n.saturating_mul(shentsize) as u64;
    if shoff == 0 {
        shnum = 0;
    } else if shnum == 0 {
        // Extended numbering: the real count is section 0's sh_size.
        let first = region(bytes, shoff, sh_len(1), "section header 0")?;
        shnum = at(uint(first, 32, 8, "section 0 sh_size")?);
    }
    let table = region(bytes, shoff, sh_len(shnum), "section headers")?;
    if shstrndx != 0 && shstrndx != 0xffff && shstrndx >= shnum {
        return Err(malformed("e_shstrndx (no such section)", 62));
    }
    // Section `i`'s [sh_type, sh_offset, sh_size, sh_link, sh_entsize].
    let section = |i: usize| -> Result<[u64; 5], CodeObjectError> {
        let h = region(table, i.saturating_mul(shentsize), 64, "section header")?;
        let f = |off, n| uint(h, off, n, "section header field");
        Ok([f(4, 4)?, f(24, 8)?, f(32, 8)?, f(40, 4)?, f(56, 8)?])
    };
    let mut symbols = BTreeSet::new();
    for i in 0..shnum {
        let [ty, off, size, link, entsize] = section(i)?;
        if ty != SHT_SYMTAB && ty != SHT_DYNSYM {
            continue;
        }
        let entsize = if entsize == 0 { 24 } else { at(entsize) };
        if entsize < ELF64_SYM_LEN || at(link) >= shnum {
            let offset = shoff.saturating_add(i * shentsize);
            return Err(malformed("symbol table section header", offset));
        }
        let syms = region(bytes, at(off), size, "symbol table")?;
        let [_, str_off, str_size, _, _] = section(at(link))?;
        let strtab = region(bytes, at(str_off), str_size, "string table")?;
        for sym in syms.chunks_exact(entsize) {
            let name_off = at(uint(sym, 0, 4, "st_name")?);
            let offset = at(str_off).saturating_add(name_off);
            let rest = strtab.get(name_off..);
            let rest = rest.ok_or_else(|| malformed("st_name (past string table)", offset))?;
            let len = rest.iter().position(|&c| c == 0);
            let len = len.ok_or_else(|| malformed("symbol name (no NUL)", offset))?;
            let name = std::str::from_utf8(rest.get(..len).unwrap_or_default())
                .map_err(|_| malformed("symbol name (not UTF-8)", offset))?;
            if !name.is_empty() {
                symbols.insert(name.to_owned());
            }
        }
    }
    let symbols = symbols.into_iter().collect();
    Ok(ElfCodeObject {
        machine,
        flags,
        symbols,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes the low `n` bytes of `v` little-endian at `at`.
    fn put(f: &mut [u8], at: usize, v: u64, n: usize) {
        f[at..at + n].copy_from_slice(&v.to_le_bytes()[..n]);
    }

    /// Builds an ELF64 LE file: null, .shstrtab, .strtab, .symtab (link 2), headers last.
    fn build_elf(machine: u16, flags: u32, names: &[&str]) -> Vec<u8> {
        let (mut strtab, mut symtab) = (vec![0u8], vec![0u8; ELF64_SYM_LEN]);
        for n in names {
            symtab.extend(
                (strtab.len() as u64)
                    .to_le_bytes()
                    .into_iter()
                    .chain([0; 16]),
            );
            strtab.extend(n.as_bytes().iter().chain(&[0]));
        }
        let mut f = vec![0u8; ELF64_HEADER_LEN];
        let mut headers = vec![0u8; ELF64_SHDR_LEN]; // section 0 is null
        let shstr = b"\0.shstrtab\0.strtab\0.symtab\0";
        let secs = [
            (1, 3, &shstr[..], 0, 0),
            (11, 3, &strtab, 0, 0),
            (19, 2, &symtab, 2, 24),
        ];
        for (name, ty, data, link, entsize) in secs {
            f.resize(f.len().next_multiple_of(8), 0);
            let mut h = [0u8; ELF64_SHDR_LEN];
            for (at, v, n) in [(0, name, 4), (4, ty, 4), (24, f.len() as u64, 8)] {
                put(&mut h, at, v, n);
            }
            for (at, v, n) in [(32, data.len() as u64, 8), (40, link, 4), (56, entsize, 8)] {
                put(&mut h, at, v, n);
            }
            headers.extend(h);
            f.extend(data);
        }
        f.resize(f.len().next_multiple_of(8), 0);
        let shoff = f.len() as u64;
        f.extend(headers);
        f[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        put(&mut f, 16, 3, 2); // ET_DYN
        put(&mut f, 18, machine.into(), 2);
        put(&mut f, 40, shoff, 8);
        put(&mut f, 48, flags.into(), 4);
        put(&mut f, 58, 64, 2); // e_shentsize
        put(&mut f, 60, 4, 2); // e_shnum
        put(&mut f, 62, 1, 2); // e_shstrndx
        f
    }

    fn build_bundle(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut data_at = 32 + entries.iter().map(|(id, _)| 24 + id.len()).sum::<usize>();
        let mut f = BUNDLE_MAGIC.to_vec();
        f.extend((entries.len() as u64).to_le_bytes());
        for (id, data) in entries {
            for v in [data_at, data.len(), id.len()] {
                f.extend((v as u64).to_le_bytes());
            }
            f.extend(id.as_bytes());
            data_at += data.len();
        }
        entries.iter().for_each(|(_, d)| f.extend(*d));
        f
    }

    #[test]
    fn reads_machine_flags_and_symbols() {
        let elf = build_elf(EM_AMDGPU, 0x53f, &["foo", "foo.kd", "bar", "foo"]);
        let obj = parse_elf(&elf).unwrap();
        assert_eq!((obj.machine, obj.flags), (EM_AMDGPU, 0x53f));
        assert_eq!(obj.symbols, ["bar", "foo", "foo.kd"]);
        assert_eq!(obj.arch(), Some("gfx90a"));
        assert!(obj.has_kernel("foo"));
        assert!(!obj.has_kernel("bar"));
        assert_eq!(amdgpu_elf_objects(&elf).unwrap(), vec![obj.clone()]);
        let mut dynsym = elf.clone();
        let shoff = dynsym.len() - 4 * ELF64_SHDR_LEN;
        put(&mut dynsym, shoff + 3 * ELF64_SHDR_LEN + 4, SHT_DYNSYM, 4);
        assert_eq!(parse_elf(&dynsym), Ok(obj));
    }

    #[test]
    fn arch_mapping() {
        assert_eq!(gfx_arch_from_flags(0x3f), Some("gfx90a"));
        assert_eq!(gfx_arch_from_flags(0x540), Some("gfx940"));
        assert_eq!(gfx_arch_from_flags(0x36), Some("gfx1030"));
        assert_eq!(gfx_arch_from_flags(0x4c), Some("gfx942"));
        assert_eq!(gfx_arch_from_flags(0), None);
    }

    #[test]
    fn bundle_with_host_and_device_entries() {
        let elf = build_elf(EM_AMDGPU, 0x36, &["k", "k.kd"]);
        let host_id = "host-x86_64-unknown-linux";
        let dev_id = "hipv4-amdgcn-amd-amdhsa--gfx1030";
        let b = build_bundle(&[(host_id, &[]), (dev_id, &elf)]);
        let entries = parse_offload_bundle(&b).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!((entries[0].id, entries[0].bytes.len()), (host_id, 0));
        assert_eq!((entries[1].id, entries[1].bytes), (dev_id, &elf[..]));
        let objs = amdgpu_elf_objects(&b).unwrap();
        assert_eq!(objs.len(), 1);
        assert_eq!(objs[0].arch(), Some("gfx1030"));
        assert!(objs[0].has_kernel("k"));
    }

    #[test]
    fn wrong_magic_class_or_endianness() {
        assert_eq!(parse_elf(b"hello world"), Err(CodeObjectError::BadMagic));
        assert_eq!(amdgpu_elf_objects(b""), Err(CodeObjectError::BadMagic));
        assert!(parse_offload_bundle(b"\x7fELF").is_err());
        let elf = build_elf(EM_AMDGPU, 0x3f, &["a"]);
        for (i, bad) in [(4, 1), (5, 2)] {
            let mut e = elf.clone();
            e[i] = bad;
            let err = parse_elf(&e).unwrap_err();
            assert!(
                matches!(err, CodeObjectError::UnsupportedElf { .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let elf = build_elf(EM_AMDGPU, 0x3f, &["foo", "foo.kd"]);
        let b = build_bundle(&[
            ("host-x86_64-unknown-linux", &[]),
            ("hipv4-amdgcn-amd-amdhsa--gfx90a", &elf),
        ]);
        for n in 0..elf.len() {
            assert!(parse_elf(&elf[..n]).is_err(), "ELF prefix {n}");
            assert!(amdgpu_elf_objects(&elf[..n]).is_err(), "ELF prefix {n}");
        }
        for n in 0..b.len() {
            assert!(amdgpu_elf_objects(&b[..n]).is_err(), "bundle prefix {n}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let elf = build_elf(EM_AMDGPU, 0x3f, &["foo", "foo.kd"]);
        let b = build_bundle(&[("hipv4-amdgcn-amd-amdhsa--gfx90a", &elf)]);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            for base in [&elf, &b] {
                let mut m = base.clone();
                for _ in 0..1 + next() % 4 {
                    let i = (next() as usize) % m.len();
                    m[i] = if next() % 2 == 0 { next() as u8 } else { 0xff };
                }
                let _ = amdgpu_elf_objects(&m);
            }
        }
        let mut huge = BUNDLE_MAGIC.to_vec();
        huge.extend(u64::MAX.to_le_bytes());
        assert!(parse_offload_bundle(&huge).is_err());
        for v in [u64::MAX, u64::MAX - 3, 0] {
            huge.extend(v.to_le_bytes());
        }
        assert!(parse_offload_bundle(&huge).is_err());
    }
}
