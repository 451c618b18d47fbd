//! The state of a request while it runs: a group of sequences (one while the
//! prompt is prefilled, then `best_of` forks sharing the prompt's blocks).

use std::time::Instant;

use crate::kv_cache::block_manager::SeqId;
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::IncrementalDetokenizer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS, a stop token or a stop string.
    Stop,
    /// `max_tokens` or the model's length limit.
    Length,
    /// Aborted by the caller.
    Abort,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}

/// What stopped a sequence with [`FinishReason::Stop`] other than EOS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    Token(u32),
    Text(String),
}

pub struct Sequence {
    pub id: SeqId,
    /// Prompt then output.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens whose K/V are in the cache.
    pub computed: usize,
    pub cum_logprob: f64,
    /// log P of each output token.
    pub logprobs: Vec<f32>,
    /// Present when the engine has a tokenizer.
    pub detokenizer: Option<IncrementalDetokenizer>,
    /// The output decoded so far.
    pub text: String,
    pub finish: Option<FinishReason>,
    pub stop_reason: Option<StopReason>,
}

impl Sequence {
    pub fn output(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }

    pub fn is_finished(&self) -> bool {
        self.finish.is_some()
    }
}

pub struct SequenceGroup {
    pub request_id: u64,
    pub params: SamplingParams,
    /// One generator per request, drawn from in sequence order, so a seeded
    /// request samples the same tokens whatever else is in the batch.
    pub sampler: Sampler,
    pub seqs: Vec<Sequence>,
    /// Sequences to fork into once the prompt is prefilled (best_of, or n).
    pub width: usize,
    pub prompt_logprobs: Option<Vec<Option<f32>>>,
    pub prompt_logprobs_reported: bool,
    pub arrival: Instant,
    pub first_token_at: Option<Instant>,
    /// Times this group was preempted (for statistics).
    pub preemptions: u32,
}

impl SequenceGroup {
    pub fn prompt(&self) -> &[u32] {
        let s = &self.seqs[0];
        &s.tokens[..s.prompt_len]
    }

    pub fn is_finished(&self) -> bool {
        self.seqs.iter().all(Sequence::is_finished)
    }

    /// The group has sampled its first tokens (and forked, if it forks).
    pub fn has_output(&self) -> bool {
        self.seqs.iter().any(|s| s.tokens.len() > s.prompt_len)
    }

    pub fn unfinished(&self) -> impl Iterator<Item = (usize, &Sequence)> {
        self.seqs
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_finished())
    }
}

/// One sequence's progress in one step.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqDelta {
    /// Which of the request's sequences (0..best_of).
    pub index: usize,
    pub token_ids: Vec<u32>,
    pub text: String,
    /// log P of each new token.
    pub logprobs: Vec<f32>,
    pub finish_reason: Option<FinishReason>,
    pub stop_reason: Option<StopReason>,
}

/// A finished sequence, as the request's final result reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqResult {
    pub index: usize,
    pub token_ids: Vec<u32>,
    pub text: String,
    pub logprobs: Vec<f32>,
    pub cum_logprob: f64,
    pub finish_reason: FinishReason,
    pub stop_reason: Option<StopReason>,
}

/// What one step produced for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestOutput {
    pub request_id: u64,
    pub prompt_token_ids_len: usize,
    pub deltas: Vec<SeqDelta>,
    /// Only in the first output of a request that asked for them.
    pub prompt_logprobs: Option<Vec<Option<f32>>>,
    /// On the last output: the best `n` sequences, best first.
    pub results: Option<Vec<SeqResult>>,
}

impl RequestOutput {
    pub fn is_finished(&self) -> bool {
        self.results.is_some()
    }
}
