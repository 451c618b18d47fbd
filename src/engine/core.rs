//! The engine's step: schedule, run the model once over the batch, sample, and
//! report what each request gained. Synchronous; [`super::Engine`] runs it on
//! its own thread, and `Llm::generate` drives it directly.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::backend::{Backend, StepMeta};
use crate::error::{Error, Result};
use crate::kv_cache::block_manager::BlockManager;
use crate::kv_cache::KvCache;
use crate::model::Model;
use crate::sampling::{token_logprob, Sampler, SamplingParams};
use crate::tokenizer::{IncrementalDetokenizer, Tokenizer};

use super::scheduler::{Scheduled, Scheduler, SchedulerConfig};
use super::sequence::{
    FinishReason, RequestOutput, SeqDelta, SeqResult, Sequence, SequenceGroup, StopReason,
};
use super::stats::EngineStats;

/// Sizing of the engine, vLLM's names.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub block_size: usize,
    pub num_blocks: usize,
    pub enable_prefix_caching: bool,
}

/// A request the engine accepted: the prompt as token ids, checked parameters.
#[derive(Debug, Clone)]
pub struct EngineRequest {
    pub prompt_token_ids: Vec<u32>,
    pub params: SamplingParams,
}

/// Checks requests before they reach the engine thread (it only ever sees valid ones).
#[derive(Clone)]
pub struct RequestValidator {
    pub tokenizer: Option<Arc<Tokenizer>>,
    pub vocab_size: usize,
    pub max_model_len: usize,
    /// No single sequence may need more blocks than the whole KV cache has.
    pub num_blocks: usize,
    pub block_size: usize,
}

impl RequestValidator {
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let tok = self.tokenizer.as_ref().ok_or_else(|| {
            Error::invalid("this model has no tokenizer.json: give prompts as token ids")
        })?;
        tok.encode(text, true)
    }

    pub fn validate(
        &self,
        prompt_token_ids: Vec<u32>,
        params: SamplingParams,
    ) -> Result<EngineRequest> {
        params.validate()?;
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
        Ok(EngineRequest {
            prompt_token_ids,
            params,
        })
    }
}

pub struct EngineCore<B: Backend> {
    model: Model<B>,
    tokenizer: Option<Arc<Tokenizer>>,
    kv: KvCache<B>,
    blocks: BlockManager,
    scheduler: Scheduler,
    config: EngineConfig,
    groups: HashMap<u64, SequenceGroup>,
    next_seq_id: u64,
    eos_token_ids: Vec<u32>,
    stats: EngineStats,
}

impl<B: Backend> EngineCore<B> {
    pub fn new(
        model: Model<B>,
        tokenizer: Option<Arc<Tokenizer>>,
        config: EngineConfig,
    ) -> Result<EngineCore<B>> {
        if config.max_num_seqs == 0 || config.max_num_batched_tokens == 0 {
            return Err(Error::invalid(
                "max_num_seqs and max_num_batched_tokens must be positive",
            ));
        }
        let kv = KvCache::new(&model, config.num_blocks, config.block_size)?;
        let mut eos_token_ids = match &tokenizer {
            Some(t) => t.generation_eos_token_ids().to_vec(),
            None => model.config.eos_token_ids.clone(),
        };
        eos_token_ids.sort_unstable();
        eos_token_ids.dedup();
        Ok(EngineCore {
            blocks: BlockManager::new(
                config.num_blocks,
                config.block_size,
                config.enable_prefix_caching,
            ),
            kv,
            model,
            tokenizer,
            scheduler: Scheduler::default(),
            config,
            groups: HashMap::new(),
            next_seq_id: 0,
            eos_token_ids,
            stats: EngineStats::default(),
        })
    }

    pub fn validator(&self) -> RequestValidator {
        RequestValidator {
            tokenizer: self.tokenizer.clone(),
            vocab_size: self.model.config.vocab_size,
            max_model_len: self.model.max_positions,
            num_blocks: self.config.num_blocks,
            block_size: self.config.block_size,
        }
    }

    pub fn model(&self) -> &Model<B> {
        &self.model
    }

    pub fn tokenizer(&self) -> Option<&Arc<Tokenizer>> {
        self.tokenizer.as_ref()
    }

    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    pub fn has_unfinished(&self) -> bool {
        !self.groups.is_empty()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.blocks.num_available()
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.num_blocks()
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            num_running: self.scheduler.running.len(),
            num_waiting: self.scheduler.waiting.len(),
            num_preemptions: self.scheduler.num_preemptions,
            kv_blocks_used: self.blocks.num_used(),
            kv_blocks_total: self.blocks.num_blocks(),
            prefix_cache_hit_rate: self.blocks.prefix_cache_hit_rate(),
            ..self.stats.clone()
        }
    }

    fn new_sequence(
        &mut self,
        tokens: Vec<u32>,
        prompt_len: usize,
        params: &SamplingParams,
    ) -> Result<Sequence> {
        self.next_seq_id += 1;
        let detokenizer = match &self.tokenizer {
            Some(t) => Some(IncrementalDetokenizer::new(
                t,
                &tokens[..prompt_len],
                true,
                true,
            )?),
            None => None,
        };
        let _ = params;
        Ok(Sequence {
            id: self.next_seq_id,
            tokens,
            prompt_len,
            computed: 0,
            cum_logprob: 0.0,
            logprobs: Vec::new(),
            detokenizer,
            text: String::new(),
            finish: None,
            stop_reason: None,
        })
    }

    /// Queues a validated request under `request_id` (unique among live requests).
    pub fn add_request(&mut self, request_id: u64, request: EngineRequest) -> Result<()> {
        if self.groups.contains_key(&request_id) {
            return Err(Error::invalid(format!(
                "request id {request_id} is already running"
            )));
        }
        let params = request.params;
        let prompt_len = request.prompt_token_ids.len();
        let seq = self.new_sequence(request.prompt_token_ids, prompt_len, &params)?;
        self.stats.prompt_tokens += prompt_len as u64;
        let group = SequenceGroup {
            request_id,
            sampler: Sampler::new(params.seed),
            width: 1,
            prompt_logprobs: params.prompt_logprobs.then(|| vec![None]),
            params,
            seqs: vec![seq],
            arrival: Instant::now(),
            first_token_at: None,
            preemptions: 0,
            prompt_logprobs_reported: false,
        };
        self.groups.insert(request_id, group);
        self.scheduler.add(request_id);
        Ok(())
    }

    /// Stops a request and frees its blocks; returns its final output, if it was live.
    pub fn abort(&mut self, request_id: u64) -> Option<RequestOutput> {
        let mut group = self.groups.remove(&request_id)?;
        self.scheduler.remove(request_id);
        for s in &mut group.seqs {
            self.blocks.free(s.id);
            s.finish.get_or_insert(FinishReason::Abort);
        }
        self.stats.finished(FinishReason::Abort);
        Some(self.final_output(group, Vec::new()))
    }

    /// Logits at every position of `tokens` (one row per token), outside the
    /// batch: for scoring and tests. Must not be called while requests run.
    pub fn prompt_logits(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.validator()
            .validate(tokens.to_vec(), SamplingParams::greedy(1))?;
        self.next_seq_id += 1;
        let id = self.next_seq_id;
        self.blocks.allocate(id, tokens)?;
        let result = self
            .blocks
            .prepare_write(id, tokens.len(), 0)
            .and_then(|()| {
                let bs = self.blocks.block_size();
                let meta = StepMeta {
                    token_ids: tokens.to_vec(),
                    positions: (0..tokens.len() as u32).collect(),
                    slot_mapping: (0..tokens.len()).map(|p| self.blocks.slot(id, p)).collect(),
                    query_start: vec![0, tokens.len()],
                    context_lens: vec![tokens.len()],
                    block_tables: vec![self.blocks.blocks(id).to_vec()],
                    logits_rows: (0..tokens.len()).collect(),
                    block_size: bs,
                };
                self.run_copies()?;
                let be = self.model.backend();
                let meta = be.prepare_step(meta)?;
                let logits = self.model.forward(&meta, &mut self.kv)?;
                let logits = be.download(&logits)?;
                Ok(logits
                    .chunks(self.model.config.vocab_size)
                    .map(<[f32]>::to_vec)
                    .collect())
            });
        self.blocks.free(id);
        result
    }

    /// Runs the copy-on-write block copies the block manager asked for.
    fn run_copies(&mut self) -> Result<()> {
        let copies = self.blocks.take_pending_copies();
        if !copies.is_empty() {
            let be = self.model.backend();
            for (k, v) in self.kv.pools.iter_mut() {
                be.copy_blocks(k, self.kv.shape, &copies)?;
                be.copy_blocks(v, self.kv.shape, &copies)?;
            }
        }
        Ok(())
    }

    /// Runs one step. Returns an output for every request that gained tokens or finished.
    pub fn step(&mut self) -> Result<Vec<RequestOutput>> {
        let sched_config = SchedulerConfig {
            max_num_seqs: self.config.max_num_seqs,
            max_num_batched_tokens: self.config.max_num_batched_tokens,
        };
        let plan = self
            .scheduler
            .schedule(sched_config, &mut self.groups, &mut self.blocks);
        if plan.is_empty() {
            if self.scheduler.running.is_empty() && !self.scheduler.waiting.is_empty() {
                return Err(Error::OutOfBlocks(
                    "no waiting request fits in the KV cache".into(),
                ));
            }
            return Ok(Vec::new());
        }
        self.run_copies()?;
        let (meta, first_rows) = self.build_meta(&plan);
        let logits = {
            let be = self.model.backend();
            let meta = be.prepare_step(meta)?;
            let logits = self.model.forward(&meta, &mut self.kv)?;
            be.download(&logits)?
        };
        self.process(&plan, &first_rows, &logits)
    }

    /// The batch's metadata, and per planned chunk its first logits row.
    fn build_meta(&self, plan: &[Scheduled]) -> (StepMeta, Vec<usize>) {
        let bs = self.blocks.block_size();
        let mut meta = StepMeta {
            block_size: bs,
            query_start: vec![0],
            ..StepMeta::default()
        };
        let mut first_rows = Vec::with_capacity(plan.len());
        for p in plan {
            let group = &self.groups[&p.request_id];
            let s = &group.seqs[p.seq_index];
            let row0 = meta.token_ids.len();
            meta.token_ids.extend_from_slice(&s.tokens[p.start..p.end]);
            meta.positions.extend(p.start as u32..p.end as u32);
            meta.slot_mapping
                .extend((p.start..p.end).map(|pos| self.blocks.slot(s.id, pos)));
            meta.query_start.push(meta.token_ids.len());
            meta.context_lens.push(p.end);
            meta.block_tables.push(self.blocks.blocks(s.id).to_vec());
            first_rows.push(meta.logits_rows.len());
            let last = row0 + (p.end - p.start) - 1;
            if wants_prompt_logprobs(group) {
                meta.logits_rows.extend(row0..=last);
            } else if p.end == s.tokens.len() {
                meta.logits_rows.push(last);
            }
        }
        (meta, first_rows)
    }

    fn process(
        &mut self,
        plan: &[Scheduled],
        first_rows: &[usize],
        logits: &[f32],
    ) -> Result<Vec<RequestOutput>> {
        let vocab = self.model.config.vocab_size;
        let row = |r: usize| &logits[r * vocab..(r + 1) * vocab];
        let mut deltas: HashMap<u64, Vec<SeqDelta>> = HashMap::new();
        let mut touched: Vec<u64> = Vec::new();
        for (p, &first) in plan.iter().zip(first_rows) {
            if !touched.contains(&p.request_id) {
                touched.push(p.request_id);
            }
            let Some(group) = self.groups.get_mut(&p.request_id) else {
                continue;
            };
            let s = &mut group.seqs[p.seq_index];
            s.computed = p.end;
            self.blocks.register_computed(s.id, &s.tokens, p.end);
            let mut sample_row = first;
            if wants_prompt_logprobs(group) {
                let prompt_len = group.seqs[0].prompt_len;
                let pl = group.prompt_logprobs.get_or_insert_with(|| vec![None]);
                for pos in p.start..p.end {
                    if pos + 1 < prompt_len {
                        let next = group.seqs[0].tokens[pos + 1];
                        pl.push(Some(token_logprob(row(first + pos - p.start), next)));
                    }
                }
                sample_row = first + (p.end - p.start) - 1;
            }
            if p.end < group.seqs[p.seq_index].tokens.len() {
                continue; // a prompt chunk: nothing to sample yet
            }
            let logits_row = row(sample_row);
            // The first sample of a best_of group forks it: every sequence draws
            // its first token from the prompt's logits.
            let first_sample = !group.has_output();
            if first_sample && group.width > 1 {
                self.fork_group(p.request_id)?;
            }
            let Some(group) = self.groups.get_mut(&p.request_id) else {
                continue;
            };
            group.first_token_at.get_or_insert_with(Instant::now);
            let indices = if first_sample {
                0..group.seqs.len()
            } else {
                p.seq_index..p.seq_index + 1
            };
            for i in indices {
                let token = group.sampler.sample(logits_row, &group.params);
                let lp = token_logprob(logits_row, token);
                let limits = (&self.eos_token_ids[..], self.model.max_positions);
                let delta = append_token(group, i, token, lp, limits, self.tokenizer.as_deref())?;
                self.stats.generation_tokens += 1;
                deltas.entry(p.request_id).or_default().push(delta);
            }
        }
        let mut outputs = Vec::new();
        for id in touched {
            let Some(group) = self.groups.get_mut(&id) else {
                continue;
            };
            for s in group.seqs.iter().filter(|s| s.is_finished()) {
                self.blocks.free(s.id);
            }
            let d = deltas.remove(&id).unwrap_or_default();
            if group.is_finished() {
                let Some(group) = self.groups.remove(&id) else {
                    continue;
                };
                self.scheduler.remove(id);
                for s in &group.seqs {
                    self.stats
                        .finished(s.finish.unwrap_or(FinishReason::Length));
                }
                self.stats.record_latency(&group);
                outputs.push(self.final_output(group, d));
            } else if !d.is_empty() {
                outputs.push(RequestOutput {
                    request_id: id,
                    prompt_token_ids_len: group.seqs[0].prompt_len,
                    prompt_logprobs: take_prompt_logprobs(group),
                    deltas: d,
                    results: None,
                });
            }
        }
        Ok(outputs)
    }

    /// After its prompt, a group sampling `best_of` sequences forks into them,
    /// all sharing the prompt's blocks.
    fn fork_group(&mut self, request_id: u64) -> Result<()> {
        let Some(group) = self.groups.get(&request_id) else {
            return Ok(());
        };
        let (parent_id, tokens, prompt_len, width) = (
            group.seqs[0].id,
            group.seqs[0].tokens.clone(),
            group.seqs[0].prompt_len,
            group.width,
        );
        let params = group.params.clone();
        let mut children = Vec::new();
        for _ in 1..width {
            let mut child = self.new_sequence(tokens.clone(), prompt_len, &params)?;
            child.computed = tokens.len();
            self.blocks.fork(parent_id, child.id);
            children.push(child);
        }
        if let Some(group) = self.groups.get_mut(&request_id) {
            group.seqs.extend(children);
        }
        Ok(())
    }

    fn final_output(&self, mut group: SequenceGroup, deltas: Vec<SeqDelta>) -> RequestOutput {
        let n = 1.min(group.seqs.len()).max(1); // PENDING: n and best_of arrive with the full SamplingParams
        let mut results: Vec<SeqResult> = group
            .seqs
            .iter()
            .enumerate()
            .map(|(index, s)| SeqResult {
                index,
                token_ids: s.output().to_vec(),
                text: s.text.clone(),
                logprobs: s.logprobs.clone(),
                cum_logprob: s.cum_logprob,
                finish_reason: s.finish.unwrap_or(FinishReason::Length),
                stop_reason: s.stop_reason.clone(),
            })
            .collect();
        if group.width > n {
            // best_of: keep the n most likely, best first.
            results.sort_by(|a, b| {
                b.cum_logprob
                    .total_cmp(&a.cum_logprob)
                    .then(a.index.cmp(&b.index))
            });
        }
        results.truncate(n);
        RequestOutput {
            request_id: group.request_id,
            prompt_token_ids_len: group.seqs[0].prompt_len,
            prompt_logprobs: take_prompt_logprobs(&mut group),
            deltas,
            results: Some(results),
        }
    }
}

/// The group still collects prompt logprobs (its prompt is being computed).
fn wants_prompt_logprobs(group: &SequenceGroup) -> bool {
    group
        .prompt_logprobs
        .as_ref()
        .is_some_and(|p| p.len() < group.seqs[0].prompt_len)
}

/// The prompt logprobs, the first time a complete set is reported.
fn take_prompt_logprobs(group: &mut SequenceGroup) -> Option<Vec<Option<f32>>> {
    if group.prompt_logprobs_reported || wants_prompt_logprobs(group) {
        return None;
    }
    group.prompt_logprobs_reported = true;
    group.prompt_logprobs.clone()
}

/// Appends a sampled token to sequence `i` of `group`, detokenizes it and
/// applies the stop rules. Returns the sequence's delta for this step.
fn append_token(
    group: &mut SequenceGroup,
    i: usize,
    token: u32,
    logprob: f32,
    (eos_token_ids, max_model_len): (&[u32], usize),
    tokenizer: Option<&Tokenizer>,
) -> Result<SeqDelta> {
    let params = &group.params;
    let s = &mut group.seqs[i];
    s.tokens.push(token);
    s.cum_logprob += logprob as f64;
    s.logprobs.push(logprob);
    let mut text = String::new();
    if let (Some(d), Some(t)) = (s.detokenizer.as_mut(), tokenizer) {
        text = d.push(t, token)?;
    }
    let generated = s.output().len();
    if !params.ignore_eos && eos_token_ids.contains(&token) {
        s.finish = Some(FinishReason::Stop);
    } else if params.stop_token_ids.contains(&token) {
        s.finish = Some(FinishReason::Stop);
        s.stop_reason = Some(StopReason::Token(token));
    } else if generated >= params.max_tokens || s.tokens.len() >= max_model_len {
        s.finish = Some(FinishReason::Length);
    }
    if s.finish.is_some() {
        if let (Some(d), Some(t)) = (s.detokenizer.as_mut(), tokenizer) {
            text.push_str(&d.finish(t)?);
        }
    }
    s.text.push_str(&text);
    Ok(SeqDelta {
        index: i,
        token_ids: vec![token],
        text,
        logprobs: vec![logprob],
        finish_reason: s.finish,
        stop_reason: s.stop_reason.clone(),
    })
}
