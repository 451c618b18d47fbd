//! ggml tensor types and their dequantization to f32, block layouts as llama.cpp's
//! ggml-quants defines them (all little-endian; `d`/`m`/`dmin` are f16):
//!
//! | type | elems | bytes | layout |
//! | --- | --- | --- | --- |
//! | Q4_0 | 32 | 18 | d, qs[16]: x = (nibble - 8)·d; low nibbles are elements 0..16, high 16..32 |
//! | Q4_1 | 32 | 20 | d, m, qs[16]: x = nibble·d + m |
//! | Q5_0 | 32 | 22 | d, qh[4] (u32), qs[16]: 5th bit of element j is bit j of qh; x = (q - 16)·d |
//! | Q5_1 | 32 | 24 | d, m, qh[4], qs[16]: x = q·d + m |
//! | Q8_0 | 32 | 34 | d, qs[32] (i8): x = q·d |
//! | Q4_K | 256 | 144 | d, dmin, scales[12] (8 six-bit scale/min pairs), qs[128] |
//! | Q5_K | 256 | 176 | d, dmin, scales[12], qh[32], qs[128] |
//! | Q6_K | 256 | 210 | ql[128], qh[64], scales[16] (i8), d |
//!
//! Q8_0, Q4_0, Q4_1 and the K-quants can stay quantized on the CPU (kernels in
//! `super::cpu::matmul::quant`); everything else, and every tensor on
//! the dequantized path, becomes f32 here at load.

// Block layouts read most plainly with the element index written out.
#![allow(clippy::needless_range_loop)]

use half::{bf16, f16};

/// The ggml tensor types this engine reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl GgmlType {
    pub fn from_u32(t: u32) -> Option<GgmlType> {
        Some(match t {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    /// ggml's name for a type id, known to this engine or not.
    pub fn name_of(t: u32) -> String {
        const OTHERS: [(u32, &str); 19] = [
            (9, "Q8_1"),
            (10, "Q2_K"),
            (11, "Q3_K"),
            (15, "Q8_K"),
            (16, "IQ2_XXS"),
            (17, "IQ2_XS"),
            (18, "IQ3_XXS"),
            (19, "IQ1_S"),
            (20, "IQ4_NL"),
            (21, "IQ3_S"),
            (22, "IQ2_S"),
            (23, "IQ4_XS"),
            (24, "I8"),
            (25, "I16"),
            (26, "I32"),
            (27, "I64"),
            (28, "F64"),
            (29, "IQ1_M"),
            (34, "TQ1_0"),
        ];
        match GgmlType::from_u32(t) {
            Some(k) => k.name().to_string(),
            None => OTHERS
                .iter()
                .find(|(id, _)| *id == t)
                .map_or_else(|| format!("unknown type {t}"), |(_, n)| n.to_string()),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
        }
    }

    /// Elements per block.
    pub fn block_elems(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => {
                32
            }
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
        }
    }
}

/// The f16 at byte `i` of a block, as f32.
pub fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes `bytes` (whole blocks of `ty`) into `out`, whose length is the
/// element count. The caller has checked `bytes.len()` matches.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let (be, bb) = (ty.block_elems(), ty.block_bytes());
    debug_assert_eq!(bytes.len() / bb * be, out.len());
    for (block, y) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(be)) {
        match ty {
            GgmlType::F32 => y[0] = f32::from_le_bytes([block[0], block[1], block[2], block[3]]),
            GgmlType::F16 => y[0] = f16_at(block, 0),
            GgmlType::BF16 => y[0] = bf16::from_le_bytes([block[0], block[1]]).to_f32(),
            GgmlType::Q4_0 => q4_0(block, y),
            GgmlType::Q4_1 => q4_1(block, y),
            GgmlType::Q5_0 => q5_0(block, y),
            GgmlType::Q5_1 => q5_1(block, y),
            GgmlType::Q8_0 => q8_0(block, y),
            GgmlType::Q4K => q4_k(block, y),
            GgmlType::Q5K => q5_k(block, y),
            GgmlType::Q6K => q6_k(block, y),
        }
    }
}

/// [`dequantize`] in parallel, in pieces of whole blocks.
pub fn dequantize_parallel(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    use rayon::prelude::*;
    let per_piece = ty.block_elems() * 4096;
    let piece_bytes = 4096 * ty.block_bytes();
    out.par_chunks_mut(per_piece)
        .zip(bytes.par_chunks(piece_bytes))
        .for_each(|(out, b)| dequantize(ty, b, out));
}

/// `x` (a multiple of 32 values) as Q8_0 blocks, as llama.cpp's reference
/// quantizer makes them: scale `d = max|x| / 127` stored as f16, each value
/// `round(x / d)`.
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    use rayon::prelude::*;
    let blocks = x.len() / 32;
    let mut out = vec![0u8; blocks * 34];
    out.par_chunks_exact_mut(34)
        .zip(x.par_chunks_exact(32))
        .for_each(|(b, x)| {
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            b[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
            for (q, &v) in b[2..].iter_mut().zip(x) {
                *q = (v * inv).round() as i8 as u8;
            }
        });
    out
}

fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = ((q & 0xF) as i32 - 8) as f32 * d;
        y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (j, &q) in b[4..20].iter().enumerate() {
        y[j] = (q & 0xF) as f32 * d + m;
        y[j + 16] = (q >> 4) as f32 * d + m;
    }
}

/// The 5-bit quants of a Q5_0/Q5_1 block from its high bits and nibbles.
fn q5_quants(qh: &[u8], qs: &[u8]) -> [u8; 32] {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let mut q = [0u8; 32];
    for j in 0..16 {
        let hi0 = ((qh >> j) & 1) as u8;
        let hi1 = ((qh >> (j + 16)) & 1) as u8;
        q[j] = (qs[j] & 0xF) | (hi0 << 4);
        q[j + 16] = (qs[j] >> 4) | (hi1 << 4);
    }
    q
}

fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (yj, q) in y.iter_mut().zip(q5_quants(&b[2..6], &b[6..22])) {
        *yj = (q as i32 - 16) as f32 * d;
    }
}

fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (yj, q) in y.iter_mut().zip(q5_quants(&b[4..8], &b[8..24])) {
        *yj = q as f32 * d + m;
    }
}

fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (yj, &q) in y.iter_mut().zip(&b[2..34]) {
        *yj = q as i8 as f32 * d;
    }
}

/// Scale and min `j` (0..8) of a Q4_K/Q5_K block's 12 packed bytes: six bits each,
/// the first four pairs in the low bits of bytes 0..8, the last four split between
/// bytes 8..12 (low four bits) and the top two bits of bytes 0..8.
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    // Four chunks of 64 elements: 32 low nibbles (sub-block 2c) then 32 high (2c+1).
    for c in 0..4 {
        let q = &qs[32 * c..32 * c + 32];
        let (s0, m0) = scale_min_k4(2 * c, scales);
        let (s1, m1) = scale_min_k4(2 * c + 1, scales);
        let (d0, d1) = (d * s0 as f32, d * s1 as f32);
        let (m0, m1) = (dmin * m0 as f32, dmin * m1 as f32);
        let out = &mut y[64 * c..64 * c + 64];
        for l in 0..32 {
            out[l] = d0 * (q[l] & 0xF) as f32 - m0;
            out[l + 32] = d1 * (q[l] >> 4) as f32 - m1;
        }
    }
}

fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for c in 0..4 {
        let q = &qs[32 * c..32 * c + 32];
        let (s0, m0) = scale_min_k4(2 * c, scales);
        let (s1, m1) = scale_min_k4(2 * c + 1, scales);
        let (d0, d1) = (d * s0 as f32, d * s1 as f32);
        let (m0, m1) = (dmin * m0 as f32, dmin * m1 as f32);
        // The fifth bit of sub-block 2c+k's element l is bit 2c+k of qh[l].
        let (bit0, bit1) = (1u8 << (2 * c), 1u8 << (2 * c + 1));
        let out = &mut y[64 * c..64 * c + 64];
        for l in 0..32 {
            let h0 = if qh[l] & bit0 != 0 { 16 } else { 0 };
            let h1 = if qh[l] & bit1 != 0 { 16 } else { 0 };
            out[l] = d0 * ((q[l] & 0xF) + h0) as f32 - m0;
            out[l + 32] = d1 * ((q[l] >> 4) + h1) as f32 - m1;
        }
    }
}

fn q6_k(b: &[u8], y: &mut [f32]) {
    let (ql, qh) = (&b[0..128], &b[128..192]);
    let sc = &b[192..208];
    let d = f16_at(b, 208);
    // Two halves of 128 elements, each from 64 bytes of ql, 32 of qh, 8 scales.
    for h in 0..2 {
        let (ql, qh, sc) = (&ql[64 * h..], &qh[32 * h..], &sc[8 * h..]);
        let out = &mut y[128 * h..128 * h + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let s = |k: usize| d * (sc[is + k] as i8) as f32;
            out[l] = s(0) * q1 as f32;
            out[l + 32] = s(2) * q2 as f32;
            out[l + 64] = s(4) * q3 as f32;
            out[l + 96] = s(6) * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests;
