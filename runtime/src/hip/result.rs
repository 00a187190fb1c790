//! Layer 2: every HIP call returns a `Result` whose error prints HIP's own
//! error string.

use std::ffi::CStr;
use std::fmt;

use super::sys;

/// A HIP runtime status other than success.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HipStatus(pub sys::hipError_t);

impl HipStatus {
    /// HIP's description of the status.
    pub fn message(self) -> String {
        // SAFETY: hipGetErrorString returns a static, NUL-terminated string
        // for any status value.
        let p = unsafe { sys::hipGetErrorString(self.0) };
        if p.is_null() {
            return format!("{:?}", self.0);
        }
        // SAFETY: non-null, static and NUL-terminated (above).
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

impl fmt::Debug for HipStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({})", self.0, self.message())
    }
}

impl fmt::Display for HipStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

/// Turns a HIP status into a `Result`.
pub fn check(status: sys::hipError_t) -> Result<(), HipStatus> {
    if status == sys::hipError_t::hipSuccess {
        Ok(())
    } else {
        Err(HipStatus(status))
    }
}

/// Number of HIP devices (an error, such as hipErrorNoDevice, when none).
pub fn device_count() -> Result<i32, HipStatus> {
    let mut n = 0;
    // SAFETY: `n` is a valid out-pointer.
    check(unsafe { sys::hipGetDeviceCount(&mut n) })?;
    Ok(n)
}

/// The gcnArchName of device `ordinal` (for example `gfx90a:sramecc+:xnack-`)
/// and its number of compute units.
pub fn arch_name(ordinal: i32) -> Result<(String, u32), HipStatus> {
    // SAFETY: hipDeviceProp_t is plain data; zeroed is a valid value to be
    // overwritten by the call.
    let mut props: sys::hipDeviceProp_t = unsafe { std::mem::zeroed() };
    // SAFETY: `props` is a valid out-pointer for one hipDeviceProp_t.
    check(unsafe { sys::hipGetDeviceProperties(&mut props, ordinal) })?;
    let bytes: Vec<u8> = props
        .gcnArchName
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    let cus = u32::try_from(props.multiProcessorCount).unwrap_or(1).max(1);
    Ok((String::from_utf8_lossy(&bytes).into_owned(), cus))
}

/// hiprtc's description of a status.
pub fn rtc_message(r: sys::hiprtcResult) -> String {
    // SAFETY: hiprtcGetErrorString returns a static string for any value.
    let p = unsafe { sys::hiprtcGetErrorString(r) };
    if p.is_null() {
        return format!("hiprtc status {r}");
    }
    // SAFETY: non-null, static and NUL-terminated.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}
