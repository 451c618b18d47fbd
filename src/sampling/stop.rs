//! When a sequence finishes, and how much of its text may be streamed — vLLM
//! v0.4.3's `StopChecker.maybe_stop_sequence` and `output_text_buffer_length`.
//!
//! Per step, after the new token is appended and detokenized, the caller passes
//! the text delta to [`StopChecker::check`], which (in vLLM's order):
//!
//! 1. does nothing while fewer than `min_tokens` tokens exist (no stop of any
//!    kind, not even the length limits — see 5);
//! 2. EOS (unless `ignore_eos`): finishes with "stop" and no stop reason; the
//!    token's text is dropped unless `include_stop_str_in_output`;
//! 3. a stop token: "stop", stop reason = the id, text dropped the same way;
//! 4. stop strings, in the order given (the first string of the list that occurs
//!    wins, not the earliest occurrence), searched only where the new text could
//!    complete one: from `new_chars + len(stop)` characters before the end. The
//!    text is cut before the stop string, or after it with
//!    `include_stop_str_in_output`;
//! 5. `prompt + output > max_model_len` (strictly: the last sampled token needs no
//!    position of its own), then `output == max_tokens`: "length".
//!
//! One deviation: the model length limit also applies before `min_tokens` is
//! reached. vLLM's server can never get there (it caps `max_tokens`, and
//! `min_tokens <= max_tokens`); without the check a direct caller could run a
//! sequence past the model's positions.
//!
//! Lengths and offsets of text are in characters (Python string indices), never
//! bytes, so multi-byte text is cut where vLLM cuts it.

use super::params::SamplingParams;
use super::stop_strings::{start_of_last_chars, StopStrings};

/// vLLM's `finish_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS, a stop token or a stop string.
    Stop,
    /// `max_tokens` or the model's length limit.
    Length,
    /// The request was aborted (or a beam was dropped).
    Abort,
}

impl FinishReason {
    /// The OpenAI API's string.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}

/// vLLM's `stop_reason`: which stop token or stop string ended the sequence
/// (`None` for EOS and the length limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    Token(u32),
    Text(String),
}

/// Why a sequence finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    pub reason: FinishReason,
    pub stop_reason: Option<StopReason>,
}

/// The output text of one sequence, as it grows, and how much of it was streamed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputText {
    text: String,
    /// Bytes of `text` already handed out by `take_delta*`.
    sent: usize,
    finished: bool,
}

impl OutputText {
    pub fn new() -> OutputText {
        OutputText::default()
    }

    /// The whole output text so far (after any stop truncation).
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Marks the text final (e.g. on abort): everything left may be sent.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// Appends text that no stop check should see — what the detokenizer flushes
    /// once the sequence has finished (an incomplete character as U+FFFD).
    pub fn append_flushed(&mut self, text: &str) {
        self.text.push_str(text);
    }

    fn drop_last_chars(&mut self, chars: usize) {
        let at = start_of_last_chars(&self.text, chars);
        self.text.truncate(at);
    }

    /// The text that became safe to stream since the last call, with vLLM's rule:
    /// until the sequence finishes, the last `params.output_text_buffer_length()`
    /// characters (longest stop string - 1) are held back.
    ///
    /// One deviation: a whole stop string at the end of the text is held back too.
    /// That only happens before `min_tokens` (otherwise it would have stopped the
    /// sequence), where vLLM streams part of it and cuts it from the final text a
    /// step later; here the stream never contains text the output loses.
    pub fn take_delta(&mut self, params: &SamplingParams) -> String {
        let hold = if self.finished {
            0
        } else {
            params.output_text_buffer_length()
        };
        let end = if hold == 0 {
            self.text.len()
        } else {
            // Python's text[:-hold] is empty when the text is shorter than `hold`.
            match self.text.char_indices().rev().nth(hold - 1) {
                Some((i, _)) => i,
                None => 0,
            }
        };
        // Only an ending longer than the hold (a whole stop string) holds more.
        let end = end.min(self.text.len() - self.stop_prefix_suffix_len(params, hold));
        self.emit_until(end)
    }

    /// Like [`OutputText::take_delta`] but holding back only what could still
    /// become a stop string: the longest suffix that is a prefix of (or equal to)
    /// some stop string. The full text is the same; chunks arrive sooner than
    /// with vLLM's fixed buffer.
    pub fn take_delta_minimal(&mut self, params: &SamplingParams) -> String {
        self.emit_until(self.text.len() - self.stop_prefix_suffix_len(params, 0))
    }

    /// Bytes at the end of the text that could be (the start of) a stop string
    /// still to be recognised.
    fn stop_prefix_suffix_len(&self, params: &SamplingParams, longer_than: usize) -> usize {
        if self.finished || params.include_stop_str_in_output {
            return 0;
        }
        params.stop.held_suffix(&self.text, longer_than)
    }

    fn emit_until(&mut self, end: usize) -> String {
        let delta = match self.text.get(self.sent..end) {
            Some(d) if end > self.sent => d.to_string(),
            _ => String::new(),
        };
        self.sent = self.sent.max(end);
        delta
    }
}

/// Finds the first stop string (in list order) that occurs in the part of `text`
/// the last `new_chars` characters could have completed. Returns the byte length
/// to keep (`None`: keep everything) and the stop string.
pub fn find_stop_string<'s>(
    text: &str,
    new_chars: usize,
    stop: &'s StopStrings,
    include_stop_str_in_output: bool,
) -> Option<(Option<usize>, &'s str)> {
    let (s, start, end) = stop.find(text, new_chars)?;
    if !include_stop_str_in_output {
        return Some((Some(start), s));
    }
    Some(((end < text.len()).then_some(end), s))
}

/// vLLM's stop rules for one request, given the EOS ids and the model length.
#[derive(Debug, Clone, Copy)]
pub struct StopChecker<'a> {
    pub params: &'a SamplingParams,
    /// Token ids that count as EOS (the tokenizer's; see
    /// [`SamplingParams::update_from_generation_config`] for the generation
    /// config's).
    pub eos_token_ids: &'a [u32],
    pub max_model_len: usize,
}

impl<'a> StopChecker<'a> {
    pub fn new(params: &'a SamplingParams, eos_token_ids: &'a [u32], max_model_len: usize) -> Self {
        StopChecker {
            params,
            eos_token_ids,
            max_model_len,
        }
    }

    /// Appends `new_text` (the text delta of `token`) to `out` and decides whether
    /// the sequence is finished. `output_len` counts the generated tokens
    /// including `token`; `seq_len` is prompt + output.
    pub fn check(
        &self,
        out: &mut OutputText,
        token: u32,
        output_len: usize,
        seq_len: usize,
        new_text: &str,
    ) -> Option<Finish> {
        let p = self.params;
        let new_chars = new_text.chars().count();
        out.text.push_str(new_text);
        let finish = if output_len < p.min_tokens {
            (seq_len > self.max_model_len).then_some(Finish {
                reason: FinishReason::Length,
                stop_reason: None,
            })
        } else {
            self.check_after_min_tokens(out, token, output_len, seq_len, new_chars)
        };
        if finish.is_some() {
            out.finished = true;
        }
        finish
    }

    fn check_after_min_tokens(
        &self,
        out: &mut OutputText,
        token: u32,
        output_len: usize,
        seq_len: usize,
        new_chars: usize,
    ) -> Option<Finish> {
        let p = self.params;
        let stop = |stop_reason| {
            Some(Finish {
                reason: FinishReason::Stop,
                stop_reason,
            })
        };
        let is_eos = !p.ignore_eos && self.eos_token_ids.contains(&token);
        if is_eos || p.stop_token_ids.contains(&token) {
            // The stopping token's own text is not part of the output.
            if !p.include_stop_str_in_output {
                out.drop_last_chars(new_chars);
            }
            return if is_eos {
                stop(None)
            } else {
                stop(Some(StopReason::Token(token)))
            };
        }
        if let Some((keep, s)) =
            find_stop_string(&out.text, new_chars, &p.stop, p.include_stop_str_in_output)
        {
            if let Some(keep) = keep {
                out.text.truncate(keep);
            }
            return stop(Some(StopReason::Text(s.to_string())));
        }
        let length = || {
            Some(Finish {
                reason: FinishReason::Length,
                stop_reason: None,
            })
        };
        if seq_len > self.max_model_len {
            return length();
        }
        if p.max_tokens.is_some_and(|m| output_len >= m) {
            return length();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(list: &[&str]) -> StopStrings {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn list_order_wins_over_position() {
        let s = stops(&["b", "a"]);
        assert_eq!(find_stop_string("xab", 3, &s, false), Some((Some(2), "b")));
        assert_eq!(find_stop_string("xab", 3, &s, true), Some((None, "b")));
        assert_eq!(find_stop_string("xabc", 4, &s, true), Some((Some(3), "b")));
    }

    #[test]
    fn search_window_is_new_chars_plus_stop_length() {
        let s = stops(&["ab"]);
        // "ab" ends 3 chars before the end: outside a window of 1 + 2 chars.
        assert_eq!(find_stop_string("abxyz", 1, &s, false), None);
        assert_eq!(find_stop_string("xabyz", 1, &s, false), None);
        assert_eq!(
            find_stop_string("xyabz", 1, &s, false),
            Some((Some(2), "ab"))
        );
        assert_eq!(find_stop_string("ab", 0, &s, false), None);
    }

    #[test]
    fn windows_count_characters_not_bytes() {
        let s = stops(&["é!"]);
        let text = "ßßé!";
        assert_eq!(find_stop_string(text, 1, &s, false), Some((Some(4), "é!")));
        assert_eq!(start_of_last_chars("aé", 1), 1);
        assert_eq!(start_of_last_chars("aé", 5), 0);
    }
}
