//! `SamplingParams::verify` and friends: what vLLM v0.4.3 rejects, in its order
//! and with its exact messages (clients and tests match on them; floats are
//! printed as Python prints them).

use super::params::{EarlyStopping, SamplingParams};
use super::SAMPLING_EPS;
use crate::error::{Error, Result};
use engine_api::python::float_repr as py_float;

/// The most bytes a request's stop strings may take together (vLLM has no
/// bound): their index is built per request, and a stop string can be at most
/// this long, which bounds each token's search window.
pub const MAX_STOP_BYTES: usize = 1 << 16;

fn invalid(message: String) -> Error {
    Error::invalid(message)
}

impl SamplingParams {
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
        self.verify_penalties()?;
        // v0.4.3 let NaN through (`nan < 0.0` is false) and sampled from NaNs;
        // later vLLM refuses it with this message.
        if !self.temperature.is_finite() {
            return Err(invalid(format!(
                "temperature must be a finite number, got {}.",
                py_float(self.temperature)
            )));
        }
        if self.temperature < 0.0 {
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
        // Later vLLM takes 0 for "off" too (and prefers it); its message.
        if self.top_k < -1 {
            return Err(invalid(format!(
                "top_k must be 0 (disable), or at least 1, got {}.",
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
        let stop_bytes: usize = self.stop.iter().map(String::len).sum();
        if stop_bytes > MAX_STOP_BYTES {
            return Err(invalid(format!(
                "stop strings may total at most {MAX_STOP_BYTES} bytes, got {stop_bytes}"
            )));
        }
        if !self.stop.is_empty() && !self.detokenize {
            return Err(invalid(
                "stop strings are only supported when detokenize is True. \
                 Set detokenize=True to use stop."
                    .into(),
            ));
        }
        if let Some(guided) = &self.guided_decoding {
            guided.verify()?;
        }
        Ok(())
    }

    fn verify_penalties(&self) -> Result<()> {
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
        // Later vLLM takes any finite repetition_penalty above 0,
        // where v0.4.3 capped it at 2; its messages.
        if !self.repetition_penalty.is_finite() {
            return Err(invalid(format!(
                "repetition_penalty must be a finite number, got {}.",
                py_float(self.repetition_penalty)
            )));
        }
        if self.repetition_penalty <= 0.0 {
            return Err(invalid(format!(
                "repetition_penalty must be greater than zero, got {}.",
                py_float(self.repetition_penalty)
            )));
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
        if self.top_k > 0 {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(p: SamplingParams) -> String {
        match p.verify() {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn messages_print_floats_as_python_does() {
        let p = SamplingParams {
            temperature: -2.0,
            ..SamplingParams::default()
        };
        assert_eq!(message(p), "temperature must be non-negative, got -2.0.");
        let p = SamplingParams {
            top_p: 1e-20,
            min_p: 2.0,
            ..SamplingParams::default()
        };
        assert_eq!(message(p), "min_p must be in [0, 1], got 2.0.");
    }

    #[test]
    fn beam_search_rules_replace_the_non_beam_ones() {
        let beam = SamplingParams {
            use_beam_search: true,
            best_of: Some(2),
            temperature: 0.0,
            early_stopping: EarlyStopping::Never,
            length_penalty: 0.5,
            ..SamplingParams::default()
        };
        assert!(beam.verify().is_ok());
    }
}
