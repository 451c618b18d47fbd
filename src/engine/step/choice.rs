//! Whole-choice scoring of a greedy `guided_choice` (which requests, and their
//! choices as tokens: `sampling::guided::choice`). When the prompt is computed,
//! a scoring prefill runs every choice through the model after it,
//! teacher-forced, in temporary sequences that share the prompt's KV blocks;
//! a choice scores the sum of its tokens' logprobs, and the best one, followed
//! by the end token greedy decoding takes after it, becomes the sequence's
//! forced tokens, emitted one per step as if sampled. The logprobs are the
//! request's processed ones (penalties, logit_bias) without the choice mask:
//! the values the emitted tokens report.
//!
//! The end token is not scored: a model often rates "Paris" highest and then
//! wants a full stop, not EOS, and that must not hand the answer to a worse
//! choice it would end more readily (on SmolLM2-135M-Instruct it would). The
//! cost: where one choice extends another ("yes", "yes sir"), the shorter
//! scores at least as high (logprobs are at most 0), so it is the one picked.

use crate::backend::{Backend, StepMeta};
use crate::error::Result;
use crate::kv_cache::block_manager::SeqId;
use crate::sampling::guided::choice::best_choice;
use crate::sampling::processors::processed_logprobs;
use crate::sampling::{SamplingParams, SequenceTokens};

use super::EngineCore;

/// Logits one scoring forward pass may bring back, in bytes: bounds its rows.
const SCORING_LOGITS_BYTES: usize = 64 << 20;

/// One choice's scoring progress.
struct ChoiceScore {
    tokens: Vec<u32>,
    /// Tokens run through the model so far.
    fed: usize,
    /// Its temporary sequence, while it has one.
    seq: Option<SeqId>,
    /// Sum of the logprobs of its tokens.
    logprob: f64,
    /// The end token greedy decoding takes after it, once known.
    end: Option<u32>,
}

/// One scoring pass: the choice, its temporary sequence, positions `start..end`.
type Chunk = (usize, SeqId, usize, usize);

/// What every row of a request's scoring is processed with.
struct Scoring {
    prompt: Vec<u32>,
    params: SamplingParams,
    eos_token_ids: Vec<u32>,
    /// Tokens that end the output (EOS, stop token ids), first preferred on ties.
    ends: Vec<u32>,
}

impl Scoring {
    /// The request's processed logprobs of a row after `output`.
    fn processed(&self, logits: &[f32], output: &[u32]) -> Vec<f32> {
        let mut row = logits.to_vec();
        let tokens = SequenceTokens {
            prompt: &self.prompt,
            output,
        };
        processed_logprobs(&mut row, &self.params, tokens, &self.eos_token_ids)
    }

    /// Takes what row `lp` (after the choice's first `at` tokens) says: the
    /// logprob of its next token, or past its last, which end token greedy
    /// decoding would take there.
    fn add(&self, c: &mut ChoiceScore, at: usize, lp: &[f32]) {
        let logprob = |t: u32| lp.get(t as usize).copied().unwrap_or(f32::NEG_INFINITY);
        if let Some(&next) = c.tokens.get(at) {
            c.logprob += f64::from(logprob(next));
            return;
        }
        let mut best: Option<u32> = None;
        for &t in &self.ends {
            if best.is_none_or(|b| logprob(t) > logprob(b)) {
                best = Some(t);
            }
        }
        c.end = best.filter(|&t| logprob(t).is_finite());
    }
}

impl<B: Backend> EngineCore<B> {
    /// Scores the pending choices of `request_id`, whose prompt just got its
    /// last logits row `root_row`, and queues the best as its forced tokens.
    /// Where the KV cache has no room for the scoring, the request decodes
    /// token by token instead.
    pub(super) fn choose_whole_choice(&mut self, request_id: u64, root_row: &[f32]) -> Result<()> {
        let vocab_size = self.model().config.vocab_size;
        let Some(group) = self.groups.get_mut(&request_id) else {
            return Ok(());
        };
        let Some(choices) = group.choices.take() else {
            return Ok(());
        };
        let parent = group.seqs[0].id;
        let mut ends = self.eos_token_ids.clone();
        ends.extend(&self.generation_stop_ids);
        ends.extend(&group.params.stop_token_ids);
        ends.retain(|&t| (t as usize) < vocab_size);
        let scoring = Scoring {
            prompt: group.seqs[0].tokens.clone(),
            params: group.params.clone(),
            eos_token_ids: self.eos_token_ids.clone(),
            ends,
        };
        let mut scored: Vec<ChoiceScore> = choices
            .into_iter()
            .map(|tokens| ChoiceScore {
                tokens,
                fed: 0,
                seq: None,
                logprob: 0.0,
                end: None,
            })
            .collect();
        let root = scoring.processed(root_row, &[]);
        for c in &mut scored {
            scoring.add(c, 0, &root);
        }
        let complete = self.run_choices(parent, &scoring, &mut scored);
        for id in scored.iter().filter_map(|c| c.seq) {
            self.blocks.free(id);
        }
        if !complete? {
            return Ok(());
        }
        let scores: Vec<f64> = scored.iter().map(|c| c.logprob).collect();
        let (Some(best), Some(group)) = (best_choice(&scores), self.groups.get_mut(&request_id))
        else {
            return Ok(());
        };
        let c = &scored[best];
        group.seqs[0].forced = c.tokens.iter().copied().chain(c.end).collect();
        Ok(())
    }

    /// Runs every choice through the model in passes of at most a bounded
    /// number of rows. `false` when the KV cache ran out of blocks for it.
    fn run_choices(
        &mut self,
        parent: SeqId,
        scoring: &Scoring,
        scored: &mut [ChoiceScore],
    ) -> Result<bool> {
        let vocab = self.model().config.vocab_size.max(1);
        let rows =
            (SCORING_LOGITS_BYTES / (vocab * 4)).clamp(1, self.config.max_num_batched_tokens);
        loop {
            let Some(chunks) = self.plan_pass(parent, scoring.prompt.len(), scored, rows) else {
                return Ok(false);
            };
            if chunks.is_empty() {
                return Ok(true);
            }
            self.scoring_pass(&chunks, scoring, scored)?;
            for c in scored.iter_mut().filter(|c| c.fed == c.tokens.len()) {
                if let Some(id) = c.seq.take() {
                    self.blocks.free(id);
                }
            }
        }
    }

    /// The next pass: choices in order, each continuing where it stopped, up
    /// to `rows` tokens, with their blocks prepared. `None` when not even the
    /// first gets blocks.
    fn plan_pass(
        &mut self,
        parent: SeqId,
        prompt_len: usize,
        scored: &mut [ChoiceScore],
        rows: usize,
    ) -> Option<Vec<Chunk>> {
        let mut chunks = Vec::new();
        let mut left = rows;
        for (i, c) in scored.iter_mut().enumerate() {
            let remaining = c.tokens.len() - c.fed;
            if remaining == 0 {
                continue;
            }
            if left == 0 {
                break;
            }
            let id = match c.seq {
                Some(id) => id,
                None => {
                    self.next_seq_id += 1;
                    self.blocks.fork(parent, self.next_seq_id);
                    *c.seq.insert(self.next_seq_id)
                }
            };
            let take = remaining.min(left);
            let (start, end) = (prompt_len + c.fed, prompt_len + c.fed + take);
            if self.blocks.prepare_write(id, end, start).is_err() {
                if chunks.is_empty() {
                    return None;
                }
                break;
            }
            chunks.push((i, id, start, end));
            left -= take;
        }
        Some(chunks)
    }

    /// One teacher-forced forward pass over `chunks`, every row scored.
    fn scoring_pass(
        &mut self,
        chunks: &[Chunk],
        scoring: &Scoring,
        scored: &mut [ChoiceScore],
    ) -> Result<()> {
        let prompt_len = scoring.prompt.len();
        let mut meta = StepMeta {
            block_size: self.blocks.block_size(),
            query_start: vec![0],
            ..StepMeta::default()
        };
        for &(i, id, start, end) in chunks {
            let fed = &scored[i].tokens[start - prompt_len..end - prompt_len];
            meta.token_ids.extend_from_slice(fed);
            meta.positions.extend(start as u32..end as u32);
            meta.slot_mapping
                .extend((start..end).map(|pos| self.blocks.slot(id, pos)));
            meta.query_start.push(meta.token_ids.len());
            meta.context_lens.push(end);
            meta.block_tables.push(self.blocks.blocks(id).to_vec());
        }
        meta.logits_rows = (0..meta.token_ids.len()).collect();
        self.run_copies()?;
        let logits = self.models.forward(meta)?;
        let vocab = self.model().config.vocab_size;
        let mut rows = logits.chunks_exact(vocab);
        for &(i, _, start, end) in chunks {
            let c = &mut scored[i];
            for at in start - prompt_len + 1..=end - prompt_len {
                let Some(row) = rows.next() else { break };
                let lp = scoring.processed(row, &c.tokens[..at]);
                scoring.add(c, at, &lp);
            }
            c.fed = end - prompt_len;
        }
        Ok(())
    }
}
