//! Replicas behind a load balancer: two servers, a round-robin client that
//! moves on to the next replica when one refuses the connection (what any HTTP
//! load balancer with retries does), and one replica killed (SIGKILL) mid-run.
//! Every request either completes, on either replica, or fails with a clear
//! error (the connection closed before a response); none hangs, and every
//! request sent after the kill completes on the survivor, with the same
//! answer, since each request is served whole by one stateless replica.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Server;
use serde_json::{json, Value};

const REQUESTS: usize = 40;
const CLIENTS: usize = 4;
/// Longest any request may take: well past a completion on the fixture.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
enum Outcome {
    /// Which replica answered, and the completion's text.
    Completed { replica: usize, text: String },
    /// The error the client saw.
    Failed(String),
}

/// One POST over a fresh connection: the status and JSON body, or why not.
fn post(port: u16, body: &Value) -> Result<(u16, Value), PostError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| PostError::Refused(e.to_string()))?;
    let io = |e: std::io::Error| PostError::Broken(e.to_string());
    stream.set_read_timeout(Some(REQUEST_TIMEOUT)).map_err(io)?;
    stream
        .set_write_timeout(Some(REQUEST_TIMEOUT))
        .map_err(io)?;
    let body = body.to_string();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).map_err(io)?;
    stream.write_all(body.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io)?;
    parse_response(&raw)
}

#[derive(Debug)]
enum PostError {
    /// Nothing listens there (the replica is down): try another.
    Refused(String),
    /// The connection broke or closed before a whole response.
    Broken(String),
}

/// A `Connection: close` response with a Content-Length body.
fn parse_response(raw: &[u8]) -> Result<(u16, Value), PostError> {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(PostError::Broken(format!(
            "the connection closed after {} bytes, before a response",
            raw.len()
        )));
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| PostError::Broken(format!("bad status line in {head:?}")))?;
    let json = serde_json::from_str(body)
        .map_err(|e| PostError::Broken(format!("a cut response body ({e}): {body:?}")))?;
    Ok((status, json))
}

/// Sends request `i` round-robin from replica `i % n`, moving on to the next
/// replica while one refuses the connection.
fn send(ports: &[u16], i: usize) -> Outcome {
    let body = json!({"model": "demo", "prompt": "The quick brown fox", "max_tokens": 24,
                      "temperature": 0, "ignore_eos": true});
    let mut refused = Vec::new();
    for k in 0..ports.len() {
        let replica = (i + k) % ports.len();
        match post(ports[replica], &body) {
            Ok((200, v)) => {
                let text = v["choices"][0]["text"].as_str().unwrap_or_default();
                return Outcome::Completed {
                    replica,
                    text: text.to_string(),
                };
            }
            Ok((status, v)) => return Outcome::Failed(format!("HTTP {status}: {v}")),
            Err(PostError::Refused(e)) => refused.push(format!("replica {replica}: {e}")),
            Err(PostError::Broken(e)) => return Outcome::Failed(e),
        }
    }
    Outcome::Failed(format!("every replica refused: {}", refused.join("; ")))
}

/// Per request: its index, whether it was sent after the kill, its outcome.
type Record = (usize, bool, Outcome);

/// Runs the round-robin clients over both replicas, killing the first
/// (SIGKILL, then reaped) once a few requests completed, while others run.
fn run_with_a_kill(first: Server, ports: [u16; 2]) -> Vec<Record> {
    let next = Arc::new(AtomicUsize::new(0));
    let outcomes: Arc<Mutex<Vec<Record>>> = Arc::default();
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (next, outcomes, killed) = (next.clone(), outcomes.clone(), killed.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= REQUESTS {
                    return;
                }
                let after_kill = killed.load(Ordering::SeqCst);
                let outcome = send(&ports, i);
                outcomes.lock().unwrap().push((i, after_kill, outcome));
            })
        })
        .collect();
    while outcomes.lock().unwrap().len() < 8 {
        assert!(started.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(first);
    killed.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(120), "took {elapsed:?}");
    let outcomes = outcomes.lock().unwrap().clone();
    outcomes
}

/// Requests that replica `r` completed.
fn served_by(outcomes: &[Record], r: usize) -> usize {
    outcomes
        .iter()
        .filter(|(_, _, o)| matches!(o, Outcome::Completed { replica, .. } if *replica == r))
        .count()
}

/// Only a request in flight on the killed replica may fail, and it says the
/// connection closed: a load balancer answers 502 there.
fn check_failure(i: usize, after_kill: bool, e: &str) {
    assert!(!after_kill, "request {i}, sent after the kill, failed: {e}");
    assert!(
        i.is_multiple_of(2),
        "request {i} went to the survivor first and failed: {e}"
    );
    let clear = ["closed", "reset", "cut", "pipe"];
    assert!(
        clear.iter().any(|c| e.contains(c)),
        "request {i}: unclear error {e:?}"
    );
}

#[test]
fn requests_survive_a_replica_killed_mid_run() {
    let first = Server::start(&[]);
    let second = Server::start(&[]);
    let ports = [first.port, second.port];
    let outcomes = run_with_a_kill(first, ports);
    assert_eq!(outcomes.len(), REQUESTS, "every request has an outcome");
    let texts: Vec<&String> = outcomes
        .iter()
        .filter_map(|(_, _, o)| match o {
            Outcome::Completed { text, .. } => Some(text),
            Outcome::Failed(_) => None,
        })
        .collect();
    assert!(
        texts.windows(2).all(|w| w[0] == w[1]),
        "replicas answer alike"
    );
    let (on_killed, on_survivor) = (served_by(&outcomes, 0), served_by(&outcomes, 1));
    assert!(
        on_killed > 0 && on_survivor > 0,
        "both served: {outcomes:?}"
    );
    for (i, after_kill, outcome) in &outcomes {
        if let Outcome::Failed(e) = outcome {
            check_failure(*i, *after_kill, e);
        }
    }
    let late = outcomes.iter().filter(|(_, after, _)| *after).count();
    let failed = outcomes.len() - texts.len();
    eprintln!(
        "served: {on_killed} by the killed replica, {on_survivor} by the survivor; \
         {failed} failed; {late} sent after the kill"
    );
    assert!(late > 0, "some requests were sent after the kill");
    // The survivor still serves, and its gauges (what an endpoint picker reads)
    // say it is idle again.
    assert_eq!(second.get("/health").status, 200);
    assert_eq!(second.metric("vllm:num_requests_running"), 0.0);
    assert_eq!(second.metric("vllm:num_requests_waiting"), 0.0);
}
