//! Run once per layer: a step's launches over device views, after
//! planning. Everything is checked before anything is queued; then a
//! decode is one launch (two with split-K: partials, then merge), a
//! prefill one, an append one, and nothing is allocated, copied or waited
//! for.

use std::sync::Arc;

use attnforge_codegen::kernels::{append_source_dtype, KernelSpec};
use attnforge_codegen::KvLayoutSpec;

use super::kernels::{Args, Kernels, Loaded, Slot};
use super::memory::{check_elem, Stream, View, ViewMut};
use super::step::{SpecPlan, StepPlan};
use super::validate::query_tiles;
use super::Element;
use crate::driver::{Driver, KernelArg};
use crate::RuntimeError;

/// One layer's K and V on the device: whole pages in the layout's order.
pub struct KvView<'a, T, D: Driver> {
    /// K.
    pub k: View<'a, T, D>,
    /// V.
    pub v: View<'a, T, D>,
}

impl<T, D: Driver> Clone for KvView<'_, T, D> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T, D: Driver> Copy for KvView<'_, T, D> {}

/// One layer's K and V, writable (for the append kernel).
pub struct KvViewMut<'a, T, D: Driver> {
    /// K.
    pub k: ViewMut<'a, T, D>,
    /// V.
    pub v: ViewMut<'a, T, D>,
}

/// An fp8 cache's K and V scales on the device.
pub type ScaleViews<'a, D> = (View<'a, f32, D>, View<'a, f32, D>);

/// The device buffers of an attention's variants at launch.
pub struct LaunchParams<'a, D: Driver> {
    /// One sink logit per query head, for a spec with `sinks`.
    pub sinks: Option<View<'a, f32, D>>,
    /// One ALiBi slope per query head, for a spec with `alibi = given`.
    pub alibi_slopes: Option<View<'a, f32, D>>,
    /// An fp8 cache's K and V scales (a cache passes its layer's own).
    pub kv_scales: Option<ScaleViews<'a, D>>,
}

impl<D: Driver> Default for LaunchParams<'_, D> {
    fn default() -> Self {
        LaunchParams {
            sinks: None,
            alibi_slopes: None,
            kv_scales: None,
        }
    }
}

impl<D: Driver> Clone for LaunchParams<'_, D> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<D: Driver> Copy for LaunchParams<'_, D> {}

fn shape(msg: String) -> RuntimeError {
    RuntimeError::Shape(msg)
}

fn param(param: &'static str, message: String) -> RuntimeError {
    RuntimeError::Param { param, message }
}

/// A variant's buffer against whether the spec uses it and its length.
fn variant(
    name: &'static str,
    used: bool,
    len: Option<usize>,
    want: usize,
) -> Result<(), RuntimeError> {
    match (used, len) {
        (true, None) => Err(param(name, format!("the spec needs it: pass {want} f32"))),
        (false, Some(_)) => Err(param(name, "given, but the spec does not use it".into())),
        (true, Some(n)) if n != want => Err(param(name, format!("{n} values, {want} needed"))),
        _ => Ok(()),
    }
}

/// The checks every launch of a step makes: devices, the plan's
/// freshness and layout, the K/V views' element type and pages.
fn check_common<T: Element, D: Driver>(
    layout: &KvLayoutSpec,
    ordinal: u32,
    stream: &Stream<D>,
    plan: &StepPlan<D>,
    kv_len: (usize, usize),
) -> Result<(), RuntimeError> {
    {
        stream.same_device("kernels", ordinal)?;
        plan.check_current(stream)?;
        if plan.layout != *layout {
            return Err(RuntimeError::StalePlan(
                "the plan was made for another KV layout".into(),
            ));
        }
        check_elem::<T>("K/V", layout.dtype)?;
        let page = layout.page_elems() as usize;
        if kv_len.0 != kv_len.1 || !kv_len.0.is_multiple_of(page) {
            return Err(shape(format!(
                "K and V views hold {} and {} elements; both must be the same whole number \
                 of pages of {page} elements",
                kv_len.0, kv_len.1
            )));
        }
        let pages = (kv_len.0 / page) as u64;
        if pages < plan.pages_needed {
            return Err(shape(format!(
                "the K/V views hold {pages} pages but the plan names page {}",
                plan.pages_needed - 1
            )));
        }
        Ok(())
    }
}

impl<D: Driver> Kernels<D> {
    fn check_common<T: Element>(
        &self,
        stream: &Stream<D>,
        plan: &StepPlan<D>,
        kv_len: (usize, usize),
    ) -> Result<(), RuntimeError> {
        check_common::<T, D>(&self.spec.kv, self.ordinal, stream, plan, kv_len)
    }

    /// The table, variants and K/V arguments shared by decode and prefill.
    fn attention_args<T: Element>(
        &self,
        stream: &Stream<D>,
        plan: &StepPlan<D>,
        kv: KvView<'_, T, D>,
        params: &LaunchParams<'_, D>,
    ) -> Result<Args, RuntimeError> {
        let s = &self.spec;
        let q_heads = s.q_heads as usize;
        variant("sinks", s.sinks, params.sinks.map(|v| v.len()), q_heads)?;
        let given = s.alibi == Some(attnforge_codegen::Alibi::Given);
        variant(
            "alibi_slopes",
            given,
            params.alibi_slopes.map(|v| v.len()),
            q_heads,
        )?;
        let scales = s.kv.scale.len(s.kv.kv_heads);
        let scaled = s.kv.scale != attnforge_codegen::KvScale::Unscaled;
        variant(
            "kv_scales",
            scaled,
            params.kv_scales.map(|k| k.0.len()),
            scales,
        )?;
        variant(
            "kv_scales",
            scaled,
            params.kv_scales.map(|k| k.1.len()),
            scales,
        )?;
        let (b, o) = (plan.batch as usize, &plan.offsets);
        let mut args = Args::default();
        args.set(Slot::K, kv.k.arg(stream, "k")?)
            .set(Slot::V, kv.v.arg(stream, "v")?)
            .set(
                Slot::KvIndptr,
                plan.meta(o.kv_indptr, b + 1)?.arg(stream, "workspace")?,
            )
            .set(
                Slot::KvIndices,
                plan.meta(o.kv_indices, o.n_indices)?
                    .arg(stream, "workspace")?,
            )
            .set(
                Slot::LastPageLen,
                plan.meta(o.last_page_len, b)?.arg(stream, "workspace")?,
            );
        if let Some(v) = params.sinks {
            args.set(Slot::Sinks, v.arg(stream, "sinks")?);
        }
        if let Some(v) = params.alibi_slopes {
            args.set(Slot::AlibiSlopes, v.arg(stream, "alibi_slopes")?);
        }
        if let Some((k, v)) = params.kv_scales {
            args.set(Slot::KScale, k.arg(stream, "k_scale")?)
                .set(Slot::VScale, v.arg(stream, "v_scale")?);
        }
        Ok(args)
    }

    /// Every check of a decode (`prefill` false) or prefill launch, and its
    /// arguments but the split-K ones: the plan of the right kind for this
    /// spec, q/out of its rows, the table, variants and K/V. The caller
    /// holds the plan and the stream.
    #[allow(clippy::too_many_arguments)]
    fn attention_call<Q: Element, T: Element>(
        &self,
        stream: &Stream<D>,
        plan: &StepPlan<D>,
        kv: KvView<'_, T, D>,
        params: &LaunchParams<'_, D>,
        q: View<'_, Q, D>,
        out: ViewMut<'_, Q, D>,
        prefill: bool,
    ) -> Result<(SpecPlan, Args), RuntimeError> {
        self.check_common::<T>(stream, plan, (kv.k.len(), kv.v.len()))?;
        let rows = match (prefill, plan.prefill_rows) {
            (false, None) => plan.batch,
            (true, Some(rows)) => rows,
            (false, Some(_)) => {
                return Err(RuntimeError::StalePlan(
                    "a prefill plan run as a decode: plan the step with plan_decode".into(),
                ))
            }
            (true, None) => {
                return Err(RuntimeError::StalePlan(
                    "a decode plan run as a prefill: plan the step with plan_prefill".into(),
                ))
            }
        };
        let sp: SpecPlan = *plan.for_spec(&self.spec)?;
        self.query_views(&q, &out, rows as usize)?;
        let mut args = self.attention_args(stream, plan, kv, params)?;
        args.set(Slot::Q, q.arg(stream, "q")?)
            .set(Slot::Out, out.arg(stream, "out")?);
        if prefill {
            let qo = plan.meta(plan.offsets.qo_indptr, plan.batch as usize + 1)?;
            args.set(Slot::QoIndptr, qo.arg(stream, "workspace")?);
        }
        Ok((sp, args))
    }

    fn query_views<Q: Element>(
        &self,
        q: &View<'_, Q, D>,
        out: &ViewMut<'_, Q, D>,
        rows: usize,
    ) -> Result<(), RuntimeError> {
        check_elem::<Q>("q/out", self.spec.query_dtype())?;
        let row = self.spec.q_heads as usize * self.spec.kv.head_dim as usize;
        let need = rows * row;
        if q.len() != need || out.len() != need {
            return Err(shape(format!(
                "q and out hold {} and {} elements; {rows} query rows need {need} each \
                 ([rows][q_heads][head_dim])",
                q.len(),
                out.len()
            )));
        }
        Ok(())
    }

    /// Decode for the plan's batch over one layer's K/V: one launch, or two
    /// with split-K (partials into the workspace, then the merge).
    pub fn decode<Q: Element, T: Element>(
        &self,
        stream: &Stream<D>,
        plan: &StepPlan<D>,
        kv: KvView<'_, T, D>,
        params: &LaunchParams<'_, D>,
        q: View<'_, Q, D>,
        out: ViewMut<'_, Q, D>,
    ) -> Result<(), RuntimeError> {
        // The plan stays current, and the stream tracks what is queued,
        // from the first check to the last enqueue.
        let (_plan, _submit) = (plan.hold(), stream.submit());
        let (sp, mut args) = self.attention_call(stream, plan, kv, params, q, out, false)?;
        let batch = plan.batch;
        if batch == 0 {
            return Ok(());
        }
        if !sp.decode.split {
            let ks = KernelSpec::Decode(self.spec);
            let grid = ks.grid_serving(batch, 1, sp.decode.kv_heads_per_block);
            // SAFETY: the plan's table was validated against arenas of at
            // least `pages_needed` pages, which the K/V views hold; q/out
            // have the batch's shape and the variant buffers one value per
            // query head (checked above).
            return unsafe { self.decode.launch(stream, grid, &args) };
        }
        let rows = batch as usize * self.spec.q_heads as usize * sp.decode.splits as usize;
        let part_out = plan
            .ws
            .part_out
            .view()
            .slice(0..rows * self.spec.kv.head_dim as usize)?;
        let part_ml = plan.ws.part_ml.view().slice(0..rows * 2)?;
        let (po, pm) = (
            part_out.arg(stream, "workspace")?,
            part_ml.arg(stream, "workspace")?,
        );
        args.set(Slot::PartOut, po)
            .set(Slot::PartMl, pm)
            .set(
                Slot::ChunkTokens,
                KernelArg::I32(sp.decode.chunk_tokens as i32),
            )
            .set(Slot::NumSplits, KernelArg::I32(sp.decode.splits as i32));
        let ks = KernelSpec::DecodeSplit(self.spec);
        // SAFETY: as for the plain kernel; the partials hold batch · q_heads
        // · splits rows (the workspace was checked against the splits when
        // planning) and splits · chunk_tokens covers every visible token.
        unsafe {
            self.split.launch(
                stream,
                ks.grid_serving(batch, sp.decode.splits, sp.decode.kv_heads_per_block),
                &args,
            )?
        };
        let ms = KernelSpec::DecodeMerge(self.spec);
        // SAFETY: the partials and out have the shapes the merge reads.
        unsafe { self.merge.launch(stream, ms.grid(batch, 1), &args) }
    }

    /// Prefill for the plan's ragged batch over one layer's K/V (the new
    /// tokens' K/V already appended): one launch.
    pub fn prefill<Q: Element, T: Element>(
        &self,
        stream: &Stream<D>,
        plan: &StepPlan<D>,
        kv: KvView<'_, T, D>,
        params: &LaunchParams<'_, D>,
        q: View<'_, Q, D>,
        out: ViewMut<'_, Q, D>,
    ) -> Result<(), RuntimeError> {
        // The plan stays current, and the stream tracks what is queued,
        // from the first check to the last enqueue.
        let (_plan, _submit) = (plan.hold(), stream.submit());
        let (sp, args) = self.attention_call(stream, plan, kv, params, q, out, true)?;
        let batch = plan.batch;
        let tiles = query_tiles(sp.packed, self.prefill.rows)?;
        if batch == 0 || tiles == 0 {
            return Ok(());
        }
        let ks = KernelSpec::Prefill(self.spec);
        // SAFETY: the table and qo_indptr were validated when planning (every
        // sequence's new rows within its KV), q/out hold qo_indptr's rows,
        // and the grid covers the longest sequence's query tiles.
        unsafe { self.prefill.launch(stream, ks.grid(batch, tiles), &args) }
    }

    /// Appends the plan's new tokens (rows of `k_new`/`v_new` in the
    /// layout's append source dtype) into one layer's K/V at the plan's
    /// slots: one launch.
    pub fn append<S: Element, T: Element>(
        &self,
        stream: &Stream<D>,
        plan: &StepPlan<D>,
        kv: KvViewMut<'_, T, D>,
        kv_scales: Option<ScaleViews<'_, D>>,
        k_new: View<'_, S, D>,
        v_new: View<'_, S, D>,
    ) -> Result<(), RuntimeError> {
        append_with(
            &self.append,
            &self.spec.kv,
            self.ordinal,
            stream,
            plan,
            kv,
            kv_scales,
            k_new,
            v_new,
        )
    }
}

/// The append kernel `append` of `layout` over one layer's K/V: the launch
/// [`Kernels::append`] makes, for callers that loaded only the append.
#[allow(clippy::too_many_arguments)]
pub(crate) fn append_with<S: Element, T: Element, D: Driver>(
    append: &Arc<Loaded<D>>,
    layout: &KvLayoutSpec,
    ordinal: u32,
    stream: &Stream<D>,
    plan: &StepPlan<D>,
    kv: KvViewMut<'_, T, D>,
    kv_scales: Option<ScaleViews<'_, D>>,
    k_new: View<'_, S, D>,
    v_new: View<'_, S, D>,
) -> Result<(), RuntimeError> {
    // As for decode: the plan current, the stream's tracking exact.
    let (_plan, _submit) = (plan.hold(), stream.submit());
    check_common::<T, D>(layout, ordinal, stream, plan, (kv.k.len(), kv.v.len()))?;
    check_elem::<S>("k_new/v_new", append_source_dtype(layout))?;
    let scales = layout.scale.len(layout.kv_heads);
    let scaled = layout.scale != attnforge_codegen::KvScale::Unscaled;
    variant("kv_scales", scaled, kv_scales.map(|k| k.0.len()), scales)?;
    variant("kv_scales", scaled, kv_scales.map(|k| k.1.len()), scales)?;
    let n = plan.tokens as usize;
    let row = layout.kv_heads as usize * layout.head_dim as usize;
    if k_new.len() != n * row || v_new.len() != n * row {
        return Err(shape(format!(
            "k_new and v_new hold {} and {} elements; the plan's {n} new tokens need {} \
                 each ([tokens][kv_heads][head_dim])",
            k_new.len(),
            v_new.len(),
            n * row
        )));
    }
    let mut args = Args::default();
    args.set(Slot::KNew, k_new.arg(stream, "k_new")?)
        .set(Slot::VNew, v_new.arg(stream, "v_new")?)
        .set(
            Slot::Slots,
            plan.meta(plan.offsets.slots, 2 * n)?
                .arg(stream, "workspace")?,
        )
        .set(Slot::K, kv.k.arg(stream, "k")?)
        .set(Slot::V, kv.v.arg(stream, "v")?);
    if let Some((k, v)) = kv_scales {
        args.set(Slot::KScale, k.arg(stream, "k_scale")?)
            .set(Slot::VScale, v.arg(stream, "v_scale")?);
    }
    if n == 0 {
        return Ok(());
    }
    let ks = KernelSpec::Append(*layout);
    // SAFETY: every slot was validated against arenas of at least
    // `pages_needed` pages (the K/V views hold them) and the new rows
    // have the tokens' shape.
    unsafe { append.launch(stream, ks.grid(n as u32, 1), &args) }
}
