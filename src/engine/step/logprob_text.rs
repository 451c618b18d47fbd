//! The text of each token that logprobs report (vLLM's `decoded_token`): how the
//! token reads where it stands — after the sequence's earlier tokens, so a
//! SentencePiece word keeps its leading space and a byte token that does not
//! finish a character reads as "" — rather than the token decoded alone.

use crate::error::Result;
use crate::sampling::TokenLogprobs;
use crate::tokenizer::{IncrementalDetokenizer, Tokenizer};

/// Fills `lp.decoded` for a generated position, with `detokenizer` holding the
/// sequence up to (not including) the position's token.
pub(super) fn decode_generated(
    lp: &mut TokenLogprobs,
    detokenizer: &IncrementalDetokenizer,
    tokenizer: &Tokenizer,
) -> Result<()> {
    lp.decoded = lp
        .entries()
        .iter()
        .map(|l| detokenizer.peek(tokenizer, l.token_id))
        .collect::<Result<_>>()?;
    Ok(())
}

/// Fills `decoded` for every prompt position (entry i is scored after `prompt[..i]`).
pub(super) fn decode_prompt(
    logprobs: &mut [Option<TokenLogprobs>],
    prompt: &[u32],
    tokenizer: &Tokenizer,
    skip_special_tokens: bool,
) -> Result<()> {
    for (i, lp) in logprobs.iter_mut().enumerate() {
        let Some(lp) = lp else { continue };
        let before = &prompt[..i.min(prompt.len())];
        let d = IncrementalDetokenizer::new(tokenizer, before, skip_special_tokens, true)?;
        decode_generated(lp, &d, tokenizer)?;
    }
    Ok(())
}
