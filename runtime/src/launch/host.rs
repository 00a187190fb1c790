//! The host-slice convenience layered on the launch path: [`Device`] for
//! any [`Gpu`]. Each call uploads what it is given, plans, launches,
//! downloads and synchronizes the device's default stream, with a
//! workspace of its own: simple, and slow where a step's launches matter
//! (use the plan/run API of [`crate::launch`] there).

use std::ops::Range;

use attnforge_codegen::kernels::KernelPath;
use attnforge_codegen::{AttentionSpec, KvLayoutSpec};

use super::arena::DeviceArena;
use super::kernels::Kernels;
use super::memory::{DeviceBuffer, Gpu, Stream};
use super::run::{KvView, KvViewMut, LaunchParams};
use super::step::{StepInput, Workspace, WorkspaceLimits};
use super::{validate_append, validate_decode, validate_prefill, Element};
use crate::device::Device;
use crate::driver::Driver;
use crate::plan::{plan_decode, KvScales, Params, Split};
use crate::table::PageTable;
use crate::RuntimeError;

/// The variant buffers of `params`, uploaded.
struct Uploaded<D: Driver> {
    sinks: Option<DeviceBuffer<f32, D>>,
    slopes: Option<DeviceBuffer<f32, D>>,
    scales: Option<(DeviceBuffer<f32, D>, DeviceBuffer<f32, D>)>,
}

impl<D: Driver> Uploaded<D> {
    fn new(gpu: &Gpu<D>, s: &Stream<D>, p: &Params<'_>) -> Result<Uploaded<D>, RuntimeError> {
        let up = |h: Option<&[f32]>| h.map(|h| gpu.upload(s, h)).transpose();
        Ok(Uploaded {
            sinks: up(p.sinks)?,
            slopes: up(p.alibi_slopes)?,
            scales: match p.kv_scales {
                Some(k) => Some((gpu.upload(s, k.k)?, gpu.upload(s, k.v)?)),
                None => None,
            },
        })
    }

    fn params(&self) -> LaunchParams<'_, D> {
        LaunchParams {
            sinks: self.sinks.as_ref().map(|b| b.view()),
            alibi_slopes: self.slopes.as_ref().map(|b| b.view()),
            kv_scales: self.scales.as_ref().map(|(k, v)| (k.view(), v.view())),
        }
    }
}

/// The new query rows per sequence of a validated `qo_indptr`.
fn q_lens(qo_indptr: &[i32]) -> Vec<u32> {
    qo_indptr.windows(2).map(|w| (w[1] - w[0]) as u32).collect()
}

fn pages(layout: &KvLayoutSpec, elems: usize) -> u64 {
    (elems / layout.page_elems() as usize) as u64
}

/// Device copies of K and V, on the default stream.
type KvBuffers<T, D> = (DeviceBuffer<T, D>, DeviceBuffer<T, D>);

impl<D: Driver> Gpu<D> {
    fn upload_kv<T: Element>(&self, k: &[T], v: &[T]) -> Result<KvBuffers<T, D>, RuntimeError> {
        let s = self.default_stream();
        Ok((self.upload(&s, k)?, self.upload(&s, v)?))
    }

    /// A workspace that fits exactly one launch's table and split.
    fn workspace_for(
        &self,
        spec: &AttentionSpec,
        table: &PageTable,
        new_tokens: usize,
        split: Split,
    ) -> Result<Workspace<D>, RuntimeError> {
        let lens = (0..table.batch()).map(|b| table.seq_len(b, spec.kv.page_size));
        let plan = plan_decode(
            spec,
            self.driver().target(),
            lens,
            split,
            self.driver().compute_units(),
        )?;
        let limits = WorkspaceLimits {
            max_batch: table.batch() as u32,
            max_pages: table.indices.len() as u32,
            max_new_tokens: new_tokens as u32,
            max_splits: plan.splits,
        };
        Workspace::new(self, &[*spec], limits)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention_host<Q: Element, T: Element>(
        &self,
        spec: &AttentionSpec,
        params: &Params<'_>,
        q: &[Q],
        q_lens: Option<&[u32]>,
        kv: KvView<'_, T, D>,
        table: &PageTable,
        out: &mut [Q],
    ) -> Result<(), RuntimeError> {
        let s = self.default_stream();
        let kernels = Kernels::load(self, spec)?;
        let rows = q_lens.map_or(0, |l| l.iter().map(|&n| n as usize).sum());
        let mut ws = self.workspace_for(spec, table, rows, params.split)?;
        let plan = ws.plan(
            &s,
            StepInput {
                specs: std::slice::from_ref(spec),
                layout: spec.kv,
                table,
                slots: &[],
                q_lens,
                split: params.split,
                arena_pages: pages(&spec.kv, kv.k.len()),
                cache: None,
            },
        )?;
        let variants = Uploaded::new(self, &s, params)?;
        let dq = self.upload(&s, q)?;
        let mut dout: DeviceBuffer<Q, D> = self.alloc(out.len())?;
        let p = variants.params();
        match q_lens {
            None => kernels.decode(&s, &plan, kv, &p, dq.view(), dout.view_mut())?,
            Some(_) => kernels.prefill(&s, &plan, kv, &p, dq.view(), dout.view_mut())?,
        }
        dout.read_into(&s, out)
    }

    #[allow(clippy::too_many_arguments)]
    fn append_host<S: Element, T: Element>(
        &self,
        layout: &KvLayoutSpec,
        scales: Option<KvScales<'_>>,
        k_new: &[S],
        v_new: &[S],
        slots: &[i64],
        kv: KvViewMut<'_, T, D>,
    ) -> Result<(), RuntimeError> {
        let s = self.default_stream();
        let append = self.loaded(
            attnforge_codegen::kernels::KernelSpec::Append(*layout),
            KernelPath::Auto,
        )?;
        // A workspace and a plan of this append's slots alone.
        let table = PageTable::from_sequences(layout.page_size, std::iter::empty());
        let limits = WorkspaceLimits {
            max_splits: 1,
            ..WorkspaceLimits::new(0, 0, slots.len() as u32)
        };
        let mut ws = Workspace::new(self, &[], limits)?;
        let plan = ws.plan(
            &s,
            StepInput {
                specs: &[],
                layout: *layout,
                table: &table,
                slots,
                q_lens: None,
                split: Split::Off,
                arena_pages: pages(layout, kv.k.len()),
                cache: None,
            },
        )?;
        let p = Uploaded::new(
            self,
            &s,
            &Params {
                kv_scales: scales,
                ..Params::default()
            },
        )?;
        let (dk, dv) = (self.upload(&s, k_new)?, self.upload(&s, v_new)?);
        let scales = p.params().kv_scales;
        let ord = self.ordinal();
        super::run::append_with(
            &append,
            layout,
            ord,
            &s,
            &plan,
            kv,
            scales,
            dk.view(),
            dv.view(),
        )?;
        s.synchronize()
    }
}

impl<D: Driver> Device for Gpu<D> {
    type Arena<T: Element> = DeviceArena<T, D>;

    fn new_arena<T: Element>(&self, elems: usize) -> Result<DeviceArena<T, D>, RuntimeError> {
        let s = self.default_stream();
        let a = DeviceArena::zeroed(self, &s, elems)?;
        s.synchronize()?;
        Ok(a)
    }

    fn decode_in<Q: Element, T: Element>(
        &self,
        spec: &AttentionSpec,
        params: &Params<'_>,
        q: &[Q],
        arena: &DeviceArena<T, D>,
        layer: Range<usize>,
        table: &PageTable,
        out: &mut [Q],
    ) -> Result<(), RuntimeError> {
        crate::device::whole_pages(&spec.kv, &layer, crate::arena::Arena::len(arena))?;
        validate_decode::<Q, T>(spec, q, (layer.len(), layer.len()), table, out)?;
        params.validate(spec)?;
        let kv = arena.layer(layer)?;
        self.attention_host(spec, params, q, None, kv, table, out)
    }

    fn prefill_in<Q: Element, T: Element>(
        &self,
        spec: &AttentionSpec,
        params: &Params<'_>,
        q: &[Q],
        qo_indptr: &[i32],
        arena: &DeviceArena<T, D>,
        layer: Range<usize>,
        table: &PageTable,
        out: &mut [Q],
    ) -> Result<(), RuntimeError> {
        crate::device::whole_pages(&spec.kv, &layer, crate::arena::Arena::len(arena))?;
        let n = layer.len();
        validate_prefill::<Q, T>(spec, params, q, qo_indptr, (n, n), table, out)?;
        let q_lens = q_lens(qo_indptr);
        let kv = arena.layer(layer)?;
        self.attention_host(spec, params, q, Some(&q_lens), kv, table, out)
    }

    fn append_in<S: Element, T: Element>(
        &self,
        layout: &KvLayoutSpec,
        scales: Option<KvScales<'_>>,
        k_new: &[S],
        v_new: &[S],
        slots: &[i64],
        arena: &mut DeviceArena<T, D>,
        layer: Range<usize>,
    ) -> Result<(), RuntimeError> {
        crate::device::whole_pages(layout, &layer, crate::arena::Arena::len(arena))?;
        let n = layer.len();
        validate_append::<S, T>(layout, scales.as_ref(), k_new, v_new, slots, (n, n))?;
        let kv = arena.layer_mut(layer)?;
        self.append_host(layout, scales, k_new, v_new, slots, kv)
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
        validate_decode::<Q, T>(spec, q, (k.len(), v.len()), table, out)?;
        params.validate(spec)?;
        let (dk, dv) = self.upload_kv(k, v)?;
        let kv = KvView {
            k: dk.view(),
            v: dv.view(),
        };
        self.attention_host(spec, params, q, None, kv, table, out)
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
        validate_prefill::<Q, T>(spec, params, q, qo_indptr, (k.len(), v.len()), table, out)?;
        let q_lens = q_lens(qo_indptr);
        let (dk, dv) = self.upload_kv(k, v)?;
        let kv = KvView {
            k: dk.view(),
            v: dv.view(),
        };
        self.attention_host(spec, params, q, Some(&q_lens), kv, table, out)
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
        validate_append::<S, T>(
            layout,
            scales.as_ref(),
            k_new,
            v_new,
            slots,
            (k.len(), v.len()),
        )?;
        let s = self.default_stream();
        let (mut dk, mut dv) = self.upload_kv(k, v)?;
        let kv = KvViewMut {
            k: dk.view_mut(),
            v: dv.view_mut(),
        };
        self.append_host(layout, scales, k_new, v_new, slots, kv)?;
        dk.read_into(&s, k)?;
        dv.read_into(&s, v)
    }
}
