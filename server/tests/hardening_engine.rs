//! Issue 13, the engine's findings through the server: a large JSON schema, a
//! huge n or best_of, a request the KV cache cannot hold, absurd sizes at
//! start-up and a model without tokenizer.json. Nothing may take the process
//! down; each is a 400 (or exit 1 at start-up) naming the limit.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Server;
use serde_json::{json, Value};

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("p{i}")).collect()
}

/// The server answers, and a greedy request still gives its output.
fn assert_serves(s: &Server) {
    assert_eq!(s.get("/health").status, 200);
    let r = s.post(
        "/v1/completions",
        &json!({"model": "demo", "prompt": "Hello", "max_tokens": 2, "temperature": 0}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Finding 1: "thread 'tokio-rt-worker' has overflowed its stack", SIGABRT.
#[test]
fn large_json_schemas_get_an_answer_on_both_apis() {
    let s = Server::start(&["--disable-log-requests"]);
    let required = json!({"type": "object", "required": names(4500)});
    let mut props = serde_json::Map::new();
    for n in names(5000) {
        props.insert(n, json!({"type": "integer"}));
    }
    let props = json!({"type": "object", "properties": props});
    let over = json!({"type": "object", "required": names(20000)});
    let constraints: Vec<(&str, Value)> = vec![
        ("guided_json", required.clone()),
        ("guided_json", Value::String(required.to_string())),
        ("guided_json", props.clone()),
        (
            "response_format",
            json!({"type": "json_schema", "json_schema": {"name": "big", "schema": props}}),
        ),
        ("guided_json", over),
    ];
    for (i, (field, value)) in constraints.into_iter().enumerate() {
        for (path, mut body) in [
            (
                "/v1/completions",
                json!({"model": "demo", "prompt": "x", "max_tokens": 2}),
            ),
            (
                "/v1/chat/completions",
                json!({"model": "demo", "max_tokens": 2,
                       "messages": [{"role": "user", "content": "x"}]}),
            ),
        ] {
            body[field] = value.clone();
            let r = s.post(path, &body);
            if i == 4 || r.status != 200 {
                let message = r.error(400);
                assert!(message.contains("limit"), "{message}");
            }
        }
    }
    assert_serves(&s);
}

/// Finding 2: "memory allocation of 8522825728 bytes failed", SIGABRT.
#[test]
fn huge_n_and_best_of_are_400s_naming_max_num_seqs() {
    let s = Server::start(&["--disable-log-requests"]);
    for (path, extra) in [
        ("/v1/completions", json!({"n": 4294967296u64})),
        ("/v1/completions", json!({"n": 10000000})),
        ("/v1/chat/completions", json!({"best_of": 1000000000})),
        ("/v1/chat/completions", json!({"n": 10000000})),
    ] {
        let mut body = json!({"model": "demo", "prompt": "x", "temperature": 1,
                              "messages": [{"role": "user", "content": "x"}]});
        if path == "/v1/completions" {
            body.as_object_mut().unwrap().remove("messages");
        } else {
            body.as_object_mut().unwrap().remove("prompt");
        }
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let message = s.post(path, &body).error(400);
        assert!(message.contains("max_num_seqs (256)"), "{message}");
    }
    assert_serves(&s);
}

/// Finding 7: "abort" is no OpenAI finish_reason.
#[test]
fn a_small_cache_gives_400s_up_front_and_length_later() {
    let s = Server::start(&["--num-kv-blocks", "20", "--disable-log-requests"]);
    let prompt: Vec<u32> = (0..200).map(|i| 3 + i % 50).collect();
    let r = s.post(
        "/v1/completions",
        &json!({"model": "demo", "prompt": prompt, "max_tokens": 200, "ignore_eos": true}),
    );
    let message = r.error(400);
    assert!(message.contains("20 blocks of 16 tokens"), "{message}");
    let r = s.post(
        "/v1/completions",
        &json!({"model": "demo", "prompt": prompt, "max_tokens": null, "n": 4,
                "temperature": 1, "ignore_eos": true}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    for choice in r.json()["choices"].as_array().unwrap() {
        assert_eq!(choice["finish_reason"], "length", "{}", r.text());
    }
    assert_serves(&s);
}

/// Runs the server with `args` until it exits (at most a minute); its exit
/// code and everything it printed.
fn failed_start(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_engine-server"))
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args(args)
        // The bundled fixture, not the downloaded demo model (as common::Server).
        .env(
            "ENGINE_DEMO_MODEL",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny-llama"),
        )
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server did not exit with {args:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    (status.code(), out)
}

/// Finding 8: SIGABRT with a backtrace, or "internal error … (please report this)".
#[test]
fn absurd_sizes_exit_1_naming_the_size() {
    for (args, needle) in [
        (
            vec!["--kv-cache-memory", "1000GB"],
            "of memory this machine has",
        ),
        (
            vec!["--max-model-len", "2000000000"],
            "max_position_embeddings=2048",
        ),
        (
            vec!["--num-kv-blocks", "18446744073709551615"],
            "18446744073709551615 blocks",
        ),
    ] {
        let (code, out) = failed_start(&args);
        assert_eq!(code, Some(1), "{args:?}: {out}");
        assert!(out.contains(needle), "{args:?}: {out}");
        assert!(!out.contains("please report"), "{args:?}: {out}");
    }
}

/// Finding 10: refuse a model without tokenizer.json unless --skip-tokenizer-init.
#[test]
fn a_model_without_tokenizer_json_needs_skip_tokenizer_init() {
    let dir = std::env::temp_dir().join(format!("engine-no-tokenizer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny-llama");
    for entry in std::fs::read_dir(demo).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if entry.file_type().unwrap().is_file() && name != "tokenizer.json" {
            std::fs::copy(entry.path(), dir.join(name)).unwrap();
        }
    }
    let model = dir.display().to_string();
    let (code, out) = failed_start(&["--model", &model]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("--skip-tokenizer-init"), "{out}");
    let s = Server::start(&["--model", &model, "--skip-tokenizer-init"]);
    let r = s.post(
        "/v1/completions",
        &json!({"model": model, "prompt": [1, 5, 9], "max_tokens": 3, "ignore_eos": true}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["usage"]["completion_tokens"], 3);
    let message = s
        .post(
            "/v1/completions",
            &json!({"model": model, "prompt": "Hello", "max_tokens": 3}),
        )
        .error(400);
    assert!(message.contains("tokenizer"), "{message}");
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}
