//! Loading machine code: one process-wide ORC LLJIT holds every kernel's
//! object file, compiled in this process or read from the on-disk cache
//! ([`super::objcache`]), so both paths run exactly the same loader.
//!
//! A kernel's code stays loaded for the life of the process, once per
//! distinct key (kernel IR, mode, host CPU, LLVM and lowering), however
//! many [`super::CpuKernel`]s use it: code is never freed under a running
//! launch, and the number of distinct kernels a process compiles is small.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::sync::{Mutex, OnceLock};

use inkwell::llvm_sys::core::LLVMCreateMemoryBufferWithMemoryRangeCopy;
use inkwell::llvm_sys::error::{LLVMDisposeErrorMessage, LLVMErrorRef, LLVMGetErrorMessage};
use inkwell::llvm_sys::orc2::lljit::{
    LLVMOrcCreateLLJIT, LLVMOrcCreateLLJITBuilder, LLVMOrcLLJITAddObjectFile,
    LLVMOrcLLJITGetGlobalPrefix, LLVMOrcLLJITGetMainJITDylib, LLVMOrcLLJITLookup, LLVMOrcLLJITRef,
};
use inkwell::llvm_sys::orc2::{
    LLVMOrcCreateDynamicLibrarySearchGeneratorForProcess, LLVMOrcJITDylibAddGenerator,
};

/// What identifies a kernel's machine code (a SHA-256).
pub(crate) type Key = [u8; 32];

/// A loaded kernel: its entry point and the frame its blocks need.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Loaded {
    pub addr: usize,
    pub frame_bytes: u64,
}

struct Orc(LLVMOrcLLJITRef);

// SAFETY: an LLJIT's ExecutionSession serialises adding objects and
// looking up symbols, so the handle may be used from any thread; it is
// created once and never disposed (the code it holds lives as long as the
// process).
unsafe impl Send for Orc {}
// SAFETY: as above.
unsafe impl Sync for Orc {}

pub(crate) struct Jit {
    orc: Orc,
    loaded: Mutex<HashMap<Key, Loaded>>,
}

static JIT: OnceLock<Result<Jit, String>> = OnceLock::new();

/// LLVM's message for `e` (which it consumes), or `None` for success.
fn error(e: LLVMErrorRef) -> Option<String> {
    if e.is_null() {
        return None;
    }
    // SAFETY: `e` is a live error; LLVMGetErrorMessage consumes it and
    // returns a string we dispose of after copying.
    unsafe {
        let m = LLVMGetErrorMessage(e);
        let s = CStr::from_ptr(m).to_string_lossy().into_owned();
        LLVMDisposeErrorMessage(m);
        Some(s)
    }
}

/// The process's JIT, created on first use (LLVM's native target must be
/// initialised first).
pub(crate) fn jit() -> Result<&'static Jit, String> {
    JIT.get_or_init(|| {
        let mut orc: LLVMOrcLLJITRef = std::ptr::null_mut();
        // SAFETY: the builder is consumed by LLVMOrcCreateLLJIT; `orc` is
        // written on success. The process generator resolves the kernels'
        // few external symbols (libm's tanhf, memset) from this process.
        unsafe {
            let builder = LLVMOrcCreateLLJITBuilder();
            if let Some(e) = error(LLVMOrcCreateLLJIT(&mut orc, builder)) {
                return Err(format!("cannot create the JIT: {e}"));
            }
            let mut generator = std::ptr::null_mut();
            let prefix = LLVMOrcLLJITGetGlobalPrefix(orc);
            let e = LLVMOrcCreateDynamicLibrarySearchGeneratorForProcess(
                &mut generator,
                prefix,
                None,
                std::ptr::null_mut(),
            );
            if let Some(e) = error(e) {
                return Err(format!("cannot resolve the process's symbols: {e}"));
            }
            LLVMOrcJITDylibAddGenerator(LLVMOrcLLJITGetMainJITDylib(orc), generator);
        }
        Ok(Jit {
            orc: Orc(orc),
            loaded: Mutex::new(HashMap::new()),
        })
    })
    .as_ref()
    .map_err(Clone::clone)
}

impl Jit {
    /// The kernel with this key, if this process has loaded it.
    pub fn get(&self, key: &Key) -> Option<Loaded> {
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
    }

    /// Loads `object`, which defines `symbol`, for `key` (once: a key
    /// already loaded returns the code loaded before).
    pub fn load(
        &self,
        key: &Key,
        object: &[u8],
        symbol: &str,
        frame_bytes: u64,
    ) -> Result<Loaded, String> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = loaded.get(key) {
            return Ok(*l);
        }
        let name = CString::new(symbol).map_err(|e| e.to_string())?;
        let mut addr = 0u64;
        // SAFETY: the buffer copies `object` and is owned by the JIT from
        // LLVMOrcLLJITAddObjectFile on; `name` outlives the lookup.
        unsafe {
            let buf = LLVMCreateMemoryBufferWithMemoryRangeCopy(
                object.as_ptr().cast(),
                object.len(),
                name.as_ptr(),
            );
            let dylib = LLVMOrcLLJITGetMainJITDylib(self.orc.0);
            if let Some(e) = error(LLVMOrcLLJITAddObjectFile(self.orc.0, dylib, buf)) {
                return Err(format!("cannot add the object of `{symbol}`: {e}"));
            }
            if let Some(e) = error(LLVMOrcLLJITLookup(self.orc.0, &mut addr, name.as_ptr())) {
                return Err(format!("cannot link `{symbol}`: {e}"));
            }
        }
        let l = Loaded {
            addr: addr as usize,
            frame_bytes,
        };
        loaded.insert(*key, l);
        Ok(l)
    }
}
