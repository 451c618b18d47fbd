//! The step's sampling: every sampled (non-beam) sequence of the step goes
//! through one `Backend::sample_rows` call; only forced tokens (whole-choice
//! `guided_choice`) take the host path, on the downloaded logits.

use crate::backend::{Backend, SampleBatch};
use crate::error::Result;
use crate::sampling::batch::{sample_output, sample_row_for, HostSampler, RowRequest};
use crate::sampling::{SampleOutput, Sampler, SequenceTokens};

use super::super::scheduler::Scheduled;
use super::guided::{self, GuideMasks};
use super::EngineCore;
use std::time::Instant;

/// A sequence that samples this step.
pub(super) struct PendingRow {
    pub request_id: u64,
    /// The sequence's index in its group.
    pub seq: usize,
    /// Its guide mask's key (forks of a first sample share sequence 0's).
    pub mask_key: (u64, usize),
    pub logits_row: usize,
}

/// What a pending sequence got: a token, or a dead end of its constraint.
pub(super) type Picked = Option<SampleOutput>;

/// Where a pending row's answer comes from.
enum Slot {
    Ready(Picked),
    /// Result `index` of the op; `guided` when a mask was applied.
    Batched {
        index: usize,
        guided: bool,
    },
}

impl<B: Backend> EngineCore<B> {
    /// Forks a best_of group on its first sample and lists the sequences of
    /// chunk `p` that sample from `logits_row`.
    pub(super) fn pending_rows(
        &mut self,
        p: &Scheduled,
        logits_row: usize,
    ) -> Result<Vec<PendingRow>> {
        let Some(group) = self.groups.get(&p.request_id) else {
            return Ok(Vec::new());
        };
        // The first sample of a best_of group forks it: every sequence draws
        // its first token from the prompt's logits.
        let first_sample = !group.has_output();
        if first_sample && group.width > 1 && !group.params.use_beam_search {
            self.fork_group(p.request_id)?;
        }
        let Some(group) = self.groups.get_mut(&p.request_id) else {
            return Ok(Vec::new());
        };
        group.first_token_at.get_or_insert_with(Instant::now);
        let indices = if first_sample {
            0..group.seqs.len()
        } else {
            p.seq_index..p.seq_index + 1
        };
        Ok(indices
            .map(|seq| PendingRow {
                request_id: p.request_id,
                seq,
                mask_key: (p.request_id, p.seq_index),
                logits_row,
            })
            .collect())
    }

    /// Picks the next token of every pending row: one op call for the rows it
    /// covers, the host path for forced tokens (`host` holds the logits then).
    pub(super) fn pick_tokens(
        &mut self,
        pending: &[PendingRow],
        logits: &B::Buffer,
        host: &[f32],
        masks: &GuideMasks,
    ) -> Result<Vec<Picked>> {
        let vocab = self.model().config.vocab_size;
        let mut batch = SampleBatch {
            vocab,
            rows: Vec::new(),
        };
        let mut slots = Vec::with_capacity(pending.len());
        for r in pending {
            let Some(group) = self.groups.get_mut(&r.request_id) else {
                slots.push(Slot::Ready(None));
                continue;
            };
            let params = &group.params;
            let s = &mut group.seqs[r.seq];
            let tokens = SequenceTokens {
                prompt: &s.tokens[..s.prompt_len],
                output: &s.tokens[s.prompt_len..],
            };
            if let Some(token) = s.forced.front().copied() {
                // A whole-scored choice, whose tokens the constraint was checked
                // to accept: unmasked, with the logprobs a sampled one would get.
                let mut row = host[r.logits_row * vocab..(r.logits_row + 1) * vocab].to_vec();
                let eos = &self.eos_token_ids;
                let out = Sampler::forced_token(&mut row, params, tokens, eos, token);
                s.forced.pop_front();
                slots.push(Slot::Ready(Some(out)));
                continue;
            }
            let Ok(mask) = guided::mask_for(s, masks, r.mask_key) else {
                slots.push(Slot::Ready(None));
                continue;
            };
            let request = RowRequest {
                logits_row: r.logits_row,
                vocab,
                params,
                tokens,
                eos_token_ids: &self.eos_token_ids,
                bitmask: mask.map(Vec::as_slice),
            };
            batch.rows.push(sample_row_for(&request, &s.sampler));
            let index = batch.rows.len() - 1;
            slots.push(Slot::Batched {
                index,
                guided: mask.is_some(),
            });
        }
        let sampled = if batch.rows.is_empty() {
            Vec::new()
        } else {
            let be = self.model().backend();
            be.sample_rows(logits, &batch, &HostSampler)?
        };
        Ok(self.resolve(pending, slots, &batch, &sampled))
    }

    /// Each slot's token; a random row's draw advances its sequence's stream.
    fn resolve(
        &mut self,
        pending: &[PendingRow],
        slots: Vec<Slot>,
        batch: &SampleBatch,
        sampled: &[crate::backend::SampledRow],
    ) -> Vec<Picked> {
        pending
            .iter()
            .zip(slots)
            .map(|(r, slot)| match slot {
                Slot::Ready(picked) => picked,
                Slot::Batched { index, guided } => {
                    let out = sample_output(&sampled[index]);
                    if batch.rows[index].draw.is_some() {
                        if let Some(g) = self.groups.get_mut(&r.request_id) {
                            g.seqs[r.seq].sampler.advance();
                        }
                    }
                    let dead_end = guided && out.logprobs.chosen.logprob == f32::NEG_INFINITY;
                    (!dead_end).then_some(out)
                }
            })
            .collect()
    }
}
