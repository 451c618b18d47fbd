//! Portable dot products of one quantized weight row with one quantized
//! activation row: integer sums per block, then the block's scales in f32 (the
//! math of llama.cpp's ggml_vec_dot_*_q8_* reference kernels). Layouts: see
//! `crate::gguf::dequant`.

// Block layouts read most plainly with the element index written out.
#![allow(clippy::needless_range_loop)]

use super::acts::ActRow;
use super::{f16_at, scale_min_k4};

/// Q4_0: x = (nibble - 8)·d, so Σ x·a = d·da·(Σ nibble·q - 8·Σ q).
pub fn q4_0(w: &[u8], a: ActRow) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(18).enumerate() {
        let q = &a.qs[32 * b..32 * b + 32];
        let mut sumi = 0i32;
        for j in 0..16 {
            sumi += (blk[2 + j] & 0xF) as i32 * q[j] as i32;
            sumi += (blk[2 + j] >> 4) as i32 * q[j + 16] as i32;
        }
        sumi -= 8 * a.sums[b];
        acc += f16_at(blk, 0) * a.d[b] * sumi as f32;
    }
    acc
}

/// Q4_1: x = nibble·d + m, so Σ x·a = d·da·Σ nibble·q + m·da·Σ q.
pub fn q4_1(w: &[u8], a: ActRow) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(20).enumerate() {
        let q = &a.qs[32 * b..32 * b + 32];
        let mut sumi = 0i32;
        for j in 0..16 {
            sumi += (blk[4 + j] & 0xF) as i32 * q[j] as i32;
            sumi += (blk[4 + j] >> 4) as i32 * q[j + 16] as i32;
        }
        let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
        acc += d * a.d[b] * sumi as f32 + m * a.d[b] * a.sums[b] as f32;
    }
    acc
}

/// Q8_0: x = q·d.
pub fn q8_0(w: &[u8], a: ActRow) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(34).enumerate() {
        let q = &a.qs[32 * b..32 * b + 32];
        let sumi: i32 = blk[2..34]
            .iter()
            .zip(q)
            .map(|(&wq, &aq)| wq as i8 as i32 * aq as i32)
            .sum();
        acc += f16_at(blk, 0) * a.d[b] * sumi as f32;
    }
    acc
}

/// Q4_K / Q5_K: eight 32-value sub-blocks, x = d·sc·q - dmin·m; the min term
/// uses the activation sums of 16 values.
fn k_quant(w: &[u8], a: ActRow, block_bytes: usize, five_bit: bool) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(block_bytes).enumerate() {
        let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
        let scales = &blk[4..16];
        let (qh, qs) = if five_bit {
            (&blk[16..48], &blk[48..176])
        } else {
            (&blk[0..0], &blk[16..144])
        };
        let q8 = &a.qs[256 * b..256 * b + 256];
        let sums = &a.sums[16 * b..16 * b + 16];
        let (mut isc, mut imin) = (0i32, 0i32);
        for s in 0..8 {
            let (sc, m) = scale_min_k4(s, scales);
            let (c, shift) = (s / 2, 4 * (s % 2));
            let mut sumi = 0i32;
            for l in 0..32 {
                let mut v = (qs[32 * c + l] >> shift) & 0xF;
                if five_bit && qh[l] & (1 << s) != 0 {
                    v += 16;
                }
                sumi += v as i32 * q8[32 * s + l] as i32;
            }
            isc += sc as i32 * sumi;
            imin += m as i32 * (sums[2 * s] + sums[2 * s + 1]);
        }
        acc += d * a.d[b] * isc as f32 - dmin * a.d[b] * imin as f32;
    }
    acc
}

pub fn q4_k(w: &[u8], a: ActRow) -> f32 {
    k_quant(w, a, 144, false)
}

pub fn q5_k(w: &[u8], a: ActRow) -> f32 {
    k_quant(w, a, 176, true)
}

/// Q6_K: sixteen 16-value sub-blocks with i8 scales, x = d·sc·(q - 32).
pub fn q6_k(w: &[u8], a: ActRow) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(210).enumerate() {
        let (ql, qh, sc) = (&blk[0..128], &blk[128..192], &blk[192..208]);
        let q8 = &a.qs[256 * b..256 * b + 256];
        let sums = &a.sums[16 * b..16 * b + 16];
        let mut isc = 0i32;
        for e in 0..256 {
            // Element e of half h: group g of 32 picks ql's nibble and qh's bit pair.
            let (h, r) = (e / 128, e % 128);
            let (g, l) = (r / 32, r % 32);
            let low = (ql[64 * h + 32 * (g % 2) + l] >> (4 * (g / 2))) & 0xF;
            let high = (qh[32 * h + l] >> (2 * g)) & 3;
            let q = (low | (high << 4)) as i32;
            isc += sc[e / 16] as i8 as i32 * q * q8[e] as i32;
        }
        for s in 0..16 {
            isc -= 32 * sc[s] as i8 as i32 * sums[s];
        }
        acc += f16_at(blk, 208) * a.d[b] * isc as f32;
    }
    acc
}
