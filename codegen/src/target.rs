//! GPU targets: the properties a kernel reads (warp size, shared-memory limit).
//!
//! Nothing in codegen hard-codes a warp size: kernels ask their [`Target`].
//! AMD archs compile with hipcc, NVIDIA archs with nvcc, from the same
//! printed text (the helper header has a branch per vendor).

use std::fmt;

/// A GPU architecture attnforge compiles for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    /// AMD CDNA2 (MI200): wave64, 64 KiB LDS.
    Gfx90a,
    /// AMD CDNA3 (MI300, early target id): wave64, 64 KiB LDS.
    Gfx940,
    /// AMD RDNA2 (RX 6000): wave32, 64 KiB LDS.
    Gfx1030,
    /// NVIDIA Ampere (A100): warp 32, 48 KiB of static shared memory per block.
    Sm80,
    /// NVIDIA Hopper (H100, H200): warp 32, 48 KiB of static shared memory per block.
    Sm90,
    /// The host CPU, for the CPU backend only: a warp of one thread, so a
    /// kernel generated for it needs no shuffles (not a HIP target).
    Host,
}

/// Who makes an arch's GPUs, and so which compiler builds for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Vendor {
    /// AMD: HIP, compiled by hipcc (or hiprtc) into AMDGPU code objects.
    Amd,
    /// NVIDIA: CUDA, compiled by nvcc (or NVRTC) into cubins.
    Nvidia,
}

impl Vendor {
    /// The compiler that builds this vendor's code objects at build time.
    pub const fn compiler(self) -> &'static str {
        match self {
            Vendor::Amd => "hipcc",
            Vendor::Nvidia => "nvcc",
        }
    }
}

impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Vendor::Amd => "AMD",
            Vendor::Nvidia => "NVIDIA",
        })
    }
}

impl Arch {
    /// Every GPU arch: the AMD ones, then the NVIDIA ones.
    pub const ALL: [Arch; 5] = [
        Arch::Gfx90a,
        Arch::Gfx940,
        Arch::Gfx1030,
        Arch::Sm80,
        Arch::Sm90,
    ];

    /// The AMD archs (hipcc).
    pub const AMD: [Arch; 3] = [Arch::Gfx90a, Arch::Gfx940, Arch::Gfx1030];

    /// The NVIDIA archs (nvcc).
    pub const NVIDIA: [Arch; 2] = [Arch::Sm80, Arch::Sm90];

    /// The name hipcc's `--offload-arch`, nvcc's `-arch` and the runtimes use.
    pub const fn name(self) -> &'static str {
        match self {
            Arch::Gfx90a => "gfx90a",
            Arch::Gfx940 => "gfx940",
            Arch::Gfx1030 => "gfx1030",
            Arch::Sm80 => "sm_80",
            Arch::Sm90 => "sm_90",
            Arch::Host => "host",
        }
    }

    /// The GPU vendor (`None` for the host).
    pub const fn vendor(self) -> Option<Vendor> {
        match self {
            Arch::Gfx90a | Arch::Gfx940 | Arch::Gfx1030 => Some(Vendor::Amd),
            Arch::Sm80 | Arch::Sm90 => Some(Vendor::Nvidia),
            Arch::Host => None,
        }
    }

    /// The NVIDIA arch of a compute capability (major, minor): the newest
    /// attnforge builds for that the device runs (an sm_90 cubin runs on
    /// 9.x, an sm_80 one on 8.x); `None` below 8.0 or for another major.
    pub const fn from_compute_capability(major: i32, minor: i32) -> Option<Arch> {
        let _ = minor;
        match major {
            8 => Some(Arch::Sm80),
            9 => Some(Arch::Sm90),
            _ => None,
        }
    }

    /// Parses an arch name; a device's full name such as `gfx90a:sramecc+:xnack-`
    /// matches on the part before the first `:`.
    pub fn from_name(name: &str) -> Option<Arch> {
        let base = name.split(':').next().unwrap_or(name);
        Arch::ALL.into_iter().find(|a| a.name() == base)
    }

    /// The target with this arch's default properties.
    pub const fn target(self) -> Target {
        match self {
            Arch::Gfx90a | Arch::Gfx940 => Target {
                arch: self,
                warp_size: 64,
                shared_mem_bytes: 64 * 1024,
            },
            Arch::Gfx1030 => Target {
                arch: self,
                warp_size: 32,
                shared_mem_bytes: 64 * 1024,
            },
            // Static `__shared__` arrays are limited to 48 KiB per block on
            // every NVIDIA arch (more needs dynamic shared memory and an
            // opt-in attribute per kernel).
            Arch::Sm80 | Arch::Sm90 => Target {
                arch: self,
                warp_size: 32,
                shared_mem_bytes: 48 * 1024,
            },
            Arch::Host => Target {
                arch: self,
                warp_size: 1,
                shared_mem_bytes: 64 * 1024,
            },
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a kernel may assume about the machine it runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// The architecture.
    pub arch: Arch,
    /// Threads per warp (wavefront): 64 on CDNA, 32 on RDNA and NVIDIA.
    pub warp_size: u32,
    /// Shared memory (LDS) available to one block, in bytes.
    pub shared_mem_bytes: u32,
}

impl Target {
    /// Bytes of local arrays (per-thread registers) one thread may hold:
    /// 2048 32-bit registers' worth on a GPU (the compiler's unrolled
    /// code must keep them in VGPRs; the code-object tests check for
    /// spills), a generous stack frame on the host.
    pub const fn local_bytes(&self) -> u64 {
        match self.arch {
            Arch::Host => 1 << 20,
            _ => 2048 * 4,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.arch.vendor() {
            Some(Vendor::Nvidia) => write!(f, "{} (warp {})", self.arch, self.warp_size),
            _ => write!(f, "{} (wave{})", self.arch, self.warp_size),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names_round_trip() {
        for a in Arch::ALL {
            assert_eq!(Arch::from_name(a.name()), Some(a));
        }
        assert_eq!(
            Arch::from_name("gfx90a:sramecc+:xnack-"),
            Some(Arch::Gfx90a)
        );
        assert_eq!(Arch::from_name("gfx942"), None);
        assert_eq!(Arch::from_name("sm_90"), Some(Arch::Sm90));
        assert_eq!(Arch::Sm80.target().warp_size, 32);
        assert_eq!(Arch::from_compute_capability(9, 0), Some(Arch::Sm90));
        assert_eq!(Arch::from_compute_capability(8, 6), Some(Arch::Sm80));
        assert_eq!(Arch::from_compute_capability(7, 5), None);
        for a in Arch::AMD {
            assert_eq!(a.vendor(), Some(Vendor::Amd));
        }
        for a in Arch::NVIDIA {
            assert_eq!(a.vendor(), Some(Vendor::Nvidia));
        }
        assert_eq!(Arch::Gfx1030.target().warp_size, 32);
        assert_eq!(Arch::Gfx940.target().warp_size, 64);
    }
}
