//! Offline generation: load a model, run a batch of prompts to completion. The
//! same engine core as the server, driven step by step on the caller's thread.

use std::path::Path;

use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::engine::{EngineCore, EngineStats, RequestOutput, SeqResult};
use crate::error::{Error, Result};
use crate::loader::{load_engine_core, LoadOptions};
use crate::model::Model;
use crate::sampling::{SamplingParams, TokenLogprobs};
use crate::tokenizer::Tokenizer;

pub use crate::engine::{FinishReason, Prompt, StopReason};

#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Prompt,
    pub params: SamplingParams,
}

/// A finished request.
#[derive(Debug, Clone)]
pub struct Completion {
    pub prompt_token_ids: Vec<u32>,
    /// Index i: log P(prompt token i | tokens before it); `None` at 0. Only when asked for.
    pub prompt_logprobs: Option<Vec<Option<TokenLogprobs>>>,
    /// The `n` sequences, best first when best_of > n.
    pub outputs: Vec<SeqResult>,
}

impl Completion {
    /// The first (best) sequence.
    pub fn best(&self) -> &SeqResult {
        &self.outputs[0]
    }
}

/// A model, its tokenizer and its KV cache, ready to generate.
pub struct Llm<B: Backend = CpuBackend> {
    core: EngineCore<B>,
    next_id: u64,
}

impl Llm<CpuBackend> {
    /// Loads a Hugging Face model directory on the CPU.
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Llm<CpuBackend>> {
        Ok(Llm {
            core: load_engine_core(dir, options, CpuBackend, &mut |_, _| {})?,
            next_id: 0,
        })
    }
}

impl<B: Backend> Llm<B> {
    pub fn from_core(core: EngineCore<B>) -> Llm<B> {
        Llm { core, next_id: 0 }
    }

    pub fn model(&self) -> &Model<B> {
        self.core.model()
    }

    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.core.tokenizer().map(|t| t.as_ref())
    }

    /// Every token id that ends a request by default (EOS and generation_config's).
    pub fn stop_token_ids(&self) -> Vec<u32> {
        self.core.stop_token_ids()
    }

    pub fn num_kv_blocks(&self) -> usize {
        self.core.num_blocks()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.core.num_free_blocks()
    }

    pub fn stats(&self) -> EngineStats {
        self.core.stats()
    }

    /// Logits at every position of `tokens` (one row per token), for scoring and tests.
    pub fn prompt_logits(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.core.prompt_logits(tokens)
    }

    /// Generates every request to completion; outputs are in request order. Any
    /// invalid request fails the call before anything runs.
    pub fn generate(&mut self, requests: &[Request]) -> Result<Vec<Completion>> {
        let validator = self.core.validator();
        let validated = requests
            .iter()
            .map(|r| {
                let tokens = match &r.prompt {
                    Prompt::Tokens(t) => t.clone(),
                    Prompt::Text(text) => validator.tokenize(text)?,
                };
                validator.validate(tokens, r.params.clone())
            })
            .collect::<Result<Vec<_>>>()?;
        let first_id = self.next_id + 1;
        let mut prompts = Vec::with_capacity(validated.len());
        for request in validated {
            self.next_id += 1;
            prompts.push(request.prompt_token_ids.clone());
            self.core.add_request(self.next_id, request)?;
        }
        let mut finals: Vec<Option<RequestOutput>> = vec![None; prompts.len()];
        let mut prompt_logprobs: Vec<Option<Vec<Option<TokenLogprobs>>>> =
            vec![None; prompts.len()];
        while self.core.has_unfinished() {
            let outputs = match self.core.step() {
                Ok(o) => o,
                Err(e) => {
                    for id in first_id..=self.next_id {
                        self.core.abort(id);
                    }
                    return Err(e);
                }
            };
            for out in outputs {
                let i = (out.request_id - first_id) as usize;
                if out.prompt_logprobs.is_some() {
                    prompt_logprobs[i] = out.prompt_logprobs.clone();
                }
                if out.is_finished() {
                    finals[i] = Some(out);
                }
            }
        }
        finals
            .into_iter()
            .zip(prompts)
            .zip(prompt_logprobs)
            .map(|((out, prompt_token_ids), prompt_logprobs)| {
                let out =
                    out.ok_or_else(|| Error::invalid("a request ended without a final output"))?;
                Ok(Completion {
                    prompt_token_ids,
                    prompt_logprobs,
                    outputs: out.results.unwrap_or_default(),
                })
            })
            .collect()
    }
}
