//! Beam search steps of the engine core: vLLM v0.4.3's candidate selection
//! (in `crate::sampling::beam`) applied to live sequences and their KV blocks.

use std::time::Instant;

use crate::backend::Backend;
use crate::error::Result;
use crate::kv_cache::block_manager::SeqId;
use crate::sampling::beam::{
    beam_candidates, select_beams, BeamCandidate, BeamContext, BeamParent, BeamSelection,
    CheckedCandidate, ScoredSeq,
};
use crate::sampling::guided::{apply_token_bitmask, Guide};
use crate::sampling::processors::processed_logprobs;
use crate::sampling::stop::{Finish, StopChecker};
use crate::sampling::{OutputText, Sampler, SamplingParams, SequenceTokens, TokenLogprobs};
use crate::tokenizer::IncrementalDetokenizer;

use super::super::sequence::{FinishReason, Sequence, SequenceGroup};
use super::guided::{mask_for, GuideMasks};
use super::EngineCore;

impl<B: Backend> EngineCore<B> {
    /// One beam search step for a request whose live beams all have their logits
    /// rows: vLLM's candidate selection, then the new beams take over their
    /// parents' blocks (forking where a parent continues twice) and parents that
    /// do not continue are freed.
    pub(super) fn beam_step(
        &mut self,
        request_id: u64,
        rows: &[(usize, &[f32])],
        masks: &GuideMasks,
    ) -> Result<()> {
        let Some(mut group) = self.groups.remove(&request_id) else {
            return Ok(());
        };
        let result = self.beam_step_in(&mut group, rows, masks);
        self.groups.insert(request_id, group);
        result
    }

    fn beam_step_in(
        &mut self,
        group: &mut SequenceGroup,
        rows: &[(usize, &[f32])],
        masks: &GuideMasks,
    ) -> Result<()> {
        group.first_token_at.get_or_insert_with(Instant::now);
        let params = group.params.clone();
        let eos = self.eos_token_ids.clone();
        let guided = rows.iter().any(|&(i, _)| group.seqs[i].guide.is_some());
        let processed = processed_rows(group, rows, masks, &params, &eos);
        let parents: Vec<BeamParent> = rows
            .iter()
            .zip(&processed)
            .map(|(&(i, _), lp)| BeamParent {
                cumulative_logprob: group.seqs[i].cum_logprob,
                logprobs: lp,
            })
            .collect();
        let mut candidates = beam_candidates(&parents, group.width);
        if guided {
            // Under a constraint only allowed tokens may continue a beam, even
            // when fewer than 2 * width are left.
            candidates.retain(|c| c.logprob.is_finite());
            if candidates.is_empty() {
                for &(i, _) in rows {
                    let s = &mut group.seqs[i];
                    self.blocks.free(s.id);
                    s.finish = Some(FinishReason::Stop);
                }
                return Ok(());
            }
        }
        let step = BeamStep {
            rows,
            candidates: &candidates,
            processed: &processed,
            params: &params,
            eos: &eos,
        };
        let (trials, checked) = self.trials(group, &step)?;
        let finished_idx: Vec<usize> = (0..group.seqs.len())
            .filter(|&i| group.seqs[i].is_finished())
            .collect();
        let existing: Vec<ScoredSeq> = finished_idx
            .iter()
            .map(|&i| scored(&group.seqs[i]))
            .collect();
        let ctx = BeamContext {
            params: &params,
            eos_token_ids: &eos,
            prompt_len: group.seqs[0].prompt_len,
            max_model_len: self.model().max_positions,
        };
        let selection = select_beams(&existing, &checked, &ctx);
        self.stats.generation_tokens += candidates.len().min(group.width) as u64;
        let old = std::mem::take(&mut group.seqs);
        group.seqs = self.next_beams(old, &step, &trials, &selection, &finished_idx);
        Ok(())
    }

    /// Each candidate as its own sequence: the parent plus one token, checked for
    /// stops; with the facts [`select_beams`] ranks it by.
    fn trials(
        &self,
        group: &SequenceGroup,
        step: &BeamStep,
    ) -> Result<(Vec<Trial>, Vec<CheckedCandidate>)> {
        let stop = StopChecker::new(step.params, step.eos, self.model().max_positions);
        let mut trials = Vec::with_capacity(step.candidates.len());
        let mut checked = Vec::with_capacity(step.candidates.len());
        for c in step.candidates {
            let parent = &group.seqs[step.rows[c.parent].0];
            let trial = self.trial(parent, c, &step.processed[c.parent], step.params, &stop)?;
            checked.push(CheckedCandidate {
                parent: c.parent,
                seq: ScoredSeq {
                    cumulative_logprob: c.cumulative_logprob,
                    seq_len: trial.tokens.len(),
                    last_token: c.token,
                },
                finished: trial.finish.is_some(),
            });
            trials.push(trial);
        }
        Ok((trials, checked))
    }

    /// `parent` continued by the candidate's token: its logprobs, text and stop.
    fn trial(
        &self,
        parent: &Sequence,
        c: &BeamCandidate,
        processed: &[f32],
        params: &SamplingParams,
        stop: &StopChecker,
    ) -> Result<Trial> {
        let mut trial = Trial {
            tokens: parent.tokens.clone(),
            text: parent.text.clone(),
            detokenizer: parent.detokenizer.clone(),
            logprobs: parent.logprobs.clone(),
            finish: None,
        };
        trial.tokens.push(c.token);
        let mut token_logprobs = TokenLogprobs::new(processed, c.token, params.logprobs);
        if params.logprobs.is_some() {
            if let (Some(d), Some(t)) = (parent.detokenizer.as_ref(), self.tokenizer.as_deref()) {
                super::logprob_text::decode_generated(&mut token_logprobs, d, t)?;
            }
        }
        trial.logprobs.push(token_logprobs);
        let new_text = match (trial.detokenizer.as_mut(), self.tokenizer.as_deref()) {
            (Some(d), Some(t)) => d.push(t, c.token)?,
            _ => String::new(),
        };
        let out_len = trial.tokens.len() - parent.prompt_len;
        trial.finish = stop.check(
            &mut trial.text,
            c.token,
            out_len,
            trial.tokens.len(),
            &new_text,
        );
        Ok(trial)
    }

    /// The next set of sequences: kept finished beams, new finished ones, new
    /// live ones (taking over or forking their parents' blocks).
    fn next_beams(
        &mut self,
        old: Vec<Sequence>,
        step: &BeamStep,
        trials: &[Trial],
        selection: &BeamSelection,
        finished_idx: &[usize],
    ) -> Vec<Sequence> {
        let dropped: Vec<usize> = selection
            .dropped_finished
            .iter()
            .map(|&k| finished_idx[k])
            .collect();
        let mut old: Vec<Option<Sequence>> = old.into_iter().map(Some).collect();
        let mut next: Vec<Sequence> = Vec::new();
        for &i in finished_idx {
            if !dropped.contains(&i) {
                next.extend(old[i].take());
            }
        }
        let prompt_len = step
            .rows
            .first()
            .map_or(0, |&(i, _)| old[i].as_ref().map_or(0, |s| s.prompt_len));
        for &k in &selection.finished {
            // A finished beam holds no blocks and samples no more: any sampler will do.
            self.next_seq_id += 1;
            next.push(trials[k].to_seq(
                self.next_seq_id,
                prompt_len,
                Sampler::new(Some(0)),
                step.candidates[k].cumulative_logprob,
                None,
            ));
        }
        self.continue_beams(&mut old, &mut next, step, trials, selection, prompt_len);
        if selection.done {
            for s in next.iter_mut().filter(|s| !s.is_finished()) {
                self.blocks.free(s.id);
                s.finish = Some(FinishReason::Length);
            }
            // A finished search keeps only finished beams.
            next.retain(|s| s.finish.is_some());
        }
        next
    }

    /// The live beams of the next step: the first continuation of a parent takes
    /// over its blocks under its id, later ones fork them; parents that do not
    /// continue give their blocks back.
    fn continue_beams(
        &mut self,
        old: &mut [Option<Sequence>],
        next: &mut Vec<Sequence>,
        step: &BeamStep,
        trials: &[Trial],
        selection: &BeamSelection,
        prompt_len: usize,
    ) {
        let rows = step.rows;
        let mut parent_taken = vec![false; rows.len()];
        for &k in &selection.running {
            let c = &step.candidates[k];
            let parent_seq = old[rows[c.parent].0].as_ref().map(|s| {
                // The parent's constraint state, advanced by this beam's token.
                let guide = s.guide.as_ref().map(|g| {
                    let mut g = g.fork();
                    g.advance(c.token);
                    g
                });
                (s.id, s.sampler.clone(), guide)
            });
            let Some((parent_id, sampler, guide)) = parent_seq else {
                continue;
            };
            let id = if parent_taken[c.parent] {
                self.next_seq_id += 1;
                self.blocks.fork(parent_id, self.next_seq_id);
                self.next_seq_id
            } else {
                parent_taken[c.parent] = true;
                parent_id
            };
            next.push(trials[k].to_seq(id, prompt_len, sampler, c.cumulative_logprob, guide));
        }
        for (p, &(i, _)) in rows.iter().enumerate() {
            if !parent_taken[p] {
                if let Some(s) = old[i].take() {
                    self.blocks.free(s.id);
                }
            }
        }
    }
}

/// The facts of one beam step shared by its parts.
struct BeamStep<'a> {
    /// (index into the group's sequences, logits row) of each live beam.
    rows: &'a [(usize, &'a [f32])],
    candidates: &'a [BeamCandidate],
    /// Each row's processed logprobs, in `rows` order.
    processed: &'a [Vec<f32>],
    params: &'a SamplingParams,
    eos: &'a [u32],
}

/// Each live beam's logits row, masked by its constraint and processed into
/// logprobs.
fn processed_rows(
    group: &SequenceGroup,
    rows: &[(usize, &[f32])],
    masks: &GuideMasks,
    params: &SamplingParams,
    eos: &[u32],
) -> Vec<Vec<f32>> {
    rows.iter()
        .map(|&(i, r)| {
            let s = &group.seqs[i];
            let mut row = r.to_vec();
            match mask_for(s, masks, (group.request_id, i)) {
                Ok(Some(mask)) => apply_token_bitmask(&mut row, mask),
                Ok(None) => {}
                // A beam at a dead end offers no candidates.
                Err(()) => row.fill(f32::NEG_INFINITY),
            }
            let tokens = SequenceTokens {
                prompt: &s.tokens[..s.prompt_len],
                output: &s.tokens[s.prompt_len..],
            };
            processed_logprobs(&mut row, params, tokens, eos)
        })
        .collect()
}

/// A beam candidate: its parent with one more token, checked for stops.
struct Trial {
    tokens: Vec<u32>,
    text: OutputText,
    detokenizer: Option<IncrementalDetokenizer>,
    logprobs: Vec<TokenLogprobs>,
    finish: Option<Finish>,
}

impl Trial {
    fn to_seq(
        &self,
        id: SeqId,
        prompt_len: usize,
        sampler: Sampler,
        cum: f64,
        guide: Option<Guide>,
    ) -> Sequence {
        Sequence {
            id,
            tokens: self.tokens.clone(),
            prompt_len,
            computed: self.tokens.len() - 1,
            cum_logprob: cum,
            logprobs: self.logprobs.clone(),
            sampler,
            detokenizer: self.detokenizer.clone(),
            text: self.text.clone(),
            finish: self.finish.as_ref().map(|f| f.reason),
            stop_reason: self.finish.as_ref().and_then(|f| f.stop_reason.clone()),
            guide,
            forced: Default::default(),
        }
    }
}

pub(super) fn scored(s: &Sequence) -> ScoredSeq {
    ScoredSeq {
        cumulative_logprob: s.cum_logprob,
        seq_len: s.tokens.len(),
        last_token: s.tokens.last().copied().unwrap_or(0),
    }
}
