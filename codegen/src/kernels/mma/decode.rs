//! Grouped decode on matrix cores (FlashInfer's tensor-core decode): the
//! query heads sharing a KV head are the rows of the instruction.
//!
//! ```text
//! parameters, grid: as the SIMT decode (kernels/decode.rs), split-K too
//! block: up to 4 warps; every warp holds all of the block's G ≤ 16 heads
//! (rows G..16 are padding) and the output dims of its share
//! ```
//!
//! The block walks its tokens (the window's, or its split's chunk) in
//! tiles of `BN`; every thread helps stage a tile of K and V into shared
//! memory in the query dtype (fp8 dequantized; tokens past the end as
//! zeros). Each warp then computes all the heads' logits for the tile on
//! the matrix unit, the same online softmax as the prefill, and `O += P·V`
//! for its own output dimensions, so the warps never merge: they agree on
//! every row's max and sum because they compute the same logits. Decode
//! reads each K/V byte once from memory; the repeated logits cost matrix
//! instructions, which decode has to spare.

use crate::ir::builder::KernelBuilder;
use crate::ir::mma::MmaInstr;
use crate::ir::{Dim, Expr, Kernel, Scalar, Special};
use crate::spec::AttentionSpec;
use crate::target::Target;

use super::super::decode::{declare, decode_head_blocks, walk, HeadBlock, Output};
use super::super::{alibi_slope, kv_scale_values, seq_pages};
use super::tile::{
    finish_rows, padded_dim, queries_in_registers, step, tile_stride, Queries, RowSlot, Tiles, Warp,
};
use super::{runs, Plan, WARP_ROWS};

/// The fewest query heads per block worth the matrix unit: below it, the
/// SIMT decode's FMAs keep up with memory anyway (FlashInfer's threshold).
pub(crate) const MIN_HEADS: u32 = 4;
/// Shared memory for one tile of K and V.
const TILE_BUDGET: u32 = 46 * 1024;
const LOG2_E: f32 = std::f32::consts::LOG2_E;

/// Warps per block: the most, up to 4, that share the output fragments
/// evenly.
pub(crate) fn warps(head_dim: u32, instr: MmaInstr) -> u32 {
    let frags = padded_dim(head_dim) / Plan::new(instr).outer;
    [4u32, 2, 1]
        .into_iter()
        .find(|w| frags.is_multiple_of(*w))
        .unwrap_or(1)
}

/// KV tokens per tile: 32, or 16 when K and V would not fit in shared
/// memory (where they are the query dtype's 2 bytes). fp8 caches were
/// tried at 64 tokens on an H200 (as many cache bytes in flight as f16's
/// 32): slower, 0.18–0.23 of the copy bandwidth against 0.28
/// (BENCHMARKS.md), so every dtype takes 32.
fn kv_tile(kv: &crate::spec::KvLayoutSpec) -> u32 {
    let row_bytes = tile_stride(kv.head_dim) * 2;
    [32u32, 16]
        .into_iter()
        .find(|bn| 2 * bn * row_bytes <= TILE_BUDGET)
        .unwrap_or(16)
}

/// Whether decode takes the matrix unit: enough heads per block.
pub(crate) fn applies(spec: &AttentionSpec) -> bool {
    let heads = decode_head_blocks(spec).1;
    (MIN_HEADS..=WARP_ROWS).contains(&heads)
}

pub(in crate::kernels) fn build(
    spec: &AttentionSpec,
    target: Target,
    name: &str,
    split: bool,
    instr: MmaInstr,
) -> Kernel {
    let plan = Plan::new(instr);
    let kv = spec.kv;
    let (d, dp) = (kv.head_dim, padded_dim(kv.head_dim));
    let ws = target.warp_size;
    let nwarps = warps(d, instr);
    let threads = nwarps * ws;
    let bn = kv_tile(&kv);
    let stride = tile_stride(d);
    let input = instr.input();
    let q_elem = Scalar::of_dtype(spec.query_dtype());
    let (_, _, accn) = plan.lanes();
    let s_frags = bn / plan.outer;
    let o_frags = dp / plan.outer / nwarps;
    let (slot_of, nslots) = plan.row_slots();
    let masks = plan.row_masks();
    let heads_n = decode_head_blocks(spec).1;
    let i32 = |v: u32| Expr::i32(v as i32);
    let i64 = |e: Expr| e.cast(Scalar::I64);
    let ninf = Expr::f32(f32::NEG_INFINITY);

    let mut b = KernelBuilder::new(name, target, threads);
    let io = declare(&mut b, spec, split);
    let sm_k = b.shared("sm_k", input, bn * stride);
    let sm_v = b.shared("sm_v", input, bn * stride);
    b.comment(format!(
        "{}: {heads_n} query heads as rows (of {WARP_ROWS}), KV tiles of {bn}; \
         {nwarps} warps, each all the logits and {o_frags} output fragments",
        instr.mnemonic()
    ));
    let tid = b.let_("tid", Expr::special(Special::ThreadIdx));
    let lane = b.let_("lane", Expr::special(Special::LaneId));
    let warp = b.let_("warp", Expr::special(Special::WarpId));
    let heads = HeadBlock::new(&mut b, spec);
    let head = heads.kv_head.clone();
    let seq = b.let_("seq", Expr::special(Special::BlockIdx(Dim::Y)));
    let (page_begin, kv_len) = seq_pages(&mut b, &kv, io.indptr, io.last_len, &seq);
    let scales = kv_scale_values(&mut b, &kv, io.scales, &head);
    let (start, end) = walk(&mut b, spec, &io.out, &kv_len);
    let pos = b.let_("pos", kv_len.clone() - Expr::i32(1));

    // This lane's rows: the block's heads, one per slot.
    let slots: Vec<RowSlot> = (0..nslots)
        .map(|s| {
            let e = slot_of.iter().position(|&x| x == s).unwrap_or(0) as u32;
            let r = b.let_(&format!("hrow{s}"), plan.acc_expr(&lane, e).0);
            let mut ok = r.clone().lt(i32(heads_n));
            if let Some(real) = heads.real(r.clone()) {
                ok = ok.and_then(real);
            }
            let ok = b.let_(&format!("row_ok{s}"), ok);
            let rc = r.min(i32(heads_n - 1));
            let qhead = b.let_(&format!("qhead{s}"), heads.qhead(rc));
            let slope2 = alibi_slope(spec, qhead.clone(), io.slopes)
                .map(|sl| b.let_(&format!("slope2_{s}"), sl * Expr::f32(LOG2_E)));
            RowSlot {
                ok,
                tok: Expr::i32(0),
                qhead,
                pos: pos.clone(),
                slope2,
            }
        })
        .collect();

    let row = |b: &mut KernelBuilder, r: Expr| {
        let hr = b.let_("qh_row", r);
        let mut ok = hr.clone().lt(i32(heads_n));
        if let Some(real) = heads.real(hr.clone()) {
            ok = ok.and_then(real);
        }
        let qh = heads.qhead(hr.min(i32(heads_n - 1)));
        let base =
            (i64(seq.clone()) * Expr::i64(spec.q_heads as i64) + i64(qh)) * Expr::i64(d as i64);
        (ok, base)
    };
    let queries = Queries::Registers(queries_in_registers(&mut b, spec, &plan, &lane, io.q, &row));
    let m = b.local_filled("m", Scalar::F32, nslots, ninf.clone());
    let l = b.local_filled("l", Scalar::F32, nslots, Expr::f32(0.0));
    let oacc = b.local_filled("o", Scalar::F32, o_frags * accn as u32, Expr::f32(0.0));
    let sacc = b.local("s", Scalar::F32, s_frags * accn as u32);
    let o_first = b.let_("o_first", warp * i32(o_frags));

    let tiles = Tiles {
        k_cache: io.k_cache,
        v_cache: io.v_cache,
        indices: io.indices,
        sm_k,
        sm_v,
        tid: &tid,
        threads,
        page_begin: &page_begin,
        head: &head,
        bn,
        stride,
        input,
    };
    let state = Warp {
        lane: &lane,
        slots: &slots,
        slot_of: &slot_of,
        masks: &masks,
        k_scale: scales.as_ref().map(|s| &s.0),
        queries: &queries,
        sacc,
        oacc,
        m,
        l,
        o_first: o_first.clone(),
        o_frags,
    };
    b.comment("Walk the tokens a tile at a time.");
    b.for_("kv0", start, end.clone(), i32(bn), |b, kv0| {
        let tile_end = b.let_("tile_end", (kv0.clone() + i32(bn)).min(end.clone()));
        step(
            b,
            spec,
            &plan,
            &tiles,
            &state,
            (&kv0, &tile_end),
            (&pos, &pos),
        );
    });

    b.comment("Each row's sum over its lanes; normalise and write this warp's dims.");
    let lead_bits: i32 = masks.iter().sum();
    // Split-K leaves the sinks to the merge.
    let sinks = match io.out {
        Output::Final(_) => io.sinks,
        Output::Partial { .. } => None,
    };
    let rows = finish_rows(&mut b, &state, ws, sinks, scales.as_ref().map(|s| &s.1));
    let out_runs = runs(accn, ws, |l, e| plan.acc_at(l, e));
    // Partial p of (sequence, query head) row r sits at r·splits + p.
    let part = |qhead: &Expr| {
        let row = i64(seq.clone()) * Expr::i64(spec.q_heads as i64) + i64(qhead.clone());
        let splits = Expr::special(Special::GridDim(Dim::Z)).cast(Scalar::I64);
        let z = Expr::special(Special::BlockIdx(Dim::Z)).cast(Scalar::I64);
        (row.clone(), row * splits + z)
    };
    b.unroll("of", o_frags, |b, of| {
        for &(e0, len) in &out_runs {
            let s = slot_of[e0 as usize] as usize;
            let slot = &slots[s];
            let (_, outer) = plan.acc_expr(&lane, e0);
            let dim = b.let_(
                "odim",
                (o_first.clone() + of.clone()) * i32(plan.outer) + outer,
            );
            let mut ok = slot.ok.clone();
            if dp != d {
                ok = ok.and_then(dim.clone().lt(i32(d)));
            }
            let val = |e: u32, to: Scalar| {
                let x = Expr::load(oacc, of.clone() * i32(accn as u32) + i32(e), 1)
                    * rows[s].inv.clone();
                if to == Scalar::F32 {
                    x
                } else {
                    x.cast(to)
                }
            };
            let (row, part_row) = part(&slot.qhead);
            let (buf, at, to) = match &io.out {
                Output::Final(out) => (*out, row * Expr::i64(d as i64) + i64(dim), q_elem),
                Output::Partial { out, .. } => {
                    (*out, part_row * Expr::i64(d as i64) + i64(dim), Scalar::F32)
                }
            };
            let v = if len == 1 {
                val(e0, to)
            } else {
                Expr::Vector((e0..e0 + len).map(|e| val(e, to)).collect())
            };
            b.if_(ok, |b| b.store(buf, at, v));
        }
    });
    if let Output::Partial { ml, .. } = &io.out {
        // One lane per row (of warp 0) writes the row's (max, sum).
        let lead = warp_is_zero_and(&lane, lead_bits);
        for (s, slot) in slots.iter().enumerate() {
            let (_, p) = part(&slot.qhead);
            let ok = slot.ok.clone().and_then(lead.clone());
            let (mx, ls) = (rows[s].max.clone(), rows[s].sum.clone());
            b.if_(ok, |b| {
                b.store(*ml, p.clone() * Expr::i64(2), mx);
                b.store(*ml, p * Expr::i64(2) + Expr::i64(1), ls);
            });
        }
    }
    b.finish()
}

/// Whether this is warp 0's lane with none of `bits` set: one lane of each
/// set of lanes sharing a row.
fn warp_is_zero_and(lane: &Expr, bits: i32) -> Expr {
    Expr::special(Special::WarpId)
        .eq_(Expr::i32(0))
        .and_then((lane.clone() & Expr::i32(bits)).eq_(Expr::i32(0)))
}
