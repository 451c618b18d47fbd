//! Issue 16: the log lines (errors, disconnects, vLLM's request and stats
//! lines) and vLLM's full /metrics set.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::Server;
use serde_json::json;

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// A sample's value from the classic text format: the line that starts with
/// `series` (a name with its labels, or a prefix of them).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
}

#[test]
fn errors_are_logged_with_status_reason_and_request_id() {
    let s = Server::start(&[]);
    let r = s.request(
        "POST",
        "/v1/completions",
        &[JSON, ("X-Request-Id", "trace-42")],
        br#"{"model": "demo", "prompt": "x", "max_tokens": -1}"#,
    );
    assert_eq!(r.status, 400);
    let line = s
        .wait_for_log("request trace-42 ", Duration::from_secs(5))
        .expect("the error is logged");
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("POST /v1/completions: 400 BadRequestError"),
        "{line}"
    );
    s.get("/no/such/path").error(404);
    let line = s
        .wait_for_log(
            "GET /no/such/path: 404 NotFoundError",
            Duration::from_secs(5),
        )
        .expect("the 404 is logged");
    assert!(line.contains("request req-"), "{line}");
    s.request("DELETE", "/v1/models", &[], b"").error(405);
    assert!(s
        .wait_for_log(
            "DELETE /v1/models: 405 MethodNotAllowed",
            Duration::from_secs(5)
        )
        .is_some());
    // A huge invalid input is not copied whole into the log.
    let big = "y".repeat(100_000);
    let body = json!({"model": "demo", "prompt": "x", "max_tokens": big});
    s.post("/v1/completions", &body).error(400);
    let line = s
        .wait_for_log("yyyyyyyy", Duration::from_secs(5))
        .expect("logged");
    assert!(line.len() < 2_000, "{} bytes", line.len());
}

#[test]
fn a_disconnect_is_logged_and_no_success() {
    let s = Server::start(&["--max-model-len", "2048"]);
    let body = json!({"model": "demo", "prompt": "Go on", "max_tokens": 2000,
                      "ignore_eos": true, "stream": true});
    let mut conn = s.post_open("/v1/completions", &body);
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while seen.matches("data: ").count() < 3 {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "{seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    drop(conn);
    let line = s
        .wait_for_log("Aborted request cmpl-", Duration::from_secs(30))
        .expect("the disconnect is logged");
    assert!(line.contains("the client disconnected"), "{line}");
    let text = s.get("/metrics").text();
    assert!(!text.contains("finished_reason=\"abort\""), "{text}");
    assert_eq!(
        sample(&text, "vllm:e2e_request_latency_seconds_count{"),
        0.0
    );
    assert_eq!(sample(&text, "vllm:request_params_n_count{"), 0.0);
}

#[test]
fn requests_are_logged_as_vllm_does_within_max_log_len() {
    let s = Server::start(&["--max-log-len", "4"]);
    let body = json!({"model": "demo", "prompt": "abcdefghij", "max_tokens": 2});
    assert_eq!(s.post("/v1/completions", &body).status, 200);
    let line = s
        .wait_for_log("Received request cmpl-", Duration::from_secs(5))
        .expect("the request is logged");
    assert!(line.contains("prompt: 'abcd',"), "{line}");
    assert!(line.contains("\"max_tokens\":2"), "{line}");
    assert!(line.contains("(cut by --max-log-len)"), "{line}");
    let quiet = Server::start(&["--disable-log-requests"]);
    assert_eq!(quiet.post("/v1/completions", &body).status, 200);
    std::thread::sleep(Duration::from_millis(300));
    assert!(quiet.logged("Received request").is_empty());
}

#[test]
fn the_stats_line_comes_while_busy_unless_disabled() {
    let s = Server::start(&[]);
    let quiet = Server::start(&["--disable-log-stats"]);
    let body = json!({"model": "demo", "prompt": "Tick", "max_tokens": 20, "ignore_eos": true});
    let started = Instant::now();
    for server in [&s, &quiet] {
        assert_eq!(server.post("/v1/completions", &body).status, 200);
    }
    let line = s
        .wait_for_log("Avg prompt throughput: ", Duration::from_secs(12))
        .expect("the stats line");
    for part in [
        " tokens/s, Avg generation throughput: ",
        " tokens/s, Running: 0 reqs, Swapped: 0 reqs, Pending: 0 reqs, GPU KV cache usage: ",
        "%, CPU KV cache usage: 0.0%.",
    ] {
        assert!(line.contains(part), "{line}");
    }
    // The throughput gauge has the interval's rate either way.
    while started.elapsed() < Duration::from_secs(7) {
        std::thread::sleep(Duration::from_millis(100));
    }
    for server in [&s, &quiet] {
        let text = server.get("/metrics").text();
        assert!(
            sample(&text, "vllm:avg_generation_throughput_toks_per_s{") > 0.0,
            "{text}"
        );
    }
    assert!(quiet.logged("Avg prompt throughput").is_empty());
    // Idle: no more lines.
    let lines = s.logged("Avg prompt throughput").len();
    std::thread::sleep(Duration::from_secs(6));
    assert!(s.logged("Avg prompt throughput").len() <= lines + 1);
}

#[test]
fn metrics_have_vllms_full_set() {
    // An FP8 KV cache on the way (the flag reaches the engine through the C ABI).
    let s = Server::start(&[
        "--max-model-len",
        "128",
        "--num-kv-blocks",
        "64",
        "--kv-cache-dtype",
        "fp8",
    ]);
    let body = json!({"model": "demo", "prompt": "Count", "max_tokens": 5, "n": 2,
                      "best_of": 3, "ignore_eos": true, "temperature": 1.0, "seed": 1});
    let r = s.post("/v1/completions", &body).json();
    let generated = r["usage"]["completion_tokens"].as_f64().unwrap();
    let prompt = r["usage"]["prompt_tokens"].as_f64().unwrap();
    let text = s.get("/metrics").text();
    let info = text
        .lines()
        .find(|l| l.starts_with("vllm:cache_config_info{"))
        .unwrap_or_else(|| panic!("{text}"));
    for label in [
        "block_size=\"16\"",
        "num_gpu_blocks=\"64\"",
        "num_gpu_blocks_override=\"64\"",
        "enable_prefix_caching=\"False\"",
        "gpu_memory_utilization=\"0.9\"",
        "cache_dtype=\"fp8\"",
    ] {
        assert!(info.contains(label), "{info}");
    }
    assert!(text.contains("# TYPE vllm:cache_config_info gauge\n"));
    let m = |series: &str| sample(&text, series);
    assert_eq!(m("vllm:request_prompt_tokens_count{"), 1.0);
    assert_eq!(m("vllm:request_prompt_tokens_sum{"), prompt);
    assert_eq!(m("vllm:request_generation_tokens_sum{"), generated);
    // Buckets up to max_model_len by 1-2-5: 1, 2, 5, ..., 100.
    assert!(text.contains("vllm:request_prompt_tokens_bucket{le=\"100.0\",model_name=\"demo\"}"));
    assert!(!text.contains("vllm:request_prompt_tokens_bucket{le=\"200.0\",model_name=\"demo\"}"));
    assert_eq!(
        m("vllm:request_params_n_bucket{le=\"1.0\",model_name=\"demo\"}"),
        0.0
    );
    assert_eq!(
        m("vllm:request_params_n_bucket{le=\"2.0\",model_name=\"demo\"}"),
        1.0
    );
    assert_eq!(
        m("vllm:request_params_best_of_bucket{le=\"2.0\",model_name=\"demo\"}"),
        0.0
    );
    assert_eq!(
        m("vllm:request_params_best_of_bucket{le=\"5.0\",model_name=\"demo\"}"),
        1.0
    );
    // Every finished sequence counts, the best_of ones not returned too (as vLLM).
    assert_eq!(
        m("vllm:request_success_total{finished_reason=\"length\""),
        3.0
    );
    for name in [
        "vllm:avg_prompt_throughput_toks_per_s{",
        "vllm:cpu_cache_usage_perc{",
        "vllm:num_requests_swapped{",
    ] {
        assert_eq!(m(name), 0.0, "{name}");
    }
    // Prometheus asks for OpenMetrics and gets it.
    let r = s.request(
        "GET",
        "/metrics",
        &[(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )],
        b"",
    );
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let open = r.text();
    assert!(open.ends_with("# EOF\n"));
    assert!(open.contains("# TYPE vllm:cache_config info\n"));
    assert!(open.contains("# TYPE vllm:request_success counter\n"));
}
