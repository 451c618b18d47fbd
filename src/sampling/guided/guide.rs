//! One sequence's constraint state, and the packed allowed-token bitmask it
//! produces each step.

use llguidance::Matcher;

/// Allowed tokens, packed: bit `i % 32` of word `i / 32` is set when token `i`
/// may be sampled. The layout a GPU sampler can take as is.
pub type TokenBitmask = Vec<u32>;

/// Sets every logit whose token the mask does not allow to -inf. Tokens past
/// the mask's end are disallowed.
pub fn apply_token_bitmask(logits: &mut [f32], mask: &[u32]) {
    for (w, chunk) in logits.chunks_mut(32).enumerate() {
        let word = mask.get(w).copied().unwrap_or(0);
        if word == u32::MAX {
            continue;
        }
        for (bit, l) in chunk.iter_mut().enumerate() {
            if word & (1 << bit) == 0 {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

fn is_allowed(mask: &[u32], token: u32) -> bool {
    mask.get(token as usize / 32)
        .is_some_and(|w| w & (1 << (token % 32)) != 0)
}

fn allow(mask: &mut [u32], token: u32) {
    if let Some(w) = mask.get_mut(token as usize / 32) {
        *w |= 1 << (token % 32);
    }
}

/// The constraint state of one sequence: an llguidance matcher advanced by
/// every token the sequence sampled. Forks with the sequence ([`Guide::fork`]).
pub struct Guide {
    matcher: Matcher,
    vocab_size: usize,
    /// EOS ids as the trie knows them (what llguidance allows when accepting).
    eos_token_ids: Vec<u32>,
    /// The request's own stop token ids: allowed wherever EOS is.
    stop_token_ids: Vec<u32>,
}

impl std::fmt::Debug for Guide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guide")
            .field("stopped", &self.matcher.is_stopped())
            .field("error", &self.matcher.get_error())
            .finish_non_exhaustive()
    }
}

impl Clone for Guide {
    fn clone(&self) -> Guide {
        self.fork()
    }
}

impl Guide {
    pub(super) fn new(matcher: Matcher, vocab_size: usize, stop_token_ids: &[u32]) -> Guide {
        let eos_token_ids = matcher
            .tok_env()
            .map(|env| env.tok_trie().eos_tokens().to_vec())
            .unwrap_or_default();
        Guide {
            matcher,
            vocab_size,
            eos_token_ids,
            stop_token_ids: stop_token_ids
                .iter()
                .copied()
                .filter(|&t| (t as usize) < vocab_size)
                .collect(),
        }
    }

    /// An independent copy for a forked sequence. Deep: each copy owns its lexer
    /// cache, so sequences compute their masks in parallel without sharing a lock.
    pub fn fork(&self) -> Guide {
        Guide {
            matcher: self.matcher.deep_clone(),
            vocab_size: self.vocab_size,
            eos_token_ids: self.eos_token_ids.clone(),
            stop_token_ids: self.stop_token_ids.clone(),
        }
    }

    /// The tokens allowed next: what the constraint can continue with, EOS (and
    /// the request's stop tokens) only where it accepts, only those once it is
    /// complete. `None` at a dead end (nothing allowed, or the matcher failed):
    /// the sequence must end.
    pub fn compute_mask(&mut self) -> Option<TokenBitmask> {
        let vob = self.matcher.compute_mask_or_eos().ok()?;
        let words = self.vocab_size.div_ceil(32);
        let mut mask: TokenBitmask = vob.as_slice().iter().copied().take(words).collect();
        mask.resize(words, 0);
        // Clear the bits past the vocabulary in the last word.
        if !self.vocab_size.is_multiple_of(32) {
            if let Some(last) = mask.last_mut() {
                *last &= (1u32 << (self.vocab_size % 32)) - 1;
            }
        }
        if self.eos_token_ids.iter().any(|&t| is_allowed(&mask, t)) {
            for &t in &self.stop_token_ids {
                allow(&mut mask, t);
            }
        }
        mask.iter().any(|&w| w != 0).then_some(mask)
    }

    /// Whether the output so far is a complete match of the constraint.
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }

    /// Advances past a sampled token. `false` when the constraint rejects it (the
    /// next mask is then a dead end).
    pub fn advance(&mut self, token: u32) -> bool {
        if self.matcher.is_stopped() {
            // Complete: only EOS / stop tokens were allowed, and they change nothing.
            return true;
        }
        self.matcher.consume_token(token).is_ok()
    }

    /// The matcher's error, if it failed.
    pub fn error(&self) -> Option<String> {
        self.matcher.get_error()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmask_masks_unset_and_trailing_tokens() {
        let mut logits = vec![1.0f32; 40];
        let mut mask = vec![0u32; 1];
        allow(&mut mask, 3);
        allow(&mut mask, 31);
        apply_token_bitmask(&mut logits, &mask);
        for (i, &l) in logits.iter().enumerate() {
            assert_eq!(l.is_finite(), i == 3 || i == 31, "token {i}");
        }
        assert!(is_allowed(&mask, 31) && !is_allowed(&mask, 32) && !is_allowed(&mask, 99));
    }
}
