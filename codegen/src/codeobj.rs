//! Reading AMDGPU code objects produced by `hipcc --genco`.
//!
//! hipcc writes either a clang offload bundle (the default) or, with
//! `--no-gpu-bundle-output`, a bare AMDGPU ELF. This module unpacks both, so
//! that a code object can be checked (right target, expected kernels present)
//! before it is handed to the HIP module loader, and reads every kernel's
//! registers, LDS and scratch from the AMDGPU metadata note, from which
//! [`occupancy`] gives the waves per SIMD. It only reads: malformed input
//! gives an error, never a panic.
//!
//! Two crates do the parsing that has a maintained implementation:
//! - the ELF structure (header, section table, symbol tables, notes) is read
//!   with `object`, the reader under the standard library's own backtraces,
//!   which bounds-checks every offset and count; with only its `read_core`
//!   and `elf` features it brings in nothing but `memchr`;
//! - the metadata note is MessagePack, decoded with `rmpv`, which limits the
//!   nesting depth and never preallocates from a length read from the input.
//!
//! No crate reads clang offload bundles, so that reader is written here.

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

use object::elf::{FileHeader64, NoteType, SHT_DYNSYM, SHT_SYMTAB};
use object::read::elf::{FileHeader as _, SectionHeader as _};
use object::LittleEndian;
use rmpv::ValueRef;
use thiserror::Error;

/// ELF `e_machine` value for AMD GPUs.
pub const EM_AMDGPU: u16 = 224;

const BUNDLE_MAGIC: &[u8; 24] = b"__CLANG_OFFLOAD_BUNDLE__";
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// The note (name "AMDGPU") holding code object v3+ metadata as MessagePack.
const NT_AMDGPU_METADATA: NoteType = NoteType(32);
/// The metadata is a map of arrays of maps of arrays (kernel arguments) of
/// maps: deeper than this is not metadata.
const METADATA_MAX_DEPTH: usize = 16;

/// Why a code object could not be read.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CodeObjectError {
    /// A field or region of a bundle lies (partly) past the end of the input.
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
    /// A field of a bundle holds a value that makes no sense.
    #[error("malformed {what} at offset {offset}")]
    Malformed {
        /// What is wrong.
        what: &'static str,
        /// Where the offending field or data starts.
        offset: usize,
    },
    /// The ELF structure is damaged: a header, table or note is out of
    /// bounds or inconsistent.
    #[error("malformed ELF {what}: {reason}")]
    Elf {
        /// The part being read.
        what: &'static str,
        /// What the ELF reader found wrong.
        reason: String,
    },
    /// The AMDGPU metadata note is not the metadata the code object ABI
    /// describes (a missing or mistyped kernel field, or not MessagePack).
    #[error("malformed AMDGPU metadata: {reason}")]
    Metadata {
        /// What is wrong.
        reason: String,
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

/// One kernel's resources, from the code object's metadata note (code
/// object v3 to v5: `amdhsa.kernels`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelResources {
    /// The kernel's name (`.name`), its function symbol.
    pub name: String,
    /// Its kernel descriptor's symbol (`.symbol`, `name.kd`).
    pub symbol: String,
    /// Vector registers (`.vgpr_count`). On gfx90a and gfx940 this is the
    /// unified file's count: the architectural VGPRs rounded up to 4, plus
    /// the AGPRs (when there are any), which is what occupancy depends on.
    pub vgprs: u32,
    /// Accumulation registers (`.agpr_count`; 0 where absent).
    pub agprs: u32,
    /// Scalar registers (`.sgpr_count`), VCC and the other reserved ones
    /// included.
    pub sgprs: u32,
    /// Vector register spills (`.vgpr_spill_count`; 0 where absent).
    pub vgpr_spills: u32,
    /// Scalar register spills (`.sgpr_spill_count`; 0 where absent).
    pub sgpr_spills: u32,
    /// Static LDS per workgroup in bytes (`.group_segment_fixed_size`).
    pub lds_bytes: u32,
    /// Static scratch per lane in bytes (`.private_segment_fixed_size`).
    pub scratch_bytes: u32,
    /// Lanes per wave (`.wavefront_size`): 64, or 32 on gfx10+ in wave32.
    pub wavefront_size: u32,
    /// The largest workgroup it may be launched with
    /// (`.max_flat_workgroup_size`, `__launch_bounds__`).
    pub max_flat_workgroup_size: u32,
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
    /// Every kernel of the metadata note, in its order.
    resources: Vec<KernelResources>,
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

    /// Every kernel's resources, from the metadata note (empty without one).
    pub fn resources(&self) -> &[KernelResources] {
        &self.resources
    }

    /// The resources of the kernel named `name`.
    pub fn kernel_resources(&self, name: &str) -> Option<&KernelResources> {
        self.resources.iter().find(|k| k.name == name)
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

/// An `object` error, as ours, naming the part being read.
fn elf_error(what: &'static str) -> impl Fn(object::read::Error) -> CodeObjectError {
    move |e| CodeObjectError::Elf {
        what,
        reason: e.to_string(),
    }
}

/// Parses an ELF64 little-endian file: machine, flags, all symbol names, and
/// the kernels of its AMDGPU metadata note.
pub fn parse_elf(bytes: &[u8]) -> Result<ElfCodeObject, CodeObjectError> {
    if !bytes.starts_with(ELF_MAGIC) {
        return Err(CodeObjectError::BadMagic);
    }
    // Said here, as the reason to give, before `object` refuses them.
    let unsupported = |reason| Err(CodeObjectError::UnsupportedElf { reason });
    match region(bytes, 0, 6, "ELF identification")? {
        [.., c, _] if *c != 2 => return unsupported("not ELF64 (EI_CLASS != 2)"),
        [.., d] if *d != 1 => return unsupported("not little-endian (EI_DATA != 1)"),
        _ => {}
    }
    let header = FileHeader64::<LittleEndian>::parse(bytes).map_err(elf_error("header"))?;
    let endian = header.endian().map_err(elf_error("header"))?;
    let sections = header
        .sections(endian, bytes)
        .map_err(elf_error("section headers"))?;
    let mut symbols = BTreeSet::new();
    for kind in [SHT_SYMTAB, SHT_DYNSYM] {
        let table = sections
            .symbols(endian, bytes, kind)
            .map_err(elf_error("symbol table"))?;
        for sym in table.iter() {
            let name = table
                .symbol_name(endian, sym)
                .map_err(elf_error("symbol name"))?;
            let name = std::str::from_utf8(name).map_err(|_| CodeObjectError::Elf {
                what: "symbol name",
                reason: "not UTF-8".into(),
            })?;
            if !name.is_empty() {
                symbols.insert(name.to_owned());
            }
        }
    }
    let mut resources = Vec::new();
    for section in sections.iter() {
        let notes = section.notes(endian, bytes).map_err(elf_error("notes"))?;
        let Some(mut notes) = notes else { continue };
        while let Some(note) = notes.next().map_err(elf_error("note"))? {
            if note.name() == b"AMDGPU" && note.n_type(endian) == NT_AMDGPU_METADATA {
                resources.extend(metadata_kernels(note.desc())?);
            }
        }
    }
    Ok(ElfCodeObject {
        machine: header.e_machine(endian).0,
        flags: header.e_flags(endian).0,
        symbols: symbols.into_iter().collect(),
        resources,
    })
}

fn bad_metadata(reason: String) -> CodeObjectError {
    CodeObjectError::Metadata { reason }
}

/// A MessagePack string's text (`None`: not a string, or not UTF-8).
fn text<'v>(v: &'v ValueRef<'_>) -> Option<&'v str> {
    match v {
        ValueRef::String(s) => s.as_str(),
        _ => None,
    }
}

/// The value of `key` in a MessagePack map (`None`: not a map, or no such key).
fn lookup<'v, 'a>(map: &'v ValueRef<'a>, key: &str) -> Option<&'v ValueRef<'a>> {
    match map {
        ValueRef::Map(pairs) => pairs
            .iter()
            .find(|(k, _)| text(k) == Some(key))
            .map(|(_, v)| v),
        _ => None,
    }
}

/// The kernels of a metadata note's MessagePack document.
fn metadata_kernels(desc: &[u8]) -> Result<Vec<KernelResources>, CodeObjectError> {
    let mut rd = desc;
    let root = rmpv::decode::read_value_ref_with_max_depth(&mut rd, METADATA_MAX_DEPTH)
        .map_err(|e| bad_metadata(format!("not MessagePack ({e})")))?;
    if !matches!(root, ValueRef::Map(_)) {
        return Err(bad_metadata("the document is not a map".into()));
    }
    let kernels = match lookup(&root, "amdhsa.kernels") {
        None => return Ok(Vec::new()),
        Some(ValueRef::Array(kernels)) => kernels,
        Some(_) => return Err(bad_metadata("amdhsa.kernels is not an array".into())),
    };
    kernels.iter().enumerate().map(kernel_entry).collect()
}

/// One `amdhsa.kernels` entry (the `i`th).
fn kernel_entry((i, k): (usize, &ValueRef<'_>)) -> Result<KernelResources, CodeObjectError> {
    let string = |key: &str| match lookup(k, key) {
        Some(v) => text(v)
            .map(str::to_owned)
            .ok_or_else(|| bad_metadata(format!("kernel {i}: {key} is not a UTF-8 string"))),
        None => Err(bad_metadata(format!("kernel {i}: no {key}"))),
    };
    let name = string(".name")?;
    let field = |key: &str| -> Result<Option<u32>, CodeObjectError> {
        let Some(v) = lookup(k, key) else {
            return Ok(None);
        };
        let n = v.as_u64().and_then(|n| u32::try_from(n).ok());
        n.map(Some)
            .ok_or_else(|| bad_metadata(format!("{name}: {key} is not a 32-bit unsigned integer")))
    };
    let required = |key: &str| field(key)?.ok_or_else(|| bad_metadata(format!("{name}: no {key}")));
    let optional = |key: &str| field(key).map(Option::unwrap_or_default);
    Ok(KernelResources {
        symbol: string(".symbol")?,
        vgprs: required(".vgpr_count")?,
        agprs: optional(".agpr_count")?,
        sgprs: required(".sgpr_count")?,
        vgpr_spills: optional(".vgpr_spill_count")?,
        sgpr_spills: optional(".sgpr_spill_count")?,
        lds_bytes: required(".group_segment_fixed_size")?,
        scratch_bytes: required(".private_segment_fixed_size")?,
        wavefront_size: required(".wavefront_size")?,
        max_flat_workgroup_size: required(".max_flat_workgroup_size")?,
        name,
    })
}

/// What bounds the waves a SIMD holds, for one arch and wave size.
struct Limits {
    /// Wave slots per SIMD.
    max_waves: u32,
    /// SIMDs sharing a workgroup's LDS and barrier (a CU; a WGP on gfx10+).
    simds: u32,
    /// LDS those SIMDs share, in bytes.
    lds: u32,
    /// The most LDS one workgroup may allocate.
    lds_per_workgroup: u32,
    /// Workgroups with more than one wave each need a barrier; this many fit.
    barriers: u32,
    /// VGPRs per lane in one SIMD's register file.
    vgpr_file: u32,
    /// VGPRs are allocated in multiples of this.
    vgpr_granule: u32,
    /// The most VGPRs one wave may address.
    max_vgprs: u32,
    /// Whether the SGPR file limits waves (gfx9: 800 SGPRs per SIMD).
    sgpr_limited: bool,
}

fn limits(arch: &str, wave: u32) -> Option<Limits> {
    Some(match (arch, wave) {
        // CDNA2/3: one 512-entry file per lane holds VGPRs and AGPRs
        // (allocated together, in granules of 8); 4 SIMDs of 8 wave slots
        // share a CU's 64 KiB LDS and its 16 barriers.
        ("gfx90a" | "gfx940", 64) => Limits {
            max_waves: 8,
            simds: 4,
            lds: 64 << 10,
            lds_per_workgroup: 64 << 10,
            barriers: 16,
            vgpr_file: 512,
            vgpr_granule: 8,
            max_vgprs: 512,
            sgpr_limited: true,
        },
        // RDNA2 in WGP mode (hipcc's default): 4 SIMDs of 16 wave slots
        // share the WGP's 128 KiB LDS (at most 64 KiB per workgroup) and its
        // 32 barriers; the register file holds 1024 VGPRs per lane in wave32,
        // allocated in granules of 16. (HIP has no wave64 on gfx10.)
        ("gfx1030", 32) => Limits {
            max_waves: 16,
            simds: 4,
            lds: 128 << 10,
            lds_per_workgroup: 64 << 10,
            barriers: 32,
            vgpr_file: 1024,
            vgpr_granule: 16,
            max_vgprs: 256,
            sgpr_limited: false,
        },
        _ => return None,
    })
}

/// Waves per SIMD that a kernel with resources `r` reaches on `arch`
/// (gfx90a, gfx940, or gfx1030 in wave32) when launched with workgroups of
/// `block_threads` threads: the least of what its VGPRs, its SGPRs (gfx9
/// only), its LDS with the workgroup count per CU, and the wave slots allow.
///
/// The rules are those of current LLVM's AMDGPU backend (`AMDGPUBaseInfo`'s
/// VGPR granules and register files, `getOccupancyWithLocalMemSize`): the
/// workgroups that fit in a CU (a WGP on gfx1030) bring their waves, spread
/// over its 4 SIMDs. hipcc's `-Rpass-analysis=kernel-resource-usage` remark
/// gives the same number except where LDS is the limit and the compiler is
/// as old as the LLVM 15 of Debian's ROCm 5.2 hipcc (the one the tests
/// compare with): it did not spread the LDS-bound waves over the SIMDs, nor
/// count a WGP's second 64 KiB, so it reports more (8 waves, not 4, for
/// 256-thread workgroups with 16 KiB of LDS each on gfx90a).
///
/// `None`: an arch or wave size outside those three, a workgroup that is
/// empty or larger than the kernel allows, or a kernel that cannot run
/// (more LDS or VGPRs than one workgroup or wave may have).
pub fn occupancy(arch: &str, r: &KernelResources, block_threads: u32) -> Option<u32> {
    let l = limits(arch, r.wavefront_size)?;
    if block_threads == 0 || block_threads > r.max_flat_workgroup_size.min(1024) {
        return None;
    }
    if r.lds_bytes > l.lds_per_workgroup || r.vgprs > l.max_vgprs {
        return None;
    }
    let vgprs = r.vgprs.max(1).next_multiple_of(l.vgpr_granule);
    let by_vgprs = l.vgpr_file / vgprs;
    let by_sgprs = match r.sgprs {
        _ if !l.sgpr_limited => l.max_waves,
        0..=80 => 10,
        81..=88 => 9,
        89..=100 => 8,
        _ => 7,
    };
    // Workgroups resident on one CU: wave slots, barriers, then LDS.
    let waves_per_group = block_threads.div_ceil(r.wavefront_size);
    let slots = l.max_waves * l.simds;
    let mut groups = match waves_per_group {
        1 => slots,
        n => (slots / n).min(l.barriers),
    };
    if let Some(fit) = l.lds.checked_div(r.lds_bytes) {
        groups = groups.min(fit);
    }
    let by_lds = (groups * waves_per_group).div_ceil(l.simds);
    let waves = l.max_waves.min(by_vgprs).min(by_sgprs).min(by_lds);
    (waves > 0).then_some(waves)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value;

    const SHT_NOTE: u64 = 7;
    const ELF64_HEADER_LEN: usize = 64;
    const ELF64_SHDR_LEN: usize = 64;
    const ELF64_SYM_LEN: usize = 24;

    /// Writes the low `n` bytes of `v` little-endian at `at`.
    fn put(f: &mut [u8], at: usize, v: u64, n: usize) {
        f[at..at + n].copy_from_slice(&v.to_le_bytes()[..n]);
    }

    /// An ELF note: name and descriptor sizes, type, then both padded to 4.
    fn note(name: &str, ty: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        let name = [name.as_bytes(), &[0]].concat();
        for v in [name.len() as u32, desc.len() as u32, ty] {
            n.extend(v.to_le_bytes());
        }
        for part in [&name[..], desc] {
            n.extend(part);
            n.resize(n.len().next_multiple_of(4), 0);
        }
        n
    }

    /// Builds an ELF64 LE file: null, .shstrtab, .strtab, .symtab (link 2),
    /// .note (holding `notes`), headers last.
    fn build_elf_with_notes(machine: u16, flags: u32, names: &[&str], notes: &[u8]) -> Vec<u8> {
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
        let shstr = b"\0.shstrtab\0.strtab\0.symtab\0.note\0";
        let secs = [
            (1, 3, &shstr[..], 0, 0),
            (11, 3, &strtab, 0, 0),
            (19, 2, &symtab, 2, 24),
            (27, SHT_NOTE, notes, 0, 0),
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
            put(&mut h, 48, 4, 8); // sh_addralign
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
        put(&mut f, 52, 64, 2); // e_ehsize
        put(&mut f, 58, 64, 2); // e_shentsize
        put(&mut f, 60, 5, 2); // e_shnum
        put(&mut f, 62, 1, 2); // e_shstrndx
        f
    }

    fn build_elf(machine: u16, flags: u32, names: &[&str]) -> Vec<u8> {
        build_elf_with_notes(machine, flags, names, &[])
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

    fn msgpack(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).unwrap();
        out
    }

    fn map(pairs: &[(&str, Value)]) -> Value {
        Value::Map(
            pairs
                .iter()
                .map(|(k, v)| (Value::from(*k), v.clone()))
                .collect(),
        )
    }

    /// A kernel's metadata as hipcc writes it (the fields read, and some not).
    fn kernel_metadata(name: &str, vgprs: u32, agprs: Option<u32>) -> Value {
        let mut fields = vec![
            (".name", Value::from(name)),
            (".symbol", Value::from(format!("{name}.kd"))),
            (".vgpr_count", Value::from(vgprs)),
            (".sgpr_count", Value::from(18)),
            (".vgpr_spill_count", Value::from(3)),
            (".sgpr_spill_count", Value::from(0)),
            (".group_segment_fixed_size", Value::from(16384)),
            (".private_segment_fixed_size", Value::from(40)),
            (".wavefront_size", Value::from(64)),
            (".max_flat_workgroup_size", Value::from(256)),
            (".language", Value::from("OpenCL C")),
            (
                ".args",
                Value::Array(vec![map(&[(".size", Value::from(8))])]),
            ),
        ];
        if let Some(a) = agprs {
            fields.push((".agpr_count", Value::from(a)));
        }
        map(&fields)
    }

    fn metadata_document(kernels: Vec<Value>) -> Vec<u8> {
        msgpack(&map(&[
            ("amdhsa.version", Value::Array(vec![1.into(), 2.into()])),
            ("amdhsa.kernels", Value::Array(kernels)),
            ("amdhsa.target", Value::from("amdgcn-amd-amdhsa--gfx90a")),
        ]))
    }

    fn resources(name: &str, vgprs: u32, agprs: u32) -> KernelResources {
        KernelResources {
            name: name.into(),
            symbol: format!("{name}.kd"),
            vgprs,
            agprs,
            sgprs: 18,
            vgpr_spills: 3,
            sgpr_spills: 0,
            lds_bytes: 16384,
            scratch_bytes: 40,
            wavefront_size: 64,
            max_flat_workgroup_size: 256,
        }
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
        assert!(obj.resources().is_empty());
        assert_eq!(amdgpu_elf_objects(&elf).unwrap(), vec![obj.clone()]);
        let mut dynsym = elf.clone();
        let shoff = dynsym.len() - 5 * ELF64_SHDR_LEN;
        put(&mut dynsym, shoff + 3 * ELF64_SHDR_LEN + 4, 11, 4); // SHT_DYNSYM
        assert_eq!(parse_elf(&dynsym), Ok(obj));
    }

    #[test]
    fn reads_kernel_resources_from_the_metadata_note() {
        let doc = metadata_document(vec![
            kernel_metadata("foo", 56, Some(16)),
            kernel_metadata("bar", 7, None),
        ]);
        let notes = [
            note("AMDGPU", 1, b"\x04\0\0\0"), // not the metadata: skipped
            note("GNU", 32, b"x"),            // another owner's type 32
            note("AMDGPU", 32, &doc),
        ]
        .concat();
        let elf = build_elf_with_notes(EM_AMDGPU, 0x3f, &["foo", "foo.kd"], &notes);
        let obj = parse_elf(&elf).unwrap();
        assert_eq!(
            obj.resources(),
            [resources("foo", 56, 16), resources("bar", 7, 0)]
        );
        assert_eq!(obj.kernel_resources("bar"), Some(&resources("bar", 7, 0)));
        assert_eq!(obj.kernel_resources("baz"), None);
        // Inside a bundle, at an odd offset, the same.
        let b = build_bundle(&[("hipv4-amdgcn-amd-amdhsa--gfx90a-x", &elf)]);
        assert_eq!(amdgpu_elf_objects(&b).unwrap(), vec![obj]);
    }

    #[test]
    fn bad_metadata_is_an_error() {
        let with = |desc: &[u8]| {
            let elf = build_elf_with_notes(EM_AMDGPU, 0x3f, &[], &note("AMDGPU", 32, desc));
            parse_elf(&elf)
        };
        let drop_field = |key: &str| {
            let Value::Map(mut m) = kernel_metadata("k", 8, None) else {
                unreachable!()
            };
            m.retain(|(k, _)| k.as_str() != Some(key));
            metadata_document(vec![Value::Map(m)])
        };
        let set_field = |key: &str, v: Value| {
            let Value::Map(mut m) = kernel_metadata("k", 8, None) else {
                unreachable!()
            };
            m.iter_mut()
                .filter(|(k, _)| k.as_str() == Some(key))
                .for_each(|(_, x)| *x = v.clone());
            metadata_document(vec![Value::Map(m)])
        };
        let mut nested = Value::from(0);
        for _ in 0..100 {
            nested = Value::Array(vec![nested]);
        }
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("not a map", msgpack(&Value::from(3))),
            (
                "kernels not an array",
                msgpack(&map(&[("amdhsa.kernels", 1.into())])),
            ),
            (
                "truncated",
                doc_prefix(&metadata_document(vec![kernel_metadata("k", 8, None)])),
            ),
            ("too deep", msgpack(&map(&[("amdhsa.kernels", nested)]))),
            ("no .name", drop_field(".name")),
            ("no .vgpr_count", drop_field(".vgpr_count")),
            ("no .wavefront_size", drop_field(".wavefront_size")),
            ("negative", set_field(".sgpr_count", Value::from(-1))),
            (
                "too large",
                set_field(".vgpr_count", Value::from(1u64 << 32)),
            ),
            (
                "a string",
                set_field(".group_segment_fixed_size", "16".into()),
            ),
            ("name not a string", set_field(".name", Value::from(1))),
            (
                "a map claiming 2^32 - 1 entries",
                vec![0xdf, 0xff, 0xff, 0xff, 0xff],
            ),
        ];
        for (what, desc) in cases {
            let err = with(&desc).unwrap_err();
            assert!(
                matches!(err, CodeObjectError::Metadata { .. }),
                "{what}: {err}"
            );
        }
        // Optional fields may be missing; a document without kernels has none.
        let ok = with(&drop_field(".vgpr_spill_count")).unwrap();
        assert_eq!(ok.resources()[0].vgpr_spills, 0);
        let ok = with(&msgpack(&map(&[("amdhsa.version", 1.into())]))).unwrap();
        assert!(ok.resources().is_empty());
    }

    /// All of a document but its last byte.
    fn doc_prefix(doc: &[u8]) -> Vec<u8> {
        doc[..doc.len() - 1].to_vec()
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
        let doc = metadata_document(vec![kernel_metadata("foo", 8, None)]);
        let notes = note("AMDGPU", 32, &doc);
        let elf = build_elf_with_notes(EM_AMDGPU, 0x3f, &["foo", "foo.kd"], &notes);
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
        let doc = metadata_document(vec![kernel_metadata("foo", 8, Some(4))]);
        let notes = note("AMDGPU", 32, &doc);
        let elf = build_elf_with_notes(EM_AMDGPU, 0x3f, &["foo", "foo.kd"], &notes);
        let b = build_bundle(&[("hipv4-amdgcn-amd-amdhsa--gfx90a", &elf)]);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut read = 0;
        for _ in 0..20_000 {
            for base in [&elf, &b] {
                let mut m = base.clone();
                for _ in 0..1 + next() % 4 {
                    let i = (next() as usize) % m.len();
                    m[i] = if next() % 2 == 0 { next() as u8 } else { 0xff };
                }
                if let Ok(objs) = amdgpu_elf_objects(&m) {
                    for o in objs {
                        for r in o.resources() {
                            let _ = occupancy("gfx90a", r, r.max_flat_workgroup_size);
                            read += 1;
                        }
                    }
                }
            }
        }
        assert!(read > 1000, "{read}");
        let mut huge = BUNDLE_MAGIC.to_vec();
        huge.extend(u64::MAX.to_le_bytes());
        assert!(parse_offload_bundle(&huge).is_err());
        for v in [u64::MAX, u64::MAX - 3, 0] {
            huge.extend(v.to_le_bytes());
        }
        assert!(parse_offload_bundle(&huge).is_err());
    }

    fn with(r: &KernelResources, f: impl FnOnce(&mut KernelResources)) -> KernelResources {
        let mut r = r.clone();
        f(&mut r);
        r
    }

    #[test]
    fn occupancy_by_registers() {
        let base = with(&resources("k", 1, 0), |r| r.lds_bytes = 0);
        let cdna = |vgprs| occupancy("gfx90a", &with(&base, |r| r.vgprs = vgprs), 256);
        // 512 per lane in granules of 8, at most 8 waves.
        for (vgprs, waves) in [
            (1, 8),
            (64, 8),
            (65, 7),
            (128, 4),
            (129, 3),
            (256, 2),
            (257, 1),
        ] {
            assert_eq!(cdna(vgprs), Some(waves), "{vgprs} VGPRs");
        }
        assert_eq!(cdna(512), Some(1));
        assert_eq!(cdna(513), None);
        assert_eq!(
            occupancy("gfx940", &with(&base, |r| r.vgprs = 193), 256),
            Some(2)
        );
        // gfx1030: wave32, 1024 per lane in granules of 16; no wave64.
        let rdna = |wave, vgprs| {
            let r = with(&base, |r| (r.wavefront_size, r.vgprs) = (wave, vgprs));
            occupancy("gfx1030", &r, 256)
        };
        for (vgprs, waves) in [(1, 16), (64, 16), (65, 12), (101, 9), (256, 4)] {
            assert_eq!(rdna(32, vgprs), Some(waves), "wave32, {vgprs} VGPRs");
        }
        assert_eq!(rdna(64, 32), None);
        assert_eq!(rdna(32, 257), None);
        // SGPRs limit gfx9 only.
        let sgprs = |arch, n| occupancy(arch, &with(&base, |r| r.sgprs = n), 256);
        assert_eq!(sgprs("gfx90a", 100), Some(8));
        assert_eq!(sgprs("gfx90a", 102), Some(7));
        let rdna_sgprs = with(&base, |r| (r.wavefront_size, r.sgprs) = (32, 106));
        assert_eq!(occupancy("gfx1030", &rdna_sgprs, 256), Some(16));
    }

    #[test]
    fn occupancy_by_lds_and_workgroups() {
        let base = resources("k", 8, 0);
        let at = |arch, wave, lds, threads| {
            let r = with(&base, |r| {
                (r.wavefront_size, r.lds_bytes, r.max_flat_workgroup_size) = (wave, lds, 1024)
            });
            occupancy(arch, &r, threads)
        };
        // gfx90a: 4 workgroups of 4 waves per CU are 4 waves per SIMD.
        assert_eq!(at("gfx90a", 64, 16384, 256), Some(4));
        assert_eq!(at("gfx90a", 64, 16385, 256), Some(3));
        assert_eq!(at("gfx90a", 64, 40000, 256), Some(1));
        assert_eq!(at("gfx90a", 64, 65536, 64), Some(1));
        assert_eq!(at("gfx90a", 64, 65537, 64), None);
        assert_eq!(at("gfx90a", 64, 4096, 256), Some(8));
        // Single-wave workgroups: 16 fit in LDS, 4 per SIMD.
        assert_eq!(at("gfx90a", 64, 4096, 64), Some(4));
        // Barriers: at most 16 multi-wave workgroups per CU.
        assert_eq!(at("gfx90a", 64, 0, 128), Some(8));
        assert_eq!(at("gfx90a", 64, 0, 1024), Some(8));
        // gfx1030 (WGP): 128 KiB for 4 SIMDs; 3 workgroups of 8 waves.
        assert_eq!(at("gfx1030", 32, 40000, 256), Some(6));
        assert_eq!(at("gfx1030", 32, 16384, 256), Some(16));
        assert_eq!(at("gfx1030", 32, 65536, 1024), Some(16));
        assert_eq!(at("gfx1030", 32, 65536, 64), Some(1));
        // Launches the kernel does not allow, and unknown archs.
        assert_eq!(at("gfx90a", 64, 0, 0), None);
        assert_eq!(at("gfx90a", 64, 0, 1025), None);
        assert_eq!(occupancy("gfx90a", &base, 257), None);
        assert_eq!(occupancy("gfx908", &base, 64), None);
        assert_eq!(
            occupancy("gfx90a", &with(&base, |r| r.wavefront_size = 32), 64),
            None
        );
    }
}
