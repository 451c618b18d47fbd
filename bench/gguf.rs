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

const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const DECODE_PROMPT: usize = 16;
const DECODE_TOKENS: usize = 64;
const PREFILL_TOKENS: usize = 128;
const ROUNDS: usize = 5;

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
    // [engine quantized, f32, bf16, fp8, llama.cpp] x [decode, prefill], best tok/s.
    let mut best = [[0f64; 2]; 5];
    for round in 0..ROUNDS {
        for (e, (_, llm)) in engines.iter_mut().enumerate() {
            best[e][0] = best[e][0].max(decode(llm)?);
            best[e][1] = best[e][1].max(prefill(llm)?);
        }
        if let Some(bin) = &llama {
            let (tg, pp) = llama_bench(bin, &path, threads)?;
            best[4][0] = best[4][0].max(tg);
            best[4][1] = best[4][1].max(pp);
        }
        println!("round {} done", round + 1);
    }
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
    ];
    for (name, b) in names.iter().zip(best) {
        if b[0] > 0.0 {
            println!("{name:<20} {:>18.1} {:>22.1}", b[0], b[1]);
        }
    }
    if llama.is_some() {
        println!(
            "\nquantized engine / llama.cpp: decode {:.2}x, prefill {:.2}x",
            best[0][0] / best[4][0],
            best[0][1] / best[4][1]
        );
    }
    if best[3][0] > 0.0 {
        println!(
            "fp8 / bf16: decode {:.2}x, prefill {:.2}x",
            best[3][0] / best[2][0],
            best[3][1] / best[2][1]
        );
    }
    Ok(())
}

fn request(prompt_len: usize, max_tokens: usize) -> Vec<Request> {
    vec![Request {
        prompt: Prompt::Tokens(
            (0..prompt_len)
                // Ids below 30100: inside a 32000-token vocabulary too.
                .map(|i| 100 + (i * 7919 % 30_000) as u32)
                .collect(),
        ),
        params: SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(max_tokens)
        },
    }]
}

fn time(llm: &mut Llm, prompt_len: usize, max_tokens: usize) -> engine::Result<Duration> {
    let t = Instant::now();
    llm.generate(&request(prompt_len, max_tokens))?;
    Ok(t.elapsed())
}

/// Batch-1 decode tok/s: generating 1 + N tokens minus generating 1.
fn decode(llm: &mut Llm) -> engine::Result<f64> {
    let first = time(llm, DECODE_PROMPT, 1)?;
    let all = time(llm, DECODE_PROMPT, 1 + DECODE_TOKENS)?;
    Ok(DECODE_TOKENS as f64 / all.saturating_sub(first).as_secs_f64())
}

fn prefill(llm: &mut Llm) -> engine::Result<f64> {
    Ok(PREFILL_TOKENS as f64 / time(llm, PREFILL_TOKENS, 1)?.as_secs_f64())
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
