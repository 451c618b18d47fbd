//! Bad input at the C ABI, one concern per test, through the exported functions
//! themselves: each gets its status code and a message that says what is wrong,
//! nothing crashes, and the engine serves a good request afterwards.

use crate::common;

use std::ffi::{c_char, c_void, CString};
use std::ptr::{null, null_mut};
use std::sync::mpsc::{self, Sender};
use std::sync::Mutex;
use std::time::Duration;

use common::c_engine::{assert_error, last_error, on_event, options, Engine};
use common::fixture_dir;
use engine::ffi::engine::*;
use engine::ffi::engine_status::{self, *};
use engine::ffi::events::*;
use engine::ffi::options::*;
use engine::ffi::tokenize::*;

#[allow(clippy::too_many_lines)] // a table of cases
#[test]
fn null_handles_and_pointers_are_errors_not_crashes() {
    let e = Engine::new();
    let json = r#"{"prompt": "x"}"#;
    let mut id = 0u64;
    let mut n = 0usize;
    // SAFETY (all calls below): every pointer is NULL or valid; NULL is what is tested.
    unsafe {
        let s = engine_submit(
            null(),
            json.as_ptr().cast(),
            json.len(),
            Some(on_event),
            null_mut(),
            &mut id,
        );
        assert_error(s, ENGINE_ERR_NULL, "engine is NULL");
        let s = engine_submit(e.0, null(), 3, Some(on_event), null_mut(), &mut id);
        assert_error(s, ENGINE_ERR_NULL, "request_json is NULL");
        let s = engine_submit(
            e.0,
            json.as_ptr().cast(),
            json.len(),
            None,
            null_mut(),
            &mut id,
        );
        assert_error(s, ENGINE_ERR_NULL, "on_event is NULL");
        assert_error(engine_abort(null(), 1), ENGINE_ERR_NULL, "engine is NULL");
        assert_error(
            engine_stats_get(e.0, null_mut()),
            ENGINE_ERR_NULL,
            "out is NULL",
        );
        assert_error(
            engine_model_info_get(null(), null_mut()),
            ENGINE_ERR_NULL,
            "engine is NULL",
        );
        assert_error(engine_check(null()), ENGINE_ERR_NULL, "engine is NULL");
        assert_error(
            engine_shutdown(null(), true),
            ENGINE_ERR_NULL,
            "engine is NULL",
        );
        let s = engine_tokenize(e.0, "a".as_ptr().cast(), 1, true, null_mut(), 0, null_mut());
        assert_error(s, ENGINE_ERR_NULL, "num_tokens is NULL");
        let s = engine_tokenize(e.0, "a".as_ptr().cast(), 1, true, null_mut(), 4, &mut n);
        assert_error(
            s,
            ENGINE_ERR_NULL,
            "tokens (with a non-zero capacity) is NULL",
        );
        let s = engine_detokenize(e.0, null(), 2, true, null_mut(), 0, &mut n);
        assert_error(s, ENGINE_ERR_NULL, "tokens is NULL");
        let s = engine_apply_chat_template(e.0, null(), 0, true, null_mut(), 0, &mut n);
        assert_error(s, ENGINE_ERR_NULL, "messages_json is NULL");
        assert_error(
            engine_options_new(null_mut()),
            ENGINE_ERR_NULL,
            "out is NULL",
        );
        let key = CString::new("dtype").unwrap();
        let s = engine_options_set(null_mut(), key.as_ptr(), key.as_ptr());
        assert_error(s, ENGINE_ERR_NULL, "options is NULL");
        let o = options(&[]);
        assert_error(
            engine_options_set(o, null(), key.as_ptr()),
            ENGINE_ERR_NULL,
            "key is NULL",
        );
        assert_error(
            engine_options_set(o, key.as_ptr(), null()),
            ENGINE_ERR_NULL,
            "value is NULL",
        );
        assert_error(
            engine_options_set_progress(null_mut(), None, null_mut()),
            ENGINE_ERR_NULL,
            "options is NULL",
        );
        assert_error(
            engine_new(null(), &mut null_mut()),
            ENGINE_ERR_NULL,
            "options is NULL",
        );
        assert_error(engine_new(o, null_mut()), ENGINE_ERR_NULL, "out is NULL");
        engine_options_free(o);
        engine_options_free(null_mut());
        engine_free(null_mut());
    }
    assert_eq!(id, 0, "failed submits leave the id alone");
    e.assert_serves();
}

#[test]
fn invalid_utf8_is_reported_with_its_position() {
    let e = Engine::new();
    let bad = b"{\"prompt\": \"caf\xe9\"}";
    let mut id = 0;
    // SAFETY: a live engine and `bad.len()` readable bytes; the request is refused,
    // so the callback never sees the NULL user_data.
    let s = unsafe {
        engine_submit(
            e.0,
            bad.as_ptr().cast(),
            bad.len(),
            Some(on_event),
            null_mut(),
            &mut id,
        )
    };
    assert_error(
        s,
        ENGINE_ERR_UTF8,
        "request_json is not valid UTF-8 (at byte 15)",
    );
    let mut n = 0;
    // SAFETY: `bad` has the bytes; `n` is writable.
    let s = unsafe {
        engine_tokenize(
            e.0,
            bad.as_ptr().cast(),
            bad.len(),
            true,
            null_mut(),
            0,
            &mut n,
        )
    };
    assert_error(s, ENGINE_ERR_UTF8, "text is not valid UTF-8");
    let o = options(&[]);
    let key = CString::new("model").unwrap();
    let value = CString::new(&b"dir\xff"[..]).unwrap();
    // SAFETY: a live options object and NUL-terminated strings.
    let s = unsafe { engine_options_set(o, key.as_ptr(), value.as_ptr()) };
    assert_error(
        s,
        ENGINE_ERR_UTF8,
        "the value is not valid UTF-8 (at byte 3)",
    );
    // SAFETY: live, freed once.
    unsafe { engine_options_free(o) };
    e.assert_serves();
}

#[test]
fn malformed_json_is_an_error() {
    let e = Engine::new();
    for (body, needle) in [
        (r#"{"prompt": "x""#, "the request is not valid JSON"),
        ("", "the request is not valid JSON"),
        (
            r#"["prompt"]"#,
            "the request must be a JSON object, got an array",
        ),
        (
            r#"{"prompt": {"text": "x"}}"#,
            "field \"prompt\": expected text or an array of token ids",
        ),
        (
            r#"{"prompt": "x", "temperature": "hot"}"#,
            "field \"temperature\": invalid type: string \"hot\"",
        ),
        (
            r#"{"prompt": "x", "early_stopping": "sometimes"}"#,
            "field \"early_stopping\": expected true, false or \"never\"",
        ),
        (
            r#"{"prompt": "x", "stop": ["a", 1]}"#,
            "field \"stop\": expected a string or an array of strings",
        ),
        (
            r#"{"prompt": "x", "logit_bias": {"abc": 1}}"#,
            "field \"logit_bias\": key \"abc\" is not a token id",
        ),
        (
            r#"{"prompt": "x", "n": "two"}"#,
            "field \"n\": invalid type",
        ),
        (r#"{"max_tokens": 3}"#, "needs a \"prompt\""),
    ] {
        let (s, _, _) = e.submit(body);
        assert_error(s, ENGINE_ERR_JSON, needle);
        e.assert_serves();
    }
}

#[test]
fn unknown_fields_are_named() {
    let e = Engine::new();
    let (s, _, _) = e.submit(r#"{"prompt": "x", "max_tokens": 2, "frobnicate": true}"#);
    assert_error(s, ENGINE_ERR_JSON, "unknown field \"frobnicate\"");
    e.assert_serves();
    let (s, _, _) = e.submit(r#"{"prompt": "x", "add_generation_prompt": true}"#);
    assert_error(
        s,
        ENGINE_ERR_JSON,
        "\"add_generation_prompt\" applies to \"messages\" requests only",
    );
    e.assert_serves();
}

#[test]
fn unknown_and_finished_request_ids_are_errors() {
    let e = Engine::new();
    // SAFETY: a live engine.
    let s = unsafe { engine_abort(e.0, 424242) };
    assert_error(
        s,
        ENGINE_ERR_UNKNOWN_REQUEST,
        "request 424242 is unknown or already finished",
    );
    e.assert_serves();
    let done = e.generate(r#"{"prompt": "Hi", "max_tokens": 1}"#);
    let id = done["request_id"].as_u64().unwrap();
    // SAFETY: a live engine.
    let s = unsafe { engine_abort(e.0, id) };
    assert_error(
        s,
        ENGINE_ERR_UNKNOWN_REQUEST,
        &format!("request {id} is unknown or already finished"),
    );
    e.assert_serves();
}

#[test]
fn out_of_range_parameters_get_vllm_messages() {
    let e = Engine::new();
    for (fields, message) in [
        (
            r#""temperature": -1"#,
            "temperature must be non-negative, got -1.0.",
        ),
        (r#""top_p": 0"#, "top_p must be in (0, 1], got 0.0."),
        (
            r#""top_k": -2"#,
            "top_k must be 0 (disable), or at least 1, got -2.",
        ),
        (r#""min_p": 1.5"#, "min_p must be in [0, 1], got 1.5."),
        (
            r#""max_tokens": 0"#,
            "max_tokens must be at least 1, got 0.",
        ),
        (
            r#""max_tokens": -3"#,
            "max_tokens must be at least 1, got -3.",
        ),
        (r#""n": 0"#, "n must be at least 1, got 0."),
        (r#""n": -1"#, "n must be at least 1, got -1."),
        (
            r#""n": 3, "best_of": 2"#,
            "best_of must be greater than or equal to n, got n=3 and best_of=2.",
        ),
        (
            r#""presence_penalty": 2.5"#,
            "presence_penalty must be in [-2, 2], got 2.5.",
        ),
        (
            r#""repetition_penalty": 0"#,
            "repetition_penalty must be greater than zero, got 0.0.",
        ),
        (
            r#""min_tokens": 5, "max_tokens": 2"#,
            "min_tokens must be less than or equal to max_tokens=2, got 5.",
        ),
        (
            r#""logprobs": -1"#,
            "logprobs must be non-negative, got -1.",
        ),
        (r#""logprobs": 21"#, "Cannot request more than 20 logprobs."),
        (r#""stop": [""]"#, "stop cannot contain an empty string."),
        (
            r#""use_beam_search": true, "best_of": 1"#,
            "best_of must be greater than 1 when using beam search. Got 1.",
        ),
        (
            r#""temperature": 0, "n": 2"#,
            "best_of must be 1 when using greedy sampling.Got 2.",
        ),
        (
            r#""logit_bias": {"5000": 1}"#,
            "logit_bias token id 5000 is out of range for a vocabulary of 3000.",
        ),
    ] {
        let body = format!(r#"{{"prompt": "x", {fields}}}"#);
        let (s, id, _) = e.submit(&body);
        assert_eq!(s, ENGINE_ERR_INVALID_ARGUMENT, "{body}: {}", last_error());
        assert_eq!(last_error(), message, "{body}");
        assert_eq!(id, 0);
        e.assert_serves();
    }
    for (body, needle) in [
        (
            r#"{"prompt": [1, 5, 99999]}"#,
            "token id 99999 is out of range for a vocabulary of 3000",
        ),
        (r#"{"prompt": []}"#, "the prompt is empty"),
    ] {
        let (s, _, _) = e.submit(body);
        assert_error(s, ENGINE_ERR_INVALID_ARGUMENT, needle);
        e.assert_serves();
    }
}

/// Waits for a request's events, up to and including the final one.
fn events(rx: mpsc::Receiver<serde_json::Value>) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    loop {
        let ev = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the final event");
        let last = ev["kind"] == "final";
        all.push(ev);
        if last {
            return all;
        }
    }
}

#[test]
fn every_sampling_parameter_reaches_the_engine() {
    let e = Engine::new();
    // best_of 3, n 2: two results, best first, each with logprobs of the sampled
    // token and the top 2; prompt logprobs in the first event.
    let (s, _, rx) = e.submit(
        r#"{"prompt": "Hello there", "n": 2, "best_of": 3, "temperature": 0.8, "seed": 3,
            "max_tokens": 4, "ignore_eos": true, "logprobs": 2, "prompt_logprobs": 1,
            "presence_penalty": 0.5, "frequency_penalty": 0.5, "repetition_penalty": 1.2,
            "top_p": 0.9, "top_k": 50, "min_p": 0.01, "logit_bias": {"7": -100},
            "skip_special_tokens": false, "spaces_between_special_tokens": false,
            "truncate_prompt_tokens": 2, "min_tokens": 1}"#,
    );
    assert_eq!(s, ENGINE_OK, "{}", last_error());
    let all = events(rx);
    let last = all.last().unwrap();
    let results = last["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{last}");
    assert!(results[0]["cumulative_logprob"].as_f64() >= results[1]["cumulative_logprob"].as_f64());
    assert_eq!(
        last["usage"]["prompt_tokens"], 2,
        "truncate_prompt_tokens: {last}"
    );
    assert_eq!(last["usage"]["completion_tokens"], 8, "{last}");
    let first_logprobs = &results[0]["logprobs"][0];
    assert!(
        first_logprobs.as_array().unwrap().len() >= 2,
        "{first_logprobs}"
    );
    assert_eq!(
        all[0]["prompt_logprobs"][0],
        serde_json::Value::Null,
        "{}",
        all[0]
    );
    assert!(all[0]["prompt_logprobs"][1].is_array(), "{}", all[0]);
    for ev in &all {
        for r in ev["results"].as_array().into_iter().flatten() {
            assert!(
                !r["token_ids"].as_array().unwrap().contains(&7.into()),
                "logit_bias"
            );
        }
    }

    // A stop string ends the text and is reported as the stop reason.
    let ev = e
        .generate(r#"{"prompt": "Hello", "max_tokens": 20, "temperature": 0, "ignore_eos": true}"#);
    let text = ev["results"][0]["text"].as_str().unwrap().to_string();
    let stop: String = text.chars().skip(2).take(2).collect();
    assert!(!stop.trim().is_empty(), "{text:?}");
    let body = serde_json::json!({
        "prompt": "Hello", "max_tokens": 20, "temperature": 0, "ignore_eos": true, "stop": stop,
    });
    let ev = e.generate(&body.to_string());
    assert_eq!(ev["finish_reason"], "stop", "{ev}");
    assert_eq!(ev["results"][0]["stop_reason"], stop.as_str(), "{ev}");
    assert!(
        !ev["results"][0]["text"].as_str().unwrap().contains(&stop),
        "{ev}"
    );

    // max_tokens null: up to the model's length limit, which, as in vLLM, stops a
    // sequence once it is longer than that: 3 + 62 tokens for a limit of 64.
    let e = Engine::with(&[("max_model_len", "64")]);
    let ev = e.generate(
        r#"{"prompt": [1, 5, 9], "max_tokens": null, "temperature": 0, "ignore_eos": true}"#,
    );
    assert_eq!(ev["finish_reason"], "length", "{}", ev["usage"]);
    assert_eq!(ev["usage"]["completion_tokens"], 62, "{}", ev["usage"]);
}

#[test]
fn a_model_dir_that_does_not_load_is_an_error() {
    let missing = fixture_dir("no-such-model").display().to_string();
    let broken = tempfile::tempdir().unwrap();
    std::fs::write(broken.path().join("config.json"), "{ not json").unwrap();
    let broken_dir = broken.path().display().to_string();
    for (model, needle) in [
        (missing.as_str(), "no-such-model/config.json"),
        (broken_dir.as_str(), "config.json: invalid JSON"),
    ] {
        let o = options(&[("model", model)]);
        let mut e = null_mut();
        // SAFETY: a live options object and a writable pointer.
        let s = unsafe { engine_new(o, &mut e) };
        assert_error(s, ENGINE_ERR_MODEL, needle);
        assert!(
            last_error().starts_with("cannot load the model in"),
            "{}",
            last_error()
        );
        assert!(e.is_null(), "no engine on failure");
        // SAFETY: live, freed once.
        unsafe { engine_options_free(o) };
    }
    let o = options(&[]);
    let mut e = null_mut();
    // SAFETY: as above.
    let s = unsafe { engine_new(o, &mut e) };
    assert_error(
        s,
        ENGINE_ERR_INVALID_ARGUMENT,
        "option \"model\" is not set",
    );
    // SAFETY: live, freed once.
    unsafe { engine_options_free(o) };
    Engine::new().assert_serves();
}

#[test]
fn bad_options_are_named() {
    let o = options(&[]);
    let set = |k: &str, v: &str| {
        let (k, v) = (CString::new(k).unwrap(), CString::new(v).unwrap());
        // SAFETY: a live options object and NUL-terminated strings.
        unsafe { engine_options_set(o, k.as_ptr(), v.as_ptr()) }
    };
    assert_error(
        set("device", "cuda"),
        ENGINE_ERR_UNSUPPORTED,
        "\"cuda\" is not supported in this build",
    );
    assert_error(
        set("colour", "blue"),
        ENGINE_ERR_INVALID_ARGUMENT,
        "unknown option \"colour\"",
    );
    assert_error(
        set("block_size", "7"),
        ENGINE_ERR_INVALID_ARGUMENT,
        "must be 8, 16 or 32, got 7",
    );
    assert_error(
        set("max_num_seqs", "-1"),
        ENGINE_ERR_INVALID_ARGUMENT,
        "expected a positive integer, got \"-1\"",
    );
    assert_error(
        set("dtype", "float8"),
        ENGINE_ERR_INVALID_ARGUMENT,
        "unknown dtype \"float8\"",
    );
    assert_error(
        set("enable_prefix_caching", "maybe"),
        ENGINE_ERR_INVALID_ARGUMENT,
        "expected true or false",
    );
    assert_eq!(set("device", "cpu"), ENGINE_OK);
    assert_eq!(
        set("max-num-seqs", "4"),
        ENGINE_OK,
        "vLLM's flag spelling works too"
    );
    // SAFETY: live, freed once.
    unsafe { engine_options_free(o) };
}

#[test]
fn kv_cache_dtypes_are_checked_and_fp8_serves_on_the_cpu() {
    let model = fixture_dir("tiny-llama").display().to_string();
    let o = options(&[("model", model.as_str())]);
    let set = |k: &str, v: &str| {
        let (k, v) = (CString::new(k).unwrap(), CString::new(v).unwrap());
        // SAFETY: a live options object and NUL-terminated strings.
        unsafe { engine_options_set(o, k.as_ptr(), v.as_ptr()) }
    };
    assert_error(
        set("kv_cache_dtype", "int4"),
        ENGINE_ERR_INVALID_ARGUMENT,
        "unknown dtype \"int4\"",
    );
    assert_error(
        set("kv-cache-dtype", "fp8_e3m4"),
        ENGINE_ERR_INVALID_ARGUMENT,
        "fp8, fp8_e4m3 or fp8_e5m2",
    );
    // SAFETY: live, freed once.
    unsafe { engine_options_free(o) };
    for kv in ["fp8", "fp8_e5m2", "bfloat16"] {
        Engine::with(&[("kv_cache_dtype", kv)]).assert_serves();
    }
}

#[test]
fn small_buffers_and_unset_struct_sizes_are_errors() {
    let e = Engine::new();
    let text = "Hello, world";
    let mut ids = [0u32; 2];
    let mut n = 0;
    // SAFETY: `ids` has room for 2, `n` is writable.
    let s = unsafe {
        engine_tokenize(
            e.0,
            text.as_ptr().cast(),
            text.len(),
            true,
            ids.as_mut_ptr(),
            2,
            &mut n,
        )
    };
    assert_error(s, ENGINE_ERR_BUFFER_TOO_SMALL, "the buffer holds 2");
    assert!(n > 2);
    assert_eq!(ids, [0, 0], "nothing written");
    let mut buf = [0 as c_char; 4];
    let many = [300u32, 301, 302, 303];
    // SAFETY: `many` has 4 ids, `buf` 4 bytes.
    let s = unsafe { engine_detokenize(e.0, many.as_ptr(), 4, true, buf.as_mut_ptr(), 4, &mut n) };
    assert_error(s, ENGINE_ERR_BUFFER_TOO_SMALL, "the text needs");
    let mut stats = engine_stats_t::default();
    // SAFETY: `stats` is writable; its struct_size is 0, which is the error.
    let s = unsafe { engine_stats_get(e.0, &mut stats) };
    assert_error(s, ENGINE_ERR_INVALID_ARGUMENT, "struct_size is 0");
    e.assert_serves();
}

#[test]
fn chat_requests_render_and_bad_chats_are_errors() {
    let e = Engine::new();
    let ev = e.generate(r#"{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}"#);
    assert!(ev["usage"]["prompt_tokens"].as_u64().unwrap() > 2, "{ev}");
    let (s, _, _) = e.submit(r#"{"messages": "Hi"}"#);
    assert_error(
        s,
        ENGINE_ERR_JSON,
        "field \"messages\": expected an array of message objects, got a string",
    );
    let (s, _, _) = e.submit(r#"{"messages": [{"role": "user", "content": "Hi"}], "add_generation_prompt": true, "continue_final_message": true}"#);
    assert_error(
        s,
        ENGINE_ERR_INVALID_ARGUMENT,
        "continue_final_message and add_generation_prompt are not compatible",
    );
    e.assert_serves();
}

/// What a callback saw when it called engine_shutdown and engine_free.
static FROM_CALLBACK: Mutex<Vec<(engine_status, String)>> = Mutex::new(Vec::new());

unsafe extern "C" fn shutdown_from_callback(user_data: *mut c_void, event: *const engine_event_t) {
    let engine = user_data as *mut engine_t;
    // SAFETY: the event is valid during the call.
    if unsafe { (*event).kind } != engine_event_kind::ENGINE_EVENT_FINAL {
        return;
    }
    // SAFETY: the engine is live (the test frees it only after this request ends).
    let status = unsafe { engine_shutdown(engine, false) };
    let shutdown = (status, last_error());
    // SAFETY: engine_free refuses to run here, so the engine stays live.
    unsafe { engine_free(engine) };
    let free = (ENGINE_ERR_WRONG_THREAD, last_error());
    FROM_CALLBACK.lock().unwrap().extend([shutdown, free]);
}

#[test]
fn shutdown_and_free_refuse_to_run_inside_a_callback() {
    let e = Engine::new();
    let body = r#"{"prompt": "Hi", "max_tokens": 1}"#;
    // SAFETY: a live engine that outlives the request, a conforming callback.
    let s = unsafe {
        engine_submit(
            e.0,
            body.as_ptr().cast(),
            body.len(),
            Some(shutdown_from_callback),
            e.0.cast(),
            null_mut(),
        )
    };
    assert_eq!(s, ENGINE_OK);
    for _ in 0..600 {
        if FROM_CALLBACK.lock().unwrap().len() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = FROM_CALLBACK.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "the callback ran");
    assert_eq!(seen[0].0, ENGINE_ERR_WRONG_THREAD);
    assert!(seen[0]
        .1
        .contains("engine_shutdown cannot be called from an event callback"));
    assert!(seen[1]
        .1
        .contains("engine_free cannot be called from an event callback"));
    e.assert_serves();
}

#[test]
fn a_stopped_engine_rejects_requests_but_still_answers() {
    let e = Engine::new();
    e.assert_serves();
    // SAFETY: a live engine.
    assert_eq!(unsafe { engine_check(e.0) }, ENGINE_OK);
    // SAFETY: a live engine.
    assert_eq!(unsafe { engine_shutdown(e.0, true) }, ENGINE_OK);
    let (s, _, _) = e.submit(r#"{"prompt": "x"}"#);
    assert_error(s, ENGINE_ERR_STOPPED, "the engine is shutting down");
    // SAFETY: a live engine.
    let s = unsafe { engine_check(e.0) };
    assert_error(s, ENGINE_ERR_STOPPED, "the engine is shutting down");
    let mut stats = engine_stats_t {
        struct_size: std::mem::size_of::<engine_stats_t>() as u32,
        ..Default::default()
    };
    // SAFETY: a live engine and a writable struct with its size set.
    assert_eq!(unsafe { engine_stats_get(e.0, &mut stats) }, ENGINE_OK);
    assert_eq!(stats.finished_length, 1);
    assert_eq!(stats.generation_tokens, 2);
}

/// What `abort_from_callback` saw.
#[derive(Debug, PartialEq)]
enum Seen {
    AbortStatus(engine_status),
    Final(engine_finish_reason),
}

/// Aborts its own request from inside the callback at the first delta.
unsafe extern "C" fn abort_from_callback(user_data: *mut c_void, event: *const engine_event_t) {
    // SAFETY: user_data is the test's (engine, sender) pair, alive until the
    // engine has shut down; the event is valid during the call.
    let ((engine, tx), ev) = unsafe {
        (
            &*(user_data as *const (usize, Mutex<Sender<Seen>>)),
            &*event,
        )
    };
    let seen = match ev.kind {
        engine_event_kind::ENGINE_EVENT_DELTA if ev.completion_tokens == 1 => {
            // SAFETY: the engine is live; engine_abort may be called from a callback.
            Seen::AbortStatus(unsafe { engine_abort(*engine as *const engine_t, ev.request_id) })
        }
        engine_event_kind::ENGINE_EVENT_FINAL => Seen::Final(ev.finish_reason),
        _ => return,
    };
    let _ = tx.lock().unwrap().send(seen);
}

#[test]
fn a_callback_may_abort_its_own_request() {
    let e = Engine::new();
    let (tx, rx) = mpsc::channel::<Seen>();
    let pair = Box::new((e.0 as usize, Mutex::new(tx)));
    let body = r#"{"prompt": "Hi", "max_tokens": 500, "ignore_eos": true}"#;
    // SAFETY: a live engine; `pair` outlives every callback (it is dropped after
    // the engine has shut down).
    let s = unsafe {
        engine_submit(
            e.0,
            body.as_ptr().cast(),
            body.len(),
            Some(abort_from_callback),
            &*pair as *const _ as *mut c_void,
            null_mut(),
        )
    };
    assert_eq!(s, ENGINE_OK, "{}", last_error());
    let wait = || rx.recv_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(wait(), Seen::AbortStatus(ENGINE_OK));
    assert_eq!(
        wait(),
        Seen::Final(engine_finish_reason::ENGINE_FINISH_ABORT)
    );
    e.assert_serves();
    // SAFETY: a live engine; no callback runs after this, so `pair` may go.
    assert_eq!(unsafe { engine_shutdown(e.0, false) }, ENGINE_OK);
    drop(pair);
}

#[test]
fn the_logprobs_cap_is_an_engine_option() {
    let e = Engine::with(&[("max_logprobs", "2")]);
    let (s, _, _) = e.submit(r#"{"prompt": "x", "logprobs": 3}"#);
    assert_error(
        s,
        ENGINE_ERR_INVALID_ARGUMENT,
        "Cannot request more than 2 logprobs.",
    );
    let (s, _, _) = e.submit(r#"{"prompt": "x", "prompt_logprobs": 3}"#);
    assert_error(
        s,
        ENGINE_ERR_INVALID_ARGUMENT,
        "Cannot request more than 2 logprobs.",
    );
    // At the cap: the sampled token and the top 2 (one entry fewer when the
    // sampled token is among them).
    let ev = e.generate(r#"{"prompt": "x", "logprobs": 2, "max_tokens": 1}"#);
    let entries = ev["results"][0]["logprobs"][0].as_array().unwrap().len();
    assert!((2..=3).contains(&entries), "{ev}");
}
