//! The batched sampling op's description and result ([`super::Backend::sample_rows`]).
//!
//! Every row is described with plain, already normalised numbers (the engine
//! turns a request's `SamplingParams` into them), so a device can run the whole
//! step's rows at once: sparse logit adds (logit_bias), ids masked to -inf
//! (min_tokens' EOS and stop ids), the guided bitmask, penalties, temperature,
//! top-k/top-p/min-p, log_softmax, then argmax or a Philox draw, and the chosen
//! token's logprob and rank plus the top-N.

use crate::error::{Error, Result};

/// Most rows and most top logprobs one batch may ask for: bounds checked before
/// anything is allocated for them.
pub const MAX_SAMPLE_ROWS: usize = 1 << 16;
pub const MAX_TOP_LOGPROBS: usize = 1 << 10;

/// One row to sample. Neutral values turn a processor off: no adds or masked
/// ids, repetition 1, frequency and presence 0, temperature 1, top_k 0, top_p
/// 1, min_p 0.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRow {
    /// Row of the logits matrix (several rows may read the same one: the forks
    /// of a best_of group's first sample).
    pub logits_row: usize,
    /// Allowed tokens, one bit each (guided decoding), applied first.
    pub bitmask: Option<Vec<u32>>,
    /// Added to the token's logit (the logit bias, already clamped).
    pub logit_adds: Vec<(u32, f32)>,
    /// Set to -inf (EOS and stop ids before `min_tokens`).
    pub masked_ids: Vec<u32>,
    /// Each distinct token of the prompt and output, with its output count.
    pub penalty_tokens: Vec<(u32, u32)>,
    pub repetition_penalty: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f64,
    pub min_p: f64,
    /// `None`: greedy (argmax). `Some`: draw with Philox at (seed, stream, counter).
    pub draw: Option<(u64, u64, u64)>,
    /// Top logprobs wanted (0: the chosen token's only).
    pub top_logprobs: usize,
}

impl SampleRow {
    /// A greedy row over `logits_row` with every processor off.
    pub fn greedy(logits_row: usize) -> SampleRow {
        SampleRow {
            logits_row,
            bitmask: None,
            logit_adds: Vec::new(),
            masked_ids: Vec::new(),
            penalty_tokens: Vec::new(),
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            draw: None,
            top_logprobs: 0,
        }
    }

    pub fn has_penalties(&self) -> bool {
        self.repetition_penalty != 1.0
            || self.frequency_penalty != 0.0
            || self.presence_penalty != 0.0
    }
}

/// One step's rows over a `[rows, vocab]` logits matrix.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SampleBatch {
    pub vocab: usize,
    pub rows: Vec<SampleRow>,
}

impl SampleBatch {
    /// Checks every size against the logits (`len` values) before a backend
    /// allocates for it.
    pub fn check(&self, len: usize) -> Result<()> {
        if self.rows.len() > MAX_SAMPLE_ROWS {
            return Err(Error::invalid(format!(
                "{} rows to sample, more than {MAX_SAMPLE_ROWS}",
                self.rows.len()
            )));
        }
        let logits_rows = len.checked_div(self.vocab).unwrap_or(0);
        for r in &self.rows {
            if r.logits_row >= logits_rows {
                return Err(Error::invalid(format!(
                    "sample row reads logits row {} of {logits_rows}",
                    r.logits_row
                )));
            }
            if r.top_logprobs > MAX_TOP_LOGPROBS {
                return Err(Error::invalid(format!(
                    "{} top logprobs asked, more than {MAX_TOP_LOGPROBS}",
                    r.top_logprobs
                )));
            }
        }
        Ok(())
    }
}

/// A token id with its logprob and 1-based rank (vLLM's: 1 + the number of
/// tokens strictly more likely), from the processed log_softmax.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RankedToken {
    pub token: u32,
    pub logprob: f32,
    pub rank: usize,
}

/// What one row sampled: the token, and the top-N (most likely first).
#[derive(Debug, Clone, PartialEq)]
pub struct SampledRow {
    pub chosen: RankedToken,
    pub top: Vec<RankedToken>,
}

/// The host implementation of one row, which the CPU backend runs for each
/// row. The backend cannot import the sampling module (it sits above the
/// backend in the layering), so the caller hands it in.
pub trait HostRowSampler: Sync {
    /// Processes `logits` (one row, modified in place) as `row` says and samples it.
    fn sample_row(&self, logits: &mut [f32], row: &SampleRow) -> SampledRow;
}
