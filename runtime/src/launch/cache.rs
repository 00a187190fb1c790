//! A [`KvCache`] on a device, an engine's step on it: plan once per step
//! ([`KvCache::plan_decode`], [`KvCache::plan_prefill`]), then per layer
//! [`KvCache::append_step`] and [`KvCache::decode_step`] (or
//! [`KvCache::prefill_step`]) on a stream.

use attnforge_codegen::{AttentionSpec, KvLayoutSpec};

use super::arena::DeviceArena;
use super::kernels::Kernels;
use super::memory::{Gpu, Stream, View, ViewMut};
use super::run::{KvView, LaunchParams, ScaleViews};
use super::step::{StepInput, StepPlan, Workspace};
use super::Element;
use crate::cache::{KvCache, SeqId};
use crate::driver::Driver;
use crate::plan::Split;
use crate::RuntimeError;

impl<T: Element, D: Driver> KvCache<T, DeviceArena<T, D>> {
    /// A cache whose arenas live in `gpu`'s memory, zeroed on `stream` (the
    /// stream the cache's own copies go on).
    pub fn new_on_gpu(
        gpu: &Gpu<D>,
        stream: &Stream<D>,
        layout: KvLayoutSpec,
        layers: u32,
        max_pages: u32,
    ) -> Result<Self, RuntimeError> {
        let mut failed = None;
        let cache = KvCache::with_arena(layout, layers, max_pages, |elems| {
            DeviceArena::zeroed(gpu, stream, elems).map_err(|e| {
                let msg = e.to_string();
                failed = Some(e);
                crate::cache::CacheError::Arena(msg)
            })
        });
        match (cache, failed) {
            (Ok(c), _) => Ok(c),
            (Err(_), Some(e)) => Err(e),
            (Err(e), None) => Err(e.into()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn plan(
        &mut self,
        ws: &mut Workspace<D>,
        stream: &Stream<D>,
        specs: &[AttentionSpec],
        batch: &[SeqId],
        slots: &[i64],
        q_lens: Option<&[u32]>,
        split: Split,
    ) -> Result<StepPlan<D>, RuntimeError> {
        stream.same_device("cache", self.arena().ordinal())?;
        if specs.is_empty() {
            return Err(RuntimeError::Param {
                param: "specs",
                message: "a step plan needs the attention spec(s) its layers run".into(),
            });
        }
        let table = self.page_table(batch)?;
        let layout = *self.layout();
        let arena_pages = self.max_pages() as u64;
        ws.plan(
            stream,
            StepInput {
                specs,
                layout,
                table: &table,
                slots,
                q_lens,
                split,
                arena_pages,
                cache: Some(self.plan_key()),
            },
        )
    }

    /// Plans a decode step for `batch` (one new token each, whose `slots`
    /// came from [`KvCache::append_tokens`]) for the attentions of `specs`
    /// (every spec the step's layers run), and queues its one upload on
    /// `stream`. Call it after the step's `append_tokens`: a later change
    /// of sequences or pages makes the plan stale.
    #[allow(clippy::too_many_arguments)]
    pub fn plan_decode(
        &mut self,
        ws: &mut Workspace<D>,
        stream: &Stream<D>,
        specs: &[AttentionSpec],
        batch: &[SeqId],
        slots: &[i64],
        split: Split,
    ) -> Result<StepPlan<D>, RuntimeError> {
        self.plan(ws, stream, specs, batch, slots, None, split)
    }

    /// Plans a prefill step: `batch[i]` brings `q_lens[i]` new query tokens
    /// (their K/V appended at `slots` by this step's layers).
    #[allow(clippy::too_many_arguments)]
    pub fn plan_prefill(
        &mut self,
        ws: &mut Workspace<D>,
        stream: &Stream<D>,
        specs: &[AttentionSpec],
        batch: &[SeqId],
        q_lens: &[u32],
        slots: &[i64],
    ) -> Result<StepPlan<D>, RuntimeError> {
        self.plan(ws, stream, specs, batch, slots, Some(q_lens), Split::Off)
    }

    fn check_plan(&self, plan: &StepPlan<D>) -> Result<(), RuntimeError> {
        if plan.cache != Some(self.plan_key()) {
            return Err(RuntimeError::StalePlan(
                "the plan was made for another cache, or this cache's sequences or pages \
                 changed since (plan after the step's append_tokens)"
                    .into(),
            ));
        }
        Ok(())
    }

    fn scale_views(
        &self,
        layer: u32,
        given: Option<ScaleViews<'_, D>>,
    ) -> Result<Option<ScaleViews<'_, D>>, RuntimeError> {
        if given.is_some() {
            return Err(RuntimeError::Param {
                param: "kv_scales",
                message: "given, but a cache passes its layer's own scales (set them with \
                          KvCache::set_kv_scales)"
                    .into(),
            });
        }
        let scaled = self.layout().scale != attnforge_codegen::KvScale::Unscaled;
        match self.arena().scales(layer) {
            None if scaled => Err(RuntimeError::Param {
                param: "kv_scales",
                message: format!(
                    "layer {layer} of this fp8 cache has no scales yet: set them with \
                     KvCache::set_kv_scales before its first append"
                ),
            }),
            s => Ok(s),
        }
    }

    /// What an attention step at `layer` reads from the cache: the plan
    /// checked against it, the layer's K/V, and `params` with the layer's
    /// own fp8 scales.
    fn attention_inputs<'a>(
        &'a self,
        plan: &StepPlan<D>,
        layer: u32,
        params: &LaunchParams<'a, D>,
    ) -> Result<(KvView<'a, T, D>, LaunchParams<'a, D>), RuntimeError> {
        self.check_plan(plan)?;
        let kv = self.arena().layer(self.layer_range(layer)?)?;
        let params = LaunchParams {
            kv_scales: self.scale_views(layer, params.kv_scales)?,
            ..*params
        };
        Ok((kv, params))
    }

    /// Appends the plan's new tokens' K/V rows (in the layout's append
    /// source dtype, [tokens][kv_heads][head_dim]) into `layer`: one launch.
    #[allow(clippy::too_many_arguments)]
    pub fn append_step<S: Element>(
        &mut self,
        kernels: &Kernels<D>,
        stream: &Stream<D>,
        plan: &StepPlan<D>,
        layer: u32,
        k_new: View<'_, S, D>,
        v_new: View<'_, S, D>,
    ) -> Result<(), RuntimeError> {
        self.check_plan(plan)?;
        let range = self.layer_range(layer)?;
        // An fp8 layer has its scales before its first append.
        self.scale_views(layer, None)?;
        self.arena_mut()
            .append_layer(kernels, stream, plan, range, layer, k_new, v_new)
    }

    /// Decode for the plan's batch at `layer`: one launch (two with
    /// split-K). `params` carries the variants' buffers (sinks, ALiBi
    /// slopes); an fp8 cache passes its layer's scales itself.
    #[allow(clippy::too_many_arguments)]
    pub fn decode_step<Q: Element>(
        &self,
        kernels: &Kernels<D>,
        stream: &Stream<D>,
        plan: &StepPlan<D>,
        layer: u32,
        params: &LaunchParams<'_, D>,
        q: View<'_, Q, D>,
        out: ViewMut<'_, Q, D>,
    ) -> Result<(), RuntimeError> {
        let (kv, params) = self.attention_inputs(plan, layer, params)?;
        kernels.decode(stream, plan, kv, &params, q, out)
    }

    /// Prefill for the plan's ragged batch at `layer` (its K/V appended by
    /// [`KvCache::append_step`]): one launch.
    #[allow(clippy::too_many_arguments)]
    pub fn prefill_step<Q: Element>(
        &self,
        kernels: &Kernels<D>,
        stream: &Stream<D>,
        plan: &StepPlan<D>,
        layer: u32,
        params: &LaunchParams<'_, D>,
        q: View<'_, Q, D>,
        out: ViewMut<'_, Q, D>,
    ) -> Result<(), RuntimeError> {
        let (kv, params) = self.attention_inputs(plan, layer, params)?;
        kernels.prefill(stream, plan, kv, &params, q, out)
    }
}
