//! Layer 1: raw FFI. The HIP runtime from `hip-sys`, plus the few hiprtc
//! functions it has no bindings for (exported by the same libamdhip64).
#![allow(non_camel_case_types)]

pub use hip_sys::hiprt::*;

/// hiprtc's status code (0 is success).
pub type hiprtcResult = std::os::raw::c_int;
/// An opaque hiprtc program.
pub type hiprtcProgram = *mut std::ffi::c_void;

#[link(name = "amdhip64")]
extern "C" {
    pub fn hiprtcCreateProgram(
        prog: *mut hiprtcProgram,
        src: *const std::os::raw::c_char,
        name: *const std::os::raw::c_char,
        num_headers: std::os::raw::c_int,
        headers: *const *const std::os::raw::c_char,
        include_names: *const *const std::os::raw::c_char,
    ) -> hiprtcResult;
    pub fn hiprtcCompileProgram(
        prog: hiprtcProgram,
        num_options: std::os::raw::c_int,
        options: *const *const std::os::raw::c_char,
    ) -> hiprtcResult;
    pub fn hiprtcGetProgramLogSize(prog: hiprtcProgram, size: *mut usize) -> hiprtcResult;
    pub fn hiprtcGetProgramLog(prog: hiprtcProgram, log: *mut std::os::raw::c_char)
        -> hiprtcResult;
    pub fn hiprtcGetCodeSize(prog: hiprtcProgram, size: *mut usize) -> hiprtcResult;
    pub fn hiprtcGetCode(prog: hiprtcProgram, code: *mut std::os::raw::c_char) -> hiprtcResult;
    pub fn hiprtcDestroyProgram(prog: *mut hiprtcProgram) -> hiprtcResult;
    pub fn hiprtcGetErrorString(result: hiprtcResult) -> *const std::os::raw::c_char;
}
