//! FP8 e4m3 ("e4m3fn": 1 sign, 4 exponent bits with bias 7, 3 mantissa bits, no
//! infinities, NaN at `S.1111.111`, largest finite 448) as FP8 checkpoints and
//! vLLM's `--quantization fp8` store weights: one byte per weight, and one f32
//! scale per output row (a per-tensor scale is repeated on every row, so fusing
//! and sharding matrices never has to merge scales).

use super::{DType, HostTensor, TensorBytes};

/// The largest finite e4m3 value; a dynamic per-tensor scale is `amax / 448`.
pub const E4M3_MAX: f32 = 448.0;

/// Every e4m3 byte's value (NaN for the two NaN codes).
pub static E4M3_TO_F32: [f32; 256] = e4m3_table();

const fn e4m3_table() -> [f32; 256] {
    let mut table = [0f32; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = e4m3_value(b as u8);
        b += 1;
    }
    table
}

const fn e4m3_value(b: u8) -> f32 {
    let exp = ((b >> 3) & 0xF) as i32;
    let man = (b & 7) as f32;
    let magnitude = if exp == 0xF && b & 7 == 7 {
        f32::NAN
    } else if exp == 0 {
        // Subnormal: m/8 · 2^-6.
        man / 512.0
    } else {
        let mut v = 1.0 + man / 8.0;
        let mut e = exp - 7;
        while e > 0 {
            v *= 2.0;
            e -= 1;
        }
        while e < 0 {
            v /= 2.0;
            e += 1;
        }
        v
    };
    if b & 0x80 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// Whether `b` is one of e4m3's NaN codes.
pub fn is_nan(b: u8) -> bool {
    b & 0x7F == 0x7F
}

/// `x` rounded to the nearest e4m3 value (ties to even), saturated to ±448 as
/// torch's `to(float8_e4m3fn)` after vLLM's clamp; NaN stays NaN.
pub fn f32_to_e4m3(x: f32) -> u8 {
    let sign = if x.is_sign_negative() { 0x80 } else { 0 };
    if x.is_nan() {
        return 0x7F | sign;
    }
    let a = x.abs().min(E4M3_MAX);
    // Binary search over the 127 non-negative finite codes (monotonic), then the
    // nearer neighbour, ties to the even code.
    let (mut lo, mut hi) = (0u8, 0x7E);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if E4M3_TO_F32[mid as usize] <= a {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let below = lo;
    if below == 0x7E || E4M3_TO_F32[below as usize] == a {
        return below | sign;
    }
    let above = below + 1;
    let (d_lo, d_hi) = (
        a - E4M3_TO_F32[below as usize],
        E4M3_TO_F32[above as usize] - a,
    );
    let code = if d_lo < d_hi || (d_lo == d_hi && below % 2 == 0) {
        below
    } else {
        above
    };
    code | sign
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
    let codes = values.iter().map(|&v| f32_to_e4m3(v / scale)).collect();
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
            assert_eq!(f32_to_e4m3(E4M3_TO_F32[b as usize]), b, "code {b:#x}");
        }
        // 1.0625 is halfway between 1.0 (0x38, even) and 1.125 (0x39): ties to even.
        assert_eq!(f32_to_e4m3(1.0625), 0x38);
        assert_eq!(f32_to_e4m3(1.07), 0x39);
        assert_eq!(f32_to_e4m3(1e6), 0x7E);
        assert_eq!(f32_to_e4m3(-1e6), 0xFE);
        assert_eq!(
            f32_to_e4m3(2f32.powi(-11)),
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
