//! Issue 13 at the C ABI: nothing a request or an option asks for may abort
//! the process. Each test names its finding; each failed (aborted the test
//! binary, or got the wrong status) before the fix.

use crate::common;

use std::path::Path;
use std::ptr::null_mut;
use std::time::Duration;

use common::c_engine::{assert_error, last_error, options, Engine};
use common::fixture_dir;
use engine::ffi::engine::*;
use engine::ffi::engine_status::{self, *};
use engine::ffi::options::*;

/// `engine_new` with these options (the fixture model unless "model" is given);
/// the status and the message. A created engine is freed.
fn try_new(pairs: &[(&str, &str)]) -> (engine_status, String) {
    let model = fixture_dir("tiny-llama").display().to_string();
    let mut all = vec![("model", model.as_str()), ("dtype", "float32")];
    all.extend_from_slice(pairs);
    let o = options(&all);
    let mut e = null_mut();
    // SAFETY: a live options object and a writable pointer.
    let s = unsafe { engine_new(o, &mut e) };
    let message = if s == ENGINE_OK {
        String::new()
    } else {
        last_error()
    };
    // SAFETY: live (or NULL), each freed once.
    unsafe {
        engine_free(e);
        engine_options_free(o);
    }
    (s, message)
}

/// The fixture model's files in a temporary directory, `edit` applied.
fn model_copy(edit: impl FnOnce(&Path)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture_dir("tiny-llama")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    edit(dir.path());
    dir
}

/// Finding 1: a schema of thousands of names overflowed the stack of the
/// submitting thread (a tokio worker has 2 MiB) and aborted the process. Here
/// the submitting thread has 1 MiB: the compile must run elsewhere.
#[test]
fn large_json_schemas_never_take_the_process_down() {
    let e = Engine::new();
    let names = |n: usize| (0..n).map(|i| format!("p{i}")).collect::<Vec<_>>();
    let required = serde_json::json!({"type": "object", "required": names(4500)});
    let mut properties = serde_json::Map::new();
    for name in names(5000) {
        properties.insert(name, serde_json::json!({"type": "integer"}));
    }
    let properties = serde_json::json!({"type": "object", "properties": properties});
    let too_many = serde_json::json!({"type": "object", "required": names(6000)});
    let bodies = [
        serde_json::json!({"prompt": "x", "max_tokens": 2, "guided_json": required}),
        serde_json::json!({"prompt": "x", "max_tokens": 2, "guided_json": required.to_string()}),
        serde_json::json!({"prompt": "x", "max_tokens": 2, "guided_json": properties}),
        serde_json::json!({"prompt": "x", "max_tokens": 2, "response_format":
            {"type": "json_schema", "json_schema": {"name": "big", "schema": properties}}}),
        serde_json::json!({"prompt": "x", "max_tokens": 2, "guided_json": too_many}),
    ];
    let engine_ptr = e.0 as usize;
    let outcomes: Vec<Result<(), (engine_status, String)>> = std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(move || {
            let e = std::mem::ManuallyDrop::new(Engine(engine_ptr as *mut engine_t));
            bodies
                .iter()
                .map(|b| e.run(&b.to_string()).map(|_| ()))
                .collect()
        })
        .unwrap()
        .join()
        .expect("the submitting thread survives");
    for outcome in &outcomes[..4] {
        if let Err((status, message)) = outcome {
            assert_eq!(*status, ENGINE_ERR_INVALID_ARGUMENT, "{message}");
            assert!(message.contains("limit"), "{message}");
        }
    }
    let Err((status, message)) = &outcomes[4] else {
        panic!("6000 names are over the limit")
    };
    assert_eq!(*status, ENGINE_ERR_INVALID_ARGUMENT);
    assert!(
        message.contains("guided_json") && message.contains("limit of 5000"),
        "{message}"
    );
    e.assert_serves();
}

/// Finding 2: n and best_of sized the per-sequence state before anything
/// bounded them (an allocation failure aborted the process).
#[test]
fn huge_n_and_best_of_are_refused_naming_max_num_seqs() {
    let e = Engine::with(&[("max_num_seqs", "8")]);
    for (body, needle) in [
        (
            r#"{"prompt": "x", "n": 4294967296, "temperature": 1}"#,
            "n must be at most max_num_seqs (8)",
        ),
        (
            r#"{"prompt": "x", "n": 10000000, "temperature": 1}"#,
            "got 10000000",
        ),
        (
            r#"{"prompt": "x", "best_of": 1000000000, "temperature": 1}"#,
            "best_of must be at most max_num_seqs (8)",
        ),
        (
            r#"{"prompt": "x", "n": 9, "best_of": 9, "use_beam_search": true, "temperature": 0}"#,
            "beam width",
        ),
    ] {
        let (s, _, _) = e.submit(body);
        assert_error(s, ENGINE_ERR_INVALID_ARGUMENT, needle);
    }
    // The limit itself is fine.
    let ev = e.generate(r#"{"prompt": "x", "n": 8, "temperature": 1, "max_tokens": 2}"#);
    assert_eq!(ev["results"].as_array().unwrap().len(), 8, "{ev}");
    e.assert_serves();
}

/// Finding 7: a request that can never fit the cache is refused up front with
/// the sizes; one cut by the cache later ends "length", never "abort".
#[test]
fn requests_the_cache_cannot_hold_are_refused_or_end_with_length() {
    // 20 blocks of 16: 320 tokens.
    let e = Engine::with(&[("num_kv_blocks", "20")]);
    let prompt: Vec<u32> = (0..200).map(|i| 3 + i % 50).collect();
    let body = |extra: &str| {
        format!(
            r#"{{"prompt": {prompt:?}, "ignore_eos": true, "temperature": 1, "seed": 1{extra}}}"#
        )
    };
    let (s, _, _) = e.submit(&body(r#", "max_tokens": 200"#));
    assert_error(s, ENGINE_ERR_CAPACITY, "needs 25 KV cache blocks");
    assert!(
        last_error().contains("20 blocks of 16 tokens (320 tokens)"),
        "{}",
        last_error()
    );
    let (s, _, _) = e.submit(&body(r#", "max_tokens": 60, "n": 4"#));
    assert_error(s, ENGINE_ERR_CAPACITY, "4 sequences");
    let (s, _, _) = e.submit(&body(
        r#", "max_tokens": 60, "n": 2, "best_of": 3, "use_beam_search": true, "temperature": 0"#,
    ));
    assert_error(s, ENGINE_ERR_CAPACITY, "3 sequences");
    // What fits runs to its max_tokens.
    let ev = e.generate(&body(r#", "max_tokens": 100"#));
    assert_eq!(ev["finish_reason"], "length", "{ev}");
    assert_eq!(ev["usage"]["completion_tokens"], 100, "{ev}");
    // No max_tokens (or the whole context, as an OpenAI server fills it in):
    // the forks grow until the cache is full, then end "length".
    for extra in [
        r#", "max_tokens": null, "n": 4"#,
        r#", "max_tokens": null, "n": 1, "best_of": 3"#,
        r#", "max_tokens": 1848, "n": 2"#,
    ] {
        let ev = e.generate(&body(extra));
        for r in ev["results"].as_array().unwrap() {
            assert_eq!(r["finish_reason"], "length", "{ev}");
            assert!(!r["token_ids"].as_array().unwrap().is_empty(), "{ev}");
        }
    }
    let mut stats = engine_stats_t {
        struct_size: std::mem::size_of::<engine_stats_t>() as u32,
        ..Default::default()
    };
    // SAFETY: a live engine and a writable struct with its size set.
    assert_eq!(unsafe { engine_stats_get(e.0, &mut stats) }, ENGINE_OK);
    assert_eq!(stats.finished_abort, 0);
    assert_eq!(stats.kv_blocks_used, 0);
    e.assert_serves();
}

/// Findings 8 and 9: absurd sizes are ENGINE_ERR_INVALID_ARGUMENT naming the
/// size and what fits, not an abort or ENGINE_ERR_INTERNAL.
#[test]
fn absurd_sizes_fail_engine_new_cleanly() {
    let (s, m) = try_new(&[("num_kv_blocks", "18446744073709551615")]);
    assert_eq!(s, ENGINE_ERR_INVALID_ARGUMENT, "{m}");
    assert!(m.contains("18446744073709551615 blocks"), "{m}");
    let (s, m) = try_new(&[("kv_cache_bytes", "1000000000000")]);
    assert_eq!(s, ENGINE_ERR_INVALID_ARGUMENT, "{m}");
    assert!(m.contains("the KV cache") && m.contains("fit"), "{m}");
    let (s, m) = try_new(&[("max_model_len", "2000000000")]);
    assert_eq!(s, ENGINE_ERR_INVALID_ARGUMENT, "{m}");
    assert!(
        m.contains("2000000000") && m.contains("max_position_embeddings=2048"),
        "{m}"
    );
    let huge = model_copy(|dir| {
        let path = dir.join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config["max_position_embeddings"] = serde_json::json!(1u64 << 40);
        std::fs::write(&path, config.to_string()).unwrap();
    });
    let model = huge.path().display().to_string();
    let (s, m) = try_new(&[("model", &model)]);
    assert_eq!(s, ENGINE_ERR_INVALID_ARGUMENT, "{m}");
    assert!(m.contains("1099511627776"), "{m}");
    let (s, m) = try_new(&[
        ("model", &model),
        ("max_model_len", "512"),
        ("num_kv_blocks", "64"),
    ]);
    assert_eq!(s, ENGINE_OK, "{m}");
}

/// Finding 9: the header promises ENGINE_ERR_UNKNOWN_REQUEST for an abort of
/// a request already aborted.
#[test]
fn a_second_abort_of_the_same_request_is_unknown() {
    let e = Engine::new();
    let (s, id, rx) = e.submit(r#"{"prompt": "x", "max_tokens": 1000, "ignore_eos": true}"#);
    assert_eq!(s, ENGINE_OK, "{}", last_error());
    rx.recv_timeout(Duration::from_secs(60))
        .expect("a first delta");
    // SAFETY (both): a live engine.
    assert_eq!(
        unsafe { engine_abort(e.0, id) },
        ENGINE_OK,
        "{}",
        last_error()
    );
    let s = unsafe { engine_abort(e.0, id) };
    assert_error(s, ENGINE_ERR_UNKNOWN_REQUEST, &format!("request {id}"));
    let last = rx
        .iter()
        .find(|ev| ev["kind"] == "final")
        .expect("a final event");
    assert_eq!(last["finish_reason"], "abort", "{last}");
    e.assert_serves();
}

/// Finding 10: no tokenizer.json is a load error unless "skip_tokenizer_init"
/// is set; then token ids work and text is ENGINE_ERR_TOKENIZER.
#[test]
fn a_model_without_tokenizer_json_needs_skip_tokenizer_init() {
    let dir = model_copy(|dir| std::fs::remove_file(dir.join("tokenizer.json")).unwrap());
    let model = dir.path().display().to_string();
    let (s, m) = try_new(&[("model", &model)]);
    assert_eq!(s, ENGINE_ERR_MODEL, "{m}");
    assert!(
        m.contains("tokenizer.json") && m.contains("skip_tokenizer_init"),
        "{m}"
    );
    let e = Engine::with(&[("model", &model), ("skip-tokenizer-init", "true")]);
    let ev = e.generate(r#"{"prompt": [1, 5, 9], "max_tokens": 3, "ignore_eos": true}"#);
    assert_eq!(ev["usage"]["completion_tokens"], 3, "{ev}");
    let (s, _, _) = e.submit(r#"{"prompt": "Hello", "max_tokens": 3}"#);
    assert_error(s, ENGINE_ERR_TOKENIZER, "tokenizer");
}
