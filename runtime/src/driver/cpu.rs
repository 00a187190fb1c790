//! The CPU driver: the launch path's device operations on the host, with
//! every call counted and recorded.
//!
//! Device memory is host memory behind addresses of the driver's own
//! (never reused, so a launch that names a freed allocation fails instead
//! of reading whatever came next). Streams are queues: uploads copy their
//! source at once, as pageable uploads do on a GPU, but every queued
//! operation (uploads, downloads, copies, launches) runs only when its
//! stream is synchronized, in order. A launch runs the CPU backend's
//! JIT-compiled kernel of the same symbol, fast or checked, with each
//! buffer bounded by the bytes the launch layer passed, and refuses a
//! written buffer that overlaps another argument.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use attnforge_codegen::cpu::{Arg, CpuKernel};
use attnforge_codegen::ir::Access;
use attnforge_codegen::ir::Param;
use attnforge_codegen::kernels::{path_symbol, KernelPath, KernelSpec};
use attnforge_codegen::Target;

use super::{DevicePtr, Driver, DriverError, KernelArg, MAX_ARGS};
use crate::cpu::{CpuDevice, Mode};

/// One driver call, as [`CpuDriver::trace`] records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// `allocate(bytes)`.
    Allocate(usize),
    /// `free`.
    Free,
    /// `create_stream`.
    CreateStream,
    /// `destroy_stream`.
    DestroyStream,
    /// `synchronize`.
    Synchronize,
    /// `upload` of so many bytes.
    Upload(usize),
    /// `download` of so many bytes.
    Download(usize),
    /// `copy` of so many bytes.
    Copy(usize),
    /// `zero` of so many bytes.
    Zero(usize),
    /// `load` of a kernel's symbol.
    Load(String),
    /// `launch` of a kernel's symbol over a grid.
    Launch(String, [u32; 3]),
}

impl Call {
    /// Whether the call moves bytes between the host and the device, or
    /// within the device.
    pub fn is_copy(&self) -> bool {
        matches!(
            self,
            Call::Upload(_) | Call::Download(_) | Call::Copy(_) | Call::Zero(_)
        )
    }
}

/// A stream of the CPU driver.
#[derive(Debug)]
pub struct CpuStream(u64);

/// A kernel loaded by the CPU driver.
#[derive(Debug)]
pub struct CpuFunction {
    kernel: Arc<CpuKernel>,
}

/// A host pointer a download writes at `synchronize`.
struct HostDst(*mut u8);
// SAFETY: the driver's contract (`Driver::download`) keeps the destination
// alive and untouched until the stream is synchronized; the pointer is only
// written there, under the driver's lock.
unsafe impl Send for HostDst {}

enum Op {
    Upload {
        dst: DevicePtr,
        data: Vec<u8>,
    },
    Download {
        src: DevicePtr,
        dst: HostDst,
        len: usize,
    },
    Copy {
        dst: DevicePtr,
        src: DevicePtr,
        bytes: usize,
    },
    Zero {
        dst: DevicePtr,
        bytes: usize,
    },
    Launch {
        kernel: Arc<CpuKernel>,
        grid: [u32; 3],
        args: Vec<KernelArg>,
    },
}

impl Op {
    fn name(&self) -> String {
        match self {
            Op::Upload { .. } => "upload".into(),
            Op::Download { .. } => "download".into(),
            Op::Copy { .. } => "copy".into(),
            Op::Zero { .. } => "zero".into(),
            Op::Launch { kernel, .. } => format!("launch of `{}`", kernel.name()),
        }
    }
}

/// An allocation: 16-byte aligned host memory.
struct Allocation {
    data: Vec<u128>,
    bytes: usize,
}

#[derive(Default)]
struct State {
    memory: BTreeMap<u64, Allocation>,
    next_addr: u64,
    next_stream: u64,
    queues: HashMap<u64, Vec<Op>>,
    /// Streams whose queued work failed, with the first error: every
    /// later synchronize of the stream reports it (a GPU's errors are
    /// sticky too), so work queued behind it never passes as done.
    failed: HashMap<u64, String>,
    trace: Vec<Call>,
    /// Whether calls are recorded in `trace`.
    recording: bool,
    /// Whether `synchronize` runs queued work (else it drops it).
    dry: bool,
}

impl State {
    fn record(&mut self, call: impl FnOnce() -> Call) {
        if self.recording {
            self.trace.push(call());
        }
    }
}

/// Where the CPU drivers' addresses start (so address 0 is never valid);
/// each driver gets an address space of its own, [`SPACE`] bytes wide, so
/// an address of one driver is in no allocation of another.
const BASE: u64 = 0x1_0000_0000;
const SPACE: u64 = 1 << 44;

static NEXT_SPACE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl State {
    /// The bytes `ptr..ptr + len` of one live allocation.
    fn span(&mut self, ptr: DevicePtr, len: usize) -> Result<*mut u8, String> {
        if len == 0 {
            // Nothing is read or written through an empty span.
            return Ok(std::ptr::NonNull::<u128>::dangling().as_ptr().cast());
        }
        let nowhere = || {
            format!(
                "address {:#x} is in no allocation of this driver (freed, never \
                 allocated, or another driver's)",
                ptr.0
            )
        };
        let (&base, a) = self
            .memory
            .range_mut(..=ptr.0)
            .next_back()
            .ok_or_else(nowhere)?;
        let off = (ptr.0 - base) as usize;
        if off >= a.bytes {
            return Err(nowhere());
        }
        if off.checked_add(len).is_none_or(|end| end > a.bytes) {
            return Err(format!(
                "{len} bytes at {:#x} run past the allocation of {} bytes at {base:#x}",
                ptr.0, a.bytes
            ));
        }
        // SAFETY: `off + len` ≤ the allocation's bytes (checked above).
        Ok(unsafe { a.data.as_mut_ptr().cast::<u8>().add(off) })
    }

    fn run(&mut self, op: Op, mode: Mode) -> Result<(), String> {
        match op {
            Op::Upload { dst, data } => {
                let p = self.span(dst, data.len())?;
                // SAFETY: `p` has `data.len()` bytes (span), distinct from `data`.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
            }
            Op::Download { src, dst, len } => {
                let p = self.span(src, len)?;
                // SAFETY: `p` has `len` bytes; `dst` is valid for `len`
                // bytes until this synchronize (Driver::download's contract).
                unsafe { std::ptr::copy_nonoverlapping(p, dst.0, len) };
            }
            Op::Copy { dst, src, bytes } => {
                let s = self.span(src, bytes)?;
                let d = self.span(dst, bytes)?;
                // SAFETY: both spans hold `bytes`; `copy` handles overlap.
                unsafe { std::ptr::copy(s, d, bytes) };
            }
            Op::Zero { dst, bytes } => {
                let d = self.span(dst, bytes)?;
                // SAFETY: `d` has `bytes` bytes.
                unsafe { std::ptr::write_bytes(d, 0, bytes) };
            }
            Op::Launch { kernel, grid, args } => self.launch(&kernel, grid, &args, mode)?,
        }
        Ok(())
    }

    fn launch(
        &mut self,
        kernel: &CpuKernel,
        grid: [u32; 3],
        args: &[KernelArg],
        mode: Mode,
    ) -> Result<(), String> {
        let ir = kernel.ir();
        if args.len() != ir.params.len() {
            return Err(format!(
                "{} arguments for {} parameters",
                args.len(),
                ir.params.len()
            ));
        }
        // Resolve every buffer and check that no written one overlaps
        // another argument (the slices below must not alias).
        let mut spans: Vec<(u64, usize, bool)> = Vec::with_capacity(args.len());
        for (p, a) in ir.params.iter().zip(args) {
            if let (Param::Buffer(b), KernelArg::Buffer { ptr, bytes }) = (p, a) {
                let written = ir.buffer(*b).access != Access::Read;
                spans.push((ptr.0, *bytes, written));
            }
        }
        for (i, &(a, al, aw)) in spans.iter().enumerate() {
            for &(b, bl, bw) in &spans[i + 1..] {
                let overlap = a < b + bl as u64 && b < a + al as u64 && al > 0 && bl > 0;
                if overlap && (aw || bw) {
                    return Err(format!(
                        "a written buffer overlaps another argument ({a:#x}+{al} and {b:#x}+{bl})"
                    ));
                }
            }
        }
        let mut out: Vec<Arg<'_>> = Vec::with_capacity(args.len());
        for (p, a) in ir.params.iter().zip(args) {
            out.push(match (p, *a) {
                (Param::Buffer(b), KernelArg::Buffer { ptr, bytes }) => {
                    let base = self.span(ptr, bytes)?;
                    if ir.buffer(*b).access == Access::Read {
                        // SAFETY: `base` has `bytes` bytes (span); read-only
                        // spans may overlap each other, never a written one.
                        Arg::In(unsafe { std::slice::from_raw_parts(base, bytes) })
                    } else {
                        // SAFETY: as above, and no other argument overlaps a
                        // written span (checked above).
                        Arg::Out(unsafe { std::slice::from_raw_parts_mut(base, bytes) })
                    }
                }
                (Param::Scalar(_), KernelArg::I32(x)) => Arg::I32(x),
                (_, a) => return Err(format!("argument {a:?} does not match parameter {p:?}")),
            });
        }
        let r = match mode {
            Mode::Checked => kernel.launch_checked(grid, &mut out),
            // SAFETY: the launch layer validated the arguments against the
            // kernel (tables within the arenas, shapes), as on a GPU; the
            // spans are live and bounded.
            Mode::Fast => unsafe { kernel.launch(grid, &mut out) },
        };
        r.map_err(|e| e.to_string())
    }
}

/// The CPU driver: a [`CpuDevice`]'s kernels for one target and mode,
/// behind the driver seam.
pub struct CpuDriver {
    device: Arc<CpuDevice>,
    target: Target,
    mode: Mode,
    ordinal: u32,
    state: Mutex<State>,
}

impl std::fmt::Debug for CpuDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuDriver")
            .field("target", &self.target)
            .field("mode", &self.mode)
            .field("ordinal", &self.ordinal)
            .finish()
    }
}

impl CpuDriver {
    /// A driver running `target`'s kernels in `mode`, as device 0.
    pub fn new(target: Target, mode: Mode) -> CpuDriver {
        CpuDriver::with_kernels(Arc::default(), target, mode)
    }

    /// A driver whose kernels come from `device`'s cache (drivers sharing
    /// one compile each kernel once).
    pub fn with_kernels(device: Arc<CpuDevice>, target: Target, mode: Mode) -> CpuDriver {
        CpuDriver {
            device,
            target,
            mode,
            ordinal: 0,
            state: Mutex::new(State {
                next_addr: BASE
                    + SPACE
                        * (NEXT_SPACE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1024),
                next_stream: 1,
                ..State::default()
            }),
        }
    }

    /// The same driver, recording every call for [`CpuDriver::trace`]
    /// (off by default: a trace grows with every call).
    pub fn recording(self) -> CpuDriver {
        self.set_recording(true);
        self
    }

    /// Starts or stops recording calls (what is recorded stays).
    pub fn set_recording(&self, on: bool) {
        self.state().recording = on;
    }

    /// The same driver posing as device `ordinal` (to test that objects of
    /// one device are refused on another).
    pub fn with_ordinal(mut self, ordinal: u32) -> CpuDriver {
        self.ordinal = ordinal;
        self
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every call so far, in order, when [`CpuDriver::recording`].
    pub fn trace(&self) -> Vec<Call> {
        self.state().trace.clone()
    }

    /// How many calls so far (a mark for [`CpuDriver::trace_since`]).
    pub fn calls(&self) -> usize {
        self.state().trace.len()
    }

    /// The calls made since `mark` (from [`CpuDriver::calls`]).
    pub fn trace_since(&self, mark: usize) -> Vec<Call> {
        self.state().trace.get(mark..).unwrap_or_default().to_vec()
    }

    /// Live allocations and their total bytes.
    pub fn allocated(&self) -> (usize, usize) {
        let s = self.state();
        (s.memory.len(), s.memory.values().map(|a| a.bytes).sum())
    }

    /// With `dry`, `synchronize` drops queued work instead of running it
    /// (every call is still checked, counted and recorded): for measuring
    /// the launch path's host-side cost without the kernels' run time.
    /// Outputs are then garbage; never for results.
    pub fn set_dry_run(&self, dry: bool) {
        self.state().dry = dry;
    }

    /// Operations queued on streams and not yet run.
    pub fn queued(&self) -> usize {
        self.state().queues.values().map(Vec::len).sum()
    }

    fn enqueue(&self, stream: &CpuStream, op: Op, call: Call) -> Result<(), DriverError> {
        let mut s = self.state();
        s.record(|| call);
        s.queues.entry(stream.0).or_default().push(op);
        Ok(())
    }
}

impl Driver for CpuDriver {
    type Stream = CpuStream;
    type Function = CpuFunction;

    fn ordinal(&self) -> u32 {
        self.ordinal
    }

    fn target(&self) -> Target {
        self.target
    }

    fn compute_units(&self) -> u32 {
        std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
    }

    fn allocate(&self, bytes: usize) -> Result<DevicePtr, DriverError> {
        let bytes = bytes.max(1);
        let mut data = Vec::new();
        data.try_reserve_exact(bytes.div_ceil(16))
            .map_err(|_| DriverError::Call {
                call: "allocate",
                message: format!("{bytes} bytes of host memory could not be allocated"),
            })?;
        data.resize(bytes.div_ceil(16), 0u128);
        let mut s = self.state();
        let addr = s.next_addr;
        // Addresses are never reused, with a gap after each allocation.
        s.next_addr += (bytes as u64).div_ceil(256) * 256 + 256;
        s.memory.insert(addr, Allocation { data, bytes });
        s.record(|| Call::Allocate(bytes));
        Ok(DevicePtr(addr))
    }

    unsafe fn free(&self, ptr: DevicePtr) {
        let mut s = self.state();
        s.memory.remove(&ptr.0);
        s.record(|| Call::Free);
    }

    fn create_stream(&self) -> Result<CpuStream, DriverError> {
        let mut s = self.state();
        let id = s.next_stream;
        s.next_stream += 1;
        s.record(|| Call::CreateStream);
        Ok(CpuStream(id))
    }

    fn default_stream(&self) -> CpuStream {
        CpuStream(0)
    }

    unsafe fn destroy_stream(&self, stream: &CpuStream) {
        let mut s = self.state();
        s.queues.remove(&stream.0);
        s.record(|| Call::DestroyStream);
    }

    fn synchronize(&self, stream: &CpuStream) -> Result<(), DriverError> {
        let mut s = self.state();
        s.record(|| Call::Synchronize);
        let ops = s.queues.remove(&stream.0).unwrap_or_default();
        if let Some(first) = s.failed.get(&stream.0) {
            return Err(DriverError::Queued {
                op: format!("{} operation(s) after an earlier failure", ops.len()),
                message: first.clone(),
            });
        }
        if s.dry {
            return Ok(());
        }
        for op in ops {
            let name = op.name();
            if let Err(message) = s.run(op, self.mode) {
                // What follows a failed operation does not run, as on a GPU
                // whose stream is in an error state, and the stream stays
                // failed.
                let message = format!("{name}: {message}");
                s.failed.insert(stream.0, message.clone());
                return Err(DriverError::Queued { op: name, message });
            }
        }
        Ok(())
    }

    unsafe fn upload(
        &self,
        stream: &CpuStream,
        dst: DevicePtr,
        src: &[u8],
    ) -> Result<(), DriverError> {
        let op = Op::Upload {
            dst,
            data: src.to_vec(),
        };
        self.enqueue(stream, op, Call::Upload(src.len()))
    }

    unsafe fn download(
        &self,
        stream: &CpuStream,
        src: DevicePtr,
        dst: *mut u8,
        len: usize,
    ) -> Result<(), DriverError> {
        let op = Op::Download {
            src,
            dst: HostDst(dst),
            len,
        };
        self.enqueue(stream, op, Call::Download(len))
    }

    unsafe fn copy(
        &self,
        stream: &CpuStream,
        dst: DevicePtr,
        src: DevicePtr,
        bytes: usize,
    ) -> Result<(), DriverError> {
        self.enqueue(stream, Op::Copy { dst, src, bytes }, Call::Copy(bytes))
    }

    unsafe fn zero(
        &self,
        stream: &CpuStream,
        dst: DevicePtr,
        bytes: usize,
    ) -> Result<(), DriverError> {
        self.enqueue(stream, Op::Zero { dst, bytes }, Call::Zero(bytes))
    }

    fn load(&self, spec: &KernelSpec, path: KernelPath) -> Result<CpuFunction, DriverError> {
        let name = path_symbol(spec, self.target, path);
        let kernel = self
            .device
            .kernel_path(spec, self.target, self.mode, path)
            .map_err(|e| DriverError::NoCode {
                symbol: name.clone(),
                message: e.to_string(),
            })?;
        self.state().record(|| Call::Load(name));
        Ok(CpuFunction { kernel })
    }

    unsafe fn launch(
        &self,
        stream: &CpuStream,
        f: &CpuFunction,
        grid: [u32; 3],
        block: u32,
        args: &[KernelArg],
    ) -> Result<(), DriverError> {
        let name = f.kernel.name().to_string();
        if block != f.kernel.block_dim() || args.len() > MAX_ARGS {
            return Err(DriverError::Call {
                call: "launch",
                message: format!(
                    "`{name}` runs {} threads per block, launched with {block}",
                    f.kernel.block_dim()
                ),
            });
        }
        let op = Op::Launch {
            kernel: f.kernel.clone(),
            grid,
            args: args.to_vec(),
        };
        self.enqueue(stream, op, Call::Launch(name, grid))
    }
}
