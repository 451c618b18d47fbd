//! Per-request sampling parameters and the sampler: greedy, or seeded sampling
//! with temperature, top-k, top-p and min-p.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1 = off).
    pub top_p: f32,
    /// Keep the `top_k` most likely tokens (-1 = off).
    pub top_k: i32,
    /// Drop tokens less likely than `min_p` times the most likely one (0 = off).
    pub min_p: f32,
    /// Seed of this request's own generator: the same seed gives the same tokens
    /// whatever else runs in the batch.
    pub seed: Option<u64>,
    /// Keep generating past EOS.
    pub ignore_eos: bool,
    /// Extra token ids that end the sequence.
    pub stop_token_ids: Vec<u32>,
    /// Report log P(prompt token | tokens before it) for every prompt position.
    pub prompt_logprobs: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_tokens: 16,
            temperature: 1.0,
            top_p: 1.0,
            top_k: -1,
            min_p: 0.0,
            seed: None,
            ignore_eos: false,
            stop_token_ids: Vec::new(),
            prompt_logprobs: false,
        }
    }
}

impl SamplingParams {
    pub fn greedy(max_tokens: usize) -> SamplingParams {
        SamplingParams {
            max_tokens,
            temperature: 0.0,
            ..SamplingParams::default()
        }
    }

    /// Checks ranges with vLLM's messages.
    pub fn validate(&self) -> Result<()> {
        if self.temperature.is_nan() || self.temperature < 0.0 {
            return Err(Error::invalid(format!(
                "temperature must be non-negative, got {}.",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::invalid(format!(
                "top_p must be in (0, 1], got {}.",
                self.top_p
            )));
        }
        if self.top_k < -1 || self.top_k == 0 {
            return Err(Error::invalid(format!(
                "top_k must be -1 (disable), or at least 1, got {}.",
                self.top_k
            )));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(Error::invalid(format!(
                "min_p must be in [0, 1], got {}.",
                self.min_p
            )));
        }
        if self.max_tokens < 1 {
            return Err(Error::invalid(format!(
                "max_tokens must be at least 1, got {}.",
                self.max_tokens
            )));
        }
        Ok(())
    }
}

/// One sequence's sampler, owning its random generator.
pub struct Sampler {
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(seed: Option<u64>) -> Sampler {
        let seed = seed.unwrap_or_else(rand::random);
        Sampler {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Picks the next token from one row of logits.
    pub fn sample(&mut self, logits: &[f32], params: &SamplingParams) -> u32 {
        if params.temperature == 0.0 {
            return argmax(logits);
        }
        let mut probs = softmax(
            &logits
                .iter()
                .map(|&l| l / params.temperature)
                .collect::<Vec<_>>(),
        );
        filter(&mut probs, params);
        let total: f32 = probs.iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        let mut last_kept = 0;
        for (i, &p) in probs.iter().enumerate() {
            if p > 0.0 {
                last_kept = i;
                if r < p {
                    return i as u32;
                }
                r -= p;
            }
        }
        last_kept as u32
    }
}

/// Zeroes the probabilities top-k, top-p and min-p exclude.
fn filter(probs: &mut [f32], params: &SamplingParams) {
    let needs_order = params.top_k > 0 || params.top_p < 1.0;
    if needs_order {
        let mut order: Vec<u32> = (0..probs.len() as u32).collect();
        order.sort_by(|&a, &b| {
            probs[b as usize]
                .total_cmp(&probs[a as usize])
                .then(a.cmp(&b))
        });
        let mut keep = if params.top_k > 0 {
            (params.top_k as usize).min(order.len())
        } else {
            order.len()
        };
        if params.top_p < 1.0 {
            let kept_mass: f32 = order[..keep].iter().map(|&i| probs[i as usize]).sum();
            let mut cum = 0.0;
            for (rank, &i) in order[..keep].iter().enumerate() {
                cum += probs[i as usize] / kept_mass;
                if cum >= params.top_p {
                    keep = rank + 1;
                    break;
                }
            }
        }
        for &i in &order[keep..] {
            probs[i as usize] = 0.0;
        }
    }
    if params.min_p > 0.0 {
        let max = probs.iter().copied().fold(0.0, f32::max);
        probs
            .iter_mut()
            .filter(|p| **p < params.min_p * max)
            .for_each(|p| *p = 0.0);
    }
}

/// Index of the largest logit; the first one on ties (as torch.argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// `log_softmax(logits)[token]`, computed in f64 for accuracy.
pub fn token_logprob(logits: &[f32], token: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    (logits[token as usize] as f64 - max - sum.ln()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_max() {
        assert_eq!(argmax(&[0.0, 2.0, 2.0, 1.0]), 1);
        assert_eq!(
            Sampler::new(Some(0)).sample(&[0.0, 2.0, 3.0], &SamplingParams::greedy(1)),
            2
        );
    }

    #[test]
    fn seeded_sampling_repeats_and_follows_distribution() {
        let logits = [0.0f32, 1.0, 2.0, 3.0];
        let params = SamplingParams {
            temperature: 1.0,
            ..Default::default()
        };
        let draw = |seed| {
            let mut s = Sampler::new(Some(seed));
            (0..4000)
                .map(|_| s.sample(&logits, &params))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        let counts = draw(7).iter().fold([0usize; 4], |mut c, &t| {
            c[t as usize] += 1;
            c
        });
        let probs = softmax(&logits);
        for (c, p) in counts.iter().zip(probs) {
            assert!((*c as f32 / 4000.0 - p).abs() < 0.03, "{counts:?}");
        }
    }

    #[test]
    fn top_k_top_p_min_p_restrict_support() {
        let logits = [0.0f32, 1.0, 2.0, 3.0];
        let mut s = Sampler::new(Some(1));
        let only = |params: SamplingParams, s: &mut Sampler| {
            let mut seen: Vec<u32> = (0..500).map(|_| s.sample(&logits, &params)).collect();
            seen.sort();
            seen.dedup();
            seen
        };
        assert_eq!(
            only(
                SamplingParams {
                    top_k: 2,
                    ..Default::default()
                },
                &mut s
            ),
            vec![2, 3]
        );
        // p = [0.032, 0.087, 0.237, 0.644]: the top two reach 0.88.
        assert_eq!(
            only(
                SamplingParams {
                    top_p: 0.8,
                    ..Default::default()
                },
                &mut s
            ),
            vec![2, 3]
        );
        assert_eq!(
            only(
                SamplingParams {
                    min_p: 0.3,
                    ..Default::default()
                },
                &mut s
            ),
            vec![2, 3]
        );
    }

    #[test]
    fn validation_messages() {
        let bad = SamplingParams {
            top_k: 0,
            ..Default::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("top_k must be -1"));
        let bad = SamplingParams {
            temperature: -1.0,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        assert!(SamplingParams::greedy(4).validate().is_ok());
    }

    #[test]
    fn logprob_matches_softmax() {
        let logits = [0.5f32, -1.0, 2.0];
        assert!((token_logprob(&logits, 2).exp() - softmax(&logits)[2]).abs() < 1e-6);
    }
}
