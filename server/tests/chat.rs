//! /v1/chat/completions end to end over TCP, on the bundled demo model (its
//! template is ChatML).

mod common;

use common::Server;
use serde_json::{json, Value};

fn server() -> Server {
    Server::start(&["--max-model-len", "256", "--disable-log-requests"])
}

fn chat(s: &Server, body: Value) -> Value {
    let r = s.post("/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn content(v: &Value, i: usize) -> String {
    v["choices"][i]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

fn hi() -> Value {
    json!([{"role": "user", "content": "Hi there"}])
}

#[test]
fn greedy_streaming_equals_non_streaming() {
    let s = server();
    let body = json!({"model": "demo", "messages": hi(), "max_tokens": 10, "temperature": 0,
                      "ignore_eos": true});
    let full = chat(&s, body.clone());
    assert!(full["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(full["object"], "chat.completion");
    assert_eq!(full["choices"][0]["message"]["role"], "assistant");
    assert_eq!(full["choices"][0]["finish_reason"], "length");
    assert_eq!(full["usage"]["completion_tokens"], 10);

    let mut streaming = body;
    streaming["stream"] = json!(true);
    let chunks = s.post("/v1/chat/completions", &streaming).chunks();
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, content(&full, 0));
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
}

#[test]
fn the_prompt_is_the_chat_template_and_max_tokens_defaults_to_the_rest() {
    let s = server();
    let tok = s
        .post("/tokenize", &json!({"model": "demo", "messages": hi()}))
        .json();
    let v = chat(
        &s,
        json!({"model": "demo", "messages": hi(), "ignore_eos": true, "temperature": 0}),
    );
    assert_eq!(v["usage"]["prompt_tokens"], tok["count"]);
    let prompt = tok["count"].as_u64().unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 256 - prompt);
    // Text parts are joined with newlines, as one string would be.
    let parts = json!([{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]}]);
    let joined = json!([{"role": "user", "content": "Hi\nthere"}]);
    let a = chat(
        &s,
        json!({"model": "demo", "messages": parts, "max_tokens": 4, "temperature": 0}),
    );
    let b = chat(
        &s,
        json!({"model": "demo", "messages": joined, "max_tokens": 4, "temperature": 0}),
    );
    assert_eq!(content(&a, 0), content(&b, 0));
    // Custom roles; add_generation_prompt false answers in the last message's role.
    let custom =
        json!([{"role": "system", "content": "Be brief"}, {"role": "narrator", "content": "Once"}]);
    let v = chat(
        &s,
        json!({"model": "demo", "messages": custom, "max_tokens": 3,
                            "add_generation_prompt": false, "echo": true, "temperature": 0}),
    );
    assert_eq!(v["choices"][0]["message"]["role"], "narrator");
    assert!(
        content(&v, 0).starts_with("Once"),
        "echo prepends the last message"
    );
}

#[test]
fn n_choices_and_logprobs_in_content_shape() {
    let s = server();
    let v = chat(
        &s,
        json!({"model": "demo", "messages": hi(), "max_tokens": 4, "n": 2, "logprobs": true,
               "top_logprobs": 2, "ignore_eos": true, "seed": 5}),
    );
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    for i in 0..2 {
        let entries = v["choices"][i]["logprobs"]["content"].as_array().unwrap();
        assert_eq!(entries.len(), 4);
        let joined: String = entries
            .iter()
            .map(|e| e["token"].as_str().unwrap())
            .collect();
        assert_eq!(joined, content(&v, i));
        for e in entries {
            let token = e["token"].as_str().unwrap();
            let bytes: Vec<u8> = e["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8)
                .collect();
            assert_eq!(bytes, token.as_bytes());
            assert_eq!(e["top_logprobs"].as_array().unwrap().len(), 2);
            assert!(e["logprob"].as_f64().unwrap() <= 0.0);
        }
    }
    let errors = [
        (
            json!({"top_logprobs": 2}),
            "when using `top_logprobs`, `logprobs` must be set to true.",
        ),
        (
            json!({"logprobs": true, "top_logprobs": 21}),
            "`top_logprobs` must be a value in the interval [0, 20].",
        ),
    ];
    for (extra, message) in errors {
        let mut body = json!({"model": "demo", "messages": hi()});
        for (k, val) in extra.as_object().unwrap() {
            body[k] = val.clone();
        }
        assert_eq!(s.post("/v1/chat/completions", &body).error(400), message);
    }
}

#[test]
fn streaming_options_and_fallbacks() {
    let s = server();
    let chunks = s
        .post(
            "/v1/chat/completions",
            &json!({"model": "demo", "messages": hi(), "max_tokens": 3, "n": 2, "stream": true,
                    "ignore_eos": true, "stream_options": {"include_usage": true}}),
        )
        .chunks();
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 6);
    for i in 0..2 {
        let mine: Vec<&Value> = chunks
            .iter()
            .filter(|c| c["choices"].get(0).is_some_and(|ch| ch["index"] == i))
            .collect();
        assert_eq!(
            mine[0]["choices"][0]["delta"]["role"], "assistant",
            "role first"
        );
        let finishes = mine
            .iter()
            .filter(|c| !c["choices"][0]["finish_reason"].is_null())
            .count();
        assert_eq!(finishes, 1);
        assert!(
            !mine.last().unwrap()["choices"][0]["finish_reason"].is_null(),
            "finish last"
        );
    }
    // best_of > n: one chunk with the final choices.
    let body = json!({"model": "demo", "messages": hi(), "max_tokens": 3, "n": 1, "best_of": 2,
                      "ignore_eos": true, "seed": 1});
    let full = chat(&s, body.clone());
    let mut streaming = body;
    streaming["stream"] = json!(true);
    let chunks = s.post("/v1/chat/completions", &streaming).chunks();
    assert_eq!(chunks.len(), 1);
    assert_eq!(
        chunks[0]["choices"][0]["delta"]["content"],
        full["choices"][0]["message"]["content"]
    );
    let delta = chunks[0]["choices"][0]["delta"].as_object().unwrap();
    assert!(!delta.contains_key("tool_calls"), "{delta:?}");
}

#[test]
fn max_completion_tokens_is_openais_name_for_max_tokens() {
    let s = server();
    let tokens = |body: Value| chat(&s, body)["usage"]["completion_tokens"].clone();
    let base = json!({"model": "demo", "messages": hi(), "temperature": 0, "ignore_eos": true});
    let with = |extra: Value| {
        let mut b = base.clone();
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    assert_eq!(tokens(with(json!({"max_completion_tokens": 3}))), 3);
    // Both given: max_completion_tokens wins, as vLLM.
    assert_eq!(
        tokens(with(json!({"max_completion_tokens": 2, "max_tokens": 5}))),
        2
    );
    let message = s
        .post(
            "/v1/chat/completions",
            &with(json!({"max_completion_tokens": 1000})),
        )
        .error(400);
    assert!(
        message.contains("maximum context length is 256"),
        "{message}"
    );
}

#[test]
fn chat_errors() {
    let s = server();
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"model": "demo", "messages": [{"role": "user", "content": "x", "extra": 1}]}),
            "extra_forbidden",
        ),
        (
            json!({"model": "demo", "messages": [{"content": "x"}]}),
            "'type': 'missing'",
        ),
        (
            json!({"model": "demo", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            "Unknown part type: image_url",
        ),
        (
            json!({"model": "demo", "messages": hi(), "max_tokens": 1000}),
            "maximum context length is 256",
        ),
        (
            json!({"model": "demo", "messages": hi(), "tools": weather(), "tool_choice": "auto"}),
            "\"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set",
        ),
        // Tools without a tool_choice mean "auto" (vLLM's rule).
        (
            json!({"model": "demo", "messages": hi(), "tools": weather()}),
            "\"auto\" tool choice requires --enable-auto-tool-choice",
        ),
        (
            json!({"model": "demo", "messages": hi(), "tool_choice": "required"}),
            "When using `tool_choice`, `tools` must be set.",
        ),
        (
            json!({"model": "demo", "messages": hi(), "tools": weather(), "tool_choice": "required",
                   "guided_regex": "a"}),
            "You can only either use guided decoding or tools, not both.",
        ),
        (
            json!({"model": "demo", "messages": hi(), "response_format": {"type": "xml"}}),
            "response_format",
        ),
        (
            json!({"model": "demo", "messages": hi(), "stream_options": {"include_usage": true}}),
            "Stream options can only be defined when stream is true.",
        ),
    ];
    for (body, needle) in cases {
        let message = s.post("/v1/chat/completions", &body).error(400);
        assert!(message.contains(needle), "{body}: {message}");
    }
    // response_format text is plain generation.
    chat(
        &s,
        json!({"model": "demo", "messages": hi(), "max_tokens": 1, "response_format": {"type": "text"}}),
    );
}

fn weather() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
        "required": ["city"], "additionalProperties": false}}}])
}

#[test]
fn json_response_format_and_forced_tool_calls() {
    let s = server();
    for seed in 0..3 {
        // The random model writes long strings: any JSON object, or the start of one.
        let body = json!({"model": "demo", "messages": hi(), "max_tokens": 60, "seed": seed,
                          "response_format": {"type": "json_object"}});
        let v = chat(&s, body);
        assert!(content(&v, 0).starts_with('{'), "{v}");
        // Bounded, so the grammar ends the number: a random model may not.
        let schema = json!({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99999}},
                            "required": ["n"], "additionalProperties": false});
        let format = json!({"type": "json_schema", "json_schema": {"name": "n", "schema": schema}});
        let body = json!({"model": "demo", "messages": hi(), "max_tokens": 60, "seed": seed,
                          "response_format": format});
        let v = chat(&s, body);
        assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
        let parsed: Value = serde_json::from_str(&content(&v, 0)).unwrap();
        // An integer literal within the bounds.
        assert!(
            parsed["n"].as_u64().is_some_and(|n| n <= 99_999),
            "{parsed}"
        );
        assert!(!&content(&v, 0).contains(['.', 'e', 'E']), "{parsed}");
    }
    let named = json!({"type": "function", "function": {"name": "get_weather"}});
    let v = chat(
        &s,
        json!({"model": "demo", "messages": hi(), "max_tokens": 60, "seed": 3,
                            "tools": weather(), "tool_choice": named}),
    );
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert!(call["id"].as_str().unwrap().starts_with("chatcmpl-tool-"));
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string(), "{args}");
    let v = chat(
        &s,
        json!({"model": "demo", "messages": hi(), "max_tokens": 80, "seed": 4,
                            "tools": weather(), "tool_choice": "required"}),
    );
    if v["choices"][0]["finish_reason"] == "tool_calls" {
        let calls = v["choices"][0]["message"]["tool_calls"].as_array().unwrap();
        assert!(!calls.is_empty());
        assert!(calls.iter().all(|c| c["function"]["name"] == "get_weather"));
    } else {
        assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    }
    // Streamed: the arguments arrive as delta.tool_calls pieces.
    let chunks = s
        .post(
            "/v1/chat/completions",
            &json!({"model": "demo", "messages": hi(), "max_tokens": 60, "seed": 3, "stream": true,
                    "tools": weather(), "tool_choice": named}),
        )
        .chunks();
    let mut arguments = String::new();
    for c in &chunks {
        if let Some(calls) = c["choices"][0]["delta"]["tool_calls"].as_array() {
            arguments.push_str(calls[0]["function"]["arguments"].as_str().unwrap());
        }
    }
    assert_eq!(arguments, call["function"]["arguments"].as_str().unwrap());
}

#[test]
fn auto_tool_choice_runs_with_a_template_that_asks_for_tool_call_blocks() {
    // A Hermes-style template: it lists the tools and asks for <tool_call> JSON.
    let template = "{% if tools %}Tools: {{ tools | tojson }}. Answer with <tool_call>{\"name\": ..., \
                    \"arguments\": ...}</tool_call>.\n{% endif %}{% for m in messages %}{{ m.role }}: \
                    {{ m.content }}\n{% endfor %}assistant:";
    let s = Server::start(&[
        "--chat-template",
        template,
        "--max-model-len",
        "256",
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "hermes",
    ]);
    // Without a template that asks for <tool_call> blocks, "auto" is refused.
    let plain_template = Server::start(&[
        "--max-model-len",
        "256",
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "hermes",
    ]);
    let r = plain_template.post(
        "/v1/chat/completions",
        &json!({"model": "demo", "messages": hi(), "tools": weather(), "tool_choice": "auto"}),
    );
    assert!(r
        .error(400)
        .contains("tool_choice \"auto\" needs a chat template"));
    drop(plain_template);
    let t = s
        .post(
            "/tokenize",
            &json!({"messages": hi(), "add_special_tokens": false}),
        )
        .json();
    let plain = s
        .post("/detokenize", &json!({"tokens": t["tokens"]}))
        .json();
    assert!(!plain["prompt"].as_str().unwrap().contains("<tool_call>"));
    let v = chat(
        &s,
        json!({"model": "demo", "messages": hi(), "max_tokens": 6, "temperature": 0,
                            "tools": weather()}),
    );
    // The random model does not call: its text comes back as content, and the
    // prompt it saw (longer by the tool list) proves the template got the tools.
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    assert!(
        v["choices"][0]["message"].get("tool_calls").is_none(),
        "{v}"
    );
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > t["count"].as_u64().unwrap() + 10);
}

/// A GGUF with a SentencePiece vocabulary (tests/fixtures/spm-gguf) serves chat
/// through the template in its metadata, the prompt tokenized as transformers does.
#[test]
fn a_sentencepiece_gguf_serves_chat_with_its_metadata_template() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/spm-gguf");
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/reference.json")).unwrap())
            .unwrap();
    let question = &reference["chat_prompt"];
    let model = format!("{dir}/model.gguf");
    let s = Server::start(&[
        "--model",
        &model,
        "--served-model-name",
        "spm",
        "--max-model-len",
        "256",
        "--disable-log-requests",
    ]);
    let body = json!({"model": "spm", "messages": question["messages"], "max_tokens": 3,
                      "temperature": 0, "ignore_eos": true});
    let v = chat(&s, body);
    assert_eq!(
        v["usage"]["prompt_tokens"],
        question["ids"].as_array().unwrap().len()
    );
    assert_eq!(v["usage"]["completion_tokens"], 3);
}
