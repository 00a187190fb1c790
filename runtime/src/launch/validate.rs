//! The checks every launch makes before anything is queued, the same on
//! every device: spec, element types, arena shapes, page tables, slot
//! mappings, `qo_indptr` and buffer sizes.

use attnforge_codegen::kernels::append_source_dtype;
use attnforge_codegen::{AttentionSpec, KvLayoutSpec};

use super::Element;
use crate::plan::{KvScales, Params};
use crate::table::{validate_slots, PageTable};
use crate::RuntimeError;

fn arena_pages(layout: &KvLayoutSpec, k_len: usize, v_len: usize) -> Result<u64, RuntimeError> {
    let page = layout.page_elems() as usize;
    if k_len != v_len || !k_len.is_multiple_of(page) {
        return Err(RuntimeError::Shape(format!(
            "K and V arenas hold {} and {} elements; both must be the same whole number of \
             pages of {page} elements",
            k_len, v_len
        )));
    }
    Ok((k_len / page) as u64)
}

fn check_dtype<T: Element>(layout: &KvLayoutSpec) -> Result<(), RuntimeError> {
    if T::DTYPE != layout.dtype {
        return Err(RuntimeError::DType {
            spec: layout.dtype,
            given: T::DTYPE,
        });
    }
    Ok(())
}

/// The checks every attention launch shares: the spec, both element types,
/// the arenas' shape and the page table against them.
fn validate_attention<Q: Element, T: Element>(
    spec: &AttentionSpec,
    kv_len: (usize, usize),
    table: &PageTable,
) -> Result<(), RuntimeError> {
    spec.validate()?;
    check_dtype::<T>(&spec.kv)?;
    if Q::DTYPE != spec.query_dtype() {
        return Err(RuntimeError::DType {
            spec: spec.query_dtype(),
            given: Q::DTYPE,
        });
    }
    let max_pages = arena_pages(&spec.kv, kv_len.0, kv_len.1)?;
    table.validate(&spec.kv, max_pages)?;
    Ok(())
}

/// Every check a decode launch needs, on any device: the spec, the dtype,
/// the arenas' shape, the page table against them, and q/out's shape.
pub fn validate_decode<Q: Element, T: Element>(
    spec: &AttentionSpec,
    q: &[Q],
    kv_len: (usize, usize),
    table: &PageTable,
    out: &[Q],
) -> Result<(), RuntimeError> {
    validate_attention::<Q, T>(spec, kv_len, table)?;
    let batch = table.batch();
    let row = spec.q_heads as usize * spec.kv.head_dim as usize;
    let need = batch.checked_mul(row);
    if need != Some(q.len()) || need != Some(out.len()) {
        return Err(RuntimeError::Shape(format!(
            "q and out hold {} and {} elements; a batch of {batch} needs {} each \
             ([batch][q_heads][head_dim])",
            q.len(),
            out.len(),
            batch as u128 * row as u128
        )));
    }
    Ok(())
}

/// Every check a prefill launch needs, on any device: those of decode,
/// plus `qo_indptr` (batch + 1 entries from 0, never decreasing, ending at
/// q's rows) and every sequence's new tokens fitting in its KV. Returns the
/// longest sequence's packed query rows (new tokens × the group's query
/// heads): the grid covers them in query tiles of its kernel's rows
/// (`attnforge_codegen::kernels::prefill_rows`).
pub fn validate_prefill<Q: Element, T: Element>(
    spec: &AttentionSpec,
    params: &Params<'_>,
    q: &[Q],
    qo_indptr: &[i32],
    kv_len: (usize, usize),
    table: &PageTable,
    out: &[Q],
) -> Result<u64, RuntimeError> {
    validate_attention::<Q, T>(spec, kv_len, table)?;
    params.validate(spec)?;
    let batch = table.batch();
    let row = spec.q_heads as usize * spec.kv.head_dim as usize;
    if qo_indptr.len() != batch + 1 {
        return Err(RuntimeError::Shape(format!(
            "qo_indptr has {} entries; a batch of {batch} needs {}",
            qo_indptr.len(),
            batch + 1
        )));
    }
    let rows = q.len() / row.max(1);
    let longest = prefill_rows(spec.kv.page_size, qo_indptr, table)?;
    // Never negative here (it starts at 0 and never decreases).
    let total = qo_indptr[batch] as usize;
    let need = total.checked_mul(row);
    if need != Some(q.len()) || need != Some(out.len()) {
        return Err(RuntimeError::Shape(format!(
            "q and out hold {} and {} elements; qo_indptr's {total} query rows need {} each \
             ([rows][q_heads][head_dim]); q has {rows} rows",
            q.len(),
            out.len(),
            total as u128 * row as u128
        )));
    }
    Ok(longest * spec.group_size() as u64)
}

/// Checks a prefill's `qo_indptr` (batch + 1 entries) against the table:
/// from 0, never decreasing, and every sequence's new tokens within its KV
/// (they are already appended). Returns the most new tokens of a sequence.
pub(crate) fn prefill_rows(
    page_size: u32,
    qo_indptr: &[i32],
    table: &PageTable,
) -> Result<u64, RuntimeError> {
    let broken = |i: usize| {
        RuntimeError::Shape(format!(
            "qo_indptr[{i}] = {} breaks the rule: start at 0 and never decrease",
            qo_indptr[i]
        ))
    };
    // Checked for every batch, the empty one too.
    if qo_indptr.first() != Some(&0) {
        return Err(broken(0));
    }
    let mut longest = 0u64;
    for b in 0..table.batch() {
        let (lo, hi) = (qo_indptr[b], qo_indptr[b + 1]);
        if hi < lo {
            return Err(broken(b + 1));
        }
        let q_len = (hi - lo) as usize;
        let kv_len = table.seq_len(b, page_size);
        if q_len > kv_len {
            return Err(RuntimeError::Shape(format!(
                "sequence {b}: {q_len} new query tokens but {kv_len} tokens of KV; append \
                 the new tokens' K/V before prefill"
            )));
        }
        longest = longest.max(q_len as u64);
    }
    Ok(longest)
}

/// The query tiles (the prefill grid's x) over `packed` rows for a kernel
/// whose tiles hold `rows`.
pub(crate) fn query_tiles(packed: u64, rows: u32) -> Result<u32, RuntimeError> {
    u32::try_from(packed.div_ceil(rows.max(1) as u64))
        .map_err(|_| RuntimeError::Shape("too many query tiles".into()))
}

/// Every check an append launch needs, on any device; returns the number
/// of tokens (the grid).
pub fn validate_append<S: Element, T: Element>(
    layout: &KvLayoutSpec,
    scales: Option<&KvScales<'_>>,
    k_new: &[S],
    v_new: &[S],
    slots: &[i64],
    kv_len: (usize, usize),
) -> Result<u32, RuntimeError> {
    layout.validate()?;
    check_dtype::<T>(layout)?;
    let src = append_source_dtype(layout);
    if S::DTYPE != src {
        return Err(RuntimeError::DType {
            spec: src,
            given: S::DTYPE,
        });
    }
    KvScales::validate(scales, layout)?;
    let max_pages = arena_pages(layout, kv_len.0, kv_len.1)?;
    validate_slots(slots, layout, max_pages)?;
    let row = layout.kv_heads as usize * layout.head_dim as usize;
    let need = slots.len().checked_mul(row);
    if need != Some(k_new.len()) || need != Some(v_new.len()) {
        return Err(RuntimeError::Shape(format!(
            "k_new and v_new hold {} and {} elements; {} tokens need {} each \
             ([tokens][kv_heads][head_dim])",
            k_new.len(),
            v_new.len(),
            slots.len(),
            slots.len() as u128 * row as u128
        )));
    }
    u32::try_from(slots.len())
        .map_err(|_| RuntimeError::Shape("more than u32::MAX tokens in one append".into()))
}
