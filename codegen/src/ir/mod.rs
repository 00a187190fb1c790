//! The structured SIMT kernel IR.
//!
//! A [`Kernel`] is what one GPU thread runs, written once for every thread of
//! a block: typed variables, expressions without side effects, and structured
//! statements (`for`, `if`, `while`) with barriers and warp collectives as
//! statements of their own. There is no `return`, `break` or `goto`: control
//! flow is a tree, which is what lets the CPU backend split a kernel at its
//! barriers MCUDA-style and lets the verifier reason about uniformity.
//!
//! Values live in registers (variables), global memory (kernel buffer
//! parameters) or shared memory (fixed-size block-local arrays). Arithmetic
//! is on `f32` and the integer types; `f16`/`bf16`/`fp8e4m3` are storage types that are
//! loaded, converted to `f32` with [`Expr::cast`], and converted back to store.
//!
//! Build kernels with [`builder::KernelBuilder`]; check them with
//! [`verify::verify`]; print them with [`crate::hip`].

pub mod builder;
pub mod mma;
pub mod verify;

use std::fmt;

use crate::target::Target;

/// A scalar type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scalar {
    /// 32-bit float.
    F32,
    /// 16-bit float (storage only).
    F16,
    /// bfloat16 (storage only).
    BF16,
    /// FP8 E4M3, OCP "fn" flavour (storage only; casts saturate to ±448
    /// and round to nearest even).
    F8E4M3,
    /// 32-bit signed integer.
    I32,
    /// 32-bit unsigned integer.
    U32,
    /// 64-bit signed integer (offsets into large buffers).
    I64,
    /// Boolean.
    Bool,
}

impl Scalar {
    /// Size in bytes in memory.
    pub const fn size_bytes(self) -> u32 {
        match self {
            Scalar::F32 | Scalar::I32 | Scalar::U32 => 4,
            Scalar::F16 | Scalar::BF16 => 2,
            Scalar::I64 => 8,
            Scalar::Bool | Scalar::F8E4M3 => 1,
        }
    }

    /// Whether arithmetic is defined on this type.
    pub const fn is_arith(self) -> bool {
        matches!(self, Scalar::F32 | Scalar::I32 | Scalar::U32 | Scalar::I64)
    }

    /// Whether this is an integer type.
    pub const fn is_int(self) -> bool {
        matches!(self, Scalar::I32 | Scalar::U32 | Scalar::I64)
    }

    /// Whether this is a floating-point type.
    pub const fn is_float(self) -> bool {
        matches!(
            self,
            Scalar::F32 | Scalar::F16 | Scalar::BF16 | Scalar::F8E4M3
        )
    }

    /// The storage scalar of a KV dtype.
    pub const fn of_dtype(d: crate::spec::DType) -> Scalar {
        match d {
            crate::spec::DType::F32 => Scalar::F32,
            crate::spec::DType::F16 => Scalar::F16,
            crate::spec::DType::BF16 => Scalar::BF16,
            crate::spec::DType::F8E4M3 => Scalar::F8E4M3,
        }
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scalar::F32 => "f32",
            Scalar::F16 => "f16",
            Scalar::BF16 => "bf16",
            Scalar::F8E4M3 => "fp8e4m3",
            Scalar::I32 => "i32",
            Scalar::U32 => "u32",
            Scalar::I64 => "i64",
            Scalar::Bool => "bool",
        })
    }
}

/// A value type: a scalar or a vector of 2, 4, 8 or 16 lanes (also 32 at
/// the host target).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ty {
    /// The element type.
    pub scalar: Scalar,
    /// 1 for a scalar; 2, 4, 8 or 16 for a vector (or 32 at the host).
    pub lanes: u8,
}

impl Ty {
    /// A scalar type.
    pub const fn scalar(s: Scalar) -> Ty {
        Ty {
            scalar: s,
            lanes: 1,
        }
    }

    /// A vector type.
    pub const fn vector(s: Scalar, lanes: u8) -> Ty {
        Ty { scalar: s, lanes }
    }

    /// Size in bytes.
    pub const fn size_bytes(self) -> u32 {
        self.scalar.size_bytes() * self.lanes as u32
    }
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lanes == 1 {
            write!(f, "{}", self.scalar)
        } else {
            write!(f, "{}x{}", self.scalar, self.lanes)
        }
    }
}

/// How much a value can differ between the threads that compute it.
///
/// Ordered from least to most varying; joining two levels takes the larger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Uniformity {
    /// The same in every thread of the block.
    Block,
    /// The same in every thread of a warp.
    Warp,
    /// May differ from thread to thread.
    Thread,
}

/// Memory space of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Space {
    /// Device memory, passed as a kernel parameter.
    Global,
    /// Block-local shared memory (LDS) of a fixed length.
    Shared,
    /// A per-thread array of a fixed length: registers on a GPU. The
    /// verifier requires every index to be provably in bounds from
    /// constants and [`Stmt::Unroll`] variables alone, so that a GPU
    /// compiler can keep every element in a register once the loops are
    /// unrolled; the CPU backend keeps it in memory and loops over it.
    Local,
}

/// Whether a kernel may write a global buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// Read only (`const T* __restrict__`).
    Read,
    /// Read and written.
    ReadWrite,
}

/// Index of a variable in [`Kernel::vars`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VarId(pub u32);

/// Index of a buffer in [`Kernel::buffers`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufId(pub u32);

/// A register variable.
#[derive(Clone, Debug, PartialEq)]
pub struct Var {
    /// Name for printing (made unique by the printer with the id).
    pub name: String,
    /// Its type.
    pub ty: Ty,
}

/// A global buffer parameter or a shared-memory array.
#[derive(Clone, Debug, PartialEq)]
pub struct Buffer {
    /// Name (the parameter name for global buffers).
    pub name: String,
    /// Element type.
    pub elem: Scalar,
    /// Memory space.
    pub space: Space,
    /// Read or read-write (shared and local arrays are always read-write).
    pub access: Access,
    /// Number of elements, for shared and local arrays.
    pub len: u32,
}

/// A kernel parameter, in signature order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    /// A pointer to a global buffer.
    Buffer(BufId),
    /// A scalar passed by value; the variable holds it for the whole kernel.
    Scalar(VarId),
}

/// Grid or block dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    /// x
    X,
    /// y
    Y,
    /// z
    Z,
}

/// Values the hardware provides. All are `i32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Special {
    /// Thread index in the (one-dimensional) block.
    ThreadIdx,
    /// Block index in the grid.
    BlockIdx(Dim),
    /// Blocks in the grid.
    GridDim(Dim),
    /// Threads in the block (the kernel's fixed block size).
    BlockDim,
    /// The target's warp size.
    WarpSize,
    /// Lane of the thread in its warp.
    LaneId,
    /// Index of the thread's warp in the block.
    WarpId,
}

/// A literal.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Lit {
    /// f32
    F32(f32),
    /// i32
    I32(i32),
    /// u32
    U32(u32),
    /// i64
    I64(i64),
    /// bool
    Bool(bool),
}

/// Unary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnOp {
    /// Arithmetic negation.
    Neg,
    /// Logical not (bool).
    Not,
}

/// Binary arithmetic and logic operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinOp {
    /// +
    Add,
    /// -
    Sub,
    /// *
    Mul,
    /// / (integer division truncates toward zero)
    Div,
    /// % (integers only)
    Rem,
    /// & on integers, logical and on bool
    And,
    /// | on integers, logical or on bool
    Or,
    /// ^ on integers
    Xor,
    /// << on integers
    Shl,
    /// >> on integers (arithmetic for signed)
    Shr,
}

/// Comparison operators; the result is `bool`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    /// ==
    Eq,
    /// !=
    Ne,
    /// <
    Lt,
    /// <=
    Le,
    /// >
    Gt,
    /// >=
    Ge,
}

/// Math intrinsics on `f32` (min/max also on integers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MathFn {
    /// 2^x
    Exp2,
    /// log2(x)
    Log2,
    /// max(a, b)
    Max,
    /// min(a, b)
    Min,
    /// a·b + c, fused
    Fma,
    /// 1/sqrt(x)
    Rsqrt,
    /// sqrt(x)
    Sqrt,
    /// tanh(x)
    Tanh,
    /// |x|
    Abs,
}

impl MathFn {
    /// Number of arguments.
    pub const fn arity(self) -> usize {
        match self {
            MathFn::Max | MathFn::Min => 2,
            MathFn::Fma => 3,
            _ => 1,
        }
    }
}

/// A side-effect-free expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// A literal.
    Lit(Lit),
    /// A variable's current value.
    Var(VarId),
    /// A hardware-provided value.
    Special(Special),
    /// A unary operation.
    Unary(UnOp, Box<Expr>),
    /// A binary operation on two operands of one type.
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// A comparison of two operands of one type.
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    /// `cond ? a : b`, both sides evaluated.
    Select(Box<Expr>, Box<Expr>, Box<Expr>),
    /// A math intrinsic.
    Math(MathFn, Vec<Expr>),
    /// Scalar conversion (float↔float rounds to nearest even; float→int truncates).
    Cast(Scalar, Box<Expr>),
    /// Load of `lanes` consecutive elements starting at element `index`
    /// (a vector load of up to 16 bytes, 64 at the host target; `index`
    /// must be a multiple of `lanes`).
    Load {
        /// The buffer.
        buf: BufId,
        /// Element index (any integer type).
        index: Box<Expr>,
        /// Lanes to load: 1, 2, 4, 8 or 16 (32 at the host target; at most
        /// 16 bytes from global or shared memory, 64 at the host target).
        lanes: u8,
    },
    /// One lane of a vector.
    Lane(Box<Expr>, u8),
    /// A vector built from scalars of one type.
    Vector(Vec<Expr>),
}

/// A warp collective: every thread of the warp must execute it together.
#[derive(Clone, Debug, PartialEq)]
pub enum Collective {
    /// `__shfl_xor(v, mask, width)`: the value of lane `lane ^ mask` within the
    /// thread's `width`-lane segment.
    ShuffleXor {
        /// Lane mask (i32).
        mask: Expr,
        /// Segment width, a power of two ≤ the warp size.
        width: u32,
    },
    /// `__shfl_down(v, delta, width)`: lane `lane + delta`, or the thread's own
    /// value when that leaves the segment.
    ShuffleDown {
        /// Distance (i32).
        delta: Expr,
        /// Segment width.
        width: u32,
    },
    /// `__shfl(v, src, width)`: lane `src mod width` of the thread's segment.
    ShuffleIdx {
        /// Source lane (i32).
        lane: Expr,
        /// Segment width.
        width: u32,
    },
    /// Sum over the whole warp; every lane receives it.
    WarpSum,
    /// Maximum over the whole warp; every lane receives it.
    WarpMax,
    /// A warp-level matrix multiply-accumulate, `D = A·B + C`: the
    /// statement's value is this lane's fragment of C (f32 lanes), `a` and
    /// `b` its fragments of A and B (f16 or bf16 lanes), and its result this
    /// lane's fragment of D, laid out as [`mma::MmaInstr::layout`] says.
    Mma {
        /// The instruction.
        instr: mma::MmaInstr,
        /// This lane's fragment of A.
        a: Expr,
        /// This lane's fragment of B.
        b: Expr,
    },
    /// `ldmatrix.sync.aligned.m8n8.x{count}[.trans].shared.b16` (NVIDIA):
    /// `count` 8×8 matrices of 16-bit elements from shared memory, each
    /// row 8 consecutive elements of `buf`. The statement's value is this
    /// lane's row index (i32): lane `8i + r` gives the first element of
    /// row `r` of matrix `i`. Lane `t` receives, for each matrix `i`,
    /// elements `2i` and `2i + 1` of its result: `M_i[t/4][2(t%4) + e]`,
    /// or with `trans` `M_i[2(t%4) + e][t/4]` (e < 2), which are the
    /// fragments of `mma.m16n8k16` ([`mma::ldmatrix_at`]).
    LoadMatrix {
        /// The shared buffer (f16 or bf16).
        buf: BufId,
        /// Matrices: 1, 2 or 4.
        count: u8,
        /// Transposed delivery.
        trans: bool,
    },
}

/// A statement.
#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// Declares a variable in the current scope and gives it a value.
    Let(VarId, Expr),
    /// Gives a declared variable a new value.
    Assign(VarId, Expr),
    /// Stores a value (scalar or vector) at element `index` of a buffer.
    Store {
        /// The buffer.
        buf: BufId,
        /// Element index (any integer type).
        index: Expr,
        /// The value; its scalar type is the buffer's element type.
        value: Expr,
    },
    /// `for (var = start; var < end; var += step)`; `var` is declared by the loop.
    For {
        /// Loop variable (an integer type; declared by the loop).
        var: VarId,
        /// First value.
        start: Expr,
        /// Exclusive bound.
        end: Expr,
        /// Increment, positive.
        step: Expr,
        /// Body.
        body: Vec<Stmt>,
    },
    /// `if (cond) { then } else { otherwise }`.
    If {
        /// Condition (bool).
        cond: Expr,
        /// Taken branch.
        then: Vec<Stmt>,
        /// Other branch (may be empty).
        otherwise: Vec<Stmt>,
    },
    /// `for (var = 0; var < count; var++)` with a constant count, fully
    /// unrolled on a GPU (`#pragma unroll`); `var` is an `i32` declared by
    /// the loop, block-uniform, and may index [`Space::Local`] arrays.
    Unroll {
        /// Loop variable (`i32`; declared by the loop).
        var: VarId,
        /// Trip count.
        count: u32,
        /// Body.
        body: Vec<Stmt>,
    },
    /// `while (cond) { body }`.
    While {
        /// Condition (bool).
        cond: Expr,
        /// Body.
        body: Vec<Stmt>,
    },
    /// Block-wide barrier (`__syncthreads`), also a shared-memory fence.
    Barrier,
    /// `dst = collective(value)`; `dst` is declared here.
    Collective {
        /// Receives the result (declared by this statement).
        dst: VarId,
        /// Which collective.
        op: Collective,
        /// The contributed value (a 32-bit scalar).
        value: Expr,
    },
    /// A hint that element `index` of global buffer `buf` will be read
    /// soon: a prefetch on the CPU, nothing on a GPU. Never faults.
    Prefetch {
        /// The buffer (global).
        buf: BufId,
        /// Element index (any integer type).
        index: Expr,
    },
    /// A comment carried into the printed code.
    Comment(String),
}

/// A kernel: signature, storage and body.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    /// The symbol (see [`crate::kernels::symbol`]).
    pub name: String,
    /// The target it was generated for.
    pub target: Target,
    /// Threads per block; the launcher must use exactly this.
    pub block_dim: u32,
    /// Parameters in signature order.
    pub params: Vec<Param>,
    /// Global and shared buffers.
    pub buffers: Vec<Buffer>,
    /// Variables.
    pub vars: Vec<Var>,
    /// The body.
    pub body: Vec<Stmt>,
}

impl Kernel {
    /// A variable by id.
    pub fn var(&self, id: VarId) -> &Var {
        &self.vars[id.0 as usize]
    }

    /// A buffer by id.
    pub fn buffer(&self, id: BufId) -> &Buffer {
        &self.buffers[id.0 as usize]
    }

    /// Bytes of shared memory the kernel declares.
    pub fn shared_bytes(&self) -> u64 {
        self.buffers
            .iter()
            .filter(|b| b.space == Space::Shared)
            .map(|b| b.len as u64 * b.elem.size_bytes() as u64)
            .sum()
    }
}

// Operator sugar for building expressions.
macro_rules! binop {
    ($trait:ident, $method:ident, $op:expr) => {
        impl std::ops::$trait for Expr {
            type Output = Expr;
            fn $method(self, rhs: Expr) -> Expr {
                Expr::Binary($op, Box::new(self), Box::new(rhs))
            }
        }
    };
}
binop!(Add, add, BinOp::Add);
binop!(Sub, sub, BinOp::Sub);
binop!(Mul, mul, BinOp::Mul);
binop!(Div, div, BinOp::Div);
binop!(Rem, rem, BinOp::Rem);
binop!(BitAnd, bitand, BinOp::And);
binop!(BitOr, bitor, BinOp::Or);
binop!(BitXor, bitxor, BinOp::Xor);
binop!(Shl, shl, BinOp::Shl);
binop!(Shr, shr, BinOp::Shr);

impl std::ops::Neg for Expr {
    type Output = Expr;
    fn neg(self) -> Expr {
        Expr::Unary(UnOp::Neg, Box::new(self))
    }
}

impl std::ops::Not for Expr {
    type Output = Expr;
    fn not(self) -> Expr {
        Expr::Unary(UnOp::Not, Box::new(self))
    }
}

impl Expr {
    /// An `f32` literal.
    pub fn f32(v: f32) -> Expr {
        Expr::Lit(Lit::F32(v))
    }
    /// An `i32` literal.
    pub fn i32(v: i32) -> Expr {
        Expr::Lit(Lit::I32(v))
    }
    /// An `i64` literal.
    pub fn i64(v: i64) -> Expr {
        Expr::Lit(Lit::I64(v))
    }
    /// A `u32` literal.
    pub fn u32(v: u32) -> Expr {
        Expr::Lit(Lit::U32(v))
    }
    /// A `bool` literal.
    pub fn bool(v: bool) -> Expr {
        Expr::Lit(Lit::Bool(v))
    }
    /// A hardware value.
    pub fn special(s: Special) -> Expr {
        Expr::Special(s)
    }
    fn cmp(self, op: CmpOp, rhs: Expr) -> Expr {
        Expr::Cmp(op, Box::new(self), Box::new(rhs))
    }
    /// `self == rhs`
    pub fn eq_(self, rhs: Expr) -> Expr {
        self.cmp(CmpOp::Eq, rhs)
    }
    /// `self != rhs`
    pub fn ne_(self, rhs: Expr) -> Expr {
        self.cmp(CmpOp::Ne, rhs)
    }
    /// `self < rhs`
    pub fn lt(self, rhs: Expr) -> Expr {
        self.cmp(CmpOp::Lt, rhs)
    }
    /// `self <= rhs`
    pub fn le(self, rhs: Expr) -> Expr {
        self.cmp(CmpOp::Le, rhs)
    }
    /// `self > rhs`
    pub fn gt(self, rhs: Expr) -> Expr {
        self.cmp(CmpOp::Gt, rhs)
    }
    /// `self >= rhs`
    pub fn ge(self, rhs: Expr) -> Expr {
        self.cmp(CmpOp::Ge, rhs)
    }
    /// Logical and of two bools (both sides evaluated).
    pub fn and_then(self, rhs: Expr) -> Expr {
        self & rhs
    }
    /// `cond ? a : b` with `self` as the condition.
    pub fn select(self, a: Expr, b: Expr) -> Expr {
        Expr::Select(Box::new(self), Box::new(a), Box::new(b))
    }
    /// Conversion to `to`.
    pub fn cast(self, to: Scalar) -> Expr {
        Expr::Cast(to, Box::new(self))
    }
    /// Lane `i` of a vector.
    pub fn lane(self, i: u8) -> Expr {
        Expr::Lane(Box::new(self), i)
    }
    /// `max(self, rhs)`
    pub fn max(self, rhs: Expr) -> Expr {
        Expr::Math(MathFn::Max, vec![self, rhs])
    }
    /// `min(self, rhs)`
    pub fn min(self, rhs: Expr) -> Expr {
        Expr::Math(MathFn::Min, vec![self, rhs])
    }
    /// `2^self`
    pub fn exp2(self) -> Expr {
        Expr::Math(MathFn::Exp2, vec![self])
    }
    /// `tanh(self)`
    pub fn tanh(self) -> Expr {
        Expr::Math(MathFn::Tanh, vec![self])
    }
    /// `self·a + b`, fused.
    pub fn fma(self, a: Expr, b: Expr) -> Expr {
        Expr::Math(MathFn::Fma, vec![self, a, b])
    }
}

impl Expr {
    /// Calls `f` for every variable the expression reads.
    pub fn for_each_var(&self, f: &mut impl FnMut(VarId)) {
        match self {
            Expr::Var(v) => f(*v),
            Expr::Lit(_) | Expr::Special(_) => {}
            Expr::Unary(_, a) | Expr::Cast(_, a) | Expr::Lane(a, _) => a.for_each_var(f),
            Expr::Load { index, .. } => index.for_each_var(f),
            Expr::Binary(_, a, b) | Expr::Cmp(_, a, b) => {
                a.for_each_var(f);
                b.for_each_var(f);
            }
            Expr::Select(c, a, b) => {
                c.for_each_var(f);
                a.for_each_var(f);
                b.for_each_var(f);
            }
            Expr::Math(_, xs) | Expr::Vector(xs) => xs.iter().for_each(|x| x.for_each_var(f)),
        }
    }
}

impl Collective {
    /// A shuffle's lane argument and segment width (`None` for reductions).
    pub fn lane_arg(&self) -> Option<(&Expr, u32)> {
        match self {
            Collective::ShuffleXor { mask: a, width }
            | Collective::ShuffleDown { delta: a, width }
            | Collective::ShuffleIdx { lane: a, width } => Some((a, *width)),
            Collective::WarpSum
            | Collective::WarpMax
            | Collective::Mma { .. }
            | Collective::LoadMatrix { .. } => None,
        }
    }

    /// The expressions the collective reads besides its value: a shuffle's
    /// lane argument, a matrix operation's A and B fragments.
    pub fn operands(&self) -> Vec<&Expr> {
        match self {
            Collective::Mma { a, b, .. } => vec![a, b],
            _ => self.lane_arg().map(|(a, _)| a).into_iter().collect(),
        }
    }
}

impl Stmt {
    /// Calls `f` for every variable the statement (and its body) declares,
    /// reads or writes.
    pub fn for_each_var(&self, f: &mut impl FnMut(VarId)) {
        match self {
            Stmt::Let(v, x) | Stmt::Assign(v, x) => {
                f(*v);
                x.for_each_var(f);
            }
            Stmt::Store { index, value, .. } => {
                index.for_each_var(f);
                value.for_each_var(f);
            }
            Stmt::For {
                var,
                start,
                end,
                step,
                body,
            } => {
                f(*var);
                for x in [start, end, step] {
                    x.for_each_var(f);
                }
                body.iter().for_each(|s| s.for_each_var(f));
            }
            Stmt::If {
                cond,
                then,
                otherwise,
            } => {
                cond.for_each_var(f);
                then.iter().chain(otherwise).for_each(|s| s.for_each_var(f));
            }
            Stmt::While { cond, body } => {
                cond.for_each_var(f);
                body.iter().for_each(|s| s.for_each_var(f));
            }
            Stmt::Unroll { var, body, .. } => {
                f(*var);
                body.iter().for_each(|s| s.for_each_var(f));
            }
            Stmt::Collective { dst, op, value } => {
                f(*dst);
                value.for_each_var(f);
                for a in op.operands() {
                    a.for_each_var(f);
                }
            }
            Stmt::Prefetch { index, .. } => index.for_each_var(f),
            Stmt::Barrier | Stmt::Comment(_) => {}
        }
    }
}
