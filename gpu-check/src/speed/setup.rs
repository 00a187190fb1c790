//! What the speed part's launches stand on: one arena per dtype, filled
//! once and moved between caches (`KvCache::with_arena`), so that every
//! shape gets a fresh page allocator: contiguous pages in a fresh cache,
//! or shuffled ones after freeing one-page sequences in a random order
//! (the free list hands out the most recently freed page first). Then a
//! step's plan, and its launches timed.

use attnforge_codegen::{AttentionSpec, KvLayoutSpec};
use attnforge_runtime::arena::Arena;
use attnforge_runtime::driver::Driver;
use attnforge_runtime::launch::{
    DeviceArena, DeviceBuffer, Gpu, Kernels, LaunchParams, Stream, Workspace,
};
use attnforge_runtime::{CacheError, KvCache, KvScales, SeqId, Split};

use super::{time, DecodeFigure, SpeedConfig};
use crate::error::Error;
use crate::inputs::Rng;
use crate::raw::RawElement;

pub(super) type Cache<T, D> = KvCache<T, DeviceArena<T, D>>;

/// One scale per tensor for an fp8 cache.
const FP8_SCALES: ([f32; 1], [f32; 1]) = ([0.5], [0.25]);

pub(super) fn arena_error(m: String) -> Error {
    Error::Runtime(CacheError::Arena(m).into())
}

/// `pages` pages of random K and V: a chunk drawn on the host, uploaded,
/// then doubled by device copies.
pub(super) fn filled_arena<T: RawElement, D: Driver>(
    gpu: &Gpu<D>,
    stream: &Stream<D>,
    l: &KvLayoutSpec,
    pages: usize,
    seed: u64,
) -> Result<DeviceArena<T, D>, Error> {
    let pe = l.page_elems() as usize;
    let mut arena = DeviceArena::<T, D>::zeroed(gpu, stream, pages * pe)?;
    let chunk = ((8 << 20) / (pe * std::mem::size_of::<T>())).clamp(1, pages);
    let mut rng = Rng(seed);
    let mut draw = || {
        (0..chunk * pe)
            .map(|_| T::from_f64(rng.uniform()))
            .collect::<Vec<T>>()
    };
    let (hk, hv) = (draw(), draw());
    let mut kv = arena.layer_mut(0..chunk * pe)?;
    kv.k.upload(stream, &hk)?;
    kv.v.upload(stream, &hv)?;
    let mut filled = chunk;
    while filled < pages {
        let n = filled.min(pages - filled);
        arena
            .copy_within(0, filled * pe, n * pe)
            .map_err(arena_error)?;
        filled += n;
    }
    stream.synchronize()?;
    Ok(arena)
}

/// A fresh cache of `pages` pages over the arena in `slot` (taken).
fn cache_over<T: RawElement, D: Driver>(
    l: &KvLayoutSpec,
    pages: usize,
    slot: &mut Option<DeviceArena<T, D>>,
) -> Result<Cache<T, D>, Error> {
    let pages = u32::try_from(pages).map_err(|_| arena_error(format!("{pages} pages")))?;
    let cache = KvCache::with_arena(*l, 1, pages, |_| {
        slot.take()
            .ok_or_else(|| CacheError::Arena("the arena was lost".into()))
    });
    Ok(cache.map_err(attnforge_runtime::RuntimeError::from)?)
}

/// The cache's arena, back into `slot` (a one-page arena left behind).
fn take_back<T: RawElement, D: Driver>(
    gpu: &Gpu<D>,
    stream: &Stream<D>,
    cache: &mut Cache<T, D>,
    slot: &mut Option<DeviceArena<T, D>>,
) -> Result<(), Error> {
    let pe = cache.layout().page_elems() as usize;
    let small = DeviceArena::zeroed(gpu, stream, pe)?;
    *slot = Some(std::mem::replace(cache.arena_mut(), small));
    Ok(())
}

/// `batch` sequences of `ctx` tokens: on pages in order, or (`shuffled`)
/// on a random permutation of the pages they need.
fn sequences<T: RawElement, D: Driver>(
    cache: &mut Cache<T, D>,
    batch: u32,
    ctx: u32,
    shuffled: bool,
    rng: &mut Rng,
) -> Result<Vec<SeqId>, Error> {
    let cache_err = |e: CacheError| Error::Runtime(e.into());
    if shuffled {
        let p = cache.layout().page_size as usize;
        let need = batch as usize * (ctx as usize).div_ceil(p);
        let mut one_page = Vec::with_capacity(need);
        for _ in 0..need {
            let s = cache.add_sequence();
            cache.append_tokens(s, p).map_err(cache_err)?;
            one_page.push(s);
        }
        rng.shuffle(&mut one_page);
        for s in one_page {
            cache.remove(s).map_err(cache_err)?;
        }
    }
    (0..batch)
        .map(|_| {
            let s = cache.add_sequence();
            cache.append_tokens(s, ctx as usize).map_err(cache_err)?;
            Ok(s)
        })
        .collect()
}

fn scale_cache<T: RawElement, D: Driver>(cache: &mut Cache<T, D>) -> Result<(), Error> {
    if cache.layout().dtype.is_fp8() {
        let (k, v) = FP8_SCALES;
        cache.set_kv_scales(0, KvScales { k: &k, v: &v })?;
    }
    Ok(())
}

/// What every launch of one dtype shares.
pub(super) struct Setup<'a, Q, T, D: Driver> {
    pub(super) gpu: &'a Gpu<D>,
    pub(super) cfg: &'a SpeedConfig,
    pub(super) spec: AttentionSpec,
    pub(super) stream: Stream<D>,
    pub(super) kernels: Kernels<D>,
    pub(super) ws: Workspace<D>,
    pub(super) slot: Option<DeviceArena<T, D>>,
    pub(super) q: DeviceBuffer<Q, D>,
    pub(super) out: DeviceBuffer<Q, D>,
    pub(super) rng: Rng,
}

impl<Q: RawElement, T: RawElement, D: Driver> Setup<'_, Q, T, D> {
    pub(super) fn decode_one(
        &mut self,
        batch: u32,
        ctx: u32,
        shuffled: bool,
    ) -> Result<DecodeFigure, Error> {
        let l = self.spec.kv;
        let pages = self.ws.limits().max_pages as usize;
        let mut cache = cache_over(&l, pages, &mut self.slot)?;
        let r = self.decode_in(&mut cache, batch, ctx, shuffled);
        take_back(self.gpu, &self.stream, &mut cache, &mut self.slot)?;
        r
    }

    fn decode_in(
        &mut self,
        cache: &mut Cache<T, D>,
        batch: u32,
        ctx: u32,
        shuffled: bool,
    ) -> Result<DecodeFigure, Error> {
        let seqs = sequences(cache, batch, ctx, shuffled, &mut self.rng)?;
        scale_cache(cache)?;
        let spec = self.spec;
        let plan =
            cache.plan_decode(&mut self.ws, &self.stream, &[spec], &seqs, &[], Split::Auto)?;
        let n = batch as usize * spec.q_heads as usize * spec.kv.head_dim as usize;
        let params = LaunchParams::default();
        let (q, out, stream, kernels) = (&self.q, &mut self.out, &self.stream, &self.kernels);
        let (iters, secs) = time(self.cfg, stream, || {
            let (qv, ov) = (q.view().slice(0..n)?, out.view_mut().slice(0..n)?);
            Ok(cache.decode_step(kernels, stream, &plan, 0, &params, qv, ov)?)
        })?;
        let kv_bytes = 2
            * u64::from(batch)
            * u64::from(ctx)
            * spec.kv.kv_heads as u64
            * spec.kv.head_dim as u64
            * std::mem::size_of::<T>() as u64;
        Ok(DecodeFigure {
            dtype: spec.kv.dtype.name().into(),
            batch,
            context: ctx,
            pages: if shuffled { "shuffled" } else { "contiguous" }.into(),
            kv_bytes,
            splits: plan.splits(&spec).unwrap_or(1),
            iters,
            us_per_step: secs * 1e6,
            gb_per_s: kv_bytes as f64 / secs / 1e9,
            fraction_of_copy: None,
            kernel: kernel_name(&self.kernels),
            l2_resident: kv_bytes < super::L2_RESIDENT_BYTES,
        })
    }

    /// One prefill of `n` tokens whose K/V rows are `hk`/`hv` (token
    /// order) and queries `self.q`: the timing and the output.
    pub(super) fn prefill_one(
        &mut self,
        n: u32,
        shuffled: bool,
        hk: &[T],
        hv: &[T],
    ) -> Result<(u32, f64, Vec<Q>), Error> {
        let l = self.spec.kv;
        let pages = self.ws.limits().max_pages as usize;
        let mut cache = cache_over(&l, pages, &mut self.slot)?;
        let r = self.prefill_in(&mut cache, n, shuffled, hk, hv);
        take_back(self.gpu, &self.stream, &mut cache, &mut self.slot)?;
        r
    }

    fn prefill_in(
        &mut self,
        cache: &mut Cache<T, D>,
        n: u32,
        shuffled: bool,
        hk: &[T],
        hv: &[T],
    ) -> Result<(u32, f64, Vec<Q>), Error> {
        let seqs = sequences(cache, 1, n, shuffled, &mut self.rng)?;
        scale_cache(cache)?;
        // Token block i of the rows goes to the sequence's page i (NHD: a
        // page is `page_size` whole token rows).
        let pe = self.spec.kv.page_elems() as usize;
        let (mut ak, mut av) = (
            vec![T::default(); cache.max_pages() * pe],
            vec![T::default(); cache.max_pages() * pe],
        );
        for (i, &pg) in cache
            .seq_pages(seqs[0])
            .map_err(|e| Error::Runtime(e.into()))?
            .iter()
            .enumerate()
        {
            let (src, dst) = (i * pe..((i + 1) * pe).min(hk.len()), pg as usize * pe);
            ak[dst..dst + src.len()].copy_from_slice(&hk[src.clone()]);
            av[dst..dst + src.len()].copy_from_slice(&hv[src]);
        }
        let mut kv = cache.arena_mut().layer_mut(0..ak.len())?;
        kv.k.upload(&self.stream, &ak)?;
        kv.v.upload(&self.stream, &av)?;
        let spec = self.spec;
        let plan = cache.plan_prefill(&mut self.ws, &self.stream, &[spec], &seqs, &[n], &[])?;
        let rows = n as usize * spec.q_heads as usize * spec.kv.head_dim as usize;
        let params = LaunchParams::default();
        let (q, out, stream, kernels) = (&self.q, &mut self.out, &self.stream, &self.kernels);
        let (iters, secs) = time(self.cfg, stream, || {
            let (qv, ov) = (q.view().slice(0..rows)?, out.view_mut().slice(0..rows)?);
            Ok(cache.prefill_step(kernels, stream, &plan, 0, &params, qv, ov)?)
        })?;
        let mut host = vec![Q::default(); rows];
        self.out
            .view()
            .slice(0..rows)?
            .read_into(&self.stream, &mut host)?;
        Ok((iters, secs, host))
    }
}

/// Which decode the kernels hold: `matrix` or `simt`.
fn kernel_name<D: Driver>(k: &Kernels<D>) -> String {
    match k.decode_is_matrix() {
        true => "matrix",
        false => "simt",
    }
    .into()
}
