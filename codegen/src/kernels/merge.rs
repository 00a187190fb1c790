//! The merge of split-K decode (flash-decoding's second kernel).
//!
//! ```text
//! part_out: [batch][q_heads][splits][head_dim] f32   each split's normalised output
//! part_ml:  [batch][q_heads][splits][2] f32          its running max (base 2) and sum
//! (sinks:   [q_heads] f32)
//! out:      [batch][q_heads][head_dim]               the query dtype
//! grid: (q_heads, batch); block: MERGE_THREADS threads; num_splits a launch argument
//! ```
//!
//! With `M` the largest max, split `s` weighs `w_s = l_s·2^(m_s − M)`, and
//! the output is `Σ w_s·o_s / Σ w_s`: the softmax over the whole context,
//! whatever the split. An empty split (`m_s = −∞`) weighs nothing. A sink
//! joins the denominator here, once. The splits are summed in a fixed order,
//! so a given split gives the same bits on every run.

use crate::ir::builder::KernelBuilder;
use crate::ir::{Access, Dim, Expr, Kernel, Scalar, Special};
use crate::spec::AttentionSpec;
use crate::target::Target;

use super::variant_params;

/// Threads per merge block.
pub const MERGE_THREADS: u32 = 64;

const LOG2_E: f32 = std::f32::consts::LOG2_E;

pub(super) fn build(spec: &AttentionSpec, target: Target, name: &str) -> Kernel {
    let d = spec.kv.head_dim as i64;
    let q_elem = Scalar::of_dtype(spec.query_dtype());
    let ninf = Expr::f32(f32::NEG_INFINITY);
    let mut b = KernelBuilder::new(name, target, MERGE_THREADS.max(target.warp_size));
    let part_out = b.global("part_out", Scalar::F32, Access::Read);
    let part_ml = b.global("part_ml", Scalar::F32, Access::Read);
    let (sinks, _) = variant_params(
        &mut b,
        &AttentionSpec {
            alibi: None,
            ..*spec
        },
        true,
    );
    let out = b.global("out", q_elem, Access::ReadWrite);
    let splits = b.scalar_param("num_splits", Scalar::I32);

    let qhead = b.let_("qhead", Expr::special(Special::BlockIdx(Dim::X)));
    let seq = b.let_("seq", Expr::special(Special::BlockIdx(Dim::Y)));
    let row = b.let_(
        "row",
        seq.cast(Scalar::I64) * Expr::i64(spec.q_heads as i64) + qhead.clone().cast(Scalar::I64),
    );
    let first = b.let_("first", row.clone() * splits.clone().cast(Scalar::I64));

    b.comment("The largest running max over the splits (and the sink).");
    let init = match sinks {
        Some(buf) => Expr::load(buf, qhead.clone(), 1) * Expr::f32(LOG2_E),
        None => ninf.clone(),
    };
    let sink = sinks.map(|_| b.let_("sink", init.clone()));
    let m = b.var("m", init);
    b.for_("s", Expr::i32(0), splits.clone(), Expr::i32(1), |b, s| {
        let ms = Expr::load(
            part_ml,
            (first.clone() + s.cast(Scalar::I64)) * Expr::i64(2),
            1,
        );
        b.set(m, Expr::Var(m).max(ms));
    });

    b.comment("Each thread weighs the splits for its output elements.");
    let tid = Expr::special(Special::ThreadIdx);
    let step = Expr::special(Special::BlockDim);
    b.for_("dd", tid, Expr::i32(d as i32), step, |b, dd| {
        let l = b.var(
            "l",
            match &sink {
                Some(sk) => (sk.clone() - Expr::Var(m)).exp2(),
                None => Expr::f32(0.0),
            },
        );
        let acc = b.var("acc", Expr::f32(0.0));
        b.for_("s", Expr::i32(0), splits.clone(), Expr::i32(1), |b, s| {
            let part = b.let_("part", first.clone() + s.cast(Scalar::I64));
            let ms = b.let_("ms", Expr::load(part_ml, part.clone() * Expr::i64(2), 1));
            let ls = Expr::load(part_ml, part.clone() * Expr::i64(2) + Expr::i64(1), 1);
            let w = b.let_(
                "w",
                ms.clone()
                    .eq_(ninf.clone())
                    .select(Expr::f32(0.0), ls * (ms.clone() - Expr::Var(m)).exp2()),
            );
            let os = Expr::load(
                part_out,
                part * Expr::i64(d) + dd.clone().cast(Scalar::I64),
                1,
            );
            b.set(l, Expr::Var(l) + w.clone());
            // An empty split's output is 0, never NaN: the weight masks it.
            b.set(
                acc,
                w.clone()
                    .gt(Expr::f32(0.0))
                    .select(os.fma(w, Expr::Var(acc)), Expr::Var(acc)),
            );
        });
        let o = Expr::Var(l)
            .gt(Expr::f32(0.0))
            .select(Expr::Var(acc) / Expr::Var(l), Expr::f32(0.0));
        b.store(
            out,
            row.clone() * Expr::i64(d) + dd.cast(Scalar::I64),
            o.cast(q_elem),
        );
    });
    b.finish()
}
