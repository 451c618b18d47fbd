//! The engine against Hugging Face transformers (float32, eager attention) on the
//! reference fixtures: final-position logits, prompt logprobs and greedy
//! continuations, in float32 and in the half-precision dtypes.

mod common;

use common::*;
use engine::generate::{Llm, Prompt, Request};
use engine::loader::LoadOptions;
use engine::sampling::SamplingParams;

fn load(name: &str, dtype: &str) -> Llm {
    let options = LoadOptions {
        dtype: dtype.into(),
        ..LoadOptions::default()
    };
    Llm::load(&fixture_dir(name), &options).expect("fixture loads")
}

/// Worst relative L2 error of the final logits over every reference prompt.
fn worst_final_logits_error(llm: &mut Llm, name: &str) -> f64 {
    let reference = reference(name);
    let mut worst = 0f64;
    for case in reference["results"].as_array().unwrap() {
        let prompt = u32s(&case["prompt_token_ids"]);
        let logits = llm.prompt_logits(&prompt).unwrap();
        let err = rel_l2(logits.last().unwrap(), &f32s(&case["final_logits"]));
        worst = worst.max(err);
    }
    worst
}

#[test]
fn float32_final_logits_match_transformers() {
    for name in FIXTURES {
        let mut llm = load(name, "float32");
        let err = worst_final_logits_error(&mut llm, name);
        println!("{name} float32: worst relative L2 {err:.2e}");
        assert!(
            err < 1e-4,
            "{name}: final logits differ from transformers by {err:.2e} (relative L2)"
        );
    }
}

/// Half-precision weights (rounded from the stored ones where those are wider),
/// f32 compute: the tolerance is that of rounding every weight to 8 (bf16) or
/// 11 (f16) significant bits.
#[test]
fn half_precision_final_logits_within_tolerance() {
    for (dtype, tolerance) in [("bfloat16", 1e-2), ("float16", 2e-3)] {
        for name in FIXTURES {
            let mut llm = load(name, dtype);
            let err = worst_final_logits_error(&mut llm, name);
            println!("{name} {dtype}: worst relative L2 {err:.2e}");
            assert!(
                err < tolerance,
                "{name} {dtype}: relative L2 {err:.2e} over {tolerance:.0e}"
            );
        }
    }
}

/// Float32 weights and compute over a 16-bit KV cache (`--kv-cache-dtype`): the
/// cache rounds each K and V value once, so the tolerance is that of the
/// half-precision weights above; the float32 cache stays exact.
#[test]
fn a_16_bit_kv_cache_stays_within_tolerance() {
    for (kv, tolerance) in [("bfloat16", 1e-2), ("float16", 2e-3), ("float32", 1e-4)] {
        for name in FIXTURES {
            let options = LoadOptions {
                dtype: "float32".into(),
                kv_cache_dtype: kv.into(),
                ..LoadOptions::default()
            };
            let mut llm = Llm::load(&fixture_dir(name), &options).expect("fixture loads");
            let err = worst_final_logits_error(&mut llm, name);
            println!("{name} float32 weights, {kv} KV: worst relative L2 {err:.2e}");
            assert!(
                err < tolerance,
                "{name} {kv} KV: relative L2 {err:.2e} over {tolerance:.0e}"
            );
        }
    }
}

#[test]
fn prompt_logprobs_match_transformers() {
    for name in FIXTURES {
        let mut llm = load(name, "float32");
        let reference = reference(name);
        let requests: Vec<Request> = reference["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|case| Request {
                prompt: Prompt::Tokens(u32s(&case["prompt_token_ids"])),
                params: SamplingParams {
                    prompt_logprobs: Some(0),
                    ..SamplingParams::greedy(1)
                },
            })
            .collect();
        let outputs = llm.generate(&requests).unwrap();
        for (case, out) in reference["results"].as_array().unwrap().iter().zip(outputs) {
            let got = out
                .prompt_logprobs
                .clone()
                .expect("prompt logprobs were asked for");
            let want = case["prompt_logprobs"].as_array().unwrap();
            assert_eq!(got.len(), want.len(), "{name}/{}", case["name"]);
            assert!(got[0].is_none() && want[0].is_null());
            for (i, (g, w)) in got.iter().zip(want).enumerate().skip(1) {
                let (g, w) = (
                    g.as_ref().unwrap().chosen.logprob,
                    w.as_f64().unwrap() as f32,
                );
                assert!(
                    (g - w).abs() < 1e-4,
                    "{name}/{} position {i}: {g} vs {w}",
                    case["name"]
                );
            }
        }
    }
}

/// All prompts of a fixture in one batch, 32 greedy steps each (not stopped at
/// EOS, as the reference was made).
#[test]
fn greedy_continuations_match_transformers() {
    for name in FIXTURES {
        let mut llm = load(name, "float32");
        let reference = reference(name);
        let cases = reference["results"].as_array().unwrap();
        let requests: Vec<Request> = cases
            .iter()
            .map(|case| Request {
                prompt: Prompt::Tokens(u32s(&case["prompt_token_ids"])),
                params: SamplingParams {
                    ignore_eos: true,
                    ..SamplingParams::greedy(32)
                },
            })
            .collect();
        let outputs = llm.generate(&requests).unwrap();
        for (case, out) in cases.iter().zip(outputs) {
            assert_eq!(
                out.best().token_ids,
                u32s(&case["greedy_token_ids"]),
                "{name}/{}",
                case["name"]
            );
        }
        assert_eq!(
            llm.num_free_blocks(),
            llm.num_kv_blocks(),
            "{name}: every block is free again"
        );
    }
}
