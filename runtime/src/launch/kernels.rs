//! An attention's kernels loaded on a device: each function resolved once,
//! with its block size and its parameters' order, so a launch only
//! marshals arguments and queues.

use std::sync::Arc;

use attnforge_codegen::ir::Param;
use attnforge_codegen::kernels::{
    generate_path, prefill_rows_path, symbol, KernelPath, KernelSpec,
};
use attnforge_codegen::AttentionSpec;

use super::memory::{Gpu, Stream};
use crate::driver::{Driver, DriverError, KernelArg, MAX_ARGS};
use crate::RuntimeError;

/// What a kernel parameter receives, by the parameter's name in the IR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    Q,
    K,
    V,
    QoIndptr,
    KvIndptr,
    KvIndices,
    LastPageLen,
    Sinks,
    AlibiSlopes,
    KScale,
    VScale,
    Out,
    PartOut,
    PartMl,
    ChunkTokens,
    NumSplits,
    KNew,
    VNew,
    Slots,
}

pub(crate) const SLOTS: usize = 19;

impl Slot {
    fn from_name(name: &str) -> Option<Slot> {
        Some(match name {
            "q" => Slot::Q,
            "k_cache" => Slot::K,
            "v_cache" => Slot::V,
            "qo_indptr" => Slot::QoIndptr,
            "kv_indptr" => Slot::KvIndptr,
            "kv_indices" => Slot::KvIndices,
            "kv_last_page_len" => Slot::LastPageLen,
            "sinks" => Slot::Sinks,
            "alibi_slopes" => Slot::AlibiSlopes,
            "k_scale" => Slot::KScale,
            "v_scale" => Slot::VScale,
            "out" => Slot::Out,
            "part_out" => Slot::PartOut,
            "part_ml" => Slot::PartMl,
            "chunk_tokens" => Slot::ChunkTokens,
            "num_splits" => Slot::NumSplits,
            "k_new" => Slot::KNew,
            "v_new" => Slot::VNew,
            "slot_mapping" => Slot::Slots,
            _ => return None,
        })
    }
}

/// The arguments of one launch, by slot, before they are put in order.
#[derive(Default)]
pub(crate) struct Args([Option<KernelArg>; SLOTS]);

impl Args {
    pub(crate) fn set(&mut self, slot: Slot, arg: KernelArg) -> &mut Self {
        self.0[slot as usize] = Some(arg);
        self
    }
}

/// One kernel, loaded.
pub(crate) struct Loaded<D: Driver> {
    pub(crate) spec: KernelSpec,
    f: D::Function,
    block: u32,
    order: [Slot; MAX_ARGS],
    n: usize,
    /// It runs on the matrix unit.
    matrix: bool,
    /// A prefill's packed query rows per tile (the grid's x counts them).
    pub(crate) rows: u32,
}

impl<D: Driver> Loaded<D> {
    pub(crate) fn load(
        gpu: &Gpu<D>,
        spec: KernelSpec,
        path: KernelPath,
    ) -> Result<Loaded<D>, RuntimeError> {
        let g = generate_path(&spec, gpu.driver().target(), path)?;
        let mut order = [Slot::Q; MAX_ARGS];
        let params = &g.kernel.params;
        if params.len() > MAX_ARGS {
            return Err(unknown(
                &spec,
                "more parameters than the launch layer passes",
            ));
        }
        for (o, p) in order.iter_mut().zip(params) {
            let name = match *p {
                Param::Buffer(b) => &g.kernel.buffer(b).name,
                Param::Scalar(v) => &g.kernel.var(v).name,
            };
            *o = Slot::from_name(name)
                .ok_or_else(|| unknown(&spec, &format!("parameter `{name}`")))?;
        }
        let f = gpu.driver().load(&spec, path)?;
        Ok(Loaded {
            spec,
            f,
            block: g.block_dim(),
            order,
            n: params.len(),
            matrix: g.uses_matrix_unit(),
            rows: match spec {
                KernelSpec::Prefill(a) => prefill_rows_path(&a, gpu.driver().target(), path),
                _ => 0,
            },
        })
    }

    /// Puts `args` in the kernel's parameter order and queues the launch.
    ///
    /// # Safety
    /// The arguments were validated against the kernel: every access it
    /// makes with them on `grid` is in bounds.
    pub(crate) unsafe fn launch(
        self: &Arc<Self>,
        stream: &Stream<D>,
        grid: [u32; 3],
        args: &Args,
    ) -> Result<(), RuntimeError> {
        let mut list = [KernelArg::I32(0); MAX_ARGS];
        for (dst, slot) in list.iter_mut().zip(&self.order[..self.n]) {
            *dst = args.0[*slot as usize].ok_or_else(|| RuntimeError::Param {
                param: "kernel argument",
                message: format!(
                    "`{}` needs its {slot:?} argument, which the launch did not set",
                    symbol(&self.spec)
                ),
            })?;
        }
        // The stream keeps the kernel loaded until the launch has run.
        stream.use_kernel(self);
        // SAFETY: the caller's promise; the list is in parameter order.
        unsafe {
            stream.driver().launch(
                &stream.inner.raw,
                &self.f,
                grid,
                self.block,
                &list[..self.n],
            )?
        };
        Ok(())
    }
}

fn unknown(spec: &KernelSpec, what: &str) -> RuntimeError {
    RuntimeError::Driver(DriverError::NoCode {
        symbol: symbol(spec),
        message: format!("{what}: not known to the launch layer"),
    })
}

/// An attention's kernels on one device: decode, split-K decode and its
/// merge, prefill, and the append of its layout, each loaded (a module load
/// and a symbol lookup on a GPU; a JIT compile or a cache hit on the CPU
/// driver) once per device, here, and kept by the [`Gpu`].
pub struct Kernels<D: Driver> {
    pub(crate) spec: AttentionSpec,
    pub(crate) ordinal: u32,
    pub(crate) decode: Arc<Loaded<D>>,
    pub(crate) split: Arc<Loaded<D>>,
    pub(crate) merge: Arc<Loaded<D>>,
    pub(crate) prefill: Arc<Loaded<D>>,
    pub(crate) append: Arc<Loaded<D>>,
}

impl<D: Driver> std::fmt::Debug for Kernels<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernels")
            .field("spec", &self.spec)
            .field("ordinal", &self.ordinal)
            .finish()
    }
}

impl<D: Driver> Kernels<D> {
    /// Loads every kernel of `spec` on `gpu`: the matrix-core decode and
    /// prefill where the device has them ([`KernelPath::Auto`]).
    pub fn load(gpu: &Gpu<D>, spec: &AttentionSpec) -> Result<Kernels<D>, RuntimeError> {
        Kernels::load_path(gpu, spec, KernelPath::Auto)
    }

    /// Loads every kernel of `spec` on `gpu` by `path`: with
    /// [`KernelPath::Simt`], the SIMT decode and prefill even where the
    /// device has matrix cores (same arguments, same results to within
    /// rounding).
    pub fn load_path(
        gpu: &Gpu<D>,
        spec: &AttentionSpec,
        path: KernelPath,
    ) -> Result<Kernels<D>, RuntimeError> {
        spec.validate()?;
        Ok(Kernels {
            spec: *spec,
            ordinal: gpu.ordinal(),
            decode: gpu.loaded(KernelSpec::Decode(*spec), path)?,
            split: gpu.loaded(KernelSpec::DecodeSplit(*spec), path)?,
            merge: gpu.loaded(KernelSpec::DecodeMerge(*spec), path)?,
            prefill: gpu.loaded(KernelSpec::Prefill(*spec), path)?,
            append: gpu.loaded(KernelSpec::Append(spec.kv), path)?,
        })
    }

    /// The spec they were generated from.
    pub fn spec(&self) -> &AttentionSpec {
        &self.spec
    }

    /// Whether the decode kernels are the matrix-core ones.
    pub fn decode_is_matrix(&self) -> bool {
        self.decode.matrix
    }

    /// Whether the prefill kernel is the matrix-core one.
    pub fn prefill_is_matrix(&self) -> bool {
        self.prefill.matrix
    }
}
