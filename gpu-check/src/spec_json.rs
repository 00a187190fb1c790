//! Specs as the manifest writes them: every field spelled out (the Python
//! part reads the same object), and back.

use attnforge_codegen::{Alibi, AttentionSpec, DType, KvLayoutSpec, KvScale, Order};
use serde::{Deserialize, Serialize};

/// A KV layout and, for every case but an append, its attention.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpecJson {
    /// Tokens per page.
    pub page_size: u32,
    /// KV heads.
    pub kv_heads: u32,
    /// Elements per head row.
    pub head_dim: u32,
    /// K/V element type (`f32`, `f16`, `bf16`, `fp8_e4m3`).
    pub dtype: String,
    /// `NHD` (page, token, head, dim) or `HND` (page, head, token, dim).
    pub order: String,
    /// `none`, `per_tensor` or `per_head`.
    pub kv_scale: String,
    /// The attention, absent for an append case.
    pub attention: Option<AttentionJson>,
}

/// An attention's fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttentionJson {
    /// Query heads.
    pub q_heads: u32,
    /// The spec's own `q_dtype` (`null`: the layout's dtype).
    pub q_dtype: Option<String>,
    /// The query and output element type in effect.
    pub query_dtype: String,
    /// The softmax scale given in the spec (`null`: 1/sqrt(head_dim)).
    pub scale: Option<f32>,
    /// The scale in effect.
    pub effective_scale: f32,
    /// Causal mask for prefill.
    pub causal: bool,
    /// Sliding window in tokens, the query included.
    pub sliding_window: Option<u32>,
    /// `cap·tanh(logit/cap)`.
    pub logits_soft_cap: Option<f32>,
    /// `null`, `computed` or `given`.
    pub alibi: Option<String>,
    /// Attention sinks.
    pub sinks: bool,
}

impl SpecJson {
    /// The layout's fields, no attention.
    pub fn layout(l: &KvLayoutSpec) -> SpecJson {
        SpecJson {
            page_size: l.page_size,
            kv_heads: l.kv_heads,
            head_dim: l.head_dim,
            dtype: l.dtype.name().to_string(),
            order: l.order.name().to_string(),
            kv_scale: l.scale.name().to_string(),
            attention: None,
        }
    }

    /// An attention's fields and its layout's.
    pub fn attention(a: &AttentionSpec) -> SpecJson {
        SpecJson {
            attention: Some(AttentionJson {
                q_heads: a.q_heads,
                q_dtype: a.q_dtype.map(|d| d.name().to_string()),
                query_dtype: a.query_dtype().name().to_string(),
                scale: a.scale,
                effective_scale: a.effective_scale(),
                causal: a.causal,
                sliding_window: a.sliding_window,
                logits_soft_cap: a.logits_soft_cap,
                alibi: a.alibi.map(|x| {
                    match x {
                        Alibi::Computed => "computed",
                        Alibi::Given => "given",
                    }
                    .to_string()
                }),
                sinks: a.sinks,
            }),
            ..SpecJson::layout(&a.kv)
        }
    }

    /// The layout, checked.
    pub fn to_layout(&self) -> Result<KvLayoutSpec, String> {
        let dtype = DType::from_name(&self.dtype)
            .ok_or_else(|| format!("unknown dtype `{}`", self.dtype))?;
        let order = Order::from_name(&self.order)
            .ok_or_else(|| format!("unknown order `{}`", self.order))?;
        let scale = match self.kv_scale.as_str() {
            "none" => KvScale::Unscaled,
            s => KvScale::from_name(s).ok_or_else(|| format!("unknown kv_scale `{s}`"))?,
        };
        let l = KvLayoutSpec {
            page_size: self.page_size,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            dtype,
            order,
            scale,
        };
        l.validate().map_err(|e| e.to_string())?;
        Ok(l)
    }

    /// The attention, checked (an error for a layout-only spec).
    pub fn to_attention(&self) -> Result<AttentionSpec, String> {
        let kv = self.to_layout()?;
        let a = self
            .attention
            .as_ref()
            .ok_or("the case needs an attention, but its spec has none")?;
        let q_dtype = match a.q_dtype.as_deref() {
            None => None,
            Some(q) => Some(DType::from_name(q).ok_or_else(|| format!("unknown q_dtype `{q}`"))?),
        };
        let alibi = match a.alibi.as_deref() {
            None => None,
            Some("computed") => Some(Alibi::Computed),
            Some("given") => Some(Alibi::Given),
            Some(x) => return Err(format!("unknown alibi `{x}`")),
        };
        let spec = AttentionSpec {
            kv,
            q_heads: a.q_heads,
            scale: a.scale,
            causal: a.causal,
            sliding_window: a.sliding_window,
            logits_soft_cap: a.logits_soft_cap,
            q_dtype,
            alibi,
            sinks: a.sinks,
        };
        spec.validate().map_err(|e| e.to_string())?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip() {
        let kv = KvLayoutSpec {
            page_size: 16,
            kv_heads: 2,
            head_dim: 64,
            dtype: DType::F8E4M3,
            order: Order::Hnd,
            scale: KvScale::PerHead,
        };
        let a = AttentionSpec {
            q_dtype: Some(DType::BF16),
            alibi: Some(Alibi::Given),
            sliding_window: Some(7),
            sinks: true,
            scale: Some(0.25),
            ..AttentionSpec::new(kv, 8)
        };
        let j = SpecJson::attention(&a);
        let text = serde_json::to_string(&j).unwrap();
        let back: SpecJson = serde_json::from_str(&text).unwrap();
        assert_eq!(back.to_attention().unwrap(), a);
        assert_eq!(SpecJson::layout(&kv).to_layout().unwrap(), kv);
        let plain = AttentionSpec::new(
            KvLayoutSpec {
                dtype: DType::F16,
                scale: KvScale::Unscaled,
                ..kv
            },
            2,
        );
        assert_eq!(SpecJson::attention(&plain).to_attention().unwrap(), plain);
        let bad = SpecJson {
            dtype: "f17".into(),
            ..SpecJson::layout(&kv)
        };
        assert!(bad.to_layout().unwrap_err().contains("f17"));
    }
}
