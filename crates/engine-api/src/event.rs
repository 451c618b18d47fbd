//! The JSON of an event (`engine_event_t.json`, include/engine.h documents it):
//! a delta of one sequence, or the final event with every returned sequence.
//! The engine writes it, the server reads it.

use serde::{Deserialize, Deserializer, Serialize};

/// One event of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Event {
    Delta(Delta),
    Final(Final),
}

impl Event {
    /// The prompt's logprobs, on the request's first event when it asked for them.
    pub fn prompt_logprobs(&self) -> Option<&Vec<Option<TokenLogprobs>>> {
        match self {
            Event::Delta(d) => d.prompt_logprobs.as_ref(),
            Event::Final(f) => f.prompt_logprobs.as_ref(),
        }
    }
}

/// New tokens (and their text) of one sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    pub request_id: u64,
    /// Which of the request's sequences.
    pub index: usize,
    pub token_ids: Vec<u32>,
    pub text: String,
    /// One entry per token of `token_ids`; `None` unless the request asked.
    pub logprobs: Option<Vec<TokenLogprobs>>,
    /// Set on the sequence's last delta.
    pub finish_reason: Option<FinishReason>,
    pub stop_reason: Option<StopReason>,
    /// This sequence's tokens so far.
    pub usage: Usage,
    /// On the request's first event when it asked for them: one entry per
    /// prompt token, `None` first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<Vec<Option<TokenLogprobs>>>,
}

/// The request is done: every returned sequence, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Final {
    pub request_id: u64,
    /// The best sequence's (`None` when nothing was returned).
    pub finish_reason: Option<FinishReason>,
    pub results: Vec<SeqResult>,
    /// All returned sequences together.
    pub usage: Usage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<Vec<Option<TokenLogprobs>>>,
}

/// One finished sequence of the final event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeqResult {
    /// The sequence's index in its request (what its deltas carried).
    pub index: usize,
    pub token_ids: Vec<u32>,
    pub text: String,
    pub logprobs: Option<Vec<TokenLogprobs>>,
    /// JSON has no -inf: it is written as null and read back as -inf.
    #[serde(deserialize_with = "null_is_neg_infinity")]
    pub cumulative_logprob: f64,
    pub finish_reason: FinishReason,
    pub stop_reason: Option<StopReason>,
}

/// One token's logprobs: the sampled token first, then the top ones asked for.
pub type TokenLogprobs = Vec<LogprobEntry>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogprobEntry {
    pub token_id: u32,
    /// The engine's f32, written with its shortest digits (`f32_digits`).
    pub logprob: f64,
    /// 1 for the most likely token.
    pub rank: usize,
    /// The token's text where it stands; absent when the request does not detokenize.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoded_token: Option<String>,
}

/// Widens an f32 to the f64 of its shortest decimal (-0.1f32 → -0.1, not
/// -0.10000000149011612), so that the JSON carries the digits the f32 prints
/// as, and a reader sees the value it would parse from them.
pub fn f32_digits(x: f32) -> f64 {
    if !x.is_finite() {
        return f64::from(x);
    }
    x.to_string().parse().unwrap_or(f64::from(x))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// vLLM's finish_reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// EOS, a stop token or a stop string.
    Stop,
    /// `max_tokens` or the model's length.
    Length,
    /// Aborted, or the engine failed.
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

/// vLLM's stop_reason: the stop token or the stop string that ended a sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StopReason {
    Token(u32),
    Text(String),
}

fn null_is_neg_infinity<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NEG_INFINITY))
}

#[cfg(test)]
#[path = "event/tests.rs"]
mod tests;
