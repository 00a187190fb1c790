//! GPU targets: the properties a kernel reads (warp size, shared-memory limit).
//!
//! Nothing in codegen hard-codes a warp size: kernels ask their [`Target`].

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
    /// The host CPU, for the CPU backend only: a warp of one thread, so a
    /// kernel generated for it needs no shuffles (not a HIP target).
    Host,
}

impl Arch {
    /// Every GPU arch hipcc compiles for.
    pub const ALL: [Arch; 3] = [Arch::Gfx90a, Arch::Gfx940, Arch::Gfx1030];

    /// The name hipcc's `--offload-arch` and the HIP runtime use.
    pub const fn name(self) -> &'static str {
        match self {
            Arch::Gfx90a => "gfx90a",
            Arch::Gfx940 => "gfx940",
            Arch::Gfx1030 => "gfx1030",
            Arch::Host => "host",
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
    /// Threads per warp (wavefront): 64 on CDNA, 32 on RDNA.
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
        write!(f, "{} (wave{})", self.arch, self.warp_size)
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
        assert_eq!(Arch::Gfx1030.target().warp_size, 32);
        assert_eq!(Arch::Gfx940.target().warp_size, 64);
    }
}
