//! The two OCP 8-bit floating-point formats (OCP FP8 spec v1.0) a KV cache
//! can be stored in, as vLLM's `fp8_e4m3` / `fp8_e5m2`: E4M3 (bias 7, no
//! infinities, only S.1111.111 is NaN, max 448) and E5M2 (bias 15, IEEE-like
//! infinities and NaNs, max 57344). Encoding rounds to nearest, ties to even,
//! and saturates to the largest finite value (infinities included), as CUDA's
//! `__NV_SATFINITE` conversion does; a NaN stays a NaN.
//!
//! FP8 weights (checkpoints in the compressed-tensors layout, vLLM's
//! `--quantization fp8`) are E4M3: one byte per weight and one f32 scale per
//! output row (a per-tensor scale is repeated on every row, so fusing and
//! sharding matrices never has to merge scales).

use super::{DType, HostTensor, TensorBytes};

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

/// The largest finite E4M3 value; a dynamic per-tensor scale is `amax / 448`.
pub const E4M3_MAX: f32 = 448.0;

/// Every E4M3 byte's value (NaN for the two NaN codes), for the weight kernels.
pub static E4M3_TO_F32: [f32; 256] = e4m3_table();

const fn e4m3_table() -> [f32; 256] {
    let mut table = [0f32; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = Fp8Format::E4M3.decode(b as u8);
        b += 1;
    }
    table
}

/// Whether `b` is one of E4M3's NaN codes.
pub fn is_nan(b: u8) -> bool {
    b & 0x7F == 0x7F
}

/// Quantizes `values` (an `[n, k]` matrix) with one dynamic scale for the whole
/// tensor, as vLLM's `--quantization fp8` does: `scale = amax / 448` (1 for an
/// all-zero matrix). Returns the codes and the scale.
pub fn quantize_per_tensor(values: &[f32]) -> (Vec<u8>, f32) {
    let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = if amax > 0.0 && amax.is_finite() {
        amax / E4M3_MAX
    } else {
        1.0
    };
    let codes = values
        .iter()
        .map(|&v| Fp8Format::E4M3.encode(v / scale))
        .collect();
    (codes, scale)
}

/// Dequantizes an `[n, k]` matrix of codes with one scale per row into `out`.
pub fn dequantize(codes: &[u8], row_scales: &[f32], out: &mut [f32]) {
    let k = codes.len() / row_scales.len().max(1);
    for ((row, out), &scale) in codes
        .chunks(k.max(1))
        .zip(out.chunks_mut(k.max(1)))
        .zip(row_scales)
    {
        for (o, &b) in out.iter_mut().zip(row) {
            *o = E4M3_TO_F32[b as usize] * scale;
        }
    }
}

/// `t` (a matrix in f32, f16 or bf16) quantized to e4m3 with one dynamic scale
/// ([`quantize_per_tensor`]); anything else (GGUF blocks, FP8 already, vectors)
/// as it is.
pub fn quantize_matrix(t: HostTensor) -> HostTensor {
    if t.shape.len() != 2 || t.quant.is_some() || t.fp8_scales.is_some() {
        return t;
    }
    let bytes = t.bytes.as_slice();
    let values: Vec<f32> = match t.dtype {
        DType::F32 => bytemuck::pod_collect_to_vec(bytes),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    };
    let (codes, scale) = quantize_per_tensor(&values);
    HostTensor {
        dtype: DType::F32,
        bytes: TensorBytes::Owned(codes),
        fp8_scales: Some(vec![scale; t.shape[0]]),
        ..t
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

    #[test]
    fn known_codes_decode_to_their_values() {
        assert_eq!(E4M3_TO_F32[0x00], 0.0);
        assert_eq!(E4M3_TO_F32[0x38], 1.0);
        assert_eq!(E4M3_TO_F32[0x7E], 448.0);
        assert_eq!(E4M3_TO_F32[0xFE], -448.0);
        assert_eq!(E4M3_TO_F32[0x01], 2f32.powi(-9));
        assert_eq!(E4M3_TO_F32[0x08], 2f32.powi(-6));
        assert_eq!(E4M3_TO_F32[0x3C], 1.5);
        assert!(E4M3_TO_F32[0x7F].is_nan() && E4M3_TO_F32[0xFF].is_nan());
    }

    #[test]
    fn every_finite_code_round_trips_and_rounding_is_to_nearest() {
        for b in 0..=255u8 {
            if is_nan(b) || b == 0x80 {
                continue;
            }
            assert_eq!(
                Fp8Format::E4M3.encode(E4M3_TO_F32[b as usize]),
                b,
                "code {b:#x}"
            );
        }
        // 1.0625 is halfway between 1.0 (0x38, even) and 1.125 (0x39): ties to even.
        assert_eq!(Fp8Format::E4M3.encode(1.0625), 0x38);
        assert_eq!(Fp8Format::E4M3.encode(1.07), 0x39);
        assert_eq!(Fp8Format::E4M3.encode(1e6), 0x7E);
        assert_eq!(Fp8Format::E4M3.encode(-1e6), 0xFE);
        assert_eq!(
            Fp8Format::E4M3.encode(2f32.powi(-11)),
            0x00,
            "below half the smallest subnormal"
        );
    }

    #[test]
    fn per_tensor_scale_maps_the_largest_magnitude_to_448() {
        let (codes, scale) = quantize_per_tensor(&[0.5, -2.0, 1.0]);
        assert_eq!(scale, 2.0 / 448.0);
        assert_eq!(codes[1], 0xFE);
        let (zeros, one) = quantize_per_tensor(&[0.0; 4]);
        assert_eq!((zeros, one), (vec![0; 4], 1.0));
    }
}
