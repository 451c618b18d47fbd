//! The engine's decode latency and throughput at a real model's shape, with
//! random weights (`--load-format dummy`: only config.json), on the CPU or a
//! GPU, against the weight-bytes ÷ bandwidth roofline measured in the same run
//! (the GPU fast-path issue's device bench).
//!
//! `cargo bench --bench engine_shapes -- [--device cpu|cuda] [--shape NAME]
//! [--quick] [--fp8] [--graphs]`; shapes: `llama3-8b`, `llama2-7b` (bf16, as
//! their checkpoints) and `tiny` (a small Llama, for a run on the CPU); `--fp8`
//! quantizes the projections at load (`--quantization fp8`; the roofline
//! counts their bytes so); `--graphs` runs decode steps through CUDA graphs.
//! Rows:
//! - batch-1 decode, ms a token, after a prompt of 128 and of 2048 tokens;
//! - decode throughput (output tokens/s of the decode steps alone) at batch 64,
//!   128 and 256 after prompts of 1024 and 4096 tokens (a cell whose KV cache
//!   does not fit is skipped, saying so);
//! - 512 requests of 512 prompt tokens and 256 output tokens through the engine
//!   at once (`--quick`: 64 requests of 128 + 64), output tokens/s end to end.
//!
//! Decode rows time only the steps after every request has its first token, so
//! the prompts' prefill is not in them. Without `--bench` (`cargo test
//! --all-targets`) it only says how to run it.

use std::path::Path;
use std::time::{Duration, Instant};

use engine::backend::cpu::CpuBackend;
use engine::backend::Backend;
use engine::engine::EngineCore;
use engine::loader::{load_engine_core, LoadOptions};
use engine::sampling::SamplingParams;

#[path = "roofline.rs"]
mod roofline;
use roofline::{weight_bytes_per_token, Roofline};

/// Decode steps timed per row.
const BATCH1_STEPS: usize = 64;
const BATCHED_STEPS: usize = 16;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "engine_shapes: an end-to-end benchmark; run it with \
             `cargo bench --bench engine_shapes -- --device cpu --shape tiny`"
        );
        return;
    }
    let value = |flag: &str, default: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map_or(default.to_string(), Clone::clone)
    };
    let device = value("--device", "cpu");
    let shape = value("--shape", "tiny");
    let quick = args.iter().any(|a| a == "--quick");
    let fp8 = args.iter().any(|a| a == "--fp8");
    let graphs = args.iter().any(|a| a == "--graphs");
    if let Err(e) = run(&device, &shape, Mode { quick, fp8, graphs }) {
        eprintln!("engine_shapes failed: {e}");
        std::process::exit(1);
    }
}

/// What a run measures: `quick` fewer cells, `fp8` FP8 projections,
/// `graphs` decode through CUDA graphs.
#[derive(Clone, Copy)]
struct Mode {
    quick: bool,
    fp8: bool,
    graphs: bool,
}

fn run(device: &str, shape: &str, mode: Mode) -> engine::Result<()> {
    let dir = tempfile::tempdir().map_err(|e| engine::Error::invalid(e.to_string()))?;
    std::fs::write(dir.path().join("config.json"), config_json(shape)?)
        .map_err(|e| engine::Error::invalid(e.to_string()))?;
    match device {
        "cpu" => {
            let mut roof = Roofline::new();
            let (_, read) = roof.measure();
            bench(dir.path(), CpuBackend, read * 1e9, mode)
        }
        #[cfg(feature = "cuda")]
        "cuda" => {
            let backend = engine::backend::cuda::CudaBackend::new(0)?;
            let copy = cuda_copy_bandwidth(&backend)?;
            bench(dir.path(), backend, copy, mode)
        }
        other => Err(engine::Error::invalid(format!(
            "--device {other}: this build runs cpu{}",
            if cfg!(feature = "cuda") {
                " or cuda"
            } else {
                " (build with --features cuda for cuda)"
            }
        ))),
    }
}

/// config.json of a shape (bf16, as the checkpoints).
fn config_json(shape: &str) -> engine::Result<String> {
    // (hidden, intermediate, layers, heads, kv heads, vocab, positions, rope theta)
    let (h, i, l, a, kv, v, pos, theta) = match shape {
        "llama3-8b" => (4096, 14336, 32, 32, 8, 128256, 8192, 500000.0),
        "llama2-7b" => (4096, 11008, 32, 32, 32, 32000, 4096, 10000.0),
        "tiny" => (256, 512, 2, 4, 2, 1024, 8192, 10000.0),
        other => {
            return Err(engine::Error::invalid(format!(
                "--shape {other}: expected llama3-8b, llama2-7b or tiny"
            )))
        }
    };
    Ok(format!(
        r#"{{"architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": {h}, "intermediate_size": {i}, "num_hidden_layers": {l},
        "num_attention_heads": {a}, "num_key_value_heads": {kv}, "vocab_size": {v},
        "max_position_embeddings": {pos}, "rope_theta": {theta}, "rms_norm_eps": 1e-5,
        "torch_dtype": "bfloat16", "tie_word_embeddings": false}}"#
    ))
}

/// Device-to-device copy of 1 GiB, bytes read plus written per second (the
/// convention of the kernel bench), best of five.
#[cfg(feature = "cuda")]
fn cuda_copy_bandwidth(be: &engine::backend::cuda::CudaBackend) -> engine::Result<f64> {
    let dev = be.device();
    let n = 1usize << 28;
    let src = dev.alloc_zeros::<f32>(n)?;
    let mut dst = dev.alloc_zeros::<f32>(n)?;
    let mut best = 0f64;
    for _ in 0..5 {
        dev.synchronize()?;
        let t = Instant::now();
        dev.stream
            .memcpy_dtod(&src, &mut dst)
            .map_err(|e| engine::Error::Device(format!("copy: {e}")))?;
        dev.synchronize()?;
        best = best.max((2 * 4 * n) as f64 / t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// One printed row.
struct Row {
    name: String,
    value: String,
    note: String,
}

fn bench<B: Backend>(dir: &Path, backend: B, bandwidth: f64, mode: Mode) -> engine::Result<()> {
    let quick = mode.quick;
    let options = LoadOptions {
        dtype: "bfloat16".into(),
        quantization: if mode.fp8 { "fp8" } else { "auto" }.into(),
        cuda_graphs: mode.graphs,
        load_format: "dummy".into(),
        skip_tokenizer_init: true,
        max_model_len: Some(4096 + 2 * BATCHED_STEPS),
        max_num_seqs: 512,
        max_num_batched_tokens: 8192,
        ..LoadOptions::default()
    };
    let t = Instant::now();
    let mut core = load_engine_core(dir, &options, backend, &mut |_, _| {})?;
    let model = core.model();
    let weight_bytes = weight_bytes_per_token(model, mode.fp8);
    println!(
        "{} on {}: {} layers, hidden {}, {:?}; loaded in {:.1?}; KV cache {} blocks of {}",
        dir.display(),
        model.backend().describe(),
        model.config.num_layers,
        model.config.hidden_size,
        model.dtype,
        t.elapsed(),
        core.num_blocks(),
        options.block_size,
    );
    let roofline_ms = weight_bytes / bandwidth * 1e3;
    println!(
        "weights read per decode step {:.2} GB; bandwidth {:.0} GB/s; roofline {roofline_ms:.3} ms a token\n",
        weight_bytes / 1e9,
        bandwidth / 1e9
    );
    let mut rows = Vec::new();
    for ctx in [128, 2048] {
        let m = decode_steps(&mut core, 1, ctx, BATCH1_STEPS, options.block_size)?;
        rows.push(match m {
            Some(step) => Row {
                name: format!("decode, batch 1, context {ctx}"),
                value: format!("{:.3} ms/token", ms(step)),
                note: format!("{:.0}% of the roofline", 100.0 * roofline_ms / ms(step)),
            },
            None => skipped(format!("decode, batch 1, context {ctx}")),
        });
    }
    let (batches, contexts): (&[usize], &[usize]) = if quick {
        (&[64], &[1024])
    } else {
        (&[64, 128, 256], &[1024, 4096])
    };
    for &ctx in contexts {
        for &batch in batches {
            let name = format!("decode throughput, batch {batch}, context {ctx}");
            let m = decode_steps(&mut core, batch, ctx, BATCHED_STEPS, options.block_size)?;
            rows.push(match m {
                Some(step) => Row {
                    name,
                    value: format!("{:.0} tok/s", batch as f64 / step.as_secs_f64()),
                    note: format!("{:.2} ms a step", ms(step)),
                },
                None => skipped(name),
            });
        }
    }
    let (requests, prompt, output) = if quick {
        (64, 128, 64)
    } else {
        (512, 512, 256)
    };
    let (tokens, wall) = end_to_end(&mut core, requests, prompt, output)?;
    rows.push(Row {
        name: format!("{requests} requests of {prompt} + {output} tokens"),
        value: format!("{:.0} tok/s", tokens as f64 / wall.as_secs_f64()),
        note: format!("{tokens} output tokens in {wall:.1?}"),
    });
    println!("| row | ours | |\n|---|---|---|");
    for r in &rows {
        println!("| {} | {} | {} |", r.name, r.value, r.note);
    }
    Ok(())
}

fn skipped(name: String) -> Row {
    Row {
        name,
        value: "skipped".into(),
        note: "its KV cache does not fit".into(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `len` token ids, distinct per `seed` (no shared prefix to cache).
fn prompt_ids(len: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            3 + (x % (vocab as u64 - 3)) as u32
        })
        .collect()
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Queues `count` requests of `prompt` tokens that decode `max_tokens` each;
/// returns their ids.
fn add_requests<B: Backend>(
    core: &mut EngineCore<B>,
    count: usize,
    prompt: usize,
    max_tokens: usize,
) -> engine::Result<Vec<u64>> {
    let validator = core.validator();
    let vocab = core.model().config.vocab_size;
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(max_tokens)
    };
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tokens = prompt_ids(prompt, vocab, id);
        core.add_request(id, validator.validate(tokens, params.clone())?)?;
        ids.push(id);
    }
    Ok(ids)
}

/// The time of one decode step at `batch` sequences after prompts of `ctx`
/// tokens: the mean of `steps` steps taken once every sequence has its first
/// token. `None` when the KV cache cannot hold the batch.
fn decode_steps<B: Backend>(
    core: &mut EngineCore<B>,
    batch: usize,
    ctx: usize,
    steps: usize,
    block_size: usize,
) -> engine::Result<Option<Duration>> {
    let blocks = batch * (ctx + steps + 2).div_ceil(block_size);
    if blocks > core.num_free_blocks() {
        return Ok(None);
    }
    let ids = add_requests(core, batch, ctx, steps + 2)?;
    let mut started = std::collections::HashSet::new();
    while started.len() < batch {
        for out in core.step()? {
            if out.deltas.iter().any(|d| !d.token_ids.is_empty()) {
                started.insert(out.request_id);
            }
        }
    }
    let t = Instant::now();
    for _ in 0..steps {
        core.step()?;
    }
    let step = t.elapsed() / steps as u32;
    for id in ids {
        core.abort(id);
    }
    Ok(Some(step))
}

/// Output tokens and wall time of `count` requests run to completion at once.
fn end_to_end<B: Backend>(
    core: &mut EngineCore<B>,
    count: usize,
    prompt: usize,
    output: usize,
) -> engine::Result<(usize, Duration)> {
    let t = Instant::now();
    add_requests(core, count, prompt, output)?;
    let mut tokens = 0;
    while core.has_unfinished() {
        for out in core.step()? {
            tokens += out.deltas.iter().map(|d| d.token_ids.len()).sum::<usize>();
        }
    }
    Ok((tokens, t.elapsed()))
}
