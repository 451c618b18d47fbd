//! A direct, slow transcription of vLLM v0.4.3's sampler steps (dense counts,
//! full ascending sort, cumulative sum), used by the sampling tests to compute
//! what the optimised functions must produce. Ties in the sort are broken the
//! way the engine documents (equal logits: lower id counts as more likely).

#![allow(dead_code)]

use engine::sampling::SamplingParams;

pub const NEG: f32 = f32::NEG_INFINITY;

/// `logits[id] += clamp(bias)` for every bias entry.
pub fn logit_bias(row: &mut [f32], params: &SamplingParams) {
    for (&id, &b) in &params.logit_bias {
        if (id as usize) < row.len() {
            row[id as usize] += b.clamp(-100.0, 100.0) as f32;
        }
    }
}

/// `_apply_min_tokens_penalty` for one row.
pub fn min_tokens(row: &mut [f32], params: &SamplingParams, output_len: usize, eos: &[u32]) {
    if output_len < params.min_tokens {
        for &id in eos.iter().chain(&params.stop_token_ids) {
            row[id as usize] = NEG;
        }
    }
}

/// `_apply_penalties` for one row, with dense bin counts as vLLM builds them.
pub fn penalties(row: &mut [f32], params: &SamplingParams, prompt: &[u32], output: &[u32]) {
    let vocab = row.len();
    let mut prompt_mask = vec![false; vocab];
    for &t in prompt {
        prompt_mask[t as usize] = true;
    }
    let mut counts = vec![0u32; vocab];
    for &t in output {
        counts[t as usize] += 1;
    }
    let r = params.repetition_penalty as f32;
    for i in 0..vocab {
        let rep = if prompt_mask[i] || counts[i] > 0 {
            r
        } else {
            1.0
        };
        row[i] = if row[i] > 0.0 {
            row[i] / rep
        } else {
            row[i] * rep
        };
        row[i] -= params.frequency_penalty as f32 * counts[i] as f32;
        row[i] -= params.presence_penalty as f32 * if counts[i] > 0 { 1.0 } else { 0.0 };
    }
}

pub fn temperature(row: &mut [f32], params: &SamplingParams) {
    let t = if params.temperature < 1e-5 {
        1.0
    } else {
        params.temperature as f32
    };
    row.iter_mut().for_each(|x| *x /= t);
}

fn softmax64(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(NEG, f32::max) as f64;
    let e: Vec<f64> = row.iter().map(|&x| (x as f64 - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

/// `_apply_top_k_top_p`: ascending sort, mask below the k-th largest, softmax,
/// cumulative sum, mask where it is <= 1 - p, never the last.
pub fn top_k_top_p(row: &mut [f32], top_k: usize, top_p: f64) {
    let vocab = row.len();
    let mut order: Vec<usize> = (0..vocab).collect();
    // Ascending; among equal logits the higher id first (lower id = more likely).
    order.sort_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)));
    let mut sorted: Vec<f32> = order.iter().map(|&i| row[i]).collect();
    let kth = sorted[vocab - top_k.min(vocab)];
    for x in sorted.iter_mut() {
        if *x < kth {
            *x = NEG;
        }
    }
    let probs = softmax64(&sorted);
    let mut cum = 0.0;
    for j in 0..vocab {
        cum += probs[j];
        if j + 1 < vocab && cum <= 1.0 - top_p {
            sorted[j] = NEG;
        }
    }
    for (j, &i) in order.iter().enumerate() {
        row[i] = sorted[j];
    }
}

/// `_apply_min_p`.
pub fn min_p(row: &mut [f32], min_p: f64) {
    let probs = softmax64(row);
    let top = probs.iter().copied().fold(0.0, f64::max);
    for (x, p) in row.iter_mut().zip(probs) {
        if p < min_p * top {
            *x = NEG;
        }
    }
}

/// The whole sampler pipeline for a sampled row.
pub fn process(
    row: &[f32],
    params: &SamplingParams,
    prompt: &[u32],
    output: &[u32],
    eos: &[u32],
) -> Vec<f32> {
    let mut row = row.to_vec();
    logit_bias(&mut row, params);
    min_tokens(&mut row, params, output.len(), eos);
    penalties(&mut row, params, prompt, output);
    temperature(&mut row, params);
    let greedy = !params.use_beam_search && params.temperature < 1e-5;
    if !greedy {
        let k = if params.top_k == -1 {
            row.len()
        } else {
            params.top_k as usize
        };
        if k < row.len() || params.top_p < 1.0 - 1e-5 {
            top_k_top_p(&mut row, k, params.top_p);
        }
        if params.min_p > 1e-5 {
            min_p(&mut row, params.min_p);
        }
    }
    row
}

/// The probabilities a random sample is drawn from.
pub fn probabilities(processed: &[f32]) -> Vec<f64> {
    softmax64(processed)
}
