//! Owning device types and kernel launches.

use std::ffi::{c_void, CString};
use std::marker::PhantomData;

use attnforge_codegen::cpu::Pod;
use attnforge_codegen::kernels::{generate, KernelSpec};
use attnforge_codegen::{AttentionSpec, HipKernels, KvLayoutSpec};

use super::result::{check, HipStatus};
use super::{rtc, sys, HipDevice, HipError};
use crate::cpu::Element;
use crate::table::PageTable;
use crate::RuntimeError;

fn hip(call: &'static str) -> impl Fn(HipStatus) -> HipError {
    move |s| HipError::Hip {
        call,
        status: s.to_string(),
    }
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
        crate::cpu::validate_decode(spec, q, k, v, table, out)?;
        if table.batch() == 0 {
            return Ok(());
        }
        let ks = KernelSpec::Decode(*spec);
        let module = Module::load(&self.code_object(&ks, registry)?)?;
        let block = generate(&ks, self.arch.target())?.block_dim();
        let (dq, dk, dv) = (
            DeviceBuffer::from_host(q)?,
            DeviceBuffer::from_host(k)?,
            DeviceBuffer::from_host(v)?,
        );
        let di = DeviceBuffer::from_host(&table.indptr)?;
        let dx = DeviceBuffer::from_host(&table.indices)?;
        let dl = DeviceBuffer::from_host(&table.last_page_len)?;
        let dout = DeviceBuffer::from_host(out)?;
        let mut ptrs = [dq.ptr, dk.ptr, dv.ptr, di.ptr, dx.ptr, dl.ptr, dout.ptr];
        let mut args: Vec<*mut c_void> = ptrs
            .iter_mut()
            .map(|p| (p as *mut *mut c_void).cast())
            .collect();
        // SAFETY: the arguments were validated against the spec (page table
        // within the arenas, q/out of the batch's shape) and are the decode
        // kernel's parameters in order.
        unsafe {
            module.launch(
                &attnforge_codegen::kernels::symbol(&ks),
                ks.grid(table.batch() as u32),
                block,
                &mut args,
            )?
        };
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
        let tokens = crate::cpu::validate_append(layout, k_new, v_new, slots, k, v)?;
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
        let mut ptrs = [dkn.ptr, dvn.ptr, ds.ptr, dk.ptr, dv.ptr];
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
                ks.grid(tokens),
                block,
                &mut args,
            )?
        };
        dk.to_host(k)?;
        dv.to_host(v)?;
        Ok(())
    }
}
