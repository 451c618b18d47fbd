//! `SamplingParams`: every field of vLLM v0.4.3's `vllm.SamplingParams`, its
//! defaults, and its validation with the exact messages (clients and tests match
//! on them).
//!
//! Floats are f64 because vLLM's are Python floats: range checks and the numbers
//! printed in messages must see the value the client sent, not an f32 rounding.
//! The processors convert to f32, the dtype of the logits they act on.

use std::collections::BTreeMap;

use super::pyfloat::py_float;
use super::SAMPLING_EPS;
use crate::error::{Error, Result};

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
    pub stop: Vec<String>,
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
            stop: Vec::new(),
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
        }
    }
}

fn invalid(message: String) -> Error {
    Error::invalid(message)
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
        self.stop
            .iter()
            .map(|s| s.chars().count())
            .max()
            .map_or(0, |longest| longest.saturating_sub(1))
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

    /// Rejects what vLLM's `SamplingParams.__init__` rejects, in the same order and
    /// with the same messages (`_verify_args`, then `_verify_beam_search` or
    /// `_verify_non_beam_search` and `_verify_greedy_sampling`).
    ///
    /// Messages for negative integers (`logprobs must be non-negative, got -1.`)
    /// cannot arise here because the fields are unsigned; a JSON front end produces
    /// them with [`SamplingParams::negative_integer_error`].
    pub fn verify(&self) -> Result<()> {
        self.verify_args()?;
        if self.use_beam_search {
            self.verify_beam_search()
        } else {
            self.verify_non_beam_search()?;
            if self.temperature < SAMPLING_EPS && self.best_of() > 1 {
                // No space after the period: vLLM's message reads exactly so.
                return Err(invalid(format!(
                    "best_of must be 1 when using greedy sampling.Got {}.",
                    self.best_of()
                )));
            }
            Ok(())
        }
    }

    fn verify_args(&self) -> Result<()> {
        let best_of = self.best_of();
        if self.n < 1 {
            return Err(invalid(format!("n must be at least 1, got {}.", self.n)));
        }
        if best_of < self.n {
            return Err(invalid(format!(
                "best_of must be greater than or equal to n, got n={} and best_of={best_of}.",
                self.n
            )));
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return Err(invalid(format!(
                "presence_penalty must be in [-2, 2], got {}.",
                py_float(self.presence_penalty)
            )));
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return Err(invalid(format!(
                "frequency_penalty must be in [-2, 2], got {}.",
                py_float(self.frequency_penalty)
            )));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty <= 2.0) {
            return Err(invalid(format!(
                "repetition_penalty must be in (0, 2], got {}.",
                py_float(self.repetition_penalty)
            )));
        }
        // vLLM lets NaN through (`nan < 0.0` is false) and then samples from NaNs;
        // it is rejected here with the same message.
        if self.temperature < 0.0 || self.temperature.is_nan() {
            return Err(invalid(format!(
                "temperature must be non-negative, got {}.",
                py_float(self.temperature)
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(invalid(format!(
                "top_p must be in (0, 1], got {}.",
                py_float(self.top_p)
            )));
        }
        if self.top_k < -1 || self.top_k == 0 {
            return Err(invalid(format!(
                "top_k must be -1 (disable), or at least 1, got {}.",
                self.top_k
            )));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(invalid(format!(
                "min_p must be in [0, 1], got {}.",
                py_float(self.min_p)
            )));
        }
        if let Some(max_tokens) = self.max_tokens {
            if max_tokens < 1 {
                return Err(invalid(format!(
                    "max_tokens must be at least 1, got {max_tokens}."
                )));
            }
            if self.min_tokens > max_tokens {
                return Err(invalid(format!(
                    "min_tokens must be less than or equal to max_tokens={max_tokens}, got {}.",
                    self.min_tokens
                )));
            }
        }
        if let Some(t) = self.truncate_prompt_tokens.filter(|&t| t < 1) {
            // No final period in vLLM's message.
            return Err(invalid(format!(
                "truncate_prompt_tokens must be >= 1, got {t}"
            )));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(invalid("stop cannot contain an empty string.".into()));
        }
        if !self.stop.is_empty() && !self.detokenize {
            return Err(invalid(
                "stop strings are only supported when detokenize is True. \
                 Set detokenize=True to use stop."
                    .into(),
            ));
        }
        Ok(())
    }

    fn verify_beam_search(&self) -> Result<()> {
        if self.best_of() == 1 {
            return Err(invalid(format!(
                "best_of must be greater than 1 when using beam search. Got {}.",
                self.best_of()
            )));
        }
        if self.temperature > SAMPLING_EPS {
            return Err(invalid(
                "temperature must be 0 when using beam search.".into(),
            ));
        }
        if self.top_p < 1.0 - SAMPLING_EPS {
            return Err(invalid("top_p must be 1 when using beam search.".into()));
        }
        if self.top_k != -1 {
            return Err(invalid("top_k must be -1 when using beam search.".into()));
        }
        Ok(())
    }

    fn verify_non_beam_search(&self) -> Result<()> {
        if self.early_stopping != EarlyStopping::False {
            return Err(invalid(
                "early_stopping is not effective and must be False when not using beam search."
                    .into(),
            ));
        }
        if self.length_penalty < 1.0 - SAMPLING_EPS || self.length_penalty > 1.0 + SAMPLING_EPS {
            return Err(invalid(
                "length_penalty is not effective and must be the default value of 1.0 \
                 when not using beam search."
                    .into(),
            ));
        }
        Ok(())
    }

    /// The engine-level checks vLLM makes when a request is added, which need the
    /// model: `logprobs`/`prompt_logprobs` above the server's `--max-logprobs`
    /// (vLLM's message), and logit_bias ids outside the vocabulary (vLLM crashes
    /// the engine with an IndexError there; this refuses the request instead).
    pub fn verify_for_model(&self, vocab_size: usize, max_logprobs: usize) -> Result<()> {
        let too_many = |n: Option<usize>| n.is_some_and(|n| n > max_logprobs);
        if too_many(self.logprobs) || too_many(self.prompt_logprobs) {
            return Err(invalid(format!(
                "Cannot request more than {max_logprobs} logprobs."
            )));
        }
        if let Some(&bad) = self
            .logit_bias
            .keys()
            .find(|&&id| id as usize >= vocab_size)
        {
            return Err(invalid(format!(
                "logit_bias token id {bad} is out of range for a vocabulary of {vocab_size}."
            )));
        }
        Ok(())
    }

    /// vLLM's message for a negative value of an integer field that this struct
    /// stores unsigned, for front ends that parse signed JSON integers. `None` for
    /// fields vLLM does not check for negatives this way.
    pub fn negative_integer_error(field: &str, value: i64) -> Option<Error> {
        let message = match field {
            "n" => format!("n must be at least 1, got {value}."),
            "max_tokens" => format!("max_tokens must be at least 1, got {value}."),
            "min_tokens" => {
                format!("min_tokens must be greater than or equal to 0, got {value}.")
            }
            "logprobs" => format!("logprobs must be non-negative, got {value}."),
            "prompt_logprobs" => format!("prompt_logprobs must be non-negative, got {value}."),
            "truncate_prompt_tokens" => {
                format!("truncate_prompt_tokens must be >= 1, got {value}")
            }
            _ => return None,
        };
        Some(invalid(message))
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
