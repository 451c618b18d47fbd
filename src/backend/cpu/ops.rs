//! Element-wise and row-wise CPU ops, parallel over rows with rayon.
//! Arithmetic follows Hugging Face's float32 modules so results match transformers.

use rayon::prelude::*;

use crate::backend::{AttnShape, StepMeta};

use super::exp::exp;
use super::kv_pool::CpuKvPool;
use super::lanes::avx512_dispatch;
use super::weight::CpuWeight;

/// Rows below this many elements of work are not worth a rayon task each.
const MIN_PARALLEL_ELEMS: usize = 1 << 14;

fn rows_per_task(width: usize) -> usize {
    (MIN_PARALLEL_ELEMS / width.max(1)).max(1)
}

pub fn embedding(table: &CpuWeight, token_ids: &[u32], out: &mut [f32]) {
    let width = table.cols();
    out.par_chunks_mut(width)
        .zip(token_ids.par_iter())
        .for_each(|(row, &id)| {
            table.row_f32(id as usize, row);
        });
}

/// `out = x * rsqrt(mean(x²) + eps) * weight` (sum of squares in f64 for accuracy).
fn normalize_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let sum_sq: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let inv_rms = 1.0 / ((sum_sq / x.len() as f64) as f32 + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (v * inv_rms);
    }
}

pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    let per_task = rows_per_task(width) * width;
    out.par_chunks_mut(per_task)
        .zip(x.par_chunks(per_task))
        .for_each(|(o, x)| {
            for (o_row, x_row) in o.chunks_mut(width).zip(x.chunks(width)) {
                normalize_row(x_row, weight, eps, o_row);
            }
        });
}

pub fn fused_add_rms_norm(x: &mut [f32], residual: &mut [f32], weight: &[f32], eps: f32) {
    let width = weight.len();
    let per_task = rows_per_task(width) * width;
    x.par_chunks_mut(per_task)
        .zip(residual.par_chunks_mut(per_task))
        .for_each(|(x, r)| {
            for (x_row, r_row) in x.chunks_mut(width).zip(r.chunks_mut(width)) {
                for (r, &v) in r_row.iter_mut().zip(x_row.iter()) {
                    *r += v;
                }
                normalize_row(r_row, weight, eps, x_row);
            }
        });
}

/// Neox-style rotary on the q and k heads at the start of each fused qkv row.
/// `cos_sin[pos]` holds `head_dim / 2` cosines then as many sines.
pub fn rotary(qkv: &mut [f32], cos_sin: &[f32], positions: &[u32], shape: AttnShape) {
    let hd = shape.head_dim;
    let half = hd / 2;
    let rotated_heads = shape.num_heads + shape.num_kv_heads;
    qkv.par_chunks_mut(shape.qkv_width())
        .zip(positions.par_iter())
        .for_each(|(row, &pos)| {
            let table = &cos_sin[pos as usize * hd..(pos as usize + 1) * hd];
            let (cos, sin) = table.split_at(half);
            for head in row[..rotated_heads * hd].chunks_mut(hd) {
                let (x1, x2) = head.split_at_mut(half);
                for i in 0..half {
                    let (a, b) = (x1[i], x2[i]);
                    x1[i] = a * cos[i] - b * sin[i];
                    x2[i] = b * cos[i] + a * sin[i];
                }
            }
        });
}

/// `out[t] = silu(gate) * up` where each `gate_up` row is `[gate (width) | up (width)]`.
///
/// `e^-g` is the vectorized [`exp`] (about one ulp, as torch's own vectorized
/// exp): a libm call per entry took 80–90 µs of a SmolLM2 token (AMD EPYC).
pub fn silu_mul(gate_up: &[f32], width: usize, out: &mut [f32]) {
    out.par_chunks_mut(width)
        .zip(gate_up.par_chunks(2 * width))
        .for_each(|(o, gu)| silu_mul_row(gu, o));
}

avx512_dispatch!(fn silu_mul_row(gate_up: &[f32], out: &mut [f32]) => silu_mul_lanes);

#[inline(always)]
fn silu_mul_lanes(gate_up: &[f32], out: &mut [f32]) {
    let (gate, up) = gate_up.split_at(out.len());
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp(-g)) * u;
    }
}

pub fn gather_rows(x: &[f32], rows: &[usize], width: usize, out: &mut [f32]) {
    for (o, &r) in out.chunks_mut(width).zip(rows) {
        o.copy_from_slice(&x[r * width..(r + 1) * width]);
    }
}

/// Writes each token's k and v heads into its cache slot: its V row, its K
/// column (see [`CpuKvPool`] for the layouts).
pub fn reshape_and_cache(
    qkv: &[f32],
    k_pool: &mut CpuKvPool,
    v_pool: &mut CpuKvPool,
    meta: &StepMeta,
    shape: AttnShape,
) {
    let (hd, kvh, bs) = (shape.head_dim, shape.num_kv_heads, meta.block_size);
    let k_off = shape.num_heads * hd;
    let v_off = k_off + kvh * hd;
    for (row, &slot) in qkv.chunks(shape.qkv_width()).zip(&meta.slot_mapping) {
        if slot < 0 {
            continue;
        }
        let (block, offset) = (slot as usize / bs, slot as usize % bs);
        for g in 0..kvh {
            let base = (block * kvh + g) * bs * hd;
            k_pool.write_strided(base + offset, bs, &row[k_off + g * hd..][..hd]);
            v_pool.write(base + offset * hd, &row[v_off + g * hd..][..hd]);
        }
    }
}

#[cfg(test)]
mod tests {
    /// Within a few f32 ulps of silu computed in f64, over the range where
    /// `e^-g` over- and underflows too, in rows of odd width.
    #[test]
    fn silu_mul_matches_f64() {
        let width = 1001;
        let gate_up: Vec<f32> = (0..3 * 2 * width)
            .map(|i| (i % 2003) as f32 * 0.1 - 100.0)
            .collect();
        let mut out = vec![0f32; 3 * width];
        super::silu_mul(&gate_up, width, &mut out);
        for (row, gu) in gate_up.chunks(2 * width).enumerate() {
            let (gate, up) = gu.split_at(width);
            for (j, (&g, &u)) in gate.iter().zip(up).enumerate() {
                let (g64, u64) = (f64::from(g), f64::from(u));
                let want = g64 / (1.0 + (-g64).exp()) * u64;
                let got = f64::from(out[row * width + j]);
                assert!(
                    // (Past g ≈ -88, e^-g overflows f32 and silu is -0.)
                    (got - want).abs() <= want.abs() * 4.0 * f64::from(f32::EPSILON) + 1e-30,
                    "silu({g}) * {u}: {got} vs {want}"
                );
            }
        }
    }
}
