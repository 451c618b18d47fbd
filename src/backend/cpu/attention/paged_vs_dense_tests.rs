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
                    q.iter().zip(k).map(|(a, b)| (a * b) as f64).sum::<f64>() * shape.scale as f64
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
fn paged(qkv: &[f32], len: usize, chunk: usize, shape: AttnShape, block_size: usize) -> Vec<f32> {
    let num_blocks = len.div_ceil(block_size) + 5;
    // A scrambled permutation of the pool's blocks.
    let mut table: Vec<u32> = (0..num_blocks as u32).collect();
    table.sort_by_key(|&b| b.wrapping_mul(2_654_435_761) ^ 0x5bd1_e995);
    table.truncate(len.div_ceil(block_size));
    let pool_len = num_blocks * shape.num_kv_heads * block_size * shape.head_dim;
    let (mut k_pool, mut v_pool) = (
        CpuKvPool::F32(vec![f32::NAN; pool_len]),
        CpuKvPool::F32(vec![f32::NAN; pool_len]),
    );
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
