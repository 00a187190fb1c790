//! [`Element`]: the host types of the dtypes a launch passes, on any device.

use attnforge_codegen::pod::Pod;
use attnforge_codegen::{DType, F8E4M3};

/// A KV element type on the host.
pub trait Element: Pod + Send + Sync + Default {
    /// The dtype it stores.
    const DTYPE: DType;
    /// Its value as f64.
    fn to_f64(self) -> f64;
    /// The nearest value to `x` (round to nearest even).
    fn from_f64(x: f64) -> Self;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(x: f64) -> Self {
        x as f32
    }
}

impl Element for half::f16 {
    const DTYPE: DType = DType::F16;
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    fn from_f64(x: f64) -> Self {
        half::f16::from_f64(x)
    }
}

impl Element for half::bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    fn from_f64(x: f64) -> Self {
        half::bf16::from_f64(x)
    }
}

/// The stored value, unscaled; saturates at ±448.
impl Element for F8E4M3 {
    const DTYPE: DType = DType::F8E4M3;
    fn to_f64(self) -> f64 {
        F8E4M3::to_f64(self)
    }
    fn from_f64(x: f64) -> Self {
        F8E4M3::from_f64(x)
    }
}
