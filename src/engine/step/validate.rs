//! Request validation before the engine thread: parameters, the prompt, the
//! bounds that keep one request from taking the process down (sequences per
//! request, KV capacity), and the constraint compiled off the caller's stack.

use std::fmt;
use std::sync::Arc;

use super::EngineRequest;
use crate::error::{Error, Result};
use crate::sampling::guided::{choice, Guide, LazyGuidedCompiler};
use crate::sampling::SamplingParams;
use crate::tokenizer::Tokenizer;

/// Checks requests before they reach the engine thread (it only ever sees valid ones).
#[derive(Clone)]
pub struct RequestValidator {
    pub tokenizer: Option<Arc<Tokenizer>>,
    pub vocab_size: usize,
    /// Most top logprobs a request may ask for (vLLM's `max_logprobs`).
    pub max_logprobs: usize,
    pub max_model_len: usize,
    /// No single sequence may need more blocks than the whole KV cache has.
    pub num_blocks: usize,
    pub block_size: usize,
    /// Most sequences the scheduler runs at once: no request may need more
    /// (`n`, `best_of`, the beam width).
    pub max_num_seqs: usize,
    /// Compiles `guided_decoding` constraints (shared, with its grammar cache).
    pub guided: Arc<LazyGuidedCompiler>,
}

impl RequestValidator {
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let tok = self.tokenizer.as_ref().ok_or(RequestError::NoTokenizer)?;
        tok.encode(text, true)
    }

    pub fn validate(
        &self,
        mut prompt_token_ids: Vec<u32>,
        params: SamplingParams,
    ) -> Result<EngineRequest> {
        params.verify()?;
        params.verify_for_model(self.vocab_size, self.max_logprobs)?;
        // Before anything is allocated per sequence.
        check_width(&params, self.max_num_seqs)?;
        let params = params.normalized();
        // The stop strings' index is built here, off the engine thread.
        params.stop.prepare();
        if let Some(k) = params.truncate_prompt_tokens {
            // vLLM keeps the last k tokens.
            let drop = prompt_token_ids.len().saturating_sub(k);
            prompt_token_ids.drain(..drop);
        }
        self.check_prompt(&prompt_token_ids)?;
        self.check_capacity(prompt_token_ids.len(), &params)?;
        // Last, as it is the costly check: compiled on a thread of its own, with
        // a large stack and a time limit (see `LazyGuidedCompiler::compile_bounded`).
        let guide = match &params.guided_decoding {
            Some(g) if g.is_active() => self.guided.compile_bounded(g, &params.stop_token_ids)?,
            _ => None,
        };
        let choices = self.whole_choices(prompt_token_ids.len(), &params, guide.as_ref())?;
        Ok(EngineRequest {
            prompt_token_ids,
            params,
            guide,
            choices,
        })
    }

    /// A greedy `guided_choice` request's choices as token ids, for the engine
    /// to score whole (see `sampling::guided::choice`); `None` keeps token by token.
    fn whole_choices(
        &self,
        prompt_len: usize,
        params: &SamplingParams,
        guide: Option<&Guide>,
    ) -> Result<Option<Vec<Vec<u32>>>> {
        let choices = params
            .guided_decoding
            .as_ref()
            .and_then(|g| g.choice.as_ref());
        let (Some(choices), Some(guide), Some(tokenizer)) = (choices, guide, &self.tokenizer)
        else {
            return Ok(None);
        };
        if !choice::scores_whole_choices(params) {
            return Ok(None);
        }
        let room = self.max_model_len.saturating_sub(prompt_len);
        choice::tokenize_choices(tokenizer, choices, guide, room)
    }

    /// The prompt is not empty, in the vocabulary, within the model's length
    /// and the KV cache.
    fn check_prompt(&self, prompt_token_ids: &[u32]) -> std::result::Result<(), RequestError> {
        let n = prompt_token_ids.len();
        if n == 0 {
            return Err(RequestError::EmptyPrompt);
        }
        if let Some(&token) = prompt_token_ids
            .iter()
            .find(|&&t| t as usize >= self.vocab_size)
        {
            return Err(RequestError::TokenOutOfRange {
                token,
                vocab_size: self.vocab_size,
            });
        }
        if n > self.max_model_len {
            return Err(RequestError::PromptTooLong {
                tokens: n,
                max_model_len: self.max_model_len,
            });
        }
        let needed = n.div_ceil(self.block_size);
        if needed > self.num_blocks {
            return Err(RequestError::PromptOutOfBlocks {
                tokens: n,
                needed,
                num_blocks: self.num_blocks,
            });
        }
        Ok(())
    }

    /// A request whose sequences can never fit the whole KV cache together,
    /// even with their prompt blocks shared, is refused up front (it would
    /// otherwise be cut short). Without `max_tokens`, or with one that reaches
    /// the model's length (what an OpenAI server fills in for "no max_tokens"),
    /// only the prompt counts: such a request runs until the cache or the
    /// context is full and ends with "length".
    fn check_capacity(
        &self,
        prompt_len: usize,
        params: &SamplingParams,
    ) -> std::result::Result<(), RequestError> {
        let Some(max_tokens) = params.max_tokens else {
            return Ok(());
        };
        if prompt_len.saturating_add(max_tokens) >= self.max_model_len {
            return Ok(());
        }
        let width = params.best_of();
        let bs = self.block_size;
        // The last sampled token is never fed back, so it needs no slot.
        let total = prompt_len + max_tokens;
        let positions = total.saturating_sub(1).max(prompt_len);
        let shared = prompt_len / bs;
        let own = positions.div_ceil(bs) - shared;
        let needed = own.saturating_mul(width).saturating_add(shared);
        if needed <= self.num_blocks {
            return Ok(());
        }
        Err(RequestError::RequestOutOfBlocks {
            needed,
            width,
            total,
            prompt_len,
            max_tokens,
            num_blocks: self.num_blocks,
            block_size: bs,
        })
    }
}

/// `n`, `best_of` and the beam width are bounded by `max_num_seqs`: the
/// scheduler never runs more sequences at once.
fn check_width(
    params: &SamplingParams,
    max_num_seqs: usize,
) -> std::result::Result<(), RequestError> {
    let width = params.best_of();
    if width <= max_num_seqs {
        return Ok(());
    }
    let what = match (params.use_beam_search, params.best_of) {
        (true, _) => WidthParam::BeamWidth,
        (false, Some(_)) => WidthParam::BestOf,
        (false, None) => WidthParam::N,
    };
    Err(RequestError::TooWide {
        what,
        width,
        max_num_seqs,
    })
}

/// What is wrong with a request the validator refuses. Its `Display` is the
/// message callers see; [`Error`] keeps the kind (invalid argument, or out of
/// KV cache blocks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// A text prompt reached an engine loaded without a tokenizer.
    NoTokenizer,
    EmptyPrompt,
    TokenOutOfRange {
        token: u32,
        vocab_size: usize,
    },
    PromptTooLong {
        tokens: usize,
        max_model_len: usize,
    },
    /// The prompt alone needs more blocks than the whole KV cache has.
    PromptOutOfBlocks {
        tokens: usize,
        needed: usize,
        num_blocks: usize,
    },
    /// The request's sequences at `max_tokens` can never fit the KV cache together.
    RequestOutOfBlocks {
        needed: usize,
        /// Sequences the request runs (n/best_of/beam width).
        width: usize,
        /// Prompt plus max_tokens.
        total: usize,
        prompt_len: usize,
        max_tokens: usize,
        num_blocks: usize,
        block_size: usize,
    },
    /// More sequences than the scheduler ever runs at once.
    TooWide {
        what: WidthParam,
        width: usize,
        max_num_seqs: usize,
    },
}

/// The parameter that sets a request's width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WidthParam {
    N,
    BestOf,
    BeamWidth,
}

impl fmt::Display for WidthParam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WidthParam::N => "n",
            WidthParam::BestOf => "best_of",
            WidthParam::BeamWidth => "the beam width (best_of)",
        })
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RequestError::NoTokenizer => f.write_str(
                "this engine has no tokenizer (the model has no tokenizer.json, or \
                 skip_tokenizer_init is set): give prompts as token ids",
            ),
            RequestError::EmptyPrompt => f.write_str("the prompt is empty"),
            RequestError::TokenOutOfRange { token, vocab_size } => write!(
                f,
                "token id {token} is out of range for a vocabulary of {vocab_size}"
            ),
            RequestError::PromptTooLong {
                tokens,
                max_model_len,
            } => write!(
                f,
                "the prompt has {tokens} tokens, more than the maximum model length {max_model_len}"
            ),
            RequestError::PromptOutOfBlocks {
                tokens,
                needed,
                num_blocks,
            } => write!(
                f,
                "a prompt of {tokens} tokens needs {needed} blocks but the cache has {num_blocks}"
            ),
            RequestError::RequestOutOfBlocks { .. } => self.fmt_request_out_of_blocks(f),
            RequestError::TooWide {
                what,
                width,
                max_num_seqs,
            } => write!(
                f,
                "{what} must be at most max_num_seqs ({max_num_seqs}), the most sequences the \
                 engine runs at once; got {width}"
            ),
        }
    }
}

impl RequestError {
    fn fmt_request_out_of_blocks(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let RequestError::RequestOutOfBlocks {
            needed,
            width,
            total,
            prompt_len,
            max_tokens,
            num_blocks,
            block_size,
        } = *self
        else {
            return Ok(());
        };
        let sequences = if width > 1 {
            format!("{width} sequences (n/best_of/beam width) of")
        } else {
            "a sequence of".to_string()
        };
        write!(
            f,
            "this request needs {needed} KV cache blocks ({sequences} up to {total} tokens: \
             a prompt of {prompt_len} tokens plus max_tokens {max_tokens}) but the whole cache \
             has {num_blocks} blocks of {block_size} tokens ({} tokens); lower max_tokens{}",
            num_blocks.saturating_mul(block_size),
            if width > 1 { ", n or best_of" } else { "" },
        )
    }

    /// Refusals for want of KV cache blocks (the others are invalid arguments).
    pub fn is_out_of_blocks(&self) -> bool {
        matches!(
            self,
            RequestError::PromptOutOfBlocks { .. } | RequestError::RequestOutOfBlocks { .. }
        )
    }
}

impl std::error::Error for RequestError {}

impl From<RequestError> for Error {
    fn from(e: RequestError) -> Error {
        if e.is_out_of_blocks() {
            Error::OutOfBlocks(e.to_string())
        } else {
            Error::InvalidArgument(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_kinds() {
        let e = Error::from(RequestError::TokenOutOfRange {
            token: 7,
            vocab_size: 5,
        });
        assert_eq!(
            e.to_string(),
            "invalid argument: token id 7 is out of range for a vocabulary of 5"
        );
        let e = Error::from(RequestError::PromptOutOfBlocks {
            tokens: 40,
            needed: 3,
            num_blocks: 2,
        });
        assert!(matches!(e, Error::OutOfBlocks(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "out of KV cache blocks: a prompt of 40 tokens needs 3 blocks but the cache has 2"
        );
        let wide = RequestError::TooWide {
            what: WidthParam::BeamWidth,
            width: 9,
            max_num_seqs: 8,
        };
        assert_eq!(
            wide.to_string(),
            "the beam width (best_of) must be at most max_num_seqs (8), the most sequences the \
             engine runs at once; got 9"
        );
        let one = RequestError::RequestOutOfBlocks {
            needed: 5,
            width: 1,
            total: 70,
            prompt_len: 6,
            max_tokens: 64,
            num_blocks: 4,
            block_size: 16,
        };
        assert_eq!(
            one.to_string(),
            "this request needs 5 KV cache blocks (a sequence of up to 70 tokens: a prompt of 6 \
             tokens plus max_tokens 64) but the whole cache has 4 blocks of 16 tokens (64 \
             tokens); lower max_tokens"
        );
    }
}
