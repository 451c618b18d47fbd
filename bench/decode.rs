//! End-to-end speed of the CPU engine on a random-weight Llama of TinyLlama-1.1B's
//! shape in bf16, against the memory roofline measured in the same process.
//!
//! `cargo bench --bench decode` writes the model once (about 2.2 GB, cached in
//! `target/bench-models/llama-1b/`; delete it to regenerate), then measures:
//! copy and read bandwidth, batch-1 decode, 128-token prefill, decode at
//! batch 8 and 32, and batch-1 decode after a 1984-token prompt. Decode is memory-bound: every token reads every weight once,
//! so its roofline is weight bytes per token ÷ bandwidth. Without `--bench`
//! (`cargo test --all-targets`) it only says how to run it.
//!
//! With `LLAMA_BENCH` and/or `LLAMA_BATCHED_BENCH` naming llama.cpp's
//! `llama-bench` / `llama-batched-bench`, it also writes the model as a bf16
//! GGUF (once, next to the model directory) and alternates rounds of ours with
//! `llama-bench -p 128 -n 64 -r 1` and `llama-batched-bench -npp 16 -ntg 32
//! -npl 1,8,32`, then prints the ratios. With `TRANSFORMERS_PYTHON` naming a
//! Python with torch and transformers, Hugging Face transformers (bf16, SDPA)
//! takes its turn in each round as well (`bench/transformers_peer.py`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use engine::fixture::{write_model_dir, FixtureSpec};
use engine::generate::{Llm, Prompt, Request};
use engine::loader::LoadOptions;
use engine::sampling::SamplingParams;

#[path = "llama_gguf.rs"]
mod llama_gguf;
#[path = "llama_peer.rs"]
mod llama_peer;
#[path = "roofline.rs"]
mod roofline;
#[path = "transformers_peer.rs"]
mod transformers_peer;
use llama_peer::{Peer, PeerSpeeds, Sizes};
use roofline::{weight_bytes_per_token, Roofline};
use transformers_peer::TransformersPeer;

/// Tokens decoded per measurement, after a short prompt.
const DECODE_TOKENS: usize = 64;
const DECODE_PROMPT: usize = 16;
const PREFILL_TOKENS: usize = 128;
/// Context of the long-context decode row (its prompt), and its decode tokens:
/// the prompt, the tokens and one more fit the model's 2048 positions.
const LONG_CONTEXT: usize = 1984;
const LONG_TOKENS: usize = 32;
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
    let peer = Peer::from_env();
    let gguf = dir.with_extension("bf16.gguf");
    if peer.is_some() && !gguf.is_file() {
        println!(
            "writing it as a bf16 GGUF for llama.cpp: {} (once)",
            gguf.display()
        );
        let partial = gguf.with_extension("partial");
        llama_gguf::write(&dir, &partial)?;
        std::fs::rename(&partial, &gguf)
            .map_err(|e| engine::Error::invalid(format!("{}: {e}", gguf.display())))?;
    }
    let t = Instant::now();
    let options = LoadOptions {
        max_model_len: Some(LONG_CONTEXT + 2 * LONG_TOKENS),
        // The bench model has no tokenizer.json: token ids only.
        skip_tokenizer_init: true,
        ..LoadOptions::default()
    };
    let mut llm = Llm::load(&dir, &options)?;
    let load = t.elapsed();
    let threads = rayon::current_num_threads();
    let weight_bytes = weight_bytes_per_token(llm.model(), false);
    println!(
        "model: {} ({} layers, hidden {}, {:?}), loaded in {load:.1?}; {threads} threads",
        dir.display(),
        llm.model().config.num_layers,
        llm.model().config.hidden_size,
        llm.model().dtype,
    );
    println!(
        "weights read per decode step: {:.3} GB (every matrix once, the LM head included)\n",
        weight_bytes / 1e9
    );
    let sizes = Sizes {
        threads,
        prompt: DECODE_PROMPT,
        decode_tokens: DECODE_TOKENS,
        batched_tokens: DECODE_TOKENS / 2,
        prefill: PREFILL_TOKENS,
        batches: [1, 8, 32],
        long_context: LONG_CONTEXT,
        long_tokens: LONG_TOKENS,
    };
    let mut roof = Roofline::new();
    let transformers = TransformersPeer::from_env();
    let (mut ours, mut llama, mut hf) = (Vec::new(), PeerSpeeds::default(), PeerSpeeds::default());
    // With a peer, alternate whole rounds of ours and theirs; keep the best of each.
    let peers = peer.is_some() || transformers.is_some();
    for _ in 0..if peers { PEER_ROUNDS } else { 1 } {
        ours = best_rows(ours, measure_rows(&mut llm, &mut roof)?);
        if let Some(peer) = &peer {
            llama = llama.best(&peer.measure(&gguf, &sizes)?);
        }
        if let Some(peer) = &transformers {
            hf = hf.best(&peer.measure(&dir, &sizes)?);
        }
    }
    print_rows(&ours, weight_bytes, threads);
    if peer.is_some() {
        print_peer(&ours, "llama.cpp (same weights as a bf16 GGUF)", &llama);
    }
    if transformers.is_some() {
        print_peer(&ours, "transformers (torch, bf16, SDPA)", &hf);
    }
    Ok(())
}

/// Rounds of (ours, llama.cpp's) when a peer is set.
const PEER_ROUNDS: usize = 2;

/// One measured row: its name, the figures, and what it measures.
struct Row {
    name: String,
    m: Measured,
    kind: Kind,
}

/// What a row measures (how a peer's figure is matched to it).
#[derive(Clone, Copy)]
enum Kind {
    Decode { batch: usize },
    Prefill,
    LongContext,
}

fn measure_rows(llm: &mut Llm, roof: &mut Roofline) -> engine::Result<Vec<Row>> {
    let mut rows = vec![Row {
        name: "decode, batch 1".into(),
        m: decode(llm, roof, (1, DECODE_PROMPT), DECODE_TOKENS)?,
        kind: Kind::Decode { batch: 1 },
    }];
    rows.push(Row {
        name: format!("prefill, {PREFILL_TOKENS} tokens"),
        m: prefill(llm, roof)?,
        kind: Kind::Prefill,
    });
    for batch in [8, 32] {
        rows.push(Row {
            name: format!("decode, batch {batch}"),
            m: decode(llm, roof, (batch, DECODE_PROMPT), DECODE_TOKENS / 2)?,
            kind: Kind::Decode { batch },
        });
    }
    rows.push(Row {
        name: format!("decode at {LONG_CONTEXT} ctx"),
        m: decode_after_prompt(llm, roof, LONG_CONTEXT, LONG_TOKENS)?,
        kind: Kind::LongContext,
    });
    Ok(rows)
}

/// Row by row, the faster of two rounds (`old` may be empty).
fn best_rows(old: Vec<Row>, new: Vec<Row>) -> Vec<Row> {
    if old.is_empty() {
        return new;
    }
    old.into_iter()
        .zip(new)
        .map(|(a, b)| {
            if b.m.tokens_per_s > a.m.tokens_per_s {
                b
            } else {
                a
            }
        })
        .collect()
}

fn print_rows(rows: &[Row], weight_bytes: f64, threads: usize) {
    println!(
        "{:<22} {:>7} {:>9} {:>6} {:>8} {:>8} {:>10} {:>10}",
        "measurement", "tok/s", "tok/CPU-s", "cores", "copy", "read", "% copy", "% read"
    );
    for Row { name, m, kind } in rows {
        // Decode streams every weight once per step for the whole batch (the
        // long-context row reads its KV cache too: weights alone understate it).
        let roof_pct = |gbps: f64| match kind {
            Kind::Decode { batch: b } => format!(
                "{:.0}%",
                100.0 * m.tokens_per_s * weight_bytes / (*b as f64 * gbps * 1e9)
            ),
            Kind::LongContext => format!(
                "{:.0}%",
                100.0 * m.tokens_per_s * weight_bytes / (gbps * 1e9)
            ),
            Kind::Prefill => "-".into(),
        };
        let opt = |v: Option<f64>, digits: usize| v.map_or("?".into(), |v| format!("{v:.digits$}"));
        println!(
            "{name:<22} {:>7.1} {:>9} {:>6} {:>8.1} {:>8.1} {:>10} {:>10}",
            m.tokens_per_s,
            opt(m.tokens_per_cpu_s, 1),
            opt(m.cores, 2),
            m.copy,
            m.read,
            roof_pct(m.copy),
            roof_pct(m.read),
        );
    }
    println!(
        "\nEach row is the best of {REPEATS} runs; before each run the memory bandwidth is \
         measured again (GB/s, 1 GiB, all threads)\nand the roofline percentages use that run's \
         own bandwidth: decode at batch b can at best make b tokens per sweep of the weights.\n\
         copy: bytes copied per second (a copy also reads and writes the destination: ~3x the \
         traffic); read: bytes read per second.\n\
         cores: process CPU time / wall time (at most {threads}; less means other work shared the \
         machine); tok/CPU-s: tokens per CPU-second."
    );
}

fn print_peer(ours: &[Row], name: &str, theirs: &PeerSpeeds) {
    println!("\nagainst {name}, best of {PEER_ROUNDS} interleaved rounds:");
    println!(
        "{:<22} {:>9} {:>11} {:>7}",
        "measurement", "ours", "theirs", "ratio"
    );
    for row in ours {
        let peer = match row.kind {
            Kind::Decode { batch } => theirs.decode_at(batch),
            Kind::Prefill => theirs.prefill,
            Kind::LongContext => theirs.long_context,
        };
        let Some(peer) = peer else { continue };
        let ours = row.m.tokens_per_s;
        println!(
            "{:<22} {ours:>9.1} {peer:>11.1} {:>6.2}x",
            row.name,
            ours / peer
        );
    }
}

/// `target/bench-models/llama-1b`, in whatever target directory cargo uses.
fn model_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent()
        .unwrap_or(tmp)
        .join("bench-models")
        .join("llama-1b")
}

struct Measured {
    tokens_per_s: f64,
    /// Tokens per CPU-second of the whole process, when the OS tells.
    tokens_per_cpu_s: Option<f64>,
    /// Process CPU time ÷ wall time.
    cores: Option<f64>,
    /// Copy and read bandwidth measured just before this run, GB/s.
    copy: f64,
    read: f64,
}

/// Tokens made, and the wall and CPU time that made them.
struct Run {
    tokens: usize,
    wall: Duration,
    cpu: Option<Duration>,
}

/// Runs `f` `REPEATS` times, each after a fresh bandwidth measurement, and
/// keeps the fastest run.
fn measure(
    roof: &mut Roofline,
    mut f: impl FnMut() -> engine::Result<Run>,
) -> engine::Result<Measured> {
    let mut best: Option<Measured> = None;
    for _ in 0..REPEATS {
        let (copy, read) = roof.measure();
        let run = f()?;
        let secs = run.wall.as_secs_f64();
        let m = Measured {
            tokens_per_s: run.tokens as f64 / secs,
            tokens_per_cpu_s: run.cpu.map(|c| run.tokens as f64 / c.as_secs_f64()),
            cores: run.cpu.map(|c| c.as_secs_f64() / secs),
            copy,
            read,
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

/// Wall and CPU time of `f`.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration, Option<Duration>) {
    let (cpu0, t) = (process_cpu_time(), Instant::now());
    let out = f();
    let wall = t.elapsed();
    let cpu = match (cpu0, process_cpu_time()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    (out, wall, cpu)
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
fn decode(
    llm: &mut Llm,
    roof: &mut Roofline,
    (batch, prompt): (usize, usize),
    tokens: usize,
) -> engine::Result<Measured> {
    measure(roof, || {
        let (first, first_wall, first_cpu) = timed(|| llm.generate(&requests(batch, prompt, 1)));
        first?;
        let (all, all_wall, all_cpu) = timed(|| llm.generate(&requests(batch, prompt, 1 + tokens)));
        let generated: usize = all?.iter().map(|c| c.best().token_ids.len() - 1).sum();
        Ok(Run {
            tokens: generated,
            wall: all_wall.saturating_sub(first_wall),
            cpu: all_cpu.zip(first_cpu).map(|(a, f)| a.saturating_sub(f)),
        })
    })
}

/// Batch-1 decode tokens/s after a `prompt`-token prompt, from the engine's
/// own time per output token (first token to last): the difference of two
/// runs, as [`decode`] takes, would be two long prefills apart and mostly
/// their noise. The CPU time of the decode alone is not known here.
fn decode_after_prompt(
    llm: &mut Llm,
    roof: &mut Roofline,
    prompt: usize,
    tokens: usize,
) -> engine::Result<Measured> {
    measure(roof, || {
        let before = llm.stats();
        llm.generate(&requests(1, prompt, 1 + tokens))?;
        let after = llm.stats();
        let per_token = after.time_per_output_token_sum - before.time_per_output_token_sum;
        if per_token.is_nan() || per_token <= 0.0 {
            return Err(engine::Error::invalid(
                "the engine recorded no time per output token for the long-context run",
            ));
        }
        Ok(Run {
            tokens,
            wall: Duration::from_secs_f64(per_token * tokens as f64),
            cpu: None,
        })
    })
}

/// Prompt tokens/s of one `PREFILL_TOKENS`-token prompt (to its first token).
fn prefill(llm: &mut Llm, roof: &mut Roofline) -> engine::Result<Measured> {
    measure(roof, || {
        let (out, wall, cpu) = timed(|| llm.generate(&requests(1, PREFILL_TOKENS, 1)));
        out?;
        Ok(Run {
            tokens: PREFILL_TOKENS,
            wall,
            cpu,
        })
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
