//! The CPU device: generated kernels JIT-compiled for the host and launched
//! with validated arguments.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use attnforge_codegen::cpu::{compile, Arg, CpuKernel, CpuOptions, Pod};
use attnforge_codegen::kernels::{generate, symbol, KernelSpec};
use attnforge_codegen::{AttentionSpec, DType, KvLayoutSpec, Target};

use crate::table::{validate_slots, PageTable};
use crate::RuntimeError;

/// A KV element type on the host.
pub trait Element: Pod + Send + Sync {
    /// The dtype it stores.
    const DTYPE: DType;
    /// Its value as f64.
    fn to_f64(self) -> f64;
    /// The nearest value to `x` (round to nearest even).
    fn from_f64(x: f64) -> Self;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(x: f64) -> Self {
        x as f32
    }
}

impl Element for half::f16 {
    const DTYPE: DType = DType::F16;
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    fn from_f64(x: f64) -> Self {
        half::f16::from_f64(x)
    }
}

impl Element for half::bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    fn from_f64(x: f64) -> Self {
        half::bf16::from_f64(x)
    }
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
}

impl std::fmt::Debug for CpuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.cache.lock().map(|c| c.len()).unwrap_or(0);
        f.debug_struct("CpuDevice")
            .field("cached_kernels", &n)
            .finish()
    }
}

fn arena_pages<T>(layout: &KvLayoutSpec, k: &[T], v: &[T]) -> Result<u64, RuntimeError> {
    let page = layout.page_elems() as usize;
    if k.len() != v.len() || !k.len().is_multiple_of(page) {
        return Err(RuntimeError::Shape(format!(
            "K and V arenas hold {} and {} elements; both must be the same whole number of \
             pages of {page} elements",
            k.len(),
            v.len()
        )));
    }
    Ok((k.len() / page) as u64)
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

/// Every check a decode launch needs, on any device: the spec, the dtype,
/// the arenas' shape, the page table against them, and q/out's shape.
pub(crate) fn validate_decode<Q: Element, T: Element>(
    spec: &AttentionSpec,
    q: &[Q],
    k: &[T],
    v: &[T],
    table: &PageTable,
    out: &[Q],
) -> Result<(), RuntimeError> {
    spec.validate()?;
    check_dtype::<T>(&spec.kv)?;
    if Q::DTYPE != spec.query_dtype() {
        return Err(RuntimeError::DType {
            spec: spec.query_dtype(),
            given: Q::DTYPE,
        });
    }
    let max_pages = arena_pages(&spec.kv, k, v)?;
    table.validate(&spec.kv, max_pages)?;
    let batch = table.batch();
    let row = spec.q_heads as usize * spec.kv.head_dim as usize;
    if q.len() != batch * row || out.len() != batch * row {
        return Err(RuntimeError::Shape(format!(
            "q and out hold {} and {} elements; a batch of {batch} needs {} each \
             ([batch][q_heads][head_dim])",
            q.len(),
            out.len(),
            batch * row
        )));
    }
    Ok(())
}

/// Every check an append launch needs, on any device; returns the number
/// of tokens (the grid).
pub(crate) fn validate_append<T: Element>(
    layout: &KvLayoutSpec,
    k_new: &[T],
    v_new: &[T],
    slots: &[i64],
    k: &[T],
    v: &[T],
) -> Result<u32, RuntimeError> {
    layout.validate()?;
    check_dtype::<T>(layout)?;
    let max_pages = arena_pages(layout, k, v)?;
    validate_slots(slots, layout, max_pages)?;
    let row = layout.kv_heads as usize * layout.head_dim as usize;
    if k_new.len() != slots.len() * row || v_new.len() != slots.len() * row {
        return Err(RuntimeError::Shape(format!(
            "k_new and v_new hold {} and {} elements; {} tokens need {} each \
             ([tokens][kv_heads][head_dim])",
            k_new.len(),
            v_new.len(),
            slots.len(),
            slots.len() * row
        )));
    }
    u32::try_from(slots.len())
        .map_err(|_| RuntimeError::Shape("more than u32::MAX tokens in one append".into()))
}

impl CpuDevice {
    /// A device with an empty kernel cache.
    pub fn new() -> CpuDevice {
        CpuDevice::default()
    }

    /// The compiled kernel for `spec` on `target`, compiling it on first use.
    pub fn kernel(
        &self,
        spec: &KernelSpec,
        target: Target,
        mode: Mode,
    ) -> Result<Arc<CpuKernel>, RuntimeError> {
        let key = (symbol(spec), target, mode);
        if let Some(k) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(k.clone());
        }
        let generated = generate(spec, target)?;
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
        validate_decode(spec, q, k, v, table, out)?;
        let batch = table.batch();
        if batch == 0 {
            return Ok(());
        }
        let ks = KernelSpec::Decode(*spec);
        let kernel = self.kernel(&ks, target, mode)?;
        let mut args = [
            Arg::input(q),
            Arg::input(k),
            Arg::input(v),
            Arg::input(&table.indptr),
            Arg::input(&table.indices),
            Arg::input(&table.last_page_len),
            Arg::output(out),
        ];
        // SAFETY: the table was validated against these arenas (every page
        // below max_pages, lengths within pages) and q/out have the batch's
        // shape, so every access of the decode kernel is in bounds.
        unsafe { kernel.launch(ks.grid(batch as u32), &mut args)? };
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
        let tokens = validate_append(layout, k_new, v_new, slots, k, v)?;
        if tokens == 0 {
            return Ok(());
        }
        let ks = KernelSpec::Append(*layout);
        let kernel = self.kernel(&ks, target, mode)?;
        let mut args = [
            Arg::input(k_new),
            Arg::input(v_new),
            Arg::input(slots),
            Arg::output(k),
            Arg::output(v),
        ];
        // SAFETY: every slot was validated against the arenas and the new
        // rows have the tokens' shape, so every access is in bounds.
        unsafe { kernel.launch(ks.grid(tokens), &mut args)? };
        Ok(())
    }
}
