//! A builder that writes [`Kernel`]s as nested Rust closures.
//!
//! ```
//! use attnforge_codegen::ir::{builder::KernelBuilder, Access, Expr, Scalar, Special};
//! use attnforge_codegen::target::Arch;
//!
//! // out[i] = 2 * x[i] for every thread of one block.
//! let mut b = KernelBuilder::new("twice", Arch::Gfx90a.target(), 64);
//! let x = b.global("x", Scalar::F32, Access::Read);
//! let out = b.global("out", Scalar::F32, Access::ReadWrite);
//! let i = b.let_("i", Expr::special(Special::ThreadIdx));
//! let v = b.let_("v", Expr::load(x, i.clone(), 1));
//! b.store(out, i, v * Expr::f32(2.0));
//! let kernel = b.finish();
//! attnforge_codegen::ir::verify::verify(&kernel).unwrap();
//! ```

use super::verify::type_of;
use super::*;

/// Builds a [`Kernel`] statement by statement.
pub struct KernelBuilder {
    kernel: Kernel,
    blocks: Vec<Vec<Stmt>>,
}

impl KernelBuilder {
    /// A builder for a kernel named `name` for `target`, launched with
    /// `block_dim` threads per block.
    pub fn new(name: impl Into<String>, target: Target, block_dim: u32) -> Self {
        KernelBuilder {
            kernel: Kernel {
                name: name.into(),
                target,
                block_dim,
                params: Vec::new(),
                buffers: Vec::new(),
                vars: Vec::new(),
                body: Vec::new(),
            },
            blocks: vec![Vec::new()],
        }
    }

    /// The target being built for.
    pub fn target(&self) -> Target {
        self.kernel.target
    }

    /// The kernel's block size.
    pub fn block_dim(&self) -> u32 {
        self.kernel.block_dim
    }

    /// Adds a global buffer parameter.
    pub fn global(&mut self, name: &str, elem: Scalar, access: Access) -> BufId {
        let id = self.add_buffer(Buffer {
            name: name.to_string(),
            elem,
            space: Space::Global,
            access,
            len: 0,
        });
        self.kernel.params.push(Param::Buffer(id));
        id
    }

    /// Declares a shared-memory array of `len` elements.
    pub fn shared(&mut self, name: &str, elem: Scalar, len: u32) -> BufId {
        self.add_buffer(Buffer {
            name: name.to_string(),
            elem,
            space: Space::Shared,
            access: Access::ReadWrite,
            len,
        })
    }

    /// Declares a per-thread array of `len` elements (registers on a GPU),
    /// indexed by constants and [`KernelBuilder::unroll`] variables.
    pub fn local(&mut self, name: &str, elem: Scalar, len: u32) -> BufId {
        self.add_buffer(Buffer {
            name: name.to_string(),
            elem,
            space: Space::Local,
            access: Access::ReadWrite,
            len,
        })
    }

    /// A per-thread array of `len` elements, each set to `init`.
    pub fn local_filled(&mut self, name: &str, elem: Scalar, len: u32, init: Expr) -> BufId {
        let buf = self.local(name, elem, len);
        // One unrolled loop, or nested ones where `len` is over the
        // verifier's limit for one (any divisor split works: the stores are
        // independent).
        let max = crate::ir::verify::MAX_UNROLL;
        let inner = (1..=len.min(max))
            .rev()
            .find(|i| len.is_multiple_of(*i))
            .unwrap_or(1);
        if inner == len {
            self.unroll(&format!("{name}_i"), len, |b, i| b.store(buf, i, init));
        } else {
            self.unroll(&format!("{name}_o"), len / inner, |b, o| {
                b.unroll(&format!("{name}_i"), inner, |b, i| {
                    b.store(buf, o * Expr::i32(inner as i32) + i, init)
                })
            });
        }
        buf
    }

    fn add_buffer(&mut self, b: Buffer) -> BufId {
        self.kernel.buffers.push(b);
        BufId(self.kernel.buffers.len() as u32 - 1)
    }

    /// Adds a scalar parameter passed by value.
    pub fn scalar_param(&mut self, name: &str, ty: Scalar) -> Expr {
        let id = self.new_var(name, Ty::scalar(ty));
        self.kernel.params.push(Param::Scalar(id));
        Expr::Var(id)
    }

    fn new_var(&mut self, name: &str, ty: Ty) -> VarId {
        self.kernel.vars.push(Var {
            name: name.to_string(),
            ty,
        });
        VarId(self.kernel.vars.len() as u32 - 1)
    }

    fn infer(&self, e: &Expr) -> Ty {
        // A type error is reported by the verifier with its location; the
        // placeholder type only keeps building going until then.
        type_of(&self.kernel, e).unwrap_or(Ty::scalar(Scalar::F32))
    }

    fn push(&mut self, s: Stmt) {
        self.blocks
            .last_mut()
            .expect("builder always has an open block")
            .push(s);
    }

    fn nested(&mut self, f: impl FnOnce(&mut Self)) -> Vec<Stmt> {
        self.blocks.push(Vec::new());
        f(self);
        self.blocks.pop().expect("pushed above")
    }

    /// Declares a variable holding `init` and returns its value.
    pub fn let_(&mut self, name: &str, init: Expr) -> Expr {
        Expr::Var(self.var(name, init))
    }

    /// Declares a mutable variable holding `init`.
    pub fn var(&mut self, name: &str, init: Expr) -> VarId {
        let ty = self.infer(&init);
        let id = self.new_var(name, ty);
        self.push(Stmt::Let(id, init));
        id
    }

    /// Gives a variable a new value.
    pub fn set(&mut self, var: VarId, value: Expr) {
        self.push(Stmt::Assign(var, value));
    }

    /// Stores `value` at element `index` of `buf`.
    pub fn store(&mut self, buf: BufId, index: Expr, value: Expr) {
        self.push(Stmt::Store { buf, index, value });
    }

    /// `for (i = start; i < end; i += step) body(i)`; the loop variable has the type of `start`.
    pub fn for_(
        &mut self,
        name: &str,
        start: Expr,
        end: Expr,
        step: Expr,
        body: impl FnOnce(&mut Self, Expr),
    ) {
        let ty = self.infer(&start);
        let var = self.new_var(name, ty);
        let body = self.nested(|b| body(b, Expr::Var(var)));
        self.push(Stmt::For {
            var,
            start,
            end,
            step,
            body,
        });
    }

    /// `for (i = 0; i < count; i++) body(i)`, unrolled on a GPU; `i` is an
    /// `i32` that may index local arrays.
    pub fn unroll(&mut self, name: &str, count: u32, body: impl FnOnce(&mut Self, Expr)) {
        let var = self.new_var(name, Ty::scalar(Scalar::I32));
        let body = self.nested(|b| body(b, Expr::Var(var)));
        self.push(Stmt::Unroll { var, count, body });
    }

    /// `if (cond) then`
    pub fn if_(&mut self, cond: Expr, then: impl FnOnce(&mut Self)) {
        self.if_else(cond, then, |_| {});
    }

    /// `if (cond) then else otherwise`
    pub fn if_else(
        &mut self,
        cond: Expr,
        then: impl FnOnce(&mut Self),
        otherwise: impl FnOnce(&mut Self),
    ) {
        let then = self.nested(then);
        let otherwise = self.nested(otherwise);
        self.push(Stmt::If {
            cond,
            then,
            otherwise,
        });
    }

    /// `while (cond) body`
    pub fn while_(&mut self, cond: Expr, body: impl FnOnce(&mut Self)) {
        let body = self.nested(body);
        self.push(Stmt::While { cond, body });
    }

    /// A block-wide barrier.
    pub fn barrier(&mut self) {
        self.push(Stmt::Barrier);
    }

    /// A prefetch hint for element `index` of global buffer `buf`.
    pub fn prefetch(&mut self, buf: BufId, index: Expr) {
        self.push(Stmt::Prefetch { buf, index });
    }

    /// A comment in the printed code.
    pub fn comment(&mut self, text: impl Into<String>) {
        self.push(Stmt::Comment(text.into()));
    }

    /// Runs a warp collective and returns its result.
    pub fn collective(&mut self, name: &str, op: Collective, value: Expr) -> Expr {
        let ty = self.infer(&value);
        let dst = self.new_var(name, ty);
        self.push(Stmt::Collective { dst, op, value });
        Expr::Var(dst)
    }

    /// `__shfl_xor(value, mask, width)`
    pub fn shfl_xor(&mut self, name: &str, value: Expr, mask: i32, width: u32) -> Expr {
        let op = Collective::ShuffleXor {
            mask: Expr::i32(mask),
            width,
        };
        self.collective(name, op, value)
    }

    /// `D = A·B + C` by the whole warp: `a`, `b` and `c` are this lane's
    /// fragments ([`mma::MmaInstr::layout`]); returns its fragment of D.
    pub fn mma(&mut self, name: &str, instr: mma::MmaInstr, a: Expr, b: Expr, c: Expr) -> Expr {
        self.collective(name, Collective::Mma { instr, a, b }, c)
    }

    /// `ldmatrix` of `count` 8×8 matrices from shared `buf`: `row` is this
    /// lane's row's first element (see [`Collective::LoadMatrix`]).
    pub fn load_matrix(
        &mut self,
        name: &str,
        buf: BufId,
        row: Expr,
        count: u8,
        trans: bool,
    ) -> Expr {
        let elem = self.kernel.buffers[buf.0 as usize].elem;
        let dst = self.new_var(name, Ty::vector(elem, 2 * count));
        let op = Collective::LoadMatrix { buf, count, trans };
        self.push(Stmt::Collective {
            dst,
            op,
            value: row,
        });
        Expr::Var(dst)
    }

    /// Finishes the kernel (verification is a separate step).
    pub fn finish(mut self) -> Kernel {
        self.kernel.body = self.blocks.pop().unwrap_or_default();
        self.kernel
    }
}

impl Expr {
    /// A load of `lanes` elements of `buf` at element `index`.
    pub fn load(buf: BufId, index: Expr, lanes: u8) -> Expr {
        Expr::Load {
            buf,
            index: Box::new(index),
            lanes,
        }
    }
}
