//! Warp-level matrix multiply-accumulate: the instructions and where each
//! lane holds its elements.
//!
//! `D = A·B + C` for an `M×K` matrix A, a `K×N` matrix B and `M×N`
//! matrices C and D, computed by every lane of a warp together
//! ([`super::Collective::Mma`]). No lane holds a whole matrix: each holds a
//! *fragment*, a short vector whose element `i` is the matrix element at
//! [`Layout::at`]`(lane, i)`. The layouts are the vendors' documented
//! ones:
//!
//! - AMD (wave64, gfx90a and gfx940): `v_mfma_f32_32x32x8f16`,
//!   `v_mfma_f32_16x16x16f16` and the bf16 forms `..._32x32x8bf16_1k`,
//!   `..._16x16x16bf16_1k`, as in AMD's matrix instruction calculator and
//!   CK's warp-GEMM attributes. For 32×32×8, lane `l` holds
//!   `A[l % 32][4·(l/32) + i]`, `B[4·(l/32) + i][l % 32]` and
//!   `C[8j + 4·(l/32) + i][l % 32]` (element `4j + i`).
//! - NVIDIA (warp 32, sm_80 and sm_90):
//!   `mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}`, as in the PTX ISA's
//!   "Matrix Fragments for mma.m16n8k16 with floating point type" (with
//!   `g = l / 4`, `t = l % 4`: A's rows `g` and `g + 8`, columns `2t`,
//!   `2t + 1` and 8 more; B's rows `2t`, `2t + 1` and 8 more, column `g`;
//!   C's rows `g`, `g + 8`, columns `2t`, `2t + 1`).
//!
//! Every layout here has the form
//! `row = (lane / div) % modulo · mul + offset[i]` (and likewise the
//! column), which is what [`Axis`] holds. A and B are f16 or bf16, C and D
//! f32. What the CPU backend computes (and what the kernels are proven
//! with) is each element's `C[m][n]` followed by one fused multiply-add per
//! `k` in increasing order, in f32, of the exact inputs: products of f16
//! or bf16 values are exact in f32, so only the sums round. A GPU's matrix
//! unit sums in its own order and precision (on an H200 D differs from
//! this by at most one f32 rounding of the sum's magnitude; BENCHMARKS.md).

use std::fmt;

use super::{Expr, Scalar};
use crate::target::Arch;

/// A warp-level matrix multiply-accumulate instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MmaInstr {
    /// `v_mfma_f32_32x32x8f16` (wave64; gfx90a, gfx940).
    Mfma32x32x8F16,
    /// `v_mfma_f32_32x32x8bf16_1k` (wave64; gfx90a, gfx940).
    Mfma32x32x8Bf16,
    /// `v_mfma_f32_16x16x16f16` (wave64; gfx90a, gfx940).
    Mfma16x16x16F16,
    /// `v_mfma_f32_16x16x16bf16_1k` (wave64; gfx90a, gfx940).
    Mfma16x16x16Bf16,
    /// `mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32` (warp 32; sm_80, sm_90).
    Mma16x8x16F16,
    /// `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32` (warp 32; sm_80, sm_90).
    Mma16x8x16Bf16,
}

/// One of an instruction's three matrices (D has C's layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operand {
    /// The `M×K` left operand.
    A,
    /// The `K×N` right operand.
    B,
    /// The `M×N` accumulator (and result).
    C,
}

/// One coordinate of a fragment element:
/// `(lane / div) % modulo · mul + offset[i]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Axis {
    /// Divides the lane first.
    pub div: u32,
    /// Then the remainder by this.
    pub modulo: u32,
    /// Then a multiplier.
    pub mul: u32,
    /// Plus the element's own offset, per element.
    pub offset: &'static [u32],
}

impl Axis {
    /// The coordinate of element `i` of `lane`'s fragment.
    pub const fn at(&self, lane: u32, i: u32) -> u32 {
        (lane / self.div) % self.modulo * self.mul + self.offset[i as usize]
    }

    /// The lane's part, `(lane / div) % modulo · mul`, as an i32 expression
    /// of `lane`.
    pub fn lane_part(&self, lane: Expr) -> Expr {
        let mut e = lane;
        if self.div != 1 {
            e = e / Expr::i32(self.div as i32);
        }
        e = e % Expr::i32(self.modulo as i32);
        if self.mul != 1 {
            e = e * Expr::i32(self.mul as i32);
        }
        e
    }
}

/// Where each element of a lane's fragment sits in its matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The row.
    pub row: Axis,
    /// The column.
    pub col: Axis,
}

impl Layout {
    /// `(row, column)` of element `i` of `lane`'s fragment.
    pub const fn at(&self, lane: u32, i: u32) -> (u32, u32) {
        (self.row.at(lane, i), self.col.at(lane, i))
    }
}

const fn axis(div: u32, modulo: u32, mul: u32, offset: &'static [u32]) -> Axis {
    Axis {
        div,
        modulo,
        mul,
        offset,
    }
}

const Z4: &[u32] = &[0; 4];
const Z16: &[u32] = &[0; 16];
const I4: &[u32] = &[0, 1, 2, 3];

impl MmaInstr {
    /// Every instruction.
    pub const ALL: [MmaInstr; 6] = [
        MmaInstr::Mfma32x32x8F16,
        MmaInstr::Mfma32x32x8Bf16,
        MmaInstr::Mfma16x16x16F16,
        MmaInstr::Mfma16x16x16Bf16,
        MmaInstr::Mma16x8x16F16,
        MmaInstr::Mma16x8x16Bf16,
    ];

    /// `(M, N, K)`.
    pub const fn shape(self) -> (u32, u32, u32) {
        match self {
            MmaInstr::Mfma32x32x8F16 | MmaInstr::Mfma32x32x8Bf16 => (32, 32, 8),
            MmaInstr::Mfma16x16x16F16 | MmaInstr::Mfma16x16x16Bf16 => (16, 16, 16),
            MmaInstr::Mma16x8x16F16 | MmaInstr::Mma16x8x16Bf16 => (16, 8, 16),
        }
    }

    /// The element type of A and B (C and D are f32).
    pub const fn input(self) -> Scalar {
        match self {
            MmaInstr::Mfma32x32x8F16 | MmaInstr::Mfma16x16x16F16 | MmaInstr::Mma16x8x16F16 => {
                Scalar::F16
            }
            _ => Scalar::BF16,
        }
    }

    /// The warp size the instruction is defined for.
    pub const fn warp_size(self) -> u32 {
        match self {
            MmaInstr::Mma16x8x16F16 | MmaInstr::Mma16x8x16Bf16 => 32,
            _ => 64,
        }
    }

    /// Whether `arch` has the instruction.
    pub const fn available_on(self, arch: Arch) -> bool {
        match self {
            MmaInstr::Mma16x8x16F16 | MmaInstr::Mma16x8x16Bf16 => {
                matches!(arch, Arch::Sm80 | Arch::Sm90)
            }
            _ => matches!(arch, Arch::Gfx90a | Arch::Gfx940),
        }
    }

    /// Elements of `op` each lane holds.
    pub const fn lanes(self, op: Operand) -> u8 {
        let (m, n, k) = self.shape();
        let elems = match op {
            Operand::A => m * k,
            Operand::B => k * n,
            Operand::C => m * n,
        };
        (elems / self.warp_size()) as u8
    }

    /// Where each lane holds its elements of `op`.
    pub const fn layout(self, op: Operand) -> Layout {
        const C32: &[u32] = &[0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27];
        match (self, op) {
            (MmaInstr::Mfma32x32x8F16 | MmaInstr::Mfma32x32x8Bf16, op) => match op {
                Operand::A => Layout {
                    row: axis(1, 32, 1, Z4),
                    col: axis(32, 2, 4, I4),
                },
                Operand::B => Layout {
                    row: axis(32, 2, 4, I4),
                    col: axis(1, 32, 1, Z4),
                },
                Operand::C => Layout {
                    row: axis(32, 2, 4, C32),
                    col: axis(1, 32, 1, Z16),
                },
            },
            (MmaInstr::Mfma16x16x16F16 | MmaInstr::Mfma16x16x16Bf16, op) => match op {
                Operand::A => Layout {
                    row: axis(1, 16, 1, Z4),
                    col: axis(16, 4, 4, I4),
                },
                Operand::B | Operand::C => Layout {
                    row: axis(16, 4, 4, I4),
                    col: axis(1, 16, 1, Z4),
                },
            },
            (MmaInstr::Mma16x8x16F16 | MmaInstr::Mma16x8x16Bf16, op) => match op {
                Operand::A => Layout {
                    row: axis(4, 8, 1, &[0, 0, 8, 8, 0, 0, 8, 8]),
                    col: axis(1, 4, 2, &[0, 1, 0, 1, 8, 9, 8, 9]),
                },
                Operand::B => Layout {
                    row: axis(1, 4, 2, &[0, 1, 8, 9]),
                    col: axis(4, 8, 1, Z4),
                },
                Operand::C => Layout {
                    row: axis(4, 8, 1, &[0, 0, 8, 8]),
                    col: axis(1, 4, 2, &[0, 1, 0, 1]),
                },
            },
        }
    }

    /// The instruction as its ISA names it.
    pub const fn mnemonic(self) -> &'static str {
        match self {
            MmaInstr::Mfma32x32x8F16 => "v_mfma_f32_32x32x8f16",
            MmaInstr::Mfma32x32x8Bf16 => "v_mfma_f32_32x32x8bf16_1k",
            MmaInstr::Mfma16x16x16F16 => "v_mfma_f32_16x16x16f16",
            MmaInstr::Mfma16x16x16Bf16 => "v_mfma_f32_16x16x16bf16_1k",
            MmaInstr::Mma16x8x16F16 => "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
            MmaInstr::Mma16x8x16Bf16 => "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
        }
    }

    /// The helper header's function that issues it.
    pub const fn helper(self) -> &'static str {
        match self {
            MmaInstr::Mfma32x32x8F16 => "af_mfma_f32_32x32x8f16",
            MmaInstr::Mfma32x32x8Bf16 => "af_mfma_f32_32x32x8bf16_1k",
            MmaInstr::Mfma16x16x16F16 => "af_mfma_f32_16x16x16f16",
            MmaInstr::Mfma16x16x16Bf16 => "af_mfma_f32_16x16x16bf16_1k",
            MmaInstr::Mma16x8x16F16 => "af_mma_m16n8k16_f16",
            MmaInstr::Mma16x8x16Bf16 => "af_mma_m16n8k16_bf16",
        }
    }

    /// The instruction the matrix-core kernels use on `arch` for inputs of
    /// `input` (f16 or bf16), if the arch has one: `mma.sync` m16n8k16 on
    /// NVIDIA, MFMA 16×16×16 on CDNA.
    pub const fn for_kernels(arch: Arch, input: Scalar) -> Option<MmaInstr> {
        match (arch, input) {
            (Arch::Sm80 | Arch::Sm90, Scalar::F16) => Some(MmaInstr::Mma16x8x16F16),
            (Arch::Sm80 | Arch::Sm90, Scalar::BF16) => Some(MmaInstr::Mma16x8x16Bf16),
            (Arch::Gfx90a | Arch::Gfx940, Scalar::F16) => Some(MmaInstr::Mfma16x16x16F16),
            (Arch::Gfx90a | Arch::Gfx940, Scalar::BF16) => Some(MmaInstr::Mfma16x16x16Bf16),
            _ => None,
        }
    }
}

/// Where `ldmatrix` (an 8×8 matrix `i` of a `.x1/.x2/.x4` load, see
/// [`super::Collective::LoadMatrix`]) puts `(row, column)` of matrix
/// `i`'s element for element `j` (< 2·count) of lane `t`'s result:
/// `j = 2i + e` holds `M_i[t/4][2(t%4) + e]`, or, transposed,
/// `M_i[2(t%4) + e][t/4]` (PTX ISA, "Warp-level matrix load instruction:
/// ldmatrix"). Returns `(i, row, column)`.
pub const fn ldmatrix_at(t: u32, j: u32, trans: bool) -> (u32, u32, u32) {
    let (i, e) = (j / 2, j % 2);
    let (a, b) = (t / 4, 2 * (t % 4) + e);
    if trans {
        (i, b, a)
    } else {
        (i, a, b)
    }
}

impl fmt::Display for MmaInstr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.mnemonic())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every layout puts each element of each matrix in exactly one
    /// (lane, element) place.
    #[test]
    fn layouts_cover_each_matrix_once() {
        for instr in MmaInstr::ALL {
            let (m, n, k) = instr.shape();
            for (op, rows, cols) in [(Operand::A, m, k), (Operand::B, k, n), (Operand::C, m, n)] {
                let layout = instr.layout(op);
                let lanes = instr.lanes(op) as u32;
                assert_eq!(layout.row.offset.len() as u32, lanes, "{instr} {op:?}");
                let mut seen = vec![0u32; (rows * cols) as usize];
                for lane in 0..instr.warp_size() {
                    for i in 0..lanes {
                        let (r, c) = layout.at(lane, i);
                        assert!(r < rows && c < cols, "{instr} {op:?} lane {lane} elem {i}");
                        seen[(r * cols + c) as usize] += 1;
                    }
                }
                assert!(seen.iter().all(|&s| s == 1), "{instr} {op:?}");
            }
        }
    }
}
