//! Generation over the paged cache: batching, preemption, seeds and stop rules.

mod common;

use common::*;
use engine::generate::{Completion, FinishReason, Llm, Prompt, Request};
use engine::loader::LoadOptions;
use engine::sampling::SamplingParams;

fn load(blocks: Option<usize>) -> Llm {
    let options = LoadOptions {
        dtype: "float32".into(),
        num_kv_blocks: blocks,
        ..LoadOptions::default()
    };
    Llm::load(&fixture_dir("tiny-llama"), &options).unwrap()
}

/// Prompts of different lengths taken from the reference fixture.
fn prompts() -> Vec<Vec<u32>> {
    let r = reference("tiny-llama");
    r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| u32s(&c["prompt_token_ids"]))
        .filter(|p| p.len() < 300)
        .collect()
}

fn requests(params: &SamplingParams) -> Vec<Request> {
    prompts()
        .into_iter()
        .map(|p| Request {
            prompt: Prompt::Tokens(p),
            params: params.clone(),
        })
        .collect()
}

fn ids(outs: &[Completion]) -> Vec<Vec<u32>> {
    outs.iter().map(|o| o.best().token_ids.clone()).collect()
}

#[test]
fn batched_equals_one_at_a_time() {
    let mut llm = load(None);
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(12)
    };
    let batched = ids(&llm.generate(&requests(&params)).unwrap());
    let solo: Vec<Vec<u32>> = requests(&params)
        .into_iter()
        .map(|r| {
            llm.generate(&[r])
                .unwrap()
                .remove(0)
                .best()
                .token_ids
                .clone()
        })
        .collect();
    assert_eq!(batched, solo);
}

#[test]
fn preemption_when_blocks_run_out_keeps_outputs_and_frees_everything() {
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(24)
    };
    let roomy = ids(&load(None).generate(&requests(&params)).unwrap());
    // 24 blocks of 16 tokens: every prompt fits alone, not all of them at once.
    let mut tight = load(Some(24));
    let needed: usize = prompts().iter().map(|p| (p.len() + 24).div_ceil(16)).sum();
    assert!(
        needed > 24,
        "the test must overcommit the cache ({needed} blocks)"
    );
    assert_eq!(ids(&tight.generate(&requests(&params)).unwrap()), roomy);
    assert!(
        tight.stats().num_preemptions > 0,
        "the preemption counter moves"
    );
    assert_eq!(tight.num_free_blocks(), tight.num_kv_blocks());
}

#[test]
fn a_prompt_larger_than_the_cache_is_refused() {
    let mut llm = load(Some(2));
    let err = llm
        .generate(&[Request {
            prompt: Prompt::Tokens(vec![1; 40]),
            params: SamplingParams::greedy(4),
        }])
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("needs 3 blocks but the cache has 2"),
        "{err}"
    );
    assert_eq!(llm.num_free_blocks(), 2);
}

#[test]
fn seeded_sampling_is_reproducible_and_batch_independent() {
    let mut llm = load(None);
    let seeded = |seed| SamplingParams {
        temperature: 1.0,
        seed: Some(seed),
        ignore_eos: true,
        ..SamplingParams::greedy(16)
    };
    let batch = ids(&llm.generate(&requests(&seeded(42))).unwrap());
    let again = ids(&llm.generate(&requests(&seeded(42))).unwrap());
    assert_eq!(batch, again);
    let alone = llm
        .generate(&requests(&seeded(42))[..1])
        .unwrap()
        .remove(0)
        .best()
        .token_ids
        .clone();
    assert_eq!(batch[0], alone);
    assert_ne!(batch, ids(&llm.generate(&requests(&seeded(43))).unwrap()));
    let greedy = ids(&llm
        .generate(&requests(&SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(16)
        }))
        .unwrap());
    assert_ne!(
        batch, greedy,
        "temperature 1 on a random model does not follow the argmax"
    );
}

#[test]
fn stop_tokens_eos_and_length() {
    let mut llm = load(None);
    let r = reference("tiny-llama");
    let case = &r["results"][0];
    let prompt = u32s(&case["prompt_token_ids"]);
    let greedy = u32s(&case["greedy_token_ids"]);
    let run = |llm: &mut Llm, params: SamplingParams| {
        llm.generate(&[Request {
            prompt: Prompt::Tokens(prompt.clone()),
            params,
        }])
        .unwrap()
        .remove(0)
        .outputs
        .remove(0)
    };

    // A stop token ends the sequence on it (it is the last token generated).
    let stop_at = greedy[5];
    let first = greedy.iter().position(|&t| t == stop_at).unwrap();
    let out = run(
        &mut llm,
        SamplingParams {
            stop_token_ids: vec![stop_at],
            ..SamplingParams::greedy(32)
        },
    );
    assert_eq!(out.token_ids, greedy[..=first]);
    assert_eq!(out.finish_reason, FinishReason::Stop);

    // max_tokens ends it with "length".
    let out = run(&mut llm, SamplingParams::greedy(3));
    assert_eq!(
        (out.token_ids.as_slice(), out.finish_reason),
        (&greedy[..3], FinishReason::Length)
    );

    // EOS from generation_config stops unless ignore_eos; the model's EOS ids are [2, 4].
    assert_eq!(llm.stop_token_ids(), vec![2, 4]);
    let first_eos = case["first_eos_step"].as_u64();
    let out = run(&mut llm, SamplingParams::greedy(32));
    match first_eos {
        Some(step) => assert_eq!(out.token_ids.len() as u64, step + 1),
        None => assert_eq!(out.token_ids, greedy),
    }
}

#[test]
fn the_model_length_limit_ends_generation() {
    let options = LoadOptions {
        dtype: "float32".into(),
        max_model_len: Some(20),
        ..LoadOptions::default()
    };
    let mut llm = Llm::load(&fixture_dir("tiny-llama"), &options).unwrap();
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(100)
    };
    let out = llm
        .generate(&[Request {
            prompt: Prompt::Tokens(vec![1; 15]),
            params: params.clone(),
        }])
        .unwrap();
    // As vLLM: a sequence stops once its length exceeds max_model_len; the last
    // token is sampled from position 19 and never itself computed.
    assert_eq!(out[0].best().token_ids.len(), 6);
    assert_eq!(out[0].best().finish_reason, FinishReason::Length);
    let err = llm
        .generate(&[Request {
            prompt: Prompt::Tokens(vec![1; 21]),
            params,
        }])
        .unwrap_err();
    assert!(err.to_string().contains("maximum model length 20"), "{err}");
}

#[test]
fn bad_requests_are_errors() {
    let mut llm = load(None);
    let bad_token = Request {
        prompt: Prompt::Tokens(vec![1, 3000]),
        params: SamplingParams::greedy(1),
    };
    assert!(llm
        .generate(&[bad_token])
        .unwrap_err()
        .to_string()
        .contains("out of range"));
    let empty = Request {
        prompt: Prompt::Tokens(vec![]),
        params: SamplingParams::greedy(1),
    };
    assert!(llm
        .generate(&[empty])
        .unwrap_err()
        .to_string()
        .contains("empty"));
    let bad_params = Request {
        prompt: Prompt::Tokens(vec![1]),
        params: SamplingParams {
            top_p: 0.0,
            ..Default::default()
        },
    };
    assert!(llm
        .generate(&[bad_params])
        .unwrap_err()
        .to_string()
        .contains("top_p"));
    assert_eq!(llm.num_free_blocks(), llm.num_kv_blocks());
}
