//! The CPU device: generated kernels JIT-compiled for the host and launched
//! with validated arguments.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use attnforge_codegen::cpu::{compile, Arg, CpuKernel, CpuOptions};
use attnforge_codegen::kernels::{
    generate_path, path_symbol, prefill_rows_path, KernelPath, KernelSpec,
};
use attnforge_codegen::{AttentionSpec, KvLayoutSpec, Target};

pub use crate::launch::Element;
use crate::launch::{validate_append, validate_decode, validate_prefill};
use crate::plan::{plan_decode, KvScales, Params};
use crate::table::PageTable;
use crate::RuntimeError;

/// The kernel arguments of an fp8 cache's scales (none when unscaled).
fn scale_args<'a>(scales: Option<KvScales<'a>>) -> impl Iterator<Item = Arg<'a>> {
    scales
        .into_iter()
        .flat_map(|s| [Arg::input(s.k), Arg::input(s.v)])
}

/// How to run kernels on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Plain JIT-compiled code.
    Fast,
    /// The sanitizer: every access bounds-checked, shared-memory races and
    /// divergence reported as errors.
    Checked,
}

type Key = (String, Target, Mode);

/// Runs generated kernels on the host CPU. Compiled kernels are cached per
/// (kernel, target, mode); the device can be shared between threads.
#[derive(Default)]
pub struct CpuDevice {
    cache: Mutex<HashMap<Key, Arc<CpuKernel>>>,
    /// Which form of decode and prefill its launches run.
    path: KernelPath,
}

impl std::fmt::Debug for CpuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.cache.lock().map(|c| c.len()).unwrap_or(0);
        f.debug_struct("CpuDevice")
            .field("cached_kernels", &n)
            .finish()
    }
}

impl CpuDevice {
    /// A device with an empty kernel cache.
    pub fn new() -> CpuDevice {
        CpuDevice::default()
    }

    /// A device whose launches run `path`'s kernels: with
    /// [`KernelPath::Simt`], the SIMT decode and prefill even at targets
    /// with matrix cores (to check both forms on the same inputs).
    pub fn with_path(path: KernelPath) -> CpuDevice {
        CpuDevice {
            path,
            ..CpuDevice::default()
        }
    }

    /// The compiled kernel for `spec` on `target` (by the device's path),
    /// compiling it on first use.
    pub fn kernel(
        &self,
        spec: &KernelSpec,
        target: Target,
        mode: Mode,
    ) -> Result<Arc<CpuKernel>, RuntimeError> {
        self.kernel_path(spec, target, mode, self.path)
    }

    /// [`CpuDevice::kernel`] by `path` (the SIMT form where the target has
    /// a matrix-core one, with [`KernelPath::Simt`]).
    pub fn kernel_path(
        &self,
        spec: &KernelSpec,
        target: Target,
        mode: Mode,
        path: KernelPath,
    ) -> Result<Arc<CpuKernel>, RuntimeError> {
        let key = (path_symbol(spec, target, path), target, mode);
        if let Some(k) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(k.clone());
        }
        let generated = generate_path(spec, target, path)?;
        let compiled = compile(
            &generated.kernel,
            &generated.analysis,
            CpuOptions {
                checked: mode == Mode::Checked,
            },
        )?;
        let compiled = Arc::new(compiled);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        Ok(cache.entry(key).or_insert(compiled).clone())
    }

    /// Decode attention for one query token per sequence.
    ///
    /// `q` and `out` are [batch][q_heads][head_dim]; `k` and `v` are the
    /// arenas (whole pages in the layout's order); `table` maps sequences
    /// to pages. Everything is validated before the launch.
    #[allow(clippy::too_many_arguments)]
    pub fn decode<Q: Element, T: Element>(
        &self,
        spec: &AttentionSpec,
        target: Target,
        mode: Mode,
        q: &[Q],
        k: &[T],
        v: &[T],
        table: &PageTable,
        out: &mut [Q],
    ) -> Result<(), RuntimeError> {
        let params = Params::default();
        self.decode_ext(spec, target, mode, &params, q, k, v, table, out)
    }

    /// Decode with the launch parameters of the spec's variants (sinks,
    /// given ALiBi slopes) and a split policy: the planner
    /// ([`crate::plan::plan_decode`], with this machine's cores as compute
    /// units) picks the plain kernel or split-K and its merge.
    #[allow(clippy::too_many_arguments)]
    pub fn decode_ext<Q: Element, T: Element>(
        &self,
        spec: &AttentionSpec,
        target: Target,
        mode: Mode,
        params: &Params<'_>,
        q: &[Q],
        k: &[T],
        v: &[T],
        table: &PageTable,
        out: &mut [Q],
    ) -> Result<(), RuntimeError> {
        validate_decode::<Q, T>(spec, q, (k.len(), v.len()), table, out)?;
        params.validate(spec)?;
        let batch = table.batch();
        if batch == 0 {
            return Ok(());
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let lens = (0..batch).map(|b| table.seq_len(b, spec.kv.page_size));
        let plan = plan_decode(spec, target, lens, params.split, cores)?;
        let table_args = || {
            [
                Arg::input(&table.indptr),
                Arg::input(&table.indices),
                Arg::input(&table.last_page_len),
            ]
        };
        let variants = |with_sinks: bool| {
            let sinks = params.sinks.filter(|_| with_sinks).map(Arg::input);
            sinks
                .into_iter()
                .chain(params.alibi_slopes.map(Arg::input))
                .chain(scale_args(params.kv_scales))
        };
        if !plan.split {
            let ks = KernelSpec::Decode(*spec);
            let kernel = self.kernel(&ks, target, mode)?;
            let mut args: Vec<Arg> = [Arg::input(q), Arg::input(k), Arg::input(v)]
                .into_iter()
                .chain(table_args())
                .chain(variants(true))
                .chain([Arg::output(out)])
                .collect();
            // SAFETY: the table was validated against these arenas (every
            // page below max_pages, lengths within pages), q/out have the
            // batch's shape and the variant buffers one value per query head,
            // so every access of the decode kernel is in bounds.
            unsafe {
                kernel.launch(
                    ks.grid_serving(batch as u32, 1, plan.kv_heads_per_block),
                    &mut args,
                )?
            };
            return Ok(());
        }
        let rows = batch * spec.q_heads as usize * plan.splits as usize;
        let mut part_out = vec![0f32; rows * spec.kv.head_dim as usize];
        let mut part_ml = vec![0f32; rows * 2];
        let ks = KernelSpec::DecodeSplit(*spec);
        let kernel = self.kernel(&ks, target, mode)?;
        let mut args: Vec<Arg> = [Arg::input(q), Arg::input(k), Arg::input(v)]
            .into_iter()
            .chain(table_args())
            .chain(variants(false))
            .chain([
                Arg::output(&mut part_out),
                Arg::output(&mut part_ml),
                Arg::I32(plan.chunk_tokens as i32),
            ])
            .collect();
        // SAFETY: as for the plain kernel; the partial buffers hold
        // batch · q_heads · splits rows, the grid's z is `splits`, and
        // splits · chunk_tokens covers every sequence's visible tokens.
        unsafe {
            kernel.launch(
                ks.grid_serving(batch as u32, plan.splits, plan.kv_heads_per_block),
                &mut args,
            )?
        };
        let ms = KernelSpec::DecodeMerge(*spec);
        let merge = self.kernel(&ms, target, mode)?;
        let mut args: Vec<Arg> = [Arg::input(&part_out), Arg::input(&part_ml)]
            .into_iter()
            .chain(params.sinks.map(Arg::input))
            .chain([Arg::output(out), Arg::I32(plan.splits as i32)])
            .collect();
        // SAFETY: the partials have batch · q_heads · num_splits rows, out
        // the batch's shape, the sinks one value per query head.
        unsafe { merge.launch(ms.grid(batch as u32, 1), &mut args)? };
        Ok(())
    }

    /// Prefill attention for a ragged batch: sequence b's new query tokens
    /// are rows `qo_indptr[b]..qo_indptr[b+1]` of `q` and `out`
    /// ([rows][q_heads][head_dim]); their K/V must already be appended, so
    /// they are the last tokens of the sequence's KV.
    #[allow(clippy::too_many_arguments)]
    pub fn prefill<Q: Element, T: Element>(
        &self,
        spec: &AttentionSpec,
        target: Target,
        mode: Mode,
        params: &Params<'_>,
        q: &[Q],
        qo_indptr: &[i32],
        k: &[T],
        v: &[T],
        table: &PageTable,
        out: &mut [Q],
    ) -> Result<(), RuntimeError> {
        let packed =
            validate_prefill::<Q, T>(spec, params, q, qo_indptr, (k.len(), v.len()), table, out)?;
        let rows = prefill_rows_path(spec, target, self.path);
        let tiles = crate::launch::query_tiles(packed, rows)?;
        let batch = table.batch();
        if batch == 0 || tiles == 0 {
            return Ok(());
        }
        let ks = KernelSpec::Prefill(*spec);
        let kernel = self.kernel(&ks, target, mode)?;
        let mut args: Vec<Arg> = [
            Arg::input(q),
            Arg::input(k),
            Arg::input(v),
            Arg::input(qo_indptr),
            Arg::input(&table.indptr),
            Arg::input(&table.indices),
            Arg::input(&table.last_page_len),
        ]
        .into_iter()
        .chain(params.sinks.map(Arg::input))
        .chain(params.alibi_slopes.map(Arg::input))
        .chain(scale_args(params.kv_scales))
        .chain([Arg::output(out)])
        .collect();
        // SAFETY: the table was validated against the arenas, qo_indptr
        // against q/out and the KV lengths, and the grid covers the longest
        // sequence's query tiles, so every access is in bounds.
        unsafe { kernel.launch(ks.grid(batch as u32, tiles), &mut args)? };
        Ok(())
    }

    /// KV append: row i of `k_new`/`v_new` ([tokens][kv_heads][head_dim]) goes
    /// to slot `slots[i]` (page · page_size + offset; negative: skipped).
    #[allow(clippy::too_many_arguments)]
    pub fn append<T: Element>(
        &self,
        layout: &KvLayoutSpec,
        target: Target,
        mode: Mode,
        k_new: &[T],
        v_new: &[T],
        slots: &[i64],
        k: &mut [T],
        v: &mut [T],
    ) -> Result<(), RuntimeError> {
        self.append_ext(layout, target, mode, None, k_new, v_new, slots, k, v)
    }

    /// KV append with a source dtype of its own
    /// ([`append_source_dtype`]: f32 into an fp8 cache) and the cache's
    /// scales: an fp8 cache stores `x / scale`, rounded to nearest even.
    #[allow(clippy::too_many_arguments)]
    pub fn append_ext<S: Element, T: Element>(
        &self,
        layout: &KvLayoutSpec,
        target: Target,
        mode: Mode,
        scales: Option<KvScales<'_>>,
        k_new: &[S],
        v_new: &[S],
        slots: &[i64],
        k: &mut [T],
        v: &mut [T],
    ) -> Result<(), RuntimeError> {
        let tokens = validate_append::<S, T>(
            layout,
            scales.as_ref(),
            k_new,
            v_new,
            slots,
            (k.len(), v.len()),
        )?;
        if tokens == 0 {
            return Ok(());
        }
        let ks = KernelSpec::Append(*layout);
        let kernel = self.kernel(&ks, target, mode)?;
        let mut args: Vec<Arg> = [
            Arg::input(k_new),
            Arg::input(v_new),
            Arg::input(slots),
            Arg::output(k),
            Arg::output(v),
        ]
        .into_iter()
        .chain(scale_args(scales))
        .collect();
        // SAFETY: every slot was validated against the arenas and the new
        // rows have the tokens' shape, so every access is in bounds.
        unsafe { kernel.launch(ks.grid(tokens, 1), &mut args)? };
        Ok(())
    }
}
