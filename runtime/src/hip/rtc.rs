//! Runtime compilation of generated HIP with hiprtc, for specs built at run
//! time, cached on disk by a hash of the source, arch and options.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use attnforge_codegen::Arch;

use super::result::rtc_message;
use super::{sys, HipError};

fn options(arch: Arch) -> Vec<String> {
    vec![format!("--offload-arch={}", arch.name()), "-O3".into()]
}

/// The default cache directory: `$ATTNFORGE_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/attnforge`, else `~/.cache/attnforge`, else the temp dir.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ATTNFORGE_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("attnforge");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".cache").join("attnforge");
    }
    std::env::temp_dir().join("attnforge")
}

/// The code object of `source` for `arch`: read from `cache_dir` when an
/// earlier call compiled the same source, else compiled with hiprtc and
/// written there atomically (a temporary file renamed into place).
/// Returns the bytes and whether hiprtc ran.
pub fn compile_cached(
    source: &str,
    arch: Arch,
    cache_dir: &Path,
) -> Result<(Vec<u8>, bool), HipError> {
    crate::rtc_cache::cached(
        cache_dir,
        &[source, arch.name(), &options(arch).join(" ")],
        &format!("{}.co", arch.name()),
        |_| true,
        || compile(source, arch),
    )
}

/// Compiles one translation unit with hiprtc.
pub fn compile(source: &str, arch: Arch) -> Result<Vec<u8>, HipError> {
    let opts = options(arch);
    let fail = |what: &str, log: String| HipError::Rtc {
        what: what.to_string(),
        options: opts.join(" "),
        log,
    };
    let src =
        CString::new(source).map_err(|_| fail("source", "the source holds a NUL byte".into()))?;
    let name = CString::new("attnforge.hip").expect("no NUL");
    let copts: Vec<CString> = opts
        .iter()
        .map(|o| CString::new(o.as_str()).expect("no NUL"))
        .collect();
    let ptrs: Vec<*const std::os::raw::c_char> = copts.iter().map(|o| o.as_ptr()).collect();
    let mut prog: sys::hiprtcProgram = std::ptr::null_mut();
    // SAFETY: valid C strings; no extra headers.
    let r = unsafe {
        sys::hiprtcCreateProgram(
            &mut prog,
            src.as_ptr(),
            name.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(fail("hiprtcCreateProgram", rtc_message(r)));
    }
    struct Prog(sys::hiprtcProgram);
    impl Drop for Prog {
        fn drop(&mut self) {
            // SAFETY: created above and destroyed exactly once, here.
            unsafe { sys::hiprtcDestroyProgram(&mut self.0) };
        }
    }
    let prog = Prog(prog);
    // SAFETY: `ptrs` holds `opts.len()` valid C strings for the call.
    let r = unsafe { sys::hiprtcCompileProgram(prog.0, ptrs.len() as i32, ptrs.as_ptr()) };
    if r != 0 {
        let mut size = 0usize;
        // SAFETY: valid program and out-pointer.
        unsafe { sys::hiprtcGetProgramLogSize(prog.0, &mut size) };
        let mut log = vec![0u8; size.max(1)];
        // SAFETY: `log` holds `size` bytes, as hiprtc asked for.
        unsafe { sys::hiprtcGetProgramLog(prog.0, log.as_mut_ptr().cast()) };
        let log = String::from_utf8_lossy(&log)
            .trim_end_matches('\0')
            .to_string();
        return Err(fail(
            "hiprtcCompileProgram",
            format!("{}\n{log}", rtc_message(r)),
        ));
    }
    let mut size = 0usize;
    // SAFETY: valid program and out-pointer.
    let r = unsafe { sys::hiprtcGetCodeSize(prog.0, &mut size) };
    if r != 0 {
        return Err(fail("hiprtcGetCodeSize", rtc_message(r)));
    }
    let mut code = vec![0u8; size];
    // SAFETY: `code` holds `size` bytes, as hiprtc reported.
    let r = unsafe { sys::hiprtcGetCode(prog.0, code.as_mut_ptr().cast()) };
    if r != 0 {
        return Err(fail("hiprtcGetCode", rtc_message(r)));
    }
    Ok(code)
}
