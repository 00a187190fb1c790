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

/// Code generic over a launch's query and KV element types, for
/// [`with_elements`].
pub trait WithElements {
    /// What the code returns.
    type Output;
    /// Runs it with `Q` for the queries and outputs and `T` for K and V.
    fn run<Q: Element, T: Element>(self) -> Self::Output;
}

/// Runs `f` with the host types of the dtypes `q` (queries and outputs) and
/// `kv` (K and V): the one place a dtype pair becomes a pair of types.
/// Every pair is served, fp8 queries too: a launch's validation refuses
/// what a spec may not have.
pub fn with_elements<F: WithElements>(q: DType, kv: DType, f: F) -> F::Output {
    fn kv_then<Q: Element, F: WithElements>(kv: DType, f: F) -> F::Output {
        match kv {
            DType::F32 => f.run::<Q, f32>(),
            DType::F16 => f.run::<Q, half::f16>(),
            DType::BF16 => f.run::<Q, half::bf16>(),
            DType::F8E4M3 => f.run::<Q, F8E4M3>(),
        }
    }
    match q {
        DType::F32 => kv_then::<f32, F>(kv, f),
        DType::F16 => kv_then::<half::f16, F>(kv, f),
        DType::BF16 => kv_then::<half::bf16, F>(kv, f),
        DType::F8E4M3 => kv_then::<F8E4M3, F>(kv, f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reports the dtypes of the types it is run with.
    struct Dtypes;

    impl WithElements for Dtypes {
        type Output = (DType, DType);
        fn run<Q: Element, T: Element>(self) -> (DType, DType) {
            (Q::DTYPE, T::DTYPE)
        }
    }

    #[test]
    fn every_dtype_pair_gets_its_own_types() {
        let all = [DType::F32, DType::F16, DType::BF16, DType::F8E4M3];
        for q in all {
            for kv in all {
                assert_eq!(with_elements(q, kv, Dtypes), (q, kv));
            }
        }
    }
}
