//! `guided_choice` with greedy decoding emits the choice the model rates
//! highest as a whole (the sum of its tokens' logprobs), then an end token,
//! not the one token-by-token greedy decoding walks into. On the random-weight
//! fixture the test builds two choices where the two differ, computing both
//! from the model's own logits: a "trap" choice that starts with the most
//! likely first token and continues with a very unlikely one, and a single
//! token choice. Sampling keeps token-by-token semantics.

mod common;

use common::fixture_dir;
use engine::engine::{FinishReason, Prompt, SeqResult};
use engine::generate::{Llm, Request};
use engine::loader::LoadOptions;
use engine::sampling::guided::choice::MAX_SCORED_CHOICE_TOKENS;
use engine::sampling::{log_softmax, GuidedDecodingParams, SamplingParams};

const PROMPT: &str = "The capital of France is";

struct Fixture {
    llm: Llm,
    prompt: Vec<u32>,
    /// Each token id's text.
    texts: Vec<String>,
    /// Tokens that end the output (EOS and generation_config's).
    ends: Vec<u32>,
}

/// A choice as the engine scores it.
struct Scored {
    text: String,
    tokens: Vec<u32>,
    /// The logprob of each of `tokens`, then the best end token's.
    logprobs: Vec<f32>,
    /// The sum of its tokens' logprobs (the end token's left out).
    score: f64,
}

impl Fixture {
    fn new() -> Fixture {
        let options = LoadOptions {
            dtype: "float32".into(),
            ..LoadOptions::default()
        };
        let llm = Llm::load(&fixture_dir("tiny-llama"), &options).unwrap();
        let tok = llm.tokenizer().unwrap();
        let prompt = tok.encode(PROMPT, true).unwrap();
        let vocab = llm.model().config.vocab_size;
        let texts = (0..vocab as u32)
            .map(|id| tok.decode(&[id], false, true).unwrap())
            .collect();
        let ends = llm.stop_token_ids();
        Fixture {
            llm,
            prompt,
            texts,
            ends,
        }
    }

    /// log_softmax of the model's logits after the prompt and `output`.
    fn logprobs_after(&mut self, output: &[u32]) -> Vec<f32> {
        let tokens: Vec<u32> = self.prompt.iter().chain(output).copied().collect();
        let rows = self.llm.prompt_logits(&tokens).unwrap();
        log_softmax(rows.last().unwrap())
    }

    fn encode(&self, text: &str) -> Vec<u32> {
        self.llm.tokenizer().unwrap().encode(text, false).unwrap()
    }

    /// Teacher-forced: every token's logprob after the prompt, then the best
    /// end token's.
    fn score(&mut self, text: &str) -> Scored {
        let tokens = self.encode(text);
        let mut logprobs = Vec::new();
        for i in 0..=tokens.len() {
            let lp = self.logprobs_after(&tokens[..i]);
            let next = match tokens.get(i) {
                Some(&t) => lp[t as usize],
                None => self
                    .ends
                    .iter()
                    .map(|&e| lp[e as usize])
                    .fold(f32::MIN, f32::max),
            };
            logprobs.push(next);
        }
        let score = logprobs[..tokens.len()].iter().map(|&l| f64::from(l)).sum();
        Scored {
            text: text.to_string(),
            tokens,
            logprobs,
            score,
        }
    }

    /// Token-by-token greedy decoding under the choice constraint, as the
    /// constraint allows tokens: any whose text continues some choice, an end
    /// token once the text is a whole choice. Also returns the smallest margin
    /// of a step's winner over the runner-up.
    fn token_by_token(&mut self, choices: &[&str]) -> (String, f32) {
        let (mut text, mut output, mut margin) = (String::new(), Vec::new(), f32::INFINITY);
        loop {
            let lp = self.logprobs_after(&output);
            let mut allowed: Vec<u32> = (0..lp.len() as u32)
                .filter(|&t| {
                    let piece = &self.texts[t as usize];
                    if self.ends.contains(&t) {
                        return choices.contains(&text.as_str());
                    }
                    let longer = format!("{text}{piece}");
                    !piece.is_empty() && choices.iter().any(|c| c.starts_with(&longer))
                })
                .collect();
            allowed.sort_by(|&a, &b| lp[b as usize].total_cmp(&lp[a as usize]));
            if let [first, second, ..] = allowed[..] {
                margin = margin.min(lp[first as usize] - lp[second as usize]);
            }
            let best = allowed[0];
            if self.ends.contains(&best) {
                return (text, margin);
            }
            text.push_str(&self.texts[best as usize]);
            output.push(best);
        }
    }

    /// Single-token words, most likely first token first.
    fn word_tokens(&mut self, space: bool) -> Vec<u32> {
        let root = self.logprobs_after(&[]);
        let mut words: Vec<u32> = (0..self.texts.len() as u32)
            .filter(|&t| {
                let text = &self.texts[t as usize];
                let word = if space {
                    text.strip_prefix(' ')
                } else {
                    Some(text.as_str())
                };
                word.is_some_and(|w| w.len() >= 2 && w.chars().all(|c| c.is_ascii_alphabetic()))
                    && self.encode(text) == [t]
            })
            .collect();
        words.sort_by(|&a, &b| root[b as usize].total_cmp(&root[a as usize]));
        words
    }

    fn generate(&mut self, choices: &[&str], params: SamplingParams) -> SeqResult {
        let params = SamplingParams {
            max_tokens: Some(16),
            logprobs: Some(0),
            guided_decoding: Some(GuidedDecodingParams {
                choice: Some(choices.iter().map(|c| c.to_string()).collect()),
                ..Default::default()
            }),
            ..params
        };
        let request = Request {
            prompt: Prompt::Tokens(self.prompt.clone()),
            params,
        };
        self.llm.generate(&[request]).unwrap()[0].best().clone()
    }
}

/// A trap (the most likely first token, then its least likely continuation)
/// and a plain word, where token-by-token greedy walks into the trap while the
/// plain word scores higher as a whole, with clear margins.
fn diverging_choices(f: &mut Fixture) -> (String, String) {
    let words = f.word_tokens(false);
    let spaced = f.word_tokens(true);
    let first = words[0];
    let after_first = f.logprobs_after(&[first]);
    let mut tails = spaced.clone();
    tails.sort_by(|&a, &b| after_first[a as usize].total_cmp(&after_first[b as usize]));
    let head = f.texts[first as usize].clone();
    for &tail in tails.iter().take(10) {
        let trap = format!("{head}{}", f.texts[tail as usize]);
        if f.encode(&trap) != [first, tail] {
            continue;
        }
        for &plain in words.iter().skip(1).take(20) {
            let plain = f.texts[plain as usize].clone();
            if trap.starts_with(&plain) || plain.starts_with(&head) {
                continue;
            }
            let choices = [trap.as_str(), plain.as_str()];
            let (walked, margin) = f.token_by_token(&choices);
            let (t, p) = (f.score(&trap), f.score(&plain));
            if walked == trap && p.score > t.score + 0.5 && margin > 0.05 {
                eprintln!(
                    "choices: {trap:?} (token by token) and {plain:?} (whole: {} vs {})",
                    p.score, t.score
                );
                return (trap, plain);
            }
        }
    }
    panic!("no pair of choices on the fixture where token-by-token and whole-choice differ");
}

#[test]
fn greedy_choice_is_the_best_whole_choice_with_its_real_logprobs() {
    let mut f = Fixture::new();
    let (trap, plain) = diverging_choices(&mut f);
    let choices = [trap.as_str(), plain.as_str()];
    let scored: Vec<Scored> = choices.iter().map(|c| f.score(c)).collect();
    let best = scored
        .iter()
        .max_by(|a, b| a.score.total_cmp(&b.score))
        .unwrap();
    assert_eq!(best.text, plain, "the test built the plain word to win");
    let (walked, _) = f.token_by_token(&choices);
    assert_ne!(walked, best.text, "the choices must tell the two apart");

    let out = f.generate(&choices, SamplingParams::greedy(16));
    assert_eq!(out.text, best.text);
    assert_eq!(out.finish_reason, FinishReason::Stop);
    assert_eq!(&out.token_ids[..best.tokens.len()], &best.tokens[..]);
    assert_eq!(
        out.token_ids.len(),
        best.tokens.len() + 1,
        "the choice, then its end token"
    );
    assert!(f.ends.contains(out.token_ids.last().unwrap()));
    // The reported logprobs are the model's own for each emitted token: the
    // choice's add up to the score that chose it.
    let reported: Vec<f32> = out.logprobs.iter().map(|l| l.chosen.logprob).collect();
    assert_eq!(reported.len(), best.logprobs.len());
    for (got, want) in reported.iter().zip(&best.logprobs) {
        assert!((got - want).abs() < 1e-4, "logprob {got} vs {want}");
    }
    let end = f64::from(*best.logprobs.last().unwrap());
    assert!((out.cum_logprob - end - best.score).abs() < 1e-3);

    // The order of the choices does not matter.
    let swapped = f.generate(&[plain.as_str(), trap.as_str()], SamplingParams::greedy(16));
    assert_eq!(swapped.text, best.text);
}

#[test]
fn sampling_keeps_token_by_token_semantics() {
    let mut f = Fixture::new();
    let (trap, plain) = diverging_choices(&mut f);
    let choices = [trap.as_str(), plain.as_str()];
    let (walked, _) = f.token_by_token(&choices);
    // Nearly greedy sampling (every margin is > 0.05 nats, so 50 at this
    // temperature) follows the token-by-token walk into the trap.
    let sampled = SamplingParams {
        temperature: 1e-3,
        seed: Some(1),
        ..SamplingParams::default()
    };
    assert_eq!(f.generate(&choices, sampled).text, walked);
    // So does greedy decoding that must not end right after a choice.
    let min_tokens = SamplingParams {
        min_tokens: 1,
        ..SamplingParams::greedy(16)
    };
    assert_eq!(f.generate(&choices, min_tokens).text, walked);
}

#[test]
fn choices_past_the_scoring_bounds_keep_token_by_token() {
    let mut f = Fixture::new();
    let (trap, plain) = diverging_choices(&mut f);
    let room = f.llm.model().config.max_position_embeddings - f.prompt.len();
    // Past the bounds, a request is decoded token by token, not scored: one
    // choice longer than the context leaves room for, or choices that fit it
    // but come to more than MAX_SCORED_CHOICE_TOKENS in all.
    let words = |first: &str, n: usize| format!("{first}{}", " q".repeat(n));
    let per_word = (f.encode(&words("q", 10)).len() - 1) / 10;
    let third = MAX_SCORED_CHOICE_TOKENS / 3 / per_word + 1;
    let cases = [
        vec![words("q", room)],
        vec![words("q", third), words("x", third), words("z", third)],
    ];
    for extra in cases {
        let mut choices = vec![trap.as_str(), plain.as_str()];
        choices.extend(extra.iter().map(String::as_str));
        let lens: Vec<usize> = extra.iter().map(|c| f.encode(c).len()).collect();
        let total: usize = lens.iter().sum();
        let fit = lens.iter().all(|&l| l < room);
        assert!(
            !fit || total > MAX_SCORED_CHOICE_TOKENS,
            "{lens:?}, room {room}"
        );
        let (walked, _) = f.token_by_token(&choices);
        assert_eq!(walked, trap, "the long choices do not change the walk");
        let out = f.generate(&choices, SamplingParams::greedy(16));
        assert_eq!(out.text, walked, "lengths {lens:?}");
    }
}
