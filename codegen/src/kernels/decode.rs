//! Paged decode attention: one query token per sequence.
//!
//! ```text
//! q, out:    [batch][q_heads][head_dim]            (the spec's query dtype)
//! k_cache, v_cache: the two arenas, in the layout's order
//! kv_indptr: [batch+1] i32, kv_indices: [pages] i32, kv_last_page_len: [batch] i32
//! grid: (kv_heads, batch); block: DECODE_WARPS warps
//! ```
//!
//! One block serves one KV head of one sequence and all `G = q_heads /
//! kv_heads` query heads that share it, so each K/V row is read once per
//! group. A K/V row of `head_dim` elements is split into 16-byte chunks read by
//! a *row group* of `R` lanes (`R` = chunks rounded up to a power of two, at
//! most the warp size; a lane reads several chunks when a row has more chunks
//! than a warp has lanes). A warp holds `warp_size / R` row groups, each
//! walking its own tokens; every row group keeps an online softmax state
//! (running max `m`, sum `l`, accumulator) per query head in f32, in the base-2
//! domain. At the end the row groups of a warp merge through shuffles and the
//! warps through shared memory.
//!
//! Tokens past the sequence are never read: a row group past the end reads a
//! clamped, valid token and masks its weight to zero, so NaN in free pages
//! never reaches the output. A sliding window starts the walk at the first
//! token inside the window, so pages before it are never touched.
//!
//! ALiBi adds `slope·(t − (kv_len − 1))` to token t's logit (the slope
//! computed from the head index, or loaded from `alibi_slopes`); sinks
//! (`sinks`, one logit per query head) join the denominator when the warps
//! merge. The split-K form (see [`build`]) writes per-chunk partials instead,
//! and leaves the sinks to the merge kernel.

use crate::ir::builder::KernelBuilder;
use crate::ir::{Access, BufId, Dim, Expr, Kernel, Scalar, Special};
use crate::spec::AttentionSpec;
use crate::target::{Arch, Target};

use super::{
    alibi_slope, kv_offset, kv_scale_params, kv_scale_values, kv_vector_lanes, logit2, seq_pages,
    variant_params, vector_lanes,
};

/// Warps per decode block.
pub const DECODE_WARPS: u32 = 4;

/// Shared memory a decode block may use for its warps' merge: within every
/// GPU target's static limit (48 KiB on NVIDIA without opt-in, 64 KiB on
/// AMD).
const MERGE_SHARED_BYTES: u32 = 48 * 1024;

/// Query heads' elements one lane may keep in registers (queries and
/// accumulators, each): beyond it a block's heads would spill.
const LANE_HEAD_ELEMS: u32 = 128;

/// How a decode block covers a group of `G` query heads: `(blocks, heads)`,
/// `blocks` blocks per KV head, each serving `heads` of the group's heads
/// (the last block of a group fewer when `heads` does not divide `G`).
///
/// One block serves the whole group when its warps' merge (every warp's
/// accumulator of every head, in shared memory) and its lanes' registers
/// (each head's query and accumulator chunks) fit; a larger group (MQA with
/// many query heads, for example) is spread evenly over several blocks,
/// each reading the KV head's rows. The same split holds at every target,
/// so the grid is the same everywhere.
pub fn decode_head_blocks(spec: &AttentionSpec) -> (u32, u32) {
    let (d, g) = (spec.kv.head_dim, spec.group_size());
    // Per-lane elements of a row at warp 32 (the most a lane holds).
    let vec = kv_vector_lanes(&spec.kv);
    let chunks = d / vec;
    let n = chunks.div_ceil(chunks.next_power_of_two().min(32)) * vec;
    let by_regs = LANE_HEAD_ELEMS / n;
    let by_shared = MERGE_SHARED_BYTES / (DECODE_WARPS * (d + 2) * 4);
    let cap = by_regs.min(by_shared).max(1);
    let blocks = g.div_ceil(cap);
    (blocks, g.div_ceil(blocks))
}

/// The query heads one decode block serves: `decode_head_blocks(spec).1`
/// heads of KV head `kv_head`'s group, from the group's head `first` on.
pub(super) struct HeadBlock {
    /// The KV head.
    pub kv_head: Expr,
    group: u32,
    /// The block's first head in the group (None: the whole group).
    first: Option<Expr>,
    /// Whether the group's last block has fewer heads than the others.
    partial: bool,
}

impl HeadBlock {
    pub fn new(b: &mut KernelBuilder, spec: &AttentionSpec) -> HeadBlock {
        let (blocks, heads) = decode_head_blocks(spec);
        let group = spec.group_size();
        let bx = Expr::special(Special::BlockIdx(Dim::X));
        if blocks == 1 {
            return HeadBlock {
                kv_head: b.let_("kv_head", bx),
                group,
                first: None,
                partial: false,
            };
        }
        b.comment(format!(
            "The group's {group} query heads are spread over {blocks} blocks of {heads}."
        ));
        let n = Expr::i32(blocks as i32);
        let kv_head = b.let_("kv_head", bx.clone() / n.clone());
        let first = b.let_("head0", bx % n * Expr::i32(heads as i32));
        debug_assert!(heads * (blocks - 1) < group, "every block has a head");
        HeadBlock {
            kv_head,
            group,
            first: Some(first),
            partial: !group.is_multiple_of(heads),
        }
    }

    /// The group head of the block's head `gi`, clamped to the group (a
    /// head past it, in a partial block, computes the last head again and
    /// writes nothing).
    fn in_group(&self, gi: Expr) -> Expr {
        match (&self.first, self.partial) {
            (None, _) => gi,
            (Some(f), false) => f.clone() + gi,
            (Some(f), true) => (f.clone() + gi).min(Expr::i32(self.group as i32 - 1)),
        }
    }

    /// The query head of the block's head `gi`.
    pub fn qhead(&self, gi: Expr) -> Expr {
        self.kv_head.clone() * Expr::i32(self.group as i32) + self.in_group(gi)
    }

    /// The same heads of the group of KV head `kv_head` (for a host block
    /// serving several KV heads).
    pub fn of_kv_head(&self, kv_head: Expr) -> HeadBlock {
        HeadBlock {
            kv_head,
            group: self.group,
            first: self.first.clone(),
            partial: self.partial,
        }
    }

    /// Whether the block's head `gi` is one of the group's (`None`: always).
    pub fn real(&self, gi: Expr) -> Option<Expr> {
        match (&self.first, self.partial) {
            (Some(f), true) => Some((f.clone() + gi).lt(Expr::i32(self.group as i32))),
            _ => None,
        }
    }
}

const LOG2_E: f32 = std::f32::consts::LOG2_E;

/// The decode kernel, or with `split` the split-K decode kernel: block z of
/// a sequence reads tokens `[start + z·chunk, start + (z+1)·chunk)` of its
/// walk (`chunk_tokens` a launch argument) and writes its normalised partial
/// output and `(max, sum)` in f32, for [`super::merge`] to combine.
pub(super) fn build(spec: &AttentionSpec, target: Target, name: &str, split: bool) -> Kernel {
    let kv = spec.kv;
    let q_elem = Scalar::of_dtype(spec.query_dtype());
    let ws = target.warp_size;
    let d = kv.head_dim;
    let vec = kv_vector_lanes(&kv);
    let chunks = d / vec;
    let lanes_per_row = chunks.next_power_of_two().min(ws);
    let chunks_per_lane = chunks.div_ceil(lanes_per_row);
    let rows_per_warp = ws / lanes_per_row;
    let rows = DECODE_WARPS * rows_per_warp;
    let i32 = |v: u32| Expr::i32(v as i32);
    let i64 = |e: Expr| e.cast(Scalar::I64);
    let ninf = Expr::f32(f32::NEG_INFINITY);

    if target.arch == Arch::Host {
        return super::host::decode::build(spec, target, name, split);
    }
    let mut b = KernelBuilder::new(name, target, DECODE_WARPS * ws);
    let io = declare(&mut b, spec, split);
    let (q, k_cache, v_cache, indptr, indices, last_len) = (
        io.q,
        io.k_cache,
        io.v_cache,
        io.indptr,
        io.indices,
        io.last_len,
    );
    let (sinks, slopes, scale_bufs, out) = (io.sinks, io.slopes, io.scales, io.out);
    // The query heads a block serves (the whole group, or its share).
    let g = decode_head_blocks(spec).1;
    let sm_m = b.shared("sm_m", Scalar::F32, DECODE_WARPS * g);
    let sm_l = b.shared("sm_l", Scalar::F32, DECODE_WARPS * g);
    let sm_acc = b.shared("sm_acc", Scalar::F32, DECODE_WARPS * g * d);

    b.comment(format!(
        "{g} query heads per {}; {chunks} chunks of {vec} per row, read by {lanes_per_row} \
         lanes ({chunks_per_lane} each); {rows} rows in flight per block",
        if decode_head_blocks(spec).0 == 1 {
            "KV head"
        } else {
            "block"
        }
    ));
    let lane = b.let_("lane", Expr::special(Special::LaneId));
    let warp = b.let_("warp", Expr::special(Special::WarpId));
    let r = b.let_("r", lane.clone() % i32(lanes_per_row));
    let row = b.let_(
        "row",
        warp.clone() * i32(rows_per_warp) + lane.clone() / i32(lanes_per_row),
    );
    let heads = HeadBlock::new(&mut b, spec);
    let head = heads.kv_head.clone();
    let seq = b.let_("seq", Expr::special(Special::BlockIdx(Dim::Y)));
    let (page_begin, kv_len) = seq_pages(&mut b, &kv, indptr, last_len, &seq);
    // fp8: K's scale multiplies the dot product, V's the output.
    let scales = kv_scale_values(&mut b, &kv, scale_bufs, &head);
    let (start, end) = walk(&mut b, spec, &out, &kv_len);

    // Chunk c of this lane is r + c·R, clamped to the last real chunk (its
    // contribution is masked when it is padding, which only the last chunk
    // of a lane can be).
    let padded = chunks_per_lane * lanes_per_row > chunks;
    let chunk_of = |c: Expr| {
        let ci = r.clone() + c * i32(lanes_per_row);
        match padded {
            true => ci.min(i32(chunks - 1)),
            false => ci,
        }
    };
    let chunk_ok = |c: Expr| (r.clone() + c * i32(lanes_per_row)).lt(i32(chunks));

    // Per lane: `n` elements of a row (chunk c's element e at c·vec + e),
    // per query head of the group, in registers.
    let n = chunks_per_lane * vec;
    let qf = b.local("qf", Scalar::F32, g * n);
    let qvec = vec.min(vector_lanes(spec.query_dtype()));
    b.unroll("gi", g, |b, gi| {
        let qhead = heads.qhead(gi.clone());
        let base = b.let_(
            "q_base",
            (i64(seq.clone()) * Expr::i64(spec.q_heads as i64) + i64(qhead)) * Expr::i64(d as i64),
        );
        b.unroll("c", chunks_per_lane, |b, c| {
            let ok = padded.then(|| b.let_("ok", chunk_ok(c.clone())));
            let ci = b.let_("ci", chunk_of(c.clone()));
            // A query chunk is as many elements as a K/V chunk, read in
            // 16-byte pieces (two when the query is wider than the cache).
            let off = b.let_("q_off", base.clone() + i64(ci) * Expr::i64(vec as i64));
            let raws: Vec<Expr> = (0..vec / qvec)
                .map(|p| {
                    let o = match p {
                        0 => off.clone(),
                        _ => off.clone() + Expr::i64((p * qvec) as i64),
                    };
                    b.let_(&format!("q{p}"), Expr::load(q, o, qvec as u8))
                })
                .collect();
            for e in 0..vec {
                let x = raws[(e / qvec) as usize]
                    .clone()
                    .lane((e % qvec) as u8)
                    .cast(Scalar::F32);
                let x = match &ok {
                    Some(ok) => ok.clone().select(x, Expr::f32(0.0)),
                    None => x,
                };
                let at = gi.clone() * i32(n) + c.clone() * i32(vec) + i32(e);
                b.store(qf, at, x);
            }
        });
    });

    // Online softmax state per query head, base 2.
    let m = b.local_filled("m", Scalar::F32, g, ninf.clone());
    let l = b.local_filled("l", Scalar::F32, g, Expr::f32(0.0));
    let acc = b.local_filled("acc", Scalar::F32, g * n, Expr::f32(0.0));
    let kf = b.local("kf", Scalar::F32, n);
    let vf = b.local("vf", Scalar::F32, n);
    let dots = b.local("dots", Scalar::F32, g);
    // ALiBi's slope per query head, times log2(e): the bias of token t is
    // slope·(t − (kv_len − 1)) in the base-2 domain.
    let slope2 = spec.alibi.is_some().then(|| {
        let buf = b.local("slope2", Scalar::F32, g);
        b.unroll("gi", g, |b, gi| {
            let qhead = heads.qhead(gi.clone());
            let s = alibi_slope(spec, qhead, slopes).expect("the spec has ALiBi");
            b.store(buf, gi, s * Expr::f32(LOG2_E));
        });
        buf
    });

    b.comment("Walk the tokens: each row group takes one token per step.");
    b.for_("t0", start, end.clone(), i32(rows), |b, t0| {
        let t = b.let_("t", t0 + row.clone());
        let valid = b.let_("valid", t.clone().lt(end.clone()));
        let tc = b.let_("tc", t.clone().min(end.clone() - Expr::i32(1)));
        let dist = slope2.map(|_| {
            b.let_(
                "dist",
                (t.clone() - kv_len.clone() + Expr::i32(1)).cast(Scalar::F32),
            )
        });
        let page_pos = page_begin.clone() + tc.clone() / i32(kv.page_size);
        let page = b.let_("page", Expr::load(indices, page_pos, 1));
        let slot = b.let_("slot", tc % i32(kv.page_size));
        let row_base = b.let_(
            "row_base",
            kv_offset(&kv, i64(page), i64(slot), i64(head.clone())),
        );
        b.unroll("c", chunks_per_lane, |b, c| {
            let ci = b.let_("ci", chunk_of(c.clone()));
            let off = b.let_("off", row_base.clone() + i64(ci) * Expr::i64(vec as i64));
            let kraw = b.let_("k", Expr::load(k_cache, off.clone(), vec as u8));
            let vraw = b.let_("v", Expr::load(v_cache, off, vec as u8));
            for e in 0..vec {
                let at = c.clone() * i32(vec) + i32(e);
                b.store(kf, at.clone(), kraw.clone().lane(e as u8).cast(Scalar::F32));
                b.store(vf, at, vraw.clone().lane(e as u8).cast(Scalar::F32));
            }
        });
        // Partial dots of every query head, then one butterfly over the row
        // group for all of them (the shuffles of a step are independent).
        b.unroll("gi", g, |b, gi| {
            let dot = b.var("dot", Expr::f32(0.0));
            b.unroll("j", n, |b, j| {
                let qx = Expr::load(qf, gi.clone() * i32(n) + j.clone(), 1);
                let kx = Expr::load(kf, j, 1);
                b.set(dot, qx.fma(kx, Expr::Var(dot)));
            });
            b.store(dots, gi, Expr::Var(dot));
        });
        let mut mask = lanes_per_row / 2;
        while mask > 0 {
            let others: Vec<Expr> = (0..g)
                .map(|gi| {
                    let d = Expr::load(dots, i32(gi), 1);
                    b.shfl_xor(&format!("dot{gi}_x{mask}"), d, mask as i32, ws)
                })
                .collect();
            for (gi, o) in others.into_iter().enumerate() {
                let d = Expr::load(dots, i32(gi as u32), 1);
                b.store(dots, i32(gi as u32), d + o);
            }
            mask /= 2;
        }
        b.unroll("gi", g, |b, gi| {
            let bias = match (&slope2, &dist) {
                (Some(s), Some(d)) => Some(d.clone() * Expr::load(*s, gi.clone(), 1)),
                _ => None,
            };
            let dot = Expr::load(dots, gi.clone(), 1);
            let dot = match &scales {
                Some((ks, _)) => dot * ks.clone(),
                None => dot,
            };
            let s = logit2(spec, dot, bias);
            let s = b.let_("s", valid.clone().select(s, ninf.clone()));
            let m_old = b.let_("m_old", Expr::load(m, gi.clone(), 1));
            let m_new = b.let_("m_new", m_old.clone().max(s.clone()));
            let alpha = b.let_(
                "alpha",
                m_new
                    .clone()
                    .eq_(ninf.clone())
                    .select(Expr::f32(1.0), (m_old - m_new.clone()).exp2()),
            );
            let p = b.let_(
                "p",
                valid
                    .clone()
                    .select((s - m_new.clone()).exp2(), Expr::f32(0.0)),
            );
            let l_old = Expr::load(l, gi.clone(), 1);
            b.store(l, gi.clone(), l_old.fma(alpha.clone(), p.clone()));
            b.unroll("j", n, |b, j| {
                let at = gi.clone() * i32(n) + j.clone();
                let scaled = Expr::load(acc, at.clone(), 1) * alpha.clone();
                b.store(acc, at, p.clone().fma(Expr::load(vf, j, 1), scaled));
            });
            b.store(m, gi, m_new);
        });
    });

    b.comment("Merge the row groups of each warp.");
    let mut off = lanes_per_row;
    while off < ws {
        b.unroll("gi", g, |b, gi| {
            let m_me = b.let_("m_me", Expr::load(m, gi.clone(), 1));
            let l_me = b.let_("l_me", Expr::load(l, gi.clone(), 1));
            let m_o = b.shfl_xor(&format!("m_o{off}"), m_me.clone(), off as i32, ws);
            let l_o = b.shfl_xor(&format!("l_o{off}"), l_me.clone(), off as i32, ws);
            let m_new = b.let_("mm", m_me.clone().max(m_o.clone()));
            let is_empty = m_new.clone().eq_(ninf.clone());
            let fa = b.let_(
                "fa",
                is_empty
                    .clone()
                    .select(Expr::f32(0.0), (m_me - m_new.clone()).exp2()),
            );
            let fb = b.let_(
                "fb",
                is_empty.select(Expr::f32(0.0), (m_o - m_new.clone()).exp2()),
            );
            b.store(l, gi.clone(), l_me * fa.clone() + l_o * fb.clone());
            b.unroll("j", n, |b, j| {
                let at = gi.clone() * i32(n) + j;
                let a = b.let_("a", Expr::load(acc, at.clone(), 1));
                let a_o = b.shfl_xor(&format!("acc_o{off}"), a.clone(), off as i32, ws);
                b.store(acc, at, a * fa.clone() + a_o * fb.clone());
            });
            b.store(m, gi, m_new);
        });
        off *= 2;
    }

    b.comment("The first row group of each warp hands its state to shared memory:");
    b.comment("lane 0 the running max and sum, every lane of the group its chunks.");
    b.if_(lane.clone().eq_(Expr::i32(0)), |b| {
        b.unroll("gi", g, |b, gi| {
            let slot = warp.clone() * i32(g) + gi.clone();
            b.store(sm_m, slot.clone(), Expr::load(m, gi.clone(), 1));
            b.store(sm_l, slot, Expr::load(l, gi, 1));
        });
    });
    b.if_(lane.clone().lt(i32(lanes_per_row)), |b| {
        b.unroll("gi", g, |b, gi| {
            let slot = b.let_("slot", warp.clone() * i32(g) + gi.clone());
            b.unroll("c", chunks_per_lane, |b, c| {
                let ci = chunk_of(c.clone());
                let store = |b: &mut KernelBuilder| {
                    b.unroll("e", vec, |b, e| {
                        let idx = slot.clone() * i32(d) + ci.clone() * i32(vec) + e.clone();
                        let at = gi.clone() * i32(n) + c.clone() * i32(vec) + e;
                        b.store(sm_acc, idx, Expr::load(acc, at, 1));
                    });
                };
                match padded {
                    true => b.if_(chunk_ok(c.clone()), store),
                    false => store(b),
                }
            });
        });
    });
    b.barrier();

    b.comment("Merge the warps and write the normalised output.");
    let tid = Expr::special(Special::ThreadIdx);
    b.for_(
        "i",
        tid,
        i32(g * d),
        Expr::special(Special::BlockDim),
        |b, i| {
            let gi = b.let_("gi", i.clone() / i32(d));
            let dd = b.let_("dd", i % i32(d));
            let ms: Vec<Expr> = (0..DECODE_WARPS)
                .map(|w| {
                    let idx = i32(w * g) + gi.clone();
                    b.let_(&format!("mw{w}"), Expr::load(sm_m, idx, 1))
                })
                .collect();
            let qhead = b.let_("qhead", heads.qhead(gi.clone()));
            let mut mx = ms[0].clone();
            for mw in &ms[1..] {
                mx = mx.max(mw.clone());
            }
            // A sink is one more logit in the denominator (base 2 here).
            let sink = sinks.map(|buf| {
                b.let_(
                    "sink",
                    Expr::load(buf, qhead.clone(), 1) * Expr::f32(LOG2_E),
                )
            });
            if let Some(sk) = &sink {
                mx = mx.max(sk.clone());
            }
            let mx = b.let_("mx", mx);
            let mut lsum = match &sink {
                Some(sk) => (sk.clone() - mx.clone()).exp2(),
                None => Expr::f32(0.0),
            };
            let mut asum = Expr::f32(0.0);
            for (w, mw) in ms.iter().enumerate() {
                let idx = i32(w as u32 * g) + gi.clone();
                let f = b.let_(
                    &format!("f{w}"),
                    mx.clone()
                        .eq_(ninf.clone())
                        .select(Expr::f32(0.0), (mw.clone() - mx.clone()).exp2()),
                );
                let lw = Expr::load(sm_l, idx.clone(), 1);
                lsum = lw.fma(f.clone(), lsum);
                let aw = Expr::load(sm_acc, idx * i32(d) + dd.clone(), 1);
                asum = aw.fma(f, asum);
            }
            let lsum = b.let_("lsum", lsum);
            let asum = b.let_("asum", asum);
            let o = match &scales {
                Some((_, vs)) => asum / lsum.clone() * vs.clone(),
                None => asum / lsum.clone(),
            };
            let o = lsum.clone().gt(Expr::f32(0.0)).select(o, Expr::f32(0.0));
            let row = i64(seq.clone()) * Expr::i64(spec.q_heads as i64) + i64(qhead);
            let write = |b: &mut KernelBuilder| match &out {
                Output::Final(out) => {
                    let idx = row * Expr::i64(d as i64) + i64(dd);
                    b.store(*out, idx, o.cast(q_elem));
                }
                Output::Partial { out, ml, .. } => {
                    // Partial p of (sequence, query head) row r sits at
                    // r·splits + p: out holds head_dim floats, ml (max, sum).
                    let splits = Expr::special(Special::GridDim(Dim::Z)).cast(Scalar::I64);
                    let z = Expr::special(Special::BlockIdx(Dim::Z)).cast(Scalar::I64);
                    let part = b.let_("part", row * splits + z);
                    b.store(
                        *out,
                        part.clone() * Expr::i64(d as i64) + i64(dd.clone()),
                        o,
                    );
                    b.if_(dd.eq_(Expr::i32(0)), |b| {
                        b.store(*ml, part.clone() * Expr::i64(2), mx.clone());
                        b.store(*ml, part * Expr::i64(2) + Expr::i64(1), lsum);
                    });
                }
            };
            // A head past the group (in its last, partial block) writes
            // nothing.
            match heads.real(gi) {
                Some(real) => b.if_(real, write),
                None => write(b),
            }
        },
    );
    b.finish()
}

/// A decode kernel's buffers and scalar parameters, declared in the
/// order every decode kernel (GPU or host schedule) shares.
pub(super) struct DecodeIo {
    pub q: BufId,
    pub k_cache: BufId,
    pub v_cache: BufId,
    pub indptr: BufId,
    pub indices: BufId,
    pub last_len: BufId,
    pub sinks: Option<BufId>,
    pub slopes: Option<BufId>,
    pub scales: Option<(BufId, BufId)>,
    pub out: Output,
}

/// Declares the parameters of a decode (or, with `split`, split-K decode)
/// kernel.
pub(super) fn declare(b: &mut KernelBuilder, spec: &AttentionSpec, split: bool) -> DecodeIo {
    let elem = Scalar::of_dtype(spec.kv.dtype);
    let q_elem = Scalar::of_dtype(spec.query_dtype());
    let q = b.global("q", q_elem, Access::Read);
    let k_cache = b.global("k_cache", elem, Access::Read);
    let v_cache = b.global("v_cache", elem, Access::Read);
    let indptr = b.global("kv_indptr", Scalar::I32, Access::Read);
    let indices = b.global("kv_indices", Scalar::I32, Access::Read);
    let last_len = b.global("kv_last_page_len", Scalar::I32, Access::Read);
    // Split-K leaves the sinks to the merge: they join the denominator once.
    let (sinks, slopes) = variant_params(b, spec, !split);
    let scales = kv_scale_params(b, &spec.kv);
    let out = if split {
        Output::Partial {
            out: b.global("part_out", Scalar::F32, Access::ReadWrite),
            ml: b.global("part_ml", Scalar::F32, Access::ReadWrite),
            chunk: b.scalar_param("chunk_tokens", Scalar::I32),
        }
    } else {
        Output::Final(b.global("out", q_elem, Access::ReadWrite))
    };
    DecodeIo {
        q,
        k_cache,
        v_cache,
        indptr,
        indices,
        last_len,
        sinks,
        slopes,
        scales,
        out,
    }
}

/// The tokens a decode block walks, `start..end`: from the window's first
/// token (or 0) to the end, or its split's chunk of that range.
pub(super) fn walk(
    b: &mut KernelBuilder,
    spec: &AttentionSpec,
    out: &Output,
    kv_len: &Expr,
) -> (Expr, Expr) {
    let start = match spec.sliding_window {
        Some(w) => b.let_(
            "start",
            (kv_len.clone() - Expr::i32(w as i32)).max(Expr::i32(0)),
        ),
        None => Expr::i32(0),
    };
    match out {
        Output::Final(_) => (start, kv_len.clone()),
        Output::Partial { chunk, .. } => {
            let z = Expr::special(Special::BlockIdx(Dim::Z));
            let lo = b.let_("chunk_start", start + z * chunk.clone());
            let hi = b.let_(
                "chunk_end",
                (lo.clone() + chunk.clone()).min(kv_len.clone()),
            );
            (lo, hi)
        }
    }
}

/// Where a decode kernel's result goes.
pub(super) enum Output {
    /// The normalised output, in the query dtype.
    Final(BufId),
    /// Split-K: the chunk's normalised output and its (max, sum), in f32.
    Partial { out: BufId, ml: BufId, chunk: Expr },
}
