//! The kernels attnforge generates, each a function from a spec and a
//! target to a verified [`GeneratedKernel`].
//!
//! [`symbol`] is the one place a kernel's name is made; codegen names the
//! `extern "C"` function with it and launchers look the function up with it.

mod append;
mod decode;

use std::fmt;

use crate::hip;
use crate::ir::verify::{verify, Analysis, VerifyErrors};
use crate::ir::Kernel;
use crate::registry::KernelKind;
use crate::spec::{AttentionSpec, KvLayoutSpec, SpecError};
use crate::target::Target;

pub use decode::DECODE_WARPS;

/// A kernel to generate: its kind and the spec it is generated from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KernelSpec {
    /// Paged decode attention for an attention spec.
    Decode(AttentionSpec),
    /// KV append for a layout.
    Append(KvLayoutSpec),
}

impl KernelSpec {
    /// Which kernel.
    pub fn kind(&self) -> KernelKind {
        match self {
            KernelSpec::Decode(_) => KernelKind::Decode,
            KernelSpec::Append(_) => KernelKind::Append,
        }
    }

    /// The layout the kernel reads or writes.
    pub fn layout(&self) -> KvLayoutSpec {
        match self {
            KernelSpec::Decode(a) => a.kv,
            KernelSpec::Append(l) => *l,
        }
    }

    /// The launch grid for a call. `n` is the batch size for decode and the
    /// number of new tokens for append.
    ///
    /// Decode: one block per (KV head, sequence). Append: one block per token.
    pub fn grid(&self, n: u32) -> [u32; 3] {
        match self {
            KernelSpec::Decode(a) => [a.kv.kv_heads, n, 1],
            KernelSpec::Append(_) => [n, 1, 1],
        }
    }
}

/// The kernel's symbol, built from everything its code depends on:
/// operation, dtype, order, page size, heads, head_dim and variants.
///
/// ```
/// use attnforge_codegen::kernels::{symbol, KernelSpec};
/// use attnforge_codegen::spec::{DType, KvLayoutSpec, Order};
/// let kv = KvLayoutSpec { page_size: 16, kv_heads: 8, head_dim: 128, dtype: DType::F16, order: Order::Nhd };
/// assert_eq!(symbol(&KernelSpec::Append(kv)), "af_append_f16_nhd_p16_h8_d128");
/// ```
pub fn symbol(spec: &KernelSpec) -> String {
    let kv = spec.layout();
    let layout = format!(
        "{}_{}_p{}",
        kv.dtype.name(),
        kv.order.name().to_ascii_lowercase(),
        kv.page_size
    );
    match spec {
        KernelSpec::Append(_) => format!("af_append_{layout}_h{}_d{}", kv.kv_heads, kv.head_dim),
        KernelSpec::Decode(a) => {
            let mut s = format!(
                "af_decode_{layout}_h{}x{}_d{}",
                kv.kv_heads,
                a.group_size(),
                kv.head_dim
            );
            if let Some(w) = a.sliding_window {
                s += &format!("_w{w}");
            }
            if let Some(c) = a.logits_soft_cap {
                s += &format!("_cap{}", number(c));
            }
            if let Some(sc) = a.scale {
                s += &format!("_s{}", number(sc));
            }
            if a.q_dtype.is_some_and(|d| d != kv.dtype) {
                s += &format!("_q{}", a.query_dtype().name());
            }
            s
        }
    }
}

/// A float as identifier text: the integer when exact, else its bits.
fn number(v: f32) -> String {
    if v.fract() == 0.0 && v.abs() < 1e6 {
        format!("{}", v as i64)
    } else {
        format!("x{:08x}", v.to_bits())
    }
}

/// Why a kernel could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    /// The spec breaks a rule.
    #[error("invalid spec: {0}")]
    Spec(#[from] SpecError),
    /// The generated IR failed verification: a bug in attnforge.
    #[error("generated kernel failed verification (an attnforge bug):\n{0}")]
    Verify(#[from] VerifyErrors),
}

/// A generated, verified kernel: a value that prints itself as HIP C++.
#[derive(Clone, Debug)]
pub struct GeneratedKernel {
    /// What it was generated from.
    pub spec: KernelSpec,
    /// The verified IR.
    pub kernel: Kernel,
    /// What the verifier learned (uniformity of every variable).
    pub analysis: Analysis,
}

impl GeneratedKernel {
    /// The kernel's symbol.
    pub fn symbol(&self) -> &str {
        &self.kernel.name
    }

    /// Threads per block the kernel must be launched with.
    pub fn block_dim(&self) -> u32 {
        self.kernel.block_dim
    }

    /// The target it was generated for.
    pub fn target(&self) -> Target {
        self.kernel.target
    }
}

impl fmt::Display for GeneratedKernel {
    /// The HIP translation unit.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut preamble = vec![format!("kernel: {}", self.spec.kind())];
        match &self.spec {
            KernelSpec::Decode(a) => preamble.push(format!("attention: {a:?}")),
            KernelSpec::Append(l) => preamble.push(format!("layout: {l:?}")),
        }
        preamble.push(format!(
            "target: {}; block: {} threads; grid: {}",
            self.kernel.target,
            self.kernel.block_dim,
            match self.spec {
                KernelSpec::Decode(_) => "(kv_heads, batch)",
                KernelSpec::Append(_) => "(new tokens)",
            }
        ));
        hip::print(&self.kernel, &preamble, f)
    }
}

/// Generates and verifies a kernel for a target.
pub fn generate(spec: &KernelSpec, target: Target) -> Result<GeneratedKernel, CodegenError> {
    spec.layout().validate()?;
    let name = symbol(spec);
    let kernel = match spec {
        KernelSpec::Decode(a) => {
            a.validate()?;
            decode::build(a, target, &name)
        }
        KernelSpec::Append(l) => append::build(l, target, &name),
    };
    let analysis = verify(&kernel)?;
    Ok(GeneratedKernel {
        spec: *spec,
        kernel,
        analysis,
    })
}

/// Elements per 16-byte vector access of `dtype` (4 for f32, 8 for f16/bf16).
pub(crate) fn vector_lanes(dtype: crate::spec::DType) -> u32 {
    16 / dtype.size_bytes()
}

/// `layout.offset(page, token, head)` as an i64 IR expression.
pub(crate) fn kv_offset(
    kv: &KvLayoutSpec,
    page: crate::ir::Expr,
    token: crate::ir::Expr,
    head: crate::ir::Expr,
) -> crate::ir::Expr {
    use crate::ir::Expr;
    let (p, h, d) = (
        Expr::i64(kv.page_size as i64),
        Expr::i64(kv.kv_heads as i64),
        Expr::i64(kv.head_dim as i64),
    );
    match kv.order {
        crate::spec::Order::Nhd => ((page * p + token) * h + head) * d,
        crate::spec::Order::Hnd => ((page * h + head) * p + token) * d,
    }
}
