//! Guided decoding in the engine step: the allowed-token masks of every
//! constrained sequence that samples this step, computed in parallel (rayon)
//! while the forward pass runs, then applied to each logits row before sampling.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::backend::{Backend, StepMeta};
use crate::error::Result;
use crate::sampling::guided::{Guide, TokenBitmask};
use crate::tokenizer::Tokenizer;

use super::super::scheduler::Scheduled;
use super::super::sequence::{FinishReason, SeqDelta, Sequence, SequenceGroup};
use super::EngineCore;

/// This step's mask per (request id, sequence index); `None` where the
/// constraint reached a dead end. A best_of group's first sample uses the mask
/// of its sequence 0 for every fork.
pub(super) type GuideMasks = HashMap<(u64, usize), Option<TokenBitmask>>;

/// The planned sequences that sample this step under a constraint.
fn constrained_samples(
    groups: &HashMap<u64, SequenceGroup>,
    plan: &[Scheduled],
) -> Vec<(u64, usize)> {
    plan.iter()
        .filter(|p| {
            groups.get(&p.request_id).is_some_and(|g| {
                let s = &g.seqs[p.seq_index];
                // A sequence emitting a scored choice needs no mask.
                p.end == s.tokens.len() && s.guide.is_some() && s.forced.is_empty()
            })
        })
        .map(|p| (p.request_id, p.seq_index))
        .collect()
}

/// Each listed sequence's mask, one rayon task per sequence.
fn compute_masks(groups: &mut HashMap<u64, SequenceGroup>, wanted: &[(u64, usize)]) -> GuideMasks {
    let mut work: Vec<((u64, usize), &mut Guide)> = Vec::with_capacity(wanted.len());
    for (&id, group) in groups.iter_mut() {
        for (i, s) in group.seqs.iter_mut().enumerate() {
            if let Some(guide) = s.guide.as_mut().filter(|_| wanted.contains(&(id, i))) {
                work.push(((id, i), guide));
            }
        }
    }
    work.into_par_iter()
        .map(|(key, guide)| (key, guide.compute_mask()))
        .collect()
}

impl<B: Backend> EngineCore<B> {
    /// The forward pass over the batch, and meanwhile, on another thread, the
    /// masks of the constrained sequences that sample this step.
    pub(super) fn forward_and_masks(
        &mut self,
        meta: StepMeta,
        plan: &[Scheduled],
    ) -> Result<(B::Buffer, GuideMasks)> {
        let wanted = constrained_samples(&self.groups, plan);
        let models = &mut self.models;
        let forward = move || -> Result<B::Buffer> { models.forward_on_device(meta) };
        if wanted.is_empty() {
            return Ok((forward()?, GuideMasks::new()));
        }
        let groups = &mut self.groups;
        std::thread::scope(|scope| {
            let masks = scope.spawn(|| compute_masks(groups, &wanted));
            let logits = forward();
            // A mask task that panicked leaves its sequences without a mask:
            // they end as at a dead end instead of taking the engine down.
            let masks = masks.join().unwrap_or_default();
            Ok((logits?, masks))
        })
    }
}

/// What a constrained sequence may sample from this step: `Ok(Some(mask))`,
/// `Ok(None)` when unconstrained, `Err(())` at a dead end.
pub(super) fn mask_for<'m>(
    s: &Sequence,
    masks: &'m GuideMasks,
    key: (u64, usize),
) -> std::result::Result<Option<&'m TokenBitmask>, ()> {
    if s.guide.is_none() {
        return Ok(None);
    }
    match masks.get(&key) {
        Some(Some(mask)) => Ok(Some(mask)),
        _ => Err(()),
    }
}

/// Ends a constrained sequence that can go no further (its constraint allows
/// nothing, or nothing the other sampling rules leave, such as EOS before
/// `min_tokens`): finish reason "stop", no new token, the text flushed.
pub(super) fn end_at_dead_end(
    s: &mut Sequence,
    index: usize,
    params: &crate::sampling::SamplingParams,
    tokenizer: Option<&Tokenizer>,
) -> Result<SeqDelta> {
    if let (Some(d), Some(t)) = (s.detokenizer.as_mut(), tokenizer) {
        s.text.append_flushed(&d.finish(t)?);
    }
    s.text.finish();
    s.finish = Some(FinishReason::Stop);
    s.stop_reason = None;
    Ok(SeqDelta {
        index,
        token_ids: Vec::new(),
        text: s.text.take_delta(params),
        logprobs: Vec::new(),
        finish_reason: s.finish,
        stop_reason: None,
    })
}
