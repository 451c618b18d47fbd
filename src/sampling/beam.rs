//! Beam search as vLLM v0.4.3 runs it, as pure functions over one request's
//! beams; the scheduler owns the sequences and their KV blocks.
//!
//! One step:
//! 1. [`beam_candidates`]: over all live beams, the `2 * beam_width` best
//!    (beam, token) pairs by cumulative logprob (the processed logprob of the token
//!    plus the beam's cumulative logprob, in f32 as vLLM's `topk`). At the prompt
//!    step there is one beam with cumulative 0.
//! 2. The caller appends each candidate's token to a copy of its parent, runs the
//!    detokenizer and [`super::stop::StopChecker`] on it (EOS unless `ignore_eos`,
//!    stop tokens and strings, `max_tokens`, the model length), and reports which
//!    candidates finished.
//! 3. [`select_beams`]: vLLM's `_process_sequence_group_outputs`. The finished
//!    candidates compete with the already finished beams for `beam_width` places by
//!    [`ScoredSeq::score`]; the running ones are ranked by the same score and the
//!    best `beam_width` continue, unless the early-stopping rule ends the search.
//!    The selection says which candidates continue (so which parent each new beam
//!    forks from, and with which token), which finished ones are kept, and which
//!    earlier finished ones fall out.
//!
//! The score is `cumulative_logprob / seq_len ^ length_penalty`, where `seq_len`
//! is prompt + output tokens, minus one when the last token is EOS (as HF does)
//! — except in the final choice of the `n` outputs ([`top_n_outputs`]), where
//! vLLM scores without that EOS correction.
//!
//! Ties: vLLM orders equal values by whatever `torch.topk` returns; here lower
//! (beam, token) indices come first, and Python's stable sorts are reproduced, so
//! ties follow the order in which the caller lists its beams.

use std::cmp::Ordering;

use super::params::{EarlyStopping, SamplingParams};

/// A live beam at the start of a step.
#[derive(Debug, Clone, Copy)]
pub struct BeamParent<'a> {
    pub cumulative_logprob: f64,
    /// Its processed log_softmax row for this step.
    pub logprobs: &'a [f32],
}

/// A (beam, token) pair proposed by [`beam_candidates`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BeamCandidate {
    /// Index into the `parents` given to [`beam_candidates`].
    pub parent: usize,
    pub token: u32,
    /// The token's logprob in the parent's row (what vLLM reports for it).
    pub logprob: f32,
    /// The parent's cumulative logprob plus `logprob`.
    pub cumulative_logprob: f64,
}

/// The `2 * beam_width` best continuations over all `parents`, best first (fewer
/// if there are not that many pairs). O(beams · vocab) plus a sort of
/// beams · 2 · beam_width pairs.
pub fn beam_candidates(parents: &[BeamParent], beam_width: usize) -> Vec<BeamCandidate> {
    let want = 2 * beam_width;
    if want == 0 {
        return Vec::new();
    }
    // (total in f32 as vLLM's topk sees it, parent, token)
    let mut pool: Vec<(f32, usize, u32)> = Vec::new();
    for (p, parent) in parents.iter().enumerate() {
        let cum = parent.cumulative_logprob as f32;
        let row = parent.logprobs;
        let total = |i: u32| row[i as usize] + cum;
        let better = |a: &u32, b: &u32| total(*b).total_cmp(&total(*a)).then(a.cmp(b));
        let mut ids: Vec<u32> = (0..row.len() as u32).collect();
        if want < ids.len() {
            ids.select_nth_unstable_by(want - 1, better);
            ids.truncate(want);
        }
        pool.extend(ids.into_iter().map(|i| (total(i), p, i)));
    }
    pool.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
    pool.truncate(want);
    pool.into_iter()
        .map(|(_, p, token)| {
            let logprob = parents[p].logprobs[token as usize];
            BeamCandidate {
                parent: p,
                token,
                logprob,
                cumulative_logprob: parents[p].cumulative_logprob + logprob as f64,
            }
        })
        .collect()
}

/// What a beam's score depends on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoredSeq {
    pub cumulative_logprob: f64,
    /// Prompt + output tokens.
    pub seq_len: usize,
    pub last_token: u32,
}

/// vLLM's `get_beam_search_score` with an explicit length.
pub fn beam_search_score(cumulative_logprob: f64, seq_len: usize, length_penalty: f64) -> f64 {
    cumulative_logprob / (seq_len as f64).powf(length_penalty)
}

impl ScoredSeq {
    /// The score vLLM ranks beams by during the search: EOS does not count
    /// towards the length.
    pub fn score(&self, length_penalty: f64, eos_token_ids: &[u32]) -> f64 {
        let eos = eos_token_ids.contains(&self.last_token);
        let len = self.seq_len - usize::from(eos && self.seq_len > 0);
        beam_search_score(self.cumulative_logprob, len, length_penalty)
    }
}

/// A candidate after the caller appended its token and checked the stop rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckedCandidate {
    pub parent: usize,
    pub seq: ScoredSeq,
    pub finished: bool,
}

/// The request-wide facts the selection needs.
#[derive(Debug, Clone, Copy)]
pub struct BeamContext<'a> {
    pub params: &'a SamplingParams,
    pub eos_token_ids: &'a [u32],
    pub prompt_len: usize,
    pub max_model_len: usize,
}

/// The outcome of one step of [`select_beams`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BeamSelection {
    /// Newly finished candidates that join the finished set (indices into
    /// `candidates`).
    pub finished: Vec<usize>,
    /// Earlier finished beams pushed out of the best `beam_width` (indices into
    /// `existing_finished`).
    pub dropped_finished: Vec<usize>,
    /// Candidates that continue as the next step's beams, best first (indices into
    /// `candidates`). Each forks from its `parent`; a parent none of them names is
    /// freed.
    pub running: Vec<usize>,
    /// No beam continues: the request is done once `finished` is recorded.
    pub done: bool,
}

fn by_score_desc(a: f64, b: f64) -> Ordering {
    b.total_cmp(&a)
}

/// vLLM's `_check_beam_search_early_stopping`: can the search stop, given its best
/// running beam and the worst of the `beam_width` best finished ones?
pub fn can_stop_early(
    ctx: &BeamContext,
    best_running: &ScoredSeq,
    worst_finished: &ScoredSeq,
) -> bool {
    let lp = ctx.params.length_penalty;
    let worst = worst_finished.score(lp, ctx.eos_token_ids);
    let best_possible = match ctx.params.early_stopping {
        EarlyStopping::True => return true,
        EarlyStopping::False => best_running.score(lp, ctx.eos_token_ids),
        EarlyStopping::Never if lp > 0.0 => {
            // Longer is better: assume the best beam reaches the longest length
            // vLLM considers possible, max(prompt + max_tokens, max_model_len).
            // (vLLM fails on max_tokens = None here; the model length is used.)
            let by_tokens = ctx
                .params
                .max_tokens
                .map_or(0, |m| ctx.prompt_len.saturating_add(m));
            let longest = by_tokens.max(ctx.max_model_len);
            beam_search_score(best_running.cumulative_logprob, longest, lp)
        }
        EarlyStopping::Never => best_running.score(lp, ctx.eos_token_ids),
    };
    worst >= best_possible
}

/// vLLM's beam bookkeeping for one step. `candidates` are this step's checked
/// candidates (in [`beam_candidates`] order), `existing_finished` the finished
/// beams kept so far.
pub fn select_beams(
    existing_finished: &[ScoredSeq],
    candidates: &[CheckedCandidate],
    ctx: &BeamContext,
) -> BeamSelection {
    let beam_width = ctx.params.best_of();
    let lp = ctx.params.length_penalty;
    let score = |s: &ScoredSeq| s.score(lp, ctx.eos_token_ids);
    // vLLM walks parents in order and each parent's samples in topk order.
    let mut children: Vec<usize> = (0..candidates.len()).collect();
    children.sort_by_key(|&c| candidates[c].parent);

    // Finished: the earlier ones first, then the new ones; stable sort by score.
    #[derive(Clone, Copy)]
    enum Finished {
        Existing(usize),
        New(usize),
    }
    let seq_of = |f: &Finished| match *f {
        Finished::Existing(i) => existing_finished[i],
        Finished::New(c) => candidates[c].seq,
    };
    let mut all_finished: Vec<Finished> = (0..existing_finished.len())
        .map(Finished::Existing)
        .chain(
            children
                .iter()
                .filter(|&&c| candidates[c].finished)
                .map(|&c| Finished::New(c)),
        )
        .collect();
    all_finished.sort_by(|a, b| by_score_desc(score(&seq_of(a)), score(&seq_of(b))));

    let mut selection = BeamSelection::default();
    for (rank, f) in all_finished.iter().enumerate() {
        match (*f, rank < beam_width) {
            (Finished::New(c), true) => selection.finished.push(c),
            (Finished::Existing(i), false) => selection.dropped_finished.push(i),
            _ => {}
        }
    }

    let mut running: Vec<usize> = children
        .into_iter()
        .filter(|&c| !candidates[c].finished)
        .collect();
    running.sort_by(|&a, &b| by_score_desc(score(&candidates[a].seq), score(&candidates[b].seq)));

    let stop = if running.is_empty() {
        true
    } else if all_finished.len() < beam_width {
        false
    } else {
        let best_running = candidates[running[0]].seq;
        let worst_finished = seq_of(&all_finished[beam_width - 1]);
        can_stop_early(ctx, &best_running, &worst_finished)
    };
    if stop {
        selection.done = true;
    } else {
        running.truncate(beam_width);
        selection.running = running;
    }
    selection
}

/// Which of a finished request's sequences are returned, best first: the top `n`
/// by beam score for beam search (vLLM's `RequestOutput.from_seq_group`, which
/// counts EOS in the length there), by cumulative logprob otherwise
/// (`best_of > n`).
pub fn top_n_outputs(seqs: &[ScoredSeq], params: &SamplingParams) -> Vec<usize> {
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    if seqs.len() > 1 {
        let key = |s: &ScoredSeq| {
            if params.use_beam_search {
                beam_search_score(s.cumulative_logprob, s.seq_len, params.length_penalty)
            } else {
                s.cumulative_logprob
            }
        };
        order.sort_by(|&a, &b| by_score_desc(key(&seqs[a]), key(&seqs[b])));
        order.truncate(params.n);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_rank_cumulative_totals_across_beams() {
        let a = [-0.1f32, -2.0, -3.0];
        let b = [-1.0f32, -0.2, -4.0];
        let parents = [
            BeamParent {
                cumulative_logprob: -1.0,
                logprobs: &a,
            },
            BeamParent {
                cumulative_logprob: -0.5,
                logprobs: &b,
            },
        ];
        let c = beam_candidates(&parents, 2);
        let got: Vec<(usize, u32)> = c.iter().map(|c| (c.parent, c.token)).collect();
        // Totals: a: -1.1 -3 -4; b: -1.5 -0.7 -4.5.
        assert_eq!(got, vec![(1, 1), (0, 0), (1, 0), (0, 1)]);
        assert_eq!(c[0].logprob, -0.2);
        assert!((c[0].cumulative_logprob - (-0.5 + (-0.2f32) as f64)).abs() < 1e-12);
    }

    #[test]
    fn score_excludes_eos_from_the_length() {
        let s = ScoredSeq {
            cumulative_logprob: -6.0,
            seq_len: 4,
            last_token: 9,
        };
        assert_eq!(s.score(1.0, &[9]), -2.0);
        assert_eq!(s.score(1.0, &[]), -1.5);
        assert_eq!(s.score(0.0, &[9]), -6.0);
        assert_eq!(beam_search_score(-8.0, 4, 2.0), -0.5);
    }
}
