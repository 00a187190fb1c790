//! KV append: copies new K/V rows into their cache slots.
//!
//! ```text
//! k_new, v_new: [tokens][kv_heads][head_dim]      (dtype of the layout; f32 for fp8)
//! slot_mapping: [tokens] i64, slot = page·page_size + offset; < 0 skips the token
//! k_cache, v_cache: the two arenas, in the layout's order
//! k_scale, v_scale: fp8 only, one f32 per tensor or per KV head
//! grid: (tokens); block: 128 threads, 16-byte vectors
//! ```
//!
//! An fp8 layout quantizes: the stored value is `x / scale` rounded to
//! nearest even and saturated to ±448.

use crate::ir::builder::KernelBuilder;
use crate::ir::{Access, Dim, Expr, Kernel, Scalar, Special};
use crate::spec::{KvLayoutSpec, KvScale};
use crate::target::Target;

use super::{append_source_dtype, kv_offset, kv_scale_params, kv_vector_lanes, vector_lanes};

const BLOCK: u32 = 128;

pub(super) fn build(kv: &KvLayoutSpec, target: Target, name: &str) -> Kernel {
    let elem = Scalar::of_dtype(kv.dtype);
    let src_elem = Scalar::of_dtype(append_source_dtype(kv));
    let vec = kv_vector_lanes(kv);
    // Source elements per load: a chunk is one or more 16-byte pieces.
    let svec = vec.min(vector_lanes(append_source_dtype(kv)));
    let chunks = (kv.head_dim / vec) as i32;
    let mut b = KernelBuilder::new(name, target, BLOCK);
    let k_new = b.global("k_new", src_elem, Access::Read);
    let v_new = b.global("v_new", src_elem, Access::Read);
    let slots = b.global("slot_mapping", Scalar::I64, Access::Read);
    let k_cache = b.global("k_cache", elem, Access::ReadWrite);
    let v_cache = b.global("v_cache", elem, Access::ReadWrite);
    let scale_bufs = kv_scale_params(&mut b, kv);

    let token = b.let_("token", Expr::special(Special::BlockIdx(Dim::X)));
    let slot = b.let_("slot", Expr::load(slots, token.clone(), 1));
    b.if_(slot.clone().ge(Expr::i64(0)), |b| {
        let page_size = Expr::i64(kv.page_size as i64);
        let page = b.let_("page", slot.clone() / page_size.clone());
        let offset = b.let_("offset", slot % page_size);
        let total = Expr::i32(kv.kv_heads as i32 * chunks);
        let tid = Expr::special(Special::ThreadIdx);
        b.for_("i", tid, total, Expr::special(Special::BlockDim), |b, i| {
            let head = b.let_("head", i.clone() / Expr::i32(chunks));
            let chunk = b.let_("chunk", i % Expr::i32(chunks));
            let i64 = |e: Expr| e.cast(Scalar::I64);
            let row = (i64(token.clone()) * Expr::i64(kv.kv_heads as i64) + i64(head.clone()))
                * Expr::i64(kv.head_dim as i64)
                + i64(chunk.clone()) * Expr::i64(vec as i64);
            let src = b.let_("src", row);
            let dst = kv_offset(
                kv,
                page.clone(),
                offset.clone(),
                head.clone().cast(Scalar::I64),
            ) + chunk.cast(Scalar::I64) * Expr::i64(vec as i64);
            let dst = b.let_("dst", dst);
            match scale_bufs {
                None => {
                    let k = Expr::load(k_new, src.clone(), vec as u8);
                    b.store(k_cache, dst.clone(), k);
                    let v = Expr::load(v_new, src, vec as u8);
                    b.store(v_cache, dst, v);
                }
                Some((ks, vs)) => {
                    let at = match kv.scale {
                        KvScale::PerHead => head.clone(),
                        _ => Expr::i32(0),
                    };
                    for (name, from, to, scale) in
                        [("k", k_new, k_cache, ks), ("v", v_new, v_cache, vs)]
                    {
                        let sc =
                            b.let_(&format!("{name}_scale_h"), Expr::load(scale, at.clone(), 1));
                        let mut lanes = Vec::new();
                        for p in 0..vec / svec {
                            let raw = b.let_(
                                &format!("{name}{p}"),
                                Expr::load(
                                    from,
                                    src.clone() + Expr::i64((p * svec) as i64),
                                    svec as u8,
                                ),
                            );
                            for e in 0..svec {
                                let x = raw.clone().lane(e as u8).cast(Scalar::F32);
                                lanes.push((x / sc.clone()).cast(elem));
                            }
                        }
                        b.store(to, dst.clone(), Expr::Vector(lanes));
                    }
                }
            }
        });
    });
    b.finish()
}
