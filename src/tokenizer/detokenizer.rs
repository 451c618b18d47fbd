//! Streaming detokenization: text deltas as tokens arrive, never half a character.
//!
//! The scheme is vLLM's (`prefix_offset`/`read_offset`, from TGI): each step decodes a
//! short window of recent tokens twice — once without and once with the new token — and
//! emits the difference. Decoding a window instead of single tokens lets the tokenizer's
//! decoder see context (SentencePiece drops the leading space of the very first token
//! it decodes; byte-level BPE needs all the bytes of a character). While the decode ends
//! in U+FFFD the last character may still be incomplete, so the text is held back until
//! a later token completes it or [`IncrementalDetokenizer::finish`] flushes it.
//!
//! Invariant: for byte-level tokenizers the concatenated deltas (including `finish`)
//! equal `Tokenizer::decode(generated_ids)` exactly. SentencePiece-style decoders that
//! strip a leading space differ only there: like vLLM, the stream keeps the space that
//! the first generated token carries after the prompt.
//!
//! `spaces_between_special_tokens` is accepted for vLLM's API but changes nothing: vLLM
//! only honours it on its slow-tokenizer path, and tokenizers loaded from
//! `tokenizer.json` are always fast ones.

use super::Tokenizer;
use crate::error::Result;

/// How many prompt tokens are decoded as context before the first generated token
/// (vLLM's `INITIAL_INCREMENTAL_DETOKENIZATION_OFFSET`).
const CONTEXT_TOKENS: usize = 5;

/// How far back into the prompt the context may reach to start on a whole character.
const MAX_CONTEXT_TOKENS: usize = 24;

/// Per-sequence state for turning generated token ids into text deltas.
#[derive(Debug, Clone)]
pub struct IncrementalDetokenizer {
    /// A few prompt tokens of context, then every generated token.
    ids: Vec<u32>,
    /// Start of the window decoded at each step.
    prefix_offset: usize,
    /// `ids[..read_offset]` are accounted for in the emitted text.
    read_offset: usize,
    /// Number of leading context (prompt) ids in `ids`.
    context_len: usize,
    skip_special_tokens: bool,
}

impl IncrementalDetokenizer {
    /// Starts a stream after `prompt_ids`. Only the last few prompt tokens are kept, and
    /// only as many as decode to whole characters: a prompt that ends in the middle of
    /// a character must not lend its bytes to the generated text.
    pub fn new(
        tok: &Tokenizer,
        prompt_ids: &[u32],
        skip_special_tokens: bool,
        spaces_between_special_tokens: bool,
    ) -> Result<IncrementalDetokenizer> {
        // Fast tokenizers ignore it in vLLM too (see the module docs).
        let _ = spaces_between_special_tokens;
        let shortest = prompt_ids.len().min(CONTEXT_TOKENS);
        let longest = prompt_ids.len().min(MAX_CONTEXT_TOKENS);
        let mut context: &[u32] = &[];
        for len in shortest..=longest {
            let candidate = &prompt_ids[prompt_ids.len() - len..];
            if !tok
                .decode(candidate, skip_special_tokens, true)?
                .contains(char::REPLACEMENT_CHARACTER)
            {
                context = candidate;
                break;
            }
        }
        Ok(IncrementalDetokenizer {
            ids: context.to_vec(),
            prefix_offset: 0,
            read_offset: context.len(),
            context_len: context.len(),
            skip_special_tokens,
        })
    }

    /// Adds one generated token and returns the text it completes (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let (prefix_text, new_text) = self.decode_window(tok)?;
        if new_text.ends_with(char::REPLACEMENT_CHARACTER)
            || new_text.chars().count() <= prefix_text.chars().count()
        {
            // Possibly an unfinished character, or nothing new yet: wait for more tokens.
            return Ok(String::new());
        }
        Ok(self.advance(&prefix_text, &new_text))
    }

    /// The text `push(id)` would return, without adding the token: how a candidate
    /// token reads in this sequence's context (vLLM's `decoded_token` of logprobs).
    pub fn peek(&self, tok: &Tokenizer, id: u32) -> Result<String> {
        let window = &self.ids[self.prefix_offset..];
        let prefix_text = tok.decode(
            &window[..self.read_offset - self.prefix_offset],
            self.skip_special_tokens,
            true,
        )?;
        let mut ids = Vec::with_capacity(window.len() + 1);
        ids.extend_from_slice(window);
        ids.push(id);
        let new_text = tok.decode(&ids, self.skip_special_tokens, true)?;
        if new_text.ends_with(char::REPLACEMENT_CHARACTER)
            || new_text.chars().count() <= prefix_text.chars().count()
        {
            return Ok(String::new());
        }
        Ok(text_after(&prefix_text, &new_text))
    }

    /// Flushes text held back at the end of the stream (an incomplete character becomes
    /// U+FFFD, exactly as a full decode renders it).
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<String> {
        if self.read_offset == self.ids.len() {
            return Ok(String::new());
        }
        let (prefix_text, new_text) = self.decode_window(tok)?;
        let delta = self.advance(&prefix_text, &new_text);
        if new_text.ends_with(char::REPLACEMENT_CHARACTER) {
            // The flushed bytes stay a U+FFFD: tokens pushed after this must not
            // complete them retroactively, so decoding restarts after them.
            self.prefix_offset = self.read_offset;
        }
        Ok(delta)
    }

    /// The generated ids seen so far.
    pub fn generated_ids(&self) -> &[u32] {
        &self.ids[self.context_len..]
    }

    fn decode_window(&self, tok: &Tokenizer) -> Result<(String, String)> {
        let prefix = tok.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special_tokens,
            true,
        )?;
        let full = tok.decode(
            &self.ids[self.prefix_offset..],
            self.skip_special_tokens,
            true,
        )?;
        Ok((prefix, full))
    }

    /// Emits what `new_text` adds to `prefix_text` and slides the window forward.
    fn advance(&mut self, prefix_text: &str, new_text: &str) -> String {
        let delta = text_after(prefix_text, new_text);
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        delta
    }
}

/// What `new_text` adds to `prefix_text`.
fn text_after(prefix_text: &str, new_text: &str) -> String {
    match new_text.strip_prefix(prefix_text) {
        Some(delta) => delta.to_string(),
        // A decoder rewrote earlier text given more context; like vLLM, skip as
        // many characters as the prefix had.
        None => new_text.chars().skip(prefix_text.chars().count()).collect(),
    }
}
