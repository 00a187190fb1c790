//! The driver seam: the few device operations the launch path needs
//! (allocate, upload, download, copy, launch a symbol on a stream,
//! synchronize a stream), and nothing else.
//!
//! The launch logic (argument marshalling, grids and blocks, the
//! workspace's layout, the plan's upload, split-K's two launches) is
//! written once, in [`crate::launch`], against [`Driver`]. Three drivers
//! implement it:
//! - [`cpu::CpuDriver`] (feature `cpu`): device memory is host memory
//!   behind fake device addresses, streams are queues executed in order at
//!   `synchronize`, and a launch runs the CPU backend's JIT-compiled kernel
//!   of the same symbol. It counts and records every call, so the exact
//!   sequence of driver calls a GPU serving step makes runs here, against
//!   the reference.
//! - [`hip::HipDriver`] (feature `hip`): the same calls on hip-sys
//!   (`hipMallocAsync`-free: `hipMalloc`, `hipMemcpy*Async`,
//!   `hipModuleLaunchKernel`, `hipStreamSynchronize`). It has not run on
//!   a GPU.
//! - [`cuda::CudaDriver`] (feature `cuda`): the same calls on the CUDA
//!   driver API through cudarc (`cuMemAlloc`, `cuMemcpy*Async`,
//!   `cuLaunchKernel`, `cuStreamSynchronize`), cubins from the registry or
//!   NVRTC. It ran on an NVIDIA H200 (`scripts/gpu-check.sh`, 2026-12-04);
//!   without a GPU only its constructor's "no device" answer and NVRTC's
//!   compilation are tested.
//!
//! Only these two thin FFI layers stay untested without a GPU.

#[cfg(feature = "cpu")]
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "hip")]
pub mod hip;
#[cfg(not(all(feature = "hip", feature = "cuda")))]
#[macro_use]
mod absent;
#[cfg(not(feature = "hip"))]
absent_driver!(hip, HipDriver, HipError, NotCompiledWithHip);
#[cfg(not(feature = "cuda"))]
absent_driver!(cuda, CudaDriver, CudaError, NotCompiledWithCuda);

use attnforge_codegen::kernels::{KernelPath, KernelSpec};
use attnforge_codegen::Target;

/// An address in a device's memory. What it means is the driver's: a GPU
/// virtual address on HIP, an address in the CPU driver's own address
/// space there (never a host pointer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevicePtr(pub u64);

impl DevicePtr {
    /// The address `bytes` further on.
    pub fn offset(self, bytes: usize) -> DevicePtr {
        DevicePtr(self.0 + bytes as u64)
    }
}

/// One kernel argument, in the kernel's parameter order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelArg {
    /// A buffer: its address and the bytes the launch may touch (a GPU
    /// ignores the length; the CPU driver bounds the kernel's accesses
    /// by it, so checked mode catches a kernel reading past its view).
    Buffer {
        /// Where it starts.
        ptr: DevicePtr,
        /// Its length in bytes.
        bytes: usize,
    },
    /// An `i32` scalar.
    I32(i32),
}

/// The most arguments any attnforge kernel takes.
pub const MAX_ARGS: usize = 16;

/// Why a driver call failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The device runtime refused a call.
    #[error("{call} failed: {message}")]
    Call {
        /// The call.
        call: &'static str,
        /// The runtime's own message.
        message: String,
    },
    /// No code for a kernel on this device.
    #[error("no code for kernel `{symbol}`: {message}")]
    NoCode {
        /// The kernel's symbol.
        symbol: String,
        /// Why.
        message: String,
    },
    /// A queued operation failed when the stream ran it (the CPU driver
    /// runs a stream's work at `synchronize`; a GPU reports it there too).
    #[error("queued {op} failed: {message}")]
    Queued {
        /// The operation (`launch <symbol>`, `upload`, ...).
        op: String,
        /// Why.
        message: String,
    },
}

/// The device operations the launch path is written against.
///
/// Every operation that takes a stream is queued on it, in order, and may
/// run after the call returns; nothing but [`Driver::synchronize`] waits
/// for the device. An upload reads its host source before it returns (as
/// HIP and CUDA do for pageable memory), so the source may be reused at
/// once; a download writes its host destination only when the stream
/// reaches it, so the destination must stay alive and untouched until the
/// stream is synchronized.
///
/// Safe code never calls these directly: [`crate::launch`] owns every
/// pointer it passes and keeps each allocation alive until the streams
/// that use it have been synchronized.
pub trait Driver: Send + Sync + 'static {
    /// A stream handle.
    type Stream: Send + Sync;
    /// A kernel resolved once, at load: what a launch needs to start it.
    type Function: Send + Sync;

    /// The device's ordinal (recorded in every object made on it).
    fn ordinal(&self) -> u32;
    /// The target its kernels are generated for.
    fn target(&self) -> Target;
    /// The compute units the split-K planner fills.
    fn compute_units(&self) -> u32;

    /// `bytes` of device memory (at least 1), aligned for any element.
    fn allocate(&self, bytes: usize) -> Result<DevicePtr, DriverError>;
    /// Frees an allocation.
    ///
    /// # Safety
    /// `ptr` came from [`Driver::allocate`] on this driver, is freed once,
    /// and no queued work still uses it.
    unsafe fn free(&self, ptr: DevicePtr);

    /// A new stream.
    fn create_stream(&self) -> Result<Self::Stream, DriverError>;
    /// The device's default (null) stream.
    fn default_stream(&self) -> Self::Stream;
    /// Destroys a stream made by [`Driver::create_stream`].
    ///
    /// # Safety
    /// The stream is synchronized and is not used again.
    unsafe fn destroy_stream(&self, stream: &Self::Stream);
    /// Waits until everything queued on `stream` has run; errors of queued
    /// work surface here.
    fn synchronize(&self, stream: &Self::Stream) -> Result<(), DriverError>;

    /// Queues a copy of `src` to device memory at `dst`.
    ///
    /// # Safety
    /// `dst..dst + src.len()` lies in one live allocation.
    unsafe fn upload(
        &self,
        stream: &Self::Stream,
        dst: DevicePtr,
        src: &[u8],
    ) -> Result<(), DriverError>;
    /// Queues a copy of device memory at `src` into `dst`.
    ///
    /// # Safety
    /// `src..src + len` lies in one live allocation, and `dst` stays valid,
    /// and is neither read nor written, until `stream` is synchronized.
    unsafe fn download(
        &self,
        stream: &Self::Stream,
        src: DevicePtr,
        dst: *mut u8,
        len: usize,
    ) -> Result<(), DriverError>;
    /// Queues a device-to-device copy of `bytes` (the ranges do not overlap).
    ///
    /// # Safety
    /// Both ranges lie in live allocations.
    unsafe fn copy(
        &self,
        stream: &Self::Stream,
        dst: DevicePtr,
        src: DevicePtr,
        bytes: usize,
    ) -> Result<(), DriverError>;
    /// Queues zeroing `bytes` at `dst`.
    ///
    /// # Safety
    /// The range lies in a live allocation.
    unsafe fn zero(
        &self,
        stream: &Self::Stream,
        dst: DevicePtr,
        bytes: usize,
    ) -> Result<(), DriverError>;

    /// Loads `spec`'s kernel by `path` for this device's target and
    /// resolves its symbol (a module load and a function lookup on a GPU).
    fn load(&self, spec: &KernelSpec, path: KernelPath) -> Result<Self::Function, DriverError>;
    /// Queues a launch of `f` over `grid` blocks of `block` threads.
    ///
    /// # Safety
    /// `args` match the kernel's parameters in order, every buffer lies in
    /// a live allocation, and every access the kernel makes with them on
    /// `grid` is in bounds.
    unsafe fn launch(
        &self,
        stream: &Self::Stream,
        f: &Self::Function,
        grid: [u32; 3],
        block: u32,
        args: &[KernelArg],
    ) -> Result<(), DriverError>;
}
