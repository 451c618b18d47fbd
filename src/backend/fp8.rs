//! The two OCP 8-bit floating-point formats (OCP FP8 spec v1.0) a KV cache
//! can be stored in, as vLLM's `fp8_e4m3` / `fp8_e5m2`: E4M3 (bias 7, no
//! infinities, only S.1111.111 is NaN, max 448) and E5M2 (bias 15, IEEE-like
//! infinities and NaNs, max 57344). Encoding rounds to nearest, ties to even,
//! and saturates to the largest finite value (infinities included), as CUDA's
//! `__NV_SATFINITE` conversion does; a NaN stays a NaN.

/// An 8-bit float format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fp8Format {
    E4M3,
    E5M2,
}

impl Fp8Format {
    const fn mantissa_bits(self) -> u32 {
        match self {
            Fp8Format::E4M3 => 3,
            Fp8Format::E5M2 => 2,
        }
    }

    const fn bias(self) -> i32 {
        match self {
            Fp8Format::E4M3 => 7,
            Fp8Format::E5M2 => 15,
        }
    }

    /// The largest finite value's bits (sign clear).
    const fn max_bits(self) -> u8 {
        match self {
            Fp8Format::E4M3 => 0x7E,
            Fp8Format::E5M2 => 0x7B,
        }
    }

    /// The NaN an encoding of NaN gives (sign clear).
    const fn nan_bits(self) -> u8 {
        match self {
            Fp8Format::E4M3 => 0x7F,
            Fp8Format::E5M2 => 0x7E,
        }
    }

    /// The largest finite value: 448 (E4M3) or 57344 (E5M2).
    pub fn max_finite(self) -> f32 {
        self.decode(self.max_bits())
    }

    /// The value of `bits`, exactly (every FP8 value is an f32).
    pub const fn decode(self, bits: u8) -> f32 {
        let m = self.mantissa_bits();
        let exp_field = ((bits & 0x7F) >> m) as i32;
        let mant = (bits & ((1 << m) - 1)) as u32;
        let negative = bits & 0x80 != 0;
        let special = match self {
            Fp8Format::E4M3 => exp_field == 15 && mant == 7,
            Fp8Format::E5M2 => exp_field == 31,
        };
        let magnitude = if special {
            if matches!(self, Fp8Format::E5M2) && mant == 0 {
                f32::INFINITY
            } else {
                f32::NAN
            }
        } else {
            // value = significand · 2^(exponent − m), with the significand an integer.
            let (significand, exponent) = if exp_field == 0 {
                (mant, 1 - self.bias())
            } else {
                (mant | (1 << m), exp_field - self.bias())
            };
            // 2^(exponent − m) is a normal f32 for both formats (≥ 2^-17).
            let scale = f32::from_bits(((exponent - m as i32 + 127) as u32) << 23);
            significand as f32 * scale
        };
        if negative {
            -magnitude
        } else {
            magnitude
        }
    }

    /// `x` rounded to nearest (ties to even) in this format, saturated to its
    /// largest finite value; NaN gives NaN.
    pub fn encode(self, x: f32) -> u8 {
        let sign = if x.is_sign_negative() { 0x80 } else { 0 };
        if x.is_nan() {
            return sign | self.nan_bits();
        }
        let a = x.abs();
        if a >= self.max_finite() {
            return sign | self.max_bits();
        }
        let m = self.mantissa_bits() as i32;
        let min_normal_exp = 1 - self.bias();
        // The exponent of a's binade, no lower than the subnormals' one.
        let binade = ((a.to_bits() >> 23) as i32 - 127).max(min_normal_exp);
        // Scaling by a power of two is exact, so the one rounding is this one:
        // the significand as an integer; 2^(m+1) carries into the next binade.
        let quantum = f32::from_bits(((binade - m + 127) as u32) << 23);
        let significand = (a / quantum).round_ties_even() as u32;
        let bits = if significand < (1 << m) {
            significand
        } else {
            (((binade + self.bias()) as u32) << m) + significand - (1 << m)
        };
        sign | bits as u8
    }

    /// `decode(bits) · scale`, bit for bit, without a table or a branch, so
    /// that a loop of it vectorizes: exponent and mantissa moved to an f32's
    /// places, rebiased by a multiplication by a power of two (exact, and it
    /// also normalizes subnormals), the all-ones codes made NaN or infinity.
    #[inline(always)]
    pub fn widen(self, bits: u8, scale: f32) -> f32 {
        let b = u32::from(bits);
        let sign = (b & 0x80) << 24;
        let m = self.mantissa_bits();
        let shifted = (b & 0x7F) << (23 - m);
        // 2^(127 - bias) as an f32.
        let rebias = f32::from_bits(((254 - self.bias()) as u32) << 23);
        let finite = (f32::from_bits(shifted) * rebias).to_bits();
        let magnitude = match self {
            // S.1111.111 is NaN; no infinities.
            Fp8Format::E4M3 if b & 0x7F == 0x7F => 0x7FC0_0000,
            // Exponent all ones: infinity (mantissa 0) or NaN.
            Fp8Format::E5M2 if b & 0x7C == 0x7C => 0x7F80_0000 | shifted,
            _ => finite,
        };
        f32::from_bits(sign | magnitude) * scale
    }

    /// `decode(b) · scale` for every bit pattern `b`: what a pool stored with
    /// `scale` reads back.
    pub fn dequant_table(self, scale: f32) -> Box<[f32; 256]> {
        Box::new(std::array::from_fn(|b| self.decode(b as u8) * scale))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's value of a bit pattern, written from its definition in f64.
    fn spec_value(format: Fp8Format, bits: u8) -> f64 {
        let (e_bits, m_bits, bias) = match format {
            Fp8Format::E4M3 => (4, 3, 7),
            Fp8Format::E5M2 => (5, 2, 15),
        };
        let sign = if bits & 0x80 != 0 { -1.0 } else { 1.0 };
        let e = i32::from((bits >> m_bits) & ((1 << e_bits) - 1));
        let mant = f64::from(bits & ((1 << m_bits) - 1));
        let frac = mant / f64::from(1 << m_bits);
        let all_ones = e == (1 << e_bits) - 1;
        match format {
            Fp8Format::E4M3 if all_ones && mant == 7.0 => f64::NAN,
            Fp8Format::E5M2 if all_ones && mant == 0.0 => sign * f64::INFINITY,
            Fp8Format::E5M2 if all_ones => f64::NAN,
            _ if e == 0 => sign * frac * 2f64.powi(1 - bias),
            _ => sign * (1.0 + frac) * 2f64.powi(e - bias),
        }
    }

    #[test]
    fn all_256_patterns_decode_as_the_spec_says() {
        for format in [Fp8Format::E4M3, Fp8Format::E5M2] {
            for bits in 0..=255u8 {
                let (got, want) = (format.decode(bits), spec_value(format, bits));
                if want.is_nan() {
                    assert!(got.is_nan(), "{format:?} {bits:#04x}");
                } else {
                    assert_eq!(f64::from(got), want, "{format:?} {bits:#04x}");
                    assert_eq!(got.is_sign_negative(), bits & 0x80 != 0);
                }
            }
        }
        // Values the spec names.
        assert_eq!(Fp8Format::E4M3.max_finite(), 448.0);
        assert_eq!(Fp8Format::E5M2.max_finite(), 57344.0);
        assert_eq!(Fp8Format::E4M3.decode(0x01), 2f32.powi(-9));
        assert_eq!(Fp8Format::E5M2.decode(0x01), 2f32.powi(-16));
        assert_eq!(Fp8Format::E5M2.decode(0xFC), f32::NEG_INFINITY);
        // E5M2 is the high byte of an IEEE half.
        for bits in 0..=255u8 {
            let half = half::f16::from_bits(u16::from(bits) << 8).to_f32();
            let got = Fp8Format::E5M2.decode(bits);
            assert!(
                got == half || (got.is_nan() && half.is_nan()),
                "{bits:#04x}"
            );
        }
    }

    #[test]
    fn widening_equals_decoding_times_the_scale() {
        for format in [Fp8Format::E4M3, Fp8Format::E5M2] {
            for scale in [1.0, 0.01, 3.7, 2f32.powi(-20)] {
                for bits in 0..=255u8 {
                    let (got, want) = (format.widen(bits, scale), format.decode(bits) * scale);
                    if want.is_nan() {
                        assert!(got.is_nan(), "{format:?} {bits:#04x}");
                    } else {
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{format:?} {bits:#04x} {scale}"
                        );
                    }
                }
            }
        }
    }

    /// The reference encoding: the nearest finite value by exhaustive search,
    /// the even pattern on a tie, the largest finite value beyond it.
    fn reference_encode(format: Fp8Format, x: f32) -> u8 {
        let sign = if x.is_sign_negative() { 0x80 } else { 0 };
        if x.abs() >= format.max_finite() {
            return sign | format.max_bits();
        }
        let x = f64::from(x);
        let mut best: Option<(f64, u8)> = None;
        for bits in 0..=255u8 {
            let v = spec_value(format, bits);
            if !v.is_finite() || (v == 0.0 && (bits & 0x80 != 0) != x.is_sign_negative()) {
                continue;
            }
            let d = (v - x).abs();
            let better = match best {
                None => true,
                Some((bd, bb)) => d < bd || (d == bd && bits & 1 == 0 && bb & 1 == 1),
            };
            if better {
                best = Some((d, bits));
            }
        }
        best.map(|(_, b)| b).unwrap_or(0)
    }

    #[test]
    fn encoding_rounds_to_nearest_even_and_saturates() {
        for format in [Fp8Format::E4M3, Fp8Format::E5M2] {
            // Every value, every midpoint between neighbours (the ties) and a
            // point either side of each, both signs, and a dense sweep.
            let finite: Vec<f32> = (0..=0x7Fu8)
                .map(|b| format.decode(b))
                .filter(|v| v.is_finite())
                .collect();
            let mut inputs: Vec<f32> = finite.clone();
            for w in finite.windows(2) {
                let mid = (w[0] + w[1]) / 2.0;
                inputs.extend([mid, mid.next_down(), mid.next_up()]);
            }
            let max = format.max_finite();
            inputs.extend([max * 1.01, max * 4.0, f32::MAX, f32::INFINITY, 1e-30, 0.0]);
            inputs.extend((0..20_000).map(|i| (i as f32 * 0.37).sin() * max * 1.1));
            inputs.extend((0..20_000).map(|i| 2f32.powf(-20.0 + i as f32 * 0.0015)));
            for &x in &inputs {
                for x in [x, -x] {
                    let (got, want) = (format.encode(x), reference_encode(format, x));
                    assert_eq!(got, want, "{format:?} {x:e}: {got:#04x} vs {want:#04x}");
                }
            }
            assert!(format.decode(format.encode(f32::NAN)).is_nan());
            // Round trip: every finite value encodes to itself.
            for bits in 0..=255u8 {
                if format.decode(bits).is_finite() {
                    assert_eq!(format.encode(format.decode(bits)), bits, "{format:?}");
                }
            }
        }
    }
}
