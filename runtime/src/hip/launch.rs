//! Owning device types and kernel launches.

use std::ffi::{c_void, CString};
use std::marker::PhantomData;

use attnforge_codegen::kernels::{generate, symbol, KernelSpec};
use attnforge_codegen::pod::Pod;
use attnforge_codegen::{AttentionSpec, HipKernels, KvLayoutSpec};

use super::result::{check, HipStatus};
use super::{rtc, sys, HipDevice, HipError};
use crate::arena::Arena;
use crate::cache::CacheError;
use crate::launch::Element;
use crate::plan::{plan_decode, KvScales, Params};
use crate::table::PageTable;
use crate::RuntimeError;

fn hip(call: &'static str) -> impl Fn(HipStatus) -> HipError {
    move |s| HipError::Hip {
        call,
        status: s.to_string(),
    }
}

/// The K and V scale buffers of an fp8 cache, in parameter order.
fn scale_buffers(scales: Option<KvScales<'_>>) -> Result<Vec<DeviceBuffer<f32>>, HipError> {
    scales
        .into_iter()
        .flat_map(|s| [s.k, s.v])
        .map(DeviceBuffer::from_host)
        .collect()
}

/// Device memory holding `len` elements of `T`, freed on drop.
pub struct DeviceBuffer<T> {
    ptr: *mut c_void,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Pod> DeviceBuffer<T> {
    /// Copies `host` to a new device allocation.
    pub fn from_host(host: &[T]) -> Result<DeviceBuffer<T>, HipError> {
        let bytes = std::mem::size_of_val(host);
        let mut ptr = std::ptr::null_mut();
        // SAFETY: `ptr` is a valid out-pointer; hipMalloc of 0 bytes is allowed.
        check(unsafe { sys::hipMalloc(&mut ptr, bytes.max(1)) }).map_err(hip("hipMalloc"))?;
        let buf = DeviceBuffer {
            ptr,
            len: host.len(),
            _t: PhantomData,
        };
        // SAFETY: the allocation holds `bytes` bytes; `host` is readable for as many.
        check(unsafe { sys::hipMemcpyHtoD(buf.ptr, host.as_ptr() as *mut c_void, bytes) })
            .map_err(hip("hipMemcpyHtoD"))?;
        Ok(buf)
    }

    /// Copies the buffer back into `host` (of the same length).
    pub fn to_host(&self, host: &mut [T]) -> Result<(), HipError> {
        if host.len() != self.len {
            return Err(HipError::Hip {
                call: "DeviceBuffer::to_host",
                status: format!(
                    "{} elements on the device, {} on the host",
                    self.len,
                    host.len()
                ),
            });
        }
        // SAFETY: both sides hold `len` elements of T.
        check(unsafe {
            sys::hipMemcpyDtoH(
                host.as_mut_ptr().cast(),
                self.ptr,
                std::mem::size_of_val(host),
            )
        })
        .map_err(hip("hipMemcpyDtoH"))
    }
}

// SAFETY: a device allocation is not tied to the thread that made it (HIP
// is thread-safe); the buffer owns it and frees it once, on drop.
unsafe impl<T: Send> Send for DeviceBuffer<T> {}

impl<T> Drop for DeviceBuffer<T> {
    fn drop(&mut self) {
        // SAFETY: allocated by hipMalloc in from_host, freed once here.
        unsafe { sys::hipFree(self.ptr) };
    }
}

/// One kernel argument for [`HipDevice`]'s launches.
enum KernelArg {
    /// A device pointer.
    Ptr(*mut c_void),
    /// An `i32` scalar.
    I32(i32),
}

/// A loaded code object, unloaded on drop.
pub struct Module(sys::hipModule_t);

impl Module {
    /// Loads a code object (an AMDGPU ELF or a clang offload bundle).
    pub fn load(bytes: &[u8]) -> Result<Module, HipError> {
        let mut m = std::ptr::null_mut();
        // SAFETY: `bytes` is a complete code object that outlives the call.
        check(unsafe { sys::hipModuleLoadData(&mut m, bytes.as_ptr().cast()) })
            .map_err(hip("hipModuleLoadData"))?;
        Ok(Module(m))
    }

    /// Launches kernel `symbol` with raw argument pointers, then waits.
    ///
    /// # Safety
    /// `args` must point to values matching the kernel's parameters, and
    /// every access the kernel makes with them must be in bounds.
    pub unsafe fn launch(
        &self,
        symbol: &str,
        grid: [u32; 3],
        block: u32,
        args: &mut [*mut c_void],
    ) -> Result<(), HipError> {
        let name = CString::new(symbol)
            .map_err(|_| HipError::NoCodeObject(format!("symbol {symbol:?}")))?;
        let mut f = std::ptr::null_mut();
        // SAFETY: valid module and C string.
        check(unsafe { sys::hipModuleGetFunction(&mut f, self.0, name.as_ptr()) })
            .map_err(hip("hipModuleGetFunction"))?;
        // SAFETY: the caller vouches for the arguments (see above).
        check(unsafe {
            sys::hipModuleLaunchKernel(
                f,
                grid[0],
                grid[1],
                grid[2],
                block,
                1,
                1,
                0,
                std::ptr::null_mut(),
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        })
        .map_err(hip("hipModuleLaunchKernel"))?;
        // SAFETY: no arguments.
        check(unsafe { sys::hipDeviceSynchronize() }).map_err(hip("hipDeviceSynchronize"))
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        // SAFETY: loaded in `load`, unloaded once here.
        unsafe { sys::hipModuleUnload(self.0) };
    }
}

impl HipDevice {
    /// Makes this device the calling thread's current one (allocations,
    /// copies and launches go to the current device).
    pub fn make_current(&self) -> Result<(), HipError> {
        // SAFETY: a plain call with a device ordinal checked in `new`.
        check(unsafe { sys::hipSetDevice(self.ordinal()) }).map_err(hip("hipSetDevice"))
    }

    /// The code object of a kernel for this device: from the build-time
    /// registry when it has one, else generated and compiled with hiprtc
    /// (cached on disk).
    pub fn code_object(
        &self,
        spec: &KernelSpec,
        registry: Option<&HipKernels>,
    ) -> Result<Vec<u8>, HipError> {
        if let Some(Ok(o)) = registry.map(|r| r.find(spec.kind(), self.arch)) {
            return Ok(o.bytes.to_vec());
        }
        let k = generate(spec, self.arch.target())
            .map_err(|e| HipError::NoCodeObject(e.to_string()))?;
        Ok(rtc::compile_cached(&k.to_string(), self.arch, &rtc::default_cache_dir())?.0)
    }

    /// Loads `spec`'s kernel and launches it with `args` (device pointers and
    /// scalars, in the kernel's parameter order), then waits.
    ///
    /// # Safety
    /// `args` must match the kernel's parameters, and every access the
    /// kernel makes with them on `grid` must be in bounds.
    unsafe fn run(
        &self,
        spec: &KernelSpec,
        registry: Option<&HipKernels>,
        grid: [u32; 3],
        mut args: Vec<KernelArg>,
    ) -> Result<(), RuntimeError> {
        // The caller (a launch core) made this device current.
        let module = Module::load(&self.code_object(spec, registry)?)?;
        let block = generate(spec, self.arch.target())?.block_dim();
        let mut ptrs: Vec<*mut c_void> = args
            .iter_mut()
            .map(|a| match a {
                KernelArg::Ptr(p) => (p as *mut *mut c_void).cast(),
                KernelArg::I32(v) => (v as *mut i32).cast(),
            })
            .collect();
        // SAFETY: the caller vouches for the arguments and the grid.
        unsafe { module.launch(&symbol(spec), grid, block, &mut ptrs)? };
        Ok(())
    }

    /// Decode attention on the GPU, with the same arguments and the same
    /// validation as [`crate::cpu::CpuDevice::decode`].
    #[allow(clippy::too_many_arguments)]
    pub fn decode<Q: Element, T: Element>(
        &self,
        spec: &AttentionSpec,
        registry: Option<&HipKernels>,
        q: &[Q],
        k: &[T],
        v: &[T],
        table: &PageTable,
        out: &mut [Q],
    ) -> Result<(), RuntimeError> {
        self.decode_ext(spec, registry, &Params::default(), q, k, v, table, out)
    }

    /// Decode with the variants' launch parameters and a split policy, as
    /// [`crate::cpu::CpuDevice::decode_ext`]; the planner counts the
    /// device's compute units.
    #[allow(clippy::too_many_arguments)]
    pub fn decode_ext<Q: Element, T: Element>(
        &self,
        spec: &AttentionSpec,
        registry: Option<&HipKernels>,
        params: &Params<'_>,
        q: &[Q],
        k: &[T],
        v: &[T],
        table: &PageTable,
        out: &mut [Q],
    ) -> Result<(), RuntimeError> {
        crate::launch::validate_decode::<Q, T>(spec, q, (k.len(), v.len()), table, out)?;
        self.make_current()?;
        let (dk, dv) = (DeviceBuffer::from_host(k)?, DeviceBuffer::from_host(v)?);
        self.decode_core(spec, registry, params, q, dk.kv(&dv), table, out)
    }

    /// Decode over a layer of a resident arena ([`HipArena::layer`]): only
    /// the queries, the table and the output move.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn decode_resident<Q: Element, T: Element>(
        &self,
        spec: &AttentionSpec,
        registry: Option<&HipKernels>,
        params: &Params<'_>,
        q: &[Q],
        kv: DeviceKv<T>,
        table: &PageTable,
        out: &mut [Q],
    ) -> Result<(), RuntimeError> {
        crate::launch::validate_decode::<Q, T>(spec, q, (kv.len, kv.len), table, out)?;
        self.decode_core(spec, registry, params, q, kv, table, out)
    }

    /// Decode once validated, over K/V already in device memory.
    #[allow(clippy::too_many_arguments)]
    fn decode_core<Q: Element, T: Element>(
        &self,
        spec: &AttentionSpec,
        registry: Option<&HipKernels>,
        params: &Params<'_>,
        q: &[Q],
        kv: DeviceKv<T>,
        table: &PageTable,
        out: &mut [Q],
    ) -> Result<(), RuntimeError> {
        self.make_current()?;
        params.validate(spec)?;
        let batch = table.batch();
        if batch == 0 {
            return Ok(());
        }
        let lens = (0..batch).map(|b| table.seq_len(b, spec.kv.page_size));
        let plan = plan_decode(spec, lens, params.split, self.compute_units())?;
        let dq = DeviceBuffer::from_host(q)?;
        let di = DeviceBuffer::from_host(&table.indptr)?;
        let dx = DeviceBuffer::from_host(&table.indices)?;
        let dl = DeviceBuffer::from_host(&table.last_page_len)?;
        let sinks = params.sinks.map(DeviceBuffer::from_host).transpose()?;
        let slopes = params
            .alibi_slopes
            .map(DeviceBuffer::from_host)
            .transpose()?;
        let scales = scale_buffers(params.kv_scales)?;
        let dout = DeviceBuffer::from_host(out)?;
        let mut args: Vec<KernelArg> = [dq.ptr, kv.k, kv.v, di.ptr, dx.ptr, dl.ptr]
            .into_iter()
            .map(KernelArg::Ptr)
            .collect();
        if !plan.split {
            args.extend(sinks.iter().map(|b| KernelArg::Ptr(b.ptr)));
            args.extend(slopes.iter().map(|b| KernelArg::Ptr(b.ptr)));
            args.extend(scales.iter().map(|b| KernelArg::Ptr(b.ptr)));
            args.push(KernelArg::Ptr(dout.ptr));
            let ks = KernelSpec::Decode(*spec);
            // SAFETY: validated as on the CPU device: the table lies within
            // the arenas, q/out have the batch's shape, the variant buffers
            // one value per query head; the arguments are in parameter order.
            unsafe { self.run(&ks, registry, ks.grid(batch as u32, 1), args)? };
        } else {
            let rows = batch * spec.q_heads as usize * plan.splits as usize;
            let part_out = DeviceBuffer::from_host(&vec![0f32; rows * spec.kv.head_dim as usize])?;
            let part_ml = DeviceBuffer::from_host(&vec![0f32; rows * 2])?;
            args.extend(slopes.iter().map(|b| KernelArg::Ptr(b.ptr)));
            args.extend(scales.iter().map(|b| KernelArg::Ptr(b.ptr)));
            args.extend([
                KernelArg::Ptr(part_out.ptr),
                KernelArg::Ptr(part_ml.ptr),
                KernelArg::I32(plan.chunk_tokens as i32),
            ]);
            let ks = KernelSpec::DecodeSplit(*spec);
            // SAFETY: as above; the partials hold batch · q_heads · splits
            // rows and splits · chunk_tokens covers every visible token.
            unsafe { self.run(&ks, registry, ks.grid(batch as u32, plan.splits), args)? };
            let mut margs = vec![KernelArg::Ptr(part_out.ptr), KernelArg::Ptr(part_ml.ptr)];
            margs.extend(sinks.iter().map(|b| KernelArg::Ptr(b.ptr)));
            margs.extend([KernelArg::Ptr(dout.ptr), KernelArg::I32(plan.splits as i32)]);
            let ms = KernelSpec::DecodeMerge(*spec);
            // SAFETY: the partials and out have the shapes the merge reads.
            unsafe { self.run(&ms, registry, ms.grid(batch as u32, 1), margs)? };
        }
        dout.to_host(out)?;
        Ok(())
    }

    /// Prefill attention on the GPU, with the same arguments and the same
    /// validation as [`crate::cpu::CpuDevice::prefill`].
    #[allow(clippy::too_many_arguments)]
    pub fn prefill<Q: Element, T: Element>(
        &self,
        spec: &AttentionSpec,
        registry: Option<&HipKernels>,
        params: &Params<'_>,
        q: &[Q],
        qo_indptr: &[i32],
        k: &[T],
        v: &[T],
        table: &PageTable,
        out: &mut [Q],
    ) -> Result<(), RuntimeError> {
        let tiles = crate::launch::validate_prefill::<Q, T>(
            spec,
            params,
            q,
            qo_indptr,
            (k.len(), v.len()),
            table,
            out,
        )?;
        self.make_current()?;
        let (dk, dv) = (DeviceBuffer::from_host(k)?, DeviceBuffer::from_host(v)?);
        let kv = dk.kv(&dv);
        self.prefill_core(spec, registry, params, q, qo_indptr, kv, table, out, tiles)
    }

    /// Prefill over a layer of a resident arena ([`HipArena::layer`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn prefill_resident<Q: Element, T: Element>(
        &self,
        spec: &AttentionSpec,
        registry: Option<&HipKernels>,
        params: &Params<'_>,
        q: &[Q],
        qo_indptr: &[i32],
        kv: DeviceKv<T>,
        table: &PageTable,
        out: &mut [Q],
    ) -> Result<(), RuntimeError> {
        let tiles = crate::launch::validate_prefill::<Q, T>(
            spec,
            params,
            q,
            qo_indptr,
            (kv.len, kv.len),
            table,
            out,
        )?;
        self.prefill_core(spec, registry, params, q, qo_indptr, kv, table, out, tiles)
    }

    /// Prefill once validated, over K/V already in device memory.
    #[allow(clippy::too_many_arguments)]
    fn prefill_core<Q: Element, T: Element>(
        &self,
        spec: &AttentionSpec,
        registry: Option<&HipKernels>,
        params: &Params<'_>,
        q: &[Q],
        qo_indptr: &[i32],
        kv: DeviceKv<T>,
        table: &PageTable,
        out: &mut [Q],
        tiles: u32,
    ) -> Result<(), RuntimeError> {
        self.make_current()?;
        let batch = table.batch();
        if batch == 0 || tiles == 0 {
            return Ok(());
        }
        let dq = DeviceBuffer::from_host(q)?;
        let dqo = DeviceBuffer::from_host(qo_indptr)?;
        let di = DeviceBuffer::from_host(&table.indptr)?;
        let dx = DeviceBuffer::from_host(&table.indices)?;
        let dl = DeviceBuffer::from_host(&table.last_page_len)?;
        let sinks = params.sinks.map(DeviceBuffer::from_host).transpose()?;
        let slopes = params
            .alibi_slopes
            .map(DeviceBuffer::from_host)
            .transpose()?;
        let scales = scale_buffers(params.kv_scales)?;
        let dout = DeviceBuffer::from_host(out)?;
        let mut args: Vec<KernelArg> = [dq.ptr, kv.k, kv.v, dqo.ptr, di.ptr, dx.ptr, dl.ptr]
            .into_iter()
            .map(KernelArg::Ptr)
            .collect();
        args.extend(sinks.iter().map(|b| KernelArg::Ptr(b.ptr)));
        args.extend(slopes.iter().map(|b| KernelArg::Ptr(b.ptr)));
        args.extend(scales.iter().map(|b| KernelArg::Ptr(b.ptr)));
        args.push(KernelArg::Ptr(dout.ptr));
        let ks = KernelSpec::Prefill(*spec);
        // SAFETY: validated as on the CPU device (table, qo_indptr against
        // q/out and the KV lengths, variant buffers); the grid covers the
        // longest sequence's query tiles.
        unsafe { self.run(&ks, registry, ks.grid(batch as u32, tiles), args)? };
        dout.to_host(out)?;
        Ok(())
    }

    /// KV append on the GPU, with the same arguments and the same validation
    /// as [`crate::cpu::CpuDevice::append`]. The arenas are copied to the
    /// device and back (a device-resident arena is future work).
    #[allow(clippy::too_many_arguments)]
    pub fn append<T: Element>(
        &self,
        layout: &KvLayoutSpec,
        registry: Option<&HipKernels>,
        k_new: &[T],
        v_new: &[T],
        slots: &[i64],
        k: &mut [T],
        v: &mut [T],
    ) -> Result<(), RuntimeError> {
        self.append_ext(layout, registry, None, k_new, v_new, slots, k, v)
    }

    /// KV append with its own source dtype and an fp8 cache's scales, as
    /// [`crate::cpu::CpuDevice::append_ext`].
    #[allow(clippy::too_many_arguments)]
    pub fn append_ext<S: Element, T: Element>(
        &self,
        layout: &KvLayoutSpec,
        registry: Option<&HipKernels>,
        scales: Option<KvScales<'_>>,
        k_new: &[S],
        v_new: &[S],
        slots: &[i64],
        k: &mut [T],
        v: &mut [T],
    ) -> Result<(), RuntimeError> {
        let tokens = crate::launch::validate_append::<S, T>(
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
        self.make_current()?;
        let (dk, dv) = (DeviceBuffer::from_host(k)?, DeviceBuffer::from_host(v)?);
        self.append_core(
            layout,
            registry,
            scales,
            k_new,
            v_new,
            slots,
            dk.kv(&dv),
            tokens,
        )?;
        dk.to_host(k)?;
        dv.to_host(v)?;
        Ok(())
    }

    /// Append into a layer of a resident arena ([`HipArena::layer`]), in
    /// place.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn append_resident<S: Element, T: Element>(
        &self,
        layout: &KvLayoutSpec,
        registry: Option<&HipKernels>,
        scales: Option<KvScales<'_>>,
        k_new: &[S],
        v_new: &[S],
        slots: &[i64],
        kv: DeviceKv<T>,
    ) -> Result<(), RuntimeError> {
        let tokens = crate::launch::validate_append::<S, T>(
            layout,
            scales.as_ref(),
            k_new,
            v_new,
            slots,
            (kv.len, kv.len),
        )?;
        if tokens == 0 {
            return Ok(());
        }
        self.append_core(layout, registry, scales, k_new, v_new, slots, kv, tokens)
    }

    /// Append once validated, into K/V already in device memory.
    #[allow(clippy::too_many_arguments)]
    fn append_core<S: Element, T: Element>(
        &self,
        layout: &KvLayoutSpec,
        registry: Option<&HipKernels>,
        scales: Option<KvScales<'_>>,
        k_new: &[S],
        v_new: &[S],
        slots: &[i64],
        kv: DeviceKv<T>,
        tokens: u32,
    ) -> Result<(), RuntimeError> {
        self.make_current()?;
        let ks = KernelSpec::Append(*layout);
        let module = Module::load(&self.code_object(&ks, registry)?)?;
        let block = generate(&ks, self.arch.target())?.block_dim();
        let (dkn, dvn) = (
            DeviceBuffer::from_host(k_new)?,
            DeviceBuffer::from_host(v_new)?,
        );
        let ds = DeviceBuffer::from_host(slots)?;
        let dsc = scale_buffers(scales)?;
        let mut ptrs: Vec<*mut c_void> = [dkn.ptr, dvn.ptr, ds.ptr, kv.k, kv.v]
            .into_iter()
            .chain(dsc.iter().map(|b| b.ptr))
            .collect();
        let mut args: Vec<*mut c_void> = ptrs
            .iter_mut()
            .map(|p| (p as *mut *mut c_void).cast())
            .collect();
        // SAFETY: every slot was validated against the arenas and the new rows
        // have the tokens' shape; the pointers are the append kernel's
        // parameters in order.
        unsafe {
            module.launch(
                &attnforge_codegen::kernels::symbol(&ks),
                ks.grid(tokens, 1),
                block,
                &mut args,
            )?
        };
        Ok(())
    }
}

/// One layer of K and V in device memory: the two base pointers and the
/// elements each holds (what launches validate page tables against).
#[derive(Debug)]
pub struct DeviceKv<T> {
    k: *mut c_void,
    v: *mut c_void,
    len: usize,
    _t: PhantomData<T>,
}

impl<T> Clone for DeviceKv<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for DeviceKv<T> {}

impl<T: Pod> DeviceBuffer<T> {
    /// A zeroed device allocation of `len` elements.
    pub fn zeroed(len: usize) -> Result<DeviceBuffer<T>, HipError> {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| HipError::Hip {
                call: "hipMalloc",
                status: format!("{len} elements overflow usize bytes"),
            })?;
        let mut ptr = std::ptr::null_mut();
        // SAFETY: `ptr` is a valid out-pointer.
        check(unsafe { sys::hipMalloc(&mut ptr, bytes.max(1)) }).map_err(hip("hipMalloc"))?;
        let buf = DeviceBuffer {
            ptr,
            len,
            _t: PhantomData,
        };
        // SAFETY: the allocation holds `bytes` bytes.
        check(unsafe { sys::hipMemset(buf.ptr, 0, bytes) }).map_err(hip("hipMemset"))?;
        Ok(buf)
    }

    /// This buffer as K and `v` as V, whole.
    fn kv(&self, v: &DeviceBuffer<T>) -> DeviceKv<T> {
        DeviceKv {
            k: self.ptr,
            v: v.ptr,
            len: self.len.min(v.len),
            _t: PhantomData,
        }
    }

    /// A pointer `elems` elements into the buffer (`elems` ≤ len).
    fn offset(&self, elems: usize) -> *mut c_void {
        debug_assert!(elems <= self.len);
        // SAFETY: within the allocation (callers check `elems` ≤ len).
        unsafe { self.ptr.cast::<u8>().add(elems * std::mem::size_of::<T>()) }.cast()
    }
}

/// A [`crate::KvCache`]'s K and V in GPU memory: launches through the
/// cache read and write them in place (see [`crate::device::Device`]).
pub struct HipArena<T> {
    k: DeviceBuffer<T>,
    v: DeviceBuffer<T>,
}

impl<T> std::fmt::Debug for HipArena<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HipArena")
            .field("elems", &self.k.len)
            .finish()
    }
}

impl<T: Pod> HipArena<T> {
    /// Two zeroed arenas of `len` elements each on the current device.
    pub fn zeroed(len: usize) -> Result<HipArena<T>, HipError> {
        Ok(HipArena {
            k: DeviceBuffer::zeroed(len)?,
            v: DeviceBuffer::zeroed(len)?,
        })
    }

    /// Elements `range` of K and V, for a launch.
    pub(crate) fn layer(&self, range: std::ops::Range<usize>) -> Result<DeviceKv<T>, CacheError> {
        if range.start > range.end || range.end > self.k.len {
            return Err(CacheError::Arena(format!(
                "elements {range:?} of an arena of {}",
                self.k.len
            )));
        }
        Ok(DeviceKv {
            k: self.k.offset(range.start),
            v: self.v.offset(range.start),
            len: range.len(),
            _t: PhantomData,
        })
    }
}

impl<T: Pod> Arena<T> for HipArena<T> {
    fn len(&self) -> usize {
        self.k.len
    }

    fn copy_within(&mut self, src: usize, dst: usize, n: usize) -> Result<(), String> {
        if src
            .max(dst)
            .checked_add(n)
            .is_none_or(|end| end > self.k.len)
        {
            return Err(format!(
                "copy of {n} elements from {src} to {dst} past {}",
                self.k.len
            ));
        }
        let bytes = n * std::mem::size_of::<T>();
        for b in [&self.k, &self.v] {
            // SAFETY: both ranges lie within the allocation (checked above)
            // and are whole, distinct pages.
            check(unsafe { sys::hipMemcpyDtoD(b.offset(dst), b.offset(src), bytes) })
                .map_err(|s| format!("hipMemcpyDtoD: {s}"))?;
        }
        Ok(())
    }

    fn to_host(&self, range: std::ops::Range<usize>) -> Result<(Vec<T>, Vec<T>), String> {
        let kv = self.layer(range.clone()).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for p in [kv.k, kv.v] {
            let mut host: Vec<T> = Vec::with_capacity(range.len());
            // SAFETY: `p` has `range.len()` elements of T (checked by
            // `layer`); the host vector's capacity holds as many, and every
            // bit pattern is a valid T (Pod).
            unsafe {
                check(sys::hipMemcpyDtoH(
                    host.as_mut_ptr().cast(),
                    p,
                    range.len() * std::mem::size_of::<T>(),
                ))
                .map_err(|s| format!("hipMemcpyDtoH: {s}"))?;
                host.set_len(range.len());
            }
            out.push(host);
        }
        let v = out.pop().unwrap_or_default();
        let k = out.pop().unwrap_or_default();
        Ok((k, v))
    }
}
