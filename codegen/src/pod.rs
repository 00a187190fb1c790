//! [`Pod`]: element types a launch hands to a kernel as raw bytes, on any
//! device (the CPU backend's arguments, a GPU driver's uploads).

/// Plain data that can be passed to a kernel as raw bytes.
///
/// # Safety
/// Implementors must have no padding and accept every bit pattern.
pub unsafe trait Pod: Copy + 'static {}
// SAFETY: primitive numbers: no padding, every bit pattern valid.
unsafe impl Pod for f32 {}
// SAFETY: as above.
unsafe impl Pod for f64 {}
// SAFETY: as above.
unsafe impl Pod for i32 {}
// SAFETY: as above.
unsafe impl Pod for u32 {}
// SAFETY: as above.
unsafe impl Pod for i64 {}
// SAFETY: as above.
unsafe impl Pod for u16 {}
// SAFETY: as above.
unsafe impl Pod for u8 {}
// SAFETY: half's f16 and bf16 are `repr(transparent)` over u16.
unsafe impl Pod for half::f16 {}
// SAFETY: as above.
unsafe impl Pod for half::bf16 {}
// SAFETY: a transparent u8: no padding, every bit pattern valid.
unsafe impl Pod for crate::fp8::F8E4M3 {}
