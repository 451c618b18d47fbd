//! AVX-512 FP8 kernel. An e4m3 byte sign-extended to 16 bits, shifted left by
//! 7 and masked with `0xBF80` is the f16 whose value is the e4m3 value / 256
//! (same mantissa, exponent bias 15 instead of 7, subnormals included), which
//! `vcvtph2ps` widens exactly; the 256 is folded into the row scales. NaN codes
//! are refused at load, so they never reach here.
//!
//! Each dot product is one 16-lane f32 accumulator advanced chunk by chunk
//! (the tail masked), then `reduce_add`: the same operations whether the bytes
//! are converted in registers (few activation rows) or a group of weight rows
//! is decoded to f32 first (many), so a row's result does not depend on `m`.

use std::arch::x86_64::*;

use super::{Fp8Matrix, GroupKernel, GROUP};

/// Activation rows up to which the bytes are converted in registers.
const DIRECT_ROWS: usize = 2;

/// The kernel, constructed only where the CPU has its features (which makes
/// the `unsafe` calls below sound).
pub struct Avx512(());

impl Avx512 {
    pub fn new() -> Option<Avx512> {
        let ok = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("f16c");
        ok.then_some(Avx512(()))
    }
}

impl GroupKernel for Avx512 {
    fn group(&self, w: &Fp8Matrix, j0: usize, rows: usize, x: &[f32], m: usize, out: &mut [f32]) {
        let k = w.k;
        let codes: Vec<&[u8]> = (j0..j0 + rows).map(|j| w.row(j)).collect();
        if m <= DIRECT_ROWS {
            for (i, xr) in x.chunks(k).take(m).enumerate() {
                // SAFETY: features checked in `new`; every row has k bytes, xr k floats.
                unsafe { direct(&codes, xr, &mut out[i * GROUP..i * GROUP + rows]) };
            }
            return;
        }
        let mut decoded = vec![0f32; rows * k];
        for (r, d) in decoded.chunks_mut(k).enumerate() {
            // SAFETY: as above; d has k floats.
            unsafe { decode(codes[r], d) };
        }
        let decoded: Vec<&[f32]> = decoded.chunks(k).collect();
        for i in (0..m).step_by(2) {
            let x0 = &x[i * k..(i + 1) * k];
            let x1 = (i + 1 < m).then(|| &x[(i + 1) * k..(i + 2) * k]);
            let end = (i + 2).min(m) * GROUP;
            // SAFETY: as above; out holds the GROUP slots of rows i and i + 1.
            unsafe { from_decoded(&decoded, x0, x1, &mut out[i * GROUP..end]) };
        }
    }

    fn unit(&self) -> f32 {
        256.0
    }
}

/// The tail mask for `len` (< 16) remaining elements.
fn tail_mask(len: usize) -> u16 {
    ((1u32 << len) - 1) as u16
}

/// 16 codes (`len` of them, the rest zero) as f32 values / 256.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn widen(codes: *const u8, len: usize) -> __m512 {
    let bytes = if len == 16 {
        _mm_loadu_si128(codes.cast())
    } else {
        _mm_maskz_loadu_epi8(tail_mask(len), codes.cast())
    };
    let halves = _mm256_cvtepi8_epi16(bytes);
    let bits = _mm256_and_si256(
        _mm256_slli_epi16::<7>(halves),
        _mm256_set1_epi16(0xBF80u16 as i16),
    );
    _mm512_cvtph_ps(bits)
}

/// 32 codes as two vectors of f32 values / 256 (the same values as two [`widen`]s).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn widen32(codes: *const u8) -> (__m512, __m512) {
    let halves = _mm512_cvtepi8_epi16(_mm256_loadu_si256(codes.cast()));
    let bits = _mm512_and_si512(
        _mm512_slli_epi16::<7>(halves),
        _mm512_set1_epi16(0xBF80u16 as i16),
    );
    (
        _mm512_cvtph_ps(_mm512_castsi512_si256(bits)),
        _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(bits)),
    )
}

#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load_x(x: *const f32, len: usize) -> __m512 {
    if len == 16 {
        _mm512_loadu_ps(x)
    } else {
        _mm512_maskz_loadu_ps(tail_mask(len), x)
    }
}

/// Dots of up to GROUP code rows with `x`, converting the codes in registers
/// (32 at a time, then the 16-wide tail; the sums are those of 16-wide chunks).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn direct(codes: &[&[u8]], x: &[f32], out: &mut [f32]) {
    let mut acc = [_mm512_setzero_ps(); GROUP];
    let k = x.len();
    let mut c = 0;
    while c + 32 <= k {
        let x0 = _mm512_loadu_ps(x.as_ptr().add(c));
        let x1 = _mm512_loadu_ps(x.as_ptr().add(c + 16));
        if c % 64 == 0 {
            // The hardware prefetcher alone falls behind this loop (1.1B decode
            // matmuls streamed 32–34 GB/s, 40–58 with this): fetch each row's
            // line GROUP rows on (rows are contiguous: the next group's row).
            // `wrapping_add` and a prefetch past the end are both harmless.
            for row in codes {
                let ahead = row.as_ptr().wrapping_add(c + GROUP * k);
                _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            }
        }
        for (a, row) in acc.iter_mut().zip(codes) {
            let (w0, w1) = widen32(row.as_ptr().add(c));
            *a = _mm512_fmadd_ps(w1, x1, _mm512_fmadd_ps(w0, x0, *a));
        }
        c += 32;
    }
    while c < k {
        let len = (k - c).min(16);
        let xv = load_x(x.as_ptr().add(c), len);
        for (a, row) in acc.iter_mut().zip(codes) {
            *a = _mm512_fmadd_ps(widen(row.as_ptr().add(c), len), xv, *a);
        }
        c += 16;
    }
    for (o, a) in out.iter_mut().zip(&acc) {
        *o = _mm512_reduce_add_ps(*a);
    }
}

/// One code row as f32 values / 256 into `out`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn decode(codes: &[u8], out: &mut [f32]) {
    let k = out.len();
    let mut c = 0;
    while c < k {
        let len = (k - c).min(16);
        let v = widen(codes.as_ptr().add(c), len);
        if len == 16 {
            _mm512_storeu_ps(out.as_mut_ptr().add(c), v);
        } else {
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(c), tail_mask(len), v);
        }
        c += 16;
    }
}

/// Dots of up to GROUP decoded rows with two rows of `x` (`x1` may be absent):
/// per (row, column) the same sums as [`direct`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn from_decoded(rows: &[&[f32]], x0: &[f32], x1: Option<&[f32]>, out: &mut [f32]) {
    let mut acc0 = [_mm512_setzero_ps(); GROUP];
    let mut acc1 = [_mm512_setzero_ps(); GROUP];
    let k = x0.len();
    let x1p = x1.unwrap_or(x0).as_ptr();
    let mut c = 0;
    while c < k {
        let len = (k - c).min(16);
        let xv0 = load_x(x0.as_ptr().add(c), len);
        let xv1 = load_x(x1p.add(c), len);
        for ((a0, a1), row) in acc0.iter_mut().zip(acc1.iter_mut()).zip(rows) {
            let w = load_x(row.as_ptr().add(c), len);
            *a0 = _mm512_fmadd_ps(w, xv0, *a0);
            *a1 = _mm512_fmadd_ps(w, xv1, *a1);
        }
        c += 16;
    }
    for (r, (a0, a1)) in acc0.iter().zip(&acc1).take(rows.len()).enumerate() {
        out[r] = _mm512_reduce_add_ps(*a0);
        if x1.is_some() {
            out[GROUP + r] = _mm512_reduce_add_ps(*a1);
        }
    }
}
