//! Arrays as raw little-endian files: what the pack, the scratch folder
//! and the Python part exchange. No `unsafe`: every element goes through
//! its `to_le_bytes`.

use std::path::Path;

use attnforge_codegen::{DType, F8E4M3};
use attnforge_runtime::launch::Element;
use half::{bf16, f16};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The element type of a raw array (the names Python reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ty {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    Bf16,
    /// OCP e4m3fn, as its bit pattern.
    Fp8E4m3,
    /// `i32`.
    I32,
    /// `i64`.
    I64,
}

impl Ty {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            Ty::F32 | Ty::I32 => 4,
            Ty::F16 | Ty::Bf16 => 2,
            Ty::Fp8E4m3 => 1,
            Ty::I64 => 8,
        }
    }

    /// The type of a dtype.
    pub const fn of(d: DType) -> Ty {
        match d {
            DType::F32 => Ty::F32,
            DType::F16 => Ty::F16,
            DType::BF16 => Ty::Bf16,
            DType::F8E4M3 => Ty::Fp8E4m3,
        }
    }

    /// Element `i` of `bytes` as f64 (integers exactly).
    fn value(self, b: &[u8]) -> f64 {
        match self {
            Ty::F32 => f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Ty::F16 => f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f64(),
            Ty::Bf16 => bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f64(),
            Ty::Fp8E4m3 => F8E4M3(b[0]).to_f64(),
            Ty::I32 => f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Ty::I64 => i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f64,
        }
    }
}

/// Host types with a raw little-endian form.
pub trait Raw: Copy {
    /// Its type tag.
    const TY: Ty;
    /// Appends its bytes.
    fn put(self, out: &mut Vec<u8>);
    /// Reads one from exactly `TY.size()` bytes.
    fn get(b: &[u8]) -> Self;
}

macro_rules! raw_int {
    ($t:ty, $ty:expr, $n:expr) => {
        impl Raw for $t {
            const TY: Ty = $ty;
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn get(b: &[u8]) -> Self {
                let mut a = [0u8; $n];
                a.copy_from_slice(b);
                <$t>::from_le_bytes(a)
            }
        }
    };
}
raw_int!(f32, Ty::F32, 4);
raw_int!(i32, Ty::I32, 4);
raw_int!(i64, Ty::I64, 8);

impl Raw for f16 {
    const TY: Ty = Ty::F16;
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bits().to_le_bytes());
    }
    fn get(b: &[u8]) -> Self {
        f16::from_bits(u16::from_le_bytes([b[0], b[1]]))
    }
}

impl Raw for bf16 {
    const TY: Ty = Ty::Bf16;
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bits().to_le_bytes());
    }
    fn get(b: &[u8]) -> Self {
        bf16::from_bits(u16::from_le_bytes([b[0], b[1]]))
    }
}

impl Raw for F8E4M3 {
    const TY: Ty = Ty::Fp8E4m3;
    fn put(self, out: &mut Vec<u8>) {
        out.push(self.0);
    }
    fn get(b: &[u8]) -> Self {
        F8E4M3(b[0])
    }
}

/// A KV or query element type with a raw form (every [`Element`] is one).
pub trait RawElement: Element + Raw {}
impl<T: Element + Raw> RawElement for T {}

/// A named array of raw elements.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    /// Its name in the case (`k`, `q`, `out`, ...).
    pub name: String,
    /// Its element type.
    pub ty: Ty,
    /// Its elements, little-endian.
    pub bytes: Vec<u8>,
}

impl Array {
    /// The array of `xs`.
    pub fn new<T: Raw>(name: &str, xs: &[T]) -> Array {
        let mut bytes = Vec::with_capacity(xs.len() * T::TY.size());
        for &x in xs {
            x.put(&mut bytes);
        }
        Array {
            name: name.to_string(),
            ty: T::TY,
            bytes,
        }
    }

    /// Elements held.
    pub fn len(&self) -> usize {
        self.bytes.len() / self.ty.size()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The elements as f64.
    pub fn to_f64(&self) -> Vec<f64> {
        self.bytes
            .chunks_exact(self.ty.size())
            .map(|b| self.ty.value(b))
            .collect()
    }

    /// The elements as `T` (`None` when the type differs).
    pub fn typed<T: Raw>(&self) -> Option<Vec<T>> {
        (T::TY == self.ty).then(|| self.bytes.chunks_exact(T::TY.size()).map(T::get).collect())
    }

    /// Reads `count` elements of `ty` named `name` from `path`.
    pub fn read(path: &Path, name: &str, ty: Ty, count: usize) -> Result<Array, Error> {
        let bytes = crate::error::read(path)?;
        if bytes.len() != count * ty.size() {
            return Err(Error::bad_file(
                path,
                format!(
                    "{} bytes, but the manifest says {count} {ty:?} elements ({} bytes)",
                    bytes.len(),
                    count * ty.size()
                ),
            ));
        }
        Ok(Array {
            name: name.to_string(),
            ty,
            bytes,
        })
    }
}

/// Code generic over a case's query and KV element types, with their raw
/// forms (what [`attnforge_runtime::launch::WithElements`] is for elements
/// alone).
pub trait WithRaw {
    /// What the code returns.
    type Output;
    /// Runs it with `Q` for queries and outputs (an append's new rows) and
    /// `T` for K and V.
    fn run<Q: RawElement, T: RawElement>(self) -> Self::Output;
}

/// Runs `f` with the host types of dtypes `q` and `kv`.
pub fn with_raw<F: WithRaw>(q: DType, kv: DType, f: F) -> F::Output {
    fn kv_then<Q: RawElement, F: WithRaw>(kv: DType, f: F) -> F::Output {
        match kv {
            DType::F32 => f.run::<Q, f32>(),
            DType::F16 => f.run::<Q, f16>(),
            DType::BF16 => f.run::<Q, bf16>(),
            DType::F8E4M3 => f.run::<Q, F8E4M3>(),
        }
    }
    match q {
        DType::F32 => kv_then::<f32, F>(kv, f),
        DType::F16 => kv_then::<f16, F>(kv, f),
        DType::BF16 => kv_then::<bf16, F>(kv, f),
        DType::F8E4M3 => kv_then::<F8E4M3, F>(kv, f),
    }
}
