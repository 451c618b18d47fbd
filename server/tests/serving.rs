//! The server as a service: utility endpoints, the API key, HTTP errors, client
//! disconnects, concurrency and shutdown.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::{sse_events, Server};
use serde_json::{json, Value};

#[test]
fn utility_endpoints() {
    let s = Server::start(&[
        "--served-model-name",
        "demo",
        "alias",
        "--max-model-len",
        "128",
    ]);
    let health = s.get("/health");
    assert_eq!((health.status, health.body.len()), (200, 0));
    assert_eq!(
        s.get("/version").json()["version"],
        env!("CARGO_PKG_VERSION")
    );
    let models = s.get("/v1/models").json();
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["demo", "alias"]);
    assert_eq!(models["data"][1]["root"], "demo");
    assert_eq!(models["data"][0]["max_model_len"], 128);
    assert_eq!(s.get("/v1/models/alias").json()["id"], "alias");
    s.get("/v1/models/nope").error(404);
    // Either name works; responses carry the first.
    let v = s
        .post(
            "/v1/completions",
            &json!({"model": "alias", "prompt": "x", "max_tokens": 1}),
        )
        .json();
    assert_eq!(v["model"], "demo");
    // tokenize / detokenize round trip.
    let t = s
        .post(
            "/tokenize",
            &json!({"model": "demo", "prompt": "Hello world"}),
        )
        .json();
    assert_eq!(t["max_model_len"], 128);
    assert_eq!(t["count"], t["tokens"].as_array().unwrap().len());
    let no_special = s
        .post(
            "/tokenize",
            &json!({"prompt": "Hello world", "add_special_tokens": false}),
        )
        .json();
    assert_eq!(
        no_special["count"].as_u64().unwrap() + 1,
        t["count"].as_u64().unwrap(),
        "BOS"
    );
    let d = s
        .post(
            "/detokenize",
            &json!({"model": "demo", "tokens": no_special["tokens"]}),
        )
        .json();
    assert_eq!(d["prompt"], "Hello world");
    s.post("/detokenize", &json!({"tokens": [-1]})).error(400);
    s.post("/tokenize", &json!({"model": "nope", "prompt": "x"}))
        .error(404);
    // Metrics, with vLLM's names.
    let text = s.get("/metrics").text();
    for name in [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:num_preemptions_total",
        "vllm:gpu_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:request_success_total{finished_reason=\"length\"",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:time_per_output_token_seconds_bucket",
        "vllm:e2e_request_latency_seconds_count",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    assert!(s.metric("vllm:generation_tokens_total") >= 1.0);
    assert!(s.metric("vllm:e2e_request_latency_seconds_count") >= 1.0);
}

#[test]
fn http_errors_are_openai_shaped_and_harmless() {
    let s = Server::start(&[]);
    let message = s.get("/v1/nothing").error(404);
    assert!(message.contains("Not Found"), "{message}");
    let r = s.get("/v1/completions");
    r.error(405);
    assert_eq!(r.header("allow"), Some("POST"));
    let json = [("Content-Type", "application/json")];
    s.request("POST", "/v1/completions", &json, b"{not json")
        .error(400);
    s.request("POST", "/v1/completions", &json, b"").error(400);
    s.request("POST", "/v1/completions", &json, b"[1]")
        .error(400);
    let big = vec![b' '; 17 * 1024 * 1024];
    let message = s.request("POST", "/v1/completions", &json, &big).error(413);
    assert!(message.contains("16777216 bytes"), "{message}");
    assert_eq!(s.get("/health").status, 200);
}

#[test]
fn the_api_key_guards_v1() {
    let s = Server::start(&["--api-key", "sk-test"]);
    let body = json!({"model": "demo", "prompt": "x", "max_tokens": 1}).to_string();
    let post = |auth: Option<&str>| {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = auth {
            headers.push(("Authorization", a));
        }
        s.request("POST", "/v1/completions", &headers, body.as_bytes())
    };
    post(None).error(401);
    post(Some("Bearer wrong")).error(401);
    post(Some("sk-test")).error(401);
    assert_eq!(post(Some("Bearer sk-test")).status, 200);
    s.get("/v1/models").error(401);
    for open in ["/health", "/metrics", "/version"] {
        assert_eq!(s.get(open).status, 200, "{open}");
    }
}

/// Reads the SSE stream until `n` data events arrived.
fn read_events(stream: &mut std::net::TcpStream, n: usize) -> String {
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while seen.matches("data: ").count() < n {
        let got = stream.read(&mut buf).unwrap();
        assert!(got > 0, "stream ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..got]));
    }
    seen
}

fn wait_idle(s: &Server) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.metric("vllm:kv_cache_blocks_used") != 0.0
        || s.metric("vllm:num_requests_running") != 0.0
    {
        assert!(Instant::now() < deadline, "{}", s.get("/metrics").text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_client_disconnect_aborts_and_frees_the_blocks() {
    let s = Server::start(&["--max-model-len", "2048"]);
    let long = |stream: bool| {
        json!({"model": "demo", "prompt": "Go on and on", "max_tokens": 2000, "ignore_eos": true,
               "stream": stream})
    };
    // Streaming: read a few chunks, then hang up.
    let mut conn = s.post_open("/v1/completions", &long(true));
    read_events(&mut conn, 3);
    assert!(
        s.metric("vllm:kv_cache_blocks_used") > 0.0,
        "the request holds blocks"
    );
    drop(conn);
    wait_idle(&s);
    // Aborted requests are no success (vLLM counts finished ones only).
    assert!(!s
        .get("/metrics")
        .text()
        .contains("finished_reason=\"abort\""));
    assert_eq!(s.logged("Aborted request cmpl-").len(), 1);
    // Not streaming: hang up while it generates.
    let conn = s.post_open("/v1/completions", &long(false));
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.metric("vllm:kv_cache_blocks_used") == 0.0 {
        assert!(Instant::now() < deadline, "the request never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(conn);
    wait_idle(&s);
    assert_eq!(s.logged("Aborted request cmpl-").len(), 2);
    assert_eq!(
        s.metric("vllm:request_success_total{finished_reason=\"length\""),
        0.0
    );
    assert_eq!(s.get("/health").status, 200);
}

#[test]
fn concurrent_streams_equal_their_solo_greedy_outputs() {
    let s = Server::start(&["--max-model-len", "512", "--disable-log-requests"]);
    let body = |i: usize, stream: bool| {
        json!({"model": "demo", "prompt": format!("Request {i}: tell me about {}", i * 7),
               "max_tokens": 8 + i % 5, "temperature": 0, "ignore_eos": true, "stream": stream})
    };
    let solo: Vec<String> = (0..32)
        .map(|i| {
            let v = s.post("/v1/completions", &body(i, false)).json();
            v["choices"][0]["text"].as_str().unwrap().to_string()
        })
        .collect();
    let handles: Vec<_> = (0..32)
        .map(|i| {
            let port = s.port;
            let body = body(i, true).to_string();
            std::thread::spawn(move || {
                let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                use std::io::Write;
                write!(
                    conn,
                    "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
                let mut raw = Vec::new();
                conn.read_to_end(&mut raw).unwrap();
                String::from_utf8_lossy(&raw).into_owned()
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let raw = h.join().unwrap();
        let (_, body) = raw.split_once("\r\n\r\n").unwrap();
        // Undo chunked transfer encoding: keep only the SSE lines.
        let events: String = body
            .split("\r\n")
            .filter(|l| l.starts_with("data: ") || l.is_empty())
            .map(|l| format!("{l}\n"))
            .collect();
        let events = sse_events(&events.replace("\n\n\n", "\n\n"));
        let text: String = events
            .iter()
            .filter(|e| *e != "[DONE]")
            .map(|e| {
                serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(text, solo[i], "request {i}");
    }
}

#[test]
fn sigterm_exits_cleanly_and_a_bad_model_fails_to_start() {
    let s = Server::start(&[]);
    let status = s.terminate();
    assert!(status.success(), "{status:?}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_engine-server"))
        .args(["--port", "0", "--model", "/no/such/model"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        log.contains("--model /no/such/model: no such file or directory"),
        "{log}"
    );
}

#[test]
fn an_inline_chat_template_replaces_the_models() {
    let s = Server::start(&[
        "--chat-template",
        "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}",
    ]);
    let t = s
        .post(
            "/tokenize",
            &json!({"messages": [{"role": "user", "content": "Hi"}], "add_special_tokens": false}),
        )
        .json();
    let d = s
        .post("/detokenize", &json!({"tokens": t["tokens"]}))
        .json();
    assert_eq!(d["prompt"], "[user] Hi\n");
}

#[test]
fn the_readme_lists_every_flag() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_engine-server"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let flags: Vec<&str> = help
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .map(|l| l.split([' ', '<']).next().unwrap())
        .filter(|f| !["help", "version"].contains(f))
        .collect();
    assert!(flags.len() > 20, "{help}");
    for flag in flags {
        assert!(
            readme.contains(&format!("--{flag}")),
            "README misses --{flag}"
        );
    }
}

#[test]
fn sigterm_lets_an_in_flight_stream_finish() {
    let s = Server::start(&["--max-model-len", "1024"]);
    let body = json!({"model": "demo", "prompt": "Keep going", "max_tokens": 300, "ignore_eos": true,
                      "stream": true, "stream_options": {"include_usage": true}});
    let mut conn = s.post_open("/v1/completions", &body);
    let mut seen = read_events(&mut conn, 2);
    let port = s.port;
    let status = std::thread::spawn(move || s.terminate());
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).unwrap();
    seen.push_str(&String::from_utf8_lossy(&rest));
    assert!(
        seen.contains("\"completion_tokens\":300"),
        "the stream ran to its end: {seen}"
    );
    assert!(seen.contains("data: [DONE]"));
    assert!(status.join().unwrap().success());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "no longer listening"
    );
}
