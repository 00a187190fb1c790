//! The CPU backend's matrix multiply-accumulate (`Collective::Mma`).
//!
//! ```text
//! phase 1, for lane:  A, B and C fragments evaluated, converted to f32 and
//!                     stored at their (row, column) in whole matrices in
//!                     the frame's scratch (the instruction's documented
//!                     layout, ir/mma.rs)
//! phase 2, for lane:  each element of the lane's D fragment:
//!                     d = C[m][n]; for k in 0..K: d = fma(A[m][k], B[k][n], d)
//! ```
//!
//! The lanes of a warp run one after another, like every collective of
//! the CPU backend: phase 1 finishes for the whole warp before any lane
//! reads the matrices. f16 and bf16 products are exact in f32, so the fused
//! multiply-add rounds only the running sum, in increasing k.

use inkwell::values::{BasicValueEnum, IntValue};

use super::lower::{e, Lowerer, R};
use crate::ir::mma::{Axis, MmaInstr, Operand};
use crate::ir::{Collective, Expr, Scalar, Stmt, VarId};

/// Bytes of scratch one instruction needs: A, B and C as f32.
fn scratch_bytes(instr: MmaInstr) -> u64 {
    let (m, n, k) = instr.shape();
    4 * (m * k + k * n + m * n) as u64
}

/// The scratch the largest matrix instruction of `stmts` needs (0 if none).
pub(super) fn largest_scratch(stmts: &[Stmt]) -> u64 {
    stmts
        .iter()
        .map(|s| match s {
            Stmt::Collective {
                op: Collective::Mma { instr, .. },
                ..
            } => scratch_bytes(*instr),
            Stmt::For { body, .. } | Stmt::While { body, .. } | Stmt::Unroll { body, .. } => {
                largest_scratch(body)
            }
            Stmt::If {
                then, otherwise, ..
            } => largest_scratch(then).max(largest_scratch(otherwise)),
            _ => 0,
        })
        .max()
        .unwrap_or(0)
}

impl<'a, 'ctx> Lowerer<'a, 'ctx> {
    /// `lane`'s coordinate on `axis` for element `i`, as an i64.
    fn mma_coord(&self, axis: Axis, lane: IntValue<'ctx>, i: u32) -> R<IntValue<'ctx>> {
        let q = e(self
            .b
            .build_int_unsigned_div(lane, self.i32c(axis.div as i64), "q"))?;
        let r = e(self
            .b
            .build_int_unsigned_rem(q, self.i32c(axis.modulo as i64), "r"))?;
        let p = e(self.b.build_int_mul(r, self.i32c(axis.mul as i64), "p"))?;
        let c = e(self
            .b
            .build_int_add(p, self.i32c(axis.offset[i as usize] as i64), "c"))?;
        e(self.b.build_int_z_extend(c, self.cx.i64_type(), "c64"))
    }

    /// The byte offset in the frame of element `(row, col)` of a matrix of
    /// `cols` columns stored from `base`.
    fn mma_at(
        &self,
        base: u64,
        row: IntValue<'ctx>,
        col: IntValue<'ctx>,
        cols: u32,
    ) -> R<IntValue<'ctx>> {
        let at = e(self.b.build_int_mul(row, self.i64c(cols as i64), "rc"))?;
        let at = e(self.b.build_int_add(at, col, "rc"))?;
        let at = e(self.b.build_int_mul(at, self.i64c(4), "b"))?;
        e(self.b.build_int_add(at, self.i64c(base as i64), "b"))
    }

    fn load_f32(&self, at: IntValue<'ctx>) -> R<BasicValueEnum<'ctx>> {
        let p = self.byte_ptr(self.frame, at)?;
        e(self.b.build_load(self.cx.f32_type(), p, "m"))
    }

    /// `dst = D` of `instr` for the current warp, from each lane's `a`, `b`
    /// and `c` fragments.
    pub(super) fn mma(
        &mut self,
        dst: VarId,
        instr: MmaInstr,
        a: &Expr,
        b: &Expr,
        c: &Expr,
    ) -> R<()> {
        let (m, n, k) = instr.shape();
        let base_a = self.mma_scratch;
        let base_b = base_a + 4 * (m * k) as u64;
        let base_c = base_b + 4 * (k * n) as u64;
        // Each matrix: its fragment, where it is kept, its columns, its type.
        let mats = [
            (Operand::A, a, base_a, k, instr.input()),
            (Operand::B, b, base_b, n, instr.input()),
            (Operand::C, c, base_c, n, Scalar::F32),
        ];
        let ws = self.ws() as i64;
        let warp = self.warp_base()?;
        let i32t = self.cx.i32_type();

        // Phase 1: every lane puts its elements of A, B and C in place.
        self.counted(self.i32c(ws), &mut |l, lane| {
            let tid = e(l.b.build_int_add(warp, lane, "tid"))?;
            for (op, frag, base, cols, s) in mats {
                let layout = instr.layout(op);
                let lanes = instr.lanes(op);
                let v = l.expr(frag, tid)?.into_vector_value();
                let f = l.cast(s, Scalar::F32, v.into(), lanes)?.into_vector_value();
                for i in 0..lanes as u32 {
                    let x =
                        e(l.b.build_extract_element(f, i32t.const_int(i as u64, false), "x"))?;
                    let row = l.mma_coord(layout.row, lane, i)?;
                    let col = l.mma_coord(layout.col, lane, i)?;
                    let at = l.mma_at(base, row, col, cols)?;
                    e(l.b.build_store(l.byte_ptr(l.frame, at)?, x))?;
                }
            }
            Ok(())
        })?;

        // Phase 2: every lane computes its elements of D.
        let c_layout = instr.layout(Operand::C);
        let c_lanes = instr.lanes(Operand::C);
        let fma = self.cx.f32_type();
        self.counted(self.i32c(ws), &mut |l, lane| {
            let tid = e(l.b.build_int_add(warp, lane, "tid"))?;
            let vty = l.cx.f32_type().vec_type(c_lanes as u32);
            let mut d = vty.get_undef();
            for i in 0..c_lanes as u32 {
                let row = l.mma_coord(c_layout.row, lane, i)?;
                let col = l.mma_coord(c_layout.col, lane, i)?;
                let mut acc = l.load_f32(l.mma_at(base_c, row, col, n)?)?;
                for kk in 0..k {
                    let kk = l.i64c(kk as i64);
                    let x = l.load_f32(l.mma_at(base_a, row, kk, k)?)?;
                    let y = l.load_f32(l.mma_at(base_b, kk, col, n)?)?;
                    acc = l.intrinsic("llvm.fma", fma.into(), &[x, y, acc])?;
                }
                d =
                    e(l.b.build_insert_element(d, acc, i32t.const_int(i as u64, false), "d"))?;
            }
            e(l.b.build_store(l.var_ptr(dst, tid)?, d))?;
            Ok(())
        })?;
        Ok(())
    }
}
