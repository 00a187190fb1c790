//! Quantized matrix-vector products with llama.cpp's exact arithmetic.
//!
//! A small model such as SmolLM2-135M is chaotic under greedy decoding:
//! moving a logit by 1e-3 can change the 14th generated token. To produce
//! llama.cpp's tokens, the activations are quantized and the block dot
//! products summed the way ggml's x86 (AVX2) kernels do it, in the same
//! order: activations to Q8_1/Q8_0 with `127/amax` and round-half-even,
//! eight f32 lanes each accumulating `d_w·d_x·Σ(4 products)` by fused
//! multiply-add, the lanes summed pairwise as `hsum_float_8` does, and
//! Q4_1's `m·s` terms summed separately. Other weight types go through
//! candle's `QMatMul`.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Tensor};
use half::f16;
use rayon::prelude::*;

use crate::LlamaError;

const QK: usize = 32;

/// A weight matrix of `rows` outputs by `cols` inputs.
pub(crate) enum Weight {
    /// Q4_1 blocks against Q8_1 activations.
    Q4_1 {
        rows: usize,
        cols: usize,
        blocks: Blocks,
    },
    /// Q8_0 blocks against Q8_0 activations.
    Q8_0 {
        rows: usize,
        cols: usize,
        blocks: Blocks,
    },
    /// Any other type, through candle.
    Candle(QMatMul),
}

/// Weight blocks of 32 with their scales already in f32: `d`, `m` (Q4_1's
/// minimum; empty for Q8_0) and the packed values (16 bytes of nibbles, or
/// 32 signed bytes).
pub(crate) struct Blocks {
    d: Vec<f32>,
    m: Vec<f32>,
    qs: Vec<u8>,
}

impl Blocks {
    fn new(raw: &[u8], block_bytes: usize, has_m: bool) -> Blocks {
        let header = if has_m { 4 } else { 2 };
        let n = raw.len() / block_bytes;
        let mut b = Blocks {
            d: Vec::with_capacity(n),
            m: Vec::with_capacity(if has_m { n } else { 0 }),
            qs: Vec::with_capacity(n * (block_bytes - header)),
        };
        for blk in raw.chunks_exact(block_bytes) {
            b.d.push(f16_at(blk, 0));
            if has_m {
                b.m.push(f16_at(blk, 2));
            }
            b.qs.extend_from_slice(&blk[header..]);
        }
        b
    }
}

/// Activations of one row quantized in blocks of 32: scale `d`, the block's
/// `d·Σq` (`s`, Q8_1 only) and the values.
struct QRow {
    d: Vec<f32>,
    s: Vec<f32>,
    q: Vec<[i8; QK]>,
}

#[inline(always)]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// ggml's AVX2 `quantize_row_q8_1` / `q8_0` (same values; `s` for Q8_1).
fn quantize(x: &[f32]) -> QRow {
    let nb = x.len() / QK;
    let mut r = QRow {
        d: Vec::with_capacity(nb),
        s: Vec::with_capacity(nb),
        q: Vec::with_capacity(nb),
    };
    for blk in x.chunks_exact(QK) {
        let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut q = [0i8; QK];
        let mut sum = 0i32;
        for (o, &v) in q.iter_mut().zip(blk) {
            let n = (v * id).round_ties_even() as i32;
            *o = n as i8;
            sum += n;
        }
        r.d.push(f16::from_f32(d).to_f32());
        r.s.push(f16::from_f32(d * sum as f32).to_f32());
        r.q.push(q);
    }
    r
}

/// `hsum_float_8`: ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)).
fn hsum8(a: &[f32; 8]) -> f32 {
    let h = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    let p = [h[0] + h[2], h[1] + h[3]];
    p[0] + p[1]
}

/// One weight row (blocks `first..first + x.d.len()`) against activations.
type Dot = fn(&Blocks, usize, &QRow) -> f32;

fn dot_q4_1_scalar(w: &Blocks, first: usize, x: &QRow) -> f32 {
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    for ib in 0..x.d.len() {
        let b = first + ib;
        summs += w.m[b] * x.s[ib];
        let dd = w.d[b] * x.d[ib];
        let qs = &w.qs[b * 16..b * 16 + 16];
        let mut q = [0i8; QK];
        for j in 0..16 {
            q[j] = (qs[j] & 0x0f) as i8;
            q[j + 16] = (qs[j] >> 4) as i8;
        }
        lanes(&mut acc, dd, &q, &x.q[ib]);
    }
    hsum8(&acc) + summs
}

fn dot_q8_0_scalar(w: &Blocks, first: usize, x: &QRow) -> f32 {
    let mut acc = [0f32; 8];
    for ib in 0..x.d.len() {
        let b = first + ib;
        let dd = w.d[b] * x.d[ib];
        let mut q = [0i8; QK];
        for (o, &v) in q.iter_mut().zip(&w.qs[b * 32..b * 32 + 32]) {
            *o = v as i8;
        }
        lanes(&mut acc, dd, &q, &x.q[ib]);
    }
    hsum8(&acc)
}

/// Lane `l` of the accumulator gains `dd · Σ_{e in 4l..4l+4} w_e·x_e`,
/// fused (ggml's `_mm256_fmadd_ps` over `mul_sum_us8_pairs_float`).
fn lanes(acc: &mut [f32; 8], dd: f32, w: &[i8; QK], x: &[i8; QK]) {
    for (l, a) in acc.iter_mut().enumerate() {
        let mut isum = 0i32;
        for e in 4 * l..4 * l + 4 {
            isum += w[e] as i32 * x[e] as i32;
        }
        *a = dd.mul_add(isum as f32, *a);
    }
}

/// The same sums with AVX2 and FMA, in the same lanes and order as ggml's
/// x86 kernels (integer sums are exact, so only the f32 steps matter, and
/// they are the same instructions).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{hsum8, Blocks, QRow};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    fn dot(w: &Blocks, first: usize, x: &QRow, q4: bool) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut summs = 0f32;
        let ones = _mm256_set1_epi16(1);
        let low = _mm_set1_epi8(0x0f);
        for ib in 0..x.d.len() {
            let b = first + ib;
            let dd = _mm256_set1_ps(w.d[b] * x.d[ib]);
            let y = &x.q[ib];
            // SAFETY: `y` is 32 bytes; the weight slices below are 16 or 32
            // bytes long (checked by the slice bounds); unaligned loads.
            let qy = unsafe { _mm256_loadu_si256(y.as_ptr().cast()) };
            let prod = if q4 {
                summs += w.m[b] * x.s[ib];
                let qs = &w.qs[b * 16..b * 16 + 16];
                // SAFETY: as above.
                let packed = unsafe { _mm_loadu_si128(qs.as_ptr().cast()) };
                let lo = _mm_and_si128(packed, low);
                let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low);
                _mm256_maddubs_epi16(_mm256_set_m128i(hi, lo), qy)
            } else {
                let qs = &w.qs[b * 32..b * 32 + 32];
                // SAFETY: as above.
                let qx = unsafe { _mm256_loadu_si256(qs.as_ptr().cast()) };
                _mm256_maddubs_epi16(_mm256_sign_epi8(qx, qx), _mm256_sign_epi8(qy, qx))
            };
            let xy = _mm256_cvtepi32_ps(_mm256_madd_epi16(prod, ones));
            acc = _mm256_fmadd_ps(dd, xy, acc);
        }
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 f32.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        hsum8(&lanes) + summs
    }

    pub(super) fn q4_1(w: &Blocks, first: usize, x: &QRow) -> f32 {
        // SAFETY: only picked when the CPU has AVX2 and FMA (`pick`).
        unsafe { dot(w, first, x, true) }
    }

    pub(super) fn q8_0(w: &Blocks, first: usize, x: &QRow) -> f32 {
        // SAFETY: only picked when the CPU has AVX2 and FMA (`pick`).
        unsafe { dot(w, first, x, false) }
    }
}

fn pick(q4: bool) -> Dot {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        return if q4 { avx2::q4_1 } else { avx2::q8_0 };
    }
    if q4 {
        dot_q4_1_scalar
    } else {
        dot_q8_0_scalar
    }
}

impl Weight {
    /// The weight `name`, which must be `rows` × `cols`.
    pub(crate) fn new(
        t: QTensor,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Weight, LlamaError> {
        if t.shape().dims() != [rows, cols] {
            return Err(LlamaError::Unsupported(format!(
                "tensor {name:?} is {:?}, the model needs [{rows}, {cols}]",
                t.shape().dims()
            )));
        }
        match t.dtype() {
            GgmlDType::Q4_1 if cols.is_multiple_of(QK) => Ok(Weight::Q4_1 {
                rows,
                cols,
                blocks: Blocks::new(&t.data()?, 20, true),
            }),
            GgmlDType::Q8_0 if cols.is_multiple_of(QK) => Ok(Weight::Q8_0 {
                rows,
                cols,
                blocks: Blocks::new(&t.data()?, 34, false),
            }),
            _ => Ok(Weight::Candle(QMatMul::from_qtensor(t)?)),
        }
    }

    /// `x` is [n][cols]; returns [n][rows].
    pub(crate) fn matmul(&self, x: &[f32], n: usize) -> Result<Vec<f32>, LlamaError> {
        let (rows, cols, blocks, dot) = match self {
            Weight::Q4_1 { rows, cols, blocks } => (*rows, *cols, blocks, pick(true)),
            Weight::Q8_0 { rows, cols, blocks } => (*rows, *cols, blocks, pick(false)),
            Weight::Candle(m) => {
                let cols = x.len() / n.max(1);
                let t = Tensor::from_slice(x, (n, cols), &candle_core::Device::Cpu)?;
                return Ok(m.forward(&t)?.flatten_all()?.to_vec1::<f32>()?);
            }
        };
        if x.len() != n * cols {
            return Err(LlamaError::Unsupported(format!(
                "{} activations for {n} rows of {cols}",
                x.len()
            )));
        }
        let per_row = cols / QK;
        let qx: Vec<QRow> = x.chunks_exact(cols).map(quantize).collect();
        let mut out = vec![0f32; n * rows];
        out.par_chunks_mut(rows.max(1))
            .zip(&qx)
            .for_each(|(o, xr)| {
                o.par_iter_mut()
                    .with_min_len(64)
                    .enumerate()
                    .for_each(|(r, v)| *v = dot(blocks, r * per_row, xr));
            });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random blocks in the GGUF byte layout, and random activations.
    fn data(seed: u64, blocks: usize, bytes: usize, has_m: bool) -> (Vec<u8>, Vec<f32>) {
        let mut x = seed;
        let mut next = move || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u32
        };
        let mut raw = Vec::new();
        for _ in 0..blocks {
            let d = f16::from_f32((next() % 1000) as f32 * 1e-5 + 1e-4);
            raw.extend(d.to_le_bytes());
            if has_m {
                let m = f16::from_f32(-((next() % 1000) as f32) * 1e-4);
                raw.extend(m.to_le_bytes());
            }
            let header = if has_m { 4 } else { 2 };
            for _ in header..bytes {
                // Q8_0 values stay in -127..=127, as ggml writes them.
                let b = next() as u8;
                raw.push(if !has_m && b == 0x80 { 0x81 } else { b });
            }
        }
        let xs = (0..blocks * QK)
            .map(|_| (next() % 20001) as f32 / 1000.0 - 10.0)
            .collect();
        (raw, xs)
    }

    #[test]
    fn the_simd_and_scalar_dot_products_agree_bit_for_bit() {
        for (has_m, bytes) in [(true, 20), (false, 34)] {
            for seed in 0..20 {
                let (raw, xs) = data(seed, 18, bytes, has_m);
                let w = Blocks::new(&raw, bytes, has_m);
                let x = quantize(&xs);
                let scalar = if has_m {
                    dot_q4_1_scalar(&w, 0, &x)
                } else {
                    dot_q8_0_scalar(&w, 0, &x)
                };
                let picked = pick(has_m)(&w, 0, &x);
                assert_eq!(scalar.to_bits(), picked.to_bits(), "seed {seed}");
                // And both are the dot product, to f32 rounding.
                let exact: f64 = (0..18)
                    .map(|b| {
                        (0..QK)
                            .map(|e| {
                                let q = if has_m {
                                    let byte = w.qs[b * 16 + e % 16];
                                    (if e < 16 { byte & 15 } else { byte >> 4 }) as f64
                                } else {
                                    w.qs[b * 32 + e] as i8 as f64
                                };
                                let wv =
                                    w.d[b] as f64 * q + if has_m { w.m[b] as f64 } else { 0.0 };
                                wv * x.d[b] as f64 * x.q[b][e] as f64
                            })
                            .sum::<f64>()
                    })
                    .sum();
                let s_err: f64 = if has_m {
                    // `s` is d·Σq rounded to f16, as in ggml.
                    (0..18).map(|b| (w.m[b] * x.s[b]).abs() as f64 * 1e-3).sum()
                } else {
                    0.0
                };
                assert!(
                    (scalar as f64 - exact).abs() <= 1e-4 * exact.abs().max(1.0) + s_err,
                    "seed {seed}: {scalar} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn activations_quantize_like_ggml() {
        let xs: Vec<f32> = (0..QK).map(|i| i as f32 - 10.5).collect();
        let q = quantize(&xs);
        // amax 20.5: d = 20.5/127, and -10.5·127/20.5 = -65.04.. rounds to -65.
        assert_eq!(q.d[0], f16::from_f32(20.5 / 127.0).to_f32());
        assert_eq!(q.q[0][0], -65);
        assert_eq!(q.q[0][31], 127);
        let sum: i32 = q.q[0].iter().map(|&v| v as i32).sum();
        assert_eq!(q.s[0], f16::from_f32(20.5 / 127.0 * sum as f32).to_f32());
    }
}
