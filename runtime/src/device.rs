//! One launch API for every device.
//!
//! [`Device`] is what the CPU and HIP devices have in common: the decode and
//! append kernels of a spec, with the same arguments and the same
//! validation before anything is launched. [`KvCache`] launches through any
//! `Device`, so an engine's step reads the same whatever runs it.

use attnforge_codegen::{Attention, AttentionSpec, KvLayoutSpec};

use crate::arena::Arena;
#[cfg(feature = "cpu")]
use crate::arena::HostArena;
use crate::cache::{CacheError, KvCache, SeqId};
use crate::driver::Driver;
use crate::launch::{DeviceArena, Element, Gpu, Kernels, StepPlan, Stream, Workspace};
use crate::plan::{KvScales, Params};
use crate::table::PageTable;
use crate::RuntimeError;

/// A device that runs attnforge's kernels.
///
/// Two ways in: over buffers the caller owns (`decode_ext`, `prefill`,
/// `append_ext`: host slices, copied to the device and back where the
/// device is not the host), and over a [`KvCache`]'s arenas in the
/// device's own memory (`*_in`, what the cache's `*_with` methods call:
/// nothing but the queries, the table and the outputs move).
pub trait Device {
    /// Where this device keeps a cache's K and V.
    type Arena<T: Element>: Arena<T>;

    /// Two zeroed arenas of `elems` elements each, in the device's memory.
    fn new_arena<T: Element>(&self, elems: usize) -> Result<Self::Arena<T>, RuntimeError>;

    /// Decode over elements `layer` of the arenas (one layer's pages: a
    /// range of whole pages from a page boundary, else a `Shape` error).
    #[allow(clippy::too_many_arguments)]
    fn decode_in<Q: Element, T: Element>(
        &self,
        spec: &AttentionSpec,
        params: &Params<'_>,
        q: &[Q],
        arena: &Self::Arena<T>,
        layer: std::ops::Range<usize>,
        table: &PageTable,
        out: &mut [Q],
    ) -> Result<(), RuntimeError>;

    /// Prefill over elements `layer` of the arenas.
    #[allow(clippy::too_many_arguments)]
    fn prefill_in<Q: Element, T: Element>(
        &self,
        spec: &AttentionSpec,
        params: &Params<'_>,
        q: &[Q],
        qo_indptr: &[i32],
        arena: &Self::Arena<T>,
        layer: std::ops::Range<usize>,
        table: &PageTable,
        out: &mut [Q],
    ) -> Result<(), RuntimeError>;

    /// Append into elements `layer` of the arenas.
    #[allow(clippy::too_many_arguments)]
    fn append_in<S: Element, T: Element>(
        &self,
        layout: &KvLayoutSpec,
        scales: Option<KvScales<'_>>,
        k_new: &[S],
        v_new: &[S],
        slots: &[i64],
        arena: &mut Self::Arena<T>,
        layer: std::ops::Range<usize>,
    ) -> Result<(), RuntimeError>;

    /// Decode attention: `q`/`out` are [batch][q_heads][head_dim] in the
    /// spec's query dtype, `k`/`v` whole arenas in the layout's dtype,
    /// `table` the batch's page table. No launch parameters: a spec with
    /// sinks or given ALiBi slopes needs [`Device::decode_ext`].
    #[allow(clippy::too_many_arguments)]
    fn decode<Q: Element, T: Element>(
        &self,
        spec: &AttentionSpec,
        q: &[Q],
        k: &[T],
        v: &[T],
        table: &PageTable,
        out: &mut [Q],
    ) -> Result<(), RuntimeError> {
        self.decode_ext(spec, &Params::default(), q, k, v, table, out)
    }

    /// Decode with the variants' launch parameters and a split policy.
    #[allow(clippy::too_many_arguments)]
    fn decode_ext<Q: Element, T: Element>(
        &self,
        spec: &AttentionSpec,
        params: &Params<'_>,
        q: &[Q],
        k: &[T],
        v: &[T],
        table: &PageTable,
        out: &mut [Q],
    ) -> Result<(), RuntimeError>;

    /// Prefill attention for a ragged batch: sequence b's new query tokens
    /// are rows `qo_indptr[b]..qo_indptr[b+1]` of `q`/`out`
    /// ([rows][q_heads][head_dim]), already appended to its KV.
    #[allow(clippy::too_many_arguments)]
    fn prefill<Q: Element, T: Element>(
        &self,
        spec: &AttentionSpec,
        params: &Params<'_>,
        q: &[Q],
        qo_indptr: &[i32],
        k: &[T],
        v: &[T],
        table: &PageTable,
        out: &mut [Q],
    ) -> Result<(), RuntimeError>;

    /// KV append: row i of `k_new`/`v_new` goes to slot `slots[i]`, for an
    /// unscaled cache (the new rows in the cache's dtype).
    #[allow(clippy::too_many_arguments)]
    fn append<T: Element>(
        &self,
        layout: &KvLayoutSpec,
        k_new: &[T],
        v_new: &[T],
        slots: &[i64],
        k: &mut [T],
        v: &mut [T],
    ) -> Result<(), RuntimeError> {
        self.append_ext(layout, None, k_new, v_new, slots, k, v)
    }

    /// KV append with the new rows in the layout's append source dtype
    /// (f32 for an fp8 cache, quantized with `scales`).
    #[allow(clippy::too_many_arguments)]
    fn append_ext<S: Element, T: Element>(
        &self,
        layout: &KvLayoutSpec,
        scales: Option<KvScales<'_>>,
        k_new: &[S],
        v_new: &[S],
        slots: &[i64],
        k: &mut [T],
        v: &mut [T],
    ) -> Result<(), RuntimeError>;
}

/// Checks that `layer` (elements of an arena of `len`) is a whole number
/// of pages that starts on a page boundary: the `*_in` launches index pages
/// from the range's start.
pub(crate) fn whole_pages(
    layout: &KvLayoutSpec,
    layer: &std::ops::Range<usize>,
    len: usize,
) -> Result<(), RuntimeError> {
    let page = layout.page_elems() as usize;
    if layer.start > layer.end
        || layer.end > len
        || !layer.start.is_multiple_of(page)
        || !layer.len().is_multiple_of(page)
    {
        return Err(RuntimeError::Shape(format!(
            "elements {layer:?} of an arena of {len} are not whole pages of {page} elements \
             starting on a page boundary"
        )));
    }
    Ok(())
}

/// The CPU device with a chosen target and mode.
#[cfg(feature = "cpu")]
pub struct Cpu<'a> {
    /// The device (and its kernel cache).
    pub device: &'a crate::cpu::CpuDevice,
    /// Which kernel variant to run (`Arch::Host` for speed, a GPU arch to
    /// run exactly the GPU's kernel).
    pub target: attnforge_codegen::Target,
    /// Fast or checked.
    pub mode: crate::cpu::Mode,
}

#[cfg(feature = "cpu")]
impl Device for Cpu<'_> {
    type Arena<T: Element> = HostArena<T>;

    fn new_arena<T: Element>(&self, elems: usize) -> Result<HostArena<T>, RuntimeError> {
        Ok(HostArena::zeroed(elems)?)
    }

    fn decode_in<Q: Element, T: Element>(
        &self,
        spec: &AttentionSpec,
        params: &Params<'_>,
        q: &[Q],
        arena: &HostArena<T>,
        layer: std::ops::Range<usize>,
        table: &PageTable,
        out: &mut [Q],
    ) -> Result<(), RuntimeError> {
        whole_pages(&spec.kv, &layer, arena.len())?;
        let (k, v) = arena.slices(layer)?;
        self.decode_ext(spec, params, q, k, v, table, out)
    }

    fn prefill_in<Q: Element, T: Element>(
        &self,
        spec: &AttentionSpec,
        params: &Params<'_>,
        q: &[Q],
        qo_indptr: &[i32],
        arena: &HostArena<T>,
        layer: std::ops::Range<usize>,
        table: &PageTable,
        out: &mut [Q],
    ) -> Result<(), RuntimeError> {
        whole_pages(&spec.kv, &layer, arena.len())?;
        let (k, v) = arena.slices(layer)?;
        self.prefill(spec, params, q, qo_indptr, k, v, table, out)
    }

    fn append_in<S: Element, T: Element>(
        &self,
        layout: &KvLayoutSpec,
        scales: Option<KvScales<'_>>,
        k_new: &[S],
        v_new: &[S],
        slots: &[i64],
        arena: &mut HostArena<T>,
        layer: std::ops::Range<usize>,
    ) -> Result<(), RuntimeError> {
        whole_pages(layout, &layer, arena.len())?;
        let (k, v) = arena.slices_mut(layer)?;
        self.append_ext(layout, scales, k_new, v_new, slots, k, v)
    }

    fn decode_ext<Q: Element, T: Element>(
        &self,
        spec: &AttentionSpec,
        params: &Params<'_>,
        q: &[Q],
        k: &[T],
        v: &[T],
        table: &PageTable,
        out: &mut [Q],
    ) -> Result<(), RuntimeError> {
        self.device
            .decode_ext(spec, self.target, self.mode, params, q, k, v, table, out)
    }

    fn prefill<Q: Element, T: Element>(
        &self,
        spec: &AttentionSpec,
        params: &Params<'_>,
        q: &[Q],
        qo_indptr: &[i32],
        k: &[T],
        v: &[T],
        table: &PageTable,
        out: &mut [Q],
    ) -> Result<(), RuntimeError> {
        self.device.prefill(
            spec,
            self.target,
            self.mode,
            params,
            q,
            qo_indptr,
            k,
            v,
            table,
            out,
        )
    }

    fn append_ext<S: Element, T: Element>(
        &self,
        layout: &KvLayoutSpec,
        scales: Option<KvScales<'_>>,
        k_new: &[S],
        v_new: &[S],
        slots: &[i64],
        k: &mut [T],
        v: &mut [T],
    ) -> Result<(), RuntimeError> {
        self.device.append_ext(
            layout,
            self.target,
            self.mode,
            scales,
            k_new,
            v_new,
            slots,
            k,
            v,
        )
    }
}

impl<T: Element> KvCache<T> {
    /// A cache whose arenas live in `device`'s memory (host memory for the
    /// CPU device, GPU memory for HIP), zeroed.
    pub fn new_on<D: Device>(
        device: &D,
        layout: KvLayoutSpec,
        layers: u32,
        max_pages: u32,
    ) -> Result<KvCache<T, D::Arena<T>>, RuntimeError> {
        let mut failed = None;
        let cache = KvCache::with_arena(layout, layers, max_pages, |elems| {
            device.new_arena::<T>(elems).map_err(|e| match e {
                // The cache's own errors (out of memory: too large) stay its.
                RuntimeError::Cache(c) => c,
                e => {
                    let msg = e.to_string();
                    failed = Some(e);
                    CacheError::Arena(msg)
                }
            })
        });
        match (cache, failed) {
            (Ok(c), _) => Ok(c),
            (Err(_), Some(e)) => Err(e),
            (Err(e), None) => Err(e.into()),
        }
    }
}

impl<T: Element, A: Arena<T>> KvCache<T, A> {
    /// Writes new K/V rows of one layer at `slots` (from
    /// [`KvCache::append_tokens`]) on `device`.
    pub fn append_with<D: Device<Arena<T> = A>>(
        &mut self,
        device: &D,
        layer: u32,
        slots: &[i64],
        k_new: &[T],
        v_new: &[T],
    ) -> Result<(), RuntimeError> {
        self.append_ext_with(device, layer, None, slots, k_new, v_new)
    }

    /// Sets a layer's fp8 K and V scales, before its first append (or to
    /// the ones it already has). Appends and attention on the layer then
    /// use them without being given them, and refuse different ones with
    /// [`CacheError::ScalesMismatch`]: data written with one set of scales
    /// is never read with another.
    pub fn set_kv_scales(&mut self, layer: u32, scales: KvScales<'_>) -> Result<(), RuntimeError> {
        self.check_given_scales(layer, Some(&scales), true)
    }

    /// Checks scales a caller gives for `layer`: against the layout, then
    /// against the ones the layer's data was written with; `remember`
    /// stores them when the layer has none yet.
    fn check_given_scales(
        &mut self,
        layer: u32,
        given: Option<&KvScales<'_>>,
        remember: bool,
    ) -> Result<(), RuntimeError> {
        if let Some(s) = given {
            KvScales::validate(Some(s), self.layout())?;
            self.bind_scales(layer, (s.k, s.v), remember)?;
        }
        Ok(())
    }

    /// `params` with `layer`'s stored scales where it gives none.
    fn with_stored_scales<'s>(&'s self, layer: u32, params: &Params<'s>) -> Params<'s> {
        let stored = || self.kv_scales(layer).map(|(k, v)| KvScales { k, v });
        Params {
            kv_scales: params.kv_scales.or_else(stored),
            ..*params
        }
    }

    /// Writes new K/V rows of one layer in the layout's append source dtype
    /// (f32 into an fp8 cache, quantized with `scales`: `x / scale`). The
    /// layer's first scaled append sets its scales (see
    /// [`KvCache::set_kv_scales`]); `None` uses the ones set.
    pub fn append_ext_with<D: Device<Arena<T> = A>, S: Element>(
        &mut self,
        device: &D,
        layer: u32,
        scales: Option<KvScales<'_>>,
        slots: &[i64],
        k_new: &[S],
        v_new: &[S],
    ) -> Result<(), RuntimeError> {
        let layout = *self.layout();
        let range = self.layer_range(layer)?;
        // The first scaled append of a layer sets its scales, and later ones
        // must agree.
        self.check_given_scales(layer, scales.as_ref(), true)?;
        let (arena, stored) = self.arena_mut_and_scales(layer);
        let scales = scales.or(stored);
        device.append_in::<S, T>(&layout, scales, k_new, v_new, slots, arena, range)
    }

    /// Decode for a batch of sequences at one layer on `device`.
    pub fn decode_with<D: Device<Arena<T> = A>, Q: Element>(
        &mut self,
        device: &D,
        spec: &AttentionSpec,
        layer: u32,
        batch: &[SeqId],
        q: &[Q],
        out: &mut [Q],
    ) -> Result<(), RuntimeError> {
        self.decode_ext_with(device, spec, &Params::default(), layer, batch, q, out)
    }

    /// Decode with the variants' launch parameters and a split policy.
    #[allow(clippy::too_many_arguments)]
    pub fn decode_ext_with<D: Device<Arena<T> = A>, Q: Element>(
        &mut self,
        device: &D,
        spec: &AttentionSpec,
        params: &Params<'_>,
        layer: u32,
        batch: &[SeqId],
        q: &[Q],
        out: &mut [Q],
    ) -> Result<(), RuntimeError> {
        same_layout(spec, self.layout())?;
        let range = self.layer_range(layer)?;
        self.check_given_scales(layer, params.kv_scales.as_ref(), false)?;
        let table = self.page_table(batch)?;
        let params = self.with_stored_scales(layer, params);
        device.decode_in::<Q, T>(spec, &params, q, self.arena(), range, &table, out)
    }

    /// Prefill for a ragged batch at one layer on `device`: sequence
    /// `batch[i]` brings `q_lens[i]` new query tokens (rows of `q`/`out`
    /// in batch order), whose K/V this layer already holds (appended with
    /// [`KvCache::append_with`]).
    #[allow(clippy::too_many_arguments)]
    pub fn prefill_with<D: Device<Arena<T> = A>, Q: Element>(
        &mut self,
        device: &D,
        spec: &AttentionSpec,
        params: &Params<'_>,
        layer: u32,
        batch: &[SeqId],
        q_lens: &[u32],
        q: &[Q],
        out: &mut [Q],
    ) -> Result<(), RuntimeError> {
        same_layout(spec, self.layout())?;
        if q_lens.len() != batch.len() {
            return Err(RuntimeError::Shape(format!(
                "{} sequences but {} query lengths",
                batch.len(),
                q_lens.len()
            )));
        }
        let range = self.layer_range(layer)?;
        self.check_given_scales(layer, params.kv_scales.as_ref(), false)?;
        let qo_indptr = qo_indptr(q_lens)?;
        let table = self.page_table(batch)?;
        let params = self.with_stored_scales(layer, params);
        device.prefill_in::<Q, T>(
            spec,
            &params,
            q,
            &qo_indptr,
            self.arena(),
            range,
            &table,
            out,
        )
    }
}

/// The CSR offsets of a ragged batch's query rows: `[0, l0, l0 + l1, ..]`.
pub fn qo_indptr(q_lens: &[u32]) -> Result<Vec<i32>, RuntimeError> {
    let mut indptr = Vec::with_capacity(q_lens.len() + 1);
    let mut total: i64 = 0;
    indptr.push(0);
    for &l in q_lens {
        total += i64::from(l);
        indptr.push(
            i32::try_from(total).map_err(|_| {
                RuntimeError::Shape(format!("{total} query rows: more than i32::MAX"))
            })?,
        );
    }
    Ok(indptr)
}

/// Launches through the `#[attention]` item itself, on any device:
/// `Llama3::decode(&device, &mut cache, layer, &batch, &q, &mut out)`.
/// Implemented for every [`Attention`]; in `attnforge::prelude`.
pub trait AttentionHandle: Attention {
    /// A KV cache for this attention: its layout, `layers` layers of
    /// `max_pages` pages, and its sliding window (pages that fall out of it
    /// are released).
    fn new_cache<T: Copy + Default>(layers: u32, max_pages: u32) -> Result<KvCache<T>, CacheError> {
        KvCache::new(Self::SPEC.kv, layers, max_pages)?
            .with_sliding_window(Self::SPEC.sliding_window)
    }

    /// A cache for this attention with its arenas in `device`'s memory.
    fn new_cache_on<D: Device, T: Element>(
        device: &D,
        layers: u32,
        max_pages: u32,
    ) -> Result<KvCache<T, D::Arena<T>>, RuntimeError> {
        Ok(KvCache::new_on(device, Self::SPEC.kv, layers, max_pages)?
            .with_sliding_window(Self::SPEC.sliding_window)?)
    }

    /// Writes new K/V rows of one layer at `slots` (from
    /// [`KvCache::append_tokens`]); the cache must have this attention's
    /// layout.
    fn append<D: Device, T: Element>(
        device: &D,
        cache: &mut KvCache<T, D::Arena<T>>,
        layer: u32,
        slots: &[i64],
        k_new: &[T],
        v_new: &[T],
    ) -> Result<(), RuntimeError> {
        same_layout(&Self::SPEC, cache.layout())?;
        cache.append_with(device, layer, slots, k_new, v_new)
    }

    /// Writes new K/V rows of one layer in the layout's append source dtype
    /// (f32 into an fp8 cache, quantized with the layer's `scales`; see
    /// [`KvCache::append_ext_with`]).
    #[allow(clippy::too_many_arguments)]
    fn append_ext<D: Device, S: Element, T: Element>(
        device: &D,
        cache: &mut KvCache<T, D::Arena<T>>,
        layer: u32,
        scales: Option<KvScales<'_>>,
        slots: &[i64],
        k_new: &[S],
        v_new: &[S],
    ) -> Result<(), RuntimeError> {
        same_layout(&Self::SPEC, cache.layout())?;
        cache.append_ext_with(device, layer, scales, slots, k_new, v_new)
    }

    /// Decode attention for a batch of sequences at one layer.
    fn decode<D: Device, Q: Element, T: Element>(
        device: &D,
        cache: &mut KvCache<T, D::Arena<T>>,
        layer: u32,
        batch: &[SeqId],
        q: &[Q],
        out: &mut [Q],
    ) -> Result<(), RuntimeError> {
        cache.decode_with(device, &Self::SPEC, layer, batch, q, out)
    }

    /// Decode with launch parameters (sinks, given ALiBi slopes, split).
    #[allow(clippy::too_many_arguments)]
    fn decode_ext<D: Device, Q: Element, T: Element>(
        device: &D,
        cache: &mut KvCache<T, D::Arena<T>>,
        params: &Params<'_>,
        layer: u32,
        batch: &[SeqId],
        q: &[Q],
        out: &mut [Q],
    ) -> Result<(), RuntimeError> {
        cache.decode_ext_with(device, &Self::SPEC, params, layer, batch, q, out)
    }

    /// This attention's kernels, loaded on `gpu` (the launch path:
    /// plan once per step, then per layer `append_step` and
    /// `decode_step`/`prefill_step` on the cache).
    fn kernels<D: Driver>(gpu: &Gpu<D>) -> Result<Kernels<D>, RuntimeError> {
        Kernels::load(gpu, &Self::SPEC)
    }

    /// A cache for this attention in `gpu`'s memory, zeroed on `stream`,
    /// with its sliding window.
    fn new_cache_on_gpu<D: Driver, T: Element>(
        gpu: &Gpu<D>,
        stream: &Stream<D>,
        layers: u32,
        max_pages: u32,
    ) -> Result<KvCache<T, DeviceArena<T, D>>, RuntimeError> {
        Ok(
            KvCache::new_on_gpu(gpu, stream, Self::SPEC.kv, layers, max_pages)?
                .with_sliding_window(Self::SPEC.sliding_window)?,
        )
    }

    /// Plans a decode step of this attention (see [`KvCache::plan_decode`]).
    fn plan_decode<D: Driver, T: Element>(
        cache: &mut KvCache<T, DeviceArena<T, D>>,
        ws: &mut Workspace<D>,
        stream: &Stream<D>,
        batch: &[SeqId],
        slots: &[i64],
        split: crate::plan::Split,
    ) -> Result<StepPlan<D>, RuntimeError> {
        cache.plan_decode(ws, stream, &[Self::SPEC], batch, slots, split)
    }

    /// Plans a prefill step of this attention (see [`KvCache::plan_prefill`]).
    fn plan_prefill<D: Driver, T: Element>(
        cache: &mut KvCache<T, DeviceArena<T, D>>,
        ws: &mut Workspace<D>,
        stream: &Stream<D>,
        batch: &[SeqId],
        q_lens: &[u32],
        slots: &[i64],
    ) -> Result<StepPlan<D>, RuntimeError> {
        cache.plan_prefill(ws, stream, &[Self::SPEC], batch, q_lens, slots)
    }

    /// Prefill for a ragged batch at one layer: `batch[i]` brings
    /// `q_lens[i]` new tokens, already appended (see [`KvCache::prefill_with`]).
    #[allow(clippy::too_many_arguments)]
    fn prefill<D: Device, Q: Element, T: Element>(
        device: &D,
        cache: &mut KvCache<T, D::Arena<T>>,
        params: &Params<'_>,
        layer: u32,
        batch: &[SeqId],
        q_lens: &[u32],
        q: &[Q],
        out: &mut [Q],
    ) -> Result<(), RuntimeError> {
        cache.prefill_with(device, &Self::SPEC, params, layer, batch, q_lens, q, out)
    }
}

impl<A: Attention + ?Sized> AttentionHandle for A {}

fn same_layout(spec: &AttentionSpec, cache: &KvLayoutSpec) -> Result<(), RuntimeError> {
    if spec.kv != *cache {
        return Err(RuntimeError::Shape(format!(
            "the attention's layout {:?} is not the cache's {cache:?}",
            spec.kv
        )));
    }
    Ok(())
}
