//! `guided_choice` over HTTP: a greedy request gets the choice the model rates
//! highest as a whole, scored here through the server's own API (the prompt
//! logprobs of each choice after the prompt), then an end token; nearly
//! greedy sampling keeps token-by-token decoding and walks into the other one.

mod common;

use common::Server;
use serde_json::{json, Value};

const PROMPT: &str = "The capital of France is";
/// On the fixture, token-by-token greedy decoding takes "ctest FOR" (its first
/// token is the likeliest) while "ail" scores higher as a whole:
/// tests/guided_choice.rs builds such a pair from the model's logits, and this
/// test checks again that the two decodings tell them apart.
const CHOICES: [&str; 2] = ["ctest FOR", "ail"];

fn tokens(server: &Server, text: &str, special: bool) -> Vec<u64> {
    let r = server.post(
        "/tokenize",
        &json!({"model": "demo", "prompt": text, "add_special_tokens": special}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let ids = r.json()["tokens"].as_array().unwrap().clone();
    ids.iter().map(|t| t.as_u64().unwrap()).collect()
}

/// The logprob of each prompt token after the ones before it (none for the first).
fn prompt_logprobs(server: &Server, ids: &[u64]) -> Vec<f64> {
    let body = json!({"model": "demo", "prompt": ids, "max_tokens": 0, "echo": true,
                      "logprobs": 0, "temperature": 0});
    let r = server.post("/v1/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let lps = r.json()["choices"][0]["logprobs"]["token_logprobs"].clone();
    lps.as_array().unwrap()[1..]
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// The fixture's end tokens: EOS and generation_config's.
fn end_tokens() -> Vec<u64> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/tiny-llama/generation_config.json"
    );
    let config: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    config["eos_token_id"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect()
}

/// The sum of a choice's tokens' logprobs after the prompt, and the best
/// end token's logprob after it.
fn whole_score(server: &Server, prompt: &[u64], choice: &str) -> (f64, f64) {
    let choice_ids = tokens(server, choice, false);
    let mut ids = prompt.to_vec();
    ids.extend(&choice_ids);
    let lps = prompt_logprobs(server, &ids);
    let score: f64 = lps[lps.len() - choice_ids.len()..].iter().sum();
    let end = end_tokens()
        .into_iter()
        .map(|e| {
            let mut with_end = ids.clone();
            with_end.push(e);
            *prompt_logprobs(server, &with_end).last().unwrap()
        })
        .fold(f64::NEG_INFINITY, f64::max);
    (score, end)
}

fn complete(server: &Server, extra: Value) -> Value {
    let mut body = json!({"model": "demo", "prompt": PROMPT, "max_tokens": 16,
                          "guided_choice": CHOICES, "logprobs": 0});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let r = server.post("/v1/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["choices"][0].clone()
}

#[test]
fn greedy_guided_choice_answers_the_best_whole_choice() {
    let server = Server::start(&[]);
    let prompt = tokens(&server, PROMPT, true);
    let scores: Vec<(f64, f64)> = CHOICES
        .iter()
        .map(|c| whole_score(&server, &prompt, c))
        .collect();
    let best = if scores[0].0 >= scores[1].0 { 0 } else { 1 };

    let greedy = complete(&server, json!({"temperature": 0}));
    assert_eq!(greedy["text"], CHOICES[best], "scores {scores:?}");
    assert_eq!(greedy["finish_reason"], "stop");
    // The reported logprobs are the model's for the choice's tokens (adding up
    // to its score) and its end token.
    let reported: f64 = greedy["logprobs"]["token_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .sum();
    let (score, end) = scores[best];
    assert!(
        (reported - score - end).abs() < 1e-3,
        "{reported} vs {scores:?}"
    );

    // Sampling keeps token-by-token decoding, which takes the other choice here.
    let sampled = complete(&server, json!({"temperature": 0.001, "seed": 1}));
    assert_eq!(sampled["text"], CHOICES[1 - best]);
}
