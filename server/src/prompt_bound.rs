//! A cheap lower bound on a text's token count, so a prompt that cannot fit the
//! context is refused before it is tokenized (a 16 MiB prompt takes seconds and
//! gigabytes to tokenize).
//!
//! Why the bound holds: the tokenizer cuts the (normalized) text into tokens
//! that together cover all of it, and no token covers more text than the
//! longest text a vocabulary entry decodes to, `L` bytes (measured at start-up
//! over every id, added and special tokens included; a decoder that drops a
//! leading space is allowed for by [`SLACK_BYTES`]). Normalizers that do not
//! delete text shrink it by at most [`NORMALIZER_FACTOR`]: a character is at
//! most 4 bytes and becomes at least one 1-byte character (NFKC's `𝐀` → `A`;
//! composition shrinks less). So a text of `b` bytes has at least
//! `b / (4 (L + slack))` tokens.
//!
//! A normalizer that deletes text (BERT's accent and control-character
//! stripping, `Strip`, a `Replace` by nothing) or an unknown token that fuses
//! runs of characters would break that; start-up probes the tokenizer with
//! such texts and turns the bound off (everything is tokenized) when any of
//! them has fewer tokens than the bound claims.

use crate::engine_handle::EngineHandle;
use crate::error::{ApiError, ApiResult};

/// Bytes a decoded token may lack of the text it covered (a stripped space).
const SLACK_BYTES: usize = 4;
/// How much a non-deleting normalizer can shrink text, in bytes.
const NORMALIZER_FACTOR: usize = 4;
/// Ids past the model's vocabulary measured too (added tokens may lie there).
const EXTRA_IDS: u32 = 4096;
/// Texts that deleting normalizers and fused unknown tokens shrink.
const PROBES: [&str; 14] = [
    " ",
    "\t",
    "\n",
    "\r\n",
    "\u{a0}",
    "\u{301}",
    "\u{200b}",
    "\u{7}",
    "\u{feff}",
    "\u{ad}",
    "a",
    "\u{10fffd}",
    "\u{30bb3}",
    "\u{ff71}",
];
const PROBE_REPEAT: usize = 2048;

/// The bound, or off for a tokenizer it cannot be trusted with.
#[derive(Debug, Clone)]
pub struct PromptBound {
    /// Most input bytes one token can stand for; `None`: no bound.
    bytes_per_token: Option<usize>,
    why_off: &'static str,
}

impl PromptBound {
    pub fn off(why: &'static str) -> PromptBound {
        PromptBound {
            bytes_per_token: None,
            why_off: why,
        }
    }

    /// The bound for `max_token_bytes`, the longest decoded vocabulary entry.
    pub fn from_longest_token(max_token_bytes: usize) -> PromptBound {
        PromptBound {
            bytes_per_token: Some((max_token_bytes + SLACK_BYTES) * NORMALIZER_FACTOR),
            why_off: "",
        }
    }

    /// Measures the engine's tokenizer and checks the bound against the probes.
    pub fn measure(engine: &EngineHandle) -> PromptBound {
        let ids = 0..(engine.info().vocab_size as u32).saturating_add(EXTRA_IDS);
        let longest = ids
            .filter_map(|id| engine.detokenize(&[id], false).ok())
            .map(|t| t.len())
            .max()
            .unwrap_or(0);
        if longest == 0 {
            return PromptBound::off("the model has no tokenizer");
        }
        let bound = PromptBound::from_longest_token(longest);
        let mixed = PROBES.concat();
        let texts = PROBES
            .iter()
            .map(|p| p.repeat(PROBE_REPEAT))
            .chain([mixed.repeat(PROBE_REPEAT / 8)]);
        for text in texts {
            match engine.tokenize(&text, false) {
                Ok(ids) if ids.len() >= bound.min_tokens(text.len()) => {}
                _ => return PromptBound::off("the tokenizer shrinks some texts too much"),
            }
        }
        bound
    }

    /// Fewest tokens a text of `bytes` bytes can have (0 when off).
    pub fn min_tokens(&self, bytes: usize) -> usize {
        self.bytes_per_token.map_or(0, |per| bytes.div_ceil(per))
    }

    /// 400 when `text` is certain to have at least `max_model_len` tokens (a
    /// prompt that long leaves no room for a completion token).
    pub fn check(&self, text: &str, max_model_len: usize) -> ApiResult<()> {
        let at_least = self.min_tokens(text.len());
        if at_least < max_model_len {
            return Ok(());
        }
        Err(ApiError::bad_request(format!(
            "This model's maximum context length is {max_model_len} tokens. However, your \
             prompt ({} bytes) has at least {at_least} tokens. Please reduce the length of \
             the prompt.",
            text.len()
        )))
    }

    /// One log line: the bound, or why there is none.
    pub fn describe(&self) -> String {
        match self.bytes_per_token {
            Some(per) => format!(
                "prompts are refused before tokenizing beyond {per} bytes per token of the context"
            ),
            None => format!("no length bound before tokenizing: {}", self.why_off),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_only_what_cannot_fit() {
        // Longest token 12 bytes: one token covers at most (12 + 4) * 4 = 64 bytes.
        let b = PromptBound::from_longest_token(12);
        assert_eq!(b.min_tokens(64), 1);
        assert_eq!(b.min_tokens(65), 2);
        assert!(b.check(&"x".repeat(64 * 99), 100).is_ok());
        assert!(b.check(&"x".repeat(64 * 99 + 1), 100).is_err());
        let message = b.check(&"x".repeat(64 * 200), 100).unwrap_err().message;
        assert!(message.contains("at least 200 tokens"), "{message}");
    }

    #[test]
    fn off_refuses_nothing() {
        let b = PromptBound::off("test");
        assert_eq!(b.min_tokens(1 << 30), 0);
        assert!(b.check(&"x".repeat(1 << 20), 1).is_ok());
    }
}
