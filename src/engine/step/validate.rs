//! Request validation before the engine thread: parameters, the prompt, the
//! bounds that keep one request from taking the process down (sequences per
//! request, KV capacity), and the constraint compiled off the caller's stack.

use std::sync::Arc;

use super::EngineRequest;
use crate::error::{Error, Result};
use crate::sampling::guided::LazyGuidedCompiler;
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
        let tok = self.tokenizer.as_ref().ok_or_else(|| {
            Error::invalid("this engine has no tokenizer (the model has no tokenizer.json, or skip_tokenizer_init is set): give prompts as token ids")
        })?;
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
        if let Some(k) = params.truncate_prompt_tokens {
            // vLLM keeps the last k tokens.
            let drop = prompt_token_ids.len().saturating_sub(k);
            prompt_token_ids.drain(..drop);
        }
        let n = prompt_token_ids.len();
        if n == 0 {
            return Err(Error::invalid("the prompt is empty"));
        }
        if let Some(bad) = prompt_token_ids
            .iter()
            .find(|&&t| t as usize >= self.vocab_size)
        {
            return Err(Error::invalid(format!(
                "token id {bad} is out of range for a vocabulary of {}",
                self.vocab_size
            )));
        }
        if n > self.max_model_len {
            return Err(Error::invalid(format!(
                "the prompt has {n} tokens, more than the maximum model length {}",
                self.max_model_len
            )));
        }
        let needed = n.div_ceil(self.block_size);
        if needed > self.num_blocks {
            return Err(Error::OutOfBlocks(format!(
                "a prompt of {n} tokens needs {needed} blocks but the cache has {}",
                self.num_blocks
            )));
        }
        self.check_capacity(n, &params)?;
        // Last, as it is the costly check: compiled on a thread of its own, with
        // a large stack and a time limit (see `LazyGuidedCompiler::compile_bounded`).
        let guide = match &params.guided_decoding {
            Some(g) if g.is_active() => self.guided.compile_bounded(g, &params.stop_token_ids)?,
            _ => None,
        };
        Ok(EngineRequest {
            prompt_token_ids,
            params,
            guide,
        })
    }

    /// A request whose sequences can never fit the whole KV cache together,
    /// even with their prompt blocks shared, is refused up front (it would
    /// otherwise be cut short). Without `max_tokens`, or with one that reaches
    /// the model's length (what an OpenAI server fills in for "no max_tokens"),
    /// only the prompt counts: such a request runs until the cache or the
    /// context is full and ends with "length".
    fn check_capacity(&self, prompt_len: usize, params: &SamplingParams) -> Result<()> {
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
        let sequences = if width > 1 {
            format!("{width} sequences (n/best_of/beam width) of")
        } else {
            "a sequence of".to_string()
        };
        Err(Error::OutOfBlocks(format!(
            "this request needs {needed} KV cache blocks ({sequences} up to {total} tokens: \
             a prompt of {prompt_len} tokens plus max_tokens {max_tokens}) but the whole cache \
             has {} blocks of {bs} tokens ({} tokens); lower max_tokens{}",
            self.num_blocks,
            self.num_blocks.saturating_mul(bs),
            if width > 1 { ", n or best_of" } else { "" },
        )))
    }
}

/// `n`, `best_of` and the beam width are bounded by `max_num_seqs`: the
/// scheduler never runs more sequences at once.
fn check_width(params: &SamplingParams, max_num_seqs: usize) -> Result<()> {
    let width = params.best_of();
    if width <= max_num_seqs {
        return Ok(());
    }
    let what = match (params.use_beam_search, params.best_of) {
        (true, _) => "the beam width (best_of)",
        (false, Some(_)) => "best_of",
        (false, None) => "n",
    };
    Err(Error::invalid(format!(
        "{what} must be at most max_num_seqs ({max_num_seqs}), the most sequences the engine \
         runs at once; got {width}"
    )))
}
