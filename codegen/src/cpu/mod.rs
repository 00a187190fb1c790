//! The CPU backend: the same kernel IR the HIP printer prints, lowered to
//! LLVM and JIT-compiled for the host, so every generated kernel can be run
//! and checked without a GPU.
//!
//! A block runs as loops over its threads, split at barriers and warp
//! collectives (MCUDA-style; see `split.rs`). Collectives follow HIP's exact
//! lane rules for the kernel's warp size, so wave64 and wave32 variants both
//! run. The blocks of a grid run in parallel on the host's cores.
//!
//! **Checked mode** ([`CpuOptions::checked`]) turns the backend into a
//! sanitizer. It bounds-checks every global and shared access. It tracks
//! shared memory per barrier interval, and two threads touching one address in
//! one interval, at least one of them writing, is a race. It also catches
//! divergence: a condition the verifier took to be uniform that differs
//! between threads. Findings come back as [`Finding`]s naming the kernel,
//! block, thread and address.
//!
//! ```
//! use attnforge_codegen::cpu::{compile, Arg, CpuOptions};
//! use attnforge_codegen::ir::{builder::KernelBuilder, verify::verify, Access, Expr, Scalar, Special};
//! use attnforge_codegen::target::Arch;
//!
//! let mut b = KernelBuilder::new("twice", Arch::Gfx1030.target(), 32);
//! let x = b.global("x", Scalar::F32, Access::Read);
//! let out = b.global("out", Scalar::F32, Access::ReadWrite);
//! let i = b.let_("i", Expr::special(Special::ThreadIdx));
//! b.store(out, i.clone(), Expr::load(x, i, 1) * Expr::f32(2.0));
//! let kernel = b.finish();
//! let analysis = verify(&kernel).unwrap();
//! let cpu = compile(&kernel, &analysis, CpuOptions { checked: true }).unwrap();
//!
//! let input: Vec<f32> = (0..32).map(|i| i as f32).collect();
//! let mut output = vec![0f32; 32];
//! cpu.launch_checked([1, 1, 1], &mut [Arg::input(&input), Arg::output(&mut output)]).unwrap();
//! assert_eq!(output[5], 10.0);
//! ```

mod check;
mod convert;
mod jit;
mod lower;
mod mma;
mod objcache;
mod split;

use std::ffi::c_void;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use inkwell::context::Context;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target as LlvmTarget, TargetMachine,
};
use inkwell::OptimizationLevel;

pub use check::{Finding, FindingKind};

use crate::ir::verify::Analysis;
use crate::ir::{Access, Kernel, Param, Scalar};

/// How to compile a kernel for the CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CpuOptions {
    /// Compile the sanitizer in: bounds, races and divergence are checked.
    pub checked: bool,
}

/// Why a kernel could not be compiled for the CPU.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// LLVM could not be initialised or rejected the lowered module.
    #[error("LLVM failed on kernel `{kernel}`: {message}")]
    Llvm {
        /// The kernel.
        kernel: String,
        /// LLVM's message.
        message: String,
    },
}

/// Why a launch did not run, or what checked mode found.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The arguments do not match the kernel's parameters.
    #[error("kernel `{kernel}`: {message}")]
    BadArguments {
        /// The kernel.
        kernel: String,
        /// What does not match.
        message: String,
    },
    /// `launch_checked` on a kernel compiled without checked mode.
    #[error("kernel `{0}` was compiled without checked mode; compile with CpuOptions {{ checked: true }}")]
    NotChecked(String),
    /// Checked mode found problems (the first ones, and how many in all).
    #[error("kernel `{kernel}`: {total} finding(s) in checked mode; first: {}", .findings.first().map(|f| f.to_string()).unwrap_or_default())]
    Findings {
        /// The kernel.
        kernel: String,
        /// The first findings (at most 64).
        findings: Vec<Finding>,
        /// How many findings in all.
        total: usize,
    },
}

pub use crate::pod::Pod;

/// A kernel argument, in the kernel's parameter order.
pub enum Arg<'a> {
    /// A buffer the kernel only reads.
    In(&'a [u8]),
    /// A buffer the kernel writes (and may read).
    Out(&'a mut [u8]),
    /// An `i32` scalar.
    I32(i32),
    /// A `u32` scalar.
    U32(u32),
    /// An `i64` scalar.
    I64(i64),
    /// An `f32` scalar.
    F32(f32),
}

impl<'a> Arg<'a> {
    /// A read-only buffer of plain data.
    pub fn input<T: Pod>(s: &'a [T]) -> Arg<'a> {
        // SAFETY: T is Pod (no padding), the slice is valid for its byte length.
        Arg::In(unsafe { std::slice::from_raw_parts(s.as_ptr().cast(), std::mem::size_of_val(s)) })
    }

    /// A written buffer of plain data.
    pub fn output<T: Pod>(s: &'a mut [T]) -> Arg<'a> {
        let len = std::mem::size_of_val(s);
        // SAFETY: T is Pod, so any bytes written are a valid T; exclusive borrow.
        Arg::Out(unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast(), len) })
    }
}

/// The ABI shared with the generated block function (offsets in `lower::info`).
#[repr(C)]
struct LaunchInfo {
    buffers: *const *mut u8,
    lens: *const u64,
    scalars: *const u64,
    grid: [i32; 3],
    check: Option<check::CheckFn>,
}

type BlockFn = unsafe extern "C" fn(*const LaunchInfo, *mut u8, *mut c_void, i32, i32, i32);

/// A kernel compiled for the host CPU.
pub struct CpuKernel {
    kernel: Kernel,
    checked: bool,
    frame_bytes: u64,
    func: BlockFn,
    compile_time: Duration,
    source: CodeSource,
}

// SAFETY: the JIT-compiled code is immutable and reentrant (all state comes
// through its arguments) and is never unloaded.
unsafe impl Send for CpuKernel {}
// SAFETY: as above; `&CpuKernel` only reads plain data and calls the code.
unsafe impl Sync for CpuKernel {}

impl fmt::Debug for CpuKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuKernel")
            .field("name", &self.kernel.name)
            .field("checked", &self.checked)
            .field("frame_bytes", &self.frame_bytes)
            .field("compile_time", &self.compile_time)
            .field("source", &self.source)
            .finish()
    }
}

static INIT: Once = Once::new();
static INIT_ERROR: Mutex<Option<String>> = Mutex::new(None);

fn init() -> Result<(), String> {
    INIT.call_once(|| {
        if let Err(e) = LlvmTarget::initialize_native(&InitializationConfig::default()) {
            *INIT_ERROR.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
        }
    });
    match INIT_ERROR.lock().unwrap_or_else(|e| e.into_inner()).clone() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// LLVM's pass pipeline for every kernel. The kernels are already laid out
/// for the machine (the host schedules in explicit vectors, the GPU
/// schedules as the GPU runs them), so O1's clean-up is what they need:
/// O2/O3's loop vectorisers and unrollers cost more compile time than they
/// win (BENCHMARKS.md, "JIT compile time").
const PIPELINE: &str = "default<O1>";

/// The pipeline's options: O1 without LLVM's loop unrolling (full or
/// partial). The lowering's loops (over a block's threads, over a
/// per-thread array's elements, the host schedules' loops over 8 or 16
/// lanes in explicit vectors) stay loops. Unrolling them took more than
/// half of the JIT's time, counting the larger code it gave instruction
/// selection and loop strength reduction, and made no kernel measurably
/// faster (BENCHMARKS.md, "JIT compile time", 2026-12-05 evening).
fn pass_options() -> PassBuilderOptions {
    let options = PassBuilderOptions::create();
    options.set_loop_unrolling(false);
    options
}

/// `ATTNFORGE_JIT_DUMP=<dir>`: each kernel compiled writes its LLVM IR,
/// before optimisation, to `<dir>/<kernel>-<arch>-<fast|checked>.ll`, for
/// profiling the JIT with LLVM's own tools (`opt-15 -passes='default<O1>'
/// -time-passes`, `llc-15 -O1 -time-passes`).
fn dump_ir(
    module: &inkwell::module::Module<'_>,
    kernel: &Kernel,
    checked: bool,
) -> Result<(), String> {
    let Some(dir) = std::env::var_os("ATTNFORGE_JIT_DUMP") else {
        return Ok(());
    };
    let mode = if checked { "checked" } else { "fast" };
    let path = std::path::Path::new(&dir).join(format!(
        "{}-{}-{mode}.ll",
        kernel.name,
        kernel.target.arch.name()
    ));
    module
        .print_to_file(&path)
        .map_err(|e| format!("ATTNFORGE_JIT_DUMP: cannot write {}: {e}", path.display()))
}

/// Lowers a verified kernel to LLVM, optimises it and compiles it to
/// machine code for this CPU, or takes that code from this process's JIT
/// or the on-disk cache (see `objcache`) when the same kernel was compiled
/// before for the same CPU, mode, LLVM and lowering.
pub fn compile(
    kernel: &Kernel,
    analysis: &Analysis,
    opts: CpuOptions,
) -> Result<CpuKernel, CpuError> {
    let start = Instant::now();
    let fail = |message: String| CpuError::Llvm {
        kernel: kernel.name.clone(),
        message,
    };
    init().map_err(fail)?;
    let cpu = TargetMachine::get_host_cpu_name().to_string();
    let features = TargetMachine::get_host_cpu_features().to_string();
    // The machine code depends on the IR and the warp size, not on which
    // GPU the target names (gfx940's kernels share gfx90a's code, sm_80's
    // sm_90's, when their IR is the same).
    let ir = format!(
        "{:?}",
        Kernel {
            target: crate::target::Target {
                arch: crate::target::Arch::Host,
                shared_mem_bytes: 0,
                ..kernel.target
            },
            ..kernel.clone()
        }
    );
    let key = objcache::key(&[
        ir.as_bytes(),
        &[opts.checked as u8],
        cpu.as_bytes(),
        features.as_bytes(),
    ]);
    let jit = jit::jit().map_err(fail)?;
    let done = |loaded: jit::Loaded, source: CodeSource| {
        // SAFETY: the code at `addr` was emitted with exactly the BlockFn
        // signature, and the JIT keeps it for the life of the process.
        let func: BlockFn = unsafe { std::mem::transmute::<usize, BlockFn>(loaded.addr) };
        CpuKernel {
            kernel: kernel.clone(),
            checked: opts.checked,
            frame_bytes: loaded.frame_bytes,
            func,
            compile_time: start.elapsed(),
            source,
        }
    };
    if let Some(loaded) = jit.get(&key) {
        return Ok(done(loaded, CodeSource::Loaded));
    }
    let symbol = objcache::symbol(&key);
    let dir = objcache::dir();
    if let Some((frame, object)) = dir.as_deref().and_then(|d| objcache::read(d, &key)) {
        // A genuine entry that does not link falls through to a rebuild.
        if let Ok(loaded) = jit.load(&key, &object, &symbol, frame) {
            return Ok(done(loaded, CodeSource::DiskCache));
        }
    }
    let (object, frame) = emit(kernel, analysis, opts, &symbol, (&cpu, &features)).map_err(fail)?;
    let loaded = jit.load(&key, &object, &symbol, frame).map_err(fail)?;
    if let Some(d) = dir {
        objcache::write(&d, &key, frame, &object);
    }
    Ok(done(loaded, CodeSource::Compiled))
}

/// The kernel's object file (defining `symbol`) and its frame size.
fn emit(
    kernel: &Kernel,
    analysis: &Analysis,
    opts: CpuOptions,
    symbol: &str,
    host: (&str, &str),
) -> Result<(Vec<u8>, u64), String> {
    let cx = Context::create();
    let module = cx.create_module(&kernel.name);
    let triple = TargetMachine::get_default_triple();
    let target = LlvmTarget::from_triple(&triple).map_err(|e| e.to_string())?;
    // Instruction selection at O1: as fast as the code O3 gives for these
    // kernels, in about half the time. Position-independent code with the
    // small code model: the JIT links calls out of the object through stubs.
    let machine = target
        .create_target_machine(
            &triple,
            host.0,
            host.1,
            OptimizationLevel::Less,
            RelocMode::PIC,
            CodeModel::Small,
        )
        .ok_or("no target machine for the host")?;
    module.set_triple(&triple);
    module.set_data_layout(&machine.get_target_data().get_data_layout());
    let layout = lower::lower(&cx, &module, symbol, kernel, analysis, opts.checked, host)?;
    module
        .verify()
        .map_err(|e| format!("invalid LLVM IR: {e}"))?;
    dump_ir(&module, kernel, opts.checked)?;
    module
        .run_passes(PIPELINE, &machine, pass_options())
        .map_err(|e| e.to_string())?;
    let buf = machine
        .write_to_memory_buffer(&module, FileType::Object)
        .map_err(|e| e.to_string())?;
    Ok((buf.as_slice().to_vec(), layout.bytes))
}

/// Where a kernel's machine code came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeSource {
    /// Compiled by this call.
    Compiled,
    /// Read from the on-disk cache.
    DiskCache,
    /// Already loaded in this process (an earlier compile of the same kernel).
    Loaded,
}

/// One worker's frame, 64-byte aligned.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

impl CpuKernel {
    /// The kernel's symbol.
    pub fn name(&self) -> &str {
        &self.kernel.name
    }

    /// Whether it was compiled in checked mode.
    pub fn is_checked(&self) -> bool {
        self.checked
    }

    /// Time spent obtaining its machine code (lowering, optimising and
    /// compiling it, or reading it from a cache).
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// Where its machine code came from.
    pub fn code_source(&self) -> CodeSource {
        self.source
    }

    /// Threads per block.
    pub fn block_dim(&self) -> u32 {
        self.kernel.block_dim
    }

    /// The IR it was compiled from (its parameters, in order, and which
    /// buffers it writes).
    pub fn ir(&self) -> &Kernel {
        &self.kernel
    }

    /// Runs a kernel compiled in checked mode: every access is checked, so
    /// this is safe whatever the arguments hold.
    pub fn launch_checked(&self, grid: [u32; 3], args: &mut [Arg<'_>]) -> Result<(), LaunchError> {
        if !self.checked {
            return Err(LaunchError::NotChecked(self.kernel.name.clone()));
        }
        // SAFETY: checked mode refuses every out-of-bounds access.
        unsafe { self.launch(grid, args) }
    }

    /// Runs the kernel over `grid` blocks on the host's cores.
    ///
    /// # Safety
    /// Unless the kernel was compiled in checked mode, it accesses memory as
    /// its code says, as a GPU would: the caller guarantees that the
    /// arguments keep every access in bounds (for attnforge's kernels: page
    /// tables and slot mappings that are valid for the buffers passed).
    pub unsafe fn launch(&self, grid: [u32; 3], args: &mut [Arg<'_>]) -> Result<(), LaunchError> {
        let bad = |message: String| LaunchError::BadArguments {
            kernel: self.kernel.name.clone(),
            message,
        };
        if args.len() != self.kernel.params.len() {
            return Err(bad(format!(
                "{} arguments for {} parameters",
                args.len(),
                self.kernel.params.len()
            )));
        }
        let mut ptrs: Vec<*mut u8> = Vec::new();
        let mut lens: Vec<u64> = Vec::new();
        let mut scalars: Vec<u64> = Vec::new();
        // Byte length of each global buffer, by buffer index, for checking.
        let mut global_lens = vec![0u64; self.kernel.buffers.len()];
        for (p, a) in self.kernel.params.iter().zip(args.iter_mut()) {
            match *p {
                Param::Buffer(b) => {
                    let buf = self.kernel.buffer(b);
                    let (ptr, len) = match a {
                        Arg::In(s) if buf.access == Access::Read => {
                            (s.as_ptr() as *mut u8, s.len())
                        }
                        Arg::In(_) => {
                            return Err(bad(format!(
                                "buffer `{}` is written by the kernel: pass it as Arg::Out",
                                buf.name
                            )))
                        }
                        Arg::Out(s) => (s.as_mut_ptr(), s.len()),
                        _ => return Err(bad(format!("parameter `{}` is a buffer", buf.name))),
                    };
                    let size = buf.elem.size_bytes() as usize;
                    if len % size != 0 {
                        return Err(bad(format!(
                            "buffer `{}` holds {} bytes, not a whole number of {} elements",
                            buf.name, len, buf.elem
                        )));
                    }
                    global_lens[b.0 as usize] = len as u64;
                    ptrs.push(ptr);
                    lens.push(len as u64);
                }
                Param::Scalar(v) => {
                    let var = self.kernel.var(v);
                    let bits = match (var.ty.scalar, &*a) {
                        (Scalar::I32, Arg::I32(x)) => *x as u32 as u64,
                        (Scalar::U32, Arg::U32(x)) => *x as u64,
                        (Scalar::I64, Arg::I64(x)) => *x as u64,
                        (Scalar::F32, Arg::F32(x)) => x.to_bits() as u64,
                        (s, _) => {
                            return Err(bad(format!("parameter `{}` is a scalar {s}", var.name)))
                        }
                    };
                    scalars.push(bits);
                }
            }
        }
        if grid.contains(&0) {
            return Ok(());
        }
        if grid.iter().any(|&g| g > i32::MAX as u32) {
            return Err(bad(format!("grid {grid:?} exceeds i32")));
        }
        let info = LaunchInfo {
            buffers: ptrs.as_ptr(),
            lens: lens.as_ptr(),
            scalars: scalars.as_ptr(),
            grid: [grid[0] as i32, grid[1] as i32, grid[2] as i32],
            check: if self.checked {
                Some(check::callback)
            } else {
                None
            },
        };
        let total = grid[0] as usize * grid[1] as usize * grid[2] as usize;
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(total);
        let next = AtomicUsize::new(0);
        let findings: Mutex<(Vec<Finding>, usize)> = Mutex::new((Vec::new(), 0));
        struct Shared<'a>(&'a LaunchInfo);
        // SAFETY: the raw pointers in LaunchInfo stay valid for the whole
        // launch (they borrow `args`), and the generated code only reads it.
        unsafe impl Sync for Shared<'_> {}
        impl Shared<'_> {
            fn get(&self) -> &LaunchInfo {
                self.0
            }
        }
        let shared_info = Shared(&info);
        let lines = self.frame_bytes.div_ceil(64) as usize;
        // Workers come from rayon's pool: a launch spawns no thread (an
        // engine launches two kernels per layer per step).
        rayon::scope(|s| {
            for _ in 0..workers {
                s.spawn(|_| {
                    let info = shared_info.get();
                    let mut frame = vec![Line([0; 64]); lines.max(1)];
                    let mut state = check::BlockState::new(&self.kernel, &global_lens);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            break;
                        }
                        let bx = (i % grid[0] as usize) as i32;
                        let by = ((i / grid[0] as usize) % grid[1] as usize) as i32;
                        let bz = (i / (grid[0] as usize * grid[1] as usize)) as i32;
                        state.start_block([bx as u32, by as u32, bz as u32]);
                        // SAFETY: `func` has the BlockFn ABI; the frame holds
                        // `frame_bytes`; the caller vouches for the buffers
                        // (or checked mode checks every access).
                        unsafe {
                            (self.func)(
                                info,
                                frame.as_mut_ptr().cast(),
                                (&mut state as *mut check::BlockState).cast(),
                                bx,
                                by,
                                bz,
                            )
                        };
                    }
                    let (mine, count) = state.into_findings();
                    if count > 0 {
                        let mut all = findings.lock().unwrap_or_else(|e| e.into_inner());
                        all.1 += count;
                        let room = 64usize.saturating_sub(all.0.len());
                        all.0.extend(mine.into_iter().take(room));
                    }
                });
            }
        });
        let (mut list, total_findings) = findings.into_inner().unwrap_or_else(|e| e.into_inner());
        if total_findings > 0 {
            list.sort_by_key(|f| (f.block[2], f.block[1], f.block[0], f.thread));
            return Err(LaunchError::Findings {
                kernel: self.kernel.name.clone(),
                findings: list,
                total: total_findings,
            });
        }
        Ok(())
    }
}
