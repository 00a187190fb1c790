//! Owning device types and kernel launches.

use std::ffi::{c_void, CString};
use std::marker::PhantomData;

use attnforge_codegen::cpu::Pod;
use attnforge_codegen::kernels::{generate, symbol, KernelSpec};
use attnforge_codegen::{AttentionSpec, HipKernels, KvLayoutSpec};

use super::result::{check, HipStatus};
use super::{rtc, sys, HipDevice, HipError};
use crate::cpu::Element;
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
        crate::cpu::validate_decode(spec, q, k, v, table, out)?;
        params.validate(spec)?;
        let batch = table.batch();
        if batch == 0 {
            return Ok(());
        }
        let lens = (0..batch).map(|b| table.seq_len(b, spec.kv.page_size));
        let plan = plan_decode(spec, lens, params.split, self.compute_units())?;
        let (dq, dk, dv) = (
            DeviceBuffer::from_host(q)?,
            DeviceBuffer::from_host(k)?,
            DeviceBuffer::from_host(v)?,
        );
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
        let mut args: Vec<KernelArg> = [&dq.ptr, &dk.ptr, &dv.ptr, &di.ptr, &dx.ptr, &dl.ptr]
            .into_iter()
            .map(|p| KernelArg::Ptr(*p))
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
        let tiles = crate::cpu::validate_prefill(spec, params, q, qo_indptr, k, v, table, out)?;
        let batch = table.batch();
        if batch == 0 || tiles == 0 {
            return Ok(());
        }
        let (dq, dk, dv) = (
            DeviceBuffer::from_host(q)?,
            DeviceBuffer::from_host(k)?,
            DeviceBuffer::from_host(v)?,
        );
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
        let mut args: Vec<KernelArg> = [dq.ptr, dk.ptr, dv.ptr, dqo.ptr, di.ptr, dx.ptr, dl.ptr]
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
        let tokens =
            crate::cpu::validate_append(layout, scales.as_ref(), k_new, v_new, slots, k, v)?;
        if tokens == 0 {
            return Ok(());
        }
        let ks = KernelSpec::Append(*layout);
        let module = Module::load(&self.code_object(&ks, registry)?)?;
        let block = generate(&ks, self.arch.target())?.block_dim();
        let (dkn, dvn) = (
            DeviceBuffer::from_host(k_new)?,
            DeviceBuffer::from_host(v_new)?,
        );
        let ds = DeviceBuffer::from_host(slots)?;
        let (dk, dv) = (DeviceBuffer::from_host(k)?, DeviceBuffer::from_host(v)?);
        let dsc = scale_buffers(scales)?;
        let mut ptrs: Vec<*mut c_void> = [dkn.ptr, dvn.ptr, ds.ptr, dk.ptr, dv.ptr]
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
        dk.to_host(k)?;
        dv.to_host(v)?;
        Ok(())
    }
}
