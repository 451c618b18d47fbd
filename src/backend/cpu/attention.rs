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
