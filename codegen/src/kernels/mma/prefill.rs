//! Paged prefill on matrix cores, the FlashAttention-2 way.
//!
//! ```text
//! parameters, grid: as the SIMT prefill (kernels/prefill.rs), with query
//! tiles of 16 rows per warp: (query tiles, kv_heads, batch)
//! block: 4 warps (2 for large head dims on NVIDIA); warp w owns packed
//! rows row0 + 16w .. + 16
//! ```
//!
//! Each warp keeps its 16 rows' queries in registers as query-side
//! fragments (see [`super::Plan`]), or, where the output accumulators of
//! a large head dim leave no room for them (NVIDIA, head dims over 128),
//! in shared memory. The block walks the KV tiles its rows
//! can see; every thread helps stage a tile of `BN` tokens of K and V into
//! shared memory, converted to the query dtype (fp8 dequantized) and with
//! tokens past the range as zeros. Then each warp computes its logits
//! `S = Q·Kᵀ` on the matrix unit, masks them (length, causal, window),
//! applies scale, soft-cap and ALiBi, updates its rows' online softmax in
//! f32 (row maxima by shuffles across the lanes sharing a row), rescales
//! its output accumulators, and adds `P·V` with P rounded to the query
//! dtype, again on the matrix unit. Row sums stay per lane until the end,
//! where sinks join the denominator and fp8's V scale the factor.
//!
//! Head dims that are not a multiple of 16 are padded with zeros to one in
//! shared memory and in the query fragments.

use crate::ir::builder::KernelBuilder;
use crate::ir::mma::MmaInstr;
use crate::ir::{Expr, Kernel, Scalar, Special};
use crate::spec::AttentionSpec;
use crate::target::Target;

use super::super::alibi_slope;
use super::super::prefill::{declare, prefill_block, visible_kv, PrefillBlock};
use super::tile::{
    finish_rows, padded_dim, queries_in_registers, step, tile_stride, zeros, Queries, RowSlot,
    Tiles, Warp,
};
use super::{runs, Plan, WARP_ROWS};

/// Shared memory a matrix-core prefill block uses at most (every target's
/// static limit is 48 KiB or more).
const SHARED_BUDGET: u32 = 46 * 1024;
const LOG2_E: f32 = std::f32::consts::LOG2_E;

/// How a matrix-core prefill block is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Warps per block, 16 packed rows each.
    pub warps: u32,
    /// KV tokens per tile.
    pub bn: u32,
    /// The queries wait in shared memory instead of registers.
    pub q_shared: bool,
}

/// The block layout for a head dim on an instruction: four warps with
/// their queries in registers, and the largest KV tile whose K and V fit;
/// on NVIDIA above head dim 128 (where the 16 rows' output accumulators
/// take 4·head_dim/8 registers per lane), two warps with their queries in
/// shared memory.
pub(crate) fn shape(head_dim: u32, instr: MmaInstr) -> Shape {
    let row_bytes = tile_stride(head_dim) * 2;
    let q_shared = instr.warp_size() == 32 && padded_dim(head_dim) > 128;
    let warps = if q_shared { 2 } else { 4 };
    let q_bytes = if q_shared {
        warps * WARP_ROWS * row_bytes
    } else {
        0
    };
    let bn = [64u32, 32, 16]
        .into_iter()
        .find(|bn| q_bytes + 2 * bn * row_bytes <= SHARED_BUDGET)
        .unwrap_or(16);
    Shape {
        warps,
        bn,
        q_shared,
    }
}

/// Packed query rows per matrix-core prefill block.
pub(crate) fn block_rows(head_dim: u32, instr: MmaInstr) -> u32 {
    shape(head_dim, instr).warps * WARP_ROWS
}

pub(in crate::kernels) fn build(
    spec: &AttentionSpec,
    target: Target,
    name: &str,
    instr: MmaInstr,
) -> Kernel {
    let plan = Plan::new(instr);
    let kv = spec.kv;
    let (d, dp) = (kv.head_dim, padded_dim(kv.head_dim));
    let g = spec.group_size();
    let ws = target.warp_size;
    let sh = shape(d, instr);
    let threads = sh.warps * ws;
    let rows = sh.warps * WARP_ROWS;
    let bn = sh.bn;
    let stride = tile_stride(d);
    let input = instr.input();
    let q_elem = Scalar::of_dtype(spec.query_dtype());
    let (_, _, accn) = plan.lanes();
    let (s_frags, o_frags) = (bn / plan.outer, dp / plan.outer);
    let (slot_of, nslots) = plan.row_slots();
    let masks = plan.row_masks();
    let i32 = |v: u32| Expr::i32(v as i32);
    let i64 = |e: Expr| e.cast(Scalar::I64);
    let ninf = Expr::f32(f32::NEG_INFINITY);

    let mut b = KernelBuilder::new(name, target, threads);
    let io = declare(&mut b, spec);
    let sm_k = b.shared("sm_k", input, bn * stride);
    let sm_v = b.shared("sm_v", input, bn * stride);
    b.comment(format!(
        "{}: {} warps x {WARP_ROWS} packed rows ({g} heads per KV head), \
         KV tiles of {bn}; {s_frags} logit and {o_frags} output fragments per warp; \
         queries in {}",
        instr.mnemonic(),
        sh.warps,
        if sh.q_shared {
            "shared memory"
        } else {
            "registers"
        }
    ));
    let tid = b.let_("tid", Expr::special(Special::ThreadIdx));
    let PrefillBlock {
        head,
        qo_begin,
        q_len,
        page_begin,
        kv_len,
        scales,
        packed,
        row0,
    } = prefill_block(&mut b, spec, &io, rows);

    b.if_(row0.clone().lt(packed.clone()), |b| {
        let lane = b.let_("lane", Expr::special(Special::LaneId));
        let warp = b.let_("warp", Expr::special(Special::WarpId));
        let wrow0 = b.let_("wrow0", row0.clone() + warp * i32(WARP_ROWS));
        let (kv_lo, kv_hi) = visible_kv(b, spec, &row0, rows, &q_len, &kv_len);

        // This lane's query rows (one per slot).
        let slots: Vec<RowSlot> = (0..nslots)
            .map(|s| {
                let e = slot_of.iter().position(|&x| x == s).unwrap_or(0) as u32;
                let prow = b.let_(
                    &format!("prow{s}"),
                    wrow0.clone() + plan.acc_expr(&lane, e).0,
                );
                let ok = b.let_(&format!("row_ok{s}"), prow.clone().lt(packed.clone()));
                let pc = b.let_(
                    &format!("prow_c{s}"),
                    prow.min(packed.clone() - Expr::i32(1)),
                );
                let tok = b.let_(&format!("qi{s}"), pc.clone() / i32(g));
                let qhead = b.let_(&format!("qhead{s}"), head.clone() * i32(g) + pc % i32(g));
                let pos = b.let_(
                    &format!("pos{s}"),
                    kv_len.clone() - q_len.clone() + tok.clone(),
                );
                let slope2 = alibi_slope(spec, qhead.clone(), io.slopes)
                    .map(|sl| b.let_(&format!("slope2_{s}"), sl * Expr::f32(LOG2_E)));
                RowSlot {
                    ok,
                    tok,
                    qhead,
                    pos,
                    slope2,
                }
            })
            .collect();

        let queries = if sh.q_shared {
            b.comment("The block's queries in shared memory (padding rows and dims as zeros).");
            let sm_q = b.shared("sm_q", input, rows * stride);
            let chunks = dp / 8;
            b.for_(
                "i",
                tid.clone(),
                i32(rows * chunks),
                i32(threads),
                |b, i| {
                    let rr = b.let_("rr", i.clone() / i32(chunks));
                    let c = b.let_("c", i % i32(chunks));
                    let pr = b.let_("pr", row0.clone() + rr.clone());
                    let mut ok = pr.clone().lt(packed.clone());
                    let mut col = c.clone() * Expr::i32(8);
                    if dp != d {
                        ok = ok.and_then(col.clone().lt(i32(d)));
                        col = col.min(i32(d - 8));
                    }
                    let ok = b.let_("ok", ok);
                    let pc = b.let_("pc", pr.min(packed.clone() - Expr::i32(1)));
                    let tok = qo_begin.clone() + pc.clone() / i32(g);
                    let qh = head.clone() * i32(g) + pc % i32(g);
                    let off = (i64(tok) * Expr::i64(spec.q_heads as i64) + i64(qh))
                        * Expr::i64(d as i64)
                        + i64(col);
                    let raw = b.let_("qraw", Expr::load(io.q, off, 8));
                    b.store(
                        sm_q,
                        rr * i32(stride) + c * Expr::i32(8),
                        ok.select(raw, zeros(input, 8)),
                    );
                },
            );
            let first = b.let_("wq0", wrow0.clone() - row0.clone());
            Queries::Shared { buf: sm_q, first }
        } else {
            let row = |b: &mut KernelBuilder, r: Expr| {
                let prow = b.let_("qrow", wrow0.clone() + r);
                let ok = prow.clone().lt(packed.clone());
                let pc = b.let_("qrow_c", prow.min(packed.clone() - Expr::i32(1)));
                let tok = qo_begin.clone() + pc.clone() / i32(g);
                let qh = head.clone() * i32(g) + pc % i32(g);
                let base =
                    (i64(tok) * Expr::i64(spec.q_heads as i64) + i64(qh)) * Expr::i64(d as i64);
                (ok, base)
            };
            Queries::Registers(queries_in_registers(b, spec, &plan, &lane, io.q, &row))
        };

        let m = b.local_filled("m", Scalar::F32, nslots, ninf.clone());
        let l = b.local_filled("l", Scalar::F32, nslots, Expr::f32(0.0));
        let oacc = b.local_filled("o", Scalar::F32, o_frags * accn as u32, Expr::f32(0.0));
        let sacc = b.local("s", Scalar::F32, s_frags * accn as u32);

        // The positions of the warp's first and last real rows.
        let pos_of = |row: Expr| kv_len.clone() - q_len.clone() + row / i32(g);
        let first_pos = b.let_(
            "first_pos",
            pos_of(wrow0.clone().min(packed.clone() - Expr::i32(1))),
        );
        let last_pos = b.let_(
            "last_pos",
            pos_of((wrow0.clone() + i32(WARP_ROWS - 1)).min(packed.clone() - Expr::i32(1))),
        );
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
        let warp = Warp {
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
            o_first: Expr::i32(0),
            o_frags,
        };
        b.comment("Walk the visible KV tiles.");
        b.for_("kv0", kv_lo, kv_hi.clone(), i32(bn), |b, kv0| {
            let tile_end = b.let_("tile_end", (kv0.clone() + i32(bn)).min(kv_hi.clone()));
            let bounds = (&kv0, &tile_end);
            step(
                b,
                spec,
                &plan,
                &tiles,
                &warp,
                bounds,
                (&first_pos, &last_pos),
            );
        });

        b.comment("Normalise (the sink in the denominator) and write the rows.");
        let rows = finish_rows(b, &warp, ws, io.sinks, scales.as_ref().map(|s| &s.1));
        let out_runs = runs(accn, ws, |l, e| plan.acc_at(l, e));
        b.unroll("of", o_frags, |b, of| {
            for &(e0, len) in &out_runs {
                let s = slot_of[e0 as usize] as usize;
                let (_, outer) = plan.acc_expr(&lane, e0);
                let dim = b.let_("odim", of.clone() * i32(plan.outer) + outer);
                let slot = &slots[s];
                let mut ok = slot.ok.clone();
                if dp != d {
                    ok = ok.and_then(dim.clone().lt(i32(d)));
                }
                let vals: Vec<Expr> = (e0..e0 + len)
                    .map(|e| {
                        (Expr::load(oacc, of.clone() * i32(accn as u32) + i32(e), 1)
                            * rows[s].inv.clone())
                        .cast(q_elem)
                    })
                    .collect();
                let tok = qo_begin.clone() + slot.tok.clone();
                let at = (i64(tok) * Expr::i64(spec.q_heads as i64) + i64(slot.qhead.clone()))
                    * Expr::i64(d as i64)
                    + i64(dim);
                let v = if len == 1 {
                    vals[0].clone()
                } else {
                    Expr::Vector(vals)
                };
                b.if_(ok, |b| b.store(io.out, at, v));
            }
        });
    });
    b.finish()
}
