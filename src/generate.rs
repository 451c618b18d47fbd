//! Offline generation: load a model directory, run a batch of prompts to
//! completion. The same engine core as the server, driven step by step on the
//! caller's thread.

use std::path::Path;
use std::sync::Arc;

use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::config::{resolve_dtype, resolve_kv_dtype, ModelConfig};
use crate::engine::{EngineConfig, EngineCore, EngineStats, RequestOutput, SeqResult};
use crate::error::{Error, Result};
use crate::kv_cache::sizing::{kv_blocks_for_device, DEFAULT_GPU_MEMORY_UTILIZATION};
use crate::model::Model;
use crate::sampling::{SamplingParams, TokenLogprobs};
use crate::tokenizer::Tokenizer;

pub use crate::engine::{FinishReason, Prompt, StopReason};

/// How to load and size an engine (vLLM's engine arguments).
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// `auto` (the config's dtype), `float32`/`float`, `float16`/`half` or `bfloat16`.
    pub dtype: String,
    /// Longest sequence (prompt + output); default: the config's `max_position_embeddings`.
    pub max_model_len: Option<usize>,
    /// Tokens per KV block: 8, 16 or 32.
    pub block_size: usize,
    /// KV cache size in blocks; default: enough for `max_model_len` tokens four times over.
    pub num_kv_blocks: Option<usize>,
    /// KV cache size in bytes (an alternative to `num_kv_blocks`).
    pub kv_cache_memory: Option<usize>,
    /// vLLM's `--kv-cache-dtype`: `auto` (the weights' dtype where the backend
    /// keeps such a cache, else float32), `float32`, `bfloat16` or `float16`.
    pub kv_cache_dtype: String,
    /// On a GPU, when neither size above is given: the share of the device's
    /// memory the engine may use, the KV cache taking what the weights and the
    /// largest step leave (default 0.9, as vLLM). Unused on the CPU.
    pub gpu_memory_utilization: Option<f64>,
    pub max_num_seqs: usize,
    /// Tokens one step may run (prompts longer than this are prefilled in chunks).
    pub max_num_batched_tokens: usize,
    pub enable_prefix_caching: bool,
    /// A chat template (file path or inline, as vLLM's `--chat-template`) replacing the model's.
    pub chat_template: Option<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: "auto".into(),
            max_model_len: None,
            block_size: 16,
            num_kv_blocks: None,
            kv_cache_memory: None,
            kv_cache_dtype: "auto".into(),
            gpu_memory_utilization: None,
            max_num_seqs: 256,
            max_num_batched_tokens: 2048,
            enable_prefix_caching: false,
            chat_template: None,
        }
    }
}

/// Loads a model directory into an engine core on `backend`.
pub fn load_engine_core<B: Backend>(
    dir: &Path,
    options: &LoadOptions,
    backend: B,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EngineCore<B>> {
    let config = ModelConfig::from_model_dir(dir)?;
    let dtype = resolve_dtype(&options.dtype, &config)?;
    let tokenizer = if dir.join("tokenizer.json").exists() {
        let t = Tokenizer::from_model_dir(dir)?;
        let t = match &options.chat_template {
            Some(arg) => t.with_chat_template(crate::tokenizer::load_chat_template_arg(arg)?)?,
            None => t,
        };
        Some(Arc::new(t))
    } else {
        None
    };
    let mut model = Model::load(dir, dtype, options.max_model_len, backend, progress)?;
    let kv_dtype = resolve_kv_dtype(&options.kv_cache_dtype, dtype, model.backend().kv_dtypes())?;
    model.set_kv_dtype(kv_dtype)?;
    let bytes_per_block = model.kv_bytes_per_block(options.block_size);
    let num_blocks = match (options.num_kv_blocks, options.kv_cache_memory) {
        (Some(n), _) => n,
        (None, Some(bytes)) => bytes / bytes_per_block,
        (None, None) => {
            let utilization = options
                .gpu_memory_utilization
                .unwrap_or(DEFAULT_GPU_MEMORY_UTILIZATION);
            match kv_blocks_for_device(
                &model,
                options.block_size,
                options.max_num_batched_tokens,
                utilization,
            )? {
                Some(blocks) => blocks,
                None => 4 * model.max_positions.div_ceil(options.block_size),
            }
        }
    };
    if num_blocks == 0 {
        return Err(Error::invalid(format!(
            "the KV cache holds no block: one block of {} tokens takes {bytes_per_block} bytes",
            options.block_size
        )));
    }
    let engine_config = EngineConfig {
        max_num_seqs: options.max_num_seqs,
        max_num_batched_tokens: options.max_num_batched_tokens,
        block_size: options.block_size,
        num_blocks,
        enable_prefix_caching: options.enable_prefix_caching,
    };
    EngineCore::new(model, tokenizer, engine_config)
}

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
