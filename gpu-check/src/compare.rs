//! Comparing outputs: relative L2 error for attention (infinite when an
//! output is not finite), the fraction of differing elements for appends.

use serde::{Deserialize, Serialize};

use crate::raw::Array;

/// An f64 in JSON that may be infinite or NaN: a number, or the string
/// `inf`, `-inf` or `nan` (JSON has no such numbers; Python's `float()`
/// reads these strings).
pub mod float {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes a number, or `inf`/`-inf`/`nan`.
    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        match *x {
            x if x.is_finite() => s.serialize_f64(x),
            x if x.is_nan() => s.serialize_str("nan"),
            x if x > 0.0 => s.serialize_str("inf"),
            _ => s.serialize_str("-inf"),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum F {
        N(f64),
        S(String),
    }

    /// Reads what [`serialize`] writes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        match F::deserialize(d)? {
            F::N(x) => Ok(x),
            F::S(s) => match s.as_str() {
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                "nan" => Ok(f64::NAN),
                _ => Err(serde::de::Error::custom(format!("`{s}` is not a number"))),
            },
        }
    }

    /// The same for an `Option<f64>` (`null` for `None`).
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        #[derive(Deserialize)]
        struct W(#[serde(with = "super")] f64);

        /// Writes `null` or a number (or `inf`, `-inf`, `nan`).
        pub fn serialize<S: Serializer>(x: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
            match x {
                Some(x) => super::serialize(x, s),
                None => s.serialize_none(),
            }
        }

        /// Reads what [`serialize`] writes.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
            Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
        }
    }
}

/// One comparison of an output with what it should be.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Relative L2 error (attention), or the fraction of elements whose
    /// bits differ (append).
    #[serde(with = "float")]
    pub error: f64,
    /// The largest error allowed.
    pub tolerance: f64,
    /// `error <= tolerance` (a NaN error is not).
    pub passed: bool,
    /// The fraction of elements with identical bits.
    pub bit_equal: f64,
    /// The largest absolute difference of finite elements.
    #[serde(with = "float")]
    pub max_abs: f64,
}

/// Relative L2 error of `got` against `want`; infinite when `got` has a
/// non-finite element or the lengths differ.
pub fn rel_l2(got: &[f64], want: &[f64]) -> f64 {
    if got.len() != want.len() || !got.iter().all(|x| x.is_finite()) {
        return f64::INFINITY;
    }
    attnforge_runtime::reference::rel_l2(got, want)
}

fn bits_equal(got: &Array, want: &Array) -> usize {
    if got.ty != want.ty {
        return 0;
    }
    let n = got.ty.size();
    got.bytes
        .chunks_exact(n)
        .zip(want.bytes.chunks_exact(n))
        .filter(|(a, b)| a == b)
        .count()
}

fn max_abs(got: &[f64], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .filter(|d| d.is_finite())
        .fold(0.0, f64::max)
}

/// An attention output against another device's.
pub fn attention(got: &Array, want: &Array, tolerance: f64) -> Metrics {
    let (g, w) = (got.to_f64(), want.to_f64());
    let error = rel_l2(&g, &w);
    Metrics {
        error,
        tolerance,
        passed: error <= tolerance,
        bit_equal: bits_equal(got, want) as f64 / got.len().max(1) as f64,
        max_abs: max_abs(&g, &w),
    }
}

/// An attention output against the f64 reference.
pub fn against_reference(got: &Array, want: &[f64], tolerance: f64) -> Metrics {
    let g = got.to_f64();
    let error = rel_l2(&g, want);
    let equal = g.iter().zip(want).filter(|(a, b)| a == b).count();
    Metrics {
        error,
        tolerance,
        passed: error <= tolerance,
        bit_equal: equal as f64 / g.len().max(1) as f64,
        max_abs: max_abs(&g, want),
    }
}

/// An append's arenas against the expected ones: bit for bit (so a NaN
/// written where one is expected matches).
pub fn append(got: &[Array], want: &[Array]) -> Metrics {
    let (mut equal, mut total) = (0usize, 0usize);
    let mut bad_shape = got.len() != want.len();
    for (g, w) in got.iter().zip(want) {
        bad_shape |= g.ty != w.ty || g.bytes.len() != w.bytes.len() || g.name != w.name;
        equal += bits_equal(g, w);
        total += g.len();
    }
    let error = if bad_shape {
        1.0
    } else {
        (total - equal) as f64 / total.max(1) as f64
    };
    let max = got
        .iter()
        .zip(want)
        .map(|(g, w)| max_abs(&g.to_f64(), &w.to_f64()))
        .fold(0.0, f64::max);
    Metrics {
        error,
        tolerance: 0.0,
        passed: error == 0.0,
        bit_equal: 1.0 - error,
        max_abs: max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    #[test]
    fn a_nan_fails_and_equal_bits_pass() {
        let want = Array::new("out", &[f16::from_f32(1.0), f16::from_f32(2.0)]);
        let nan = Array::new("out", &[f16::NAN, f16::from_f32(2.0)]);
        let m = attention(&nan, &want, 1e-3);
        assert!(!m.passed && m.error.is_infinite());
        assert!(attention(&want, &want, 0.0).passed);
        let k = Array::new("k", &[f16::NAN, f16::from_f32(2.0)]);
        assert!(append(std::slice::from_ref(&k), std::slice::from_ref(&k)).passed);
        let k2 = Array::new("k", &[f16::NAN, f16::from_f32(3.0)]);
        assert_eq!(append(&[k2], &[k]).error, 0.5);
    }
}
