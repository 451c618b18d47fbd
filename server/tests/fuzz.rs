//! A fuzz target over what a client sends the server (issue 13): request bodies
//! for both APIs and /tokenize built by proptest from vLLM's field names and
//! hostile values (tests/fuzz/strategies.rs), sometimes cut short or with a
//! byte changed. The property: every answer is a 2xx or a 4xx with an
//! OpenAI-shaped error body, never a 5xx or a dropped connection; afterwards the
//! server is healthy, nothing runs and no KV block is held.
//!
//! Bounded for CI: a fixed seed and `PROPTEST_CASES` cases (default 256).

mod common;
#[path = "../../tests/fuzz/strategies.rs"]
mod strategies;

use std::time::{Duration, Instant};

use common::Server;
use proptest::prelude::*;
use serde_json::{json, Value};
use strategies::{bytes_of, config, request, ABI_FIELDS, SERVER_FIELDS};

/// Where a body goes: the API its prompt or messages suit, or another route.
fn route(body: &Value, pick: u8) -> &'static str {
    match (pick % 8, body.get("messages").is_some()) {
        (0, _) => "/tokenize",
        (1, true) => "/v1/completions",
        (1, false) => "/v1/chat/completions",
        (_, true) => "/v1/chat/completions",
        (_, false) => "/v1/completions",
    }
}

#[test]
fn hostile_bodies_get_a_2xx_or_a_4xx() {
    // A short model length bounds the work of every accepted request.
    let s = Server::start(&["--max-model-len", "64", "--disable-log-requests"]);
    let fields = [ABI_FIELDS, SERVER_FIELDS].concat();
    let bodies = request(fields)
        .prop_map(|mut r| {
            if let Some(m) = r.as_object_mut() {
                m.entry("model").or_insert(json!("demo"));
            }
            r
        })
        .prop_flat_map(|r| (Just(r.clone()), bytes_of(r), any::<u8>()));
    proptest!(config(), |((body, bytes, pick) in bodies)| {
        let path = route(&body, pick);
        let r = s.request("POST", path, &[("Content-Type", "application/json")], &bytes);
        let shown = String::from_utf8_lossy(&bytes);
        prop_assert!(
            (200..300).contains(&r.status) || (400..500).contains(&r.status),
            "{path} answered {} to {shown}: {}", r.status, r.text()
        );
        if r.status >= 400 {
            let e = r.json();
            prop_assert!(e["error"]["message"].is_string(), "{path}: {e} for {shown}");
        }
    });
    assert_eq!(s.get("/health").status, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.metric("vllm:num_requests_running") != 0.0
        || s.metric("vllm:gpu_cache_usage_perc") != 0.0
    {
        assert!(
            Instant::now() < deadline,
            "requests left running or KV blocks held"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = s.post(
        "/v1/completions",
        &json!({"model": "demo", "prompt": "Hello", "max_tokens": 2, "temperature": 0}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}
