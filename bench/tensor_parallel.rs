//! Decode speed of the CPU engine at tensor parallel size 1, 2 and 4 on a
//! generated Llama (hidden 1024, 8 layers, 16 heads over 4 KV heads, f32,
//! ~0.5 GB). The rounds interleave the sizes (1, 2, 4, 1, 2, 4, ...) so that a
//! machine shared with other work slows each alike; the best round is kept.
//! On the CPU the ranks split the compute threads, so this measures the cost
//! of the all-reduces (two per layer) and the lockstep, not a speed-up.
//!
//! `cargo bench --bench tensor_parallel`; without `--bench` it only says so.

use std::path::PathBuf;
use std::time::Instant;

use engine::backend::DType;
use engine::config::Arch;
use engine::fixture::{write_model_dir, FixtureSpec, TokenizerKind};
use engine::generate::{Llm, Prompt, Request};
use engine::loader::LoadOptions;
use engine::sampling::SamplingParams;

const ROUNDS: usize = 3;
const DECODE_TOKENS: usize = 32;
const SIZES: [usize; 3] = [1, 2, 4];

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("tensor_parallel: run it with `cargo bench --bench tensor_parallel`");
        return;
    }
    if let Err(e) = run() {
        eprintln!("tensor_parallel bench failed: {e}");
        std::process::exit(1);
    }
}

fn model_dir() -> engine::Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    );
    let dir = target.join("bench-models/tp-llama");
    if !dir.join("provenance.json").is_file() {
        let spec = FixtureSpec {
            hidden_size: 1024,
            intermediate_size: 2816,
            num_layers: 8,
            num_heads: 16,
            num_kv_heads: 4,
            vocab_size: 8192,
            dtype: DType::F32,
            tokenizer: TokenizerKind::None,
            chat_template: None,
            ..FixtureSpec::tiny(Arch::Llama)
        };
        write_model_dir(&spec, &dir)?;
    }
    Ok(dir)
}

fn requests(batch: usize, max_tokens: usize) -> Vec<Request> {
    (0..batch)
        .map(|b| Request {
            prompt: Prompt::Tokens((0..16).map(|i| 10 + (b * 31 + i * 7) as u32).collect()),
            params: SamplingParams {
                ignore_eos: true,
                ..SamplingParams::greedy(max_tokens)
            },
        })
        .collect()
}

/// Decode tokens/s: generating `1 + DECODE_TOKENS` minus generating 1.
fn decode_tokens_per_s(llm: &mut Llm, batch: usize) -> engine::Result<f64> {
    let t = Instant::now();
    llm.generate(&requests(batch, 1))?;
    let first = t.elapsed();
    let t = Instant::now();
    llm.generate(&requests(batch, 1 + DECODE_TOKENS))?;
    let all = t.elapsed();
    Ok((batch * DECODE_TOKENS) as f64 / all.saturating_sub(first).as_secs_f64())
}

fn run() -> engine::Result<()> {
    let dir = model_dir()?;
    let mut llms = SIZES
        .iter()
        .map(|&tp| {
            let options = LoadOptions {
                max_model_len: Some(512),
                skip_tokenizer_init: true,
                tensor_parallel_size: (tp > 1).then_some(tp),
                ..LoadOptions::default()
            };
            Llm::load(&dir, &options)
        })
        .collect::<engine::Result<Vec<_>>>()?;
    println!("threads: {}", rayon::current_num_threads());
    for batch in [1, 8] {
        let mut best = [0f64; SIZES.len()];
        for _ in 0..ROUNDS {
            for (b, llm) in best.iter_mut().zip(llms.iter_mut()) {
                *b = b.max(decode_tokens_per_s(llm, batch)?);
            }
        }
        for (tp, b) in SIZES.iter().zip(best) {
            println!(
                "decode batch {batch}, tp {tp}: {b:.1} tok/s ({:.2}x tp 1)",
                b / best[0]
            );
        }
    }
    Ok(())
}
