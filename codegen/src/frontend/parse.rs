//! Attribute parsing and field-level validation.

use std::collections::HashMap;

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, Lit, Meta, Token, UnOp};

use crate::spec::{rules, Alibi, AttentionSpec, DType, KvLayoutSpec, KvScale, Order, SpecError};

/// A `#[kv_layout(..)]` item, parsed and checked.
#[derive(Clone, Debug)]
pub struct ParsedKvLayout {
    /// The struct's name.
    pub ident: syn::Ident,
    /// Its snake-case name, or the `name = ".."` given.
    pub name: String,
    /// The layout.
    pub spec: KvLayoutSpec,
}

/// An `#[attention(..)]` item, parsed and checked field by field. The rules
/// that need the layout run in [`ParsedAttention::resolve`] (build helper)
/// or in const evaluation of the expansion (macro).
#[derive(Clone, Debug)]
pub struct ParsedAttention {
    /// The struct's name.
    pub ident: syn::Ident,
    /// Its snake-case name, or the `name = ".."` given.
    pub name: String,
    /// The `kv = ..` path.
    pub kv: syn::Path,
    /// `q_heads`.
    pub q_heads: u32,
    /// `scale`, if given.
    pub scale: Option<f32>,
    /// `causal`.
    pub causal: bool,
    /// `sliding_window`, if given.
    pub sliding_window: Option<u32>,
    /// `logits_soft_cap`, if given.
    pub logits_soft_cap: Option<f32>,
    /// `q_dtype`, if given.
    pub q_dtype: Option<DType>,
    /// `alibi`, if given.
    pub alibi: Option<Alibi>,
    /// `sinks`.
    pub sinks: bool,
    spans: HashMap<&'static str, Span>,
}

impl ParsedAttention {
    /// The spec over a given layout (not validated).
    pub fn with_layout(&self, kv: KvLayoutSpec) -> AttentionSpec {
        AttentionSpec {
            kv,
            q_heads: self.q_heads,
            scale: self.scale,
            causal: self.causal,
            sliding_window: self.sliding_window,
            logits_soft_cap: self.logits_soft_cap,
            q_dtype: self.q_dtype,
            alibi: self.alibi,
            sinks: self.sinks,
        }
    }

    /// The spec over `kv`, validated; an error points at the field it is about.
    pub fn resolve(&self, kv: KvLayoutSpec) -> syn::Result<AttentionSpec> {
        let spec = self.with_layout(kv);
        spec.validate()
            .map_err(|e| syn::Error::new(self.span_of(e.field), e.message))?;
        Ok(spec)
    }

    /// The span of a key's value (the attribute when the key was not given).
    pub fn span_of(&self, field: &str) -> Span {
        self.spans
            .get(field)
            .copied()
            .unwrap_or_else(|| self.kv.span())
    }
}

/// The keys of `#[kv_layout]`.
pub const KV_LAYOUT_KEYS: &[&str] = &[
    "page_size",
    "kv_heads",
    "head_dim",
    "dtype",
    "order",
    "kv_scale",
    "name",
];
/// The keys of `#[attention]`.
pub const ATTENTION_KEYS: &[&str] = &[
    "kv",
    "q_heads",
    "scale",
    "causal",
    "sliding_window",
    "logits_soft_cap",
    "q_dtype",
    "alibi",
    "sinks",
    "name",
];

/// Collects every error of one item.
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }
    fn at(&mut self, span: Span, msg: impl std::fmt::Display) {
        self.push(syn::Error::new(span, msg));
    }
    fn rule(&mut self, span: Span, r: Result<(), SpecError>, got: impl std::fmt::Display) {
        if let Err(e) = r {
            self.at(span, format!("{} (got {got})", e.message));
        }
    }
    fn finish<T>(self, value: impl FnOnce() -> T) -> syn::Result<T> {
        match self.0 {
            Some(e) => Err(e),
            None => Ok(value()),
        }
    }
}

/// One `key = value` or `flag` of an attribute.
struct Entry {
    key: String,
    key_span: Span,
    value: Option<Expr>,
}

fn entries(attr: TokenStream, keys: &[&str], errors: &mut Errors) -> Vec<Entry> {
    let metas = match Punctuated::<Meta, Token![,]>::parse_terminated.parse2(attr) {
        Ok(m) => m,
        Err(e) => {
            errors.push(e);
            return Vec::new();
        }
    };
    let mut seen: HashMap<String, Span> = HashMap::new();
    let mut out = Vec::new();
    for meta in metas {
        let (path, value) = match meta {
            Meta::Path(p) => (p, None),
            Meta::NameValue(nv) => (nv.path, Some(nv.value)),
            Meta::List(l) => {
                errors.at(l.span(), "expected `key = value` or a flag, not a list");
                continue;
            }
        };
        let Some(ident) = path.get_ident() else {
            errors.at(path.span(), "expected a key such as `page_size`");
            continue;
        };
        let key = ident.to_string();
        if !keys.contains(&key.as_str()) {
            errors.at(
                ident.span(),
                format!("unknown key `{key}`; expected one of: {}", keys.join(", ")),
            );
            continue;
        }
        if seen.insert(key.clone(), ident.span()).is_some() {
            errors.at(ident.span(), format!("duplicate key `{key}`"));
            continue;
        }
        out.push(Entry {
            key,
            key_span: ident.span(),
            value,
        });
    }
    out
}

/// A signed integer literal, or an error naming the key.
fn int(e: &Entry, errors: &mut Errors) -> Option<(i128, Span)> {
    let Some(value) = &e.value else {
        errors.at(
            e.key_span,
            format!("`{0}` needs a value, like `{0} = 16`", e.key),
        );
        return None;
    };
    let (neg, lit) = match value {
        Expr::Unary(u) if matches!(u.op, UnOp::Neg(_)) => (true, &*u.expr),
        other => (false, other),
    };
    match lit {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => match i.base10_parse::<i128>() {
            Ok(v) => Some((if neg { -v } else { v }, value.span())),
            Err(err) => {
                errors.push(err);
                None
            }
        },
        _ => {
            errors.at(
                value.span(),
                format!("`{0}` takes an integer, like `{0} = 16`", e.key),
            );
            None
        }
    }
}

/// A float (or integer) literal.
fn float(e: &Entry, errors: &mut Errors) -> Option<(f64, Span)> {
    let Some(value) = &e.value else {
        errors.at(
            e.key_span,
            format!("`{0}` needs a value, like `{0} = 50.0`", e.key),
        );
        return None;
    };
    let (neg, lit) = match value {
        Expr::Unary(u) if matches!(u.op, UnOp::Neg(_)) => (true, &*u.expr),
        other => (false, other),
    };
    let parsed = match lit {
        Expr::Lit(ExprLit {
            lit: Lit::Float(f), ..
        }) => f.base10_parse::<f64>(),
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => i.base10_parse::<f64>(),
        _ => {
            errors.at(
                value.span(),
                format!("`{0}` takes a number, like `{0} = 50.0`", e.key),
            );
            return None;
        }
    };
    match parsed {
        Ok(v) => Some((if neg { -v } else { v }, value.span())),
        Err(err) => {
            errors.push(err);
            None
        }
    }
}

/// A bare identifier such as `f16` or `NHD`.
fn word(e: &Entry, example: &str, errors: &mut Errors) -> Option<(String, Span)> {
    match &e.value {
        Some(Expr::Path(p)) if p.path.get_ident().is_some() => {
            Some((p.path.get_ident()?.to_string(), p.span()))
        }
        Some(v) => {
            errors.at(
                v.span(),
                format!("`{}` takes a name, like `{example}`", e.key),
            );
            None
        }
        None => {
            errors.at(
                e.key_span,
                format!("`{}` needs a value, like `{example}`", e.key),
            );
            None
        }
    }
}

fn string(e: &Entry, errors: &mut Errors) -> Option<String> {
    match &e.value {
        Some(Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        })) => {
            let v = s.value();
            let ok = !v.is_empty()
                && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !v.starts_with(|c: char| c.is_ascii_digit());
            if ok {
                Some(v)
            } else {
                errors.at(
                    s.span(),
                    "`name` must be a non-empty identifier-like string such as \"llama3_8b\"",
                );
                None
            }
        }
        Some(v) => {
            errors.at(
                v.span(),
                "`name` takes a string, like `name = \"llama3_8b\"`",
            );
            None
        }
        None => {
            errors.at(
                e.key_span,
                "`name` needs a value, like `name = \"llama3_8b\"`",
            );
            None
        }
    }
}

/// An integer field checked by its rule, as u32.
fn ruled_int(
    e: &Entry,
    rule: fn(u64) -> Result<(), SpecError>,
    errors: &mut Errors,
) -> Option<(u32, Span)> {
    let (v, span) = int(e, errors)?;
    let r = if (0..=u32::MAX as i128).contains(&v) {
        rule(v as u64)
    } else {
        rule(u64::MAX)
    };
    if r.is_err() {
        errors.rule(span, r, v);
        return None;
    }
    Some((v as u32, span))
}

/// A float field checked by its rule, as f32.
fn ruled_float(
    e: &Entry,
    rule: fn(f64) -> Result<(), SpecError>,
    errors: &mut Errors,
) -> Option<(f32, Span)> {
    let (v, span) = float(e, errors)?;
    // The rule judges the value the spec stores (an f32), not the literal:
    // 1e-50 is positive but stored as 0.
    let stored = v as f32;
    let r = rule(f64::from(stored));
    if r.is_err() {
        errors.rule(span, r, v);
        return None;
    }
    Some((stored, span))
}

fn check_item(item: &syn::ItemStruct, attr: &str, errors: &mut Errors) {
    if !matches!(item.fields, syn::Fields::Unit) {
        errors.at(
            item.fields.span(),
            format!(
                "#[{attr}] goes on a unit struct such as `pub struct {};`",
                item.ident
            ),
        );
    }
    if !item.generics.params.is_empty() {
        errors.at(
            item.generics.span(),
            format!("#[{attr}] items cannot be generic"),
        );
    }
}

fn missing(errors: &mut Errors, found: &[&str], required: &[(&str, &str)], attr: &str) {
    for (key, example) in required {
        if !found.contains(key) {
            errors.at(
                Span::call_site(),
                format!("#[{attr}] is missing `{key}`, for example `{example}`"),
            );
        }
    }
}

/// Parses and checks the arguments of `#[kv_layout(..)]` on `item`.
pub fn kv_layout(attr: TokenStream, item: &syn::ItemStruct) -> syn::Result<ParsedKvLayout> {
    let mut errors = Errors(None);
    check_item(item, "kv_layout", &mut errors);
    let entries = entries(attr, KV_LAYOUT_KEYS, &mut errors);
    let (mut page_size, mut kv_heads, mut head_dim) = (None, None, None);
    let (mut dtype, mut order, mut name) = (None, Some(Order::Nhd), None);
    let mut kv_scale: Option<(KvScale, Span)> = None;
    for e in &entries {
        match e.key.as_str() {
            "page_size" => page_size = ruled_int(e, rules::page_size, &mut errors),
            "kv_heads" => kv_heads = ruled_int(e, rules::kv_heads, &mut errors),
            "head_dim" => head_dim = ruled_int(e, rules::head_dim, &mut errors),
            "dtype" => dtype = dtype_word(e, "dtype = f16", &mut errors),
            "order" => {
                order = word(e, "order = NHD", &mut errors).and_then(|(w, span)| {
                    let o = Order::from_name(&w);
                    if o.is_none() {
                        errors.at(span, format!("unknown order `{w}`; expected NHD or HND"));
                    }
                    o
                })
            }
            "kv_scale" => {
                kv_scale = word(e, "kv_scale = per_tensor", &mut errors).and_then(|(w, span)| {
                    let s = KvScale::from_name(&w);
                    if s.is_none() {
                        errors.at(
                            span,
                            format!("unknown kv_scale `{w}`; expected per_tensor or per_head"),
                        );
                    }
                    s.map(|s| (s, span))
                })
            }
            "name" => name = string(e, &mut errors),
            _ => unreachable!("entries() only returns known keys"),
        }
    }
    // fp8 caches are scaled (per tensor unless said otherwise); no other is.
    let scale = match (dtype, kv_scale) {
        (Some(d), Some((s, span))) => {
            errors.rule(span, rules::kv_scale(d, s), format_args!("dtype = {d}"));
            s
        }
        (Some(d), None) if d.is_fp8() => KvScale::PerTensor,
        _ => KvScale::Unscaled,
    };
    let found: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
    missing(
        &mut errors,
        &found,
        &[
            ("page_size", "page_size = 16"),
            ("kv_heads", "kv_heads = 8"),
            ("head_dim", "head_dim = 128"),
            ("dtype", "dtype = f16"),
        ],
        "kv_layout",
    );
    errors.finish(|| ParsedKvLayout {
        ident: item.ident.clone(),
        name: name.unwrap_or_else(|| super::snake_case(&item.ident.to_string())),
        spec: KvLayoutSpec {
            page_size: page_size.map(|v| v.0).unwrap_or_default(),
            kv_heads: kv_heads.map(|v| v.0).unwrap_or_default(),
            head_dim: head_dim.map(|v| v.0).unwrap_or_default(),
            dtype: dtype.unwrap_or(DType::F16),
            order: order.unwrap_or(Order::Nhd),
            scale,
        },
    })
}

/// A flag: `key`, `key = true` or `key = false`.
fn flag(e: &Entry, errors: &mut Errors) -> Option<bool> {
    match &e.value {
        None => Some(true),
        Some(Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        })) => Some(b.value),
        Some(v) => {
            errors.at(
                v.span(),
                format!("`{0}` is a flag: write `{0}` or `{0} = false`", e.key),
            );
            None
        }
    }
}

/// A dtype value (`f32`, `f16`, `bf16`, `fp8_e4m3`); an unknown word is an
/// error at it.
fn dtype_word(e: &Entry, example: &str, errors: &mut Errors) -> Option<DType> {
    word(e, example, errors).and_then(|(w, span)| {
        let d = DType::from_name(&w);
        if d.is_none() {
            errors.at(
                span,
                format!("unknown dtype `{w}`; expected f32, f16, bf16 or fp8_e4m3"),
            );
        }
        d
    })
}

/// Parses and checks the arguments of `#[attention(..)]` on `item`.
pub fn attention(attr: TokenStream, item: &syn::ItemStruct) -> syn::Result<ParsedAttention> {
    let mut errors = Errors(None);
    check_item(item, "attention", &mut errors);
    let entries = entries(attr, ATTENTION_KEYS, &mut errors);
    let mut spans = HashMap::new();
    let (mut kv, mut q_heads, mut scale, mut causal) = (None, None, None, false);
    let (mut window, mut cap, mut name, mut q_dtype) = (None, None, None, None);
    let (mut alibi, mut sinks) = (None, false);
    for e in &entries {
        let key: &'static str = ATTENTION_KEYS
            .iter()
            .find(|k| **k == e.key)
            .expect("entries() only returns known keys");
        spans.insert(key, e.value.as_ref().map_or(e.key_span, |v| v.span()));
        match key {
            "kv" => match &e.value {
                Some(Expr::Path(p)) => kv = Some(p.path.clone()),
                Some(v) => errors.at(
                    v.span(),
                    "`kv` takes the name of a #[kv_layout] struct, like `kv = Llama3Kv`",
                ),
                None => errors.at(e.key_span, "`kv` needs a value, like `kv = Llama3Kv`"),
            },
            "q_heads" => q_heads = ruled_int(e, rules::q_heads, &mut errors),
            "scale" => scale = ruled_float(e, rules::scale, &mut errors),
            "sliding_window" => window = ruled_int(e, rules::sliding_window, &mut errors),
            "logits_soft_cap" => cap = ruled_float(e, rules::logits_soft_cap, &mut errors),
            "q_dtype" => {
                q_dtype = dtype_word(e, "q_dtype = f32", &mut errors);
                if let (Some(d), Some(v)) = (q_dtype, &e.value) {
                    errors.rule(v.span(), rules::q_dtype(DType::F16, Some(d)), d);
                }
            }
            "causal" => causal = flag(e, &mut errors).unwrap_or(causal),
            "sinks" => sinks = flag(e, &mut errors).unwrap_or(sinks),
            "alibi" => {
                alibi = match &e.value {
                    None => Some(Alibi::Computed),
                    Some(_) => {
                        word(e, "alibi = computed", &mut errors).and_then(|(w, span)| {
                            match w.as_str() {
                                "computed" => Some(Alibi::Computed),
                                "given" => Some(Alibi::Given),
                                _ => {
                                    errors.at(
                                        span,
                                        format!(
                                            "unknown ALiBi slopes `{w}`; expected `computed` (the \
                                         paper's slopes) or `given` (one f32 per query head, \
                                         passed at launch)"
                                        ),
                                    );
                                    None
                                }
                            }
                        })
                    }
                }
            }
            "name" => name = string(e, &mut errors),
            _ => unreachable!("entries() only returns known keys"),
        }
    }
    let found: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
    missing(
        &mut errors,
        &found,
        &[("kv", "kv = Llama3Kv"), ("q_heads", "q_heads = 32")],
        "attention",
    );
    errors.finish(|| ParsedAttention {
        ident: item.ident.clone(),
        name: name.unwrap_or_else(|| super::snake_case(&item.ident.to_string())),
        kv: kv.expect("checked above"),
        q_heads: q_heads.map(|v| v.0).unwrap_or_default(),
        scale: scale.map(|v| v.0),
        causal,
        sliding_window: window.map(|v| v.0),
        logits_soft_cap: cap.map(|v| v.0),
        q_dtype,
        alibi,
        sinks,
        spans,
    })
}
