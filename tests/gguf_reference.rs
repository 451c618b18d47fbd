//! The real demo model, SmolLM2-135M-Instruct Q4_1 GGUF (scripts/fetch-demo-model.sh
//! puts it in the cache; CI's set-up fetches it), dequantized to f32 by the engine,
//! against transformers loading the same file (`gguf_file=`, dequantized to float32):
//! prompt logprobs and top-5 logprobs within 1e-4, equal greedy continuations, and
//! the GGUF tokenizer giving transformers' token ids. The reference is
//! tests/fixtures/smollm2-gguf/reference.json (generate.py beside it).

mod common;

use std::path::PathBuf;

use common::*;
use engine::generate::{Llm, Prompt, Request};
use engine::loader::LoadOptions;
use engine::sampling::SamplingParams;
use serde_json::Value as Json;

const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn model_path() -> Option<PathBuf> {
    let cache = std::env::var_os("ENGINE_CACHE_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/engine")))?;
    let path = cache.join("demo").join(FILE);
    path.is_file().then_some(path)
}

fn reference() -> Json {
    let path = fixture_dir("smollm2-gguf").join("reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn load() -> Option<Llm> {
    let Some(path) = model_path() else {
        println!("skipped: {FILE} is not in the cache; run scripts/fetch-demo-model.sh");
        return None;
    };
    let options = LoadOptions {
        dtype: "float32".into(),
        max_model_len: Some(512),
        ..LoadOptions::default()
    };
    Some(Llm::load(&path, &options).expect("the demo model loads"))
}

#[test]
fn logprobs_and_greedy_tokens_match_transformers() {
    let Some(mut llm) = load() else { return };
    let reference = reference();
    let cases = reference["results"].as_array().unwrap();
    let mut worst = 0f32;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let prompt = u32s(&case["prompt_token_ids"]);
        let logits = llm.prompt_logits(&prompt).unwrap();
        // Prompt logprobs: log P(token i | before it).
        for (i, want) in case["prompt_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .skip(1)
        {
            let got = log_softmax(&logits[i - 1])[prompt[i] as usize];
            let want = want.as_f64().unwrap() as f32;
            worst = worst.max((got - want).abs());
            assert!(
                (got - want).abs() < 1e-4,
                "{name} position {i}: {got} vs {want}"
            );
        }
        for top in case["top_logprobs"].as_array().unwrap() {
            let p = top["position"].as_u64().unwrap() as usize;
            let lp = log_softmax(&logits[p]);
            for (id, want) in u32s(&top["ids"]).iter().zip(f32s(&top["logprobs"])) {
                let got = lp[*id as usize];
                worst = worst.max((got - want).abs());
                assert!(
                    (got - want).abs() < 1e-4,
                    "{name} position {p} token {id}: {got} vs {want}"
                );
            }
        }
    }
    println!("worst logprob difference: {worst:.2e}");

    let requests: Vec<Request> = cases
        .iter()
        .map(|case| Request {
            prompt: Prompt::Tokens(u32s(&case["prompt_token_ids"])),
            params: SamplingParams {
                ignore_eos: true,
                ..SamplingParams::greedy(16)
            },
        })
        .collect();
    let outputs = llm.generate(&requests).unwrap();
    for (case, out) in cases.iter().zip(outputs) {
        assert_eq!(
            out.best().token_ids,
            u32s(&case["greedy_token_ids"]),
            "{}: greedy continuation",
            case["name"]
        );
    }
}

#[test]
fn the_gguf_tokenizer_gives_transformers_ids() {
    let Some(path) = model_path() else {
        println!("skipped: {FILE} is not in the cache; run scripts/fetch-demo-model.sh");
        return;
    };
    let file = engine::gguf::GgufFile::open(&path).unwrap();
    let tokenizer = engine::tokenizer::Tokenizer::from_gguf(&file).unwrap();
    for case in reference()["results"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tokenizer.encode(text, false).unwrap(),
            u32s(&case["prompt_token_ids"]),
            "{text:?}"
        );
        let greedy = u32s(&case["greedy_token_ids"]);
        assert_eq!(
            tokenizer.decode(&greedy, false, true).unwrap(),
            case["greedy_text"].as_str().unwrap()
        );
    }
    let template = tokenizer
        .chat_template()
        .expect("the GGUF has a chat template");
    let _ = template;
}

fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&x| ((x - max) as f64).exp()).sum();
    let lse = max as f64 + sum.ln();
    logits.iter().map(|&x| (x as f64 - lse) as f32).collect()
}
