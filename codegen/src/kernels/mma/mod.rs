//! Attention on matrix cores: the pieces the matrix-core prefill and
//! grouped decode share.
//!
//! A warp owns 16 query rows (packed query heads and tokens) and, per KV
//! tile, computes the logits `S = Q·Kᵀ` and then `O += P·V` with one
//! matrix instruction per fragment. The two vendors' instructions put the
//! rows on different sides:
//!
//! ```text
//!                 S = Q·Kᵀ               O += P·V            accumulators
//! NVIDIA m16n8k16 A = Q,  B = Kᵀ         A = P,  B = V        rows of S, O
//! CDNA MFMA 16³   A = K,  B = Qᵀ         A = Vᵀ, B = Pᵀ       Sᵀ, Oᵀ
//! ```
//!
//! so [`Plan`] speaks of the *query side* (Q or P: 16 query rows by the
//! reduction index), the *KV side* (K or V: an outer index, KV token or
//! dimension, by the reduction index) and the *accumulator* (query row by
//! outer index), and maps each to the instruction's operand and layout. A
//! lane's accumulator elements of S become its query-side fragment of P
//! without leaving the lane (checked for every lane when a kernel is
//! built, [`Plan::regroup`]).
//!
//! Inputs are f16 or bf16 (the query dtype; an fp8 cache is dequantized to
//! it on the way into shared memory); logits, the online softmax and the
//! accumulators are f32, as in the SIMT kernels.

pub(super) mod decode;
pub(super) mod prefill;
mod tile;

use crate::ir::builder::KernelBuilder;
use crate::ir::mma::{Layout, MmaInstr, Operand};
use crate::ir::{Expr, Scalar};
use crate::spec::{AttentionSpec, DType};
use crate::target::Target;

/// Query rows per warp (the instructions' 16).
pub(crate) const WARP_ROWS: u32 = 16;

/// The matrix instruction an attention's kernels use on `target`, or
/// `None` where the SIMT kernels stay: an arch without matrix instructions
/// (gfx1030, the host), f32 queries (the instructions take f16 or bf16),
/// or a cache whose dtype is neither the queries' nor fp8 (fp8 is
/// dequantized to the query dtype; mixing f16 and bf16 would round one
/// to the other).
pub fn matrix_instr(spec: &AttentionSpec, target: Target) -> Option<MmaInstr> {
    let q = spec.query_dtype();
    let input = match q {
        DType::F16 => Scalar::F16,
        DType::BF16 => Scalar::BF16,
        _ => return None,
    };
    if spec.kv.dtype != q && !spec.kv.dtype.is_fp8() {
        return None;
    }
    let instr = MmaInstr::for_kernels(target.arch, input)?;
    (instr.warp_size() == target.warp_size).then_some(instr)
}

/// How an attention tile maps onto an instruction (see the module docs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    pub instr: MmaInstr,
    /// The accumulators hold Sᵀ and Oᵀ (query rows are their columns).
    pub transposed: bool,
    /// Outer indices (KV tokens of S, dimensions of O) per accumulator.
    pub outer: u32,
    /// The reduction per instruction (head dimensions, KV tokens).
    pub k: u32,
}

/// `(query row or outer index, reduction index)` of an element.
type Coord = (Expr, Expr);

impl Plan {
    pub fn new(instr: MmaInstr) -> Plan {
        let (m, n, k) = instr.shape();
        let transposed = instr.warp_size() == 64;
        let (rows, outer) = if transposed { (n, m) } else { (m, n) };
        assert_eq!(rows, WARP_ROWS, "{instr}: 16 query rows per warp");
        Plan {
            instr,
            transposed,
            outer,
            k,
        }
    }

    pub fn warp_size(&self) -> u32 {
        self.instr.warp_size()
    }

    fn layout(&self, op: Operand) -> Layout {
        self.instr.layout(op)
    }

    /// Lanes of the query-side, KV-side and accumulator fragments.
    pub fn lanes(&self) -> (u8, u8, u8) {
        let (q, kv) = if self.transposed {
            (Operand::B, Operand::A)
        } else {
            (Operand::A, Operand::B)
        };
        (
            self.instr.lanes(q),
            self.instr.lanes(kv),
            self.instr.lanes(Operand::C),
        )
    }

    /// The query-side operand's `(row, reduction)` for element `i` of `lane`.
    pub fn q_at(&self, lane: u32, i: u32) -> (u32, u32) {
        if self.transposed {
            let (k, row) = self.layout(Operand::B).at(lane, i);
            (row, k)
        } else {
            self.layout(Operand::A).at(lane, i)
        }
    }

    /// The KV-side operand's `(outer, reduction)` for element `i` of `lane`.
    pub fn kv_at(&self, lane: u32, i: u32) -> (u32, u32) {
        if self.transposed {
            self.layout(Operand::A).at(lane, i)
        } else {
            let (k, outer) = self.layout(Operand::B).at(lane, i);
            (outer, k)
        }
    }

    /// The accumulator's `(row, outer)` for element `e` of `lane`.
    pub fn acc_at(&self, lane: u32, e: u32) -> (u32, u32) {
        let (r, c) = self.layout(Operand::C).at(lane, e);
        if self.transposed {
            (c, r)
        } else {
            (r, c)
        }
    }

    /// [`Plan::q_at`] as expressions of `lane`.
    pub fn q_expr(&self, lane: &Expr, i: u32) -> Coord {
        let (op, swap) = match self.transposed {
            true => (Operand::B, true),
            false => (Operand::A, false),
        };
        coord(self.layout(op), lane, i, swap)
    }

    /// [`Plan::kv_at`] as expressions of `lane`.
    pub fn kv_expr(&self, lane: &Expr, i: u32) -> Coord {
        let (op, swap) = match self.transposed {
            true => (Operand::A, false),
            false => (Operand::B, true),
        };
        coord(self.layout(op), lane, i, swap)
    }

    /// [`Plan::acc_at`] as expressions of `lane`.
    pub fn acc_expr(&self, lane: &Expr, e: u32) -> Coord {
        coord(self.layout(Operand::C), lane, e, self.transposed)
    }

    /// `acc + qside·kvside` as the instruction computes it.
    pub fn mma(&self, b: &mut KernelBuilder, name: &str, q: Expr, kv: Expr, acc: Expr) -> Expr {
        if self.transposed {
            b.mma(name, self.instr, kv, q, acc)
        } else {
            b.mma(name, self.instr, q, kv, acc)
        }
    }

    /// Each accumulator element's row slot (the lane's distinct query
    /// rows, in order) and the number of slots.
    pub fn row_slots(&self) -> (Vec<u32>, u32) {
        let (_, _, acc) = self.lanes();
        let mut rows: Vec<u32> = Vec::new();
        let slots = (0..acc as u32)
            .map(|e| {
                let r = self.acc_at(0, e).0;
                match rows.iter().position(|&x| x == r) {
                    Some(s) => s as u32,
                    None => {
                        rows.push(r);
                        rows.len() as u32 - 1
                    }
                }
            })
            .collect();
        // The same slots in every lane (only the lane's part differs).
        for lane in 0..self.warp_size() {
            let base = self.acc_at(lane, 0).0 - self.acc_at(0, 0).0;
            for (e, &s) in (0..acc as u32).zip(&slots) {
                assert_eq!(self.acc_at(lane, e).0, rows[s as usize] + base);
            }
        }
        (slots, rows.len() as u32)
    }

    /// The xor masks that reach every lane holding the same query rows.
    pub fn row_masks(&self) -> Vec<i32> {
        let ws = self.warp_size();
        let row_of = |lane: u32| self.acc_at(lane, 0).0;
        let masks: Vec<i32> = (0..ws.trailing_zeros())
            .map(|bit| 1u32 << bit)
            .filter(|&m| (0..ws).all(|l| row_of(l) == row_of(l ^ m)))
            .map(|m| m as i32)
            .collect();
        // Lanes agreeing on the row differ only in those bits.
        for a in 0..ws {
            for c in 0..ws {
                if row_of(a) == row_of(c) {
                    let diff = a ^ c;
                    assert!(
                        masks.iter().fold(diff, |d, &m| d & !(m as u32)) == 0,
                        "lanes {a} and {c} share a row but no mask joins them"
                    );
                }
            }
        }
        masks
    }

    /// Where element `i` of the query-side fragment for reduction step
    /// `step` (of [`Plan::k`] KV tokens) sits among the lane's accumulators
    /// of S: `(accumulator, element)`, the accumulator counted from the
    /// step's first. Panics if some lane would need another lane's value
    /// (a generator bug, caught when the kernel is built).
    pub fn regroup(&self, i: u32) -> (u32, u32) {
        let (_, _, acc) = self.lanes();
        let find = |lane: u32| {
            let (row, k) = self.q_at(lane, i);
            let (f, o) = (k / self.outer, k % self.outer);
            let e = (0..acc as u32)
                .find(|&e| self.acc_at(lane, e) == (row, o))
                .unwrap_or_else(|| {
                    panic!(
                        "{}: P element {i} of lane {lane} is in another lane",
                        self.instr
                    )
                });
            (f, e)
        };
        let first = find(0);
        for lane in 1..self.warp_size() {
            assert_eq!(
                find(lane),
                first,
                "{}: regrouping differs by lane",
                self.instr
            );
        }
        first
    }
}

/// An element's coordinates from a layout, as expressions of `lane`;
/// `swap` exchanges row and column.
fn coord(layout: Layout, lane: &Expr, i: u32, swap: bool) -> Coord {
    let axis = |a: crate::ir::mma::Axis| {
        a.lane_part(lane.clone()) + Expr::i32(a.offset[i as usize] as i32)
    };
    let (r, c) = (axis(layout.row), axis(layout.col));
    if swap {
        (c, r)
    } else {
        (r, c)
    }
}

/// Runs of consecutive elements `i..i + n` whose reduction indices are
/// consecutive at the same outer (or row) index: each is one vector load.
/// `at(lane, i)` gives `(outer, reduction)`; the runs are the same in
/// every lane, and start at a multiple of their length.
pub(crate) fn runs(lanes: u8, ws: u32, at: impl Fn(u32, u32) -> (u32, u32)) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let mut i = 0u32;
    while i < lanes as u32 {
        let mut n = 1;
        while i + n < lanes as u32
            && (0..ws).all(|l| {
                let (o0, k0) = at(l, i);
                let (o1, k1) = at(l, i + n);
                o1 == o0 && k1 == k0 + n
            })
        {
            n += 1;
        }
        // A power of two, aligned in every lane.
        let mut len = 1;
        while len * 2 <= n && (0..ws).all(|l| at(l, i).1.is_multiple_of(len * 2)) {
            len *= 2;
        }
        out.push((i, len));
        i += len;
    }
    out
}

/// Which operand an `ldmatrix` load fills (NVIDIA; [`Plan::ldsm`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tile {
    /// K's fragment of `S = Q·Kᵀ`, from a row-major `[token][dim]` tile.
    K,
    /// V's fragment of `O += P·V`, from the same kind of tile.
    V,
    /// Q's fragment, from a row-major `[query row][dim]` tile.
    Q,
}

/// An `ldmatrix` that loads one whole fragment: `count` matrices, `trans`,
/// matrix `i`'s first element at `(row, column)` = `origin[i]` of the
/// row-major tile (relative to the fragment's own origin).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ldsm {
    pub count: u8,
    pub trans: bool,
    pub origin: [(u32, u32); 4],
}

impl Plan {
    /// The `ldmatrix` that loads `tile`'s fragment on NVIDIA (`None` on
    /// CDNA, which has no such instruction). Checked here, for every lane
    /// and element, against the instruction's fragment layout: a mismatch
    /// is a generator bug and panics when the kernel is built.
    pub fn ldsm(&self, tile: Tile) -> Option<Ldsm> {
        if self.transposed {
            return None;
        }
        let l = match tile {
            Tile::K => Ldsm {
                count: 2,
                trans: false,
                origin: [(0, 0), (0, 8), (0, 0), (0, 0)],
            },
            Tile::V => Ldsm {
                count: 2,
                trans: true,
                origin: [(0, 0), (8, 0), (0, 0), (0, 0)],
            },
            Tile::Q => Ldsm {
                count: 4,
                trans: false,
                origin: [(0, 0), (8, 0), (0, 8), (8, 8)],
            },
        };
        let (qn, kvn, _) = self.lanes();
        let n = if tile == Tile::Q { qn } else { kvn };
        assert_eq!(
            n as u32,
            2 * l.count as u32,
            "{}: {tile:?} by ldmatrix",
            self.instr
        );
        for t in 0..self.warp_size() {
            for j in 0..n as u32 {
                let (i, r, c) = crate::ir::mma::ldmatrix_at(t, j, l.trans);
                let (r0, c0) = l.origin[i as usize];
                let got = (r0 + r, c0 + c);
                // The tile's (row, column) the fragment wants there.
                let want = match tile {
                    Tile::K => self.kv_at(t, j),
                    Tile::V => {
                        let (outer, k) = self.kv_at(t, j);
                        (k, outer)
                    }
                    Tile::Q => self.q_at(t, j),
                };
                assert_eq!(got, want, "{}: {tile:?} lane {t} element {j}", self.instr);
            }
        }
        Some(l)
    }
}

/// Loads a fragment with `ldsm`: lane `8i + r` names row `r` of matrix
/// `i` (lanes past the matrices repeat the first ones' rows); `at(row,
/// column)` is the element index of a tile position relative to the
/// fragment's origin.
pub(crate) fn load_fragment(
    b: &mut KernelBuilder,
    name: &str,
    buf: crate::ir::BufId,
    lane: &Expr,
    l: Ldsm,
    at: impl Fn(Expr, Expr) -> Expr,
) -> Expr {
    let i32 = |v: u32| Expr::i32(v as i32);
    let m = b.let_(
        &format!("{name}_m"),
        lane.clone() / Expr::i32(8) % i32(l.count as u32),
    );
    let r = lane.clone() % Expr::i32(8);
    // The matrix's origin, by the lane's matrix (unrolled selects).
    let pick = |k: usize| {
        let mut e = i32([l.origin[0].0, l.origin[0].1][k]);
        for i in 1..l.count as usize {
            let v = [l.origin[i].0, l.origin[i].1][k];
            e = m.clone().eq_(i32(i as u32)).select(i32(v), e);
        }
        e
    };
    let row = b.let_(&format!("{name}_r"), pick(0) + r);
    let col = b.let_(&format!("{name}_c"), pick(1));
    let idx = b.let_(&format!("{name}_at"), at(row, col));
    b.load_matrix(name, buf, idx, l.count, l.trans)
}
