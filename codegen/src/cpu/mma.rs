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

use super::lower::op;
use super::lower::{e, Lowerer, R};
use crate::ir::mma::{Axis, MmaInstr, Operand};
use crate::ir::{BufId, Collective, Expr, Scalar, Stmt, VarId};

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
            // A row index per lane (warps of 32).
            Stmt::Collective {
                op: Collective::LoadMatrix { .. },
                ..
            } => 4 * 32,
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

impl<'a, 'ctx> Lowerer<'a, 'ctx> {
    /// `dst = ldmatrix` for the current warp: every lane's row index into
    /// the scratch, then every lane reads its elements from the rows the
    /// others named (`ir::mma::ldmatrix_at`). In checked mode every read
    /// is bounds-checked and recorded against the receiving lane (a refused
    /// read yields zero).
    pub(super) fn load_matrix(
        &mut self,
        dst: VarId,
        buf: BufId,
        count: u8,
        trans: bool,
        row: &Expr,
    ) -> R<()> {
        let ws = self.ws() as i64;
        let warp = self.warp_base()?;
        let base = self.mma_scratch;
        let i32t = self.cx.i32_type();
        let slot = |l: &Self, lane: IntValue<'ctx>| -> R<inkwell::values::PointerValue<'ctx>> {
            let at = e(l.b.build_int_z_extend(lane, l.cx.i64_type(), "l"))?;
            let at = e(l.b.build_int_mul(at, l.i64c(4), "o"))?;
            let at = e(l.b.build_int_add(at, l.i64c(base as i64), "o"))?;
            l.byte_ptr(l.frame, at)
        };
        self.counted(self.i32c(ws), &mut |l, lane| {
            let tid = e(l.b.build_int_add(warp, lane, "tid"))?;
            let r = l.expr(row, tid)?;
            e(l.b.build_store(slot(l, lane)?, r))?;
            Ok(())
        })?;
        let elem = self.k.buffer(buf).elem;
        let ety = self.ty(crate::ir::Ty::scalar(elem));
        let vty = self
            .ty(crate::ir::Ty::vector(elem, 2 * count))
            .into_vector_type();
        self.counted(self.i32c(ws), &mut |l, lane| {
            let tid = e(l.b.build_int_add(warp, lane, "tid"))?;
            let a = e(l.b.build_int_unsigned_div(lane, l.i32c(4), "a"))?;
            let t4 = e(l.b.build_int_unsigned_rem(lane, l.i32c(4), "t4"))?;
            let mut v = vty.get_undef();
            for j in 0..2 * count as i64 {
                let (i, e_) = (j / 2, j % 2);
                let b2 = e(l.b.build_int_mul(t4, l.i32c(2), "b"))?;
                let b2 = e(l.b.build_int_add(b2, l.i32c(e_), "b"))?;
                let (r, c) = if trans { (b2, a) } else { (a, b2) };
                let src = e(l.b.build_int_add(r, l.i32c(8 * i), "src"))?;
                let start = e(l.b.build_load(i32t, slot(l, src)?, "row"))?.into_int_value();
                let idx = e(l.b.build_int_add(start, c, "idx"))?;
                let idx = e(l.b.build_int_s_extend(idx, l.cx.i64_type(), "idx"))?;
                let x = if l.checked {
                    let ok = l.call_check(op::LOAD_SHARED, buf.0, idx, 1, tid)?;
                    let here = l.b.get_insert_block().ok_or("no block")?;
                    let (doit, cont) = (l.bb("ldsm"), l.bb("ldsm_done"));
                    e(l.b.build_conditional_branch(ok, doit, cont))?;
                    l.b.position_at_end(doit);
                    let x = e(l.b.build_load(ety, l.elem_ptr(buf, idx, tid)?, "x"))?;
                    let end = l.b.get_insert_block().ok_or("no block")?;
                    e(l.b.build_unconditional_branch(cont))?;
                    l.b.position_at_end(cont);
                    let phi = e(l.b.build_phi(ety, "xv"))?;
                    phi.add_incoming(&[(&x, end), (&ety.const_zero(), here)]);
                    phi.as_basic_value()
                } else {
                    e(l.b.build_load(ety, l.elem_ptr(buf, idx, tid)?, "x"))?
                };
                v = e(l.b.build_insert_element(v, x, l.i32c(j), "v"))?;
            }
            e(l.b.build_store(l.var_ptr(dst, tid)?, v))?;
            Ok(())
        })?;
        Ok(())
    }
}
