//! The CUDA driver: the seam's operations on the CUDA driver API (cudarc's
//! `sys` and `result` layers), for one device, in its primary context.
//!
//! This thin FFI layer is the only part of the launch path that does not
//! run here: the CPU driver runs everything above it. **No call below has
//! run on a GPU yet.**
//!
//! Two things a host application should know:
//! - **Uploads** are `cuMemcpyHtoDAsync` from the caller's slice. From
//!   pageable memory (ordinary Rust memory) the driver stages the bytes
//!   before the call returns, which is what the seam's `upload` promises.
//!   Page-locked memory (`cuMemHostAlloc`, `cuMemHostRegister`) makes the
//!   copy truly asynchronous: such a buffer must not change until its
//!   stream is synchronized.
//! - **Contexts**: every call makes the device's primary context current on
//!   the calling thread (`cuCtxSetCurrent`) and leaves it so, as the CUDA
//!   runtime does; an application that drives its own contexts on the same
//!   thread makes its own current again afterwards.

use std::ffi::{c_void, CString};

use attnforge_codegen::kernels::{generate_path, path_symbol, KernelPath, KernelSpec};
use attnforge_codegen::{CodeObjects, Target};
use cudarc::driver::{result, sys, DriverError as CuError};

use super::{DevicePtr, Driver, DriverError, KernelArg, MAX_ARGS};
use crate::cuda::{open, rtc, status, CudaDevice, CudaError};

fn call(name: &'static str) -> impl Fn(CuError) -> DriverError {
    move |e| DriverError::Call {
        call: name,
        message: status(e),
    }
}

/// Makes `ctx` the calling thread's current context, unless it is already.
fn bind(ctx: sys::CUcontext) -> Result<(), CuError> {
    if result::ctx::get_current()? != Some(ctx) {
        // SAFETY: `ctx` is a primary context retained by its holder.
        unsafe { result::ctx::set_current(ctx) }?;
    }
    Ok(())
}

/// A CUDA stream handle (null: the context's legacy default stream).
pub struct CudaStream(sys::CUstream);
// SAFETY: CUDA streams may be used from any thread of the process.
unsafe impl Send for CudaStream {}
// SAFETY: as above; the driver serializes calls on one stream internally.
unsafe impl Sync for CudaStream {}

/// A loaded cubin and its kernel, resolved once. It holds its own
/// reference to the primary context, so it may outlive the driver.
pub struct CudaFunction {
    dev: sys::CUdevice,
    ctx: sys::CUcontext,
    module: sys::CUmodule,
    f: sys::CUfunction,
}
// SAFETY: module and function handles are valid in any thread that makes
// their context current, as every use here does.
unsafe impl Send for CudaFunction {}
// SAFETY: as above; launching reads the handle only.
unsafe impl Sync for CudaFunction {}

impl Drop for CudaFunction {
    fn drop(&mut self) {
        if bind(self.ctx).is_ok() {
            // SAFETY: loaded in `load`, unloaded once; the launch layer keeps
            // a function as long as the `Gpu` that loaded it.
            let _ = unsafe { result::module::unload(self.module) };
        }
        // SAFETY: the reference retained in `load`, released once.
        let _ = unsafe { result::primary_ctx::release(self.dev) };
    }
}

/// The driver over one CUDA device, with the build-time registry's cubins
/// where it has them (NVRTC, cached on disk, for the rest).
pub struct CudaDriver {
    device: CudaDevice,
    dev: sys::CUdevice,
    ctx: sys::CUcontext,
    registry: Option<&'static CodeObjects>,
}
// SAFETY: the primary context is process-wide; every call binds it to the
// calling thread first.
unsafe impl Send for CudaDriver {}
// SAFETY: as above; the driver API is thread-safe.
unsafe impl Sync for CudaDriver {}

impl Drop for CudaDriver {
    fn drop(&mut self) {
        // SAFETY: the reference retained in `new`, released once.
        let _ = unsafe { result::primary_ctx::release(self.dev) };
    }
}

impl CudaDriver {
    /// Opens device `ordinal` (see [`CudaDevice::new`]) and retains its
    /// primary context.
    pub fn new(
        ordinal: i32,
        registry: Option<&'static CodeObjects>,
    ) -> Result<CudaDriver, CudaError> {
        let device = CudaDevice::new(ordinal)?;
        let dev = open(ordinal)?;
        // SAFETY: `dev` came from cuDeviceGet.
        let ctx = unsafe { result::primary_ctx::retain(dev) }.map_err(|e| CudaError::Cuda {
            call: "cuDevicePrimaryCtxRetain",
            status: status(e),
        })?;
        Ok(CudaDriver {
            device,
            dev,
            ctx,
            registry,
        })
    }

    /// The device.
    pub fn device(&self) -> &CudaDevice {
        &self.device
    }

    /// Every driver call runs in this device's primary context (the null
    /// stream is the current context's, so it must be this one).
    fn current(&self) -> Result<(), DriverError> {
        bind(self.ctx).map_err(call("cuCtxSetCurrent"))
    }
}

impl Driver for CudaDriver {
    type Stream = CudaStream;
    type Function = CudaFunction;

    fn ordinal(&self) -> u32 {
        self.device.ordinal() as u32
    }

    fn target(&self) -> Target {
        self.device.arch().target()
    }

    fn compute_units(&self) -> u32 {
        self.device.compute_units()
    }

    fn allocate(&self, bytes: usize) -> Result<DevicePtr, DriverError> {
        self.current()?;
        // SAFETY: a plain allocation in the current (this device's) context.
        let p = unsafe { result::malloc_sync(bytes.max(1)) }.map_err(call("cuMemAlloc"))?;
        Ok(DevicePtr(p))
    }

    unsafe fn free(&self, ptr: DevicePtr) {
        if self.current().is_ok() {
            // SAFETY: the caller's promise (allocated here, unused, freed once).
            let _ = unsafe { result::free_sync(ptr.0) };
        }
    }

    fn create_stream(&self) -> Result<CudaStream, DriverError> {
        self.current()?;
        // Blocking with respect to the null stream, as hipStreamCreate's.
        let s = result::stream::create(result::stream::StreamKind::Default)
            .map_err(call("cuStreamCreate"))?;
        Ok(CudaStream(s))
    }

    fn default_stream(&self) -> CudaStream {
        CudaStream(result::stream::null())
    }

    unsafe fn destroy_stream(&self, stream: &CudaStream) {
        if stream.0.is_null() || self.current().is_err() {
            return;
        }
        // SAFETY: the caller's promise (synchronized, not used again).
        let _ = unsafe { result::stream::destroy(stream.0) };
    }

    fn synchronize(&self, stream: &CudaStream) -> Result<(), DriverError> {
        self.current()?;
        // SAFETY: a live stream handle (or the null stream).
        unsafe { result::stream::synchronize(stream.0) }.map_err(call("cuStreamSynchronize"))
    }

    unsafe fn upload(&self, s: &CudaStream, dst: DevicePtr, src: &[u8]) -> Result<(), DriverError> {
        self.current()?;
        // SAFETY: the caller's promise; pageable memory is staged before
        // the call returns, so `src` may be reused at once.
        unsafe { result::memcpy_htod_async(dst.0, src, s.0) }.map_err(call("cuMemcpyHtoDAsync"))
    }

    unsafe fn download(
        &self,
        s: &CudaStream,
        src: DevicePtr,
        dst: *mut u8,
        len: usize,
    ) -> Result<(), DriverError> {
        self.current()?;
        // SAFETY: the caller's promise (`dst` valid for `len` bytes until
        // the stream is synchronized).
        unsafe { sys::cuMemcpyDtoHAsync_v2(dst.cast::<c_void>(), src.0, len, s.0) }
            .result()
            .map_err(call("cuMemcpyDtoHAsync"))
    }

    unsafe fn copy(
        &self,
        s: &CudaStream,
        dst: DevicePtr,
        src: DevicePtr,
        bytes: usize,
    ) -> Result<(), DriverError> {
        self.current()?;
        // SAFETY: the caller's promise (both ranges live).
        unsafe { result::memcpy_dtod_async(dst.0, src.0, bytes, s.0) }
            .map_err(call("cuMemcpyDtoDAsync"))
    }

    unsafe fn zero(&self, s: &CudaStream, dst: DevicePtr, bytes: usize) -> Result<(), DriverError> {
        self.current()?;
        // SAFETY: the caller's promise (the range is live).
        unsafe { result::memset_d8_async(dst.0, 0, bytes, s.0) }.map_err(call("cuMemsetD8Async"))
    }

    fn load(&self, spec: &KernelSpec, path: KernelPath) -> Result<CudaFunction, DriverError> {
        self.current()?;
        let arch = self.device.arch();
        let name = path_symbol(spec, arch.target(), path);
        let no_code = |message: String| DriverError::NoCode {
            symbol: name.clone(),
            message,
        };
        // The registry's cubin of this kind is the item's own spec's: use
        // it only when it is this kernel.
        let bytes = match self.registry.map(|r| r.find(spec.kind(), arch)) {
            Some(Ok(o)) if o.symbol == name => o.bytes.to_vec(),
            _ => {
                let k =
                    generate_path(spec, arch.target(), path).map_err(|e| no_code(e.to_string()))?;
                rtc::compile_cached(&k.to_string(), arch, &rtc::default_cache_dir())
                    .map_err(|e| no_code(e.to_string()))?
                    .0
            }
        };
        let c = CString::new(name.clone()).map_err(|_| no_code("a NUL in the symbol".into()))?;
        // SAFETY: `dev` came from cuDeviceGet; this reference is the
        // function's, released in its Drop.
        let ctx = unsafe { result::primary_ctx::retain(self.dev) }
            .map_err(call("cuDevicePrimaryCtxRetain"))?;
        let release = || {
            // SAFETY: the reference retained above, released once (on failure).
            let _ = unsafe { result::primary_ctx::release(self.dev) };
        };
        // SAFETY: `bytes` is a complete cubin that outlives the call (the
        // driver copies what it keeps).
        let module = match unsafe { result::module::load_data(bytes.as_ptr().cast()) } {
            Ok(m) => m,
            Err(e) => {
                release();
                return Err(call("cuModuleLoadData")(e));
            }
        };
        // SAFETY: a loaded module and a C string.
        match unsafe { result::module::get_function(module, c) } {
            Ok(f) => Ok(CudaFunction {
                dev: self.dev,
                ctx,
                module,
                f,
            }),
            Err(e) => {
                // SAFETY: loaded above, not used again.
                let _ = unsafe { result::module::unload(module) };
                release();
                Err(call("cuModuleGetFunction")(e))
            }
        }
    }

    unsafe fn launch(
        &self,
        s: &CudaStream,
        f: &CudaFunction,
        grid: [u32; 3],
        block: u32,
        args: &[KernelArg],
    ) -> Result<(), DriverError> {
        if args.len() > MAX_ARGS {
            return Err(DriverError::Call {
                call: "cuLaunchKernel",
                message: format!("{} arguments: at most {MAX_ARGS}", args.len()),
            });
        }
        self.current()?;
        // The values, then pointers to them, as cuLaunchKernel takes.
        let mut values = [0u64; MAX_ARGS];
        let n = args.len();
        for (v, a) in values.iter_mut().zip(args) {
            *v = match *a {
                KernelArg::Buffer { ptr, .. } => ptr.0,
                KernelArg::I32(x) => x as u32 as u64,
            };
        }
        let mut ptrs = [std::ptr::null_mut::<c_void>(); MAX_ARGS];
        for (i, p) in ptrs.iter_mut().enumerate().take(n) {
            // An i32 parameter reads the low 4 bytes: little-endian, as
            // every CUDA host is.
            *p = (&mut values[i] as *mut u64).cast();
        }
        // SAFETY: the caller's promise (arguments in parameter order, in
        // bounds); `ptrs` and `values` outlive the call, which copies them.
        unsafe {
            result::launch_kernel(
                f.f,
                (grid[0], grid[1], grid[2]),
                (block, 1, 1),
                0,
                s.0,
                &mut ptrs[..n],
            )
        }
        .map_err(call("cuLaunchKernel"))
    }
}
