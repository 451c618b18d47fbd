//! The K-quants (Q4_K, Q5_K, Q6_K) in the 16-row tiles of `tiled`: the same
//! `vpdpbusd` over 4 quant bytes of 16 rows, with the integer sub-block scales
//! applied per lane before the block's one float scaling. Records, one per
//! (16-row group, 256-value block), of 64-byte lines:
//! - line 0: the rows' `d` (16 f16), then `dmin` (Q4_K/Q5_K; Q6_K: zero);
//! - lines 1–4: Q4_K/Q5_K: byte `16g + j` the 6-bit scale of sub-block `g` of row
//!   `j`, byte `128 + 16g + j` its min; Q6_K: byte `16h + j` the i8 scale of
//!   16-value sub-block `h`;
//! - per 32-value group `g`: 4 nibble lines as Q4_0's (line `t` lane `j` byte `i`:
//!   value `4t+i` low, `16+4t+i` high), then the high bits: Q5_K one line whose
//!   lane `j` byte `i` bit `r` is bit 4 of value `OFFS[r]+i`; Q6_K two lines, line
//!   `p` byte `i` bits `2s, 2s+1` are bits 4–5 of value `OFFS[4p+s]+i`.
//!
//! The registers of values 0–15 and 16–31 of a group are kept apart, so Q6_K's two
//! 16-value sub-blocks each get their own scale.

// Block layouts and per-row registers read most plainly with the index written out.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::scale_min_k4;
use super::tiled::{prefetch_ahead, Line, TILE};
use crate::backend::ggml::GgmlType;

/// The values each of a group's 8 registers holds (4 per lane, from this offset):
/// even registers values 0–15, odd ones 16–31.
const OFFS: [usize; 8] = [0, 16, 4, 20, 8, 24, 12, 28];

/// One block's fields, unpacked: unsigned quants (Q6_K's before its −32), the
/// sub-block scales (Q6_K: 16 i8 as bytes) and mins (Q6_K: none).
struct KParts {
    d: [u8; 2],
    dmin: [u8; 2],
    scales: Vec<u8>,
    mins: Vec<u8>,
    q: [u8; 256],
}

impl KParts {
    fn of(ty: GgmlType, blk: &[u8]) -> KParts {
        let mut q = [0u8; 256];
        if ty == GgmlType::Q6K {
            let (ql, qh) = (&blk[0..128], &blk[128..192]);
            for e in 0..256 {
                let (h, r) = (e / 128, e % 128);
                let (g, l) = (r / 32, r % 32);
                let low = (ql[64 * h + 32 * (g % 2) + l] >> (4 * (g / 2))) & 0xF;
                q[e] = low | (((qh[32 * h + l] >> (2 * g)) & 3) << 4);
            }
            return KParts {
                d: [blk[208], blk[209]],
                dmin: [0, 0],
                scales: blk[192..208].to_vec(),
                mins: vec![],
                q,
            };
        }
        let five_bit = ty == GgmlType::Q5K;
        let (qh, qs) = if five_bit {
            (&blk[16..48], &blk[48..176])
        } else {
            (&blk[0..0], &blk[16..144])
        };
        let (mut scales, mut mins) = (vec![0u8; 8], vec![0u8; 8]);
        for s in 0..8 {
            (scales[s], mins[s]) = scale_min_k4(s, &blk[4..16]);
            for l in 0..32 {
                let v = (qs[32 * (s / 2) + l] >> (4 * (s % 2))) & 0xF;
                q[32 * s + l] = v | (u8::from(five_bit && qh[l] & (1 << s) != 0) << 4);
            }
        }
        KParts {
            d: [blk[0], blk[1]],
            dmin: [blk[2], blk[3]],
            scales,
            mins,
            q,
        }
    }
}

/// Lines per group after the 4 nibble lines.
fn high_lines(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q4K => 0,
        GgmlType::Q5K => 1,
        _ => 2,
    }
}

/// Lines per (tile, block) record.
pub(super) fn record_lines(ty: GgmlType) -> usize {
    5 + 8 * (4 + high_lines(ty))
}

/// Writes row `lane`'s block `blk` (raw GGUF bytes) into its record.
pub(super) fn repack_block(ty: GgmlType, blk: &[u8], lane: usize, rec: &mut [Line]) {
    let parts = KParts::of(ty, blk);
    let head = &mut rec[0].0;
    head[2 * lane..2 * lane + 2].copy_from_slice(&parts.d);
    head[32 + 2 * lane..34 + 2 * lane].copy_from_slice(&parts.dmin);
    for (s, &sc) in parts.scales.iter().enumerate() {
        let at = 16 * s + lane;
        rec[1 + at / 64].0[at % 64] = sc;
    }
    for (g, &m) in parts.mins.iter().enumerate() {
        let at = 128 + 16 * g + lane;
        rec[1 + at / 64].0[at % 64] = m;
    }
    let per_group = 4 + high_lines(ty);
    for (g, q) in parts.q.chunks_exact(32).enumerate() {
        let lines = &mut rec[5 + g * per_group..5 + (g + 1) * per_group];
        for t in 0..4 {
            for i in 0..4 {
                lines[t].0[4 * lane + i] = (q[4 * t + i] & 0xF) | ((q[16 + 4 * t + i] & 0xF) << 4);
            }
        }
        for (r, &off) in OFFS.iter().enumerate() {
            for i in 0..4 {
                let high = q[off + i] >> 4;
                if ty == GgmlType::Q5K {
                    lines[4].0[4 * lane + i] |= high << r;
                } else if ty == GgmlType::Q6K {
                    lines[4 + r / 4].0[4 * lane + i] |= high << (2 * (r % 4));
                }
            }
        }
    }
}

/// Register `r`'s high bits (moved to bit 4 of each byte) from the group's bit planes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn high_bits(ty: GgmlType, planes: &[__m512i; 2], r: usize) -> __m512i {
    // Shifts within 16-bit lanes: the mask drops whatever crossed a byte.
    let (plane, bit, mask) = if ty == GgmlType::Q5K {
        (planes[0], r, 0x10)
    } else {
        (planes[r / 4], 2 * (r % 4), 0x30)
    };
    let moved = match bit {
        0 => _mm512_slli_epi16(plane, 4),
        1 => _mm512_slli_epi16(plane, 3),
        2 => _mm512_slli_epi16(plane, 2),
        3 => _mm512_slli_epi16(plane, 1),
        4 => plane,
        5 => _mm512_srli_epi16(plane, 1),
        6 => _mm512_srli_epi16(plane, 2),
        _ => _mm512_srli_epi16(plane, 3),
    };
    _mm512_and_si512(moved, _mm512_set1_epi8(mask))
}

/// A group's 8 registers of unsigned quants (16 rows × 4 values each).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn unpack(ty: GgmlType, lines: &[Line]) -> [__m512i; 8] {
    // SAFETY (all loads): the caller passes the group's 4 + high_lines(ty) lines.
    let load = |t: usize| unsafe { _mm512_load_si512(lines[t].0.as_ptr().cast()) };
    let low4 = _mm512_set1_epi8(0x0F);
    let mut w = [_mm512_setzero_si512(); 8];
    for t in 0..4 {
        let raw = load(t);
        w[2 * t] = _mm512_and_si512(raw, low4);
        w[2 * t + 1] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low4);
    }
    if ty != GgmlType::Q4K {
        let planes = [
            load(4),
            if ty == GgmlType::Q6K {
                load(5)
            } else {
                load(4)
            },
        ];
        for (r, reg) in w.iter_mut().enumerate() {
            *reg = _mm512_or_si512(*reg, high_bits(ty, &planes, r));
        }
    }
    w
}

/// 16 bytes of a record's scale lines, from byte `at` of lines 1–4.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn scales_at(rec: &[Line], at: usize) -> __m128i {
    // SAFETY: `at` is a multiple of 16 below 256, inside lines 1–4.
    unsafe { _mm_load_si128(rec[1 + at / 64].0.as_ptr().add(at % 64).cast()) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn widen(bytes: __m128i, signed: bool) -> __m512i {
    if signed {
        _mm512_cvtepi8_epi32(bytes)
    } else {
        _mm512_cvtepu8_epi32(bytes)
    }
}

/// `acc[r][j] = Σ_b w_j(b) · a_r(b)` for the tile's 16 rows `j` and the `N`
/// activation rows (256-wide blocks): each row by the same operations whatever
/// `N` is; `PREFETCH` as `tiled::tile`'s.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
pub(super) unsafe fn tile<const N: usize, const PREFETCH: bool>(
    ty: GgmlType,
    records: &[Line],
    a: &[super::acts::ActRow],
    acc: &mut [[f32; TILE]],
) {
    let (rl, per_group, q6) = (record_lines(ty), 4 + high_lines(ty), ty == GgmlType::Q6K);
    let mut sum = [_mm512_setzero_ps(); N];
    for (b, rec) in records.chunks_exact(rl).enumerate() {
        let head = rec[0].0.as_ptr();
        // SAFETY: line 0 holds 16 f16 `d` then 16 f16 `dmin`.
        let (dw, mw) = unsafe {
            (
                _mm512_cvtph_ps(_mm256_load_si256(head.cast())),
                _mm512_cvtph_ps(_mm256_load_si256(head.add(32).cast())),
            )
        };
        let mut isc = [_mm512_setzero_si512(); N];
        let mut imin = [_mm512_setzero_si512(); N];
        for g in 0..8 {
            // The group's lines, and the record's 5 head lines with the first group.
            let (from, to) = (
                if g == 0 { 0 } else { 5 + g * per_group },
                5 + (g + 1) * per_group,
            );
            if PREFETCH {
                prefetch_ahead(rec, from, to - from);
            }
            // SAFETY: the record holds 8 groups of `per_group` lines after line 4.
            let w = unsafe { unpack(ty, &rec[5 + g * per_group..5 + (g + 1) * per_group]) };
            // SAFETY: offsets below 256 (see the layout).
            let (sc_lo, sc_hi, m) = unsafe {
                if q6 {
                    let lo = widen(scales_at(rec, 32 * g), true);
                    (lo, widen(scales_at(rec, 32 * g + 16), true), lo)
                } else {
                    let sc = widen(scales_at(rec, 16 * g), false);
                    (sc, sc, widen(scales_at(rec, 128 + 16 * g), false))
                }
            };
            for r in 0..N {
                let ar = a[r];
                let q = ar.qs[256 * b + 32 * g..256 * b + 32 * g + 32].as_ptr();
                // SAFETY: each offset + 4 ≤ 32, inside the group's activations.
                let x = |i: usize| unsafe {
                    _mm512_set1_epi32(q.add(OFFS[i]).cast::<i32>().read_unaligned())
                };
                let mut lo = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[0], x(0));
                let mut hi = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[1], x(1));
                for i in (2..8).step_by(2) {
                    lo = _mm512_dpbusd_epi32(lo, w[i], x(i));
                    hi = _mm512_dpbusd_epi32(hi, w[i + 1], x(i + 1));
                }
                let (s0, s1) = (ar.sums[16 * b + 2 * g], ar.sums[16 * b + 2 * g + 1]);
                if q6 {
                    // x = d·sc·(q − 32): 32·Σa comes off each 16-value sub-block.
                    lo = _mm512_sub_epi32(lo, _mm512_set1_epi32(32 * s0));
                    hi = _mm512_sub_epi32(hi, _mm512_set1_epi32(32 * s1));
                    let part = _mm512_add_epi32(
                        _mm512_mullo_epi32(sc_lo, lo),
                        _mm512_mullo_epi32(sc_hi, hi),
                    );
                    isc[r] = _mm512_add_epi32(isc[r], part);
                } else {
                    let part = _mm512_mullo_epi32(sc_lo, _mm512_add_epi32(lo, hi));
                    isc[r] = _mm512_add_epi32(isc[r], part);
                    let mins = _mm512_mullo_epi32(m, _mm512_set1_epi32(s0 + s1));
                    imin[r] = _mm512_add_epi32(imin[r], mins);
                }
            }
        }
        for r in 0..N {
            let da = _mm512_set1_ps(a[r].d[b]);
            sum[r] = _mm512_fmadd_ps(_mm512_mul_ps(dw, da), _mm512_cvtepi32_ps(isc[r]), sum[r]);
            if !q6 {
                let min = _mm512_mul_ps(mw, da);
                sum[r] = _mm512_fnmadd_ps(min, _mm512_cvtepi32_ps(imin[r]), sum[r]);
            }
        }
    }
    for r in 0..N {
        // SAFETY: acc[r] is 16 f32.
        unsafe { _mm512_storeu_ps(acc[r].as_mut_ptr(), sum[r]) };
    }
}
