//! Lowering of a verified kernel to one LLVM function that runs one block.
//!
//! ```text
//! void block(const LaunchInfo* info, u8* frame, void* state, i32 bx, i32 by, i32 bz)
//!
//! frame: | shared arrays | per-thread variables [block_dim] | collective scratch |
//! ```
//!
//! The body follows the schedule of [`super::split`]. A variable mentioned in
//! one region only is an ordinary local (an alloca that mem2reg promotes). A
//! block-uniform variable that is never reassigned keeps a single slot. Every
//! other variable lives in the frame as one element per thread, which is how
//! a thread's values survive the split at barriers and collectives.
//!
//! In checked mode every memory access, barrier and uniform condition calls
//! `info.check(state, op, buf, index, lanes, tid)`; an access it refuses is
//! skipped (a load yields zero), and the findings are reported after the launch.

use std::collections::HashMap;

use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::Module;
use inkwell::types::{BasicTypeEnum, FunctionType};
use inkwell::values::{BasicValue, BasicValueEnum, FunctionValue, IntValue, PointerValue};
use inkwell::{AddressSpace, FloatPredicate, IntPredicate};

use super::split::{buf_regions, max_batch, var_regions, Level, Node, Splitter};
use crate::ir::verify::{type_of, Analysis};
use crate::ir::*;

/// Operations reported to the checked-mode callback.
pub(crate) mod op {
    pub const LOAD_GLOBAL: u32 = 0;
    pub const STORE_GLOBAL: u32 = 1;
    pub const LOAD_SHARED: u32 = 2;
    pub const STORE_SHARED: u32 = 3;
    pub const BARRIER: u32 = 4;
    pub const DIVERGENT_BLOCK: u32 = 5;
    pub const DIVERGENT_WARP: u32 = 6;
}

/// Byte offsets of the `LaunchInfo` fields (see `super::LaunchInfo`).
mod info {
    pub const BUFFERS: u64 = 0;
    pub const SCALARS: u64 = 16;
    pub const GRID: u64 = 24;
    pub const CHECK: u64 = 40;
}

/// Where the frame keeps what.
#[derive(Clone, Debug, Default)]
pub(crate) struct FrameLayout {
    /// Total bytes.
    pub bytes: u64,
    /// Byte offset of each shared buffer, by buffer index.
    pub shared: HashMap<u32, u64>,
}

#[derive(Clone, Copy)]
enum Slot<'ctx> {
    Local(PointerValue<'ctx>),
    Frame(u64),
}

/// Where a local array lives: an alloca when one region uses it, else one
/// copy per thread in the frame (`offset + tid·stride`).
#[derive(Clone, Copy)]
enum LocalSlot<'ctx> {
    Alloca(PointerValue<'ctx>),
    Frame { offset: u64, stride: u64 },
}

pub(super) type R<T> = Result<T, String>;

pub(super) fn e<T>(r: Result<T, inkwell::builder::BuilderError>) -> R<T> {
    r.map_err(|err| format!("LLVM builder: {err}"))
}

pub(crate) struct Lowerer<'a, 'ctx> {
    pub(super) cx: &'ctx Context,
    m: &'a Module<'ctx>,
    pub(super) b: Builder<'ctx>,
    f: FunctionValue<'ctx>,
    pub(super) k: &'a Kernel,
    pub(super) checked: bool,
    slots: Vec<Slot<'ctx>>,
    locals: HashMap<u32, LocalSlot<'ctx>>,
    pub(super) frame: PointerValue<'ctx>,
    info: PointerValue<'ctx>,
    state: PointerValue<'ctx>,
    block: [IntValue<'ctx>; 3],
    bases: HashMap<u32, PointerValue<'ctx>>,
    layout: FrameLayout,
    scratch: u64,
    /// Where a matrix multiply-accumulate keeps its matrices.
    pub(super) mma_scratch: u64,
    check: Option<(FunctionType<'ctx>, PointerValue<'ctx>)>,
    warp_var: Option<PointerValue<'ctx>>,
}

/// Emits `name` into `m`; returns the frame layout.
pub(crate) fn lower<'ctx>(
    cx: &'ctx Context,
    m: &Module<'ctx>,
    name: &str,
    k: &Kernel,
    an: &Analysis,
    checked: bool,
    host_cpu: (&str, &str),
) -> R<FrameLayout> {
    let ptr = cx.ptr_type(AddressSpace::default());
    let i32t = cx.i32_type();
    let fty = cx.void_type().fn_type(
        &[
            ptr.into(),
            ptr.into(),
            ptr.into(),
            i32t.into(),
            i32t.into(),
            i32t.into(),
        ],
        false,
    );
    let f = m.add_function(name, fty, None);
    // Let LLVM use the host's vector and FMA/F16C units.
    f.add_attribute(
        inkwell::attributes::AttributeLoc::Function,
        cx.create_string_attribute("target-cpu", host_cpu.0),
    );
    f.add_attribute(
        inkwell::attributes::AttributeLoc::Function,
        cx.create_string_attribute("target-features", host_cpu.1),
    );
    // LLVM's x86 tuning prefers 256-bit vectors and would split the IR's
    // 16-lane f32 vectors in two; where the host has AVX-512 they are what
    // the host schedules ask for (`kernels::host::wide_lanes`).
    if host_cpu.1.split(',').any(|f| f == "+avx512f") {
        f.add_attribute(
            inkwell::attributes::AttributeLoc::Function,
            cx.create_string_attribute("min-legal-vector-width", "512"),
        );
    }
    let entry = cx.append_basic_block(f, "entry");
    let b = cx.create_builder();
    b.position_at_end(entry);
    let p = |i: u32| f.get_nth_param(i).expect("declared above");
    let mut l = Lowerer {
        cx,
        m,
        b,
        f,
        k,
        checked,
        slots: Vec::new(),
        locals: HashMap::new(),
        frame: p(1).into_pointer_value(),
        info: p(0).into_pointer_value(),
        state: p(2).into_pointer_value(),
        block: [
            p(3).into_int_value(),
            p(4).into_int_value(),
            p(5).into_int_value(),
        ],
        bases: HashMap::new(),
        layout: FrameLayout::default(),
        scratch: 0,
        mma_scratch: 0,
        check: None,
        warp_var: None,
    };

    let mut splitter = Splitter { regions: 0 };
    let nodes = splitter.block(&k.body);
    let (regions, control_var) = var_regions(&nodes, k.vars.len());
    let assigned = assigned_vars(&k.body, k.vars.len());
    let bregions = buf_regions(&nodes, k.buffers.len());
    l.layout_frame(an, &regions, &control_var, &assigned, max_batch(&nodes))?;
    l.layout_locals(&bregions)?;
    l.prologue()?;
    l.nodes(&nodes)?;
    e(l.b.build_return(None))?;
    Ok(l.layout)
}

fn assigned_vars(stmts: &[Stmt], n: usize) -> Vec<bool> {
    fn walk(stmts: &[Stmt], out: &mut [bool]) {
        for s in stmts {
            match s {
                Stmt::Assign(v, _) => out[v.0 as usize] = true,
                Stmt::For { var, body, .. } | Stmt::Unroll { var, body, .. } => {
                    out[var.0 as usize] = true;
                    walk(body, out);
                }
                Stmt::While { body, .. } => walk(body, out),
                Stmt::If {
                    then, otherwise, ..
                } => {
                    walk(then, out);
                    walk(otherwise, out);
                }
                _ => {}
            }
        }
    }
    let mut out = vec![false; n];
    walk(stmts, &mut out);
    out
}

fn align(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

impl<'a, 'ctx> Lowerer<'a, 'ctx> {
    pub(super) fn ws(&self) -> u32 {
        self.k.target.warp_size
    }

    pub(super) fn i32c(&self, v: i64) -> IntValue<'ctx> {
        self.cx.i32_type().const_int(v as u64, true)
    }

    pub(super) fn i64c(&self, v: i64) -> IntValue<'ctx> {
        self.cx.i64_type().const_int(v as u64, true)
    }

    pub(super) fn ty(&self, t: Ty) -> BasicTypeEnum<'ctx> {
        let s: BasicTypeEnum<'ctx> = match t.scalar {
            Scalar::F32 => self.cx.f32_type().into(),
            Scalar::F16 => self.cx.f16_type().into(),
            Scalar::BF16 => self.cx.i16_type().into(),
            Scalar::F8E4M3 => self.cx.i8_type().into(),
            Scalar::I32 | Scalar::U32 => self.cx.i32_type().into(),
            Scalar::I64 => self.cx.i64_type().into(),
            Scalar::Bool => self.cx.bool_type().into(),
        };
        if t.lanes == 1 {
            return s;
        }
        match s {
            BasicTypeEnum::FloatType(f) => f.vec_type(t.lanes as u32).into(),
            BasicTypeEnum::IntType(i) => i.vec_type(t.lanes as u32).into(),
            _ => unreachable!("scalars are ints or floats"),
        }
    }

    fn layout_frame(
        &mut self,
        an: &Analysis,
        regions: &[Vec<usize>],
        control_var: &[bool],
        assigned: &[bool],
        batch: usize,
    ) -> R<()> {
        let mut off = 0u64;
        for (i, buf) in self.k.buffers.iter().enumerate() {
            if buf.space == Space::Shared {
                off = align(off, 64);
                self.layout.shared.insert(i as u32, off);
                off += buf.len as u64 * buf.elem.size_bytes() as u64;
            }
        }
        let params: Vec<VarId> = self
            .k
            .params
            .iter()
            .filter_map(|p| match p {
                Param::Scalar(v) => Some(*v),
                Param::Buffer(_) => None,
            })
            .collect();
        for (i, var) in self.k.vars.iter().enumerate() {
            let v = VarId(i as u32);
            let one_region = regions[i].len() <= 1;
            // A block-uniform value needs one slot only if it really is
            // uniform; checked mode keeps every thread's copy so that a
            // value the verifier wrongly took for uniform shows up as
            // divergence instead of being overwritten by the last thread.
            let single = params.contains(&v)
                || control_var[i]
                || (!self.checked && an.of(v) == Uniformity::Block && !assigned[i]);
            let slot = if one_region || single {
                Slot::Local(e(self.b.build_alloca(self.ty(var.ty), &var.name))?)
            } else {
                off = align(off, 64);
                let s = Slot::Frame(off);
                off += self.k.block_dim as u64 * var.ty.size_bytes().max(1) as u64;
                s
            };
            self.slots.push(slot);
        }
        off = align(off, 64);
        self.scratch = off;
        // Per collective of the largest batch: value, argument, and the two
        // butterfly buffers, one i32 per lane each.
        off += batch.max(1) as u64 * 4 * 4 * self.ws() as u64;
        off = align(off, 64);
        self.mma_scratch = off;
        off += super::mma::largest_scratch(&self.k.body);
        self.layout.bytes = align(off, 64);
        Ok(())
    }

    /// Local arrays used by one region are allocas; the others get one
    /// copy per thread at the end of the frame.
    fn layout_locals(&mut self, regions: &[Vec<usize>]) -> R<()> {
        let mut off = self.layout.bytes;
        for (i, buf) in self.k.buffers.iter().enumerate() {
            if buf.space != Space::Local {
                continue;
            }
            let bytes = buf.len as u64 * buf.elem.size_bytes() as u64;
            let slot = if regions[i].len() <= 1 {
                let ty = self.ty(Ty::scalar(buf.elem));
                let arr = match ty {
                    BasicTypeEnum::FloatType(t) => t.array_type(buf.len).into(),
                    BasicTypeEnum::IntType(t) => t.array_type(buf.len).into(),
                    _ => return Err("local arrays hold scalars".into()),
                };
                let p = self.entry_alloca(arr, &buf.name)?;
                if let Some(inst) = p.as_instruction() {
                    inst.set_alignment(16).map_err(|x| x.to_string())?;
                }
                LocalSlot::Alloca(p)
            } else {
                off = align(off, 64);
                let stride = align(bytes, 16);
                let slot = LocalSlot::Frame {
                    offset: off,
                    stride,
                };
                off += stride * self.k.block_dim as u64;
                slot
            };
            self.locals.insert(i as u32, slot);
        }
        self.layout.bytes = align(off, 64);
        Ok(())
    }

    pub(super) fn byte_ptr(
        &self,
        base: PointerValue<'ctx>,
        off: IntValue<'ctx>,
    ) -> R<PointerValue<'ctx>> {
        // SAFETY (of the generated code, not of this call): offsets come from
        // the frame layout or from checked/validated buffer indices.
        e(unsafe { self.b.build_gep(self.cx.i8_type(), base, &[off], "p") })
    }

    fn load_field(&self, off: u64, ty: BasicTypeEnum<'ctx>) -> R<BasicValueEnum<'ctx>> {
        let p = self.byte_ptr(self.info, self.i64c(off as i64))?;
        e(self.b.build_load(ty, p, "field"))
    }

    fn prologue(&mut self) -> R<()> {
        let ptr = self.cx.ptr_type(AddressSpace::default());
        let buffers = self
            .load_field(info::BUFFERS, ptr.into())?
            .into_pointer_value();
        let scalars = self
            .load_field(info::SCALARS, ptr.into())?
            .into_pointer_value();
        let mut gslot = 0i64;
        let mut sslot = 0i64;
        for p in &self.k.params {
            match p {
                Param::Buffer(bid) => {
                    let at = self.byte_ptr(buffers, self.i64c(gslot * 8))?;
                    let base = e(self.b.build_load(ptr, at, "base"))?.into_pointer_value();
                    self.bases.insert(bid.0, base);
                    gslot += 1;
                }
                Param::Scalar(v) => {
                    let at = self.byte_ptr(scalars, self.i64c(sslot * 8))?;
                    let ty = self.ty(self.k.var(*v).ty);
                    let val = e(self.b.build_load(ty, at, "scalar"))?;
                    let Slot::Local(dst) = self.slots[v.0 as usize] else {
                        return Err("scalar parameters live in locals".into());
                    };
                    e(self.b.build_store(dst, val))?;
                    sslot += 1;
                }
            }
        }
        if self.checked {
            let i32t = self.cx.i32_type();
            let fty = i32t.fn_type(
                &[
                    ptr.into(),
                    i32t.into(),
                    i32t.into(),
                    self.cx.i64_type().into(),
                    i32t.into(),
                    i32t.into(),
                ],
                false,
            );
            let fp = self
                .load_field(info::CHECK, ptr.into())?
                .into_pointer_value();
            self.check = Some((fty, fp));
        }
        let w = e(self.b.build_alloca(self.cx.i32_type(), "warp"))?;
        self.warp_var = Some(w);
        Ok(())
    }

    pub(super) fn call_check(
        &self,
        code: u32,
        buf: u32,
        index: IntValue<'ctx>,
        lanes: u32,
        tid: IntValue<'ctx>,
    ) -> R<IntValue<'ctx>> {
        let (fty, fp) = self.check.ok_or("check called in unchecked mode")?;
        let args = [
            self.state.into(),
            self.i32c(code as i64).into(),
            self.i32c(buf as i64).into(),
            index.into(),
            self.i32c(lanes as i64).into(),
            tid.into(),
        ];
        let r = e(self.b.build_indirect_call(fty, fp, &args, "ok"))?;
        let r = r
            .try_as_basic_value()
            .basic()
            .ok_or("check returns a value")?
            .into_int_value();
        e(self
            .b
            .build_int_compare(IntPredicate::NE, r, self.i32c(0), "okb"))
    }

    // ---- control-flow helpers -------------------------------------------

    pub(super) fn bb(&self, name: &str) -> inkwell::basic_block::BasicBlock<'ctx> {
        self.cx.append_basic_block(self.f, name)
    }

    /// `for (i = 0; i < n; i++) body(i)` with an i32 counter.
    pub(super) fn counted(
        &mut self,
        n: IntValue<'ctx>,
        body: &mut dyn FnMut(&mut Self, IntValue<'ctx>) -> R<()>,
    ) -> R<()> {
        let i32t = self.cx.i32_type();
        let ctr = self.entry_alloca(i32t.into(), "i")?;
        e(self.b.build_store(ctr, self.i32c(0)))?;
        let (cond, bodyb, exit) = (self.bb("loop"), self.bb("body"), self.bb("exit"));
        e(self.b.build_unconditional_branch(cond))?;
        self.b.position_at_end(cond);
        let i = e(self.b.build_load(i32t, ctr, "i"))?.into_int_value();
        let c = e(self.b.build_int_compare(IntPredicate::SLT, i, n, "c"))?;
        e(self.b.build_conditional_branch(c, bodyb, exit))?;
        self.b.position_at_end(bodyb);
        body(self, i)?;
        let i2 = e(self.b.build_int_add(i, self.i32c(1), "i2"))?;
        e(self.b.build_store(ctr, i2))?;
        e(self.b.build_unconditional_branch(cond))?;
        self.b.position_at_end(exit);
        Ok(())
    }

    fn entry_alloca(&self, ty: BasicTypeEnum<'ctx>, name: &str) -> R<PointerValue<'ctx>> {
        let entry = self
            .f
            .get_first_basic_block()
            .ok_or("function has an entry")?;
        let b = self.cx.create_builder();
        match entry.get_first_instruction() {
            Some(first) => b.position_before(&first),
            None => b.position_at_end(entry),
        }
        e(b.build_alloca(ty, name))
    }

    // ---- the schedule -----------------------------------------------------

    fn current_warp(&self) -> R<IntValue<'ctx>> {
        let w = self.warp_var.ok_or("no warp variable")?;
        Ok(e(self.b.build_load(self.cx.i32_type(), w, "w"))?.into_int_value())
    }

    fn nodes(&mut self, nodes: &[Node<'_>]) -> R<()> {
        for n in nodes {
            match n {
                Node::Warps(inner) => {
                    let nwarps = (self.k.block_dim / self.ws()) as i64;
                    let wv = self.warp_var.ok_or("no warp variable")?;
                    self.counted(self.i32c(nwarps), &mut |l, w| {
                        e(l.b.build_store(wv, w))?;
                        l.nodes(inner)
                    })?;
                }
                Node::Threads { stmts, .. } => {
                    let base = self.warp_base()?;
                    let ws = self.ws() as i64;
                    self.counted(self.i32c(ws), &mut |l, lane| {
                        let tid = e(l.b.build_int_add(base, lane, "tid"))?;
                        for s in stmts {
                            l.stmt(s, tid)?;
                        }
                        Ok(())
                    })?;
                }
                Node::Collectives { stmts, .. } => self.collectives(stmts)?,
                Node::Barrier => {
                    if self.checked {
                        self.call_check(op::BARRIER, 0, self.i64c(0), 0, self.i32c(0))?;
                    }
                }
                Node::Control {
                    level,
                    stmt,
                    body,
                    otherwise,
                    ..
                } => {
                    self.control(*level, stmt, body, otherwise)?;
                }
            }
        }
        Ok(())
    }

    pub(super) fn warp_base(&self) -> R<IntValue<'ctx>> {
        let w = self.current_warp()?;
        e(self.b.build_int_mul(w, self.i32c(self.ws() as i64), "base"))
    }

    /// The representative thread of a level and how many threads share its decision.
    fn scope(&self, level: Level) -> R<(IntValue<'ctx>, i64, u32)> {
        match level {
            Level::Block => Ok((self.i32c(0), self.k.block_dim as i64, op::DIVERGENT_BLOCK)),
            Level::Warp => Ok((self.warp_base()?, self.ws() as i64, op::DIVERGENT_WARP)),
        }
    }

    /// A uniform condition, evaluated once by the representative thread; in
    /// checked mode every thread of the scope evaluates it too, and one that
    /// disagrees is reported as divergence.
    fn uniform_cond(
        &mut self,
        level: Level,
        cond: &dyn Fn(&Self, IntValue<'ctx>) -> R<IntValue<'ctx>>,
    ) -> R<IntValue<'ctx>> {
        let (rep, count, code) = self.scope(level)?;
        let c = cond(self, rep)?;
        if self.checked {
            self.counted(self.i32c(count), &mut |l, i| {
                let tid = e(l.b.build_int_add(rep, i, "tid"))?;
                let ci = cond(l, tid)?;
                let differs = e(l.b.build_int_compare(IntPredicate::NE, ci, c, "d"))?;
                let (report, cont) = (l.bb("diverge"), l.bb("agree"));
                e(l.b.build_conditional_branch(differs, report, cont))?;
                l.b.position_at_end(report);
                l.call_check(code, 0, l.i64c(0), 0, tid)?;
                e(l.b.build_unconditional_branch(cont))?;
                l.b.position_at_end(cont);
                Ok(())
            })?;
        }
        Ok(c)
    }

    fn control(
        &mut self,
        level: Level,
        s: &Stmt,
        body: &[Node<'_>],
        otherwise: &[Node<'_>],
    ) -> R<()> {
        match s {
            Stmt::For {
                var,
                start,
                end,
                step,
                ..
            } => {
                let (rep, _, _) = self.scope(level)?;
                let ptr = self.var_ptr(*var, rep)?;
                let st = self.expr(start, rep)?;
                e(self.b.build_store(ptr, st))?;
                let (cond, bodyb, exit) =
                    (self.bb("ufor"), self.bb("ufor_body"), self.bb("ufor_exit"));
                e(self.b.build_unconditional_branch(cond))?;
                self.b.position_at_end(cond);
                let vt = self.k.var(*var).ty;
                let c = self.uniform_cond(level, &|l, tid| {
                    let v = l.expr(&Expr::Var(*var), tid)?.into_int_value();
                    let end = l.expr(end, tid)?.into_int_value();
                    l.less(vt.scalar, v, end)
                })?;
                e(self.b.build_conditional_branch(c, bodyb, exit))?;
                self.b.position_at_end(bodyb);
                self.nodes(body)?;
                let (rep, _, _) = self.scope(level)?;
                let v = self.expr(&Expr::Var(*var), rep)?.into_int_value();
                let stp = self.expr(step, rep)?.into_int_value();
                let nv = e(self.b.build_int_add(v, stp, "next"))?;
                e(self.b.build_store(ptr, nv))?;
                e(self.b.build_unconditional_branch(cond))?;
                self.b.position_at_end(exit);
            }
            Stmt::While { cond, .. } => {
                let (head, bodyb, exit) = (
                    self.bb("uwhile"),
                    self.bb("uwhile_body"),
                    self.bb("uwhile_exit"),
                );
                e(self.b.build_unconditional_branch(head))?;
                self.b.position_at_end(head);
                let c =
                    self.uniform_cond(level, &|l, tid| Ok(l.expr(cond, tid)?.into_int_value()))?;
                e(self.b.build_conditional_branch(c, bodyb, exit))?;
                self.b.position_at_end(bodyb);
                self.nodes(body)?;
                e(self.b.build_unconditional_branch(head))?;
                self.b.position_at_end(exit);
            }
            Stmt::Unroll { var, count, .. } => {
                // Constant bounds: uniform by construction, nothing to check.
                let (rep, _, _) = self.scope(level)?;
                let ptr = self.var_ptr(*var, rep)?;
                self.counted(self.i32c(*count as i64), &mut |l, i| {
                    e(l.b.build_store(ptr, i))?;
                    l.nodes(body)
                })?;
            }
            Stmt::If { cond, .. } => {
                let c =
                    self.uniform_cond(level, &|l, tid| Ok(l.expr(cond, tid)?.into_int_value()))?;
                let (t, f, j) = (self.bb("uthen"), self.bb("uelse"), self.bb("uend"));
                e(self.b.build_conditional_branch(c, t, f))?;
                self.b.position_at_end(t);
                self.nodes(body)?;
                e(self.b.build_unconditional_branch(j))?;
                self.b.position_at_end(f);
                self.nodes(otherwise)?;
                e(self.b.build_unconditional_branch(j))?;
                self.b.position_at_end(j);
            }
            other => return Err(format!("not a control statement: {other:?}")),
        }
        Ok(())
    }

    fn less(&self, s: Scalar, a: IntValue<'ctx>, b: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        let p = if s == Scalar::U32 {
            IntPredicate::ULT
        } else {
            IntPredicate::SLT
        };
        e(self.b.build_int_compare(p, a, b, "lt"))
    }

    // ---- collectives ------------------------------------------------------

    /// Scratch row `row` (0 value, 1 argument, 2/3 butterfly) of collective
    /// `j` of a batch, at `lane`.
    fn scratch_ptr(&self, j: usize, row: u64, lane: IntValue<'ctx>) -> R<PointerValue<'ctx>> {
        let ws = self.ws() as u64;
        let base = self.scratch + (j as u64 * 4 + row) * ws * 4;
        let l64 = e(self.b.build_int_s_extend(lane, self.cx.i64_type(), "l"))?;
        let off = e(self.b.build_int_mul(l64, self.i64c(4), "o"))?;
        let off = e(self.b.build_int_add(off, self.i64c(base as i64), "o"))?;
        self.byte_ptr(self.frame, off)
    }

    /// HIP's source-lane rule for a shuffle, then ds_bpermute's: the lane
    /// read is (index mod warp size).
    fn shuffle_source(
        &self,
        op: &Collective,
        lane: IntValue<'ctx>,
        a: IntValue<'ctx>,
        width: i64,
    ) -> R<IntValue<'ctx>> {
        let w = self.i32c(width);
        let wm1 = self.i32c(width - 1);
        let not_wm1 = self.i32c(!(width - 1));
        let index = match op {
            Collective::ShuffleXor { .. } => {
                let idx = e(self.b.build_xor(lane, a, "idx"))?;
                let seg_end = e(self.b.build_int_add(lane, w, "se"))?;
                let seg_end = e(self.b.build_and(seg_end, not_wm1, "se"))?;
                let out = e(self
                    .b
                    .build_int_compare(IntPredicate::SGE, idx, seg_end, "out"))?;
                e(self.b.build_select(out, lane, idx, "idx"))?.into_int_value()
            }
            Collective::ShuffleDown { .. } => {
                let idx = e(self.b.build_int_add(lane, a, "idx"))?;
                let pos = e(self.b.build_and(lane, wm1, "pos"))?;
                let pos = e(self.b.build_int_add(pos, a, "pos"))?;
                let out = e(self.b.build_int_compare(IntPredicate::SGE, pos, w, "out"))?;
                e(self.b.build_select(out, lane, idx, "idx"))?.into_int_value()
            }
            _ => {
                let seg = e(self.b.build_and(lane, not_wm1, "seg"))?;
                e(self.b.build_int_add(a, seg, "idx"))?
            }
        };
        e(self
            .b
            .build_and(index, self.i32c(self.ws() as i64 - 1), "src"))
    }

    /// A batch of independent collectives: one pass in which every lane
    /// contributes, the butterfly rounds of the reductions, and one pass in
    /// which every lane takes its result.
    fn collectives(&mut self, stmts: &[&Stmt]) -> R<()> {
        match stmts {
            [Stmt::Collective {
                dst,
                op: Collective::Mma { instr, a, b },
                value,
            }] => return self.mma(*dst, *instr, a, b, value),
            [Stmt::Collective {
                dst,
                op: Collective::LoadMatrix { buf, count, trans },
                value,
            }] => return self.load_matrix(*dst, *buf, *count, *trans, value),
            _ => {}
        }
        let mut cs: Vec<(VarId, &Collective, &Expr)> = Vec::new();
        for s in stmts {
            match s {
                Stmt::Collective { dst, op, value } => cs.push((*dst, op, value)),
                other => return Err(format!("not a collective: {other:?}")),
            }
        }
        let ws = self.ws() as i64;
        let base = self.warp_base()?;
        let i32t = self.cx.i32_type();
        let arg = |op: &Collective| op.lane_arg().map(|(a, w)| (a.clone(), w as i64));
        let is_red = |op: &Collective| matches!(op, Collective::WarpSum | Collective::WarpMax);
        // Phase 1: every lane contributes its values (and lane arguments).
        self.counted(self.i32c(ws), &mut |l, lane| {
            let tid = e(l.b.build_int_add(base, lane, "tid"))?;
            for (j, (_, op, value)) in cs.iter().enumerate() {
                let v = l.expr(value, tid)?;
                let bits = e(l.b.build_bit_cast(v, i32t, "bits"))?;
                e(l.b.build_store(l.scratch_ptr(j, 0, lane)?, bits))?;
                if let Some((a, _)) = arg(op) {
                    let av = l.expr(&a, tid)?;
                    e(l.b.build_store(l.scratch_ptr(j, 1, lane)?, av))?;
                }
            }
            Ok(())
        })?;
        // The butterfly of af_warp_sum/af_warp_max, round by round.
        let mut from = 0u64;
        if cs.iter().any(|c| is_red(c.1)) {
            let mut o = ws / 2;
            while o > 0 {
                let to = if from == 2 { 3 } else { 2 };
                self.counted(self.i32c(ws), &mut |l, lane| {
                    let other = e(l.b.build_xor(lane, l.i32c(o), "x"))?;
                    for (j, (dst, op, _)) in cs.iter().enumerate().filter(|(_, c)| is_red(c.1)) {
                        let t = l.k.var(*dst).ty;
                        let vty = l.ty(t);
                        let a = e(l.b.build_load(i32t, l.scratch_ptr(j, from, lane)?, "a"))?;
                        let b = e(l.b.build_load(i32t, l.scratch_ptr(j, from, other)?, "b"))?;
                        let a = e(l.b.build_bit_cast(a, vty, "a"))?;
                        let b = e(l.b.build_bit_cast(b, vty, "b"))?;
                        let r = if matches!(op, Collective::WarpSum) {
                            l.arith(BinOp::Add, t.scalar, a, b)?
                        } else {
                            l.maxmin(true, t.scalar, a, b)?
                        };
                        let r = e(l.b.build_bit_cast(r, i32t, "r"))?;
                        e(l.b.build_store(l.scratch_ptr(j, to, lane)?, r))?;
                    }
                    Ok(())
                })?;
                from = to;
                o /= 2;
            }
        }
        // Phase 2: every lane takes its result.
        self.counted(self.i32c(ws), &mut |l, lane| {
            let tid = e(l.b.build_int_add(base, lane, "tid"))?;
            for (j, (dst, op, _)) in cs.iter().enumerate() {
                let vty = l.ty(l.k.var(*dst).ty);
                let bits = match arg(op) {
                    None => e(l.b.build_load(i32t, l.scratch_ptr(j, from, lane)?, "r"))?,
                    Some((_, width)) => {
                        let a = e(l.b.build_load(i32t, l.scratch_ptr(j, 1, lane)?, "a"))?
                            .into_int_value();
                        let src = l.shuffle_source(op, lane, a, width)?;
                        e(l.b.build_load(i32t, l.scratch_ptr(j, 0, src)?, "v"))?
                    }
                };
                let v = e(l.b.build_bit_cast(bits, vty, "v"))?;
                e(l.b.build_store(l.var_ptr(*dst, tid)?, v))?;
            }
            Ok(())
        })?;
        Ok(())
    }

    // ---- statements -------------------------------------------------------

    pub(super) fn var_ptr(&self, v: VarId, tid: IntValue<'ctx>) -> R<PointerValue<'ctx>> {
        match self.slots[v.0 as usize] {
            Slot::Local(p) => Ok(p),
            Slot::Frame(off) => {
                let size = self.k.var(v).ty.size_bytes().max(1) as i64;
                let t64 = e(self.b.build_int_s_extend(tid, self.cx.i64_type(), "t"))?;
                let o = e(self.b.build_int_mul(t64, self.i64c(size), "o"))?;
                let o = e(self.b.build_int_add(o, self.i64c(off as i64), "o"))?;
                self.byte_ptr(self.frame, o)
            }
        }
    }

    fn stmt(&mut self, s: &Stmt, tid: IntValue<'ctx>) -> R<()> {
        match s {
            Stmt::Let(v, x) | Stmt::Assign(v, x) => {
                let val = self.expr(x, tid)?;
                e(self.b.build_store(self.var_ptr(*v, tid)?, val))?;
            }
            Stmt::Store { buf, index, value } => {
                let val = self.expr(value, tid)?;
                let lanes = type_of(self.k, value)?.lanes as u32;
                let idx = self.index(index, tid)?;
                let store = |l: &Self| -> R<()> {
                    let p = l.elem_ptr(*buf, idx, tid)?;
                    let st = e(l.b.build_store(p, val))?;
                    st.set_alignment(l.k.buffer(*buf).elem.size_bytes())
                        .map_err(|x| x.to_string())?;
                    Ok(())
                };
                // Local accesses are proven in bounds by the verifier.
                if self.checked && self.k.buffer(*buf).space != Space::Local {
                    let code = if self.k.buffer(*buf).space == Space::Shared {
                        op::STORE_SHARED
                    } else {
                        op::STORE_GLOBAL
                    };
                    let ok = self.call_check(code, buf.0, idx, lanes, tid)?;
                    let (doit, cont) = (self.bb("store"), self.bb("stored"));
                    e(self.b.build_conditional_branch(ok, doit, cont))?;
                    self.b.position_at_end(doit);
                    store(self)?;
                    e(self.b.build_unconditional_branch(cont))?;
                    self.b.position_at_end(cont);
                } else {
                    store(self)?;
                }
            }
            Stmt::For {
                var,
                start,
                end,
                step,
                body,
            } => {
                let ptr = self.var_ptr(*var, tid)?;
                let st = self.expr(start, tid)?;
                e(self.b.build_store(ptr, st))?;
                let (cond, bodyb, exit) =
                    (self.bb("for"), self.bb("for_body"), self.bb("for_exit"));
                e(self.b.build_unconditional_branch(cond))?;
                self.b.position_at_end(cond);
                let vt = self.k.var(*var).ty;
                let v = self.expr(&Expr::Var(*var), tid)?.into_int_value();
                let en = self.expr(end, tid)?.into_int_value();
                let c = self.less(vt.scalar, v, en)?;
                e(self.b.build_conditional_branch(c, bodyb, exit))?;
                self.b.position_at_end(bodyb);
                for s in body {
                    self.stmt(s, tid)?;
                }
                let v = self.expr(&Expr::Var(*var), tid)?.into_int_value();
                let sp = self.expr(step, tid)?.into_int_value();
                let nv = e(self.b.build_int_add(v, sp, "next"))?;
                e(self.b.build_store(self.var_ptr(*var, tid)?, nv))?;
                e(self.b.build_unconditional_branch(cond))?;
                self.b.position_at_end(exit);
            }
            Stmt::If {
                cond,
                then,
                otherwise,
            } => {
                let c = self.expr(cond, tid)?.into_int_value();
                let (t, f, j) = (self.bb("then"), self.bb("else"), self.bb("endif"));
                e(self.b.build_conditional_branch(c, t, f))?;
                self.b.position_at_end(t);
                for s in then {
                    self.stmt(s, tid)?;
                }
                e(self.b.build_unconditional_branch(j))?;
                self.b.position_at_end(f);
                for s in otherwise {
                    self.stmt(s, tid)?;
                }
                e(self.b.build_unconditional_branch(j))?;
                self.b.position_at_end(j);
            }
            Stmt::While { cond, body } => {
                let (head, bodyb, exit) = (
                    self.bb("while"),
                    self.bb("while_body"),
                    self.bb("while_exit"),
                );
                e(self.b.build_unconditional_branch(head))?;
                self.b.position_at_end(head);
                let c = self.expr(cond, tid)?.into_int_value();
                e(self.b.build_conditional_branch(c, bodyb, exit))?;
                self.b.position_at_end(bodyb);
                for s in body {
                    self.stmt(s, tid)?;
                }
                e(self.b.build_unconditional_branch(head))?;
                self.b.position_at_end(exit);
            }
            Stmt::Unroll { var, count, body } => {
                let ptr = self.var_ptr(*var, tid)?;
                self.counted(self.i32c(*count as i64), &mut |l, i| {
                    e(l.b.build_store(ptr, i))?;
                    for s in body {
                        l.stmt(s, tid)?;
                    }
                    Ok(())
                })?;
            }
            Stmt::Prefetch { buf, index } => {
                // Unchecked even in checked mode: a prefetch never faults.
                let idx = self.index(index, tid)?;
                let p = self.elem_ptr(*buf, idx, tid)?;
                let i32t = self.cx.i32_type();
                let f = Intrinsic::find("llvm.prefetch")
                    .and_then(|i| {
                        i.get_declaration(
                            self.m,
                            &[self.cx.ptr_type(AddressSpace::default()).into()],
                        )
                    })
                    .ok_or("no llvm.prefetch")?;
                let args = [
                    p.into(),
                    i32t.const_int(0, false).into(),
                    i32t.const_int(3, false).into(),
                    i32t.const_int(1, false).into(),
                ];
                e(self.b.build_call(f, &args, ""))?;
            }
            Stmt::Comment(_) => {}
            Stmt::Barrier | Stmt::Collective { .. } => {
                return Err("a barrier or collective inside a thread region (split bug)".into())
            }
        }
        Ok(())
    }

    /// An index expression as i64 (sign- or zero-extended by its type).
    fn index(&self, x: &Expr, tid: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        let t = type_of(self.k, x)?;
        let v = self.expr(x, tid)?.into_int_value();
        let i64t = self.cx.i64_type();
        match t.scalar {
            Scalar::I64 => Ok(v),
            Scalar::U32 => e(self.b.build_int_z_extend(v, i64t, "idx")),
            _ => e(self.b.build_int_s_extend(v, i64t, "idx")),
        }
    }

    pub(super) fn elem_ptr(
        &self,
        buf: BufId,
        idx: IntValue<'ctx>,
        tid: IntValue<'ctx>,
    ) -> R<PointerValue<'ctx>> {
        let b = self.k.buffer(buf);
        let size = self.i64c(b.elem.size_bytes() as i64);
        let off = e(self.b.build_int_mul(idx, size, "off"))?;
        match b.space {
            Space::Local => match self.locals.get(&buf.0) {
                Some(LocalSlot::Alloca(p)) => self.byte_ptr(*p, off),
                Some(LocalSlot::Frame { offset, stride }) => {
                    let t64 = e(self.b.build_int_s_extend(tid, self.cx.i64_type(), "t"))?;
                    let at = e(self.b.build_int_mul(t64, self.i64c(*stride as i64), "o"))?;
                    let at = e(self.b.build_int_add(at, self.i64c(*offset as i64), "o"))?;
                    let at = e(self.b.build_int_add(at, off, "o"))?;
                    self.byte_ptr(self.frame, at)
                }
                None => Err("local array without a slot".into()),
            },
            Space::Global => {
                let base = *self
                    .bases
                    .get(&buf.0)
                    .ok_or("global buffer without a base")?;
                self.byte_ptr(base, off)
            }
            Space::Shared => {
                let so = *self
                    .layout
                    .shared
                    .get(&buf.0)
                    .ok_or("shared buffer without an offset")?;
                let off = e(self.b.build_int_add(off, self.i64c(so as i64), "off"))?;
                self.byte_ptr(self.frame, off)
            }
        }
    }

    // ---- expressions ------------------------------------------------------

    pub(super) fn expr(&self, x: &Expr, tid: IntValue<'ctx>) -> R<BasicValueEnum<'ctx>> {
        let t = type_of(self.k, x)?;
        Ok(match x {
            Expr::Lit(l) => match *l {
                Lit::F32(v) => self.cx.f32_type().const_float(v as f64).into(),
                Lit::I32(v) => self.i32c(v as i64).into(),
                Lit::U32(v) => self.cx.i32_type().const_int(v as u64, false).into(),
                Lit::I64(v) => self.i64c(v).into(),
                Lit::Bool(v) => self.cx.bool_type().const_int(v as u64, false).into(),
            },
            Expr::Var(v) => e(self.b.build_load(self.ty(t), self.var_ptr(*v, tid)?, "v"))?,
            Expr::Special(s) => {
                let ws = self.i32c(self.ws() as i64);
                match s {
                    Special::ThreadIdx => tid.into(),
                    Special::LaneId => e(self.b.build_int_unsigned_rem(tid, ws, "lane"))?.into(),
                    Special::WarpId => e(self.b.build_int_unsigned_div(tid, ws, "warp"))?.into(),
                    Special::BlockIdx(d) => self.block[dim(*d)].into(),
                    Special::GridDim(d) => {
                        let off = info::GRID + 4 * dim(*d) as u64;
                        self.load_field(off, self.cx.i32_type().into())?
                    }
                    Special::BlockDim => self.i32c(self.k.block_dim as i64).into(),
                    Special::WarpSize => ws.into(),
                }
            }
            Expr::Unary(op, a) => {
                let v = self.expr(a, tid)?;
                match (op, v) {
                    (UnOp::Neg, BasicValueEnum::FloatValue(f)) => {
                        e(self.b.build_float_neg(f, "neg"))?.into()
                    }
                    (UnOp::Neg, BasicValueEnum::IntValue(i)) => {
                        e(self.b.build_int_neg(i, "neg"))?.into()
                    }
                    (UnOp::Not, BasicValueEnum::IntValue(i)) => {
                        e(self.b.build_not(i, "not"))?.into()
                    }
                    _ => return Err(format!("{op:?} on {t}")),
                }
            }
            Expr::Binary(op, a, b) => {
                if *op == BinOp::Mul {
                    if let Some((codes, times)) = self.fp8_times(a, b)? {
                        let lanes = type_of(self.k, codes)?.lanes;
                        let v = self.expr(codes, tid)?;
                        return self.fp8_to_f32(v, lanes, times);
                    }
                }
                let s = type_of(self.k, a)?.scalar;
                let (a, b) = (self.expr(a, tid)?, self.expr(b, tid)?);
                self.arith(*op, s, a, b)?
            }
            Expr::Cmp(op, a, b) => {
                let s = type_of(self.k, a)?.scalar;
                let (a, b) = (self.expr(a, tid)?, self.expr(b, tid)?);
                if s == Scalar::F32 {
                    let p = match op {
                        CmpOp::Eq => FloatPredicate::OEQ,
                        CmpOp::Ne => FloatPredicate::UNE,
                        CmpOp::Lt => FloatPredicate::OLT,
                        CmpOp::Le => FloatPredicate::OLE,
                        CmpOp::Gt => FloatPredicate::OGT,
                        CmpOp::Ge => FloatPredicate::OGE,
                    };
                    e(self.b.build_float_compare(
                        p,
                        a.into_float_value(),
                        b.into_float_value(),
                        "cmp",
                    ))?
                    .into()
                } else {
                    let u = s == Scalar::U32 || s == Scalar::Bool;
                    let p = match (op, u) {
                        (CmpOp::Eq, _) => IntPredicate::EQ,
                        (CmpOp::Ne, _) => IntPredicate::NE,
                        (CmpOp::Lt, false) => IntPredicate::SLT,
                        (CmpOp::Le, false) => IntPredicate::SLE,
                        (CmpOp::Gt, false) => IntPredicate::SGT,
                        (CmpOp::Ge, false) => IntPredicate::SGE,
                        (CmpOp::Lt, true) => IntPredicate::ULT,
                        (CmpOp::Le, true) => IntPredicate::ULE,
                        (CmpOp::Gt, true) => IntPredicate::UGT,
                        (CmpOp::Ge, true) => IntPredicate::UGE,
                    };
                    e(self
                        .b
                        .build_int_compare(p, a.into_int_value(), b.into_int_value(), "cmp"))?
                    .into()
                }
            }
            Expr::Select(c, a, b) => {
                let c = self.expr(c, tid)?.into_int_value();
                let (a, b) = (self.expr(a, tid)?, self.expr(b, tid)?);
                e(self.b.build_select(c, a, b, "sel"))?
            }
            Expr::Math(f, args) => {
                let vals: Vec<BasicValueEnum<'ctx>> =
                    args.iter().map(|a| self.expr(a, tid)).collect::<R<_>>()?;
                self.math(*f, t.scalar, &vals)?
            }
            Expr::Cast(to, a) => {
                let ta = type_of(self.k, a)?;
                let v = self.expr(a, tid)?;
                self.cast(ta.scalar, *to, v, ta.lanes)?
            }
            Expr::Load { buf, index, lanes } => {
                let idx = self.index(index, tid)?;
                let lty = self.ty(t);
                let load = |l: &Self| -> R<BasicValueEnum<'ctx>> {
                    let p = l.elem_ptr(*buf, idx, tid)?;
                    let v = e(l.b.build_load(lty, p, "ld"))?;
                    if let Some(inst) = v.as_instruction_value() {
                        inst.set_alignment(l.k.buffer(*buf).elem.size_bytes())
                            .map_err(|x| x.to_string())?;
                    }
                    Ok(v)
                };
                if self.checked && self.k.buffer(*buf).space != Space::Local {
                    let code = if self.k.buffer(*buf).space == Space::Shared {
                        op::LOAD_SHARED
                    } else {
                        op::LOAD_GLOBAL
                    };
                    let ok = self.call_check(code, buf.0, idx, *lanes as u32, tid)?;
                    let here = self.b.get_insert_block().ok_or("no block")?;
                    let (doit, cont) = (self.bb("load"), self.bb("loaded"));
                    e(self.b.build_conditional_branch(ok, doit, cont))?;
                    self.b.position_at_end(doit);
                    let v = load(self)?;
                    let doit_end = self.b.get_insert_block().ok_or("no block")?;
                    e(self.b.build_unconditional_branch(cont))?;
                    self.b.position_at_end(cont);
                    let phi = e(self.b.build_phi(lty, "ldv"))?;
                    phi.add_incoming(&[(&v, doit_end), (&lty.const_zero(), here)]);
                    phi.as_basic_value()
                } else {
                    load(self)?
                }
            }
            Expr::Lane(v, i) => {
                let v = self.expr(v, tid)?.into_vector_value();
                e(self
                    .b
                    .build_extract_element(v, self.i32c(*i as i64), "lane"))?
            }
            Expr::Vector(items) => {
                let vt = self.ty(t).into_vector_type();
                let mut acc = vt.get_undef();
                for (i, it) in items.iter().enumerate() {
                    let v = self.expr(it, tid)?;
                    acc = e(self
                        .b
                        .build_insert_element(acc, v, self.i32c(i as i64), "vec"))?;
                }
                acc.into()
            }
        })
    }

    fn arith(
        &self,
        op: BinOp,
        s: Scalar,
        a: BasicValueEnum<'ctx>,
        b: BasicValueEnum<'ctx>,
    ) -> R<BasicValueEnum<'ctx>> {
        if let (BasicValueEnum::VectorValue(a), BasicValueEnum::VectorValue(b)) = (a, b) {
            return Ok(match op {
                BinOp::Add => e(self.b.build_float_add(a, b, "add"))?,
                BinOp::Sub => e(self.b.build_float_sub(a, b, "sub"))?,
                BinOp::Mul => e(self.b.build_float_mul(a, b, "mul"))?,
                BinOp::Div => e(self.b.build_float_div(a, b, "div"))?,
                _ => return Err(format!("{op:?} on a vector")),
            }
            .into());
        }
        if s == Scalar::F32 {
            let (a, b) = (a.into_float_value(), b.into_float_value());
            return Ok(match op {
                BinOp::Add => e(self.b.build_float_add(a, b, "add"))?,
                BinOp::Sub => e(self.b.build_float_sub(a, b, "sub"))?,
                BinOp::Mul => e(self.b.build_float_mul(a, b, "mul"))?,
                BinOp::Div => e(self.b.build_float_div(a, b, "div"))?,
                _ => return Err(format!("{op:?} on f32")),
            }
            .into());
        }
        let (a, b) = (a.into_int_value(), b.into_int_value());
        let unsigned = s == Scalar::U32;
        // Integer division by zero traps on x86; a GPU returns garbage. Divide
        // by one instead so that a buggy kernel fails a test, not the process.
        let safe = |b: IntValue<'ctx>| -> R<IntValue<'ctx>> {
            let zero = b.get_type().const_zero();
            let one = b.get_type().const_int(1, false);
            let is0 = e(self.b.build_int_compare(IntPredicate::EQ, b, zero, "z"))?;
            Ok(e(self.b.build_select(is0, one, b, "d"))?.into_int_value())
        };
        Ok(match op {
            BinOp::Add => e(self.b.build_int_add(a, b, "add"))?,
            BinOp::Sub => e(self.b.build_int_sub(a, b, "sub"))?,
            BinOp::Mul => e(self.b.build_int_mul(a, b, "mul"))?,
            BinOp::Div if unsigned => e(self.b.build_int_unsigned_div(a, safe(b)?, "div"))?,
            BinOp::Div => e(self.b.build_int_signed_div(a, safe(b)?, "div"))?,
            BinOp::Rem if unsigned => e(self.b.build_int_unsigned_rem(a, safe(b)?, "rem"))?,
            BinOp::Rem => e(self.b.build_int_signed_rem(a, safe(b)?, "rem"))?,
            BinOp::And => e(self.b.build_and(a, b, "and"))?,
            BinOp::Or => e(self.b.build_or(a, b, "or"))?,
            BinOp::Xor => e(self.b.build_xor(a, b, "xor"))?,
            BinOp::Shl => e(self.b.build_left_shift(a, b, "shl"))?,
            BinOp::Shr => e(self.b.build_right_shift(a, b, !unsigned, "shr"))?,
        }
        .into())
    }

    pub(super) fn intrinsic(
        &self,
        name: &str,
        ty: BasicTypeEnum<'ctx>,
        args: &[BasicValueEnum<'ctx>],
    ) -> R<BasicValueEnum<'ctx>> {
        let i = Intrinsic::find(name).ok_or_else(|| format!("no intrinsic {name}"))?;
        let f = i
            .get_declaration(self.m, &[ty])
            .ok_or_else(|| format!("no declaration of {name}"))?;
        let args: Vec<_> = args.iter().map(|a| (*a).into()).collect();
        e(self.b.build_call(f, &args, "m"))?
            .try_as_basic_value()
            .basic()
            .ok_or_else(|| format!("{name} returns a value"))
    }

    pub(super) fn maxmin(
        &self,
        max: bool,
        s: Scalar,
        a: BasicValueEnum<'ctx>,
        b: BasicValueEnum<'ctx>,
    ) -> R<BasicValueEnum<'ctx>> {
        if s == Scalar::F32 {
            // fmaxf/fminf semantics: llvm.maxnum/minnum.
            let n = if max { "llvm.maxnum" } else { "llvm.minnum" };
            return self.intrinsic(n, a.get_type(), &[a, b]);
        }
        let p = match (max, s == Scalar::U32) {
            (true, false) => IntPredicate::SGT,
            (true, true) => IntPredicate::UGT,
            (false, false) => IntPredicate::SLT,
            (false, true) => IntPredicate::ULT,
        };
        let (ai, bi) = (a.into_int_value(), b.into_int_value());
        let c = e(self.b.build_int_compare(p, ai, bi, "c"))?;
        e(self.b.build_select(c, a, b, "mm"))
    }

    fn math(&self, f: MathFn, s: Scalar, v: &[BasicValueEnum<'ctx>]) -> R<BasicValueEnum<'ctx>> {
        let f32t: BasicTypeEnum<'ctx> = self.cx.f32_type().into();
        match f {
            MathFn::Exp2 => {
                let lanes = match v[0] {
                    BasicValueEnum::VectorValue(x) => x.get_type().get_size() as u8,
                    _ => 1,
                };
                self.exp2(v[0], lanes)
            }
            MathFn::Log2 => self.intrinsic("llvm.log2", f32t, v),
            MathFn::Sqrt => self.intrinsic("llvm.sqrt", f32t, v),
            MathFn::Fma => self.intrinsic("llvm.fma", v[0].get_type(), v),
            MathFn::Rsqrt => {
                let r = self.intrinsic("llvm.sqrt", f32t, v)?.into_float_value();
                let one = self.cx.f32_type().const_float(1.0);
                Ok(e(self.b.build_float_div(one, r, "rsqrt"))?.into())
            }
            MathFn::Max => self.maxmin(true, s, v[0], v[1]),
            MathFn::Min => self.maxmin(false, s, v[0], v[1]),
            MathFn::Abs if s == Scalar::F32 => self.intrinsic("llvm.fabs", f32t, v),
            MathFn::Abs => {
                let i = v[0].into_int_value();
                let neg = e(self.b.build_int_neg(i, "n"))?;
                let is_neg = e(self.b.build_int_compare(
                    IntPredicate::SLT,
                    i,
                    i.get_type().const_zero(),
                    "c",
                ))?;
                e(self.b.build_select(is_neg, neg, i, "abs"))
            }
            MathFn::Tanh => {
                let fty = self.cx.f32_type().fn_type(&[f32t.into()], false);
                let func = self
                    .m
                    .get_function("tanhf")
                    .unwrap_or_else(|| self.m.add_function("tanhf", fty, None));
                e(self.b.build_call(func, &[v[0].into()], "tanh"))?
                    .try_as_basic_value()
                    .basic()
                    .ok_or_else(|| "tanhf returns a value".to_string())
            }
        }
    }
}

fn dim(d: Dim) -> usize {
    match d {
        Dim::X => 0,
        Dim::Y => 1,
        Dim::Z => 2,
    }
}
