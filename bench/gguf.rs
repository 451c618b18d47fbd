//! A real quantized model end to end: SmolLM2-135M-Instruct Q4_1 GGUF (the demo;
//! scripts/fetch-demo-model.sh caches it) served quantized and dequantized to
//! f32 and bf16, and its tensors requantized to FP8 e4m3 at load (`--quantization
//! fp8`, per-tensor scales: the FP8 kernels on a real model's shapes), interleaved in one run with llama.cpp's `llama-bench` on the same file
//! when `LLAMA_BENCH` names its binary (built from source outside this repo).
//!
//! With `GGUF_MODEL=/path/to/file.gguf` it measures that file instead, served
//! quantized only (e.g. the decode bench's 1.1B model requantized by
//! `llama-quantize` to Q8_0, Q4_0 or Q4_K_M).
//!
//! With `LLAMA_QUANTIZE` naming llama.cpp's `llama-quantize` as well, llama-bench
//! also runs on the demo requantized to BF16, the peer of our bf16 row. The bf16
//! row's decode is read against the memory roofline, the read bandwidth measured
//! right before it in each round.
//!
//! The quantized engine's aggregate decode at batch 8 and 32 (32 tokens each
//! after 16-token prompts) is measured too, next to `llama-batched-bench -npp 16
//! -ntg 32 -npl 8,32` on the same file when `LLAMA_BATCHED_BENCH` names it.
//!
//! `LLAMA_BENCH=/path/to/llama-bench cargo bench --bench gguf` measures batch-1
//! decode (64 tokens after a 16-token prompt: generating 65 minus generating 1)
//! and a 128-token prefill, each `ROUNDS` times in turn with llama-bench
//! `-t <threads> -p 128 -n 64 -r 1`, and reports the best of each.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use engine::generate::{Llm, Prompt, Request};
use engine::loader::LoadOptions;
use engine::sampling::SamplingParams;

#[path = "roofline.rs"]
mod roofline;
// Only its llama-batched-bench runner is used here.
#[allow(dead_code)]
#[path = "llama_peer.rs"]
mod llama_peer;
use roofline::{weight_bytes_per_token, Roofline};

const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const DECODE_PROMPT: usize = 16;
const DECODE_TOKENS: usize = 64;
const PREFILL_TOKENS: usize = 128;
const ROUNDS: usize = 5;
/// Batches of the batched decode rows, and the tokens each sequence decodes.
const BATCHES: [usize; 2] = [8, 32];
const BATCHED_TOKENS: usize = 32;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("gguf: an end-to-end benchmark; run it with `cargo bench --bench gguf`");
        return;
    }
    if let Err(e) = run() {
        eprintln!("gguf bench failed: {e}");
        std::process::exit(1);
    }
}

fn model_path() -> Option<PathBuf> {
    if let Some(file) = std::env::var_os("GGUF_MODEL").filter(|f| !f.is_empty()) {
        return Some(PathBuf::from(file));
    }
    let cache = std::env::var_os("ENGINE_CACHE_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/engine")))?;
    Some(cache.join("demo").join(FILE)).filter(|p| p.is_file())
}

fn run() -> engine::Result<()> {
    let Some(path) = model_path() else {
        println!("skipped: {FILE} is not in the cache; run scripts/fetch-demo-model.sh");
        return Ok(());
    };
    let threads = rayon::current_num_threads();
    let llama = std::env::var_os("LLAMA_BENCH").map(PathBuf::from);
    let load = |quantization: &str, dtype: &str| {
        let options = LoadOptions {
            quantization: quantization.into(),
            dtype: dtype.into(),
            max_model_len: Some(1024),
            ..LoadOptions::default()
        };
        Llm::load(&path, &options)
    };
    let mut engines = vec![("engine, quantized", load("auto", "auto")?)];
    if std::env::var_os("GGUF_MODEL").is_none() {
        engines.push(("engine, f32", load("none", "float32")?));
        engines.push(("engine, bf16", load("none", "bfloat16")?));
        engines.push(("engine, fp8", load("fp8", "bfloat16")?));
    }
    println!(
        "{}; {threads} threads; best of {ROUNDS} interleaved rounds\n",
        path.display()
    );
    // llama.cpp on the same values in bf16 (our bf16 engine's peer), when it can requantize.
    let llama_bf16 = match (&llama, std::env::var_os("LLAMA_QUANTIZE")) {
        (Some(_), Some(quantize)) if std::env::var_os("GGUF_MODEL").is_none() => {
            Some(requantized_bf16(Path::new(&quantize), &path)?)
        }
        _ => None,
    };
    // [engine quantized, f32, bf16, fp8, llama.cpp, llama.cpp bf16] x [decode, prefill], best tok/s.
    let mut best = [[0f64; 2]; 6];
    // The bf16 engine's decode against the read roofline: the memory bandwidth of
    // these machines drifts (28 to 61 GB/s within an hour on one), so each round
    // measures it right before that decode, and the fraction is per round.
    let bf16_bytes = engines
        .iter()
        .find(|(name, _)| *name == "engine, bf16")
        .map(|(_, llm)| weight_bytes_per_token(llm.model(), false));
    // 2 GiB of buffers: only when there is a bf16 row to read against them.
    let mut roof = bf16_bytes.map(|_| Roofline::new());
    let mut fractions = Vec::new();
    let batched_peer = std::env::var_os("LLAMA_BATCHED_BENCH").map(PathBuf::from);
    // [ours, llama.cpp] x BATCHES, best aggregate decode tok/s.
    let mut batched = [[0f64; BATCHES.len()]; 2];
    for round in 0..ROUNDS {
        for (i, &b) in BATCHES.iter().enumerate() {
            batched[0][i] = batched[0][i].max(decode(&mut engines[0].1, b, BATCHED_TOKENS)?);
        }
        if let Some(bin) = &batched_peer {
            for (i, tok_s) in llama_batched(bin, &path, threads)?.into_iter().enumerate() {
                batched[1][i] = batched[1][i].max(tok_s);
            }
        }
        for (e, (name, llm)) in engines.iter_mut().enumerate() {
            let read = roof
                .as_mut()
                .filter(|_| *name == "engine, bf16")
                .map(|r| r.measure().1);
            let tok_s = decode(llm, 1, DECODE_TOKENS)?;
            if let (Some(read), Some(bytes)) = (read, bf16_bytes) {
                fractions.push((tok_s * bytes / (read * 1e9), read));
            }
            best[e][0] = best[e][0].max(tok_s);
            best[e][1] = best[e][1].max(prefill(llm)?);
        }
        if let Some(bin) = &llama {
            let (tg, pp) = llama_bench(bin, &path, threads)?;
            best[4][0] = best[4][0].max(tg);
            best[4][1] = best[4][1].max(pp);
            if let Some(file) = &llama_bf16 {
                let (tg, pp) = llama_bench(bin, file, threads)?;
                best[5][0] = best[5][0].max(tg);
                best[5][1] = best[5][1].max(pp);
            }
        }
        println!("round {} done", round + 1);
    }
    print_table(&best, llama.is_some(), llama_bf16.is_some());
    print_batched(&batched);
    if let Some(bytes) = bf16_bytes {
        print_roofline(bytes, fractions);
    }
    Ok(())
}

/// The best tok/s of each engine and peer that ran, and their ratios.
fn print_table(best: &[[f64; 2]; 6], llama: bool, llama_bf16: bool) {
    println!(
        "\n{:<20} {:>18} {:>22}",
        "", "decode b1 tok/s", "prefill 128 tok/s"
    );
    let names = [
        "engine, quantized",
        "engine, f32",
        "engine, bf16",
        "engine, fp8",
        "llama.cpp",
        "llama.cpp, bf16",
    ];
    for (name, b) in names.iter().zip(best) {
        if b[0] > 0.0 {
            println!("{name:<20} {:>18.1} {:>22.1}", b[0], b[1]);
        }
    }
    if llama {
        println!(
            "\nquantized engine / llama.cpp: decode {:.2}x, prefill {:.2}x",
            best[0][0] / best[4][0],
            best[0][1] / best[4][1]
        );
    }
    if llama_bf16 {
        println!(
            "bf16 engine / llama.cpp bf16: decode {:.2}x, prefill {:.2}x",
            best[2][0] / best[5][0],
            best[2][1] / best[5][1]
        );
    }
    if best[3][0] > 0.0 {
        println!(
            "fp8 / bf16: decode {:.2}x, prefill {:.2}x",
            best[3][0] / best[2][0],
            best[3][1] / best[2][1]
        );
    }
}

/// The quantized engine's batched decode, and llama.cpp's where it ran.
fn print_batched(batched: &[[f64; BATCHES.len()]; 2]) {
    for (i, b) in BATCHES.iter().enumerate() {
        let (ours, theirs) = (batched[0][i], batched[1][i]);
        let peer = if theirs > 0.0 {
            format!(", llama.cpp {theirs:.1}: {:.2}x", ours / theirs)
        } else {
            String::new()
        };
        println!("quantized decode, batch {b}: engine {ours:.1} tok/s{peer}");
    }
}

/// The bf16 decode's fraction of the read roofline, per round: `(fraction,
/// read GB/s)` for `bytes` of weights per token.
fn print_roofline(bytes: f64, mut fractions: Vec<(f64, f64)>) {
    if fractions.is_empty() {
        return;
    }
    fractions.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (median, read) = fractions[fractions.len() / 2];
    let list: Vec<String> = fractions
        .iter()
        .map(|(f, r)| format!("{:.0}% at {r:.1}", 100.0 * f))
        .collect();
    println!(
        "bf16 decode against the read roofline ({:.0} MB of weights per token over the \
         read bandwidth measured just before, GB/s): median {:.0}% (at {read:.1} GB/s); \
         rounds: {}",
        bytes / 1e6,
        100.0 * median,
        list.join(", ")
    );
}

/// `batch` requests of `prompt_len` tokens, their prompts distinct (the first
/// id differs), each generating `max_tokens`.
fn requests(batch: usize, prompt_len: usize, max_tokens: usize) -> Vec<Request> {
    (0..batch)
        .map(|b| Request {
            prompt: Prompt::Tokens(
                (0..prompt_len)
                    // Ids below 30100: inside a 32000-token vocabulary too.
                    .map(|i| 100 + (i * 7919 % 30_000) as u32 + u32::from(i == 0) * b as u32)
                    .collect(),
            ),
            params: SamplingParams {
                ignore_eos: true,
                ..SamplingParams::greedy(max_tokens)
            },
        })
        .collect()
}

fn time(
    llm: &mut Llm,
    batch: usize,
    prompt_len: usize,
    max_tokens: usize,
) -> engine::Result<Duration> {
    let t = Instant::now();
    llm.generate(&requests(batch, prompt_len, max_tokens))?;
    Ok(t.elapsed())
}

/// Aggregate decode tok/s of `batch` sequences: generating 1 + `tokens`
/// tokens each minus generating 1.
fn decode(llm: &mut Llm, batch: usize, tokens: usize) -> engine::Result<f64> {
    let first = time(llm, batch, DECODE_PROMPT, 1)?;
    let all = time(llm, batch, DECODE_PROMPT, 1 + tokens)?;
    Ok((batch * tokens) as f64 / all.saturating_sub(first).as_secs_f64())
}

/// llama-batched-bench's aggregate decode tok/s at each of [`BATCHES`].
fn llama_batched(bin: &Path, model: &Path, threads: usize) -> engine::Result<Vec<f64>> {
    let sizes = llama_peer::Sizes {
        threads,
        prompt: DECODE_PROMPT,
        decode_tokens: DECODE_TOKENS,
        batched_tokens: BATCHED_TOKENS,
        prefill: PREFILL_TOKENS,
        // Three slots; the repeated last one is run once (consecutive duplicates dedup).
        batches: [BATCHES[0], BATCHES[1], BATCHES[1]],
        long_context: 0,
        long_tokens: 0,
    };
    let rows = llama_peer::batched_bench(bin, model, &sizes)?;
    Ok(BATCHES
        .iter()
        .map(|b| rows.iter().find(|(n, _)| n == b).map_or(0.0, |&(_, v)| v))
        .collect())
}

fn prefill(llm: &mut Llm) -> engine::Result<f64> {
    Ok(PREFILL_TOKENS as f64 / time(llm, 1, PREFILL_TOKENS, 1)?.as_secs_f64())
}

/// `file` requantized to BF16 by llama.cpp's `llama-quantize` (once, cached
/// under target/bench-models): the same values our `--dtype bfloat16` load
/// dequantizes the file to.
fn requantized_bf16(quantize: &Path, file: &Path) -> engine::Result<PathBuf> {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.parent().unwrap_or(tmp).join("bench-models");
    let stem = file.file_stem().unwrap_or_default().to_string_lossy();
    let out = dir.join(format!("{stem}.bf16.gguf"));
    if out.is_file() {
        return Ok(out);
    }
    let fail = |m: String| engine::Error::invalid(format!("llama-quantize: {m}"));
    std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    let partial = out.with_extension("partial");
    let run = Command::new(quantize)
        .arg("--allow-requantize")
        .args([file.as_os_str(), partial.as_os_str()])
        .arg("BF16")
        .output()
        .map_err(|e| fail(format!("running {}: {e}", quantize.display())))?;
    if !run.status.success() {
        return Err(fail(String::from_utf8_lossy(&run.stderr).into_owned()));
    }
    std::fs::rename(&partial, &out).map_err(|e| fail(format!("{}: {e}", out.display())))?;
    Ok(out)
}

/// llama-bench's (decode, prefill) tok/s for one repetition.
fn llama_bench(bin: &Path, model: &Path, threads: usize) -> engine::Result<(f64, f64)> {
    let out = Command::new(bin)
        .args(["-m".as_ref(), model.as_os_str()])
        .args([
            "-t",
            &threads.to_string(),
            "-p",
            &PREFILL_TOKENS.to_string(),
        ])
        .args(["-n", &DECODE_TOKENS.to_string(), "-r", "1", "-o", "json"])
        .output()
        .map_err(|e| engine::Error::invalid(format!("running {}: {e}", bin.display())))?;
    let fail = |m: String| engine::Error::invalid(format!("llama-bench: {m}"));
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| fail(e.to_string()))?;
    let (mut tg, mut pp) = (0.0, 0.0);
    for test in json.as_array().into_iter().flatten() {
        let ts = test["avg_ts"].as_f64().unwrap_or(0.0);
        if test["n_gen"].as_u64().unwrap_or(0) > 0 {
            tg = ts;
        } else {
            pp = ts;
        }
    }
    Ok((tg, pp))
}
