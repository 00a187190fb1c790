//! Plan once per step: the batch's page table, lengths, slot mapping and
//! split-K decisions, built on the host and uploaded in one copy into a
//! [`Workspace`] allocated up front; every layer's launches reuse it.
//!
//! The uploaded block, in `i32`s, at offsets fixed by the workspace's
//! limits (so every step's launches get the same pointers, as a captured
//! graph needs): `kv_indptr` (room for max_batch + 1), `kv_last_page_len`
//! (max_batch), `qo_indptr` (max_batch + 1), padding to an even offset,
//! `slots` (max_new_tokens `i64`s), then `kv_indices` (max_pages). A step
//! uploads the block up to its last page index, in one copy. The split-K
//! partials have buffers of their own in the workspace.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use attnforge_codegen::{AttentionSpec, KvLayoutSpec};

use super::memory::{DeviceBuffer, Gpu, Stream, View};
use super::validate::prefill_rows;
use crate::driver::Driver;
use crate::plan::{plan_decode, DecodePlan, Split, MAX_SPLITS};
use crate::table::{validate_slots, PageTable};
use crate::RuntimeError;

/// What a [`Workspace`] holds room for, per step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkspaceLimits {
    /// Sequences in a step's batch.
    pub max_batch: u32,
    /// Pages in a step's page table, all sequences together.
    pub max_pages: u32,
    /// New tokens in a step (appended rows; a prefill's query rows).
    pub max_new_tokens: u32,
    /// Split-K chunks per sequence ([`MAX_SPLITS`] covers every
    /// [`Split::Auto`] plan).
    pub max_splits: u32,
}

impl WorkspaceLimits {
    /// Room for `max_batch` sequences over `max_pages` pages with
    /// `max_new_tokens` new tokens, and any automatic split.
    pub fn new(max_batch: u32, max_pages: u32, max_new_tokens: u32) -> WorkspaceLimits {
        WorkspaceLimits {
            max_batch,
            max_pages,
            max_new_tokens,
            max_splits: MAX_SPLITS,
        }
    }

    /// Where each array of the uploaded block starts at these limits, and
    /// its length in `i32`s.
    fn layout(&self) -> Option<(Offsets, usize)> {
        let b = self.max_batch as usize;
        let mut off = Offsets {
            kv_indptr: 0,
            last_page_len: b.checked_add(1)?,
            ..Offsets::default()
        };
        off.qo_indptr = off.last_page_len.checked_add(b)?;
        off.slots = off
            .qo_indptr
            .checked_add(b)?
            .checked_add(1)?
            .next_multiple_of(2);
        off.kv_indices = off
            .slots
            .checked_add((self.max_new_tokens as usize).checked_mul(2)?)?;
        let len = off.kv_indices.checked_add(self.max_pages as usize)?;
        Some((off, len))
    }
}

pub(crate) struct WsInner<D: Driver> {
    /// Held while a plan is uploaded, and by each run from its plan's
    /// check to its last enqueue: a run never reads a newer plan's block.
    lock: std::sync::Mutex<()>,
    pub(crate) generation: AtomicU64,
    pub(crate) meta: DeviceBuffer<i32, D>,
    pub(crate) part_out: DeviceBuffer<f32, D>,
    pub(crate) part_ml: DeviceBuffer<f32, D>,
}

/// Device memory for one step's plan and split-K partials, allocated once
/// (sized by [`WorkspaceLimits`] and the largest query row of the specs it
/// serves) and reused by every step.
pub struct Workspace<D: Driver> {
    inner: Arc<WsInner<D>>,
    limits: WorkspaceLimits,
    /// Partial rows' capacity: query heads × splits × batch, and head_dim.
    heads: usize,
    head_dim: usize,
    compute_units: u32,
    /// The target of the device's kernels (the decode plan depends on it).
    target: attnforge_codegen::Target,
    ordinal: u32,
    offsets: Offsets,
    /// The host side of the upload, reserved up front.
    staging: Vec<i32>,
}

impl<D: Driver> std::fmt::Debug for Workspace<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace")
            .field("limits", &self.limits)
            .field("ordinal", &self.ordinal)
            .finish()
    }
}

impl<D: Driver> Workspace<D> {
    /// A workspace on `gpu` for steps within `limits`, for attentions of
    /// `specs` (their largest query heads and head_dim size the partials).
    pub fn new(
        gpu: &Gpu<D>,
        specs: &[AttentionSpec],
        limits: WorkspaceLimits,
    ) -> Result<Workspace<D>, RuntimeError> {
        let heads = specs.iter().map(|s| s.q_heads as usize).max().unwrap_or(0);
        let head_dim = specs
            .iter()
            .map(|s| s.kv.head_dim as usize)
            .max()
            .unwrap_or(0);
        let too_large = || RuntimeError::Shape(format!("a workspace for {limits:?} is too large"));
        let rows = (limits.max_batch as usize)
            .checked_mul(heads)
            .and_then(|r| r.checked_mul(limits.max_splits as usize))
            .ok_or_else(too_large)?;
        let (offsets, meta_len) = limits.layout().ok_or_else(too_large)?;
        let mut staging = Vec::new();
        staging
            .try_reserve_exact(meta_len)
            .map_err(|_| too_large())?;
        Ok(Workspace {
            inner: Arc::new(WsInner {
                lock: std::sync::Mutex::new(()),
                generation: AtomicU64::new(0),
                meta: gpu.alloc(meta_len)?,
                part_out: gpu.alloc(rows.checked_mul(head_dim).ok_or_else(too_large)?)?,
                part_ml: gpu.alloc(rows.checked_mul(2).ok_or_else(too_large)?)?,
            }),
            limits,
            heads,
            head_dim,
            compute_units: gpu.driver().compute_units(),
            target: gpu.driver().target(),
            ordinal: gpu.ordinal(),
            offsets,
            staging,
        })
    }

    /// What it holds room for.
    pub fn limits(&self) -> &WorkspaceLimits {
        &self.limits
    }
}

/// One spec's part of a plan.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SpecPlan {
    pub(crate) spec: AttentionSpec,
    pub(crate) decode: DecodePlan,
    /// The longest sequence's packed query rows for prefill (the grid
    /// covers them in the kernel's query tiles); 0 for a decode step.
    pub(crate) packed: u64,
}

/// Where each array of the uploaded block starts, in `i32`s.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Offsets {
    pub(crate) slots: usize,
    pub(crate) kv_indptr: usize,
    pub(crate) kv_indices: usize,
    pub(crate) last_page_len: usize,
    pub(crate) qo_indptr: usize,
    /// Page indices in this step's table.
    pub(crate) n_indices: usize,
}

/// One step's plan, uploaded into a workspace: what every layer's launches
/// of the step read. Valid until the workspace is planned again, and (for
/// a plan made by a cache) until the cache's sequences or pages change.
pub struct StepPlan<D: Driver> {
    pub(crate) ws: Arc<WsInner<D>>,
    pub(crate) generation: u64,
    pub(crate) cache: Option<(u64, u64)>,
    pub(crate) ordinal: u32,
    pub(crate) layout: KvLayoutSpec,
    pub(crate) batch: u32,
    pub(crate) tokens: u32,
    /// Query rows of a prefill step (`None`: a decode step).
    pub(crate) prefill_rows: Option<u32>,
    /// Pages a layer's arena must hold: the highest page named, plus one.
    pub(crate) pages_needed: u64,
    pub(crate) offsets: Offsets,
    pub(crate) specs: Vec<SpecPlan>,
}

impl<D: Driver> std::fmt::Debug for StepPlan<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepPlan")
            .field("batch", &self.batch)
            .field("tokens", &self.tokens)
            .field("prefill_rows", &self.prefill_rows)
            .field("specs", &self.specs)
            .finish()
    }
}

/// What a step plan is built from.
pub(crate) struct StepInput<'a> {
    pub(crate) specs: &'a [AttentionSpec],
    pub(crate) layout: KvLayoutSpec,
    pub(crate) table: &'a PageTable,
    pub(crate) slots: &'a [i64],
    /// New query tokens per sequence, for a prefill step.
    pub(crate) q_lens: Option<&'a [u32]>,
    pub(crate) split: Split,
    /// Pages in each layer's arena.
    pub(crate) arena_pages: u64,
    pub(crate) cache: Option<(u64, u64)>,
}

fn short(what: &'static str, need: u64, have: u64) -> RuntimeError {
    RuntimeError::Workspace { what, need, have }
}

impl<D: Driver> Workspace<D> {
    /// Validates a step, plans it, and queues its one upload on `stream`.
    pub(crate) fn plan(
        &mut self,
        stream: &Stream<D>,
        input: StepInput<'_>,
    ) -> Result<StepPlan<D>, RuntimeError> {
        stream.same_device("workspace", self.ordinal)?;
        let StepInput {
            specs,
            layout,
            table,
            slots,
            q_lens,
            split,
            arena_pages,
            cache,
        } = input;
        for s in specs {
            s.validate()?;
            if s.kv != layout {
                return Err(RuntimeError::Shape(format!(
                    "the attention's layout {:?} is not the cache's {layout:?}",
                    s.kv
                )));
            }
        }
        table.validate(&layout, arena_pages)?;
        validate_slots(slots, &layout, arena_pages)?;
        let batch = table.batch();
        let l = &self.limits;
        let check = |what, need: usize, have: u32| {
            if need > have as usize {
                Err(short(what, need as u64, have as u64))
            } else {
                Ok(())
            }
        };
        check("batch", batch, l.max_batch)?;
        check("pages", table.indices.len(), l.max_pages)?;
        check("new tokens", slots.len(), l.max_new_tokens)?;
        let lens: Vec<usize> = (0..batch)
            .map(|b| table.seq_len(b, layout.page_size))
            .collect();
        // A prefill's query rows, checked against each sequence's KV.
        let qo: Option<(Vec<i32>, u64)> = match q_lens {
            None => None,
            Some(q) => {
                if q.len() != batch {
                    return Err(RuntimeError::Shape(format!(
                        "{batch} sequences but {} query lengths",
                        q.len()
                    )));
                }
                let qo = crate::device::qo_indptr(q)?;
                let longest = prefill_rows(layout.page_size, &qo, table)?;
                check("new tokens", qo[batch] as usize, l.max_new_tokens)?;
                Some((qo, longest))
            }
        };
        let mut plans = Vec::with_capacity(specs.len());
        for s in specs {
            let decode = plan_decode(
                s,
                self.target,
                lens.iter().copied(),
                split,
                self.compute_units,
            )?;
            if decode.split {
                check("splits", decode.splits as usize, l.max_splits)?;
            }
            check("query heads", s.q_heads as usize, self.heads as u32)?;
            check("head_dim", s.kv.head_dim as usize, self.head_dim as u32)?;
            let packed = match &qo {
                None => 0,
                Some((_, longest)) => longest * s.group_size() as u64,
            };
            plans.push(SpecPlan {
                spec: *s,
                decode,
                packed,
            });
        }
        // The block at its fixed offsets, up to the last page index.
        let off = Offsets {
            n_indices: table.indices.len(),
            ..self.offsets
        };
        let st = &mut self.staging;
        st.clear();
        st.resize(off.kv_indices + off.n_indices, 0);
        let put =
            |st: &mut Vec<i32>, at: usize, xs: &[i32]| st[at..at + xs.len()].copy_from_slice(xs);
        put(st, off.kv_indptr, &table.indptr);
        put(st, off.last_page_len, &table.last_page_len);
        if let Some((qo, _)) = &qo {
            put(st, off.qo_indptr, qo);
        }
        for (i, &s) in slots.iter().enumerate() {
            put(st, off.slots + 2 * i, &[s as i32, (s >> 32) as i32]);
        }
        put(st, off.kv_indices, &table.indices);
        let pages_needed = table
            .indices
            .iter()
            .map(|&p| p as i64 + 1)
            .chain(
                slots
                    .iter()
                    .map(|&s| s.div_euclid(layout.page_size as i64) + 1),
            )
            .max()
            .unwrap_or(0)
            .max(0) as u64;
        let _hold = self.inner.lock.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.inner.generation.fetch_add(1, Ordering::AcqRel) + 1;
        upload_meta(stream, &self.inner.meta, &self.staging)?;
        Ok(StepPlan {
            ws: self.inner.clone(),
            generation,
            cache,
            ordinal: self.ordinal,
            layout,
            batch: batch as u32,
            tokens: slots.len() as u32,
            prefill_rows: qo.as_ref().map(|(q, _)| q[batch] as u32),
            pages_needed,
            offsets: off,
            specs: plans,
        })
    }
}

/// The one upload of a step: `host` into the front of the workspace block.
fn upload_meta<D: Driver>(
    stream: &Stream<D>,
    meta: &DeviceBuffer<i32, D>,
    host: &[i32],
) -> Result<(), RuntimeError> {
    let view = meta.view().slice(0..host.len())?;
    // The block is written in stream order: a plan never overwrites what
    // an earlier step's queued launches read before they ran.
    super::memory::upload_view(stream, view, host)
}

impl<D: Driver> StepPlan<D> {
    /// Holds the workspace against a new plan (see [`WsInner`]'s lock).
    pub(crate) fn hold(&self) -> std::sync::MutexGuard<'_, ()> {
        self.ws.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks that the plan is the workspace's latest, for this device.
    pub(crate) fn check_current(&self, stream: &Stream<D>) -> Result<(), RuntimeError> {
        stream.same_device("step plan", self.ordinal)?;
        if self.ws.generation.load(Ordering::Acquire) != self.generation {
            return Err(RuntimeError::StalePlan(
                "its workspace was planned again since: plan once per step, then run \
                 that step's layers with the newest plan"
                    .into(),
            ));
        }
        Ok(())
    }

    /// This plan's part for `spec`.
    pub(crate) fn for_spec(&self, spec: &AttentionSpec) -> Result<&SpecPlan, RuntimeError> {
        self.specs.iter().find(|p| p.spec == *spec).ok_or_else(|| {
            RuntimeError::StalePlan(format!(
                "the plan was made for {} spec(s), not for this one ({} query heads, \
                 window {:?}): list every spec the step runs when planning it",
                self.specs.len(),
                spec.q_heads,
                spec.sliding_window
            ))
        })
    }

    /// `n` `i32`s of the uploaded block from `at`.
    pub(crate) fn meta(&self, at: usize, n: usize) -> Result<View<'_, i32, D>, RuntimeError> {
        self.ws.meta.view().slice(at..at + n)
    }

    /// Sequences in the step.
    pub fn batch(&self) -> u32 {
        self.batch
    }

    /// New tokens the step appends.
    pub fn new_tokens(&self) -> u32 {
        self.tokens
    }

    /// Whether `spec`'s decode runs split-K (two launches) in this step.
    pub fn splits(&self, spec: &AttentionSpec) -> Option<u32> {
        self.specs.iter().find(|p| p.spec == *spec).map(|p| {
            if p.decode.split {
                p.decode.splits
            } else {
                1
            }
        })
    }
}
