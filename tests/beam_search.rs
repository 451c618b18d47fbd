//! Beam search through the engine, checked against independent forward passes.

mod common;

use common::fixture_dir;
use engine::generate::{Llm, Prompt, Request};
use engine::loader::LoadOptions;
use engine::sampling::{log_softmax, EarlyStopping, SamplingParams};

fn load() -> Llm {
    Llm::load(
        &fixture_dir("tiny-llama"),
        &LoadOptions {
            dtype: "float32".into(),
            ..LoadOptions::default()
        },
    )
    .unwrap()
}

fn beam(width: usize, n: usize, max_tokens: usize) -> SamplingParams {
    SamplingParams {
        use_beam_search: true,
        best_of: Some(width),
        n,
        temperature: 0.0,
        ignore_eos: true,
        early_stopping: EarlyStopping::True,
        ..SamplingParams::greedy(max_tokens)
    }
}

const PROMPT: [u32; 8] = [1, 1977, 358, 16, 294, 93, 659, 304];

#[test]
fn one_step_beams_are_the_most_likely_tokens() {
    let mut llm = load();
    let lp = log_softmax(llm.prompt_logits(&PROMPT).unwrap().last().unwrap());
    let mut order: Vec<u32> = (0..lp.len() as u32).collect();
    order.sort_by(|&a, &b| lp[b as usize].total_cmp(&lp[a as usize]));
    let out = llm
        .generate(&[Request {
            prompt: Prompt::Tokens(PROMPT.to_vec()),
            params: beam(3, 3, 1),
        }])
        .unwrap();
    let got: Vec<u32> = out[0].outputs.iter().map(|r| r.token_ids[0]).collect();
    assert_eq!(got, order[..3]);
}

#[test]
fn beams_cumulative_logprobs_match_independent_forwards() {
    let mut llm = load();
    let out = llm
        .generate(&[Request {
            prompt: Prompt::Tokens(PROMPT.to_vec()),
            params: beam(4, 4, 6),
        }])
        .unwrap();
    let results = &out[0].outputs;
    assert_eq!(results.len(), 4);
    let mut seen = std::collections::HashSet::new();
    for r in results {
        assert_eq!(r.token_ids.len(), 6);
        assert!(seen.insert(r.token_ids.clone()), "beams are distinct");
        // Score the beam's tokens with a fresh forward pass over prompt + output.
        let mut all = PROMPT.to_vec();
        all.extend(&r.token_ids);
        let rows = llm.prompt_logits(&all).unwrap();
        let expected: f64 = (0..6)
            .map(|i| log_softmax(&rows[PROMPT.len() - 1 + i])[r.token_ids[i] as usize] as f64)
            .sum();
        assert!(
            (r.cum_logprob - expected).abs() < 1e-3,
            "{} vs {expected}",
            r.cum_logprob
        );
    }
    // Same length, so ranked by cumulative logprob.
    assert!(results
        .windows(2)
        .all(|w| w[0].cum_logprob >= w[1].cum_logprob));
    assert_eq!(llm.num_free_blocks(), llm.num_kv_blocks());
}

#[test]
fn beam_search_rejects_sampling_parameters() {
    let mut llm = load();
    let bad = SamplingParams {
        temperature: 0.7,
        ..beam(2, 1, 4)
    };
    let err = llm
        .generate(&[Request {
            prompt: Prompt::Tokens(PROMPT.to_vec()),
            params: bad,
        }])
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("temperature must be 0 when using beam search"),
        "{err}"
    );
}
