//! KV append: copies new K/V rows into their cache slots.
//!
//! ```text
//! k_new, v_new: [tokens][kv_heads][head_dim]      (dtype of the layout)
//! slot_mapping: [tokens] i64, slot = page·page_size + offset; < 0 skips the token
//! k_cache, v_cache: the two arenas, in the layout's order
//! grid: (tokens); block: 128 threads, 16-byte vectors
//! ```

use crate::ir::builder::KernelBuilder;
use crate::ir::{Access, Dim, Expr, Kernel, Scalar, Special};
use crate::spec::KvLayoutSpec;
use crate::target::Target;

use super::{kv_offset, vector_lanes};

const BLOCK: u32 = 128;

pub(super) fn build(kv: &KvLayoutSpec, target: Target, name: &str) -> Kernel {
    let elem = Scalar::of_dtype(kv.dtype);
    let vec = vector_lanes(kv.dtype);
    let chunks = (kv.head_dim / vec) as i32;
    let mut b = KernelBuilder::new(name, target, BLOCK);
    let k_new = b.global("k_new", elem, Access::Read);
    let v_new = b.global("v_new", elem, Access::Read);
    let slots = b.global("slot_mapping", Scalar::I64, Access::Read);
    let k_cache = b.global("k_cache", elem, Access::ReadWrite);
    let v_cache = b.global("v_cache", elem, Access::ReadWrite);

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
            let dst = kv_offset(kv, page.clone(), offset.clone(), head.cast(Scalar::I64))
                + chunk.cast(Scalar::I64) * Expr::i64(vec as i64);
            let dst = b.let_("dst", dst);
            let k = Expr::load(k_new, src.clone(), vec as u8);
            b.store(k_cache, dst.clone(), k);
            let v = Expr::load(v_new, src, vec as u8);
            b.store(v_cache, dst, v);
        });
    });
    b.finish()
}
