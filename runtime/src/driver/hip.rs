//! The HIP driver: the seam's operations on hip-sys, for one device.
//!
//! This thin FFI layer is the only part of the launch path that does not
//! run here: the CPU driver runs everything above it. **No call below has
//! run on a GPU yet.**

use std::ffi::{c_void, CString};

use attnforge_codegen::kernels::{generate_path, path_symbol, KernelPath, KernelSpec};
use attnforge_codegen::{CodeObjects, Target};

use super::{DevicePtr, Driver, DriverError, KernelArg, MAX_ARGS};
use crate::hip::result::{check, HipStatus};
use crate::hip::{rtc, sys, HipDevice, HipError};

fn call(name: &'static str) -> impl Fn(HipStatus) -> DriverError {
    move |s| DriverError::Call {
        call: name,
        message: s.to_string(),
    }
}

/// A HIP stream handle.
pub struct HipStream(sys::hipStream_t);
// SAFETY: HIP streams may be used from any thread of the process.
unsafe impl Send for HipStream {}
// SAFETY: as above; HIP serializes calls on one stream internally.
unsafe impl Sync for HipStream {}

/// A loaded code object and its kernel, resolved once.
pub struct HipFunction {
    module: sys::hipModule_t,
    f: sys::hipFunction_t,
}
// SAFETY: module and function handles are process-wide in HIP.
unsafe impl Send for HipFunction {}
// SAFETY: as above; launching reads the handle only.
unsafe impl Sync for HipFunction {}

impl Drop for HipFunction {
    fn drop(&mut self) {
        // SAFETY: loaded in `load`, unloaded once; the launch layer keeps a
        // function as long as the `Gpu` that loaded it.
        unsafe { sys::hipModuleUnload(self.module) };
    }
}

/// The driver over one HIP device, with the build-time registry's code
/// objects where it has them (hiprtc, cached on disk, for the rest).
pub struct HipDriver {
    device: HipDevice,
    registry: Option<&'static CodeObjects>,
}

impl HipDriver {
    /// Opens device `ordinal` (see [`HipDevice::new`]).
    pub fn new(
        ordinal: i32,
        registry: Option<&'static CodeObjects>,
    ) -> Result<HipDriver, HipError> {
        Ok(HipDriver {
            device: HipDevice::new(ordinal)?,
            registry,
        })
    }

    /// The device.
    pub fn device(&self) -> &HipDevice {
        &self.device
    }

    /// Work on the null stream goes to the thread's current device: make
    /// it this one (a created stream belongs to its device already).
    fn on_device(&self, s: &HipStream) -> Result<(), DriverError> {
        if s.0.is_null() {
            self.current()?;
        }
        Ok(())
    }

    fn current(&self) -> Result<(), DriverError> {
        // SAFETY: a plain call with an ordinal checked in `HipDevice::new`.
        check(unsafe { sys::hipSetDevice(self.device.ordinal()) }).map_err(call("hipSetDevice"))
    }
}

impl Driver for HipDriver {
    type Stream = HipStream;
    type Function = HipFunction;

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
        let mut p = std::ptr::null_mut();
        // SAFETY: `p` is a valid out-pointer.
        check(unsafe { sys::hipMalloc(&mut p, bytes.max(1)) }).map_err(call("hipMalloc"))?;
        Ok(DevicePtr(p as u64))
    }

    unsafe fn free(&self, ptr: DevicePtr) {
        // SAFETY: the caller's promise (allocated here, unused, freed once).
        unsafe { sys::hipFree(ptr.0 as *mut c_void) };
    }

    fn create_stream(&self) -> Result<HipStream, DriverError> {
        self.current()?;
        let mut s = std::ptr::null_mut();
        // SAFETY: `s` is a valid out-pointer.
        check(unsafe { sys::hipStreamCreate(&mut s) }).map_err(call("hipStreamCreate"))?;
        Ok(HipStream(s))
    }

    fn default_stream(&self) -> HipStream {
        HipStream(std::ptr::null_mut())
    }

    unsafe fn destroy_stream(&self, stream: &HipStream) {
        // SAFETY: the caller's promise (synchronized, not used again).
        unsafe { sys::hipStreamDestroy(stream.0) };
    }

    fn synchronize(&self, stream: &HipStream) -> Result<(), DriverError> {
        self.on_device(stream)?;
        // SAFETY: a live stream handle (or the null stream).
        check(unsafe { sys::hipStreamSynchronize(stream.0) }).map_err(call("hipStreamSynchronize"))
    }

    unsafe fn upload(&self, s: &HipStream, dst: DevicePtr, src: &[u8]) -> Result<(), DriverError> {
        self.on_device(s)?;
        // SAFETY: the caller's promise; pageable memory is staged before
        // the call returns, so `src` may be reused at once.
        check(unsafe {
            sys::hipMemcpyHtoDAsync(
                dst.0 as *mut c_void,
                src.as_ptr() as *mut c_void,
                src.len(),
                s.0,
            )
        })
        .map_err(call("hipMemcpyHtoDAsync"))
    }

    unsafe fn download(
        &self,
        s: &HipStream,
        src: DevicePtr,
        dst: *mut u8,
        len: usize,
    ) -> Result<(), DriverError> {
        self.on_device(s)?;
        // SAFETY: the caller's promise (`dst` valid until synchronized).
        check(unsafe { sys::hipMemcpyDtoHAsync(dst.cast(), src.0 as *mut c_void, len, s.0) })
            .map_err(call("hipMemcpyDtoHAsync"))
    }

    unsafe fn copy(
        &self,
        s: &HipStream,
        dst: DevicePtr,
        src: DevicePtr,
        bytes: usize,
    ) -> Result<(), DriverError> {
        self.on_device(s)?;
        // SAFETY: the caller's promise (both ranges live).
        check(unsafe {
            sys::hipMemcpyDtoDAsync(dst.0 as *mut c_void, src.0 as *mut c_void, bytes, s.0)
        })
        .map_err(call("hipMemcpyDtoDAsync"))
    }

    unsafe fn zero(&self, s: &HipStream, dst: DevicePtr, bytes: usize) -> Result<(), DriverError> {
        self.on_device(s)?;
        // SAFETY: the caller's promise (the range is live).
        check(unsafe { sys::hipMemsetD8Async(dst.0 as *mut c_void, 0, bytes, s.0) })
            .map_err(call("hipMemsetD8Async"))
    }

    fn load(&self, spec: &KernelSpec, path: KernelPath) -> Result<HipFunction, DriverError> {
        self.current()?;
        let arch = self.device.arch();
        let name = path_symbol(spec, arch.target(), path);
        let no_code = |message: String| DriverError::NoCode {
            symbol: name.clone(),
            message,
        };
        // The registry's object of this kind is the item's own spec's: use
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
        let mut module = std::ptr::null_mut();
        // SAFETY: `bytes` is a complete code object that outlives the call.
        check(unsafe { sys::hipModuleLoadData(&mut module, bytes.as_ptr().cast()) })
            .map_err(call("hipModuleLoadData"))?;
        let c = CString::new(name.clone()).map_err(|_| no_code("a NUL in the symbol".into()))?;
        let mut f = std::ptr::null_mut();
        // SAFETY: a loaded module and a C string.
        let r = check(unsafe { sys::hipModuleGetFunction(&mut f, module, c.as_ptr()) });
        if let Err(s) = r {
            // SAFETY: loaded above, not used again.
            unsafe { sys::hipModuleUnload(module) };
            return Err(call("hipModuleGetFunction")(s));
        }
        Ok(HipFunction { module, f })
    }

    unsafe fn launch(
        &self,
        s: &HipStream,
        f: &HipFunction,
        grid: [u32; 3],
        block: u32,
        args: &[KernelArg],
    ) -> Result<(), DriverError> {
        if args.len() > MAX_ARGS {
            return Err(DriverError::Call {
                call: "hipModuleLaunchKernel",
                message: format!("{} arguments: at most {MAX_ARGS}", args.len()),
            });
        }
        self.on_device(s)?;
        // The values, then pointers to them, as hipModuleLaunchKernel takes.
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
            // every HIP target is.
            *p = (&mut values[i] as *mut u64).cast();
        }
        // SAFETY: the caller's promise (arguments in parameter order, in
        // bounds); `ptrs` and `values` outlive the call, which copies them.
        check(unsafe {
            sys::hipModuleLaunchKernel(
                f.f,
                grid[0],
                grid[1],
                grid[2],
                block,
                1,
                1,
                0,
                s.0,
                ptrs.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        })
        .map_err(call("hipModuleLaunchKernel"))
    }
}
