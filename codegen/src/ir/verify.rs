//! The verifier: what every backend may assume about a kernel.
//!
//! [`verify`] checks types, scoping, the target's limits and, through a
//! uniformity analysis, that every barrier sits under block-uniform control
//! flow and every warp collective under warp-uniform control flow. The CPU
//! backend relies on exactly these guarantees to split a kernel at barriers
//! and collectives. All problems of a kernel are reported together.

use std::collections::{HashMap, HashSet};
use std::fmt;

use super::*;
use crate::target::{Arch, Target};

/// One problem found in a kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyError {
    /// The kernel's name.
    pub kernel: String,
    /// Where: a path of statement indices such as `body[3].for.body[1]`.
    pub at: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kernel `{}` at {}: {}",
            self.kernel, self.at, self.message
        )
    }
}

/// Every problem found in a kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyErrors(pub Vec<VerifyError>);

impl fmt::Display for VerifyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for VerifyErrors {}

/// What the verifier learned about a kernel that backends use.
#[derive(Clone, Debug, PartialEq)]
pub struct Analysis {
    /// Uniformity of every variable, indexed by [`VarId`].
    pub uniformity: Vec<Uniformity>,
}

impl Analysis {
    /// Uniformity of one variable.
    pub fn of(&self, v: VarId) -> Uniformity {
        self.uniformity[v.0 as usize]
    }
}

/// The type of an expression, or why it has none.
pub fn type_of(k: &Kernel, e: &Expr) -> Result<Ty, String> {
    use Scalar::*;
    let scalar = |t: Ty, what: &str| -> Result<Scalar, String> {
        if t.lanes == 1 {
            Ok(t.scalar)
        } else {
            Err(format!("{what} needs scalar operands, got {t}"))
        }
    };
    Ok(match e {
        Expr::Lit(l) => Ty::scalar(match l {
            Lit::F32(_) => F32,
            Lit::I32(_) => I32,
            Lit::U32(_) => U32,
            Lit::I64(_) => I64,
            Lit::Bool(_) => Bool,
        }),
        Expr::Var(v) => {
            let var = k
                .vars
                .get(v.0 as usize)
                .ok_or_else(|| format!("variable #{} does not exist", v.0))?;
            var.ty
        }
        Expr::Special(_) => Ty::scalar(I32),
        Expr::Unary(op, a) => {
            let t = scalar(type_of(k, a)?, "a unary operator")?;
            match op {
                UnOp::Neg if t.is_arith() && t != U32 => Ty::scalar(t),
                UnOp::Not if t == Bool => Ty::scalar(t),
                _ => return Err(format!("{op:?} is not defined on {t}")),
            }
        }
        Expr::Binary(op, a, b) => {
            let (ta, tb) = (type_of(k, a)?, type_of(k, b)?);
            if ta != tb {
                return Err(format!("{op:?} on mismatched types {ta} and {tb}"));
            }
            // f32 vectors: elementwise + - * /.
            if ta.lanes > 1 && ta.scalar == F32 {
                return match op {
                    BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div => Ok(ta),
                    _ => Err(format!("{op:?} is not defined on {ta}")),
                };
            }
            let t = scalar(ta, "arithmetic")?;
            let ok = match op {
                BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div => t.is_arith(),
                BinOp::Rem | BinOp::Xor | BinOp::Shl | BinOp::Shr => t.is_int(),
                BinOp::And | BinOp::Or => t.is_int() || t == Bool,
            };
            if !ok {
                return Err(format!("{op:?} is not defined on {t}"));
            }
            Ty::scalar(t)
        }
        Expr::Cmp(op, a, b) => {
            let (ta, tb) = (type_of(k, a)?, type_of(k, b)?);
            if ta != tb {
                return Err(format!("{op:?} on mismatched types {ta} and {tb}"));
            }
            let t = scalar(ta, "a comparison")?;
            let ok = t.is_arith() || (t == Bool && matches!(op, CmpOp::Eq | CmpOp::Ne));
            if !ok {
                return Err(format!("{op:?} is not defined on {t}"));
            }
            Ty::scalar(Bool)
        }
        Expr::Select(c, a, b) => {
            let tc = type_of(k, c)?;
            if tc != Ty::scalar(Bool) {
                return Err(format!("select condition must be bool, got {tc}"));
            }
            let (ta, tb) = (type_of(k, a)?, type_of(k, b)?);
            if ta != tb {
                return Err(format!("select arms have different types {ta} and {tb}"));
            }
            ta
        }
        Expr::Math(f, args) => {
            if args.len() != f.arity() {
                return Err(format!(
                    "{f:?} takes {} arguments, got {}",
                    f.arity(),
                    args.len()
                ));
            }
            let t0 = type_of(k, &args[0])?;
            for a in &args[1..] {
                let t = type_of(k, a)?;
                if t != t0 {
                    return Err(format!("{f:?} on mismatched types {t0} and {t}"));
                }
            }
            // f32 vectors: elementwise fma, max, min and exp2.
            if t0.lanes > 1 && t0.scalar == F32 {
                return match f {
                    MathFn::Fma | MathFn::Max | MathFn::Min | MathFn::Exp2 => Ok(t0),
                    _ => Err(format!("{f:?} is not defined on {t0}")),
                };
            }
            let t = scalar(t0, "a math intrinsic")?;
            let ok = match f {
                MathFn::Max | MathFn::Min | MathFn::Abs => t.is_arith(),
                _ => t == F32,
            };
            if !ok {
                return Err(format!("{f:?} is not defined on {t}"));
            }
            Ty::scalar(t)
        }
        Expr::Cast(to, a) => {
            let ta = type_of(k, a)?;
            // Float vectors convert elementwise: storage floats to f32, f32
            // to f16 or bf16, and fp8 to f16 or bf16 (exact: every fp8 value is
            // one of theirs).
            if ta.lanes > 1 {
                let ok = matches!(
                    (ta.scalar, *to),
                    (F16 | BF16 | F8E4M3 | F32, F32) | (F32 | F8E4M3, F16 | BF16)
                );
                if !ok {
                    return Err(format!("cannot convert {ta} to {to} elementwise"));
                }
                return Ok(Ty::vector(*to, ta.lanes));
            }
            let t = scalar(ta, "a conversion")?;
            if *to == Bool && t != Bool {
                return Err(format!("cannot convert {t} to bool; compare instead"));
            }
            Ty::scalar(*to)
        }
        Expr::Load { buf, index, lanes } => {
            let b = k
                .buffers
                .get(buf.0 as usize)
                .ok_or_else(|| format!("buffer #{} does not exist", buf.0))?;
            let ti = type_of(k, index)?;
            if ti.lanes != 1 || !ti.scalar.is_int() {
                return Err(format!("load index must be an integer, got {ti}"));
            }
            check_lanes(*lanes, b.elem, b.space, k.target)?;
            Ty::vector(b.elem, *lanes)
        }
        Expr::Lane(v, i) => {
            let t = type_of(k, v)?;
            if t.lanes == 1 || *i >= t.lanes {
                return Err(format!("lane {i} of {t}"));
            }
            Ty::scalar(t.scalar)
        }
        Expr::Vector(items) => {
            let n = u8::try_from(items.len()).unwrap_or(0);
            let t0 = type_of(k, items.first().ok_or("empty vector")?)?;
            let s = scalar(t0, "a vector element")?;
            for it in &items[1..] {
                let t = type_of(k, it)?;
                if t != t0 {
                    return Err(format!("vector elements of types {t0} and {t}"));
                }
            }
            if n < 2 {
                return Err("a vector has 2, 4, 8 or 16 lanes (32 at the host target)".into());
            }
            check_lanes(n, s, Space::Local, k.target)?;
            Ty::vector(s, n)
        }
    })
}

/// A vector has 2, 4, 8 or 16 lanes (also 32 at the host target, which no
/// GPU runs: 32 one- or two-byte elements fill one AVX-512 register, and
/// their f32 values two); one that goes to or from global or shared memory
/// is at most 16 bytes (one GPU vector access; 64, one AVX-512 register, at
/// the host target).
fn check_lanes(lanes: u8, elem: Scalar, space: Space, target: Target) -> Result<(), String> {
    let host = target.arch == Arch::Host;
    if !(matches!(lanes, 1 | 2 | 4 | 8 | 16) || host && lanes == 32) {
        let most = if host { ", 16 or 32" } else { " or 16" };
        return Err(format!("{lanes} lanes: vectors have 2, 4, 8{most} lanes"));
    }
    if space == Space::Local {
        return Ok(());
    }
    let most = match target.arch {
        Arch::Host => 64,
        _ => 16,
    };
    if lanes > 1 && elem.size_bytes() * lanes as u32 > most {
        return Err(format!(
            "{elem}x{lanes} is {} bytes: vector accesses are at most {most} bytes",
            elem.size_bytes() * lanes as u32
        ));
    }
    Ok(())
}

/// The most iterations an unrolled loop may have.
pub const MAX_UNROLL: u32 = 4096;

fn collect_loads<'e>(e: &'e Expr, out: &mut Vec<(BufId, &'e Expr, u8)>) {
    match e {
        Expr::Load { buf, index, lanes } => {
            out.push((*buf, index, *lanes));
            collect_loads(index, out);
        }
        Expr::Lit(_) | Expr::Var(_) | Expr::Special(_) => {}
        Expr::Unary(_, a) | Expr::Cast(_, a) | Expr::Lane(a, _) => collect_loads(a, out),
        Expr::Binary(_, a, b) | Expr::Cmp(_, a, b) => {
            collect_loads(a, out);
            collect_loads(b, out);
        }
        Expr::Select(c, a, b) => {
            collect_loads(c, out);
            collect_loads(a, out);
            collect_loads(b, out);
        }
        Expr::Math(_, xs) | Expr::Vector(xs) => xs.iter().for_each(|x| collect_loads(x, out)),
    }
}

/// Checks a kernel; on success returns the uniformity of its variables.
pub fn verify(k: &Kernel) -> Result<Analysis, VerifyErrors> {
    let mut cx = Checker {
        k,
        errors: Vec::new(),
        declared: HashSet::new(),
        scopes: vec![HashSet::new()],
        bounds: HashMap::new(),
        assigned: assigned_vars(&k.body),
    };
    cx.kernel_limits();
    for p in &k.params {
        if let Param::Scalar(v) = p {
            cx.declare(*v, "params");
        }
    }
    cx.block(&k.body, "body");

    let uniformity = uniformity(k);
    if cx.errors.is_empty() {
        let mut u = UniformityCheck {
            k,
            u: &uniformity,
            errors: &mut cx.errors,
        };
        u.block(&k.body, Uniformity::Block, "body");
    }
    if cx.errors.is_empty() {
        Ok(Analysis { uniformity })
    } else {
        Err(VerifyErrors(cx.errors))
    }
}

struct Checker<'a> {
    k: &'a Kernel,
    errors: Vec<VerifyError>,
    declared: HashSet<VarId>,
    scopes: Vec<HashSet<VarId>>,
    /// What is known of variables that may index local arrays: unroll
    /// variables, and never-reassigned variables computed from them.
    bounds: HashMap<VarId, Bound>,
    assigned: HashSet<VarId>,
}

/// A static bound on an integer expression: every value lies in
/// `lo..=hi` and is a multiple of `mult`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bound {
    pub lo: i64,
    pub hi: i64,
    pub mult: i64,
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a.abs()
    } else {
        gcd(b, a % b)
    }
}

/// The bound of an integer expression built from literals and bounded
/// variables with `+ - * / %`, `min`, `max` and integer casts; `None` when
/// it is not provable that way (or overflows).
pub(crate) fn bound_of(e: &Expr, vars: &HashMap<VarId, Bound>) -> Option<Bound> {
    let lit = |v: i64| {
        Some(Bound {
            lo: v,
            hi: v,
            mult: if v == 0 { 0 } else { v.abs() },
        })
    };
    let mult = |a: Bound, b: Bound| gcd(a.mult, b.mult);
    match e {
        Expr::Lit(Lit::I32(v)) => lit(*v as i64),
        Expr::Lit(Lit::U32(v)) => lit(*v as i64),
        Expr::Lit(Lit::I64(v)) => lit(*v),
        Expr::Var(v) => vars.get(v).copied(),
        Expr::Cast(to, a) if to.is_int() => {
            let b = bound_of(a, vars)?;
            let (min, max) = match to {
                Scalar::I32 => (i32::MIN as i64, i32::MAX as i64),
                Scalar::U32 => (0, u32::MAX as i64),
                _ => (i64::MIN, i64::MAX),
            };
            (b.lo >= min && b.hi <= max).then_some(b)
        }
        Expr::Binary(op, a, b) => {
            let (x, y) = (bound_of(a, vars)?, bound_of(b, vars)?);
            match op {
                BinOp::Add => Some(Bound {
                    lo: x.lo.checked_add(y.lo)?,
                    hi: x.hi.checked_add(y.hi)?,
                    mult: mult(x, y),
                }),
                BinOp::Sub => Some(Bound {
                    lo: x.lo.checked_sub(y.hi)?,
                    hi: x.hi.checked_sub(y.lo)?,
                    mult: mult(x, y),
                }),
                BinOp::Mul => {
                    let c = [
                        x.lo.checked_mul(y.lo)?,
                        x.lo.checked_mul(y.hi)?,
                        x.hi.checked_mul(y.lo)?,
                        x.hi.checked_mul(y.hi)?,
                    ];
                    Some(Bound {
                        lo: *c.iter().min()?,
                        hi: *c.iter().max()?,
                        mult: x.mult.checked_mul(y.mult)?,
                    })
                }
                // Only by a positive constant, of a value never negative.
                BinOp::Div if y.lo == y.hi && y.lo > 0 && x.lo >= 0 => Some(Bound {
                    lo: x.lo / y.lo,
                    hi: x.hi / y.lo,
                    mult: 1,
                }),
                BinOp::Rem if y.lo == y.hi && y.lo > 0 && x.lo >= 0 => Some(Bound {
                    lo: 0,
                    hi: x.hi.min(y.lo - 1),
                    mult: 1,
                }),
                _ => None,
            }
        }
        Expr::Math(f @ (MathFn::Min | MathFn::Max), args) => {
            let (x, y) = (bound_of(&args[0], vars)?, bound_of(&args[1], vars)?);
            let pick = |a: i64, b: i64| {
                if *f == MathFn::Min {
                    a.min(b)
                } else {
                    a.max(b)
                }
            };
            Some(Bound {
                lo: pick(x.lo, y.lo),
                hi: pick(x.hi, y.hi),
                mult: mult(x, y),
            })
        }
        _ => None,
    }
}

/// Every variable assigned after its declaration (loop variables of `for`
/// included).
fn assigned_vars(stmts: &[Stmt]) -> HashSet<VarId> {
    fn walk(stmts: &[Stmt], out: &mut HashSet<VarId>) {
        for s in stmts {
            match s {
                Stmt::Assign(v, _) => {
                    out.insert(*v);
                }
                Stmt::For { var, body, .. } => {
                    out.insert(*var);
                    walk(body, out);
                }
                Stmt::While { body, .. } | Stmt::Unroll { body, .. } => walk(body, out),
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
    let mut out = HashSet::new();
    walk(stmts, &mut out);
    out
}

impl Checker<'_> {
    fn err(&mut self, at: &str, message: impl Into<String>) {
        self.errors.push(VerifyError {
            kernel: self.k.name.clone(),
            at: at.to_string(),
            message: message.into(),
        });
    }

    fn kernel_limits(&mut self) {
        let t = self.k.target;
        let bd = self.k.block_dim;
        if bd == 0 || bd > 1024 || !bd.is_multiple_of(t.warp_size) {
            self.err(
                "kernel",
                format!(
                    "block size {bd} must be a multiple of the warp size {} and at most 1024",
                    t.warp_size
                ),
            );
        }
        let shared = self.k.shared_bytes();
        if shared > t.shared_mem_bytes as u64 {
            self.err(
                "kernel",
                format!(
                    "shared memory of {shared} bytes exceeds the {} bytes {} gives a block",
                    t.shared_mem_bytes, t.arch
                ),
            );
        }
        for b in &self.k.buffers {
            if b.space != Space::Global && b.len == 0 {
                self.err("kernel", format!("array `{}` has length 0", b.name));
            }
        }
        let local: u64 = self
            .k
            .buffers
            .iter()
            .filter(|b| b.space == Space::Local)
            .map(|b| b.len as u64 * b.elem.size_bytes() as u64)
            .sum();
        if local > t.local_bytes() {
            self.err(
                "kernel",
                format!(
                    "local arrays of {local} bytes per thread exceed the {} bytes {} gives a \
                     thread",
                    t.local_bytes(),
                    t.arch
                ),
            );
        }
    }

    fn declare(&mut self, v: VarId, at: &str) {
        if v.0 as usize >= self.k.vars.len() {
            self.err(at, format!("variable #{} does not exist", v.0));
            return;
        }
        if !self.declared.insert(v) {
            let name = &self.k.var(v).name;
            self.err(at, format!("variable `{name}` is declared twice"));
        }
        self.scopes.last_mut().expect("scope").insert(v);
    }

    fn in_scope(&self, v: VarId) -> bool {
        self.scopes.iter().any(|s| s.contains(&v))
    }

    fn uses(&mut self, e: &Expr, at: &str) {
        let mut vars = Vec::new();
        e.for_each_var(&mut |v| vars.push(v));
        for v in vars {
            if (v.0 as usize) < self.k.vars.len() && !self.in_scope(v) {
                let name = self.k.var(v).name.clone();
                self.err(at, format!("variable `{name}` is used outside its scope"));
            }
        }
    }

    /// Every local-array access in `e` must be provably in bounds.
    fn local_loads(&mut self, e: &Expr, at: &str) {
        let mut loads = Vec::new();
        collect_loads(e, &mut loads);
        for (buf, index, lanes) in loads {
            self.local_access(buf, index, lanes, at);
        }
    }

    fn local_access(&mut self, buf: BufId, index: &Expr, lanes: u8, at: &str) {
        let Some(b) = self.k.buffers.get(buf.0 as usize) else {
            return;
        };
        if b.space != Space::Local {
            return;
        }
        let (name, len) = (b.name.clone(), b.len as i64);
        match bound_of(index, &self.bounds) {
            None => self.err(
                at,
                format!(
                    "local array `{name}` is indexed by an expression the verifier cannot \
                     bound: index local arrays with constants and unroll variables only"
                ),
            ),
            Some(r) if r.lo < 0 || r.hi + lanes as i64 > len => self.err(
                at,
                format!(
                    "local array `{name}` of {len} elements is accessed at {}..={} \
                     ({lanes} lane(s))",
                    r.lo,
                    r.hi + lanes as i64 - 1
                ),
            ),
            Some(r) if lanes > 1 && r.mult % lanes as i64 != 0 => self.err(
                at,
                format!(
                    "a {lanes}-lane access of local array `{name}` at an index that is not \
                     provably a multiple of {lanes}"
                ),
            ),
            Some(_) => {}
        }
    }

    fn expr(&mut self, e: &Expr, at: &str) -> Option<Ty> {
        self.uses(e, at);
        self.local_loads(e, at);
        match type_of(self.k, e) {
            Ok(t) => Some(t),
            Err(m) => {
                self.err(at, m);
                None
            }
        }
    }

    fn expect(&mut self, e: &Expr, want: Ty, what: &str, at: &str) {
        if let Some(t) = self.expr(e, at) {
            if t != want {
                self.err(at, format!("{what} must be {want}, got {t}"));
            }
        }
    }

    fn block(&mut self, stmts: &[Stmt], at: &str) {
        self.scopes.push(HashSet::new());
        for (i, s) in stmts.iter().enumerate() {
            self.stmt(s, &format!("{at}[{i}]"));
        }
        self.scopes.pop();
    }

    fn stmt(&mut self, s: &Stmt, at: &str) {
        match s {
            Stmt::Let(v, e) => {
                if let Some(t) = self.expr(e, at) {
                    if let Some(var) = self.k.vars.get(v.0 as usize) {
                        if var.ty != t {
                            let msg = format!("`{}` is {} but is given a {t}", var.name, var.ty);
                            self.err(at, msg);
                        }
                    }
                }
                self.declare(*v, at);
                if !self.assigned.contains(v) {
                    if let Some(r) = bound_of(e, &self.bounds) {
                        self.bounds.insert(*v, r);
                    }
                }
            }
            Stmt::Assign(v, e) => {
                if !self.in_scope(*v) {
                    self.err(at, format!("assignment to undeclared variable #{}", v.0));
                    return;
                }
                if self.k.params.contains(&Param::Scalar(*v)) {
                    let msg = format!("parameter `{}` is read-only", self.k.var(*v).name);
                    self.err(at, msg);
                }
                let want = self.k.var(*v).ty;
                self.expect(e, want, "the assigned value", at);
            }
            Stmt::Store { buf, index, value } => {
                let Some(b) = self.k.buffers.get(buf.0 as usize) else {
                    self.err(at, format!("buffer #{} does not exist", buf.0));
                    return;
                };
                if b.access == Access::Read {
                    let msg = format!("store to read-only buffer `{}`", b.name);
                    self.err(at, msg);
                }
                if let Some(ti) = self.expr(index, at) {
                    if ti.lanes != 1 || !ti.scalar.is_int() {
                        self.err(at, format!("store index must be an integer, got {ti}"));
                    }
                }
                let elem = b.elem;
                let lanes = type_of(self.k, value).map_or(1, |t| t.lanes);
                self.local_access(*buf, index, lanes, at);
                if let Some(tv) = self.expr(value, at) {
                    if tv.scalar != elem {
                        let msg = format!("storing {tv} into a buffer of {elem}");
                        self.err(at, msg);
                    } else if let Err(m) = check_lanes(tv.lanes, elem, b.space, self.k.target) {
                        self.err(at, m);
                    }
                }
            }
            Stmt::For {
                var,
                start,
                end,
                step,
                body,
            } => {
                let Some(vt) = self.k.vars.get(var.0 as usize).map(|v| v.ty) else {
                    self.err(at, format!("variable #{} does not exist", var.0));
                    return;
                };
                if vt.lanes != 1 || !vt.scalar.is_int() {
                    self.err(at, format!("loop variable must be an integer, got {vt}"));
                }
                self.expect(start, vt, "the loop start", at);
                self.expect(end, vt, "the loop bound", at);
                self.expect(step, vt, "the loop step", at);
                self.scopes.push(HashSet::new());
                self.declare(*var, at);
                self.block(body, &format!("{at}.for.body"));
                self.scopes.pop();
            }
            Stmt::If {
                cond,
                then,
                otherwise,
            } => {
                self.expect(cond, Ty::scalar(Scalar::Bool), "an if condition", at);
                self.block(then, &format!("{at}.then"));
                self.block(otherwise, &format!("{at}.else"));
            }
            Stmt::While { cond, body } => {
                self.expect(cond, Ty::scalar(Scalar::Bool), "a while condition", at);
                self.block(body, &format!("{at}.while.body"));
            }
            Stmt::Unroll { var, count, body } => {
                let Some(vt) = self.k.vars.get(var.0 as usize).map(|v| v.ty) else {
                    self.err(at, format!("variable #{} does not exist", var.0));
                    return;
                };
                if vt != Ty::scalar(Scalar::I32) {
                    self.err(at, format!("an unroll variable is i32, got {vt}"));
                }
                if *count == 0 || *count > MAX_UNROLL {
                    self.err(
                        at,
                        format!("an unrolled loop runs 1 to {MAX_UNROLL} times, not {count}"),
                    );
                }
                self.scopes.push(HashSet::new());
                self.declare(*var, at);
                let hi = (*count as i64 - 1).max(0);
                self.bounds.insert(*var, Bound { lo: 0, hi, mult: 1 });
                self.block(body, &format!("{at}.unroll.body"));
                self.scopes.pop();
            }
            Stmt::Barrier | Stmt::Comment(_) => {}
            Stmt::Prefetch { buf, index } => {
                match self.k.buffers.get(buf.0 as usize) {
                    Some(b) if b.space == Space::Global => {}
                    _ => self.err(at, "a prefetch reads a global buffer"),
                }
                if let Some(ti) = self.expr(index, at) {
                    if ti.lanes != 1 || !ti.scalar.is_int() {
                        self.err(at, format!("prefetch index must be an integer, got {ti}"));
                    }
                }
            }
            Stmt::Collective {
                dst,
                op: Collective::Mma { instr, a, b },
                value,
            } => {
                self.mma(*instr, a, b, value, *dst, at);
                self.declare(*dst, at);
            }
            Stmt::Collective {
                dst,
                op:
                    Collective::LoadMatrix {
                        buf,
                        count,
                        trans: _,
                    },
                value,
            } => {
                self.load_matrix(*buf, *count, value, *dst, at);
                self.declare(*dst, at);
            }
            Stmt::Collective { dst, op, value } => {
                let ws = self.k.target.warp_size;
                let i32t = Ty::scalar(Scalar::I32);
                let width = op.lane_arg().map(|(a, width)| {
                    self.expect(a, i32t, "a shuffle's lane argument", at);
                    width
                });
                if let Some(w) = width {
                    if !w.is_power_of_two() || w > ws {
                        self.err(
                            at,
                            format!(
                                "shuffle width {w} must be a power of two ≤ the warp size {ws}"
                            ),
                        );
                    }
                }
                if let Some(t) = self.expr(value, at) {
                    let ok =
                        t.lanes == 1 && matches!(t.scalar, Scalar::F32 | Scalar::I32 | Scalar::U32);
                    if !ok {
                        self.err(
                            at,
                            format!("warp collectives take f32, i32 or u32, got {t}"),
                        );
                    }
                    if let Some(var) = self.k.vars.get(dst.0 as usize) {
                        if var.ty != t {
                            let msg = format!("`{}` is {} but receives a {t}", var.name, var.ty);
                            self.err(at, msg);
                        }
                    }
                }
                self.declare(*dst, at);
            }
        }
    }
}

impl Checker<'_> {
    /// `ldmatrix`: NVIDIA only, from a shared buffer of 16-bit elements, 1,
    /// 2 or 4 matrices, an i32 row index, two elements per matrix back.
    fn load_matrix(&mut self, buf: BufId, count: u8, row: &Expr, dst: VarId, at: &str) {
        let arch = self.k.target.arch;
        if arch.vendor() != Some(crate::target::Vendor::Nvidia) {
            self.err(at, format!("`ldmatrix` is not an instruction of {arch}"));
        }
        if !matches!(count, 1 | 2 | 4) {
            self.err(
                at,
                format!("`ldmatrix` loads 1, 2 or 4 matrices, not {count}"),
            );
        }
        let elem = match self.k.buffers.get(buf.0 as usize) {
            Some(b) if b.space == Space::Shared && b.elem.size_bytes() == 2 => b.elem,
            Some(b) => {
                let msg = format!(
                    "`ldmatrix` reads a shared buffer of 16-bit elements, not `{}`",
                    b.name
                );
                self.err(at, msg);
                return;
            }
            None => {
                self.err(at, format!("buffer #{} does not exist", buf.0));
                return;
            }
        };
        self.expect(row, Ty::scalar(Scalar::I32), "`ldmatrix`'s row index", at);
        let want = Ty::vector(elem, 2 * count);
        if let Some(var) = self.k.vars.get(dst.0 as usize) {
            if var.ty != want {
                let msg = format!("`{}` is {} but receives a {want}", var.name, var.ty);
                self.err(at, msg);
            }
        }
    }

    /// A matrix multiply-accumulate: an instruction of the kernel's arch,
    /// fragments of the instruction's types and lengths.
    fn mma(&mut self, instr: mma::MmaInstr, a: &Expr, b: &Expr, c: &Expr, dst: VarId, at: &str) {
        use mma::Operand;
        let arch = self.k.target.arch;
        if !instr.available_on(arch) || instr.warp_size() != self.k.target.warp_size {
            self.err(
                at,
                format!(
                    "`{}` is not an instruction of {} (warp {})",
                    instr.mnemonic(),
                    arch,
                    self.k.target.warp_size
                ),
            );
        }
        let frag = |op: Operand| {
            let s = match op {
                Operand::C => Scalar::F32,
                _ => instr.input(),
            };
            Ty::vector(s, instr.lanes(op))
        };
        self.expect(a, frag(Operand::A), "the A fragment", at);
        self.expect(b, frag(Operand::B), "the B fragment", at);
        let want = frag(Operand::C);
        self.expect(c, want, "the C fragment", at);
        if let Some(var) = self.k.vars.get(dst.0 as usize) {
            if var.ty != want {
                let msg = format!("`{}` is {} but receives a {want}", var.name, var.ty);
                self.err(at, msg);
            }
        }
    }
}

/// Uniformity of an expression given the uniformity of every variable.
pub fn expr_uniformity(k: &Kernel, e: &Expr, vars: &[Uniformity]) -> Uniformity {
    let j = |es: &[&Expr]| {
        es.iter()
            .map(|e| expr_uniformity(k, e, vars))
            .max()
            .unwrap_or(Uniformity::Block)
    };
    match e {
        Expr::Lit(_) => Uniformity::Block,
        Expr::Var(v) => vars
            .get(v.0 as usize)
            .copied()
            .unwrap_or(Uniformity::Thread),
        Expr::Special(s) => match s {
            Special::ThreadIdx | Special::LaneId => Uniformity::Thread,
            Special::WarpId => Uniformity::Warp,
            Special::BlockIdx(_) | Special::GridDim(_) | Special::BlockDim | Special::WarpSize => {
                Uniformity::Block
            }
        },
        Expr::Unary(_, a) | Expr::Cast(_, a) | Expr::Lane(a, _) => j(&[a]),
        // Every thread has its own local array.
        Expr::Load { buf, .. }
            if k.buffers.get(buf.0 as usize).map(|b| b.space) == Some(Space::Local) =>
        {
            Uniformity::Thread
        }
        // A load at a uniform index reads one address: the same value for all.
        Expr::Load { index, .. } => j(&[index]),
        Expr::Binary(_, a, b) | Expr::Cmp(_, a, b) => j(&[a, b]),
        Expr::Select(c, a, b) => j(&[c, a, b]),
        Expr::Math(_, args) | Expr::Vector(args) => args
            .iter()
            .map(|a| expr_uniformity(k, a, vars))
            .max()
            .unwrap_or(Uniformity::Block),
    }
}

/// Uniformity of every variable: a fixpoint over the kernel, joining each
/// assigned value with the uniformity of the control flow around it.
fn uniformity(k: &Kernel) -> Vec<Uniformity> {
    let mut u = vec![Uniformity::Block; k.vars.len()];
    loop {
        let mut changed = false;
        flow(k, &k.body, Uniformity::Block, &mut u, &mut changed);
        if !changed {
            return u;
        }
    }
}

fn raise(u: &mut [Uniformity], v: VarId, level: Uniformity, changed: &mut bool) {
    if let Some(slot) = u.get_mut(v.0 as usize) {
        if level > *slot {
            *slot = level;
            *changed = true;
        }
    }
}

fn flow(k: &Kernel, stmts: &[Stmt], cu: Uniformity, u: &mut Vec<Uniformity>, changed: &mut bool) {
    let eu = |e: &Expr, u: &[Uniformity]| expr_uniformity(k, e, u);
    for s in stmts {
        match s {
            Stmt::Let(v, e) | Stmt::Assign(v, e) => {
                let level = eu(e, u).max(cu);
                raise(u, *v, level, changed);
            }
            Stmt::For {
                var,
                start,
                end,
                step,
                body,
            } => {
                let lv = eu(start, u).max(eu(step, u)).max(cu);
                raise(u, *var, lv, changed);
                let cond = u[var.0 as usize].max(eu(end, u));
                flow(k, body, cu.max(cond), u, changed);
            }
            Stmt::If {
                cond,
                then,
                otherwise,
            } => {
                let c = cu.max(eu(cond, u));
                flow(k, then, c, u, changed);
                flow(k, otherwise, c, u, changed);
            }
            Stmt::While { cond, body } => {
                let c = cu.max(eu(cond, u));
                flow(k, body, c, u, changed);
            }
            Stmt::Unroll { var, body, .. } => {
                raise(u, *var, cu, changed);
                flow(k, body, cu, u, changed);
            }
            Stmt::Collective { dst, op, value } => {
                let vu = eu(value, u);
                let level = match op {
                    // Each lane holds other elements of D.
                    Collective::Mma { .. } | Collective::LoadMatrix { .. } => Uniformity::Thread,
                    // Every lane reduces the same warp: warp-uniform, or
                    // block-uniform when every lane contributed the same value.
                    Collective::WarpSum | Collective::WarpMax if vu == Uniformity::Block => {
                        Uniformity::Block
                    }
                    Collective::WarpSum | Collective::WarpMax => Uniformity::Warp,
                    _ if vu == Uniformity::Block => Uniformity::Block,
                    _ => Uniformity::Thread,
                };
                raise(u, *dst, level.max(cu), changed);
            }
            Stmt::Store { .. } | Stmt::Prefetch { .. } | Stmt::Barrier | Stmt::Comment(_) => {}
        }
    }
}

struct UniformityCheck<'a> {
    k: &'a Kernel,
    u: &'a [Uniformity],
    errors: &'a mut Vec<VerifyError>,
}

impl UniformityCheck<'_> {
    fn block(&mut self, stmts: &[Stmt], cu: Uniformity, at: &str) {
        for (i, s) in stmts.iter().enumerate() {
            let at = format!("{at}[{i}]");
            match s {
                Stmt::Barrier if cu != Uniformity::Block => self.errors.push(VerifyError {
                    kernel: self.k.name.clone(),
                    at,
                    message: format!(
                        "barrier under {} control flow: every thread of the block must reach it",
                        level_name(cu)
                    ),
                }),
                Stmt::Collective { op, .. } if cu == Uniformity::Thread => {
                    let message = match op {
                        Collective::Mma { instr, .. } => format!(
                            "`{}` under thread-varying control flow: every lane of the warp \
                             must hand it its fragments",
                            instr.mnemonic()
                        ),
                        Collective::LoadMatrix { .. } => "`ldmatrix` under thread-varying \
                            control flow: every lane of the warp must reach it"
                            .into(),
                        _ => "warp collective under thread-varying control flow: every lane \
                              of the warp must reach it"
                            .into(),
                    };
                    self.errors.push(VerifyError {
                        kernel: self.k.name.clone(),
                        at,
                        message,
                    })
                }
                Stmt::For { var, end, body, .. } => {
                    let c = cu
                        .max(self.u[var.0 as usize])
                        .max(expr_uniformity(self.k, end, self.u));
                    self.block(body, c, &format!("{at}.for.body"));
                }
                Stmt::If {
                    cond,
                    then,
                    otherwise,
                } => {
                    let c = cu.max(expr_uniformity(self.k, cond, self.u));
                    self.block(then, c, &format!("{at}.then"));
                    self.block(otherwise, c, &format!("{at}.else"));
                }
                Stmt::While { cond, body } => {
                    let c = cu.max(expr_uniformity(self.k, cond, self.u));
                    self.block(body, c, &format!("{at}.while.body"));
                }
                Stmt::Unroll { body, .. } => {
                    self.block(body, cu, &format!("{at}.unroll.body"));
                }
                _ => {}
            }
        }
    }
}

fn level_name(u: Uniformity) -> &'static str {
    match u {
        Uniformity::Block => "block-uniform",
        Uniformity::Warp => "warp-uniform (not block-uniform)",
        Uniformity::Thread => "thread-varying",
    }
}

#[cfg(test)]
mod tests;
