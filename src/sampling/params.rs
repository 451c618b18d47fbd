//! `SamplingParams`: every field of vLLM v0.4.3's `vllm.SamplingParams`, its
//! defaults and derived properties (validation is in `verify.rs`).
//!
//! Floats are f64 because vLLM's are Python floats: range checks and the numbers
//! printed in messages must see the value the client sent, not an f32 rounding.
//! The processors convert to f32, the dtype of the logits they act on.

use std::collections::BTreeMap;

use super::guided::GuidedDecodingParams;
use super::{StopStrings, SAMPLING_EPS};
use crate::error::Result;

/// Beam search's stopping rule (vLLM's `early_stopping: Union[bool, str]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EarlyStopping {
    /// `False`: stop when the best running beam cannot beat the worst kept
    /// finished one at its current length (HF's heuristic).
    #[default]
    False,
    /// `True`: stop as soon as `best_of` finished candidates exist.
    True,
    /// `"never"`: stop only when no better candidate is possible at all
    /// (canonical beam search).
    Never,
}

/// How the next token is chosen (vLLM's `SamplingType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplingType {
    Greedy,
    Random,
    RandomSeed,
    Beam,
}

/// Per-request sampling parameters, as vLLM v0.4.3 defines them.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Sequences returned.
    pub n: usize,
    /// Sequences generated (the beam width under beam search); `None` means `n`.
    pub best_of: Option<usize>,
    /// Subtracted once from the logit of every token already generated.
    pub presence_penalty: f64,
    /// Subtracted from a token's logit once per time it was generated.
    pub frequency_penalty: f64,
    /// Divides positive / multiplies negative logits of tokens in the prompt or
    /// the output (1 = off).
    pub repetition_penalty: f64,
    /// 0 (below 1e-5) means greedy.
    pub temperature: f64,
    /// Keep the most likely tokens whose cumulative probability reaches `top_p` (1 = off).
    pub top_p: f64,
    /// Keep the `top_k` most likely tokens (-1 = off).
    pub top_k: i32,
    /// Drop tokens less likely than `min_p` times the most likely one (0 = off).
    pub min_p: f64,
    /// Seed of this request's own generators: the same seed gives the same tokens
    /// whatever else runs in the batch.
    pub seed: Option<u64>,
    pub use_beam_search: bool,
    /// Beam score = cumulative logprob / length^length_penalty.
    pub length_penalty: f64,
    pub early_stopping: EarlyStopping,
    /// Strings that end generation; the text is cut before them (unless
    /// `include_stop_str_in_output`).
    pub stop: StopStrings,
    /// Token ids that end generation (`stop_reason` is the id).
    pub stop_token_ids: Vec<u32>,
    pub include_stop_str_in_output: bool,
    /// Keep generating past EOS.
    pub ignore_eos: bool,
    /// Tokens to generate at most; `None` = until the model's length limit.
    pub max_tokens: Option<usize>,
    /// No EOS, stop token or stop string can end generation before this many tokens.
    pub min_tokens: usize,
    /// Top logprobs reported per generated token (the sampled one is always there).
    pub logprobs: Option<usize>,
    /// Top logprobs reported per prompt token.
    pub prompt_logprobs: Option<usize>,
    /// Produce text at all (stop strings need it).
    pub detokenize: bool,
    pub skip_special_tokens: bool,
    pub spaces_between_special_tokens: bool,
    /// Token id -> bias added to its logit, clamped to [-100, 100] when applied (as
    /// vLLM's OpenAI layer does). vLLM turns this into a logits processor; it is
    /// the only logits processor an OpenAI request can create.
    pub logit_bias: BTreeMap<u32, f64>,
    /// Keep only the last k prompt tokens.
    pub truncate_prompt_tokens: Option<usize>,
    /// Constrain the output to a JSON schema, regex, choice or grammar (vLLM's
    /// `guided_*` request fields and `response_format`); compiled when the
    /// request is validated.
    pub guided_decoding: Option<GuidedDecodingParams>,
}

impl Default for SamplingParams {
    /// vLLM's defaults (note `max_tokens` = 16, as `SamplingParams()` in Python).
    fn default() -> Self {
        SamplingParams {
            n: 1,
            best_of: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            temperature: 1.0,
            top_p: 1.0,
            top_k: -1,
            min_p: 0.0,
            seed: None,
            use_beam_search: false,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::False,
            stop: StopStrings::default(),
            stop_token_ids: Vec::new(),
            include_stop_str_in_output: false,
            ignore_eos: false,
            max_tokens: Some(16),
            min_tokens: 0,
            logprobs: None,
            prompt_logprobs: None,
            detokenize: true,
            skip_special_tokens: true,
            spaces_between_special_tokens: true,
            logit_bias: BTreeMap::new(),
            truncate_prompt_tokens: None,
            guided_decoding: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding of at most `max_tokens` tokens, everything else default.
    pub fn greedy(max_tokens: usize) -> SamplingParams {
        SamplingParams {
            max_tokens: Some(max_tokens),
            temperature: 0.0,
            ..SamplingParams::default()
        }
    }

    /// `best_of`, defaulting to `n` as vLLM does.
    pub fn best_of(&self) -> usize {
        self.best_of.unwrap_or(self.n)
    }

    /// Temperature below `SAMPLING_EPS` outside beam search.
    pub fn is_greedy(&self) -> bool {
        !self.use_beam_search && self.temperature < SAMPLING_EPS
    }

    /// vLLM's `sampling_type` property.
    pub fn sampling_type(&self) -> SamplingType {
        if self.use_beam_search {
            SamplingType::Beam
        } else if self.temperature < SAMPLING_EPS {
            SamplingType::Greedy
        } else if self.seed.is_some() {
            SamplingType::RandomSeed
        } else {
            SamplingType::Random
        }
    }

    /// Characters of output held back while streaming so that a stop string is
    /// never sent before it is recognised (vLLM's `output_text_buffer_length`:
    /// the longest stop string's length minus one, in characters).
    pub fn output_text_buffer_length(&self) -> usize {
        if self.include_stop_str_in_output {
            return 0;
        }
        self.stop.max_chars().saturating_sub(1)
    }

    /// vLLM's constructor: verify, then normalise greedy requests.
    pub fn verified(self) -> Result<SamplingParams> {
        self.verify()?;
        Ok(self.normalized())
    }

    /// What vLLM's constructor leaves in a greedy request: temperature < 1e-5 outside
    /// beam search resets top_p to 1, top_k to -1 and min_p to 0 (they would only
    /// change the reported logprobs, never the argmax).
    pub fn normalized(mut self) -> SamplingParams {
        if self.is_greedy() {
            self.top_p = 1.0;
            self.top_k = -1;
            self.min_p = 0.0;
        }
        self
    }

    /// vLLM's `update_from_generation_config`: unless `ignore_eos`, the model's
    /// `generation_config.json` EOS ids become stop tokens (so they finish with
    /// `stop_reason` = the id, while the tokenizer's own EOS has none).
    pub fn update_from_generation_config(&mut self, generation_eos_ids: &[u32]) {
        if self.ignore_eos {
            return;
        }
        for &id in generation_eos_ids {
            if !self.stop_token_ids.contains(&id) {
                self.stop_token_ids.push(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_vllms() {
        let d = SamplingParams::default();
        assert_eq!(
            (d.n, d.best_of(), d.max_tokens, d.min_tokens),
            (1, 1, Some(16), 0)
        );
        assert_eq!(
            (d.temperature, d.top_p, d.top_k, d.min_p),
            (1.0, 1.0, -1, 0.0)
        );
        assert_eq!(d.early_stopping, EarlyStopping::False);
        assert!(d.detokenize && d.skip_special_tokens && d.spaces_between_special_tokens);
        assert_eq!(SamplingParams { n: 3, ..d }.best_of(), 3);
    }

    #[test]
    fn greedy_means_below_the_epsilon_outside_beam_search() {
        let p = SamplingParams {
            temperature: 0.9e-5,
            ..SamplingParams::default()
        };
        assert!(p.is_greedy());
        assert!(!SamplingParams {
            temperature: 1e-5,
            ..p.clone()
        }
        .is_greedy());
        assert!(!SamplingParams {
            use_beam_search: true,
            ..p
        }
        .is_greedy());
    }
}
