//! Logprobs as vLLM v0.4.3 reports them: from the log_softmax of the PROCESSED
//! logits (after penalties, temperature, top-k/top-p, min-p), with the chosen
//! token's rank (1 + the number of tokens strictly more likely) and the top-N.
//!
//! vLLM keeps one dict per position: the chosen token first, then the top-N
//! updated into it, so a chosen token that is also in the top-N keeps its first
//! place but takes its top-N rank. [`TokenLogprobs::entries`] reproduces that
//! order. The OpenAI layer turns -inf (a masked token) into -9999.0, because JSON
//! has no infinity; `entries` applies that clamp, while [`TokenLogprobs::chosen`]
//! keeps the raw value that cumulative logprobs and beam scores add up.

use super::log_softmax;
use super::params::SamplingParams;
use super::processors::process_prompt_logits;
use crate::backend::cpu::lanes::count_greater;

/// What the OpenAI API reports instead of -inf.
pub const API_MIN_LOGPROB: f32 = -9999.0;

/// `max(logprob, -9999.0)`, as vLLM's serving code writes it (NaN stays NaN).
pub fn clamp_logprob(logprob: f32) -> f32 {
    if logprob < API_MIN_LOGPROB {
        API_MIN_LOGPROB
    } else {
        logprob
    }
}

/// One token's logprob and its 1-based rank in the row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Logprob {
    pub token_id: u32,
    pub logprob: f32,
    pub rank: usize,
}

/// 1 + the number of entries strictly greater than `row[token]` (vLLM's `_get_ranks`).
pub fn rank_of(row: &[f32], token: u32) -> usize {
    let Some(&value) = row.get(token as usize) else {
        return row.len() + 1;
    };
    1 + count_greater(row, value)
}

/// The `n` largest entries, most likely first, ranks 1..=n; equal values by
/// ascending id. O(vocab + n log n): a selection, then a sort of the n chosen.
pub fn top_logprobs(row: &[f32], n: usize) -> Vec<Logprob> {
    let n = n.min(row.len());
    if n == 0 {
        return Vec::new();
    }
    let more_likely =
        |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
    let mut ids: Vec<u32> = (0..row.len() as u32).collect();
    if n < ids.len() {
        ids.select_nth_unstable_by(n - 1, more_likely);
        ids.truncate(n);
    }
    ids.sort_unstable_by(more_likely);
    ids.into_iter()
        .enumerate()
        .map(|(i, id)| Logprob {
            token_id: id,
            logprob: row[id as usize],
            rank: i + 1,
        })
        .collect()
}

/// The logprobs vLLM records at one position: the chosen (sampled, or actual
/// prompt) token and the top-N of the row.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// Raw logprob (may be -inf) and rank of the chosen token.
    pub chosen: Logprob,
    /// The top-N, raw, ranks 1..=N.
    pub top: Vec<Logprob>,
    /// The text of each of [`TokenLogprobs::entries`]' tokens as it reads in its
    /// sequence (vLLM's `decoded_token`), filled by the engine when it detokenizes;
    /// empty otherwise.
    pub decoded: Vec<String>,
}

impl TokenLogprobs {
    /// `row` is a processed log_softmax row; `n` the requested number of top
    /// logprobs (`None` or 0: the chosen token only).
    pub fn new(row: &[f32], chosen: u32, n: Option<usize>) -> TokenLogprobs {
        TokenLogprobs {
            chosen: Logprob {
                token_id: chosen,
                logprob: row
                    .get(chosen as usize)
                    .copied()
                    .unwrap_or(f32::NEG_INFINITY),
                rank: rank_of(row, chosen),
            },
            top: top_logprobs(row, n.unwrap_or(0)),
            decoded: Vec::new(),
        }
    }

    /// vLLM's dict for this position, in its order, with -inf clamped to -9999:
    /// the chosen token first (taking its top-N rank if it is in the top-N), then
    /// the rest of the top-N.
    pub fn entries(&self) -> Vec<Logprob> {
        let mut chosen = self.chosen;
        if let Some(t) = self.top.iter().find(|t| t.token_id == chosen.token_id) {
            chosen = *t;
        }
        std::iter::once(chosen)
            .chain(
                self.top
                    .iter()
                    .filter(|t| t.token_id != chosen.token_id)
                    .copied(),
            )
            .map(|l| Logprob {
                logprob: clamp_logprob(l.logprob),
                ..l
            })
            .collect()
    }
}

/// Prompt logprobs: `logits_rows[i]` are the model's logits at prompt position i
/// (row-major, `vocab` wide), which predict `prompt[i + 1]`. Returns one entry per
/// prompt token, `None` for the first (nothing precedes it), as vLLM does. Rows
/// go through [`process_prompt_logits`] (temperature, top-k/top-p, min-p — so
/// e.g. top_k = 1 turns most prompt logprobs into -9999). Rows past the prompt
/// are ignored; a missing row leaves its position `None`.
pub fn prompt_logprobs(
    logits_rows: &[f32],
    vocab: usize,
    prompt: &[u32],
    params: &SamplingParams,
) -> Vec<Option<TokenLogprobs>> {
    let mut out = Vec::with_capacity(prompt.len());
    if prompt.is_empty() {
        return out;
    }
    out.push(None);
    let mut rows = logits_rows.chunks_exact(vocab.max(1));
    for &next in &prompt[1..] {
        out.push(rows.next().map(|row| {
            let mut row = row.to_vec();
            process_prompt_logits(&mut row, params);
            TokenLogprobs::new(&log_softmax(&row), next, params.prompt_logprobs)
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_count_strictly_larger_entries() {
        let row = [-1.0f32, -0.5, -0.5, -3.0, f32::NEG_INFINITY];
        assert_eq!(rank_of(&row, 1), 1);
        assert_eq!(rank_of(&row, 2), 1);
        assert_eq!(rank_of(&row, 0), 3);
        assert_eq!(rank_of(&row, 4), 5);
        assert_eq!(rank_of(&row, 99), 6);
    }

    #[test]
    fn top_n_is_ordered_with_ties_by_id() {
        let row = [-1.0f32, -0.5, -0.5, -3.0, -0.1];
        let top = top_logprobs(&row, 3);
        let ids: Vec<u32> = top.iter().map(|l| l.token_id).collect();
        assert_eq!(ids, vec![4, 1, 2]);
        assert_eq!(
            top.iter().map(|l| l.rank).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(top_logprobs(&row, 99).len(), 5);
        assert!(top_logprobs(&row, 0).is_empty());
    }

    #[test]
    fn entries_put_the_chosen_token_first_and_clamp() {
        let row = [-0.1f32, f32::NEG_INFINITY, -2.5];
        let chosen_in_top = TokenLogprobs::new(&row, 2, Some(2));
        let e = chosen_in_top.entries();
        assert_eq!(
            e.iter().map(|l| (l.token_id, l.rank)).collect::<Vec<_>>(),
            vec![(2, 2), (0, 1)]
        );
        let masked = TokenLogprobs::new(&row, 1, Some(1));
        assert_eq!(masked.chosen.logprob, f32::NEG_INFINITY);
        assert_eq!(masked.chosen.rank, 3);
        let e = masked.entries();
        assert_eq!(e[0].logprob, API_MIN_LOGPROB);
        assert_eq!((e[1].token_id, e[1].logprob), (0, -0.1));
    }
}
