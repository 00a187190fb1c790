//! NVIDIA cubins: which arch an ELF of machine `EM_CUDA` is for, and the
//! resources ptxas reports for each kernel it compiled (`-Xptxas -v`, kept
//! beside each cubin by the build helper), with the occupancy they allow.
//!
//! The AMD side of the same questions is [`crate::codeobj`], which reads
//! them from the code object's own metadata note.

use crate::codeobj::{parse_elf, CodeObjectError, ElfCodeObject};

/// ELF `e_machine` value for NVIDIA GPU code (cubins).
pub const EM_CUDA: u16 = 190;

/// A cubin's identity: its ELF fields, the arch its flags name, its
/// function symbols.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cubin {
    /// The ELF as [`parse_elf`] reads it.
    pub elf: ElfCodeObject,
    /// `EI_ABIVERSION` (7 before CUDA 12.8's layout of `e_flags`, 8 after).
    pub abi_version: u8,
    /// The SM version its flags name (80 for sm_80, 90 for sm_90).
    pub sm: u32,
}

impl Cubin {
    /// `sm_80`, `sm_90`, ...
    pub fn arch(&self) -> String {
        format!("sm_{}", self.sm)
    }

    /// Whether the cubin defines the function `name`.
    pub fn has_function(&self, name: &str) -> bool {
        self.elf
            .symbols
            .binary_search_by(|x| x.as_str().cmp(name))
            .is_ok()
    }
}

/// Reads a cubin: an ELF64 of machine `EM_CUDA`, its SM version from
/// `e_flags` (bits 8..16 from ELF ABI version 8 on, bits 0..8 before).
pub fn parse_cubin(bytes: &[u8]) -> Result<Cubin, CodeObjectError> {
    let elf = parse_elf(bytes)?;
    if elf.machine != EM_CUDA {
        return Err(CodeObjectError::UnsupportedElf {
            reason: "not a cubin (e_machine is not EM_CUDA, 190)",
        });
    }
    let abi_version = bytes[8];
    let sm = if abi_version >= 8 {
        (elf.flags >> 8) & 0xff
    } else {
        elf.flags & 0xff
    };
    Ok(Cubin {
        elf,
        abi_version,
        sm,
    })
}

/// What ptxas reports for one kernel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PtxasResources {
    /// The entry function.
    pub name: String,
    /// The arch it was compiled for (`sm_90`).
    pub arch: String,
    /// Registers per thread.
    pub registers: u32,
    /// Per-thread stack frame (local memory) in bytes.
    pub stack_bytes: u32,
    /// Bytes of spill stores.
    pub spill_stores: u32,
    /// Bytes of spill loads.
    pub spill_loads: u32,
    /// Static shared memory per block, in bytes.
    pub shared_bytes: u32,
    /// Named barriers used.
    pub barriers: u32,
}

/// Every kernel of a ptxas `-v` log, in its order. A line that does not
/// parse is skipped; a kernel without its "Used" line is not reported.
pub fn parse_ptxas_log(log: &str) -> Vec<PtxasResources> {
    let mut out: Vec<PtxasResources> = Vec::new();
    let mut current: Option<PtxasResources> = None;
    let number_before = |text: &str, unit: &str| -> Option<u32> {
        let i = text.find(unit)?;
        text[..i].split_whitespace().last()?.parse().ok()
    };
    for line in log.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("ptxas info    : Compiling entry function '") {
            if let Some(done) = current.take() {
                out.push(done);
            }
            let mut parts = rest.splitn(2, '\'');
            let name = parts.next().unwrap_or_default().to_string();
            let arch = parts
                .next()
                .and_then(|r| r.split('\'').nth(1))
                .unwrap_or_default()
                .to_string();
            current = Some(PtxasResources {
                name,
                arch,
                ..PtxasResources::default()
            });
        } else if let Some(r) = current.as_mut() {
            if line.contains("bytes stack frame") {
                r.stack_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
                r.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
                r.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
            } else if let Some(used) = line.strip_prefix("ptxas info    : Used ") {
                r.registers = number_before(used, "registers").unwrap_or(0);
                r.barriers = number_before(used, "barriers").unwrap_or(0);
                r.shared_bytes = number_before(used, "bytes smem").unwrap_or(0);
                if let Some(done) = current.take() {
                    out.push(done);
                }
            }
        }
    }
    out
}

/// Warps per SM an NVIDIA kernel can keep resident, by the limits of the
/// CUDA occupancy calculator for its arch: 64K registers per SM in 4
/// sub-partitions of 16K, allocated per warp in units of 256; at most 64
/// warps and 32 blocks per SM; shared memory per SM (164 KiB on sm_80,
/// 228 KiB on sm_90) allocated in 128-byte units, 1 KiB of it reserved per
/// block. `None` for an arch it does not know or a kernel that cannot run
/// (more than 255 registers, a block over 1024 threads, no block fits).
pub fn nvidia_occupancy(arch: &str, r: &PtxasResources, block_threads: u32) -> Option<u32> {
    let shared_per_sm: u32 = match arch {
        "sm_80" => 164 * 1024,
        "sm_90" => 228 * 1024,
        _ => return None,
    };
    if r.registers > 255 || block_threads == 0 || block_threads > 1024 {
        return None;
    }
    let warps_per_block = block_threads.div_ceil(32);
    // Registers are split over the SM's 4 sub-partitions (16K each), each
    // holding whole warps.
    let regs_per_warp = (r.registers.max(1) * 32).div_ceil(256) * 256;
    let by_regs = (16384 / regs_per_warp) * 4 / warps_per_block;
    let by_warps = 64 / warps_per_block;
    // Shared memory is allocated in 128-byte units, plus 1 KiB per block.
    let shared = r.shared_bytes.div_ceil(128) * 128 + 1024;
    let by_shared = shared_per_sm / shared;
    let blocks = by_regs.min(by_warps).min(by_shared).min(32);
    (blocks > 0).then_some(blocks * warps_per_block)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The shape of ptxas 13.0's output, as `nvcc -cubin -Xptxas -v` prints it.
    const LOG: &str = "ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'af_decode_x' for 'sm_90'
ptxas info    : Function properties for af_decode_x
    0 bytes stack frame, 12 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 95 registers, used 1 barriers, 8320 bytes smem
ptxas info    : Compile time = 107.630 ms
ptxas info    : Compiling entry function 'af_merge_y' for 'sm_80'
ptxas info    : Function properties for af_merge_y
    16 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers, 380 bytes cmem[0]
";

    #[test]
    fn ptxas_lines_become_resources() {
        let r = parse_ptxas_log(LOG);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            PtxasResources {
                name: "af_decode_x".into(),
                arch: "sm_90".into(),
                registers: 95,
                stack_bytes: 0,
                spill_stores: 12,
                spill_loads: 8,
                shared_bytes: 8320,
                barriers: 1,
            }
        );
        assert_eq!(
            (r[1].registers, r[1].stack_bytes, r[1].shared_bytes),
            (32, 16, 0)
        );
    }

    #[test]
    fn occupancy_follows_the_calculator() {
        // 95 registers -> 3072 per warp (96*32), 21 warps by registers:
        // 2 blocks of 8 warps; shared allows 27 blocks.
        let r = PtxasResources {
            registers: 95,
            shared_bytes: 8320,
            ..Default::default()
        };
        assert_eq!(nvidia_occupancy("sm_90", &r, 256), Some(16));
        // 32 registers, 64 threads: 32 blocks by the block limit, 2 warps each.
        let small = PtxasResources {
            registers: 32,
            ..Default::default()
        };
        assert_eq!(nvidia_occupancy("sm_80", &small, 64), Some(64));
        // 43008 bytes of shared memory on sm_80: 3 blocks of 4 warps.
        let big = PtxasResources {
            registers: 64,
            shared_bytes: 43008,
            ..Default::default()
        };
        assert_eq!(nvidia_occupancy("sm_80", &big, 128), Some(12));
        assert_eq!(nvidia_occupancy("sm_75", &big, 128), None);
        // 88 registers, 2-warp blocks: 5 warps per sub-partition by
        // registers (16384 / 2816), 20 per SM, 10 blocks (not 65536 / 2816
        // = 23 warps over the whole SM).
        let odd = PtxasResources {
            registers: 88,
            ..Default::default()
        };
        assert_eq!(nvidia_occupancy("sm_90", &odd, 64), Some(20));
        // A block that can never be resident.
        let huge = PtxasResources {
            registers: 255,
            ..Default::default()
        };
        assert_eq!(nvidia_occupancy("sm_90", &huge, 1024), None);
    }
}
