//! Serving benchmark, after vLLM's `benchmark_serving.py`: starts engine-server,
//! sends streaming completion requests at a request rate (Poisson arrivals), and
//! reports request throughput, output tokens/s, and TTFT / TPOT / ITL / end-to-end
//! latency percentiles measured at the client.
//!
//! `cargo bench -p engine-server --bench serving -- [--model DIR] [--requests N]
//!  [--rate R (req/s; inf = all at once)] [--input-len L] [--output-len O] [--seed S]`
//! (the demo model by default). Prompts are random token ids of length L; every
//! request generates exactly O tokens (`ignore_eos`).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};

struct Options {
    model: Option<String>,
    requests: usize,
    rate: f64,
    input_len: usize,
    output_len: usize,
    seed: u64,
}

fn options() -> Options {
    let mut o = Options {
        model: None,
        requests: 64,
        rate: f64::INFINITY,
        input_len: 64,
        output_len: 32,
        seed: 0,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--model" => o.model = Some(value),
            "--requests" => o.requests = value.parse().expect("--requests N"),
            "--rate" => o.rate = value.parse().expect("--rate R or inf"),
            "--input-len" => o.input_len = value.parse().expect("--input-len L"),
            "--output-len" => o.output_len = value.parse().expect("--output-len O"),
            "--seed" => o.seed = value.parse().expect("--seed S"),
            // cargo bench passes --bench; anything else is ignored.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

/// One request's client-side timings.
struct Timings {
    ttft: f64,
    e2e: f64,
    /// Gaps between consecutive token-carrying chunks.
    itl: Vec<f64>,
    tokens: usize,
}

fn run_request(port: u16, prompt: &[u32], output_len: usize) -> Timings {
    let body = format!(
        r#"{{"model": "bench", "prompt": {prompt:?}, "max_tokens": {output_len}, "ignore_eos": true, "temperature": 0, "stream": true, "logprobs": 0}}"#
    );
    let start = Instant::now();
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        conn,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut first = None;
    let mut last = start;
    let mut itl = Vec::new();
    let mut tokens = 0;
    for line in BufReader::new(conn).lines().map_while(Result::ok) {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let chunk: serde_json::Value = serde_json::from_str(data).expect("a JSON chunk");
        let n = chunk["choices"][0]["logprobs"]["tokens"]
            .as_array()
            .map_or(0, Vec::len);
        if n == 0 {
            continue;
        }
        let now = Instant::now();
        match first {
            None => first = Some(now),
            Some(_) => itl.push(now.duration_since(last).as_secs_f64()),
        }
        last = now;
        tokens += n;
    }
    let e2e = start.elapsed().as_secs_f64();
    Timings {
        ttft: first.map_or(e2e, |f| f.duration_since(start).as_secs_f64()),
        e2e,
        itl,
        tokens,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn row(name: &str, mut values: Vec<f64>) {
    values.sort_by(f64::total_cmp);
    let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
    println!(
        "| {name:<10} | {:>9.2} | {:>9.2} | {:>9.2} | {:>9.2} |",
        mean * 1e3,
        percentile(&values, 0.5) * 1e3,
        percentile(&values, 0.9) * 1e3,
        percentile(&values, 0.99) * 1e3
    );
}

#[allow(clippy::too_many_lines)] // a benchmark driver, read top to bottom
fn main() {
    let o = options();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_engine-server"));
    cmd.args([
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--served-model-name",
        "bench",
    ])
    .args(["--disable-log-requests", "--max-logprobs", "1"])
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    if let Some(m) = &o.model {
        cmd.args(["--model", m]);
    }
    let mut server = cmd.spawn().expect("engine-server starts");
    let stdout = server.stdout.take().expect("piped stdout");
    // The server logs "listening on http://HOST:PORT" once the model is loaded.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(
                    rest.rsplit(':')
                        .next()
                        .and_then(|p| p.trim().parse::<u16>().ok()),
                );
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(600))
        .ok()
        .flatten()
        .expect("the server loads the model and logs its port");
    let mut rng = rand::rngs::StdRng::seed_from_u64(o.seed);
    let prompts: Vec<Vec<u32>> = (0..o.requests)
        .map(|_| {
            (0..o.input_len)
                .map(|_| rng.random_range(10..250u32))
                .collect()
        })
        .collect();
    // Warm up once (first-touch of the weights and caches).
    run_request(port, &prompts[0], 2);

    let start = Instant::now();
    let mut handles = Vec::with_capacity(o.requests);
    for prompt in prompts {
        if o.rate.is_finite() {
            // Exponential gaps: a Poisson process at `rate` requests per second.
            let gap = -(1.0 - rng.random::<f64>()).ln() / o.rate;
            std::thread::sleep(Duration::from_secs_f64(gap));
        }
        let output_len = o.output_len;
        handles.push(std::thread::spawn(move || {
            run_request(port, &prompt, output_len)
        }));
    }
    let results: Vec<Timings> = handles
        .into_iter()
        .map(|h| h.join().expect("a request"))
        .collect();
    let duration = start.elapsed().as_secs_f64();
    let _ = server.kill();
    let _ = server.wait();

    let tokens: usize = results.iter().map(|r| r.tokens).sum();
    println!(
        "model {}, {} requests, rate {}, input {} tokens, output {} tokens",
        o.model.as_deref().unwrap_or("demo"),
        o.requests,
        o.rate,
        o.input_len,
        o.output_len
    );
    println!(
        "duration {duration:.2} s, {:.2} requests/s, {:.1} output tokens/s",
        o.requests as f64 / duration,
        tokens as f64 / duration
    );
    println!("| metric     |   mean ms |    p50 ms |    p90 ms |    p99 ms |");
    println!("|------------|----------:|----------:|----------:|----------:|");
    row("TTFT", results.iter().map(|r| r.ttft).collect());
    row(
        "TPOT",
        results
            .iter()
            .filter(|r| r.tokens > 1)
            .map(|r| (r.e2e - r.ttft) / (r.tokens - 1) as f64)
            .collect(),
    );
    row("ITL", results.iter().flat_map(|r| r.itl.clone()).collect());
    row("E2E", results.iter().map(|r| r.e2e).collect());
}
