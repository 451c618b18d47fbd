//! Guided decoding through the C ABI's request JSON: vLLM's guided_* fields and
//! response_format reach the engine, bad constraints are ENGINE_ERR_INVALID_ARGUMENT
//! with the parser's message at submit time, and the engine serves on.

mod common;

use std::ffi::c_void;
use std::ptr::null_mut;
use std::sync::mpsc::{self, Sender};
use std::time::Duration;

use common::fixture_dir;
use engine::ffi::engine::*;
use engine::ffi::engine_last_error;
use engine::ffi::engine_status::{self, *};
use engine::ffi::events::*;
use engine::ffi::options::*;
use serde_json::Value;

fn last_error() -> String {
    // SAFETY: a NULL buffer with capacity 0 only queries the length.
    let len = unsafe { engine_last_error(null_mut(), 0) };
    let mut buf = vec![0u8; len + 1];
    // SAFETY: `buf` has `len + 1` writable bytes.
    unsafe { engine_last_error(buf.as_mut_ptr().cast(), buf.len()) };
    buf.truncate(len);
    String::from_utf8(buf).unwrap()
}

/// The fixture model in float32, freed on drop.
struct Engine(*mut engine_t);

impl Engine {
    fn new() -> Engine {
        let mut o = null_mut();
        // SAFETY: `o` is a writable pointer.
        assert_eq!(unsafe { engine_options_new(&mut o) }, ENGINE_OK);
        let model = fixture_dir("tiny-llama").display().to_string();
        for (k, v) in [("model", model.as_str()), ("dtype", "float32")] {
            let (k, v) = (
                std::ffi::CString::new(k).unwrap(),
                std::ffi::CString::new(v).unwrap(),
            );
            // SAFETY: a live options object and NUL-terminated strings.
            assert_eq!(
                unsafe { engine_options_set(o, k.as_ptr(), v.as_ptr()) },
                ENGINE_OK
            );
        }
        let mut e = null_mut();
        // SAFETY: a live options object and a writable pointer.
        let s = unsafe { engine_new(o, &mut e) };
        // SAFETY: the options object is live and not used again.
        unsafe { engine_options_free(o) };
        assert_eq!(s, ENGINE_OK, "{}", last_error());
        Engine(e)
    }

    /// Submits; on success waits for the final event and returns it.
    fn run(&self, json: &str) -> Result<Value, (engine_status, String)> {
        let (tx, rx) = mpsc::channel::<Value>();
        let sink = Box::into_raw(Box::new(tx));
        let mut id = 0;
        // SAFETY: a live engine, `json.len()` readable bytes, a callback that follows
        // the contract, and `sink` valid until the final event releases it.
        let s = unsafe {
            engine_submit(
                self.0,
                json.as_ptr().cast(),
                json.len(),
                Some(on_event),
                sink.cast(),
                &mut id,
            )
        };
        if s != ENGINE_OK {
            // SAFETY: the request was refused, so the callback never runs: the box is ours.
            drop(unsafe { Box::from_raw(sink) });
            return Err((s, last_error()));
        }
        loop {
            let ev = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("final event");
            if ev["kind"] == "final" {
                return Ok(ev);
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // SAFETY: a live engine, freed once.
        unsafe { engine_free(self.0) };
    }
}

/// Sends each event's JSON to the `Sender` in `user_data`; frees it at the final event.
unsafe extern "C" fn on_event(user_data: *mut c_void, event: *const engine_event_t) {
    let tx = user_data as *mut Sender<Value>;
    // SAFETY: the event is valid during the call, its json pointing to json_len bytes.
    let (kind, json) = unsafe {
        let ev = &*event;
        (
            ev.kind,
            std::slice::from_raw_parts(ev.json.cast::<u8>(), ev.json_len),
        )
    };
    let value: Value = serde_json::from_slice(json).unwrap();
    // SAFETY: `tx` is the live sender `Engine::run` boxed for this request.
    let _ = unsafe { &*tx }.send(value);
    if kind == engine_event_kind::ENGINE_EVENT_FINAL {
        // SAFETY: the final event is the request's last call: the box is released once.
        drop(unsafe { Box::from_raw(tx) });
    }
}

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
