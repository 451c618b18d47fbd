//! Each type against blocks built by hand: the test packs known integer quants and
//! scales the way ggml lays them out, then checks every element.

use super::*;

fn h(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

fn run(ty: GgmlType, block: &[u8]) -> Vec<f32> {
    assert_eq!(block.len(), ty.block_bytes());
    let mut out = vec![0.0; ty.block_elems()];
    dequantize(ty, block, &mut out);
    out
}

/// Quants 0..32 (or wrapping) with a fixed pattern so every position differs.
fn pattern(levels: u32) -> Vec<u32> {
    (0..32u32).map(|j| (j * 7 + 3) % levels).collect()
}

#[test]
fn float_types() {
    let mut b = Vec::new();
    b.extend(1.5f32.to_le_bytes());
    assert_eq!(run(GgmlType::F32, &b), [1.5]);
    assert_eq!(run(GgmlType::F16, &h(-2.25)), [-2.25]);
    assert_eq!(
        run(GgmlType::BF16, &bf16::from_f32(3.0).to_le_bytes()),
        [3.0]
    );
}

#[test]
fn q4_0_block() {
    let q = pattern(16);
    let mut b = h(0.5).to_vec();
    for j in 0..16 {
        b.push((q[j] | (q[j + 16] << 4)) as u8);
    }
    let y = run(GgmlType::Q4_0, &b);
    for j in 0..32 {
        assert_eq!(y[j], (q[j] as f32 - 8.0) * 0.5, "element {j}");
    }
}

#[test]
fn q4_1_block() {
    let q = pattern(16);
    let mut b = h(0.25).to_vec();
    b.extend(h(-1.0));
    for j in 0..16 {
        b.push((q[j] | (q[j + 16] << 4)) as u8);
    }
    let y = run(GgmlType::Q4_1, &b);
    for j in 0..32 {
        assert_eq!(y[j], q[j] as f32 * 0.25 - 1.0, "element {j}");
    }
}

fn q5_bits(q: &[u32]) -> (u32, Vec<u8>) {
    let mut qh = 0u32;
    let mut qs = Vec::new();
    for j in 0..16 {
        qh |= (q[j] >> 4) << j;
        qh |= (q[j + 16] >> 4) << (j + 16);
        qs.push(((q[j] & 0xF) | ((q[j + 16] & 0xF) << 4)) as u8);
    }
    (qh, qs)
}

#[test]
fn q5_0_block() {
    let q = pattern(32);
    let (qh, qs) = q5_bits(&q);
    let mut b = h(2.0).to_vec();
    b.extend(qh.to_le_bytes());
    b.extend(qs);
    let y = run(GgmlType::Q5_0, &b);
    for j in 0..32 {
        assert_eq!(y[j], (q[j] as f32 - 16.0) * 2.0, "element {j}");
    }
    // Element 31 has quant (31*7+3)%32 = 28: 5th bit set, stored in qh bit 31.
    assert_eq!(q[31], 28);
    assert_eq!(y[31], 24.0);
}

#[test]
fn q5_1_block() {
    let q = pattern(32);
    let (qh, qs) = q5_bits(&q);
    let mut b = h(0.5).to_vec();
    b.extend(h(1.0));
    b.extend(qh.to_le_bytes());
    b.extend(qs);
    let y = run(GgmlType::Q5_1, &b);
    for j in 0..32 {
        assert_eq!(y[j], q[j] as f32 * 0.5 + 1.0, "element {j}");
    }
}

#[test]
fn q8_0_block() {
    let mut b = h(0.125).to_vec();
    let q: Vec<i8> = (0..32).map(|j| (j as i8 - 16) * 7).collect();
    b.extend(q.iter().map(|&v| v as u8));
    let y = run(GgmlType::Q8_0, &b);
    for j in 0..32 {
        assert_eq!(y[j], q[j] as f32 * 0.125);
    }
}

/// Packs eight 6-bit (scale, min) pairs as ggml's K-quants do.
fn pack_scales(s: [u8; 8], m: [u8; 8]) -> [u8; 12] {
    let mut p = [0u8; 12];
    for j in 0..4 {
        p[j] = s[j] | ((s[j + 4] >> 4) << 6);
        p[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
        p[j + 8] = (s[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4);
    }
    p
}

const SC: [u8; 8] = [1, 5, 63, 17, 32, 48, 9, 60];
const MN: [u8; 8] = [0, 63, 2, 33, 18, 7, 50, 31];

#[test]
fn k_scales_unpack() {
    let p = pack_scales(SC, MN);
    for j in 0..8 {
        assert_eq!(scale_min_k4(j, &p), (SC[j], MN[j]), "pair {j}");
    }
}

fn q_k(levels: u32) -> Vec<u32> {
    (0..256u32).map(|i| (i * 13 + i / 7) % levels).collect()
}

#[test]
fn q4_k_block() {
    let q = q_k(16);
    let (d, dmin) = (0.5f32, 0.25f32);
    let mut b = h(d).to_vec();
    b.extend(h(dmin));
    b.extend(pack_scales(SC, MN));
    // Element i: sub-block i/32; chunk c holds sub-blocks 2c (low nibbles) and 2c+1.
    for c in 0..4 {
        for l in 0..32 {
            b.push((q[64 * c + l] | (q[64 * c + 32 + l] << 4)) as u8);
        }
    }
    let y = run(GgmlType::Q4K, &b);
    for i in 0..256 {
        let s = i / 32;
        let want = d * SC[s] as f32 * q[i] as f32 - dmin * MN[s] as f32;
        assert_eq!(y[i], want, "element {i}");
    }
}

#[test]
fn q5_k_block() {
    let q = q_k(32);
    let (d, dmin) = (0.25f32, 0.5f32);
    let mut b = h(d).to_vec();
    b.extend(h(dmin));
    b.extend(pack_scales(SC, MN));
    let mut qh = [0u8; 32];
    for (i, &v) in q.iter().enumerate() {
        qh[i % 32] |= ((v >> 4) as u8) << (i / 32);
    }
    b.extend(qh);
    for c in 0..4 {
        for l in 0..32 {
            b.push(((q[64 * c + l] & 0xF) | ((q[64 * c + 32 + l] & 0xF) << 4)) as u8);
        }
    }
    let y = run(GgmlType::Q5K, &b);
    for i in 0..256 {
        let s = i / 32;
        let want = d * SC[s] as f32 * q[i] as f32 - dmin * MN[s] as f32;
        assert_eq!(y[i], want, "element {i}");
    }
}

#[test]
fn q6_k_block() {
    let q = q_k(64);
    let scales: Vec<i8> = (0..16).map(|k| (k as i8 - 8) * 9 + 1).collect();
    let d = 0.125f32;
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    // Half h, position l (0..32), quarter k (0..4): element 128h + 32k + l.
    for hf in 0..2 {
        for k in 0..4 {
            for l in 0..32 {
                let v = q[128 * hf + 32 * k + l] as u8;
                let low_byte = 64 * hf + l + if k % 2 == 1 { 32 } else { 0 };
                ql[low_byte] |= (v & 0xF) << if k >= 2 { 4 } else { 0 };
                qh[32 * hf + l] |= (v >> 4) << (2 * k);
            }
        }
    }
    let mut b = ql.to_vec();
    b.extend(qh);
    b.extend(scales.iter().map(|&s| s as u8));
    b.extend(h(d));
    let y = run(GgmlType::Q6K, &b);
    for i in 0..256 {
        let want = d * scales[i / 16] as f32 * (q[i] as f32 - 32.0);
        assert_eq!(y[i], want, "element {i}");
    }
}

#[test]
fn type_names() {
    assert_eq!(GgmlType::name_of(14), "Q6_K");
    assert_eq!(GgmlType::name_of(10), "Q2_K");
    assert_eq!(GgmlType::name_of(999), "unknown type 999");
}

/// Q8_0 from values: llama.cpp's reference rounding (quants from the exact
/// scale, the scale stored as f16), and back within half a step plus what the
/// scale's f16 rounding moves the largest quant.
#[test]
fn q8_0_quantizes_within_half_a_step() {
    let x: Vec<f32> = (0..64)
        .map(|i| ((i * 37 % 64) as f32 - 31.5) * 0.013)
        .collect();
    let bytes = quantize_q8_0(&x);
    assert_eq!(bytes.len(), 2 * 34);
    let mut back = vec![0.0; 64];
    dequantize(GgmlType::Q8_0, &bytes, &mut back);
    for (block, (x, y)) in x.chunks(32).zip(back.chunks(32)).enumerate() {
        let d = x.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
        let stored = f16::from_f32(d).to_f32();
        let bound = d / 2.0 + 127.0 * (d - stored).abs() + 1e-6;
        for (a, b) in x.iter().zip(y) {
            assert!((a - b).abs() <= bound, "block {block}: {a} vs {b}");
        }
    }
    assert_eq!(
        quantize_q8_0(&[0.0; 32])[2..],
        [0u8; 32],
        "a zero block stays zero"
    );
}
