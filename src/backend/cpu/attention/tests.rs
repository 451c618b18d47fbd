use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::rows::{bf16_to_f32, f16_to_f32};
use super::*;
use crate::backend::cpu::exp::exp;

/// The computation written plainly, one query head and one key at a time:
/// the kernel must match it bit for bit. A V block is `[block_size][head_dim]`,
/// a K block `[head_dim][block_size]`.
fn plain(qkv: &[f32], k: &[f32], v: &[f32], meta: &StepMeta, shape: AttnShape) -> Vec<f32> {
    let (hd, heads, kvh, bs) = (
        shape.head_dim,
        shape.num_heads,
        shape.num_kv_heads,
        meta.block_size,
    );
    let mut out = vec![0f32; meta.num_tokens() * heads * hd];
    for s in 0..meta.num_seqs() {
        let (q0, q1) = (meta.query_start[s], meta.query_start[s + 1]);
        let first = meta.context_lens[s] - (q1 - q0);
        for t in q0..q1 {
            let pos = first + t - q0;
            let lo = shape
                .sliding_window
                .map_or(0, |w| (pos + 1).saturating_sub(w));
            for h in 0..heads {
                let g = h / (heads / kvh);
                let q = &qkv[t * shape.qkv_width() + h * hd..][..hd];
                let block = |j: usize| (meta.block_tables[s][j / bs] as usize * kvh + g) * bs * hd;
                let slot = |j: usize| block(j) + j % bs * hd;
                let key = |j: usize, d: usize| k[block(j) + d * bs + j % bs];
                let scores: Vec<f32> = (lo..=pos)
                    .map(|j| {
                        let dot = (q.iter().enumerate()).fold(0f32, |a, (d, x)| a + x * key(j, d));
                        dot * shape.scale
                    })
                    .collect();
                let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
                let exps: Vec<f32> = scores.iter().map(|s| exp(s - max)).collect();
                let sum = exps.iter().fold(0f32, |a, e| a + e);
                let o = &mut out[(t * heads + h) * hd..][..hd];
                for (j, &p) in (lo..=pos).zip(&exps) {
                    for (o, &v) in o.iter_mut().zip(&v[slot(j)..slot(j) + hd]) {
                        *o += p / sum * v;
                    }
                }
            }
        }
    }
    out
}

fn random(len: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1f32..1.0)).collect()
}

/// The kernel's shift widens every bf16 value as `half` does, bit for bit
/// (a NaN stays a NaN; `half` also sets the quiet bit of a signaling one).
#[test]
fn bf16_widening_is_exact_for_every_value() {
    for bits in 0..=u16::MAX {
        let (got, want) = (bf16_to_f32(bits), half::bf16::from_bits(bits).to_f32());
        if want.is_nan() {
            assert!(got.is_nan(), "bits {bits:#06x}");
        } else {
            assert_eq!(got.to_bits(), want.to_bits(), "bits {bits:#06x}");
        }
    }
}

#[test]
fn f16_widening_is_exact_for_every_value() {
    for bits in 0..=u16::MAX {
        let (got, want) = (f16_to_f32(bits), half::f16::from_bits(bits).to_f32());
        if want.is_nan() {
            assert!(got.is_nan(), "bits {bits:#06x}");
        } else {
            assert_eq!(got.to_bits(), want.to_bits(), "bits {bits:#06x}");
        }
    }
}

/// Decode, prefill and chunked prefill in one batch, scattered blocks, with
/// and without a sliding window, several head widths and block sizes.
#[test]
fn matches_the_plain_computation_bit_for_bit() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    // Query heads per KV head: 4, 8, 3 (2 + 1 per pass), 1 and 14 (8 + 4 + 2).
    for (hd, bs, window, (heads, kv_heads)) in [
        (64, 16, None, (8, 2)),
        (16, 8, Some(20), (16, 2)),
        (80, 32, None, (6, 2)),
        (128, 16, Some(7), (3, 3)),
        (32, 16, None, (14, 1)),
    ] {
        let shape = AttnShape {
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim: hd,
            sliding_window: window,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        // (new tokens, context): decode at 1 and 70, a prefill of 37, a chunk of 5 after 40.
        let seqs: [(usize, usize); 4] = [(1, 1), (1, 70), (37, 37), (5, 45)];
        let blocks: usize = seqs.iter().map(|&(_, c)| c.div_ceil(bs)).sum();
        let mut free: Vec<u32> = (0..blocks as u32).rev().collect();
        // Scatter the blocks: every other one from each end.
        free.sort_by_key(|b| (b % 2, *b));
        let mut meta = StepMeta {
            block_size: bs,
            query_start: vec![0],
            ..StepMeta::default()
        };
        for &(new, context) in &seqs {
            let table: Vec<u32> = (0..context.div_ceil(bs))
                .filter_map(|_| free.pop())
                .collect();
            meta.token_ids.extend(std::iter::repeat_n(0, new));
            meta.query_start.push(meta.token_ids.len());
            meta.context_lens.push(context);
            meta.block_tables.push(table);
        }
        let pool = blocks * shape.num_kv_heads * bs * hd;
        let (k, v) = (random(pool, &mut rng), random(pool, &mut rng));
        let qkv = random(meta.num_tokens() * shape.qkv_width(), &mut rng);
        let want = plain(&qkv, &k, &v, &meta, shape);
        let (k, v) = (CpuKvPool::F32(k), CpuKvPool::F32(v));
        let portable: fn(&Task) -> Vec<f32> = attend;
        for (name, kernel) in [("this CPU's", kernel()), ("portable", portable)] {
            let mut out = vec![f32::NAN; meta.num_tokens() * shape.num_heads * hd];
            attention_with(kernel, &qkv, &k, &v, &meta, shape, &mut out);
            for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "{name} kernel, hd {hd} bs {bs}: element {i}: {a} vs {b}"
                );
            }
        }
    }
}
