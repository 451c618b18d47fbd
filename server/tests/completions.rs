//! /v1/completions end to end over TCP, on the bundled demo model.

mod common;

use common::Server;
use serde_json::{json, Value};

fn server() -> Server {
    Server::start(&["--max-model-len", "256", "--disable-log-requests"])
}

fn complete(s: &Server, body: Value) -> Value {
    let r = s.post("/v1/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn text(v: &Value, i: usize) -> String {
    v["choices"][i]["text"].as_str().unwrap().to_string()
}

/// Each choice's text, from a stream's chunks.
fn streamed_texts(chunks: &[Value], choices: usize) -> Vec<String> {
    let mut texts = vec![String::new(); choices];
    for c in chunks {
        for choice in c["choices"].as_array().unwrap() {
            let i = choice["index"].as_u64().unwrap() as usize;
            texts[i].push_str(choice["text"].as_str().unwrap());
        }
    }
    texts
}

#[test]
fn greedy_streaming_equals_non_streaming() {
    let s = server();
    let body = json!({"model": "demo", "prompt": "The quick brown fox", "max_tokens": 12,
                      "temperature": 0, "ignore_eos": true});
    let full = complete(&s, body.clone());
    assert!(full["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(full["object"], "text_completion");
    assert_eq!(full["model"], "demo");
    assert_eq!(full["choices"][0]["finish_reason"], "length");
    assert_eq!(full["usage"]["completion_tokens"], 12);
    let prompt_tokens = full["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(full["usage"]["total_tokens"], prompt_tokens + 12);

    let mut streaming = body;
    streaming["stream"] = json!(true);
    let r = s.post("/v1/completions", &streaming);
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let chunks = r.chunks();
    assert_eq!(streamed_texts(&chunks, 1)[0], text(&full, 0));
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()));
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "usage only on request"
    );
}

#[test]
fn include_usage_adds_a_final_usage_chunk() {
    let s = server();
    let r = s.post(
        "/v1/completions",
        &json!({"model": "demo", "prompt": ["a", "b c"], "max_tokens": 3, "n": 2, "stream": true,
                "ignore_eos": true, "stream_options": {"include_usage": true}}),
    );
    let chunks = r.chunks();
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(
        last["usage"]["completion_tokens"], 12,
        "2 prompts x n=2 x 3 tokens"
    );
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c["usage"].is_null()));
    // continuous_usage_stats: every chunk carries its sequence's usage so far.
    let continuous = s
        .post(
            "/v1/completions",
            &json!({"model": "demo", "prompt": "a", "max_tokens": 3, "stream": true, "ignore_eos": true,
                    "stream_options": {"include_usage": true, "continuous_usage_stats": true}}),
        )
        .chunks();
    let counts: Vec<u64> = continuous[..continuous.len() - 1]
        .iter()
        .map(|c| c["usage"]["completion_tokens"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, vec![1, 2, 3]);
    // Choices are numbered prompt by prompt: 0,1 for the first, 2,3 for the second.
    let texts = streamed_texts(&chunks[..chunks.len() - 1], 4);
    assert!(texts.iter().all(|t| !t.is_empty()), "{texts:?}");
}

#[test]
fn prompt_shapes_strings_ids_and_lists() {
    let s = server();
    let tokens = s
        .post(
            "/tokenize",
            &json!({"model": "demo", "prompt": "Hello world"}),
        )
        .json();
    let ids = tokens["tokens"].clone();
    let base = json!({"model": "demo", "max_tokens": 4, "temperature": 0, "ignore_eos": true});
    let with = |prompt: Value| {
        let mut b = base.clone();
        b["prompt"] = prompt;
        complete(&s, b)
    };
    let from_text = with(json!("Hello world"));
    let from_ids = with(ids.clone());
    assert_eq!(text(&from_text, 0), text(&from_ids, 0));
    assert_eq!(from_ids["usage"]["prompt_tokens"], tokens["count"]);
    let many = with(json!(["Hello world", "Goodbye"]));
    assert_eq!(many["choices"].as_array().unwrap().len(), 2);
    assert_eq!(text(&many, 0), text(&from_text, 0));
    let many_ids = with(json!([ids, [5, 6, 7]]));
    assert_eq!(text(&many_ids, 0), text(&from_text, 0));
    assert_eq!(many_ids["choices"][1]["index"], 1);
    for bad in [
        json!([]),
        json!([[]]),
        json!({"a": 1}),
        json!([1, "x"]),
        json!(""),
        json!([-1]),
    ] {
        let r = s.post("/v1/completions", &json!({"model": "demo", "prompt": bad}));
        r.error(400);
    }
}

#[test]
fn n_best_of_and_beam_search() {
    let s = server();
    let v = complete(
        &s,
        json!({"model": "demo", "prompt": "Once", "max_tokens": 8, "n": 3, "seed": 7, "ignore_eos": true}),
    );
    let texts: Vec<String> = (0..3).map(|i| text(&v, i)).collect();
    assert_eq!(v["usage"]["completion_tokens"], 24);
    assert!(texts[0] != texts[1] || texts[1] != texts[2], "{texts:?}");
    let best = complete(
        &s,
        json!({"model": "demo", "prompt": "Once", "max_tokens": 4, "n": 1, "best_of": 3,
               "ignore_eos": true}),
    );
    assert_eq!(best["choices"].as_array().unwrap().len(), 1);
    let body = json!({"model": "demo", "prompt": "Once", "max_tokens": 4, "n": 2, "best_of": 3,
                      "use_beam_search": true, "temperature": 0, "ignore_eos": true,
                      "length_penalty": 1.5, "early_stopping": true});
    let beams = complete(&s, body.clone());
    assert_eq!(beams["choices"].as_array().unwrap().len(), 2);
    // Streaming beam search falls back to one chunk holding the whole response.
    let mut streaming = body;
    streaming["stream"] = json!(true);
    let chunks = s.post("/v1/completions", &streaming).chunks();
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0]["choices"], beams["choices"]);
    assert!(chunks[0].get("usage").is_none(), "usage only on request");
    streaming["stream_options"] = json!({"include_usage": true});
    let chunks = s.post("/v1/completions", &streaming).chunks();
    assert_eq!(chunks.len(), 2);
    assert!(chunks[0]["usage"].is_null());
    assert_eq!(chunks[1]["choices"], json!([]));
    assert_eq!(chunks[1]["usage"], beams["usage"]);
}

#[test]
fn logprobs_have_the_completions_shape() {
    let s = server();
    let v = complete(
        &s,
        json!({"model": "demo", "prompt": "Hello", "max_tokens": 5, "logprobs": 3, "ignore_eos": true}),
    );
    let lp = &v["choices"][0]["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 5);
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 5);
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert_eq!(offsets[0], 0);
    let joined: String = tokens.iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(joined, text(&v, 0), "tokens spell the text");
    for (i, t) in tokens.iter().enumerate().skip(1) {
        let prev = tokens[i - 1].as_str().unwrap().chars().count() as u64;
        assert_eq!(offsets[i], offsets[i - 1] + prev, "{t}");
    }
    for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let top = top.as_object().unwrap();
        assert!((3..=4).contains(&top.len()), "{top:?}");
        let chosen = lp["token_logprobs"][i].as_f64().unwrap();
        assert!(chosen <= 0.0);
        assert_eq!(top[tokens[i].as_str().unwrap()].as_f64().unwrap(), chosen);
    }
    // Tokens as ids.
    let v = complete(
        &s,
        json!({"model": "demo", "prompt": "Hello", "max_tokens": 2, "logprobs": 1,
               "return_tokens_as_token_ids": true}),
    );
    let first = v["choices"][0]["logprobs"]["tokens"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(first.starts_with("token_id:"), "{first}");
    let r = s.post(
        "/v1/completions",
        &json!({"model": "demo", "prompt": "x", "logprobs": 21}),
    );
    assert_eq!(r.error(400), "Cannot request more than 20 logprobs.");
}

#[test]
fn echo_puts_the_prompt_first() {
    let s = server();
    let v = complete(
        &s,
        json!({"model": "demo", "prompt": "Echo me", "max_tokens": 3, "echo": true, "logprobs": 1,
               "temperature": 0, "ignore_eos": true}),
    );
    let plain = complete(
        &s,
        json!({"model": "demo", "prompt": "Echo me", "max_tokens": 3, "temperature": 0, "ignore_eos": true}),
    );
    assert_eq!(text(&v, 0), format!("Echo me{}", text(&plain, 0)));
    let lp = &v["choices"][0]["logprobs"];
    let prompt_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    assert_eq!(lp["tokens"].as_array().unwrap().len(), prompt_tokens + 3);
    assert!(
        lp["token_logprobs"][0].is_null(),
        "nothing scores the first prompt token"
    );
    assert!(lp["token_logprobs"][1].is_number());
    // max_tokens 0 with echo: the prompt alone.
    let only = complete(
        &s,
        json!({"model": "demo", "prompt": "Echo me", "max_tokens": 0, "echo": true}),
    );
    assert_eq!(text(&only, 0), "Echo me");
    // Streaming echo: the first chunk starts with the prompt.
    let chunks = s
        .post(
            "/v1/completions",
            &json!({"model": "demo", "prompt": "Echo me", "max_tokens": 3, "echo": true,
                    "temperature": 0, "ignore_eos": true, "stream": true}),
        )
        .chunks();
    assert_eq!(streamed_texts(&chunks, 1)[0], text(&v, 0));
}

/// The prompt's tokens under echo + logprobs read as the prompt: the token
/// that completes a multi-byte character carries it (red-teaming found "你好世界😀"
/// echoed as a U+FFFD and empty strings).
#[test]
fn echoed_prompt_tokens_spell_the_prompt() {
    let s = server();
    for prompt in ["héllo 你好 😀 wörld", "你好世界😀", "plain words"] {
        let v = complete(
            &s,
            json!({"model": "demo", "prompt": prompt, "max_tokens": 1, "echo": true,
                   "logprobs": 0, "temperature": 0}),
        );
        let lp = &v["choices"][0]["logprobs"];
        let prompt_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
        let tokens: Vec<&str> = lp["tokens"].as_array().unwrap()[..prompt_tokens]
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        // The fixture's tokenizer adds a BOS, shown as its text.
        assert_eq!(
            tokens.concat().strip_prefix("<s>"),
            Some(prompt),
            "{tokens:?}"
        );
        let offsets: Vec<u64> = lp["text_offset"].as_array().unwrap()[..prompt_tokens]
            .iter()
            .map(|o| o.as_u64().unwrap())
            .collect();
        for i in 1..prompt_tokens {
            let step = tokens[i - 1].chars().count() as u64;
            assert_eq!(offsets[i], offsets[i - 1] + step, "{prompt}: {offsets:?}");
        }
    }
}

#[test]
fn sampling_fields_reach_the_engine() {
    let s = server();
    let base = json!({"model": "demo", "prompt": "Tell me", "max_tokens": 6, "ignore_eos": true});
    let with = |extra: Value| {
        let mut b = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        complete(&s, b)
    };
    let greedy = with(json!({"temperature": 0}));
    // top_k = 1 is greedy whatever the temperature.
    assert_eq!(
        text(&with(json!({"temperature": 1.5, "top_k": 1, "seed": 3})), 0),
        text(&greedy, 0)
    );
    // Seeds repeat.
    let a = with(json!({"temperature": 1.0, "seed": 11}));
    let b = with(json!({"temperature": 1.0, "seed": 11}));
    assert_eq!(text(&a, 0), text(&b, 0));
    // A huge logit bias forces its token.
    let forced = with(
        json!({"temperature": 0, "logit_bias": {"42": 100}, "logprobs": 0,
                             "return_tokens_as_token_ids": true}),
    );
    let tokens = forced["choices"][0]["logprobs"]["tokens"]
        .as_array()
        .unwrap()
        .clone();
    assert!(tokens.iter().all(|t| t == "token_id:42"), "{tokens:?}");
    // Stop token ids end the output with stop_reason = the token.
    let first_token = greedy_token_ids(&s, 1)[0];
    let stopped = with(json!({"temperature": 0, "stop_token_ids": [first_token]}));
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    assert_eq!(stopped["choices"][0]["stop_reason"], first_token);
    assert_eq!(stopped["usage"]["completion_tokens"], 1);
    // A stop string cuts the text; include_stop_str_in_output keeps it.
    let full = text(&greedy, 0);
    let stop: String = full.chars().skip(2).take(2).collect();
    let cut = with(json!({"temperature": 0, "stop": [stop]}));
    assert_eq!(cut["choices"][0]["stop_reason"], stop.as_str());
    assert!(full.starts_with(&text(&cut, 0)) && !text(&cut, 0).contains(&stop));
    let kept = with(json!({"temperature": 0, "stop": stop, "include_stop_str_in_output": true}));
    assert!(text(&kept, 0).ends_with(&stop));
    // Penalties, min_p, top_p, min_tokens, skip/spaces flags are accepted.
    let v = with(
        json!({"temperature": 0.8, "seed": 1, "presence_penalty": 0.5, "frequency_penalty": 0.5,
                        "repetition_penalty": 1.3, "min_p": 0.05, "top_p": 0.9, "min_tokens": 2,
                        "skip_special_tokens": false, "spaces_between_special_tokens": false}),
    );
    assert_eq!(v["usage"]["completion_tokens"], 6);
    // truncate_prompt_tokens keeps the last k.
    let t = complete(
        &s,
        json!({"model": "demo", "prompt": "one two three four five six", "max_tokens": 1,
               "truncate_prompt_tokens": 3}),
    );
    assert_eq!(t["usage"]["prompt_tokens"], 3);
    // max_tokens null: the rest of the context.
    let rest = complete(
        &s,
        json!({"model": "demo", "prompt": [1, 2, 3, 4], "max_tokens": null,
                                   "ignore_eos": true, "temperature": 0}),
    );
    assert_eq!(rest["usage"]["completion_tokens"], 256 - 4);
}

fn greedy_token_ids(s: &Server, n: usize) -> Vec<u64> {
    let v = complete(
        s,
        json!({"model": "demo", "prompt": "Tell me", "max_tokens": n, "temperature": 0,
               "ignore_eos": true, "logprobs": 0, "return_tokens_as_token_ids": true}),
    );
    v["choices"][0]["logprobs"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap()["token_id:".len()..].parse().unwrap())
        .collect()
}

#[allow(clippy::too_many_lines)] // a table of cases
#[test]
fn validation_errors_read_like_vllm() {
    let s = server();
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"model": "demo", "prompt": "x", "bogus": 1}),
            "extra_forbidden",
        ),
        (
            json!({"model": "demo", "prompt": "x", "temperature": "hot"}),
            "('body', 'temperature')",
        ),
        (json!({"prompt": "x"}), "'type': 'missing'"),
        (
            json!({"model": "demo", "prompt": "x", "temperature": -1}),
            "temperature must be non-negative, got -1.0.",
        ),
        (
            json!({"model": "demo", "prompt": "x", "top_p": 0}),
            "top_p must be in (0, 1], got 0.0.",
        ),
        (
            json!({"model": "demo", "prompt": "x", "n": 0}),
            "n must be at least 1, got 0.",
        ),
        (
            json!({"model": "demo", "prompt": "x", "n": 2, "best_of": 1}),
            "best_of must be greater than or equal to n",
        ),
        (
            json!({"model": "demo", "prompt": "x", "max_tokens": 300}),
            "This model's maximum context length is 256 tokens. However, you requested",
        ),
        (
            json!({"model": "demo", "prompt": "x", "max_tokens": 0}),
            "max_tokens must be at least 1, got 0.",
        ),
        (
            json!({"model": "demo", "prompt": "x", "stream_options": {"include_usage": true}}),
            "Stream options can only be defined when stream is true.",
        ),
        (
            json!({"model": "demo", "prompt": "x", "suffix": "y"}),
            "suffix is not currently supported",
        ),
        (
            json!({"model": "demo", "prompt": "x", "logprobs": -1}),
            "`logprobs` must be a positive value",
        ),
        (
            json!({"model": "demo", "prompt": "x", "guided_regex": "(a"}),
            "guided_regex",
        ),
        (
            json!({"model": "demo", "prompt": "x", "guided_json": {"type": "nonsense"}}),
            "guided_json",
        ),
        (
            json!({"model": "demo", "prompt": "x", "guided_json": "{not json"}),
            "guided_json",
        ),
        (
            json!({"model": "demo", "prompt": "x", "guided_grammar": "start: ( \"a\""}),
            "guided_grammar",
        ),
        (
            json!({"model": "demo", "prompt": "x", "guided_choice": []}),
            "guided_choice",
        ),
        (
            json!({"model": "demo", "prompt": "x", "guided_decoding_backend": "magic"}),
            "guided_decoding_backend",
        ),
        (
            json!({"model": "demo", "prompt": "x", "response_format": {"type": "json_schema",
                   "json_schema": {"name": "x", "schema": {"type": 5}}}}),
            "response_format",
        ),
        (
            json!({"model": "demo", "prompt": "x", "guided_regex": "a", "guided_choice": ["a"]}),
            "You can only use one kind of guided decoding",
        ),
        (
            json!({"model": "demo", "prompt": "x", "stop": [""]}),
            "stop cannot contain an empty string.",
        ),
        (json!({"model": "demo", "prompt": [99999]}), "out of range"),
    ];
    for (body, needle) in cases {
        let message = s.post("/v1/completions", &body).error(400);
        assert!(message.contains(needle), "{body}: {message}");
    }
    let message = s
        .post("/v1/completions", &json!({"model": "nope", "prompt": "x"}))
        .error(404);
    assert_eq!(message, "The model `nope` does not exist.");
    // Still serving.
    complete(&s, json!({"model": "demo", "prompt": "x", "max_tokens": 1}));
}

#[test]
fn guided_decoding_constrains_the_output() {
    let s = server();
    let base =
        json!({"model": "demo", "prompt": "Pick one:", "max_tokens": 40, "temperature": 1.0});
    let with = |extra: Value| {
        let mut b = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        complete(&s, b)
    };
    let choices = ["red", "green", "blue"];
    for seed in 0..5 {
        let v = with(json!({"guided_choice": choices, "seed": seed}));
        assert!(choices.contains(&text(&v, 0).as_str()), "{v}");
        let v = with(json!({"guided_regex": "[0-9]{3}-[a-z]{2}", "seed": seed}));
        let t = text(&v, 0);
        assert!(t.len() == 6 && t.as_bytes()[3] == b'-', "{t}");
    }
    // Bounded, so the grammar ends the number: a random model may not.
    let schema = json!({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99999}}, "required": ["n"],
                        "additionalProperties": false});
    let v = with(json!({"guided_json": schema, "seed": 1, "max_tokens": 30}));
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    let parsed: Value = serde_json::from_str(&text(&v, 0)).unwrap();
    // An integer literal within the bounds.
    assert!(
        parsed["n"].as_u64().is_some_and(|n| n <= 99_999),
        "{parsed}"
    );
    assert!(!&text(&v, 0).contains(['.', 'e', 'E']), "{parsed}");
    // Streaming and n > 1 under a constraint.
    let chunks = s
        .post(
            "/v1/completions",
            &json!({"model": "demo", "prompt": "Pick:", "max_tokens": 10, "n": 2, "stream": true,
                    "guided_choice": choices}),
        )
        .chunks();
    for t in streamed_texts(&chunks, 2) {
        assert!(choices.contains(&t.as_str()), "{t}");
    }
}
