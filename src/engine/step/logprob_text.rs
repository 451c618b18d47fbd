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

/// Fills `decoded` for every prompt position (entry i is scored after
/// `prompt[..i]`). One detokenizer walks the prompt, as vLLM's does, so the
/// token that completes a character carries it, as generated tokens do (a
/// fresh one per position took the unfinished bytes before it as already shown).
pub(super) fn decode_prompt(
    logprobs: &mut [Option<TokenLogprobs>],
    prompt: &[u32],
    tokenizer: &Tokenizer,
    skip_special_tokens: bool,
) -> Result<()> {
    let mut d = IncrementalDetokenizer::new(tokenizer, &[], skip_special_tokens, true)?;
    for (i, lp) in logprobs.iter_mut().enumerate() {
        if let Some(lp) = lp {
            decode_generated(lp, &d, tokenizer)?;
        }
        if let Some(&id) = prompt.get(i) {
            d.push(tokenizer, id)?;
        }
    }
    Ok(())
}
