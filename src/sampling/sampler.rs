//! The per-sequence sampler: greedy (argmax) or random, each sequence with its
//! own generator.
//!
//! vLLM v0.4.3 gives a seeded request one `torch.Generator` per sequence group
//! and draws the whole batch slice of the group from it, so a seeded request's
//! tokens can depend on how many rows other requests add (`max_best_of_in_batch`).
//! Here every sequence owns a Philox4x32-10 stream instead (see `philox.rs`;
//! until issue 12 it was ChaCha8): a request's root sampler is keyed with the
//! request's seed (or a random one), sequence `i` of the group uses
//! [`Sampler::fork`]`(i)` — stream `i + 1` of the same key — and its `k`-th draw
//! is counter `k` of that stream, so the tokens of every sequence depend only on
//! the seed, its index and its own logits. The generator is counter-based so the
//! device sampler (`Backend::sample_rows` on CUDA, csrc/sampling.cu) draws the
//! same uniform for the same (seed, stream, counter). At the first step of an `n`/`best_of` > 1 request all children sample
//! from the same prompt row, each with its own stream, as vLLM draws `best_of`
//! samples from that row.
//!
//! Random sampling inverts the CDF of the processed distribution with one uniform
//! draw (f64 accumulation, ids in order) instead of vLLM's exponential race
//! (`argmax(probs / Exp(1))`, one draw per vocabulary entry): both are exact
//! samples of the same distribution, this one costs one random number per token.

use super::argmax;
use super::logprobs::TokenLogprobs;
use super::params::{SamplingParams, SamplingType};
use super::philox::philox_uniform;
use super::processors::{processed_logprobs, SequenceTokens};
use crate::backend::cpu::exp::exp_f64;
use crate::backend::cpu::lanes::avx512_dispatch;

/// One sequence's sampler: its Philox stream and how far it has drawn.
#[derive(Debug, Clone)]
pub struct Sampler {
    seed: u64,
    stream: u64,
    draws: u64,
}

/// A sampled token and the logprobs vLLM records for it.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleOutput {
    pub token: u32,
    pub logprobs: TokenLogprobs,
}

impl Sampler {
    /// The root sampler of a request: seeded with `seed`, or with a random seed.
    pub fn new(seed: Option<u64>) -> Sampler {
        let seed = seed.unwrap_or_else(rand::random);
        Sampler {
            seed,
            stream: 0,
            draws: 0,
        }
    }

    /// The sampler of sequence `index` of the group: a stream of its own, derived
    /// from the seed and `index` only (not from how far `self` has drawn).
    pub fn fork(&self, index: u64) -> Sampler {
        Sampler {
            seed: self.seed,
            stream: index.wrapping_add(1),
            draws: 0,
        }
    }

    /// Where the next draw comes from: (seed, stream, counter).
    pub fn position(&self) -> (u64, u64, u64) {
        (self.seed, self.stream, self.draws)
    }

    /// Counts a draw made elsewhere (the batched op) from [`Sampler::position`].
    pub fn advance(&mut self) {
        self.draws += 1;
    }

    /// The next uniform in [0, 1) of this sampler's stream.
    fn uniform(&mut self) -> f64 {
        let u = philox_uniform(self.seed, self.stream, self.draws);
        self.draws += 1;
        u
    }

    /// The seed this sampler's streams derive from (the request's, or the random
    /// one drawn for it).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Picks a token from a processed log_softmax row (see
    /// [`processed_logprobs`]): argmax for greedy (first maximum, as
    /// `torch.argmax`), a draw otherwise. Beam search does not sample; it is
    /// answered with the argmax — use [`super::beam`] for it.
    pub fn sample(&mut self, logprobs: &[f32], params: &SamplingParams) -> u32 {
        match params.sampling_type() {
            SamplingType::Greedy | SamplingType::Beam => argmax(logprobs),
            SamplingType::Random | SamplingType::RandomSeed => self.draw(logprobs),
        }
    }

    /// An exact draw from exp(logprobs) with this sampler's next uniform (one
    /// per draw, used or not, so the counter is the number of random steps).
    fn draw(&mut self, logprobs: &[f32]) -> u32 {
        let u = self.uniform();
        draw_with(logprobs, u)
    }

    /// One whole step for a sampled (non-beam) sequence: processes `logits` in
    /// place, samples, and collects the logprobs vLLM records (top-N =
    /// `params.logprobs`).
    pub fn next_token(
        &mut self,
        logits: &mut [f32],
        params: &SamplingParams,
        tokens: SequenceTokens,
        eos_token_ids: &[u32],
    ) -> SampleOutput {
        let row = processed_logprobs(logits, params, tokens, eos_token_ids);
        let token = self.sample(&row, params);
        SampleOutput {
            token,
            logprobs: TokenLogprobs::new(&row, token, params.logprobs),
        }
    }

    /// A token chosen ahead (whole-choice `guided_choice`) with the logprobs a
    /// sampled one would get from the same processed row; nothing is drawn.
    pub fn forced_token(
        logits: &mut [f32],
        params: &SamplingParams,
        tokens: SequenceTokens,
        eos_token_ids: &[u32],
        token: u32,
    ) -> SampleOutput {
        let row = processed_logprobs(logits, params, tokens, eos_token_ids);
        SampleOutput {
            token,
            logprobs: TokenLogprobs::new(&row, token, params.logprobs),
        }
    }
}

avx512_dispatch!(
    /// The draw from exp(logprobs) that uniform `u` in [0, 1) picks, by inverting
    /// the CDF (f64 accumulation, ids in order). A row with no probability mass
    /// (everything masked) falls back to the argmax.
    ///
    /// The weights are [`exp_f64`] (one ulp of libm's, vectorized) and the
    /// total and the blocks before the target's are summed in f64 lanes, so the
    /// rounding differs from one sequential sum only in the last bits (as the
    /// GPU's block sums do). With a libm `exp` per entry and one sequential sum,
    /// sampling a 49k-entry row at a temperature took 225 µs (AMD EPYC), 88 now.
    pub fn draw_with(logprobs: &[f32], u: f64) -> u32 => draw_blocks
);

/// Entries weighed at a time into a buffer on the stack.
const DRAW_BLOCK: usize = 512;
/// Partial sums of a block's weights.
const DRAW_LANES: usize = 8;

#[inline(always)]
fn weights(block: &[f32], out: &mut [f64; DRAW_BLOCK]) -> f64 {
    for (w, &lp) in out.iter_mut().zip(block) {
        let e = exp_f64(f64::from(lp));
        *w = if e.is_finite() { e } else { 0.0 };
    }
    let mut sums = [0f64; DRAW_LANES];
    let mut chunks = out[..block.len()].chunks_exact(DRAW_LANES);
    for chunk in &mut chunks {
        for (s, &w) in sums.iter_mut().zip(chunk) {
            *s += w;
        }
    }
    sums.iter().chain(chunks.remainder()).sum()
}

#[inline(always)]
fn draw_blocks(logprobs: &[f32], u: f64) -> u32 {
    // (Loops, not closures: a closure would not get this function's target
    // features.)
    let mut w = [0f64; DRAW_BLOCK];
    let mut block_totals = Vec::with_capacity(logprobs.len().div_ceil(DRAW_BLOCK));
    let mut total = 0.0;
    for block in logprobs.chunks(DRAW_BLOCK) {
        let block_total = weights(block, &mut w);
        block_totals.push(block_total);
        total += block_total;
    }
    if total <= 0.0 || !total.is_finite() {
        return argmax(logprobs);
    }
    let target = u * total;
    let mut acc = 0.0;
    for (b, (block, &block_total)) in logprobs.chunks(DRAW_BLOCK).zip(&block_totals).enumerate() {
        if target >= acc + block_total {
            acc += block_total;
            continue;
        }
        // The target's block: its weights again, summed in order.
        weights(block, &mut w);
        for (i, &w) in w[..block.len()].iter().enumerate() {
            acc += w;
            if w > 0.0 && target < acc {
                return (b * DRAW_BLOCK + i) as u32;
            }
        }
    }
    // Rounding left the target past the last bucket: it belongs to the last one.
    let positive = |lp: f32| {
        let e = exp_f64(f64::from(lp));
        e.is_finite() && e > 0.0
    };
    let last_positive = logprobs.iter().rposition(|&lp| positive(lp));
    last_positive.map_or_else(|| argmax(logprobs), |i| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::log_softmax;

    fn random() -> SamplingParams {
        SamplingParams::default()
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let row = log_softmax(&[0.0, 2.0, 2.0, 1.0]);
        assert_eq!(
            Sampler::new(Some(0)).sample(&row, &SamplingParams::greedy(1)),
            1
        );
    }

    #[test]
    fn same_seed_same_draws_and_forks_are_independent_of_the_parent() {
        let row = log_softmax(&[0.0, 1.0, 2.0, 3.0]);
        let draws = |s: &mut Sampler| {
            (0..200)
                .map(|_| s.sample(&row, &random()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            draws(&mut Sampler::new(Some(7))),
            draws(&mut Sampler::new(Some(7)))
        );
        assert_ne!(
            draws(&mut Sampler::new(Some(7))),
            draws(&mut Sampler::new(Some(8)))
        );
        let root = Sampler::new(Some(7));
        let mut used = root.clone();
        draws(&mut used);
        assert_eq!(draws(&mut root.fork(3)), draws(&mut used.fork(3)));
        assert_ne!(draws(&mut root.fork(0)), draws(&mut root.fork(1)));
        assert_ne!(draws(&mut root.fork(0)), draws(&mut root.clone()));
    }

    #[test]
    fn masked_tokens_are_never_drawn() {
        let row = log_softmax(&[0.0, f32::NEG_INFINITY, 0.0]);
        let mut s = Sampler::new(Some(1));
        assert!((0..500).all(|_| s.sample(&row, &random()) != 1));
        let empty = [f32::NEG_INFINITY; 3];
        assert_eq!(s.sample(&empty, &random()), 0);
    }

    /// The blocked, vectorized draw picks what one sequential pass with
    /// libm's `exp` picks, for uniforms across [0, 1) (their ends included)
    /// over vocabulary-sized rows with masked and NaN entries.
    #[test]
    fn draws_match_a_sequential_libm_inversion() {
        let sequential = |logprobs: &[f32], u: f64| {
            let weight = |lp: f32| Some(f64::from(lp).exp()).filter(|w| w.is_finite());
            let total: f64 = logprobs.iter().filter_map(|&lp| weight(lp)).sum();
            let mut acc = 0.0;
            for (i, &lp) in logprobs.iter().enumerate() {
                let w = weight(lp).unwrap_or(0.0);
                acc += w;
                if w > 0.0 && u * total < acc {
                    return i as u32;
                }
            }
            logprobs
                .iter()
                .rposition(|&lp| weight(lp).is_some_and(|w| w > 0.0))
                .unwrap() as u32
        };
        for (vocab, temperature) in [(49_152u32, 1.0f32), (1_000, 0.3), (32_001, 3.0)] {
            let logits: Vec<f32> = (0..vocab)
                .map(|i| match i % 211 {
                    7 => f32::NEG_INFINITY,
                    9 if vocab > 1_000 => f32::NAN,
                    _ => {
                        ((i.wrapping_mul(2_654_435_761) >> 9) as f32 / 8_388_608.0 * 12.0 - 6.0)
                            / temperature
                    }
                })
                .collect();
            let row = log_softmax(&logits);
            for k in 0..=2_000u32 {
                let u = f64::from(k) / 2_000.0 * (1.0 - f64::EPSILON);
                assert_eq!(
                    draw_with(&row, u),
                    sequential(&row, u),
                    "vocab {vocab}, u {u}"
                );
            }
        }
    }
}
