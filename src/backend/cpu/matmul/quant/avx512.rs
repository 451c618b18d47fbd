//! AVX-512 VNNI dot products of a quantized weight row with a quantized
//! activation row. Weight values are unsigned bytes (nibbles, 5- or 6-bit
//! values, or Q8_0's i8 biased by +128) and activations i8, which is exactly
//! what `vpdpbusd` multiplies: 4 byte products summed into each i32 lane.
//! Offsets (Q4_0's -8, Q6_K's -32, Q8_0's +128 bias) are taken out exactly in
//! integers with the activation sums; scales are applied per block in f32
//! lanes, summed across lanes once per row.
//!
//! Same integer sums as `scalar`, but the f32 additions run in another order,
//! so the two agree to rounding, not bitwise. Each (row, column) is always one
//! call of one kernel, so a row's result never depends on the batch.

use std::arch::x86_64::*;

use super::acts::{sum_width, ActRow};
use super::{scale_min_k4, DotFn};
use crate::backend::ggml::GgmlType;

/// Whether this CPU runs these kernels.
pub fn supported() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512vnni")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

/// The kernel for `ty`, if this CPU has the features (checked here, once per
/// call site, which makes the `unsafe` calls below sound).
pub fn kernel(ty: GgmlType) -> Option<DotFn> {
    if !supported() {
        return None;
    }
    // SAFETY (each closure): the features were just detected; the lengths are
    // checked by `checked`.
    Some(match ty {
        GgmlType::Q4_0 => |w, a, o| {
            rows(w, a, o, |w, a, o| unsafe {
                q4_x(w, checked(w, a, 18, 32), o, false)
            })
        },
        GgmlType::Q4_1 => |w, a, o| {
            rows(w, a, o, |w, a, o| unsafe {
                q4_x(w, checked(w, a, 20, 32), o, true)
            })
        },
        GgmlType::Q8_0 => |w, a, o| {
            rows(w, a, o, |w, a, o| unsafe {
                q8_0(w, checked(w, a, 34, 32), o)
            })
        },
        GgmlType::Q4K => |w, a, o| {
            one_by_one(w, a, o, |w, a| unsafe {
                q45_k(w, checked1(w, a, 144, 256), false)
            })
        },
        GgmlType::Q5K => |w, a, o| {
            one_by_one(w, a, o, |w, a| unsafe {
                q45_k(w, checked1(w, a, 176, 256), true)
            })
        },
        GgmlType::Q6K => {
            |w, a, o| one_by_one(w, a, o, |w, a| unsafe { q6_k(w, checked1(w, a, 210, 256)) })
        }
        _ => return None,
    })
}

/// `out[r] = f(w, a[r])` for every row.
fn one_by_one(w: &[u8], a: &[ActRow], out: &mut [f32], f: impl Fn(&[u8], ActRow) -> f32) {
    for (o, &ar) in out.iter_mut().zip(a) {
        *o = f(w, ar);
    }
}

/// `a`, after checking every row holds a value for every weight in `w`.
fn checked<'a, 'b>(
    w: &[u8],
    a: &'b [ActRow<'a>],
    block_bytes: usize,
    block: usize,
) -> &'b [ActRow<'a>] {
    for &ar in a {
        checked1(w, ar, block_bytes, block);
    }
    a
}

/// `a`, after checking it holds a value for every weight in `w`.
fn checked1<'a>(w: &[u8], a: ActRow<'a>, block_bytes: usize, block: usize) -> ActRow<'a> {
    let nb = w.len() / block_bytes;
    assert!(
        w.len() == nb * block_bytes
            && a.qs.len() >= nb * block
            && a.d.len() >= nb
            && a.sums.len() >= nb * block / sum_width(block),
        "quantized dot: weight row and activations disagree"
    );
    a
}

/// The 32 values of a 16-byte nibble array: low nibbles (values 0..16) then high.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
unsafe fn nibbles32(p: *const u8) -> __m256i {
    // SAFETY: the caller passes 16 readable bytes.
    let q = unsafe { _mm_loadu_si128(p.cast()) };
    _mm256_and_si256(
        _mm256_set_m128i(_mm_srli_epi16(q, 4), q),
        _mm256_set1_epi8(0x0F),
    )
}

/// Two 256-bit halves as one register, `lo` in lanes 0..8.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
fn join(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
}

/// `a` in i32 lanes 0..8, `b` in 8..16.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
fn halves_i32(a: i32, b: i32) -> __m512i {
    _mm512_mask_blend_epi32(0xFF00, _mm512_set1_epi32(a), _mm512_set1_epi32(b))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
fn halves_f32(a: f32, b: f32) -> __m512 {
    _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(a), _mm512_set1_ps(b))
}

/// An f16 of a block as f32 (F16C: exact, and inlined, unlike a library call).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
fn h(w: &[u8], at: usize) -> f32 {
    let bits = u16::from_le_bytes([w[at], w[at + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// Rows of activations one weight row is dotted with at once: the weight
/// blocks are unpacked once for all of them. Each row's arithmetic is the same
/// whatever `R` is (its own accumulators, the same operations in the same
/// order), so grouping rows never changes a result.
const R: usize = 4;

/// `out[r] = w · a[r]` for every row of `a`, `R` at a time, then one by one.
fn rows(w: &[u8], a: &[ActRow], out: &mut [f32], f: impl Fn(&[u8], &[ActRow], &mut [f32])) {
    let mut i = 0;
    while i < a.len() {
        let n = if a.len() - i >= R { R } else { 1 };
        f(w, &a[i..i + n], &mut out[i..i + n]);
        i += n;
    }
}

/// Q4_0 (`min` false: values nibble - 8) and Q4_1 (`min` true: nibble·d + m),
/// two blocks per 512-bit step, for up to `R` activation rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
unsafe fn q4_x(w: &[u8], a: &[ActRow], out: &mut [f32], min: bool) {
    let (bb, off) = if min { (20, 4) } else { (18, 2) };
    let nb = w.len() / bb;
    let n = a.len().min(R);
    let wp = w.as_ptr();
    let mut acc = [_mm512_setzero_ps(); R];
    let mut mins = [0f32; R];
    let mut b = 0;
    while b < nb {
        let two = b + 1 < nb;
        let b1 = if two { b + 1 } else { b };
        // SAFETY: blocks b (and b + 1 when `two`) lie in `w`, and their 32 (64)
        // activations in every `a[r].qs` (`checked`).
        unsafe {
            let nib_a = nibbles32(wp.add(bb * b + off));
            let nib = if two {
                join(nib_a, nibbles32(wp.add(bb * b1 + off)))
            } else {
                join(nib_a, _mm256_setzero_si256())
            };
            let (d0, d1) = (h(w, bb * b), if two { h(w, bb * b1) } else { 0.0 });
            let (m0, m1) = if min {
                (h(w, bb * b + 2), if two { h(w, bb * b1 + 2) } else { 0.0 })
            } else {
                (0.0, 0.0)
            };
            for r in 0..n {
                let ar = a[r];
                let xp = ar.qs.as_ptr().add(32 * b);
                let x = if two {
                    _mm512_loadu_si512(xp.cast())
                } else {
                    join(_mm256_loadu_si256(xp.cast()), _mm256_setzero_si256())
                };
                let mut p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), nib, x);
                let (s0, s1) = (
                    *ar.sums.get_unchecked(b),
                    if two { *ar.sums.get_unchecked(b1) } else { 0 },
                );
                let (da0, da1) = (*ar.d.get_unchecked(b), *ar.d.get_unchecked(b1));
                if !min {
                    // Σ (nibble - 8)·q: 8·Σq taken out as Σq from each of the 8 lanes.
                    p = _mm512_sub_epi32(p, halves_i32(s0, s1));
                }
                let scale = halves_f32(d0 * da0, d1 * da1);
                acc[r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(p), acc[r]);
                if min {
                    mins[r] += m0 * da0 * s0 as f32;
                    if two {
                        mins[r] += m1 * da1 * s1 as f32;
                    }
                }
            }
        }
        b += 2;
    }
    for r in 0..n {
        out[r] = _mm512_reduce_add_ps(acc[r]) + mins[r];
    }
}

/// Q8_0: the i8 weights biased to u8 (xor 0x80 adds 128), 128·Σq taken back
/// out; up to `R` activation rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
unsafe fn q8_0(w: &[u8], a: &[ActRow], out: &mut [f32]) {
    let nb = w.len() / 34;
    let n = a.len().min(R);
    let wp = w.as_ptr();
    let bias = _mm256_set1_epi8(0x80u8 as i8);
    let mut acc = [_mm512_setzero_ps(); R];
    let mut b = 0;
    while b < nb {
        let two = b + 1 < nb;
        let b1 = if two { b + 1 } else { b };
        // SAFETY: as in `q4_x`.
        unsafe {
            let load =
                |i: usize| _mm256_xor_si256(_mm256_loadu_si256(wp.add(34 * i + 2).cast()), bias);
            let wv = if two {
                join(load(b), load(b1))
            } else {
                join(load(b), _mm256_setzero_si256())
            };
            let (d0, d1) = (h(w, 34 * b), if two { h(w, 34 * b1) } else { 0.0 });
            for r in 0..n {
                let ar = a[r];
                let xp = ar.qs.as_ptr().add(32 * b);
                let x = if two {
                    _mm512_loadu_si512(xp.cast())
                } else {
                    join(_mm256_loadu_si256(xp.cast()), _mm256_setzero_si256())
                };
                let (s0, s1) = (
                    *ar.sums.get_unchecked(b),
                    if two { *ar.sums.get_unchecked(b1) } else { 0 },
                );
                let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, x);
                let p = _mm512_sub_epi32(p, halves_i32(16 * s0, 16 * s1));
                let scale = halves_f32(d0 * *ar.d.get_unchecked(b), d1 * *ar.d.get_unchecked(b1));
                acc[r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(p), acc[r]);
            }
        }
        b += 2;
    }
    for r in 0..n {
        out[r] = _mm512_reduce_add_ps(acc[r]);
    }
}

/// Q4_K and Q5_K (`five_bit`): per 64 values, sub-blocks 2c (low nibbles) and
/// 2c+1 (high nibbles) in one register, each lane scaled by its sub-block's scale.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
unsafe fn q45_k(w: &[u8], a: ActRow, five_bit: bool) -> f32 {
    let bb = if five_bit { 176 } else { 144 };
    let nb = w.len() / bb;
    let low4 = _mm256_set1_epi8(0x0F);
    let one = _mm256_set1_epi8(1);
    let mut acc = _mm512_setzero_ps();
    let mut mins = 0f32;
    for b in 0..nb {
        let blk = &w[bb * b..bb * (b + 1)];
        let sums = &a.sums[16 * b..16 * b + 16];
        let (d, dmin) = (h(blk, 0), h(blk, 2));
        let qs_at = if five_bit { 48 } else { 16 };
        let mut isum = _mm512_setzero_si512();
        let mut imin = 0i32;
        // SAFETY: `blk` holds the block's bytes (qh at 16..48 for Q5_K, qs at
        // `qs_at`..+128), and the block's 256 activations lie in `a.qs` (`checked`).
        unsafe {
            let qh = if five_bit {
                _mm256_loadu_si256(blk.as_ptr().add(16).cast())
            } else {
                _mm256_setzero_si256()
            };
            for c in 0..4 {
                let q = _mm256_loadu_si256(blk.as_ptr().add(qs_at + 32 * c).cast());
                let mut lo = _mm256_and_si256(q, low4);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low4);
                if five_bit {
                    let bit = |s: i64| {
                        let h = _mm256_srl_epi16(qh, _mm_cvtsi64_si128(s));
                        _mm256_slli_epi16(_mm256_and_si256(h, one), 4)
                    };
                    lo = _mm256_or_si256(lo, bit(2 * c as i64));
                    hi = _mm256_or_si256(hi, bit(2 * c as i64 + 1));
                }
                let x = _mm512_loadu_si512(a.qs.as_ptr().add(256 * b + 64 * c).cast());
                let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), join(lo, hi), x);
                let (s0, m0) = scale_min_k4(2 * c, &blk[4..16]);
                let (s1, m1) = scale_min_k4(2 * c + 1, &blk[4..16]);
                isum = _mm512_add_epi32(
                    isum,
                    _mm512_mullo_epi32(p, halves_i32(s0 as i32, s1 as i32)),
                );
                imin += m0 as i32 * (sums[4 * c] + sums[4 * c + 1]);
                imin += m1 as i32 * (sums[4 * c + 2] + sums[4 * c + 3]);
            }
        }
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d * a.d[b]), _mm512_cvtepi32_ps(isum), acc);
        mins += dmin * a.d[b] * imin as f32;
    }
    _mm512_reduce_add_ps(acc) - mins
}

/// Q6_K: per half of 128 values, the low nibbles of ql's 64 bytes are values
/// 0..64 and the high nibbles 64..128; qh's bit pairs 0, 1, 2, 3 top up groups of 32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
unsafe fn q6_k(w: &[u8], a: ActRow) -> f32 {
    let nb = w.len() / 210;
    let low4 = _mm512_set1_epi8(0x0F);
    let two = _mm512_set1_epi8(3);
    // Lane l of a 64-value step reads the scale of its 16 values: l / 4.
    let spread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    let mut acc = _mm512_setzero_ps();
    for b in 0..nb {
        let blk = &w[210 * b..210 * (b + 1)];
        let sums = &a.sums[16 * b..16 * b + 16];
        let mut isum = _mm512_setzero_si512();
        // SAFETY: `blk` is one 210-byte block (ql 0..128, qh 128..192, scales
        // 192..208); the block's 256 activations lie in `a.qs` (`checked`).
        unsafe {
            let p = blk.as_ptr();
            let scales = _mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(192).cast()));
            for h in 0..2 {
                let ql = _mm512_loadu_si512(p.add(64 * h).cast());
                let qh = _mm256_loadu_si256(p.add(128 + 32 * h).cast());
                let high = |s0: __m256i, s1: __m256i| {
                    _mm512_slli_epi16(_mm512_and_si512(join(s0, s1), two), 4)
                };
                let qh01 = high(qh, _mm256_srli_epi16(qh, 2));
                let qh23 = high(_mm256_srli_epi16(qh, 4), _mm256_srli_epi16(qh, 6));
                let v0 = _mm512_or_si512(_mm512_and_si512(ql, low4), qh01);
                let v1 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), low4), qh23);
                let x = a.qs.as_ptr().add(256 * b + 128 * h);
                let p0 =
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), v0, _mm512_loadu_si512(x.cast()));
                let p1 = _mm512_dpbusd_epi32(
                    _mm512_setzero_si512(),
                    v1,
                    _mm512_loadu_si512(x.add(64).cast()),
                );
                let base = 8 * h as i32;
                let sc0 = _mm512_permutexvar_epi32(
                    _mm512_add_epi32(spread, _mm512_set1_epi32(base)),
                    scales,
                );
                let sc1 = _mm512_permutexvar_epi32(
                    _mm512_add_epi32(spread, _mm512_set1_epi32(base + 4)),
                    scales,
                );
                isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(p0, sc0));
                isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(p1, sc1));
            }
        }
        // Σ (q - 32)·x: 32·Σ sc·(Σ x over its 16) taken out of lane 0.
        let offset: i32 = (0..16)
            .map(|s| 32 * (blk[192 + s] as i8 as i32) * sums[s])
            .sum();
        isum = _mm512_mask_sub_epi32(isum, 1, isum, _mm512_set1_epi32(offset));
        let d = h(blk, 208) * a.d[b];
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(isum), acc);
    }
    _mm512_reduce_add_ps(acc)
}
