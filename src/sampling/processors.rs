//! The logits processors, applied to one sequence's row of logits in vLLM
//! v0.4.3's order: logit bias (a logits processor in vLLM, run in the
//! `LogitsProcessor` layer before the sampler), then in the sampler the
//! `min_tokens` mask, repetition / frequency / presence penalties, temperature,
//! top-k and top-p together, and min-p.
//!
//! Every function costs O(vocab) plus O(tokens of the sequence · log) for the
//! penalties; top-k / top-p never sort the whole vocabulary unless top-p needs
//! most of it (see `truncation.rs`).

use std::collections::BTreeMap;

use super::params::SamplingParams;
use super::truncation::apply_top_k_top_p;
use super::{log_softmax, SAMPLING_EPS};

/// The tokens of one sequence, which the penalties and `min_tokens` look at.
#[derive(Debug, Clone, Copy, Default)]
pub struct SequenceTokens<'a> {
    pub prompt: &'a [u32],
    pub output: &'a [u32],
}

/// OpenAI's range for a logit bias; vLLM clamps to it when applying.
pub const LOGIT_BIAS_LIMIT: f64 = 100.0;

/// Adds each bias, clamped to [-100, 100], to its token's logit. Ids outside the
/// row are skipped ([`SamplingParams::verify_for_model`] rejects them up front).
pub fn apply_logit_bias(logits: &mut [f32], bias: &BTreeMap<u32, f64>) {
    for (&id, &b) in bias {
        if let Some(l) = logits.get_mut(id as usize) {
            *l += b.clamp(-LOGIT_BIAS_LIMIT, LOGIT_BIAS_LIMIT) as f32;
        }
    }
}

/// While fewer than `min_tokens` tokens were generated, EOS and the stop tokens
/// cannot be sampled. As in vLLM, EOS is masked even with `ignore_eos` (vLLM
/// masks its `all_stop_token_ids`, which always holds the tokenizer's EOS).
pub fn apply_min_tokens(
    logits: &mut [f32],
    min_tokens: usize,
    output_len: usize,
    eos_token_ids: &[u32],
    stop_token_ids: &[u32],
) {
    if output_len >= min_tokens {
        return;
    }
    for &id in eos_token_ids.iter().chain(stop_token_ids) {
        if let Some(l) = logits.get_mut(id as usize) {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// vLLM's `_apply_penalties`: first the repetition penalty on every token seen in
/// the prompt or the output (positive logits divided by it, others multiplied),
/// then `frequency · count` and `presence · [count > 0]` subtracted for tokens of
/// the output only (OpenAI's definition). Ids outside the row are ignored, as
/// vLLM's padding id is.
pub fn apply_penalties(
    logits: &mut [f32],
    tokens: SequenceTokens,
    presence_penalty: f32,
    frequency_penalty: f32,
    repetition_penalty: f32,
) {
    let counted = penalty_tokens(tokens);
    apply_counted_penalties(
        logits,
        &counted,
        presence_penalty,
        frequency_penalty,
        repetition_penalty,
    );
}

/// Each distinct token of the prompt and the output, ascending, with how often
/// it occurs in the output: what the penalties need, as the batched op takes it.
pub fn penalty_tokens(tokens: SequenceTokens) -> Vec<(u32, u32)> {
    let mut all: Vec<(u32, u32)> = tokens
        .prompt
        .iter()
        .map(|&t| (t, 0))
        .chain(tokens.output.iter().map(|&t| (t, 1)))
        .collect();
    all.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(all.len());
    for (id, in_output) in all {
        match out.last_mut() {
            Some(last) if last.0 == id => last.1 += in_output,
            _ => out.push((id, in_output)),
        }
    }
    out
}

/// [`apply_penalties`] over [`penalty_tokens`]' list: per token the repetition
/// penalty, then `frequency · count + presence` where it is in the output.
pub fn apply_counted_penalties(
    logits: &mut [f32],
    counted: &[(u32, u32)],
    presence_penalty: f32,
    frequency_penalty: f32,
    repetition_penalty: f32,
) {
    let additive = frequency_penalty != 0.0 || presence_penalty != 0.0;
    for &(id, count) in counted {
        let Some(l) = logits.get_mut(id as usize) else {
            continue;
        };
        if repetition_penalty != 1.0 {
            *l = if *l > 0.0 {
                *l / repetition_penalty
            } else {
                *l * repetition_penalty
            };
        }
        if additive && count > 0 {
            *l -= frequency_penalty * count as f32;
            *l -= presence_penalty;
        }
    }
}

/// Divides by the temperature. Greedy requests (temperature below 1e-5) divide by
/// 1, as vLLM does to avoid dividing by zero.
pub fn apply_temperature(logits: &mut [f32], temperature: f64) {
    let t = if temperature < SAMPLING_EPS {
        1.0
    } else {
        temperature as f32
    };
    if t != 1.0 {
        logits.iter_mut().for_each(|l| *l /= t);
    }
}

/// vLLM's `_apply_min_p`: masks tokens whose probability is below `min_p` times
/// the largest one. p_i / p_max = exp(l_i - l_max), so no softmax is needed.
pub fn apply_min_p(logits: &mut [f32], min_p: f64) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return;
    }
    for l in logits.iter_mut() {
        if (((*l - max) as f64).exp()) < min_p {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// The truncation parameters of a row, after vLLM's normalisation: `None` = off.
/// top_k -1 or at least the vocabulary is off; top_p within 1e-5 of 1 is off (as
/// vLLM's `do_top_p_top_k` flag), min_p within 1e-5 of 0 is off; greedy requests
/// have neither (their constructor resets them).
pub(crate) fn truncation(
    params: &SamplingParams,
    vocab: usize,
) -> (Option<usize>, Option<f64>, Option<f64>) {
    if params.is_greedy() {
        return (None, None, None);
    }
    let top_k = usize::try_from(params.top_k)
        .ok()
        .filter(|&k| k >= 1 && k < vocab);
    let top_p = Some(params.top_p).filter(|&p| p < 1.0 - SAMPLING_EPS);
    let min_p = Some(params.min_p).filter(|&p| p > SAMPLING_EPS);
    (top_k, top_p, min_p)
}

/// Temperature, top-k/top-p and min-p: what every row goes through, including
/// the prompt rows of prompt logprobs.
fn apply_temperature_and_truncation(logits: &mut [f32], params: &SamplingParams) {
    apply_temperature(logits, params.temperature);
    let (top_k, top_p, min_p) = truncation(params, logits.len());
    apply_truncation(logits, top_k, top_p, min_p);
}

/// Top-k and top-p together, then min-p (each `None` = off).
pub(crate) fn apply_truncation(
    logits: &mut [f32],
    top_k: Option<usize>,
    top_p: Option<f64>,
    min_p: Option<f64>,
) {
    if top_k.is_some() || top_p.is_some() {
        apply_top_k_top_p(logits, top_k, top_p);
    }
    if let Some(min_p) = min_p {
        apply_min_p(logits, min_p);
    }
}

/// Everything vLLM does to a row it samples from, in order. `eos_token_ids` are
/// the ids `min_tokens` keeps out (the tokenizer's EOS, possibly with the
/// generation config's).
pub fn process_logits(
    logits: &mut [f32],
    params: &SamplingParams,
    tokens: SequenceTokens,
    eos_token_ids: &[u32],
) {
    apply_logit_bias(logits, &params.logit_bias);
    apply_min_tokens(
        logits,
        params.min_tokens,
        tokens.output.len(),
        eos_token_ids,
        &params.stop_token_ids,
    );
    let identity = params.presence_penalty == 0.0
        && params.frequency_penalty == 0.0
        && params.repetition_penalty == 1.0;
    if !identity {
        apply_penalties(
            logits,
            tokens,
            params.presence_penalty as f32,
            params.frequency_penalty as f32,
            params.repetition_penalty as f32,
        );
    }
    apply_temperature_and_truncation(logits, params);
}

/// What vLLM does to a prompt row whose logprobs are reported: temperature,
/// top-k/top-p and min-p, but no logit bias, min_tokens or penalties (vLLM
/// applies logits processors to sampled rows only and gives prompt rows neutral
/// penalties).
pub fn process_prompt_logits(logits: &mut [f32], params: &SamplingParams) {
    apply_temperature_and_truncation(logits, params);
}

/// [`process_logits`] followed by `log_softmax`: the row greedy, random and beam
/// search choose from and logprobs are reported from.
pub fn processed_logprobs(
    logits: &mut [f32],
    params: &SamplingParams,
    tokens: SequenceTokens,
    eos_token_ids: &[u32],
) -> Vec<f32> {
    process_logits(logits, params, tokens, eos_token_ids);
    log_softmax(logits)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEG: f32 = f32::NEG_INFINITY;

    #[test]
    fn logit_bias_is_clamped_and_skips_unknown_ids() {
        let mut row = [0.0f32, 1.0, 2.0];
        let bias = BTreeMap::from([(0, 250.0), (2, -0.5), (9, 1.0)]);
        apply_logit_bias(&mut row, &bias);
        assert_eq!(row, [100.0, 1.0, 1.5]);
    }

    #[test]
    fn min_tokens_masks_eos_and_stop_ids_until_reached() {
        let mut row = [1.0f32; 5];
        apply_min_tokens(&mut row, 2, 1, &[4], &[1, 7]);
        assert_eq!(row, [1.0, NEG, 1.0, 1.0, NEG]);
        let mut row = [1.0f32; 5];
        apply_min_tokens(&mut row, 2, 2, &[4], &[1]);
        assert_eq!(row, [1.0; 5]);
    }

    #[test]
    fn penalties_follow_vllm_formulas() {
        let mut row = [2.0f32, -2.0, 3.0, 1.0];
        let tokens = SequenceTokens {
            prompt: &[0, 1],
            output: &[2, 2, 1, 99],
        };
        apply_penalties(&mut row, tokens, 0.5, 0.25, 2.0);
        let want = [
            2.0 / 2.0,                    // prompt only: repetition
            -2.0 * 2.0 - 0.25 - 0.5,      // both: repetition, once in output
            3.0 / 2.0 - 2.0 * 0.25 - 0.5, // output twice
            1.0,                          // untouched
        ];
        assert_eq!(row, want);
    }

    #[test]
    fn temperature_zero_divides_by_one() {
        let mut row = [1.0f32, 2.0];
        apply_temperature(&mut row, 0.0);
        assert_eq!(row, [1.0, 2.0]);
        apply_temperature(&mut row, 0.5);
        assert_eq!(row, [2.0, 4.0]);
    }

    #[test]
    fn min_p_is_relative_to_the_top_probability() {
        // p ∝ e^0, e^-1, e^-3: ratios to the max 1, 0.37, 0.05.
        let mut row = [0.0f32, -1.0, -3.0];
        apply_min_p(&mut row, 0.1);
        assert_eq!(row, [0.0, -1.0, NEG]);
        // Strictly below: min_p = 1 keeps every token tied with the most likely.
        let mut row = [2.0f32, 1.0, 2.0];
        apply_min_p(&mut row, 1.0);
        assert_eq!(row, [2.0, NEG, 2.0]);
    }

    #[test]
    fn greedy_rows_skip_truncation() {
        let params = SamplingParams {
            top_k: 1,
            ..SamplingParams::greedy(1)
        };
        let mut row = [1.0f32, 2.0, 3.0];
        process_logits(&mut row, &params, SequenceTokens::default(), &[]);
        assert_eq!(row, [1.0, 2.0, 3.0]);
    }
}
