//! Attention over the paged KV cache: every query token attends causally to its
//! sequence's cached positions (within the sliding window, if any). One code
//! path serves prefill, chunked prefill and decode.

use rayon::prelude::*;

use crate::backend::{AttnShape, StepMeta};

use super::matmul::dot;

pub fn paged_attention(
    qkv: &[f32],
    k_pool: &[f32],
    v_pool: &[f32],
    meta: &StepMeta,
    shape: AttnShape,
    out: &mut [f32],
) {
    let (hd, heads, kvh, bs) = (
        shape.head_dim,
        shape.num_heads,
        shape.num_kv_heads,
        meta.block_size,
    );
    let group = heads / kvh;
    let width = shape.qkv_width();
    // For each token: (its sequence, its index in that sequence's cache).
    let mut token_pos = Vec::with_capacity(meta.num_tokens());
    for s in 0..meta.num_seqs() {
        let (q0, q1) = (meta.query_start[s], meta.query_start[s + 1]);
        let first = meta.context_lens[s] - (q1 - q0);
        token_pos.extend((0..q1 - q0).map(|i| (s, first + i)));
    }
    out.par_chunks_mut(hd).enumerate().for_each_init(
        Vec::new,
        |scores: &mut Vec<f32>, (idx, o)| {
            let (t, h) = (idx / heads, idx % heads);
            let (s, pos) = token_pos[t];
            let q = &qkv[t * width + h * hd..t * width + (h + 1) * hd];
            let g = h / group;
            let table = &meta.block_tables[s];
            let lo = match shape.sliding_window {
                Some(w) => (pos + 1).saturating_sub(w),
                None => 0,
            };
            let slot = |j: usize| ((table[j / bs] as usize * kvh + g) * bs + j % bs) * hd;
            scores.clear();
            let mut max = f32::NEG_INFINITY;
            for j in lo..=pos {
                let k = &k_pool[slot(j)..slot(j) + hd];
                let sc = dot(q, k) * shape.scale;
                max = max.max(sc);
                scores.push(sc);
            }
            let mut sum = 0f32;
            for sc in scores.iter_mut() {
                *sc = (*sc - max).exp();
                sum += *sc;
            }
            o.fill(0.0);
            for (j, &p) in (lo..=pos).zip(scores.iter()) {
                let v = &v_pool[slot(j)..slot(j) + hd];
                let wgt = p / sum;
                for (o, &v) in o.iter_mut().zip(v) {
                    *o += wgt * v;
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::ops::reshape_and_cache;
    use rand::{RngExt, SeedableRng};

    /// Dense causal attention for one sequence, straight from the definition.
    fn dense(qkv: &[f32], len: usize, shape: AttnShape) -> Vec<f32> {
        let (hd, h, kvh, w) = (
            shape.head_dim,
            shape.num_heads,
            shape.num_kv_heads,
            shape.qkv_width(),
        );
        let mut out = vec![0f32; len * h * hd];
        for t in 0..len {
            for head in 0..h {
                let g = head / (h / kvh);
                let q = &qkv[t * w + head * hd..][..hd];
                let lo = shape
                    .sliding_window
                    .map_or(0, |win| (t + 1).saturating_sub(win));
                let scores: Vec<f64> = (lo..=t)
                    .map(|j| {
                        let k = &qkv[j * w + (h + g) * hd..][..hd];
                        q.iter().zip(k).map(|(a, b)| (a * b) as f64).sum::<f64>()
                            * shape.scale as f64
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for (j, s) in (lo..=t).zip(&scores) {
                    let v = &qkv[j * w + (h + kvh + g) * hd..][..hd];
                    for d in 0..hd {
                        out[(t * h + head) * hd + d] += ((s - max).exp() / sum) as f32 * v[d];
                    }
                }
            }
        }
        out
    }

    /// Runs `len` tokens through the paged path in chunks of `chunk` tokens,
    /// with the sequence's blocks scattered through the pool.
    fn paged(
        qkv: &[f32],
        len: usize,
        chunk: usize,
        shape: AttnShape,
        block_size: usize,
    ) -> Vec<f32> {
        let num_blocks = len.div_ceil(block_size) + 5;
        // A scrambled permutation of the pool's blocks.
        let mut table: Vec<u32> = (0..num_blocks as u32).collect();
        table.sort_by_key(|&b| b.wrapping_mul(2_654_435_761) ^ 0x5bd1_e995);
        table.truncate(len.div_ceil(block_size));
        let pool_len = num_blocks * shape.num_kv_heads * block_size * shape.head_dim;
        let (mut k_pool, mut v_pool) = (vec![f32::NAN; pool_len], vec![f32::NAN; pool_len]);
        let (w, out_w) = (shape.qkv_width(), shape.num_heads * shape.head_dim);
        let mut out = vec![0f32; len * out_w];
        for start in (0..len).step_by(chunk) {
            let end = (start + chunk).min(len);
            let meta = StepMeta {
                token_ids: vec![0; end - start],
                positions: (start as u32..end as u32).collect(),
                slot_mapping: (start..end)
                    .map(|p| (table[p / block_size] as usize * block_size + p % block_size) as i64)
                    .collect(),
                query_start: vec![0, end - start],
                context_lens: vec![end],
                block_tables: vec![table.clone()],
                logits_rows: vec![],
                block_size,
            };
            let rows = &qkv[start * w..end * w];
            reshape_and_cache(rows, &mut k_pool, &mut v_pool, &meta, shape);
            paged_attention(
                rows,
                &k_pool,
                &v_pool,
                &meta,
                shape,
                &mut out[start * out_w..end * out_w],
            );
        }
        out
    }

    #[test]
    fn paged_matches_dense_for_prefill_chunks_and_decode() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for (window, block_size, chunk) in [
            (None, 16, 45),
            (Some(20), 8, 1),
            (None, 32, 1),
            (Some(7), 16, 13),
        ] {
            let shape = AttnShape {
                num_heads: 4,
                num_kv_heads: 2,
                head_dim: 16,
                sliding_window: window,
                scale: 0.25,
            };
            let len = 45;
            let qkv: Vec<f32> = (0..len * shape.qkv_width())
                .map(|_| rng.random::<f32>() * 2.0 - 1.0)
                .collect();
            let want = dense(&qkv, len, shape);
            let got = paged(&qkv, len, chunk, shape, block_size);
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(
                err < 1e-5,
                "window {window:?} block {block_size} chunk {chunk}: max error {err}"
            );
        }
    }
}
