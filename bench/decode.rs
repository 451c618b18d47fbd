//! End-to-end speed of the CPU engine on a random-weight Llama of TinyLlama-1.1B's
//! shape in bf16, against the memory roofline measured in the same process.
//!
//! `cargo bench --bench decode` writes the model once (about 2.2 GB, cached in
//! `target/bench-models/llama-1b/`; delete it to regenerate), then measures:
//! copy and read bandwidth, batch-1 decode, 128-token prefill, and decode at
//! batch 8 and 32. Decode is memory-bound: every token reads every weight once,
//! so its roofline is weight bytes per token ÷ bandwidth. Without `--bench`
//! (`cargo test --all-targets`) it only says how to run it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use engine::backend::cpu::CpuBackend;
use engine::fixture::{write_model_dir, FixtureSpec};
use engine::generate::{Llm, LoadOptions, Prompt, Request};
use engine::model::Model;
use engine::sampling::SamplingParams;
use rayon::prelude::*;

/// Tokens decoded per measurement, after a short prompt.
const DECODE_TOKENS: usize = 64;
const DECODE_PROMPT: usize = 16;
const PREFILL_TOKENS: usize = 128;
/// Repeats of each measurement; the best is reported (the machine is shared).
const REPEATS: usize = 3;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("decode: an end-to-end benchmark; run it with `cargo bench --bench decode`");
        return;
    }
    if let Err(e) = run() {
        eprintln!("decode bench failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> engine::Result<()> {
    let dir = model_dir();
    let spec = FixtureSpec::llama_1b();
    if !dir.join("provenance.json").is_file() {
        println!("writing the bench model to {} (once)...", dir.display());
        let t = Instant::now();
        write_model_dir(&spec, &dir)?;
        println!("  written in {:.0?}", t.elapsed());
    }
    let t = Instant::now();
    let options = LoadOptions {
        max_model_len: Some(1024),
        ..LoadOptions::default()
    };
    let mut llm = Llm::load(&dir, &options)?;
    let load = t.elapsed();
    let threads = rayon::current_num_threads();
    let weight_bytes = weight_bytes_per_token(llm.model());
    println!(
        "model: {} ({} layers, hidden {}, {:?}), loaded in {load:.1?}; {threads} threads",
        dir.display(),
        llm.model().config.num_layers,
        llm.model().config.hidden_size,
        llm.model().dtype,
    );

    let (copy, read) = bandwidth(5);
    let tokens_at = |gbps: f64| gbps * 1e9 / weight_bytes;
    println!(
        "weights read per decode token: {:.3} GB; copy {copy:.1} GB/s (bytes copied), \
         read {read:.1} GB/s",
        weight_bytes / 1e9
    );
    println!(
        "roofline: {:.1} tok/s at copy bandwidth, {:.1} tok/s at read bandwidth\n",
        tokens_at(copy),
        tokens_at(read)
    );

    println!(
        "{:<28} {:>10} {:>12} {:>12} {:>7}",
        "measurement", "tok/s", "% copy roof", "% read roof", "cores"
    );
    let row = |name: &str, m: Measured, roof: bool| {
        let (c, r) = if roof {
            (
                format!("{:.0}%", 100.0 * m.tokens_per_s / tokens_at(copy)),
                format!("{:.0}%", 100.0 * m.tokens_per_s / tokens_at(read)),
            )
        } else {
            ("-".into(), "-".into())
        };
        println!(
            "{name:<28} {:>10.1} {c:>12} {r:>12} {:>7}",
            m.tokens_per_s,
            m.cores.map_or("?".into(), |c| format!("{c:.2}"))
        );
    };
    row("decode, batch 1", decode(&mut llm, 1, DECODE_TOKENS)?, true);
    row(
        &format!("prefill, {PREFILL_TOKENS} tokens"),
        prefill(&mut llm)?,
        false,
    );
    for batch in [8, 32] {
        row(
            &format!("decode, batch {batch}"),
            decode(&mut llm, batch, DECODE_TOKENS / 2)?,
            false,
        );
    }
    println!(
        "\ncores: CPU time of the process ÷ wall time during the measurement \
         (at most {threads}; lower means other work shared the machine)"
    );
    Ok(())
}

/// `target/bench-models/llama-1b`, in whatever target directory cargo uses.
fn model_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent()
        .unwrap_or(tmp)
        .join("bench-models")
        .join("llama-1b")
}

/// Bytes of weights one decode step reads: every matrix once (the LM head
/// included), one embedding row, the norm weights.
fn weight_bytes_per_token(model: &Model<CpuBackend>) -> f64 {
    let c = &model.config;
    let elem = match model.dtype {
        engine::config::DType::F32 => 4.0,
        _ => 2.0,
    };
    let (h, hd, inter) = (c.hidden_size, c.head_dim, c.intermediate_size);
    let q = c.num_heads * hd;
    let kv = c.num_kv_heads * hd;
    let per_layer = h * (q + 2 * kv) + q * h + 2 * inter * h + inter * h;
    let matrices = c.num_layers * per_layer + c.vocab_size * h;
    // Norm weights are held in f32.
    let norms = (2 * c.num_layers + 1) * h * 4;
    (matrices + h) as f64 * elem + norms as f64
}

struct Measured {
    tokens_per_s: f64,
    /// Process CPU time ÷ wall time, when the OS tells.
    cores: Option<f64>,
}

/// Runs `f` `REPEATS` times and keeps the fastest (`f` returns tokens and wall time).
fn measure(mut f: impl FnMut() -> engine::Result<(usize, Duration)>) -> engine::Result<Measured> {
    let mut best: Option<Measured> = None;
    for _ in 0..REPEATS {
        let (cpu0, t) = (process_cpu_time(), Instant::now());
        let (tokens, wall) = f()?;
        let cores = match (cpu0, process_cpu_time()) {
            (Some(a), Some(b)) => Some((b - a).as_secs_f64() / t.elapsed().as_secs_f64()),
            _ => None,
        };
        let m = Measured {
            tokens_per_s: tokens as f64 / wall.as_secs_f64(),
            cores,
        };
        if best
            .as_ref()
            .is_none_or(|b| m.tokens_per_s > b.tokens_per_s)
        {
            best = Some(m);
        }
    }
    best.ok_or_else(|| engine::Error::invalid("no repeats"))
}

fn requests(batch: usize, prompt_len: usize, max_tokens: usize) -> Vec<Request> {
    (0..batch)
        .map(|b| Request {
            // Distinct prompts of ordinary token ids (never 0..3, the specials).
            prompt: Prompt::Tokens(
                (0..prompt_len)
                    .map(|i| 100 + ((b * 7919 + i * 104_729) % 31_000) as u32)
                    .collect(),
            ),
            params: SamplingParams {
                ignore_eos: true,
                ..SamplingParams::greedy(max_tokens)
            },
        })
        .collect()
}

/// Decode tokens/s of `batch` sequences: generating `1 + tokens` minus
/// generating 1 (the prefill and first token) leaves `tokens` decode steps.
fn decode(llm: &mut Llm, batch: usize, tokens: usize) -> engine::Result<Measured> {
    measure(|| {
        let t = Instant::now();
        llm.generate(&requests(batch, DECODE_PROMPT, 1))?;
        let first = t.elapsed();
        let t = Instant::now();
        let out = llm.generate(&requests(batch, DECODE_PROMPT, 1 + tokens))?;
        let all = t.elapsed();
        let generated: usize = out.iter().map(|c| c.best().token_ids.len() - 1).sum();
        Ok((generated, all.saturating_sub(first)))
    })
}

/// Prompt tokens/s of one `PREFILL_TOKENS`-token prompt (to its first token).
fn prefill(llm: &mut Llm) -> engine::Result<Measured> {
    measure(|| {
        let t = Instant::now();
        llm.generate(&requests(1, PREFILL_TOKENS, 1))?;
        Ok((PREFILL_TOKENS, t.elapsed()))
    })
}

/// CPU time of every thread of this process so far (Linux: /proc/self/task/*/schedstat).
fn process_cpu_time() -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

const BANDWIDTH_BYTES: usize = 1 << 30;

/// Best of `repeats`, in GB/s, with every thread on 1 GiB: copying (bytes
/// copied, not bytes moved: a copy reads the source, and reads and writes the
/// destination) and reading (a wrapping sum the compiler vectorizes).
fn bandwidth(repeats: usize) -> (f64, f64) {
    let src: Vec<u64> = (0..BANDWIDTH_BYTES as u64 / 8).collect();
    let mut dst = vec![1u64; src.len()];
    let chunk = src.len() / (4 * rayon::current_num_threads());
    let gbps = |t: Instant| BANDWIDTH_BYTES as f64 / t.elapsed().as_secs_f64() / 1e9;
    let (mut copy, mut read) = (0f64, 0f64);
    for _ in 0..repeats {
        let t = Instant::now();
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, s)| d.copy_from_slice(s));
        copy = copy.max(gbps(t));
        std::hint::black_box(&dst);
        let t = Instant::now();
        let sum = src
            .par_chunks(chunk)
            .map(|c| c.iter().fold(0u64, |a, &b| a.wrapping_add(b)))
            .reduce(|| 0, u64::wrapping_add);
        read = read.max(gbps(t));
        std::hint::black_box(sum);
    }
    (copy, read)
}
