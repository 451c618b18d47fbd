//! The sampler as one op over a step's rows: a request's parameters turned
//! into the backend's [`SampleRow`], and the host implementation of a row that
//! the CPU backend runs (`Backend::sample_rows`).
//!
//! Which processors the op covers, per processor of `processors.rs`:
//! - logit_bias: in the op (sparse adds, clamped here);
//! - min_tokens: in the op (EOS and stop ids masked while too few tokens);
//! - penalties, temperature, top-k/top-p, min-p: in the op;
//! - guided decoding's allowed tokens: in the op (the bitmask, applied first);
//! - whole-choice `guided_choice` (forced tokens), beam search and prompt
//!   logprobs stay on the host path (they read whole rows or several at once).
//!
//! The semantics are [`processed_logprobs`](super::processors::processed_logprobs)
//! + [`Sampler::sample`] + [`TokenLogprobs::new`], by the same functions.

use crate::backend::{HostRowSampler, RankedToken, SampleRow, SampledRow};

use super::guided::apply_token_bitmask;
use super::logprobs::{Logprob, TokenLogprobs};
use super::params::{SamplingParams, SamplingType};
use super::philox::philox_uniform;
use super::processors::{
    apply_counted_penalties, apply_truncation, penalty_tokens, truncation, SequenceTokens,
    LOGIT_BIAS_LIMIT,
};
use super::sampler::{draw_with, SampleOutput, Sampler};
use super::{argmax, log_softmax_in_place, SAMPLING_EPS};

/// What a sequence's next token needs besides its logits.
pub struct RowRequest<'a> {
    pub logits_row: usize,
    pub vocab: usize,
    pub params: &'a SamplingParams,
    pub tokens: SequenceTokens<'a>,
    pub eos_token_ids: &'a [u32],
    pub bitmask: Option<&'a [u32]>,
}

/// The op's row for a sampled (non-beam) sequence; `sampler` gives the draw's
/// position (the caller advances it once the row is sampled, for random rows).
pub fn sample_row_for(req: &RowRequest, sampler: &Sampler) -> SampleRow {
    let params = req.params;
    let mut row = SampleRow::greedy(req.logits_row);
    row.bitmask = req.bitmask.map(<[u32]>::to_vec);
    row.logit_adds = params
        .logit_bias
        .iter()
        .map(|(&id, &b)| (id, b.clamp(-LOGIT_BIAS_LIMIT, LOGIT_BIAS_LIMIT) as f32))
        .collect();
    if req.tokens.output.len() < params.min_tokens {
        row.masked_ids = req
            .eos_token_ids
            .iter()
            .chain(&params.stop_token_ids)
            .copied()
            .collect();
    }
    let identity = params.presence_penalty == 0.0
        && params.frequency_penalty == 0.0
        && params.repetition_penalty == 1.0;
    if !identity {
        row.penalty_tokens = penalty_tokens(req.tokens);
        row.presence_penalty = params.presence_penalty as f32;
        row.frequency_penalty = params.frequency_penalty as f32;
        row.repetition_penalty = params.repetition_penalty as f32;
    }
    // As apply_temperature: below 1e-5 divides by 1.
    if params.temperature >= SAMPLING_EPS {
        row.temperature = params.temperature as f32;
    }
    let (top_k, top_p, min_p) = truncation(params, req.vocab);
    row.top_k = top_k.unwrap_or(0);
    row.top_p = top_p.unwrap_or(1.0);
    row.min_p = min_p.unwrap_or(0.0);
    if matches!(
        params.sampling_type(),
        SamplingType::Random | SamplingType::RandomSeed
    ) {
        row.draw = Some(sampler.position());
    }
    row.top_logprobs = params.logprobs.unwrap_or(0);
    row
}

/// The op's result as the sampler's output (logprobs not yet detokenized).
pub fn sample_output(sampled: &SampledRow) -> SampleOutput {
    let logprob = |t: &RankedToken| Logprob {
        token_id: t.token,
        logprob: t.logprob,
        rank: t.rank,
    };
    SampleOutput {
        token: sampled.chosen.token,
        logprobs: TokenLogprobs {
            chosen: logprob(&sampled.chosen),
            top: sampled.top.iter().map(logprob).collect(),
            decoded: Vec::new(),
        },
    }
}

/// The host implementation of a row: the same processors, in the same order.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostSampler;

impl HostRowSampler for HostSampler {
    fn sample_row(&self, logits: &mut [f32], row: &SampleRow) -> SampledRow {
        if let Some(mask) = &row.bitmask {
            apply_token_bitmask(logits, mask);
        }
        for &(id, add) in &row.logit_adds {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += add;
            }
        }
        for &id in &row.masked_ids {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        if row.has_penalties() {
            let (p, f, r) = (
                row.presence_penalty,
                row.frequency_penalty,
                row.repetition_penalty,
            );
            apply_counted_penalties(logits, &row.penalty_tokens, p, f, r);
        }
        // The divisor sample_row_for chose (1 for greedy), as apply_temperature.
        if row.temperature != 1.0 {
            logits.iter_mut().for_each(|l| *l /= row.temperature);
        }
        let top_k = Some(row.top_k).filter(|&k| k >= 1 && k < logits.len());
        let top_p = Some(row.top_p).filter(|&p| p < 1.0);
        let min_p = Some(row.min_p).filter(|&p| p > 0.0);
        apply_truncation(logits, top_k, top_p, min_p);
        log_softmax_in_place(logits);
        let lp = &*logits;
        let token = match row.draw {
            None => argmax(lp),
            Some((seed, stream, counter)) => draw_with(lp, philox_uniform(seed, stream, counter)),
        };
        let t = TokenLogprobs::new(lp, token, Some(row.top_logprobs));
        let ranked = |l: &Logprob| RankedToken {
            token: l.token_id,
            logprob: l.logprob,
            rank: l.rank,
        };
        SampledRow {
            chosen: ranked(&t.chosen),
            top: t.top.iter().map(ranked).collect(),
        }
    }
}
