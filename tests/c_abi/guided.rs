//! Guided decoding through the C ABI's request JSON: vLLM's guided_* fields and
//! response_format reach the engine, bad constraints are ENGINE_ERR_INVALID_ARGUMENT
//! with the parser's message at submit time, and the engine serves on.

use crate::common;

use common::c_engine::Engine;
use engine::ffi::engine_status::{self, *};
use serde_json::Value;

fn texts(ev: &Value) -> Vec<String> {
    ev["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["text"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn guided_fields_constrain_the_output() {
    let e = Engine::new();
    let ev = e
        .run(r#"{"prompt": "Pick: ", "guided_choice": ["yes", "no", "maybe"], "n": 2, "seed": 1, "max_tokens": 10, "logprobs": 3}"#)
        .unwrap();
    for text in texts(&ev) {
        assert!(["yes", "no", "maybe"].contains(&text.as_str()), "{ev}");
    }
    assert!(!ev.to_string().contains("inf"), "{ev}");
    let ev = e
        .run(r#"{"prompt": "IP: ", "guided_regex": "[0-9]{1,3}(\\.[0-9]{1,3}){3}", "seed": 2, "max_tokens": 30}"#)
        .unwrap();
    let ip = &texts(&ev)[0];
    assert_eq!(ip.split('.').count(), 4, "{ev}");
    let schema = r#"{"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": false}"#;
    for body in [
        format!(r#"{{"prompt": "J: ", "guided_json": {schema}, "seed": 3, "max_tokens": 30}}"#),
        format!(
            r#"{{"prompt": "J: ", "guided_json": {}, "seed": 3, "max_tokens": 30}}"#,
            Value::from(schema)
        ),
        format!(
            r#"{{"prompt": "J: ", "response_format": {{"type": "json_schema", "json_schema": {{"name": "x", "schema": {schema}, "strict": true}}}}, "seed": 3, "max_tokens": 30}}"#
        ),
    ] {
        let ev = e.run(&body).unwrap();
        let v: Value =
            serde_json::from_str(&texts(&ev)[0]).unwrap_or_else(|err| panic!("{ev}: {err}"));
        assert!(v["ok"].is_boolean(), "{ev}");
        assert_eq!(ev["finish_reason"], "stop", "{ev}");
    }
    let ev = e
        .run(r#"{"prompt": "SQL: ", "guided_grammar": "start: \"SELECT \" col\ncol: \"a\" | \"b\"", "guided_decoding_backend": "outlines", "max_tokens": 10}"#)
        .unwrap();
    assert!(
        ["SELECT a", "SELECT b"].contains(&texts(&ev)[0].as_str()),
        "{ev}"
    );
}

#[test]
fn bad_constraints_fail_at_submit_and_the_engine_serves_on() {
    let e = Engine::new();
    let cases: [(&str, engine_status, &str); 7] = [
        (r#""guided_regex": "(a""#, ENGINE_ERR_INVALID_ARGUMENT, "guided_regex"),
        (r#""guided_json": "{not json""#, ENGINE_ERR_INVALID_ARGUMENT, "guided_json"),
        (r#""guided_json": {"type": "integer", "minimum": 3, "maximum": 1}"#, ENGINE_ERR_INVALID_ARGUMENT, "guided_json"),
        (r#""guided_grammar": "start: nowhere""#, ENGINE_ERR_INVALID_ARGUMENT, "guided_grammar"),
        (
            r#""guided_regex": "a", "guided_choice": ["a"]"#,
            ENGINE_ERR_INVALID_ARGUMENT,
            "You can only use one kind of guided decoding ('guided_json', 'guided_regex' or 'guided_choice').",
        ),
        (r#""guided_choice": "a""#, ENGINE_ERR_JSON, "guided_choice"),
        (r#""response_format": {"type": "yaml"}"#, ENGINE_ERR_JSON, "response_format"),
    ];
    for (fields, status, needle) in cases {
        let body = format!(r#"{{"prompt": "x", {fields}}}"#);
        let (s, message) = e.run(&body).unwrap_err();
        assert_eq!(s, status, "{body}: {message}");
        assert!(message.contains(needle), "{body}: {message}");
    }
    let ev = e
        .run(r#"{"prompt": "x", "response_format": {"type": "json_object"}, "seed": 5, "max_tokens": 5}"#)
        .unwrap();
    assert!(texts(&ev)[0].starts_with('{'), "{ev}");
}
