//! Offline generation: a batch of prompts in, completions out. Every step runs the
//! unfinished sequences together over the paged KV cache — prompts are prefilled
//! and then decoded one token per step — and each sequence samples with its own
//! generator, so its output does not depend on what else is in the batch.

use std::collections::VecDeque;
use std::path::Path;

use crate::backend::cpu::CpuBackend;
use crate::backend::{Backend, StepMeta};
use crate::config::{resolve_dtype, ModelConfig};
use crate::error::{Error, Result};
use crate::kv_cache::{BlockAllocator, BlockTable, KvCache};
use crate::model::Model;
use crate::sampling::{token_logprob, Sampler, SamplingParams, SequenceTokens};
use crate::tokenizer::Tokenizer;

/// How to load and size an engine.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// `auto` (the config's dtype), `float32`/`float`, `float16`/`half` or `bfloat16`.
    pub dtype: String,
    /// Longest sequence (prompt + output); default: the config's `max_position_embeddings`.
    pub max_model_len: Option<usize>,
    /// Tokens per KV block: 8, 16 or 32.
    pub block_size: usize,
    /// KV cache size in blocks; default: enough for `max_model_len` tokens times 4.
    pub num_kv_blocks: Option<usize>,
    /// KV cache size in bytes (an alternative to `num_kv_blocks`).
    pub kv_cache_memory: Option<usize>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: "auto".into(),
            max_model_len: None,
            block_size: 16,
            num_kv_blocks: None,
            kv_cache_memory: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Prompt,
    pub params: SamplingParams,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS or a stop token.
    Stop,
    /// `max_tokens` or the model's length limit.
    Length,
}

#[derive(Debug, Clone)]
pub struct Completion {
    pub prompt_token_ids: Vec<u32>,
    pub token_ids: Vec<u32>,
    /// The generated tokens decoded without special tokens (empty without a tokenizer).
    pub text: String,
    /// log P of each generated token under the model's (unscaled) distribution.
    pub logprobs: Vec<f32>,
    /// Index i: log P(prompt token i | tokens before it); `None` at 0. Only when asked for.
    pub prompt_logprobs: Option<Vec<Option<f32>>>,
    pub finish_reason: FinishReason,
}

/// One sequence being generated.
struct Sequence {
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Tokens whose K/V are in the cache.
    computed: usize,
    table: BlockTable,
    sampler: Sampler,
    params: SamplingParams,
    logprobs: Vec<f32>,
    prompt_logprobs: Option<Vec<Option<f32>>>,
    finish: Option<FinishReason>,
}

/// A model, its tokenizer and its KV cache, ready to generate.
pub struct Llm<B: Backend = CpuBackend> {
    pub model: Model<B>,
    pub tokenizer: Option<Tokenizer>,
    kv: KvCache<B>,
    allocator: BlockAllocator,
    eos_token_ids: Vec<u32>,
}

impl Llm<CpuBackend> {
    /// Loads a Hugging Face model directory on the CPU.
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Llm<CpuBackend>> {
        Llm::load_on(dir, options, CpuBackend)
    }
}

impl<B: Backend> Llm<B> {
    pub fn load_on(dir: &Path, options: &LoadOptions, backend: B) -> Result<Llm<B>> {
        let config = ModelConfig::from_model_dir(dir)?;
        let dtype = resolve_dtype(&options.dtype, &config)?;
        let tokenizer = if dir.join("tokenizer.json").exists() {
            Some(Tokenizer::from_model_dir(dir)?)
        } else {
            None
        };
        let model = Model::load(dir, dtype, options.max_model_len, backend, &mut |_, _| {})?;
        let bytes_per_block = model.kv_bytes_per_block(options.block_size);
        let num_blocks = match (options.num_kv_blocks, options.kv_cache_memory) {
            (Some(n), _) => n,
            (None, Some(bytes)) => bytes / bytes_per_block,
            (None, None) => 4 * model.max_positions.div_ceil(options.block_size),
        };
        let kv = KvCache::new(&model, num_blocks, options.block_size)?;
        let mut eos_token_ids = match &tokenizer {
            Some(t) => t.generation_eos_token_ids().to_vec(),
            None => model.config.eos_token_ids.clone(),
        };
        eos_token_ids.sort_unstable();
        eos_token_ids.dedup();
        Ok(Llm {
            model,
            tokenizer,
            allocator: BlockAllocator::new(kv.num_blocks()),
            kv,
            eos_token_ids,
        })
    }

    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    pub fn num_kv_blocks(&self) -> usize {
        self.kv.num_blocks()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.allocator.num_free()
    }

    /// Generates every request to completion; outputs are in request order.
    pub fn generate(&mut self, requests: &[Request]) -> Result<Vec<Completion>> {
        let mut seqs = requests
            .iter()
            .map(|r| self.new_sequence(r))
            .collect::<Result<Vec<_>>>()?;
        let result = self.run(&mut seqs);
        // Whatever happened, give every block back.
        for s in &mut seqs {
            s.table.release(&mut self.allocator);
        }
        result?;
        seqs.into_iter().map(|s| self.completion(s)).collect()
    }

    /// Logits at every position of `tokens` (one row per token), for scoring and tests.
    pub fn prompt_logits(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.check_prompt(tokens)?;
        let mut table = BlockTable::default();
        let result = self.prompt_logits_in(tokens, &mut table);
        table.release(&mut self.allocator);
        result
    }

    fn prompt_logits_in(
        &mut self,
        tokens: &[u32],
        table: &mut BlockTable,
    ) -> Result<Vec<Vec<f32>>> {
        let bs = self.kv.block_size();
        table.reserve(tokens.len(), bs, &mut self.allocator)?;
        let meta = StepMeta {
            token_ids: tokens.to_vec(),
            positions: (0..tokens.len() as u32).collect(),
            slot_mapping: (0..tokens.len()).map(|p| table.slot(p, bs)).collect(),
            query_start: vec![0, tokens.len()],
            context_lens: vec![tokens.len()],
            block_tables: vec![table.blocks.clone()],
            logits_rows: (0..tokens.len()).collect(),
            block_size: bs,
        };
        let logits = self.forward(meta)?;
        Ok(logits
            .chunks(self.model.config.vocab_size)
            .map(<[f32]>::to_vec)
            .collect())
    }

    fn check_prompt(&self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::invalid("the prompt is empty"));
        }
        let vocab = self.model.config.vocab_size;
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::invalid(format!(
                "token id {bad} is out of range for a vocabulary of {vocab}"
            )));
        }
        if tokens.len() > self.model.max_positions {
            return Err(Error::invalid(format!(
                "the prompt has {} tokens, more than the maximum model length {}",
                tokens.len(),
                self.model.max_positions
            )));
        }
        let needed = tokens.len().div_ceil(self.kv.block_size());
        if needed > self.kv.num_blocks() {
            return Err(Error::OutOfBlocks(format!(
                "a prompt of {} tokens needs {needed} blocks but the cache has {}",
                tokens.len(),
                self.kv.num_blocks()
            )));
        }
        Ok(())
    }

    fn new_sequence(&self, request: &Request) -> Result<Sequence> {
        request.params.verify()?;
        let tokens = match &request.prompt {
            Prompt::Tokens(t) => t.clone(),
            Prompt::Text(text) => {
                let tok = self.tokenizer.as_ref().ok_or_else(|| {
                    Error::invalid(
                        "this model directory has no tokenizer.json: give prompts as token ids",
                    )
                })?;
                tok.encode(text, true)?
            }
        };
        self.check_prompt(&tokens)?;
        Ok(Sequence {
            prompt_len: tokens.len(),
            computed: 0,
            table: BlockTable::default(),
            sampler: Sampler::new(request.params.seed),
            prompt_logprobs: request.params.prompt_logprobs.is_some().then(|| vec![None]),
            params: request.params.clone(),
            logprobs: Vec::new(),
            finish: None,
            tokens,
        })
    }

    fn run(&mut self, seqs: &mut [Sequence]) -> Result<()> {
        let bs = self.kv.block_size();
        let mut waiting: VecDeque<usize> = (0..seqs.len()).collect();
        let mut running: Vec<usize> = Vec::new();
        while !waiting.is_empty() || !running.is_empty() {
            // Running sequences need room for their next token; when the cache is
            // full the newest one gives its blocks back and is recomputed later.
            let mut i = 0;
            while i < running.len() {
                let s = &mut seqs[running[i]];
                if s.table
                    .reserve(s.tokens.len(), bs, &mut self.allocator)
                    .is_ok()
                {
                    i += 1;
                    continue;
                }
                let Some(victim) = running.pop() else { break };
                let v = &mut seqs[victim];
                v.table.release(&mut self.allocator);
                v.computed = 0;
                waiting.push_front(victim);
            }
            // Admit waiting sequences, oldest first, while their tokens fit.
            while let Some(&next) = waiting.front() {
                let s = &mut seqs[next];
                if s.table
                    .reserve(s.tokens.len(), bs, &mut self.allocator)
                    .is_err()
                {
                    break;
                }
                waiting.pop_front();
                running.push(next);
            }
            if running.is_empty() {
                return Err(Error::OutOfBlocks(
                    "the KV cache cannot hold even one waiting sequence".into(),
                ));
            }
            self.step(seqs, &running)?;
            running.retain(|&i| {
                let done = seqs[i].finish.is_some();
                if done {
                    seqs[i].table.release(&mut self.allocator);
                }
                !done
            });
        }
        Ok(())
    }

    /// Runs the uncomputed tokens of `batch` through the model and samples one
    /// token for each sequence.
    fn step(&mut self, seqs: &mut [Sequence], batch: &[usize]) -> Result<()> {
        let bs = self.kv.block_size();
        let mut meta = StepMeta {
            block_size: bs,
            query_start: vec![0],
            ..StepMeta::default()
        };
        // Per sequence: the first logits row it owns.
        let mut first_row = Vec::with_capacity(batch.len());
        for &i in batch {
            let s = &seqs[i];
            let (start, end) = (s.computed, s.tokens.len());
            let row0 = meta.token_ids.len();
            meta.token_ids.extend_from_slice(&s.tokens[start..end]);
            meta.positions.extend(start as u32..end as u32);
            meta.slot_mapping
                .extend((start..end).map(|p| s.table.slot(p, bs)));
            meta.query_start.push(meta.token_ids.len());
            meta.context_lens.push(end);
            meta.block_tables.push(s.table.blocks.clone());
            first_row.push(meta.logits_rows.len());
            // Prompt logprobs need every prompt position's logits, the first time through.
            let wants_prompt = s
                .prompt_logprobs
                .as_ref()
                .is_some_and(|p| p.len() < s.prompt_len)
                && start == 0;
            let from = if wants_prompt {
                row0
            } else {
                row0 + (end - start) - 1
            };
            meta.logits_rows.extend(from..row0 + (end - start));
        }
        let logits = self.forward(meta)?;
        let vocab = self.model.config.vocab_size;
        for (&i, &row) in batch.iter().zip(&first_row) {
            let s = &mut seqs[i];
            let new_tokens = s.tokens.len() - s.computed;
            let mut row = row;
            if let Some(pl) = s
                .prompt_logprobs
                .as_mut()
                .filter(|p| p.len() < s.prompt_len)
            {
                for pos in 1..s.prompt_len {
                    pl.push(Some(token_logprob(
                        &logits[(row + pos - 1) * vocab..(row + pos) * vocab],
                        s.tokens[pos],
                    )));
                }
                row += new_tokens - 1;
            }
            let row_logits = &logits[row * vocab..(row + 1) * vocab];
            let tokens = SequenceTokens {
                prompt: &s.tokens[..s.prompt_len],
                output: &s.tokens[s.prompt_len..],
            };
            let mut processed = row_logits.to_vec();
            let token = s
                .sampler
                .next_token(&mut processed, &s.params, tokens, &self.eos_token_ids)
                .token;
            s.logprobs.push(token_logprob(row_logits, token));
            s.computed = s.tokens.len();
            s.tokens.push(token);
            s.finish = self.finish_reason(s, token);
        }
        Ok(())
    }

    fn finish_reason(&self, s: &Sequence, token: u32) -> Option<FinishReason> {
        let generated = s.tokens.len() - s.prompt_len;
        if !s.params.ignore_eos && self.eos_token_ids.contains(&token)
            || s.params.stop_token_ids.contains(&token)
        {
            return Some(FinishReason::Stop);
        }
        if s.params.max_tokens.is_some_and(|m| generated >= m)
            || s.tokens.len() >= self.model.max_positions
        {
            return Some(FinishReason::Length);
        }
        None
    }

    fn forward(&mut self, meta: StepMeta) -> Result<Vec<f32>> {
        let be = self.model.backend();
        let meta = be.prepare_step(meta)?;
        let logits = self.model.forward(&meta, &mut self.kv)?;
        self.model.backend().download(&logits)
    }

    fn completion(&self, s: Sequence) -> Result<Completion> {
        let token_ids = s.tokens[s.prompt_len..].to_vec();
        let text = match &self.tokenizer {
            Some(t) => t.decode(&token_ids, true, true)?,
            None => String::new(),
        };
        Ok(Completion {
            prompt_token_ids: s.tokens[..s.prompt_len].to_vec(),
            token_ids,
            text,
            logprobs: s.logprobs,
            prompt_logprobs: s.prompt_logprobs,
            finish_reason: s.finish.unwrap_or(FinishReason::Length),
        })
    }
}
