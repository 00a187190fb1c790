//! Conversions and the inline exp2 of the CPU lowering.
//!
//! Float conversions work on scalars and, elementwise, on vectors (the
//! host schedules convert whole K/V chunks at once), so the integer steps
//! below are written over "a value of `lanes` lanes" with splatted
//! constants.

use inkwell::types::BasicTypeEnum;
use inkwell::values::{BasicValue, BasicValueEnum, FloatValue, IntValue};
use inkwell::{FloatPredicate, IntPredicate};

use super::lower::{e, Lowerer, R};
use crate::ir::verify::type_of;
use crate::ir::{Expr, Lit, Scalar, Ty};

/// Float operations on a scalar or a vector.
#[derive(Clone, Copy)]
enum FOp {
    Sub,
    Mul,
}

/// Integer operations on a scalar or a vector of integers.
#[derive(Clone, Copy)]
enum IOp {
    And,
    Or,
    Add,
    Xor,
    Shl,
    LShr,
}

impl<'a, 'ctx> Lowerer<'a, 'ctx> {
    /// The type `s` with `lanes` lanes (a scalar for 1).
    fn lanes_ty(&self, s: Scalar, lanes: u8) -> BasicTypeEnum<'ctx> {
        self.ty(Ty { scalar: s, lanes })
    }

    /// The constant `c`, splatted over `lanes` (itself for 1).
    fn splat_k<V: BasicValue<'ctx> + Copy>(&self, c: V, lanes: u8) -> BasicValueEnum<'ctx> {
        if lanes == 1 {
            return c.as_basic_value_enum();
        }
        inkwell::types::VectorType::const_vector(&vec![c; lanes as usize]).into()
    }

    /// An i32 constant, splatted over `lanes`.
    fn ki(&self, n: u64, lanes: u8) -> BasicValueEnum<'ctx> {
        self.splat_k(self.cx.i32_type().const_int(n, false), lanes)
    }

    /// An i16 constant, splatted over `lanes`.
    fn ki16(&self, n: u64, lanes: u8) -> BasicValueEnum<'ctx> {
        self.splat_k(self.cx.i16_type().const_int(n, false), lanes)
    }

    /// An f32 constant, splatted over `lanes`.
    fn kf(&self, x: f64, lanes: u8) -> BasicValueEnum<'ctx> {
        self.splat_k(self.cx.f32_type().const_float(x), lanes)
    }

    fn iop(
        &self,
        op: IOp,
        a: BasicValueEnum<'ctx>,
        b: BasicValueEnum<'ctx>,
    ) -> R<BasicValueEnum<'ctx>> {
        macro_rules! go {
            ($x:expr, $y:expr) => {
                match op {
                    IOp::And => e(self.b.build_and($x, $y, "and"))?.into(),
                    IOp::Or => e(self.b.build_or($x, $y, "or"))?.into(),
                    IOp::Add => e(self.b.build_int_add($x, $y, "add"))?.into(),
                    IOp::Xor => e(self.b.build_xor($x, $y, "xor"))?.into(),
                    IOp::Shl => e(self.b.build_left_shift($x, $y, "shl"))?.into(),
                    IOp::LShr => e(self.b.build_right_shift($x, $y, false, "shr"))?.into(),
                }
            };
        }
        Ok(match (a, b) {
            (BasicValueEnum::IntValue(x), BasicValueEnum::IntValue(y)) => go!(x, y),
            (BasicValueEnum::VectorValue(x), BasicValueEnum::VectorValue(y)) => go!(x, y),
            _ => return Err("integer operation on mismatched values".into()),
        })
    }

    fn icmp(
        &self,
        p: IntPredicate,
        a: BasicValueEnum<'ctx>,
        b: BasicValueEnum<'ctx>,
    ) -> R<BasicValueEnum<'ctx>> {
        Ok(match (a, b) {
            (BasicValueEnum::IntValue(x), BasicValueEnum::IntValue(y)) => {
                e(self.b.build_int_compare(p, x, y, "c"))?.into()
            }
            (BasicValueEnum::VectorValue(x), BasicValueEnum::VectorValue(y)) => {
                e(self.b.build_int_compare(p, x, y, "c"))?.into()
            }
            _ => return Err("comparison of mismatched values".into()),
        })
    }

    fn sel(
        &self,
        c: BasicValueEnum<'ctx>,
        a: BasicValueEnum<'ctx>,
        b: BasicValueEnum<'ctx>,
    ) -> R<BasicValueEnum<'ctx>> {
        match c {
            BasicValueEnum::IntValue(c) => e(self.b.build_select(c, a, b, "sel")),
            BasicValueEnum::VectorValue(c) => e(self.b.build_select(c, a, b, "sel")),
            _ => Err("select on a non-boolean".into()),
        }
    }

    fn bitcast(&self, v: BasicValueEnum<'ctx>, s: Scalar, lanes: u8) -> R<BasicValueEnum<'ctx>> {
        e(self.b.build_bit_cast(v, self.lanes_ty(s, lanes), "bc"))
    }

    /// Integer width change (zero-extend or truncate) to `s`.
    fn iwidth(
        &self,
        v: BasicValueEnum<'ctx>,
        s: Scalar,
        lanes: u8,
        widen: bool,
    ) -> R<BasicValueEnum<'ctx>> {
        let t = self.lanes_ty(s, lanes);
        Ok(match (v, t) {
            (BasicValueEnum::IntValue(x), BasicTypeEnum::IntType(t)) if widen => {
                e(self.b.build_int_z_extend(x, t, "z"))?.into()
            }
            (BasicValueEnum::IntValue(x), BasicTypeEnum::IntType(t)) => {
                e(self.b.build_int_truncate(x, t, "t"))?.into()
            }
            (BasicValueEnum::VectorValue(x), BasicTypeEnum::VectorType(t)) if widen => {
                e(self.b.build_int_z_extend(x, t, "z"))?.into()
            }
            (BasicValueEnum::VectorValue(x), BasicTypeEnum::VectorType(t)) => {
                e(self.b.build_int_truncate(x, t, "t"))?.into()
            }
            _ => return Err("integer width change of mismatched values".into()),
        })
    }

    /// Integer sign extension to `s`.
    fn sext(&self, v: BasicValueEnum<'ctx>, s: Scalar, lanes: u8) -> R<BasicValueEnum<'ctx>> {
        let t = self.lanes_ty(s, lanes);
        Ok(match (v, t) {
            (BasicValueEnum::IntValue(x), BasicTypeEnum::IntType(t)) => {
                e(self.b.build_int_s_extend(x, t, "sx"))?.into()
            }
            (BasicValueEnum::VectorValue(x), BasicTypeEnum::VectorType(t)) => {
                e(self.b.build_int_s_extend(x, t, "sx"))?.into()
            }
            _ => return Err("integer sign extension of mismatched values".into()),
        })
    }

    /// Float width change (extend or truncate) to `s`.
    fn fwidth(&self, v: BasicValueEnum<'ctx>, s: Scalar, lanes: u8) -> R<BasicValueEnum<'ctx>> {
        let t = self.lanes_ty(s, lanes);
        let widen = s == Scalar::F32;
        Ok(match (v, t) {
            (BasicValueEnum::FloatValue(x), BasicTypeEnum::FloatType(t)) if widen => {
                e(self.b.build_float_ext(x, t, "ext"))?.into()
            }
            (BasicValueEnum::FloatValue(x), BasicTypeEnum::FloatType(t)) => {
                e(self.b.build_float_trunc(x, t, "trunc"))?.into()
            }
            (BasicValueEnum::VectorValue(x), BasicTypeEnum::VectorType(t)) if widen => {
                e(self.b.build_float_ext(x, t, "ext"))?.into()
            }
            (BasicValueEnum::VectorValue(x), BasicTypeEnum::VectorType(t)) => {
                e(self.b.build_float_trunc(x, t, "trunc"))?.into()
            }
            _ => return Err("float width change of mismatched values".into()),
        })
    }

    /// bf16 bits to f32: the bits are f32's upper half.
    fn bf16_to_f32(&self, v: BasicValueEnum<'ctx>, lanes: u8) -> R<BasicValueEnum<'ctx>> {
        let w = self.iwidth(v, Scalar::I32, lanes, true)?;
        let w = self.iop(IOp::Shl, w, self.ki(16, lanes))?;
        self.bitcast(w, Scalar::F32, lanes)
    }

    /// f32 to bf16 bits: round to nearest even; NaN stays a quiet NaN with
    /// its sign.
    fn f32_to_bf16(&self, x: BasicValueEnum<'ctx>, lanes: u8) -> R<BasicValueEnum<'ctx>> {
        let k = |n: u64| self.ki(n, lanes);
        let u = self.bitcast(x, Scalar::I32, lanes)?;
        let abs = self.iop(IOp::And, u, k(0x7fff_ffff))?;
        let nan = self.icmp(IntPredicate::UGT, abs, k(0x7f80_0000))?;
        let lsb = self.iop(IOp::LShr, u, k(16))?;
        let lsb = self.iop(IOp::And, lsb, k(1))?;
        let r = self.iop(IOp::Add, u, k(0x7fff))?;
        let r = self.iop(IOp::Add, r, lsb)?;
        let r = self.iop(IOp::LShr, r, k(16))?;
        let q = self.iop(IOp::LShr, u, k(16))?;
        let q = self.iop(IOp::Or, q, k(0x40))?;
        let bits = self.sel(nan, q, r)?;
        self.iwidth(bits, Scalar::BF16, lanes, false)
    }

    /// FP8 E4M3 ("fn") bits to f32, exactly. The sign and the 7 exponent
    /// and mantissa bits are laid into an f16 (bias 15 against e4m3's 7),
    /// which the host converts with one instruction, then scaled by 2^8;
    /// subnormals land on f16 subnormals the same way (exactly), and 0x7f /
    /// 0xff are NaN.
    /// The bit work is done in 16-bit lanes (twice as many per vector
    /// instruction as 32-bit ones): the byte sign-extended and shifted left
    /// by 7 puts the sign at bit 15 and the 7 bits at 13..7, with a copy of
    /// the sign at bit 14, which the NaN step below replaces. The values
    /// equal `af_to_f32(af_fp8e4m3)` in attnforge.h, which does the same in
    /// integer arithmetic.
    ///
    /// `times` (a power of two) multiplies the result: the f16's value
    /// times `times / 2^8` (no multiply at all for `times` = 2^-8, what the
    /// host schedules ask for: see [`Lowerer::fp8_times`]).
    pub(super) fn fp8_to_f32(
        &self,
        v: BasicValueEnum<'ctx>,
        lanes: u8,
        times: f32,
    ) -> R<BasicValueEnum<'ctx>> {
        let k = |n: u64| self.ki16(n, lanes);
        let w = self.sext(v, Scalar::BF16, lanes)?;
        let h = self.iop(IOp::Shl, w, k(7))?;
        // Bit 14 must become "bits 13..7 all ones" (0x7f / 0xff: the f16
        // exponent all ones over a nonzero mantissa, a NaN of the same
        // sign), and 0 otherwise. Adding bit 7 carries into bit 14 exactly
        // then, so the sum's bit 14 is the sign copy xor that carry, and
        // xor-ing the sum's bit 14 into h leaves the carry alone there (no
        // compare and select, no clearing step: two vector operations per
        // 16 elements in the decode loops).
        let carry = self.iop(IOp::Add, h, k(0x0080))?;
        let nan_bit = self.iop(IOp::And, carry, k(0x4000))?;
        let h = self.iop(IOp::Xor, h, nan_bit)?;
        let h = self.bitcast(h, Scalar::F16, lanes)?;
        let f = self.fwidth(h, Scalar::F32, lanes)?;
        match times * 256.0 {
            1.0 => Ok(f),
            m => self.fop(FOp::Mul, f, self.kf(m as f64, lanes)),
        }
    }

    /// For `a × b`: whether `a` converts fp8 codes to f32 and `b` is a
    /// power of two `2^k` (a literal, or one splatted over a vector) that
    /// keeps every fp8 value's product in f32's normal range (−117 ≤ k ≤
    /// 118): then the product is exact and [`Lowerer::fp8_to_f32`] gives it
    /// with its `times` = 2^k. The fp8 operand and `2^k` if so.
    pub(super) fn fp8_times<'e>(&self, a: &'e Expr, b: &Expr) -> R<Option<(&'e Expr, f32)>> {
        let Expr::Cast(Scalar::F32, inner) = a else {
            return Ok(None);
        };
        if type_of(self.k, inner)?.scalar != Scalar::F8E4M3 {
            return Ok(None);
        }
        let lit = |x: &Expr| match x {
            Expr::Lit(Lit::F32(c)) => Some(*c),
            _ => None,
        };
        let c = match b {
            Expr::Vector(v) => match v.iter().map(lit).collect::<Option<Vec<_>>>() {
                Some(cs) if cs.windows(2).all(|w| w[0].to_bits() == w[1].to_bits()) => {
                    cs.first().copied()
                }
                _ => None,
            },
            x => lit(x),
        };
        // fp8 magnitudes lie in [2^-9, 448]: 2^k keeps them in [2^-126,
        // f32::MAX] for k in -117..=118, and its exponent then is that of
        // a normal power of two with a zero mantissa.
        Ok(c.filter(|c| {
            let bits = c.to_bits();
            let exp = ((bits >> 23) & 0xff) as i32 - 127;
            bits & 0x807f_ffff == 0 && (-117..=118).contains(&exp)
        })
        .map(|c| (&**inner, c)))
    }

    /// Converts `v` (of `lanes` lanes) from `from` to `to`: floats round to
    /// nearest even, floats to integers truncate.
    pub(super) fn cast(
        &self,
        from: Scalar,
        to: Scalar,
        v: BasicValueEnum<'ctx>,
        lanes: u8,
    ) -> R<BasicValueEnum<'ctx>> {
        use Scalar::*;
        if from == to {
            return Ok(v);
        }
        let f32t = self.cx.f32_type();
        // Through f32 for the storage floats.
        let as_f32 = |v: BasicValueEnum<'ctx>| -> R<BasicValueEnum<'ctx>> {
            Ok(match from {
                F32 => v,
                F16 => self.fwidth(v, F32, lanes)?,
                BF16 => self.bf16_to_f32(v, lanes)?,
                F8E4M3 => self.fp8_to_f32(v, lanes, 1.0)?,
                I32 | I64 => e(self
                    .b
                    .build_signed_int_to_float(v.into_int_value(), f32t, "f"))?
                .into(),
                U32 | Bool => e(self
                    .b
                    .build_unsigned_int_to_float(v.into_int_value(), f32t, "f"))?
                .into(),
            })
        };
        Ok(match to {
            F32 => as_f32(v)?,
            F16 => self.fwidth(as_f32(v)?, F16, lanes)?,
            BF16 => self.f32_to_bf16(as_f32(v)?, lanes)?,
            F8E4M3 => {
                let x = as_f32(v)?.into_float_value();
                self.f32_to_fp8(x)?.into()
            }
            I32 | U32 | I64 | Bool => {
                let it = self.ty(Ty::scalar(to)).into_int_type();
                match from {
                    F32 | F16 | BF16 | F8E4M3 => {
                        let x = as_f32(v)?.into_float_value();
                        if to == U32 {
                            e(self.b.build_float_to_unsigned_int(x, it, "i"))?.into()
                        } else {
                            e(self.b.build_float_to_signed_int(x, it, "i"))?.into()
                        }
                    }
                    _ => {
                        let signed = matches!(from, I32 | I64);
                        e(self
                            .b
                            .build_int_cast_sign_flag(v.into_int_value(), it, signed, "i"))?
                        .into()
                    }
                }
            }
        })
    }

    /// 2^x inline, so that loops over lanes vectorise: x = n + f with n =
    /// round(x), |f| ≤ 1/2; 2^f by its Taylor series to degree 6 (relative
    /// error below 2e-7, about one ulp); 2^n built in the exponent bits.
    /// exp2(-inf) = 0, exp2(+inf) = inf, NaN stays NaN; results below 2^-126
    /// flush to zero, as the GPU's v_exp_f32 does with denormals off.
    pub(super) fn exp2(&self, x: BasicValueEnum<'ctx>, lanes: u8) -> R<BasicValueEnum<'ctx>> {
        let c = |v: f64| self.kf(v, lanes);
        let k = |n: u64| self.ki(n, lanes);
        let lo = self.fcmp(FloatPredicate::OLT, x, c(-126.0))?;
        let hi = self.fcmp(FloatPredicate::OGT, x, c(128.0))?;
        let xc = self.maxmin(true, Scalar::F32, x, c(-126.0))?;
        let xc = self.maxmin(false, Scalar::F32, xc, c(128.0))?;
        let n = self.intrinsic("llvm.rint", xc.get_type(), &[xc])?;
        let f = self.fop(FOp::Sub, xc, n)?;
        // ln2^k / k!
        let coef = [
            1.0,
            std::f64::consts::LN_2,
            0.240_226_506_959_100_7,
            0.055_504_108_664_821_58,
            0.009_618_129_107_628_477,
            0.001_333_355_814_642_844_3,
            0.000_154_035_303_933_816_1,
        ];
        let mut p = c(coef[6]);
        for k in (0..6).rev() {
            p = self.intrinsic("llvm.fma", p.get_type(), &[p, f, c(coef[k])])?;
        }
        let ni = self.fptosi(n, lanes)?;
        let bits = self.iop(IOp::Add, ni, k(127))?;
        let bits = self.iop(IOp::Shl, bits, k(23))?;
        // n = 128 would overflow the exponent: split 2^n = 2^(n-1)·2.
        let big = self.icmp(IntPredicate::SGE, ni, k(128))?;
        let bits = self.sel(big, k(254 << 23), bits)?;
        let scale = self.bitcast(bits, Scalar::F32, lanes)?;
        let r = self.fop(FOp::Mul, p, scale)?;
        let two = self.fop(FOp::Mul, r, c(2.0))?;
        let r = self.sel(big, two, r)?;
        let r = self.sel(lo, c(0.0), r)?;
        let r = self.sel(hi, c(f64::INFINITY), r)?;
        // NaN in, NaN out (the comparisons above are false for NaN).
        let nan = self.fcmp(FloatPredicate::UNO, x, x)?;
        self.sel(nan, x, r)
    }

    fn fcmp(
        &self,
        p: FloatPredicate,
        a: BasicValueEnum<'ctx>,
        b: BasicValueEnum<'ctx>,
    ) -> R<BasicValueEnum<'ctx>> {
        Ok(match (a, b) {
            (BasicValueEnum::FloatValue(x), BasicValueEnum::FloatValue(y)) => {
                e(self.b.build_float_compare(p, x, y, "fc"))?.into()
            }
            (BasicValueEnum::VectorValue(x), BasicValueEnum::VectorValue(y)) => {
                e(self.b.build_float_compare(p, x, y, "fc"))?.into()
            }
            _ => return Err("float comparison of mismatched values".into()),
        })
    }

    fn fop(
        &self,
        op: FOp,
        a: BasicValueEnum<'ctx>,
        b: BasicValueEnum<'ctx>,
    ) -> R<BasicValueEnum<'ctx>> {
        macro_rules! go {
            ($x:expr, $y:expr) => {
                match op {
                    FOp::Sub => e(self.b.build_float_sub($x, $y, "fs"))?.into(),
                    FOp::Mul => e(self.b.build_float_mul($x, $y, "fm"))?.into(),
                }
            };
        }
        Ok(match (a, b) {
            (BasicValueEnum::FloatValue(x), BasicValueEnum::FloatValue(y)) => go!(x, y),
            (BasicValueEnum::VectorValue(x), BasicValueEnum::VectorValue(y)) => go!(x, y),
            _ => return Err("float operation on mismatched values".into()),
        })
    }

    fn fptosi(&self, v: BasicValueEnum<'ctx>, lanes: u8) -> R<BasicValueEnum<'ctx>> {
        let t = self.lanes_ty(Scalar::I32, lanes);
        Ok(match (v, t) {
            (BasicValueEnum::FloatValue(x), BasicTypeEnum::IntType(t)) => {
                e(self.b.build_float_to_signed_int(x, t, "n"))?.into()
            }
            (BasicValueEnum::VectorValue(x), BasicTypeEnum::VectorType(t)) => {
                e(self.b.build_float_to_signed_int(x, t, "n"))?.into()
            }
            _ => return Err("float to integer of mismatched values".into()),
        })
    }

    /// f32 to FP8 E4M3 ("fn") bits: round to nearest even, saturate to
    /// ±448, NaN to NaN (the same steps as `af_f32_to_fp8e4m3`).
    fn f32_to_fp8(&self, x: FloatValue<'ctx>) -> R<IntValue<'ctx>> {
        let (i32t, f32t) = (self.cx.i32_type(), self.cx.f32_type());
        let c = |n: u64| i32t.const_int(n, false);
        let u = e(self.b.build_bit_cast(x, i32t, "u"))?.into_int_value();
        let sign = e(self.b.build_right_shift(u, c(24), false, "s"))?;
        let sign = e(self.b.build_and(sign, c(0x80), "s"))?;
        let a = e(self.b.build_and(u, c(0x7fff_ffff), "a"))?;
        // Normal: round the mantissa to 3 bits, then rebias (127 -> 7).
        let lsb = e(self.b.build_right_shift(a, c(20), false, "l"))?;
        let lsb = e(self.b.build_and(lsb, c(1), "l"))?;
        let n = e(self.b.build_int_add(a, c(0x7ffff), "n"))?;
        let n = e(self.b.build_int_add(n, lsb, "n"))?;
        let n = e(self.b.build_right_shift(n, c(20), false, "n"))?;
        let n = e(self.b.build_int_sub(n, c(120 << 3), "n"))?;
        // Subnormal: m·2^-9 with m rounded to even by adding 2^23.
        let af = e(self.b.build_bit_cast(a, f32t, "af"))?.into_float_value();
        let y = e(self.b.build_float_mul(af, f32t.const_float(512.0), "y"))?;
        let y = e(self
            .b
            .build_float_add(y, f32t.const_float(8_388_608.0), "y"))?;
        let y = e(self.b.build_bit_cast(y, i32t, "y"))?.into_int_value();
        let sub = e(self.b.build_int_sub(y, c(0x4b00_0000), "sub"))?;
        let small = e(self
            .b
            .build_int_compare(IntPredicate::ULT, a, c(0x3c80_0000), "small"))?;
        let r = e(self.b.build_select(small, sub, n, "r"))?.into_int_value();
        let big = e(self
            .b
            .build_int_compare(IntPredicate::UGE, a, c(0x43e0_0000), "big"))?;
        let r = e(self.b.build_select(big, c(0x7e), r, "r"))?.into_int_value();
        let nan = e(self
            .b
            .build_int_compare(IntPredicate::UGT, a, c(0x7f80_0000), "nan"))?;
        let r = e(self.b.build_select(nan, c(0x7f), r, "r"))?.into_int_value();
        let r = e(self.b.build_or(r, sign, "r"))?;
        e(self.b.build_int_truncate(r, self.cx.i8_type(), "f8"))
    }
}
