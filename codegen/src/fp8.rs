//! FP8 E4M3 on the host: the storage type of fp8 KV caches.
//!
//! The OCP "fn" flavour that vLLM, FlashInfer and the CUDA/ROCm fp8 types
//! call e4m3fn: sign, 4-bit exponent with bias 7, 3-bit mantissa, no
//! infinities, `0x7f`/`0xff` NaN, largest finite value ±448, subnormals
//! down to 2^-9. Conversions from wider floats round to nearest even and
//! saturate to ±448 (infinities included), as the kernels do.

use std::fmt;

/// One FP8 E4M3 value, as its bit pattern.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct F8E4M3(pub u8);

impl F8E4M3 {
    /// The largest finite value.
    pub const MAX: f32 = 448.0;

    /// The value as f32 (exact).
    pub fn to_f32(self) -> f32 {
        let sign = if self.0 & 0x80 != 0 { -1.0 } else { 1.0 };
        let (exp, mant) = ((self.0 >> 3) & 0xf, self.0 & 7);
        if exp == 0xf && mant == 7 {
            return f32::NAN;
        }
        let mag = match exp {
            0 => f32::from(mant) * 2f32.powi(-9),
            e => (1.0 + f32::from(mant) / 8.0) * 2f32.powi(i32::from(e) - 7),
        };
        sign * mag
    }

    /// The value as f64 (exact).
    pub fn to_f64(self) -> f64 {
        f64::from(self.to_f32())
    }

    /// The nearest value to `x`: round to nearest even, saturating at ±448.
    pub fn from_f32(x: f32) -> F8E4M3 {
        let u = x.to_bits();
        let sign = ((u >> 24) & 0x80) as u8;
        let a = u & 0x7fff_ffff;
        let r = if a > 0x7f80_0000 {
            0x7f
        } else if a >= 0x43e0_0000 {
            0x7e
        } else if a < 0x3c80_0000 {
            // Subnormal (or rounds up to the smallest normal, code 8).
            (f32::from_bits(a) * 512.0).round_ties_even() as u32
        } else {
            let n = a + 0x7ffff + ((a >> 20) & 1);
            (n >> 20) - (120 << 3)
        };
        F8E4M3(r as u8 | sign)
    }

    /// The nearest value to `x`: round to nearest even, saturating at ±448,
    /// rounded once from the f64 (through f32 first, a value just past a
    /// midpoint could land on it and then round the wrong way).
    pub fn from_f64(x: f64) -> F8E4M3 {
        let u = x.to_bits();
        let sign = ((u >> 56) & 0x80) as u8;
        let a = u & 0x7fff_ffff_ffff_ffff;
        let r = if a > 0x7ff0_0000_0000_0000 {
            0x7f
        } else if a >= 448f64.to_bits() {
            0x7e
        } else if a < 2f64.powi(-6).to_bits() {
            // Subnormal (or rounds up to the smallest normal, code 8);
            // scaling by 512 is exact.
            (f64::from_bits(a) * 512.0).round_ties_even() as u64
        } else {
            // Keep 3 of the 52 mantissa bits, ties to even, then rebias the
            // exponent from 1023 to 7.
            let n = a + ((1u64 << 48) - 1) + ((a >> 49) & 1);
            (n >> 49) - (1016 << 3)
        };
        F8E4M3(r as u8 | sign)
    }

    /// Whether the value is NaN.
    pub fn is_nan(self) -> bool {
        self.0 & 0x7f == 0x7f
    }
}

impl fmt::Debug for F8E4M3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_f32())
    }
}

impl fmt::Display for F8E4M3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_f32())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every finite code and its value, from the format's definition.
    fn finite() -> Vec<(u8, f64)> {
        (0u8..=255)
            .filter(|b| b & 0x7f != 0x7f)
            .map(|b| {
                let (s, e, m) = (b >> 7, (b >> 3) & 15, b & 7);
                let mag = if e == 0 {
                    f64::from(m) / 8.0 * 2f64.powi(-6)
                } else {
                    (1.0 + f64::from(m) / 8.0) * 2f64.powi(i32::from(e) - 7)
                };
                (b, if s == 1 { -mag } else { mag })
            })
            .collect()
    }

    /// Round to nearest by search: the closest finite value, ties to the
    /// even code; beyond the largest, saturate.
    fn nearest(x: f64) -> u8 {
        let all = finite();
        let mut best = all[0];
        for &(b, v) in &all {
            let (d, db) = ((v - x).abs(), (best.1 - x).abs());
            let better =
                d < db || (d == db && b & 1 == 0 && (best.0 & 1 == 1 || v.signum() == x.signum()));
            if better {
                best = (b, v);
            }
        }
        if x.abs() >= 448.0 {
            return if x < 0.0 { 0xfe } else { 0x7e };
        }
        best.0
    }

    #[test]
    fn every_code_decodes_to_its_defined_value() {
        for (b, v) in finite() {
            assert_eq!(F8E4M3(b).to_f64(), v, "code {b:#04x}");
        }
        assert!(F8E4M3(0x7f).to_f32().is_nan() && F8E4M3(0xff).to_f32().is_nan());
        assert_eq!(F8E4M3(0x7e).to_f32(), 448.0);
        assert_eq!(F8E4M3(0x01).to_f32(), 2f32.powi(-9));
    }

    #[test]
    fn every_code_round_trips() {
        for (b, v) in finite() {
            let back = F8E4M3::from_f32(v as f32).0;
            // ±0 both round-trip to themselves.
            assert_eq!(back, b, "value {v}");
        }
    }

    #[test]
    fn rounding_matches_a_search_over_every_code() {
        // Every midpoint between neighbours, points just off them, and a
        // sweep over the whole range, both signs.
        let mut xs: Vec<f64> = Vec::new();
        let mut pos: Vec<f64> = finite().iter().map(|p| p.1).filter(|v| *v >= 0.0).collect();
        pos.sort_by(f64::total_cmp);
        for w in pos.windows(2) {
            let mid = (w[0] + w[1]) / 2.0;
            xs.extend([mid, mid * (1.0 + 1e-6), mid * (1.0 - 1e-6)]);
        }
        xs.extend((0..20_000).map(|i| f64::from(i) * 0.0231));
        xs.extend([448.0, 455.9, 464.0, 1e9, 1e-30]);
        for x in xs {
            for x in [x, -x] {
                let got = F8E4M3::from_f32(x as f32);
                let want = nearest(x);
                // -0.0 and +0.0 may differ only for values that round to 0.
                let same = got.0 == want || (got.0 & 0x7f == 0 && want & 0x7f == 0);
                assert!(same, "{x}: got {:#04x}, want {want:#04x}", got.0);
            }
        }
        // From f64, rounded once: just past a midpoint (closer than f32
        // can tell) still rounds away from it.
        for w in pos.windows(2) {
            let mid = (w[0] + w[1]) / 2.0;
            for x in [mid, mid * (1.0 + 1e-12), mid * (1.0 - 1e-12), w[0], w[1]] {
                for x in [x, -x] {
                    let (got, want) = (F8E4M3::from_f64(x).0, nearest(x));
                    let same = got == want || (got & 0x7f == 0 && want & 0x7f == 0);
                    assert!(same, "from_f64({x:e}): got {got:#04x}, want {want:#04x}");
                }
            }
        }
        for (x, want) in [
            (1e300, 0x7e),
            (-448.0, 0xfe),
            (464.0, 0x7e),
            (f64::INFINITY, 0x7e),
        ] {
            assert_eq!(F8E4M3::from_f64(x).0, want, "{x}");
        }
        assert!(F8E4M3::from_f64(f64::NAN).is_nan());
        assert_eq!(F8E4M3::from_f32(f32::INFINITY).0, 0x7e);
        assert_eq!(F8E4M3::from_f32(f32::NEG_INFINITY).0, 0xfe);
        assert!(F8E4M3::from_f32(f32::NAN).is_nan());
    }
}
