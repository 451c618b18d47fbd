//! The state of a request while it runs: a group of sequences (one while the
//! prompt is prefilled, then `best_of` forks sharing the prompt's blocks).

use std::collections::VecDeque;
use std::time::Instant;

use crate::kv_cache::block_manager::SeqId;
use crate::sampling::guided::Guide;
use crate::sampling::{OutputText, Sampler, SamplingParams, TokenLogprobs};
use crate::tokenizer::IncrementalDetokenizer;

pub use crate::sampling::{FinishReason, StopReason};

pub struct Sequence {
    pub id: SeqId,
    /// Prompt then output.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens whose K/V are in the cache.
    pub computed: usize,
    pub cum_logprob: f64,
    /// The chosen token's logprob (and the top-N asked for) at each output step.
    pub logprobs: Vec<TokenLogprobs>,
    /// This sequence's own random stream (forked from the request's seed).
    pub sampler: Sampler,
    /// Present when the engine has a tokenizer and the request wants text.
    pub detokenizer: Option<IncrementalDetokenizer>,
    /// The output text, cut at stop strings, and how much of it was streamed.
    pub text: OutputText,
    pub finish: Option<FinishReason>,
    pub stop_reason: Option<StopReason>,
    /// The output constraint's state after this sequence's tokens, if constrained.
    pub guide: Option<Guide>,
    /// Tokens to emit next instead of sampling: the choice (and its end token)
    /// that whole-choice scoring picked for a greedy `guided_choice`.
    pub forced: VecDeque<u32>,
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
    pub seqs: Vec<Sequence>,
    /// Sequences to fork into once the prompt is prefilled (best_of, or n).
    pub width: usize,
    /// Filled while the prompt is computed, when the request asks for them.
    pub prompt_logprobs: Option<Vec<Option<TokenLogprobs>>>,
    pub prompt_logprobs_reported: bool,
    pub arrival: Instant,
    pub first_token_at: Option<Instant>,
    /// Times this group was preempted (for statistics).
    pub preemptions: u32,
    /// A greedy `guided_choice`'s choices as token ids, until they are scored
    /// (when the prompt is computed).
    pub choices: Option<Vec<Vec<u32>>>,
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
    /// Text that is safe to stream now (stop strings held back).
    pub text: String,
    /// Per new token: its logprob, rank and the top-N asked for.
    pub logprobs: Vec<TokenLogprobs>,
    pub finish_reason: Option<FinishReason>,
    pub stop_reason: Option<StopReason>,
}

/// A finished sequence, as the request's final result reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqResult {
    pub index: usize,
    pub token_ids: Vec<u32>,
    pub text: String,
    pub logprobs: Vec<TokenLogprobs>,
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
    pub prompt_logprobs: Option<Vec<Option<TokenLogprobs>>>,
    /// On the last output: the best `n` sequences, best first.
    pub results: Option<Vec<SeqResult>>,
}

impl RequestOutput {
    pub fn is_finished(&self) -> bool {
        self.results.is_some()
    }
}
