//! Activations quantized to 8 bits per block, as llama.cpp does before a
//! quantized matmul: every row of `x` split into blocks, each block a scale `d`
//! (its largest magnitude / 127, kept in f32) and `round(x / d)` as i8, plus the
//! sums of those i8 that the kernels need to apply a weight's offset (Q4_1's
//! min, the K-quants' mins, the bias trick of the AVX-512 kernels).
//!
//! - 32-wide blocks (q8_0/q8_1-style) for Q8_0, Q4_0 and Q4_1: one sum per block;
//! - 256-wide blocks (q8_K-style) for Q4_K, Q5_K and Q6_K: one sum per 16 values.
//!
//! Each row is quantized on its own, so a row's blocks never depend on the batch.

use rayon::prelude::*;

/// Values summed into one entry of [`QuantActs::sums`] for each block width.
pub fn sum_width(block: usize) -> usize {
    if block == 256 {
        16
    } else {
        block
    }
}

/// `m` rows of `k` activations quantized in blocks of `block` (32 or 256).
pub struct QuantActs {
    pub block: usize,
    pub k: usize,
    pub qs: Vec<i8>,
    /// One scale per block.
    pub d: Vec<f32>,
    /// Sums of the i8 values, one per [`sum_width`] of them.
    pub sums: Vec<i32>,
}

/// One row of [`QuantActs`].
#[derive(Clone, Copy)]
pub struct ActRow<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub sums: &'a [i32],
}

impl QuantActs {
    /// Quantizes `x` (`m` rows of `k`; `k` a multiple of `block`).
    pub fn new(x: &[f32], k: usize, block: usize) -> QuantActs {
        debug_assert!(k.is_multiple_of(block) && x.len().is_multiple_of(k));
        let m = x.len() / k;
        let per_sum = sum_width(block);
        let mut qs = vec![0i8; m * k];
        let mut d = vec![0f32; m * k / block];
        let mut sums = vec![0i32; m * k / per_sum];
        let rows = x
            .par_chunks_exact(k)
            .zip(qs.par_chunks_exact_mut(k))
            .zip(d.par_chunks_exact_mut(k / block))
            .zip(sums.par_chunks_exact_mut(k / per_sum));
        // A few rows are quicker on one thread than through a parallel region.
        rows.with_min_len(8).for_each(|(((x, q), d), s)| {
            for (((xb, qb), db), sb) in x
                .chunks_exact(block)
                .zip(q.chunks_exact_mut(block))
                .zip(d.iter_mut())
                .zip(s.chunks_exact_mut(block / per_sum))
            {
                *db = quantize_block(xb, qb);
                for (sum, qv) in sb.iter_mut().zip(qb.chunks_exact(per_sum)) {
                    *sum = qv.iter().map(|&v| v as i32).sum();
                }
            }
        });
        QuantActs {
            block,
            k,
            qs,
            d,
            sums,
        }
    }

    pub fn row(&self, i: usize) -> ActRow<'_> {
        let (k, nb) = (self.k, self.k / self.block);
        let ns = self.k / sum_width(self.block);
        ActRow {
            qs: &self.qs[i * k..(i + 1) * k],
            d: &self.d[i * nb..(i + 1) * nb],
            sums: &self.sums[i * ns..(i + 1) * ns],
        }
    }
}

/// Quantizes one block into `q`; returns its scale. Symmetric, so every value
/// fits -127..=127 (the kernels' sums rely on it).
fn quantize_block(x: &[f32], q: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (q, &v) in q.iter_mut().zip(x) {
        // `as` saturates (and maps NaN to 0), so an inf or NaN input cannot wrap.
        *q = (v * id).round().clamp(-127.0, 127.0) as i8;
    }
    d
}
