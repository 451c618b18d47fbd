//! Sampling with vLLM v0.4.3's semantics, as pure per-sequence functions.
//!
//! One decoding step for one sequence goes, in vLLM's order:
//!
//! 1. [`processors::process_logits`]: logit bias (vLLM applies it as a logits
//!    processor before the sampler), the `min_tokens` mask, repetition / frequency /
//!    presence penalties, temperature, top-k + top-p, min-p.
//! 2. [`log_softmax`] of the processed row: what greedy, random and beam search
//!    choose from, and what the reported logprobs are.
//! 3. [`Sampler::sample`] (greedy or random, one generator per sequence) or
//!    [`beam::beam_candidates`] + [`beam::select_beams`] (beam search).
//! 4. [`logprobs::TokenLogprobs`] for the chosen token (its rank and the top-N).
//! 5. [`stop::StopChecker::check`] once the token's text delta is known, and
//!    [`stop::OutputText::take_delta`] for the text that is safe to stream.
//!
//! [`Sampler::next_token`] runs steps 1-4 for the common (non-beam) case. The
//! engine runs them for all of a step's sampled rows at once through the
//! backend's `sample_rows` op ([`batch`]: the row description, and the host
//! implementation the CPU backend runs, made of these same functions).
//! Everything here is deterministic given the inputs and the sampler's seed: the
//! scheduler owns the batch, these functions only ever see one sequence.

pub mod batch;
pub mod beam;
pub mod guided;
pub mod logprobs;
pub mod params;
pub mod philox;
pub mod processors;
pub mod sampler;
pub mod stop;
mod truncation;
mod verify;

use crate::backend::cpu::exp::exp;
pub use guided::{GuidedCompiler, GuidedDecodingParams};
pub use logprobs::{Logprob, TokenLogprobs};
pub use params::{EarlyStopping, SamplingParams, SamplingType};
pub use processors::SequenceTokens;
pub use sampler::{SampleOutput, Sampler};
pub use stop::{Finish, FinishReason, OutputText, StopChecker, StopReason};

/// vLLM's `_SAMPLING_EPS`: temperatures below it mean greedy, and top-p / min-p /
/// penalties within it of their neutral value are treated as off.
pub const SAMPLING_EPS: f64 = 1e-5;

/// Index of the largest value; the first one on ties (as `torch.argmax`). NaNs
/// never win; an all-NaN or empty row gives 0.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] || values[best].is_nan() && !v.is_nan() {
            best = i;
        }
    }
    best as u32
}

/// `log_softmax(logits)` in f32, with the normaliser accumulated in f64. Masked
/// (-inf) entries stay -inf. A row with no finite entry (everything masked) comes
/// back all -inf rather than NaN, so samplers and logprobs stay well defined.
///
/// Each `e^(l - max)` is taken in f32 (within about one ulp: the vectorized
/// [`exp`]; an f64 `exp` is a libm call per entry) and the terms are summed
/// in f64 as [`SUM_LANES`] interleaved partial sums (one sequential chain of
/// f64 adds is latency-bound): over a 49k vocabulary 210 → 78 µs (AMD EPYC).
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return vec![f32::NEG_INFINITY; logits.len()];
    }
    // The terms first, in the buffer the result then overwrites.
    let mut out: Vec<f32> = logits.iter().map(|&l| exp(l - max)).collect();
    let mut sums = [0f64; SUM_LANES];
    let mut terms = out.chunks_exact(SUM_LANES);
    for chunk in &mut terms {
        for (s, &e) in sums.iter_mut().zip(chunk) {
            // A NaN logit's term is left out.
            *s += if e.is_nan() { 0.0 } else { f64::from(e) };
        }
    }
    let tail = terms.remainder().iter().filter(|e| !e.is_nan());
    let sum: f64 = sums.iter().sum::<f64>() + tail.map(|&e| f64::from(e)).sum::<f64>();
    let log_sum = sum.ln();
    for (o, &l) in out.iter_mut().zip(logits) {
        *o = ((l - max) as f64 - log_sum) as f32;
    }
    out
}

/// Partial sums of [`log_softmax`]'s normaliser.
const SUM_LANES: usize = 8;

/// `softmax(logits)` in f32 (normaliser in f64); see [`log_softmax`] for masked rows.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    log_softmax(logits).into_iter().map(f32::exp).collect()
}

/// `log_softmax(logits)[token]` of the raw logits, computed in f64: the model's own
/// probability of a token, independent of any sampling parameter.
pub fn token_logprob(logits: &[f32], token: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    match logits.get(token as usize) {
        Some(&l) => (l as f64 - max - sum.ln()) as f32,
        None => f32::NEG_INFINITY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_maximum_and_skips_nan() {
        assert_eq!(argmax(&[0.0, 2.0, 2.0, 1.0]), 1);
        assert_eq!(argmax(&[f32::NAN, -1.0, 3.0]), 2);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), 0);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn log_softmax_normalises_and_keeps_masks() {
        let row = [1.0f32, f32::NEG_INFINITY, 3.0];
        let lp = log_softmax(&row);
        let z = (1.0f64.exp() + 3.0f64.exp()).ln();
        assert!((lp[0] as f64 - (1.0 - z)).abs() < 1e-6);
        assert!((lp[2] as f64 - (3.0 - z)).abs() < 1e-6);
        assert_eq!(lp[1], f32::NEG_INFINITY);
        let total: f32 = softmax(&row).iter().sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!(log_softmax(&[f32::NEG_INFINITY; 2])
            .iter()
            .all(|&x| x == f32::NEG_INFINITY));
    }

    /// Over a vocabulary-sized row with masked and NaN entries (and a tail
    /// past the partial sums), every value is within its f32 rounding plus
    /// 1e-7 of the f64 computation, whose terms are f64 `exp`s summed in order.
    #[test]
    fn log_softmax_of_a_long_row_matches_f64() {
        let row: Vec<f32> = (0..49_157u32)
            .map(|i| match i % 1000 {
                3 => f32::NEG_INFINITY,
                7 => f32::NAN,
                _ => (i.wrapping_mul(2_654_435_761) >> 8) as f32 / 16_777_216.0 * 40.0 - 20.0,
            })
            .collect();
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = (row.iter().map(|&l| ((l - max) as f64).exp()))
            .filter(|e| !e.is_nan())
            .sum();
        let lp = log_softmax(&row);
        for (i, (&l, &got)) in row.iter().zip(&lp).enumerate() {
            let want = (l - max) as f64 - sum.ln();
            if l.is_nan() {
                assert!(got.is_nan(), "entry {i}: {got}");
            } else if l == f32::NEG_INFINITY {
                assert_eq!(got, f32::NEG_INFINITY, "entry {i}");
            } else {
                let bound = want.abs() * f64::from(f32::EPSILON) / 2.0 + 1e-7;
                assert!(
                    (got as f64 - want).abs() <= bound,
                    "entry {i}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn token_logprob_matches_softmax_and_tolerates_bad_ids() {
        let logits = [0.5f32, -1.0, 2.0];
        assert!((token_logprob(&logits, 2).exp() - softmax(&logits)[2]).abs() < 1e-6);
        assert_eq!(token_logprob(&logits, 7), f32::NEG_INFINITY);
    }
}
