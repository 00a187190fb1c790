//! The spec types: what a KV page layout and an attention are.
//!
//! A spec is plain data, `Copy` and `const`-constructible, so the macros can
//! put it in an associated constant and a runtime can build one from a model's
//! configuration. Every rule a spec must satisfy lives in [`rules`] and in the
//! `const fn validate` methods below; the proc macros (at compile time, through
//! const evaluation) and the build helper (at build time) call the same code,
//! so both reject the same input with the same words.

use std::fmt;

/// Element type of the KV cache (and, for now, of queries and outputs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (8-bit exponent, 7-bit mantissa).
    BF16,
    /// FP8 E4M3 (OCP "fn" flavour: 4-bit exponent with bias 7, 3-bit
    /// mantissa, no infinities, `0x7f`/`0xff` NaN, largest finite ±448).
    /// A KV storage type only, always with a scale ([`KvScale`]): a stored
    /// value `x` means `x · scale`. Queries are never fp8.
    F8E4M3,
}

impl DType {
    /// Every dtype, in declaration order.
    pub const ALL: [DType; 4] = [DType::F32, DType::F16, DType::BF16, DType::F8E4M3];
    /// The dtypes queries, outputs and unscaled caches use.
    pub const FLOAT: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

    /// Size of one element in bytes.
    pub const fn size_bytes(self) -> u32 {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::F8E4M3 => 1,
        }
    }

    /// Whether the dtype is an 8-bit float that needs a scale.
    pub const fn is_fp8(self) -> bool {
        matches!(self, DType::F8E4M3)
    }

    /// The name used in attributes and kernel symbols (`f32`, `f16`, `bf16`,
    /// `fp8_e4m3`).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F8E4M3 => "fp8_e4m3",
        }
    }

    /// Parses the attribute spelling of a dtype.
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Order of the dimensions inside one page of K (and, identically, of V).
///
/// ```text
/// NHD: page ─ token ─ head ─ dim     offset = ((page·P + token)·H + head)·D + d
/// HND: page ─ head ─ token ─ dim     offset = ((page·H + head)·P + token)·D + d
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Order {
    /// (page, token, head, dim): one token's heads are contiguous.
    Nhd,
    /// (page, head, token, dim): one head's tokens are contiguous.
    Hnd,
}

impl Order {
    /// The name used in attributes and kernel symbols.
    pub const fn name(self) -> &'static str {
        match self {
            Order::Nhd => "NHD",
            Order::Hnd => "HND",
        }
    }

    /// Parses the attribute spelling of an order.
    pub fn from_name(name: &str) -> Option<Order> {
        [Order::Nhd, Order::Hnd]
            .into_iter()
            .find(|o| o.name() == name)
    }
}

/// How an fp8 cache's scales are shared: a stored value `x` of KV head `h`
/// means `x · k_scale[h]` in K and `x · v_scale[h]` in V. The scales are
/// `f32`s passed at launch (see the runtime's `Params::kv_scales`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvScale {
    /// No scale: the cache holds plain values (every non-fp8 dtype).
    Unscaled,
    /// One K scale and one V scale for the whole layer.
    PerTensor,
    /// One K scale and one V scale per KV head.
    PerHead,
}

impl KvScale {
    /// The attribute spelling (`per_tensor`, `per_head`; `none` when unscaled).
    pub const fn name(self) -> &'static str {
        match self {
            KvScale::Unscaled => "none",
            KvScale::PerTensor => "per_tensor",
            KvScale::PerHead => "per_head",
        }
    }

    /// Parses the attribute spelling of a scale.
    pub fn from_name(name: &str) -> Option<KvScale> {
        [KvScale::PerTensor, KvScale::PerHead]
            .into_iter()
            .find(|s| s.name() == name)
    }

    /// Scales per tensor (K or V) for a layout with `kv_heads` heads.
    pub const fn len(self, kv_heads: u32) -> usize {
        match self {
            KvScale::Unscaled => 0,
            KvScale::PerTensor => 1,
            KvScale::PerHead => kv_heads as usize,
        }
    }
}

/// A rule a spec broke: which field, and what the rule says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecError {
    /// The attribute key the rule is about (`head_dim`, `q_heads`, ...).
    pub field: &'static str,
    /// What the rule requires, in words a user can act on.
    pub message: &'static str,
}

impl SpecError {
    /// Whether the error is about `field` (usable in const evaluation).
    pub const fn is_about(&self, field: &str) -> bool {
        let (a, b) = (self.field.as_bytes(), field.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.field, self.message)
    }
}

impl std::error::Error for SpecError {}

/// The single list of rules and their messages.
///
/// Each rule is a `const fn` so that it can run inside const evaluation (the
/// macro expansion), in the front-end parser and in the build helper alike.
pub mod rules {
    use super::SpecError;

    /// Largest page size, in tokens.
    pub const MAX_PAGE_SIZE: u64 = 512;
    /// Largest head dimension.
    pub const MAX_HEAD_DIM: u64 = 256;
    /// Largest number of KV heads or query heads.
    pub const MAX_HEADS: u64 = 1024;

    const fn err(field: &'static str, message: &'static str) -> Result<(), SpecError> {
        Err(SpecError { field, message })
    }

    /// `page_size`: tokens per page, 1..=512.
    pub const fn page_size(v: u64) -> Result<(), SpecError> {
        if v >= 1 && v <= MAX_PAGE_SIZE {
            Ok(())
        } else {
            err("page_size", "page_size must be between 1 and 512 tokens")
        }
    }

    /// `kv_heads`: 1..=1024.
    pub const fn kv_heads(v: u64) -> Result<(), SpecError> {
        if v >= 1 && v <= MAX_HEADS {
            Ok(())
        } else {
            err("kv_heads", "kv_heads must be between 1 and 1024")
        }
    }

    /// `head_dim`: a multiple of 8, 8..=256.
    pub const fn head_dim(v: u64) -> Result<(), SpecError> {
        if v >= 8 && v <= MAX_HEAD_DIM && v.is_multiple_of(8) {
            Ok(())
        } else {
            err(
                "head_dim",
                "head_dim must be a multiple of 8, from 8 to 256, so that rows split into 16-byte vectors",
            )
        }
    }

    /// `q_heads`: 1..=1024.
    pub const fn q_heads(v: u64) -> Result<(), SpecError> {
        if v >= 1 && v <= MAX_HEADS {
            Ok(())
        } else {
            err("q_heads", "q_heads must be between 1 and 1024")
        }
    }

    /// `q_heads` against the layout: a whole number of query heads per KV head.
    pub const fn q_heads_per_kv_head(q_heads: u64, kv_heads: u64) -> Result<(), SpecError> {
        if kv_heads != 0 && q_heads.is_multiple_of(kv_heads) {
            Ok(())
        } else {
            err(
                "q_heads",
                "q_heads must be a multiple of the layout's kv_heads (MHA: equal, GQA: a multiple, MQA: kv_heads = 1)",
            )
        }
    }

    /// `sliding_window`: a positive number of tokens.
    pub const fn sliding_window(v: u64) -> Result<(), SpecError> {
        if v >= 1 && v <= u32::MAX as u64 {
            Ok(())
        } else {
            err(
                "sliding_window",
                "sliding_window must be a positive number of tokens that fits in u32",
            )
        }
    }

    /// Whether `v`, stored as the f32 a spec keeps, is positive and finite
    /// (1e-50 is positive, but stored as 0).
    const fn positive_f32(v: f64) -> bool {
        let stored = v as f32;
        stored > 0.0 && stored <= f32::MAX
    }

    /// `logits_soft_cap`: a positive, finite cap (as stored, in f32).
    pub const fn logits_soft_cap(v: f64) -> Result<(), SpecError> {
        if positive_f32(v) {
            Ok(())
        } else {
            err(
                "logits_soft_cap",
                "logits_soft_cap must be a positive, finite number",
            )
        }
    }

    /// `kv_scale` against `dtype`: fp8 caches are scaled, others are not.
    pub const fn kv_scale(dtype: super::DType, scale: super::KvScale) -> Result<(), SpecError> {
        match (dtype.is_fp8(), scale) {
            (true, super::KvScale::Unscaled) => err(
                "kv_scale",
                "an fp8 cache needs a scale: kv_scale = per_tensor or kv_scale = per_head",
            ),
            (false, super::KvScale::PerTensor | super::KvScale::PerHead) => err(
                "kv_scale",
                "kv_scale is for fp8 caches (dtype = fp8_e4m3) only",
            ),
            _ => Ok(()),
        }
    }

    /// `q_dtype` against the layout's dtype: queries are never fp8, and an
    /// fp8 cache needs the query dtype spelled out.
    pub const fn q_dtype(kv: super::DType, q: Option<super::DType>) -> Result<(), SpecError> {
        match (kv.is_fp8(), q) {
            (_, Some(q)) if q.is_fp8() => err(
                "q_dtype",
                "queries cannot be fp8: q_dtype must be f16, bf16 or f32",
            ),
            (true, None) => err(
                "q_dtype",
                "an fp8 cache needs the query dtype: add q_dtype = f16 (or bf16, f32)",
            ),
            _ => Ok(()),
        }
    }

    /// `scale`: a positive, finite softmax scale (as stored, in f32).
    pub const fn scale(v: f64) -> Result<(), SpecError> {
        if positive_f32(v) {
            Ok(())
        } else {
            err("scale", "scale must be a positive, finite number")
        }
    }
}

/// Propagates an `Err` inside a `const fn` (where `?` is not available).
macro_rules! ctry {
    ($e:expr) => {
        match $e {
            Ok(()) => {}
            Err(e) => return Err(e),
        }
    };
}

/// A KV-cache page layout, as declared by `#[kv_layout(..)]`.
///
/// K and V live in two arenas of identical shape, indexed by the same page
/// ids: a page id names one K page and one V page. Within a page the
/// dimensions follow [`Order`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KvLayoutSpec {
    /// Tokens per page.
    pub page_size: u32,
    /// Number of KV heads.
    pub kv_heads: u32,
    /// Dimension of one head.
    pub head_dim: u32,
    /// Element type of K and V.
    pub dtype: DType,
    /// Order of the dimensions inside a page.
    pub order: Order,
    /// How stored values are scaled: [`KvScale::Unscaled`] except for fp8.
    pub scale: KvScale,
}

impl KvLayoutSpec {
    /// Checks every rule of a layout.
    pub const fn validate(&self) -> Result<(), SpecError> {
        ctry!(rules::page_size(self.page_size as u64));
        ctry!(rules::kv_heads(self.kv_heads as u64));
        ctry!(rules::head_dim(self.head_dim as u64));
        ctry!(rules::kv_scale(self.dtype, self.scale));
        Ok(())
    }

    /// Elements in one K page (the same for a V page).
    pub const fn page_elems(&self) -> u64 {
        self.page_size as u64 * self.kv_heads as u64 * self.head_dim as u64
    }

    /// Bytes in one K page (the same for a V page).
    pub const fn page_bytes(&self) -> u64 {
        self.page_elems() * self.dtype.size_bytes() as u64
    }

    /// Element offset of `(page, token, head, 0)` in a K or V arena.
    pub const fn offset(&self, page: u64, token: u64, head: u64) -> u64 {
        let (p, h, d) = (
            self.page_size as u64,
            self.kv_heads as u64,
            self.head_dim as u64,
        );
        match self.order {
            Order::Nhd => ((page * p + token) * h + head) * d,
            Order::Hnd => ((page * h + head) * p + token) * d,
        }
    }
}

/// An attention over a KV layout, as declared by `#[attention(..)]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionSpec {
    /// The KV layout the attention reads.
    pub kv: KvLayoutSpec,
    /// Number of query heads; a multiple of `kv.kv_heads`.
    pub q_heads: u32,
    /// Softmax scale; `None` means 1/sqrt(head_dim).
    pub scale: Option<f32>,
    /// Causal mask for prefill (a decode query sees its whole context).
    pub causal: bool,
    /// A query attends to at most this many most recent tokens, itself included.
    pub sliding_window: Option<u32>,
    /// Logits become `cap·tanh(logit/cap)` before the softmax.
    pub logits_soft_cap: Option<f32>,
    /// The dtype of queries and outputs; `None` means the layout's dtype.
    /// An f32 query over an f16 cache keeps the output unrounded, as
    /// llama.cpp's attention does.
    pub q_dtype: Option<DType>,
    /// ALiBi: a bias `slope_h · (j − i)` added to the logit of query position
    /// `i` and key position `j` (after the soft-cap), per query head `h`.
    pub alibi: Option<Alibi>,
    /// Attention sinks: a learned per-head logit (an `f32` per query head,
    /// passed at launch) that joins the softmax denominator and nothing else.
    pub sinks: bool,
}

/// Where ALiBi's per-head slopes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alibi {
    /// The slopes of the ALiBi paper, computed in the kernel from the head
    /// index: for `n` heads and `p` the largest power of two ≤ `n`, head
    /// `h < p` has `2^(−8(h+1)/p)` and head `h ≥ p` has `2^(−4(2(h−p)+1)/p)`.
    Computed,
    /// One `f32` slope per query head, passed at launch.
    Given,
}

impl Alibi {
    /// The slope of query head `h` of `n` under [`Alibi::Computed`], in f64.
    pub fn computed_slope(h: u32, n: u32) -> f64 {
        let p = 1u32 << (31 - n.max(1).leading_zeros());
        let e = if h < p {
            -8.0 * f64::from(h + 1) / f64::from(p)
        } else {
            -4.0 * f64::from(2 * (h - p) + 1) / f64::from(p)
        };
        e.exp2()
    }
}

impl AttentionSpec {
    /// An attention with `q_heads` query heads over `kv` and every option
    /// at its default: scale 1/sqrt(head_dim), not causal, no window, no
    /// soft-cap, queries in the layout's dtype, no ALiBi, no sinks.
    ///
    /// ```
    /// use attnforge_codegen::{AttentionSpec, DType, KvLayoutSpec, KvScale, Order};
    /// let kv = KvLayoutSpec { page_size: 16, kv_heads: 8, head_dim: 128, dtype: DType::F16, order: Order::Nhd, scale: KvScale::Unscaled };
    /// let spec = AttentionSpec { causal: true, ..AttentionSpec::new(kv, 32) };
    /// assert_eq!(spec.group_size(), 4);
    /// ```
    pub const fn new(kv: KvLayoutSpec, q_heads: u32) -> AttentionSpec {
        AttentionSpec {
            kv,
            q_heads,
            scale: None,
            causal: false,
            sliding_window: None,
            logits_soft_cap: None,
            q_dtype: None,
            alibi: None,
            sinks: false,
        }
    }

    /// The dtype of queries and outputs (for an fp8 cache without
    /// `q_dtype`, which validation refuses, f16).
    pub const fn query_dtype(&self) -> DType {
        match self.q_dtype {
            Some(d) => d,
            None if self.kv.dtype.is_fp8() => DType::F16,
            None => self.kv.dtype,
        }
    }

    /// Checks every rule of the attention and of its layout.
    pub const fn validate(&self) -> Result<(), SpecError> {
        ctry!(self.kv.validate());
        ctry!(rules::q_heads(self.q_heads as u64));
        ctry!(rules::q_dtype(self.kv.dtype, self.q_dtype));
        ctry!(rules::q_heads_per_kv_head(
            self.q_heads as u64,
            self.kv.kv_heads as u64
        ));
        if let Some(w) = self.sliding_window {
            ctry!(rules::sliding_window(w as u64));
        }
        if let Some(c) = self.logits_soft_cap {
            ctry!(rules::logits_soft_cap(c as f64));
        }
        if let Some(s) = self.scale {
            ctry!(rules::scale(s as f64));
        }
        Ok(())
    }

    /// Query heads that share one KV head (1 for MHA).
    pub const fn group_size(&self) -> u32 {
        self.q_heads / self.kv.kv_heads
    }

    /// The softmax scale in effect.
    pub fn effective_scale(&self) -> f32 {
        self.scale
            .unwrap_or_else(|| 1.0 / (self.kv.head_dim as f32).sqrt())
    }
}

/// Implemented by `#[kv_layout(..)]` for the item it decorates.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a KV layout",
    label = "`kv = ..` must name a struct declared with #[kv_layout(..)]",
    note = "declare it with `#[kv_layout(page_size = .., kv_heads = .., head_dim = .., dtype = ..)]`"
)]
pub trait KvLayout {
    /// The item's name in snake case (used for snapshots and listings).
    const NAME: &'static str;
    /// The layout.
    const SPEC: KvLayoutSpec;
    /// The code objects compiled for this layout at build time (append),
    /// for every arch and vendor the build compiled.
    const CODE_OBJECTS: crate::registry::CodeObjects;

    /// The KV append kernel of this layout, generated for `target`.
    fn append_kernel(
        target: crate::target::Target,
    ) -> Result<crate::kernels::GeneratedKernel, crate::kernels::CodegenError> {
        crate::kernels::generate(&crate::kernels::KernelSpec::Append(Self::SPEC), target)
    }
}

/// The layout of an attention (used by the `#[attention]` expansion, so that a
/// `kv = ..` that is not a layout is reported once, at its tokens).
pub const fn layout_of<A: Attention + ?Sized>() -> KvLayoutSpec {
    <A::Kv as KvLayout>::SPEC
}

/// Implemented by `#[attention(..)]` for the item it decorates.
pub trait Attention {
    /// The layout named by `kv = ..`.
    type Kv: KvLayout;
    /// The item's name in snake case (used for snapshots and listings).
    const NAME: &'static str;
    /// The attention.
    const SPEC: AttentionSpec;
    /// The code objects compiled for this attention at build time (decode,
    /// split-K decode and merge, prefill, and its layout's append), for
    /// every arch and vendor.
    const CODE_OBJECTS: crate::registry::CodeObjects;

    /// The prefill kernel of this attention, generated for `target`.
    fn prefill_kernel(
        target: crate::target::Target,
    ) -> Result<crate::kernels::GeneratedKernel, crate::kernels::CodegenError> {
        crate::kernels::generate(&crate::kernels::KernelSpec::Prefill(Self::SPEC), target)
    }

    /// The decode kernel of this attention, generated for `target`.
    fn decode_kernel(
        target: crate::target::Target,
    ) -> Result<crate::kernels::GeneratedKernel, crate::kernels::CodegenError> {
        crate::kernels::generate(&crate::kernels::KernelSpec::Decode(Self::SPEC), target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> KvLayoutSpec {
        KvLayoutSpec {
            page_size: 16,
            kv_heads: 8,
            head_dim: 128,
            dtype: DType::F16,
            order: Order::Nhd,
            scale: KvScale::Unscaled,
        }
    }

    #[test]
    fn rules_reject_out_of_range_fields() {
        assert!(rules::page_size(0).is_err());
        assert!(rules::page_size(513).is_err());
        assert!(rules::page_size(1).is_ok() && rules::page_size(512).is_ok());
        assert!(rules::head_dim(12).is_err());
        assert!(rules::head_dim(264).is_err());
        assert!(rules::head_dim(96).is_ok());
        assert!(rules::logits_soft_cap(0.0).is_err());
        assert!(rules::logits_soft_cap(f64::NAN).is_err());
        assert!(rules::logits_soft_cap(f64::INFINITY).is_err());
        assert!(rules::sliding_window(0).is_err());
    }

    #[test]
    fn attention_validation_names_the_field() {
        let spec = AttentionSpec {
            kv: layout(),
            q_heads: 12,
            scale: None,
            causal: true,
            sliding_window: None,
            logits_soft_cap: None,
            q_dtype: None,
            alibi: None,
            sinks: false,
        };
        assert_eq!(spec.validate().unwrap_err().field, "q_heads");
        let ok = AttentionSpec {
            q_heads: 32,
            ..spec
        };
        assert!(ok.validate().is_ok());
        assert_eq!(ok.group_size(), 4);
        assert!((ok.effective_scale() - 1.0 / 128f32.sqrt()).abs() < 1e-7);
    }

    #[test]
    fn offsets_follow_the_order() {
        let nhd = layout();
        let hnd = KvLayoutSpec {
            order: Order::Hnd,
            scale: KvScale::Unscaled,
            ..nhd
        };
        // page 2, token 3, head 5
        assert_eq!(nhd.offset(2, 3, 5), ((2 * 16 + 3) * 8 + 5) * 128);
        assert_eq!(hnd.offset(2, 3, 5), ((2 * 8 + 5) * 16 + 3) * 128);
        assert_eq!(nhd.page_bytes(), 16 * 8 * 128 * 2);
    }
}
