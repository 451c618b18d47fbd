//! The engine's step: schedule, run the model once over the batch, sample, and
//! report what each request gained. Synchronous; [`super::Engine`] runs it on
//! its own thread, and `Llm::generate` drives it directly.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::backend::{Backend, StepMeta, MAX_SAMPLE_ROWS, MAX_TOP_LOGPROBS};
use crate::error::{Error, Result};
use crate::kv_cache::block_manager::BlockManager;
use crate::model::{Model, ModelGroup};
use crate::sampling::beam::{top_n_outputs, ScoredSeq};
use crate::sampling::guided::{Guide, LazyGuidedCompiler};
use crate::sampling::logprobs::prompt_logprobs;
use crate::sampling::stop::{Finish, StopChecker};
use crate::sampling::{OutputText, SampleOutput, Sampler, SamplingParams, TokenLogprobs};
use crate::tokenizer::{IncrementalDetokenizer, Tokenizer};

mod beam;
mod choice;
mod guided;
mod logprob_text;
mod sample;
mod validate;

pub use validate::{RequestError, RequestValidator, WidthParam};

use guided::GuideMasks;

use beam::scored;

use super::scheduler::{Scheduled, Scheduler, SchedulerConfig};
use super::sequence::{FinishReason, RequestOutput, SeqDelta, SeqResult, Sequence, SequenceGroup};
use super::stats::EngineStats;

/// Sizing of the engine, vLLM's names.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    pub max_num_seqs: usize,
    /// Most top logprobs a request may ask for (vLLM's `max_logprobs`).
    pub max_logprobs: usize,
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
    /// The compiled output constraint, at its start state.
    pub guide: Option<Guide>,
    /// A greedy `guided_choice`'s choices as token ids: the engine scores each
    /// whole once the prompt is computed and emits the best (`step/choice.rs`).
    pub choices: Option<Vec<Vec<u32>>>,
}

pub struct EngineCore<B: Backend> {
    /// The model's ranks (one unless tensor parallel) and their KV pools.
    models: ModelGroup<B>,
    tokenizer: Option<Arc<Tokenizer>>,
    blocks: BlockManager,
    scheduler: Scheduler,
    config: EngineConfig,
    groups: HashMap<u64, SequenceGroup>,
    next_seq_id: u64,
    /// The tokenizer's EOS (vLLM's `eos_token_id`), or the config's without a tokenizer.
    eos_token_ids: Vec<u32>,
    /// generation_config.json's EOS ids, added to each request's stop tokens.
    generation_stop_ids: Vec<u32>,
    guided: Arc<LazyGuidedCompiler>,
    stats: EngineStats,
}

impl<B: Backend> EngineCore<B> {
    pub fn new(
        model: Model<B>,
        tokenizer: Option<Arc<Tokenizer>>,
        config: EngineConfig,
    ) -> Result<EngineCore<B>> {
        EngineCore::new_parallel(ModelGroup::new(vec![model])?, tokenizer, config)
    }

    /// An engine over the ranks of a tensor-parallel group (rank order): one
    /// scheduler and one set of block tables, every rank stepping each batch.
    /// The group's KV pools are allocated here, `config.num_blocks` per rank.
    pub fn new_parallel(
        mut models: ModelGroup<B>,
        tokenizer: Option<Arc<Tokenizer>>,
        config: EngineConfig,
    ) -> Result<EngineCore<B>> {
        if config.max_num_seqs == 0 || config.max_num_batched_tokens == 0 {
            return Err(Error::invalid(
                "max_num_seqs and max_num_batched_tokens must be positive",
            ));
        }
        // What one step's sampling takes (the op refuses more, which would stop
        // the engine at the first request that reached it).
        if config.max_num_seqs > MAX_SAMPLE_ROWS {
            return Err(Error::invalid(format!(
                "max_num_seqs {} is more than {MAX_SAMPLE_ROWS}, the most sequences a step samples",
                config.max_num_seqs
            )));
        }
        if config.max_logprobs > MAX_TOP_LOGPROBS {
            return Err(Error::invalid(format!(
                "max_logprobs {} is more than {MAX_TOP_LOGPROBS}, the most top logprobs a step \
                 samples for a token",
                config.max_logprobs
            )));
        }
        models.allocate_kv(config.num_blocks, config.block_size)?;
        let model = models.lead();
        let (eos_token_ids, generation_stop_ids) = match &tokenizer {
            Some(t) => (
                t.eos_token_id().into_iter().collect(),
                t.generation_eos_token_ids().to_vec(),
            ),
            None => (model.config.eos_token_ids.clone(), Vec::new()),
        };
        let mut guided_eos: Vec<u32> = eos_token_ids
            .iter()
            .chain(&generation_stop_ids)
            .copied()
            .collect();
        guided_eos.dedup();
        let guided = Arc::new(LazyGuidedCompiler::new(
            tokenizer.clone(),
            model.config.vocab_size,
            guided_eos,
        ));
        Ok(EngineCore {
            guided,
            blocks: BlockManager::new(
                config.num_blocks,
                config.block_size,
                config.enable_prefix_caching,
            ),
            models,
            tokenizer,
            scheduler: Scheduler::default(),
            config,
            groups: HashMap::new(),
            next_seq_id: 0,
            eos_token_ids,
            generation_stop_ids,
            stats: EngineStats::default(),
        })
    }

    pub fn validator(&self) -> RequestValidator {
        RequestValidator {
            tokenizer: self.tokenizer.clone(),
            vocab_size: self.model().config.vocab_size,
            max_logprobs: self.config.max_logprobs,
            max_model_len: self.model().max_positions,
            num_blocks: self.config.num_blocks,
            block_size: self.config.block_size,
            max_num_seqs: self.config.max_num_seqs,
            guided: self.guided.clone(),
        }
    }

    /// The model (rank 0's, in a tensor-parallel group).
    pub fn model(&self) -> &Model<B> {
        self.models.lead()
    }

    /// Ranks of the tensor-parallel group (1 without tensor parallelism).
    pub fn tensor_parallel_size(&self) -> usize {
        self.models.world()
    }

    pub fn tokenizer(&self) -> Option<&Arc<Tokenizer>> {
        self.tokenizer.as_ref()
    }

    /// Every token id that ends a request by default: EOS and generation_config's.
    pub fn stop_token_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .eos_token_ids
            .iter()
            .chain(&self.generation_stop_ids)
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
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
        sampler: Sampler,
        guide: Option<Guide>,
    ) -> Result<Sequence> {
        self.next_seq_id += 1;
        let detokenizer = match (&self.tokenizer, params.detokenize) {
            (Some(t), true) => Some(IncrementalDetokenizer::new(
                t,
                &tokens[..prompt_len],
                params.skip_special_tokens,
                params.spaces_between_special_tokens,
            )?),
            _ => None,
        };
        Ok(Sequence {
            id: self.next_seq_id,
            tokens,
            prompt_len,
            computed: 0,
            cum_logprob: 0.0,
            logprobs: Vec::new(),
            sampler,
            detokenizer,
            text: OutputText::new(),
            finish: None,
            stop_reason: None,
            guide,
            forced: Default::default(),
        })
    }

    /// Queues a validated request under `request_id` (unique among live requests).
    pub fn add_request(&mut self, request_id: u64, request: EngineRequest) -> Result<()> {
        if self.groups.contains_key(&request_id) {
            return Err(Error::invalid(format!(
                "request id {request_id} is already running"
            )));
        }
        let mut params = request.params;
        params.update_from_generation_config(&self.generation_stop_ids);
        let prompt_len = request.prompt_token_ids.len();
        let root = Sampler::new(params.seed);
        let seq = self.new_sequence(
            request.prompt_token_ids,
            prompt_len,
            &params,
            root.fork(0),
            request.guide,
        )?;
        self.stats.prompt_tokens += prompt_len as u64;
        let group = SequenceGroup {
            request_id,
            width: params.best_of(),
            prompt_logprobs: params.prompt_logprobs.map(|_| vec![None]),
            params,
            seqs: vec![seq],
            arrival: Instant::now(),
            first_token_at: None,
            preemptions: 0,
            prompt_logprobs_reported: false,
            choices: request.choices,
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

    /// Ends a request the KV cache cannot hold any longer: its unfinished
    /// sequences finish with "length", keeping what they generated.
    fn finish_at_capacity(&mut self, request_id: u64) -> Option<RequestOutput> {
        let mut group = self.groups.remove(&request_id)?;
        self.scheduler.remove(request_id);
        let mut deltas = Vec::new();
        for (index, s) in group.seqs.iter_mut().enumerate() {
            self.blocks.free(s.id);
            if s.finish.is_none() {
                s.finish = Some(FinishReason::Length);
                s.text.finish();
                deltas.push(SeqDelta {
                    index,
                    token_ids: Vec::new(),
                    text: s.text.take_delta(&group.params),
                    logprobs: Vec::new(),
                    finish_reason: s.finish,
                    stop_reason: None,
                });
            }
        }
        for s in &group.seqs {
            self.stats
                .finished(s.finish.unwrap_or(FinishReason::Length));
        }
        self.stats.record_latency(&group);
        Some(self.final_output(group, deltas))
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
                let logits = self.models.forward(meta)?;
                Ok(logits
                    .chunks(self.model().config.vocab_size)
                    .map(<[f32]>::to_vec)
                    .collect())
            });
        self.blocks.free(id);
        result
    }

    /// Runs the copy-on-write block copies the block manager asked for.
    fn run_copies(&mut self) -> Result<()> {
        let copies = self.blocks.take_pending_copies();
        if copies.is_empty() {
            return Ok(());
        }
        self.models.copy_blocks(&copies)
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
            // With nothing running, the head of the queue can never fit (its forks
            // outgrew the whole cache): it ends alone, with "length" as a sequence
            // cut by the model's length, instead of stalling the queue.
            if self.scheduler.running.is_empty() {
                if let Some(&id) = self.scheduler.waiting.front() {
                    return Ok(self.finish_at_capacity(id).into_iter().collect());
                }
            }
            return Ok(Vec::new());
        }
        self.run_copies()?;
        let (meta, first_rows) = self.build_meta(&plan);
        let (logits, masks) = self.forward_and_masks(meta, &plan)?;
        // The whole matrix comes to the host only for the rows that read it there.
        let host = if self.needs_host_logits(&plan) {
            self.models.logits_to_host(&logits)?
        } else {
            Vec::new()
        };
        let outputs = self.process(&plan, &first_rows, (&logits, &host), &masks);
        self.models.recycle_logits(logits);
        outputs
    }

    /// Whether a planned chunk reads its logits on the host: prompt logprobs,
    /// beam search, a whole-choice `guided_choice` and its forced tokens.
    fn needs_host_logits(&self, plan: &[Scheduled]) -> bool {
        plan.iter().any(|p| {
            self.groups.get(&p.request_id).is_some_and(|g| {
                wants_prompt_logprobs(g)
                    || g.params.use_beam_search
                    || g.choices.is_some()
                    || g.seqs.iter().any(|s| !s.forced.is_empty())
            })
        })
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
        (logits, host): (&B::Buffer, &[f32]),
        masks: &GuideMasks,
    ) -> Result<Vec<RequestOutput>> {
        let vocab = self.model().config.vocab_size;
        let row = |r: usize| &host[r * vocab..(r + 1) * vocab];
        let mut touched: Vec<u64> = Vec::new();
        let mut beam_rows: HashMap<u64, Vec<(usize, usize)>> = HashMap::new();
        let mut pending = Vec::new();
        for (p, &first) in plan.iter().zip(first_rows) {
            if !touched.contains(&p.request_id) {
                touched.push(p.request_id);
            }
            let Some(sample_row) = self.record_chunk(p, first, host)? else {
                continue;
            };
            let group = self.groups.get(&p.request_id);
            if group.is_some_and(|g| g.params.use_beam_search) {
                // Beams advance together once every live beam has its row.
                beam_rows
                    .entry(p.request_id)
                    .or_default()
                    .push((p.seq_index, sample_row));
                continue;
            }
            if group.is_some_and(|g| g.choices.is_some()) {
                // A greedy guided_choice picks its whole choice before its first token.
                self.choose_whole_choice(p.request_id, row(sample_row))?;
            }
            pending.extend(self.pending_rows(p, sample_row)?);
        }
        let picked = self.pick_tokens(&pending, logits, host, masks)?;
        let mut deltas = self.apply_picks(&pending, picked)?;
        for (id, rows) in beam_rows {
            let rows: Vec<(usize, &[f32])> = rows.into_iter().map(|(i, r)| (i, row(r))).collect();
            self.beam_step(id, &rows, masks)?;
        }
        let mut outputs = Vec::new();
        for id in touched {
            let d = deltas.remove(&id).unwrap_or_default();
            outputs.extend(self.output_for(id, d));
        }
        Ok(outputs)
    }

    /// Appends each pending sequence's token (stops, detokenization, logprobs).
    fn apply_picks(
        &mut self,
        pending: &[sample::PendingRow],
        picked: Vec<sample::Picked>,
    ) -> Result<HashMap<u64, Vec<SeqDelta>>> {
        let max_positions = self.model().max_positions;
        let mut deltas: HashMap<u64, Vec<SeqDelta>> = HashMap::new();
        for (r, pick) in pending.iter().zip(picked) {
            let Some(group) = self.groups.get_mut(&r.request_id) else {
                continue;
            };
            let stop = StopChecker::new(&group.params, &self.eos_token_ids, max_positions);
            let s = &mut group.seqs[r.seq];
            let delta = step_sequence(s, r.seq, pick, &stop, self.tokenizer.as_deref())?;
            self.stats.generation_tokens += delta.token_ids.len() as u64;
            deltas.entry(r.request_id).or_default().push(delta);
        }
        Ok(deltas)
    }

    /// Marks a planned chunk computed (collecting its prompt logprobs) and
    /// returns the logits row to sample from, or `None` for a prompt chunk that
    /// samples nothing yet.
    fn record_chunk(
        &mut self,
        p: &Scheduled,
        first: usize,
        logits: &[f32],
    ) -> Result<Option<usize>> {
        let vocab = self.model().config.vocab_size;
        let Some(group) = self.groups.get_mut(&p.request_id) else {
            return Ok(None);
        };
        let s = &mut group.seqs[p.seq_index];
        s.computed = p.end;
        self.blocks.register_computed(s.id, &s.tokens, p.end);
        let mut sample_row = first;
        if wants_prompt_logprobs(group) {
            // This chunk's rows predict prompt tokens start+1 ..= end.
            let prompt = &group.seqs[0].tokens[..group.seqs[0].prompt_len];
            let upto = (p.end + 1).min(prompt.len());
            let rows = &logits[first * vocab..(first + upto - p.start - 1) * vocab];
            let scored = prompt_logprobs(rows, vocab, &prompt[p.start..upto], &group.params);
            if let Some(pl) = group.prompt_logprobs.as_mut() {
                pl.extend(scored.into_iter().skip(1));
                let complete = pl.len() == prompt.len();
                if let (true, true, Some(t)) =
                    (complete, group.params.detokenize, self.tokenizer.as_deref())
                {
                    let skip = group.params.skip_special_tokens;
                    logprob_text::decode_prompt(pl, prompt, t, skip)?;
                }
            }
            sample_row = first + (p.end - p.start) - 1;
        }
        if p.end < group.seqs[p.seq_index].tokens.len() {
            return Ok(None); // a prompt chunk: nothing to sample yet
        }
        Ok(Some(sample_row))
    }

    /// What a request touched this step reports: its final output when it has
    /// finished (freeing the request), else its deltas if it gained any.
    fn output_for(&mut self, id: u64, d: Vec<SeqDelta>) -> Option<RequestOutput> {
        let group = self.groups.get_mut(&id)?;
        for s in group.seqs.iter().filter(|s| s.is_finished()) {
            self.blocks.free(s.id);
        }
        if group.is_finished() {
            let group = self.groups.remove(&id)?;
            self.scheduler.remove(id);
            for s in &group.seqs {
                self.stats
                    .finished(s.finish.unwrap_or(FinishReason::Length));
            }
            self.stats.record_latency(&group);
            Some(self.final_output(group, d))
        } else if !d.is_empty() {
            Some(RequestOutput {
                request_id: id,
                prompt_token_ids_len: group.seqs[0].prompt_len,
                prompt_logprobs: take_prompt_logprobs(group),
                deltas: d,
                results: None,
            })
        } else {
            None
        }
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
        let root = group.seqs[0].sampler.clone();
        let root_guide = group.seqs[0].guide.clone();
        let mut children = Vec::new();
        for i in 1..width {
            let sampler = root.fork(i as u64);
            // Each child continues the constraint from the shared prompt on its own.
            let guide = root_guide.as_ref().map(Guide::fork);
            let mut child =
                self.new_sequence(tokens.clone(), prompt_len, &params, sampler, guide)?;
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
        let n = group.params.n.min(group.seqs.len()).max(1);
        let mut results: Vec<SeqResult> = group
            .seqs
            .iter()
            .enumerate()
            .map(|(index, s)| SeqResult {
                index,
                token_ids: s.output().to_vec(),
                text: s.text.text().to_string(),
                logprobs: s.logprobs.clone(),
                cum_logprob: s.cum_logprob,
                finish_reason: s.finish.unwrap_or(FinishReason::Length),
                stop_reason: s.stop_reason.clone(),
            })
            .collect();
        if group.params.use_beam_search {
            let scored: Vec<ScoredSeq> = group.seqs.iter().map(scored).collect();
            let order = top_n_outputs(&scored, &group.params);
            results = order
                .into_iter()
                .filter_map(|i| results.get(i).cloned())
                .collect();
            for (rank, r) in results.iter_mut().enumerate() {
                r.index = rank;
            }
        } else if group.width > n {
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
fn take_prompt_logprobs(group: &mut SequenceGroup) -> Option<Vec<Option<TokenLogprobs>>> {
    if group.prompt_logprobs_reported || wants_prompt_logprobs(group) {
        return None;
    }
    group.prompt_logprobs_reported = true;
    group.prompt_logprobs.clone()
}

/// Appends the token picked for sequence `index` (`None`: its constraint's
/// dead end), detokenizes it and applies the stop rules. Returns its delta for
/// this step.
fn step_sequence(
    s: &mut Sequence,
    index: usize,
    picked: Option<SampleOutput>,
    stop: &StopChecker,
    tokenizer: Option<&Tokenizer>,
) -> Result<SeqDelta> {
    let params = stop.params;
    let Some(sampled) = picked else {
        return guided::end_at_dead_end(s, index, params, tokenizer);
    };
    let token = sampled.token;
    if let Some(guide) = s.guide.as_mut() {
        // A rejected token (not possible under its own mask) makes the next
        // mask a dead end, which ends the sequence.
        guide.advance(token);
    }
    let mut token_logprobs = sampled.logprobs;
    if params.logprobs.is_some() {
        if let (Some(d), Some(t)) = (s.detokenizer.as_ref(), tokenizer) {
            logprob_text::decode_generated(&mut token_logprobs, d, t)?;
        }
    }
    s.tokens.push(token);
    s.cum_logprob += token_logprobs.chosen.logprob as f64;
    s.logprobs.push(token_logprobs.clone());
    let new_text = match (s.detokenizer.as_mut(), tokenizer) {
        (Some(d), Some(t)) => d.push(t, token)?,
        _ => String::new(),
    };
    let finish = stop.check(
        &mut s.text,
        token,
        s.tokens.len() - s.prompt_len,
        s.tokens.len(),
        &new_text,
    );
    if let Some(Finish {
        reason,
        stop_reason,
    }) = finish
    {
        // Bytes of a character the detokenizer still held belong to the output,
        // unless a stop string or stop token cut it.
        if stop_reason.is_none() && reason == FinishReason::Length {
            if let (Some(d), Some(t)) = (s.detokenizer.as_mut(), tokenizer) {
                s.text.append_flushed(&d.finish(t)?);
            }
        }
        s.finish = Some(reason);
        s.stop_reason = stop_reason;
    }
    Ok(SeqDelta {
        index,
        token_ids: vec![token],
        text: s.text.take_delta(params),
        logprobs: vec![token_logprobs],
        finish_reason: s.finish,
        stop_reason: s.stop_reason.clone(),
    })
}
