//! Issue 13, findings 3–6: what a hostile client sends must neither stall the
//! server nor get a reset instead of an answer. Each test failed before the fix.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Response, Server};
use serde_json::{json, Value};

const KEY: &str = "sk-test";
const JSON: (&str, &str) = ("Content-Type", "application/json");
const AUTH: (&str, &str) = ("Authorization", "Bearer sk-test");

fn post_key(s: &Server, path: &str, body: &Value) -> Response {
    s.request("POST", path, &[JSON, AUTH], body.to_string().as_bytes())
}

fn connect(s: &Server, read_timeout: Duration) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    stream.set_read_timeout(Some(read_timeout)).unwrap();
    stream
}

/// Reads until the server closes the connection; how long that took, or
/// `None` if it was still open after the stream's read timeout.
fn time_to_close(stream: &mut TcpStream) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None
            }
            Err(_) => return Some(start.elapsed()),
        }
    }
}

/// Reads one response head (and a `content-length` body) off a kept-alive connection.
fn read_one(stream: &mut TcpStream) -> (u16, String) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).expect("a response");
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&data)
        );
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while data.len() < head_end + length {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0);
        data.extend_from_slice(&buf[..n]);
    }
    let status = head[9..12].parse().unwrap();
    let body = String::from_utf8_lossy(&data[head_end..head_end + length]).into_owned();
    (status, body)
}

fn greedy(s: &Server, headers: &[(&str, &str)]) -> String {
    let body = json!({"model": "demo", "prompt": "Once upon a time", "max_tokens": 12,
                      "temperature": 0});
    let r = s.request(
        "POST",
        "/v1/completions",
        headers,
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["choices"][0]["text"].as_str().unwrap().to_string()
}

/// Finding 3: a prompt that cannot fit is refused before it is tokenized.
#[test]
fn a_prompt_that_cannot_fit_is_refused_before_tokenizing() {
    let s = Server::start(&[]);
    let huge = "The quick brown fox jumps over the lazy dog. ".repeat(300_000); // 13.5 MB
    let start = Instant::now();
    let message = s
        .post(
            "/v1/completions",
            &json!({"model": "demo", "prompt": huge, "max_tokens": 1}),
        )
        .error(400);
    assert!(message.contains("at least"), "{message}");
    let chat = json!({"model": "demo", "messages": [{"role": "user", "content": huge}]});
    let message = s.post("/v1/chat/completions", &chat).error(400);
    assert!(message.contains("at least"), "{message}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // What fits is not refused: ~1,200 tokens of a 2,048-token context.
    let fits = "The quick brown fox jumps over the lazy dog. ".repeat(60);
    let r = s.post(
        "/v1/completions",
        &json!({"model": "demo", "prompt": fits, "max_tokens": 1}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // truncate_prompt_tokens keeps the end of any prompt, as vLLM does.
    let r = s.post(
        "/v1/completions",
        &json!({"model": "demo", "prompt": "word ".repeat(20_000), "max_tokens": 1,
                "truncate_prompt_tokens": 100}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["usage"]["prompt_tokens"], 100);
}

/// Finding 3: tokenizing happens off the runtime's threads, so /health answers
/// at once while every core tokenizes a large body.
#[test]
fn health_stays_fast_while_large_bodies_are_tokenized() {
    let s = Server::start(&["--api-key", KEY]);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let text = "Tokenizing this takes a while, as it should. ".repeat(45_000); // 2 MB
    let body = json!({"model": "demo", "prompt": text}).to_string();
    let workers: Vec<_> = (0..cores.min(4))
        .map(|_| {
            let (port, body) = (s.port, body.clone());
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
                let head = format!(
                    "POST /tokenize HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
                     Content-Type: application/json\r\nAuthorization: Bearer {KEY}\r\n\
                     Content-Length: {}\r\n\r\n",
                    body.len()
                );
                stream.write_all(head.as_bytes()).unwrap();
                stream.write_all(body.as_bytes()).unwrap();
                let mut out = Vec::new();
                stream.read_to_end(&mut out).unwrap();
                String::from_utf8_lossy(&out).into_owned()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let start = Instant::now();
        assert_eq!(s.get("/health").status, 200);
        slowest = slowest.max(start.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    for w in workers {
        let out = w.join().unwrap();
        assert!(
            out.starts_with("HTTP/1.1 200"),
            "{}",
            &out[..out.len().min(300)]
        );
    }
    assert!(slowest < Duration::from_secs(1), "/health took {slowest:?}");
}

/// Finding 3: the API key guards every route but /health, /metrics, /version.
#[test]
fn the_api_key_guards_every_route_but_health_metrics_and_version() {
    let s = Server::start(&["--api-key", KEY]);
    let tokenize = json!({"model": "demo", "prompt": "hello"}).to_string();
    let detokenize = json!({"model": "demo", "tokens": [5, 6]}).to_string();
    for (path, body) in [("/tokenize", &tokenize), ("/detokenize", &detokenize)] {
        s.request("POST", path, &[JSON], body.as_bytes()).error(401);
        let r = s.request("POST", path, &[JSON, AUTH], body.as_bytes());
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    for closed in ["/v1/models", "/v1/models/demo", "/nothing", "/tokenize"] {
        s.get(closed).error(401);
    }
    for open in ["/health", "/metrics", "/version"] {
        assert_eq!(s.get(open).status, 200, "{open}");
    }
}

/// Sends a whole oversized upload, as a client that does not read while it
/// writes, then reads the answer.
fn upload(s: &Server, chunked: bool, size: usize, extra_headers: &str) -> Response {
    let mut stream = connect(s, Duration::from_secs(60));
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {size}")
    };
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         {extra_headers}{framing}\r\n\r\n"
    );
    let chunk = vec![b' '; 1 << 20];
    let mut sent = stream.write_all(head.as_bytes());
    for _ in 0..size >> 20 {
        if chunked {
            sent = sent.and_then(|_| stream.write_all(b"100000\r\n"));
        }
        sent = sent.and_then(|_| stream.write_all(&chunk));
        if chunked {
            sent = sent.and_then(|_| stream.write_all(b"\r\n"));
        }
    }
    if chunked {
        sent = sent.and_then(|_| stream.write_all(b"0\r\n\r\n"));
    }
    sent.expect("the server reads the whole upload before closing");
    common::read_response_from(&mut stream)
}

/// Finding 4: an upload over 16 MiB gets the 413 and a graceful close, never a reset.
#[test]
fn an_oversized_body_gets_the_413_not_a_reset() {
    let s = Server::start(&[]);
    for (chunked, mib) in [(false, 40), (true, 24), (false, 17), (true, 48)] {
        let r = upload(&s, chunked, mib << 20, "");
        let message = r.error(413);
        assert!(message.contains("16777216 bytes"), "{message}");
        assert_eq!(r.header("connection"), Some("close"));
    }
    assert_eq!(s.get("/health").status, 200);
}

/// Sends a 1 MiB header line in pieces, as a slow network would: the server
/// gives up on it part way, and must not reset the connection under the
/// pieces still coming.
fn big_header(stream: &mut TcpStream) {
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
        .unwrap();
    let piece = vec![b'a'; 64 * 1024];
    for _ in 0..16 {
        stream
            .write_all(&piece)
            .expect("the server reads the header before closing");
        std::thread::sleep(Duration::from_millis(5));
    }
    stream
        .write_all(b"\r\n\r\n")
        .expect("the server reads the header before closing");
}

/// Finding 4: a 1 MiB header line gets 431, never a reset.
#[test]
fn a_huge_header_gets_431_not_a_reset() {
    let s = Server::start(&[]);
    for _ in 0..3 {
        let mut stream = connect(&s, Duration::from_secs(30));
        big_header(&mut stream);
        let r = common::read_response_from(&mut stream);
        assert_eq!(r.status, 431);
    }
    assert_eq!(s.get("/health").status, 200);
}

/// Finding 5: a slow header and an idle keep-alive connection are closed after
/// 5 s (uvicorn's keep-alive timeout).
#[test]
fn slow_and_idle_connections_time_out() {
    let s = Server::start(&[]);
    let mut slow = connect(&s, Duration::from_secs(12));
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut idle = connect(&s, Duration::from_secs(12));
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_one(&mut idle).0, 200);
    for (name, stream) in [("slow header", &mut slow), ("idle", &mut idle)] {
        let closed = time_to_close(stream);
        assert!(
            closed.is_some_and(|t| t < Duration::from_secs(8)),
            "{name}: {closed:?}"
        );
    }
}

/// Finding 5: past --max-connections a connection gets a 503 (JSON) and a close.
#[test]
fn connections_past_the_cap_get_a_503() {
    let s = Server::start(&["--max-connections", "6", "--timeout-keep-alive", "60"]);
    // Six kept-alive connections, each admitted (a 503 only while an earlier
    // connection's slot is being given back).
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.len() < 6 {
        assert!(Instant::now() < deadline, "{} admitted", held.len());
        let mut c = connect(&s, Duration::from_secs(10));
        c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        if read_one(&mut c).0 == 200 {
            held.push(c);
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let r = s.get("/health");
    let message = r.error(503);
    assert!(message.contains("6 open connections"), "{message}");
    assert_eq!(r.header("connection"), Some("close"));
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.get("/health").status != 200 {
        assert!(Instant::now() < deadline, "the slot was not given back");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Finding 6: 415 unless the body is declared application/json.
#[test]
fn bodies_must_be_declared_json() {
    let s = Server::start(&[]);
    let requests = [
        (
            "/v1/completions",
            json!({"model": "demo", "prompt": "hi", "max_tokens": 1}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "demo", "messages": [{"role": "user", "content": "hi"}],
                   "max_tokens": 1}),
        ),
        ("/tokenize", json!({"model": "demo", "prompt": "hi"})),
        ("/detokenize", json!({"model": "demo", "tokens": [5]})),
    ];
    for (path, body) in &requests {
        let body = body.to_string();
        for wrong in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/jsonx"),
            None,
        ] {
            let headers: Vec<_> = wrong.map(|t| ("Content-Type", t)).into_iter().collect();
            let message = s
                .request("POST", path, &headers, body.as_bytes())
                .error(415);
            assert!(message.contains("application/json"), "{path}: {message}");
        }
        for right in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
        ] {
            let r = s.request("POST", path, &[("Content-Type", right)], body.as_bytes());
            assert_eq!(r.status, 200, "{path} {right}: {}", r.text());
        }
    }
}

/// Every class once, then the server is as it was: /health 200, the same
/// greedy output, nothing running and no KV blocks held.
#[test]
fn a_hostile_mix_leaves_the_server_as_it_was() {
    let s = Server::start(&["--api-key", KEY]);
    let before = greedy(&s, &[JSON, AUTH]);
    let huge = "x y ".repeat(1_000_000);
    post_key(
        &s,
        "/v1/completions",
        &json!({"model": "demo", "prompt": huge}),
    )
    .error(400);
    upload(&s, false, 20 << 20, "").error(401);
    let auth = format!("Authorization: Bearer {KEY}\r\n");
    upload(&s, true, 20 << 20, &auth).error(413);
    s.request(
        "POST",
        "/v1/completions",
        &[("Content-Type", "text/plain"), AUTH],
        b"{}",
    )
    .error(415);
    s.request("POST", "/tokenize", &[JSON], b"{}").error(401);
    let mut header = connect(&s, Duration::from_secs(30));
    big_header(&mut header);
    assert_eq!(common::read_response_from(&mut header).status, 431);
    let mut slow = connect(&s, Duration::from_secs(12));
    slow.write_all(b"POST /v1/completions HTTP/1.1\r\n")
        .unwrap();
    let mut cut = connect(&s, Duration::from_secs(12));
    cut.write_all(
        b"POST /v1/completions HTTP/1.1\r\nContent-Type: application/json\r\n\
          Authorization: Bearer sk-test\r\nContent-Length: 1000\r\n\r\n{\"model\"",
    )
    .unwrap();
    drop(cut);
    assert!(time_to_close(&mut slow).is_some());
    assert_eq!(s.get("/health").status, 200);
    assert_eq!(greedy(&s, &[JSON, AUTH]), before);
    assert_eq!(s.metric("vllm:num_requests_running"), 0.0);
    assert_eq!(s.metric("vllm:kv_cache_blocks_used"), 0.0);
}

/// Red-team findings (2026-12-07): a list of prompts multiplied n past any
/// bound (4000 prompts of n 256 were a million sequences from a 0.23 MB
/// body), stop strings had no bound (9 MB of them stalled every request), and
/// a max_tokens near i64::MAX wrapped past the context check.
#[test]
fn sequences_per_request_and_huge_max_tokens_are_bounded() {
    let s = Server::start(&[]);
    let many = json!({"model": "demo", "prompt": vec!["Hi"; 4000], "max_tokens": 1, "n": 256});
    let start = Instant::now();
    let message = s.post("/v1/completions", &many).error(400);
    assert!(message.contains("at most 4096 sequences"), "{message}");
    assert!(message.contains("4000 prompts x 256"), "{message}");
    assert!(start.elapsed() < Duration::from_secs(5));
    // Token-id lists count as prompts too; a flat id list is one prompt.
    let lists = json!({"model": "demo", "prompt": vec![vec![1, 2]; 5000], "max_tokens": 1});
    s.post("/v1/completions", &lists).error(400);
    let flat = json!({"model": "demo", "prompt": vec![1; 100], "max_tokens": 1, "n": 2});
    assert_eq!(s.post("/v1/completions", &flat).status, 200);
    let fits = json!({"model": "demo", "prompt": vec!["Hi"; 64], "max_tokens": 1, "n": 4});
    let r = s.post("/v1/completions", &fits);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["choices"].as_array().unwrap().len(), 256);

    // Stop strings are bounded in bytes (their per-token search is bounded by
    // the longest one).
    let stops: Vec<String> = (0..300).map(|i| format!("{i:0>300}")).collect();
    let many_stops = json!({"model": "demo", "prompt": "Hi", "max_tokens": 2, "stop": stops});
    let message = s.post("/v1/completions", &many_stops).error(400);
    assert!(
        message.contains("stop strings may total at most 65536 bytes"),
        "{message}"
    );
    let stops: Vec<String> = (0..200).map(|i| format!("{i:0>300}")).collect();
    let fits = json!({"model": "demo", "prompt": "Hi", "max_tokens": 2, "stop": stops});
    assert_eq!(s.post("/v1/completions", &fits).status, 200);

    let huge = json!({"model": "demo", "prompt": "Hi", "max_tokens": i64::MAX});
    let message = s.post("/v1/completions", &huge).error(400);
    assert!(message.contains("maximum context length"), "{message}");
    let chat = json!({"model": "demo", "messages": [{"role": "user", "content": "Hi"}],
                      "max_tokens": i64::MAX});
    let message = s.post("/v1/chat/completions", &chat).error(400);
    assert!(message.contains("maximum context length"), "{message}");
    assert!(!greedy(&s, &[JSON]).is_empty());
}
