//! `guided_choice` under greedy decoding picks the choice the model rates
//! highest as a whole, not token by token: token by token, a first token that
//! starts an unlikely choice can outrank the first token of a likely one ("L"
//! of "London" over "Paris"). Here: which requests are decided that way, and
//! each choice as the token ids the engine scores and then emits.

use super::Guide;
use crate::error::Result;
use crate::sampling::{SamplingParams, SamplingType};
use crate::tokenizer::Tokenizer;

/// Most choice tokens, summed over a request's choices, that whole-choice
/// scoring runs through the model; a request with more keeps token-by-token
/// greedy decoding.
pub const MAX_SCORED_CHOICE_TOKENS: usize = 4096;

/// Whether the request's `guided_choice` is decided by whole-choice scoring:
/// greedy, one sequence, and nothing (`min_tokens`, `ignore_eos`) that keeps
/// the output from ending right after the choice. Sampling, `n` > 1,
/// `best_of` and beam search keep token-by-token semantics.
pub fn scores_whole_choices(params: &SamplingParams) -> bool {
    params.sampling_type() == SamplingType::Greedy
        && params.n == 1
        && params.best_of() == 1
        && params.min_tokens == 0
        && !params.ignore_eos
        && params
            .guided_decoding
            .as_ref()
            .is_some_and(|g| g.choice.is_some())
}

/// Each choice as token ids: tokenized on its own (no special tokens), as it
/// reads after the prompt, and checked by running a copy of the request's
/// `guide` through it to a complete match, so that the tokens emitted are ones
/// the constraint allows. Identical tokenizations are kept once.
///
/// `Ok(None)` where whole-choice scoring does not apply and the request keeps
/// token-by-token decoding: a choice whose tokenization the constraint does not
/// accept, more than [`MAX_SCORED_CHOICE_TOKENS`] tokens in all, or a choice that
/// would not fit in `room` positions after the prompt (with its end token).
pub fn tokenize_choices(
    tokenizer: &Tokenizer,
    choices: &[String],
    guide: &Guide,
    room: usize,
) -> Result<Option<Vec<Vec<u32>>>> {
    let mut out: Vec<Vec<u32>> = Vec::new();
    let mut total = 0usize;
    // The choices' text is bounded already (MAX_CONSTRAINT_BYTES), so is encoding it.
    for choice in choices {
        let tokens = tokenizer.encode(choice, false)?;
        total += tokens.len();
        if total > MAX_SCORED_CHOICE_TOKENS || tokens.len() >= room {
            return Ok(None);
        }
        if !accepted_whole(guide, &tokens) {
            return Ok(None);
        }
        if !out.contains(&tokens) {
            out.push(tokens);
        }
    }
    Ok(Some(out))
}

/// The constraint takes every token in turn and then matches completely.
fn accepted_whole(guide: &Guide, tokens: &[u32]) -> bool {
    let mut g = guide.fork();
    tokens.iter().all(|&t| g.advance(t)) && g.is_accepting()
}

/// The best choice's index by score: the highest, the first one on ties.
pub fn best_choice(scores: &[f64]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, &s) in scores.iter().enumerate() {
        if best.is_none_or(|b| s > scores[b]) {
            best = Some(i);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::GuidedDecodingParams;

    fn choice_params(temperature: f64) -> SamplingParams {
        SamplingParams {
            temperature,
            guided_decoding: Some(GuidedDecodingParams {
                choice: Some(vec!["a".into()]),
                ..Default::default()
            }),
            ..SamplingParams::default()
        }
    }

    #[test]
    fn only_greedy_single_sequence_choices_are_scored_whole() {
        assert!(scores_whole_choices(&choice_params(0.0)));
        assert!(!scores_whole_choices(&choice_params(0.7)));
        let mut p = choice_params(0.0);
        p.n = 2;
        assert!(!scores_whole_choices(&p));
        let mut p = choice_params(0.0);
        p.use_beam_search = true;
        assert!(!scores_whole_choices(&p));
        let mut p = choice_params(0.0);
        p.min_tokens = 3;
        assert!(!scores_whole_choices(&p));
        let mut p = choice_params(0.0);
        p.guided_decoding = Some(GuidedDecodingParams {
            regex: Some("a|b".into()),
            ..Default::default()
        });
        assert!(!scores_whole_choices(&p));
    }

    #[test]
    fn best_is_the_highest_and_the_first_on_ties() {
        assert_eq!(best_choice(&[-3.0, -1.0, -1.0, -2.0]), Some(1));
        assert_eq!(best_choice(&[f64::NEG_INFINITY, -9.0]), Some(1));
        assert_eq!(best_choice(&[]), None);
    }
}
