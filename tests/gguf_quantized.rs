//! The demo model, SmolLM2-135M-Instruct Q4_1 GGUF, served quantized (its blocks
//! multiplied in place, the activations quantized to 8 bits per block) against
//! the same file dequantized to f32 (the path gguf_reference.rs checks against
//! transformers): over a few hundred positions of real text
//! (tests/fixtures/smollm2-gguf/kl-text.txt), the mean KL divergence of the
//! quantized next-token distribution from the f32 one, and how often their
//! argmax agrees. Skipped when the model is not in the cache.
//!
//! Bounds: measured on this file (AVX-512 VNNI kernels, Zen 4), 340 positions,
//! mean KL 0.0028 nats (max 0.012), argmax agreement 95.9%. The bounds (mean KL
//! < 0.02, agreement > 85%) leave room for other CPUs' kernels (portable: the
//! same integer sums, other f32 rounding) and fail for a kernel bug, which moves
//! the KL by orders of magnitude.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use engine::generate::Llm;
use engine::loader::LoadOptions;

const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn model_path() -> Option<PathBuf> {
    let cache = std::env::var_os("ENGINE_CACHE_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/engine")))?;
    let path = cache.join("demo").join(FILE);
    path.is_file().then_some(path)
}

fn load(path: &Path, quantization: &str) -> Llm {
    let options = LoadOptions {
        quantization: quantization.into(),
        max_model_len: Some(1024),
        ..LoadOptions::default()
    };
    Llm::load(path, &options).expect("the demo model loads")
}

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits.iter().map(|&l| l as f64 - max - sum.ln()).collect()
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

#[test]
fn quantized_path_stays_close_to_the_dequantized_one() {
    let Some(path) = model_path() else {
        println!("skipped: {FILE} is not in the cache; run scripts/fetch-demo-model.sh");
        return;
    };
    let text = std::fs::read_to_string(fixture_dir("smollm2-gguf").join("kl-text.txt")).unwrap();
    let mut f32_llm = load(&path, "none");
    let tokens = f32_llm.tokenizer().unwrap().encode(&text, false).unwrap();
    assert!(tokens.len() >= 300, "{} tokens", tokens.len());
    let reference = f32_llm.prompt_logits(&tokens).unwrap();
    drop(f32_llm);
    let quantized = load(&path, "auto").prompt_logits(&tokens).unwrap();

    let (mut kl_sum, mut kl_max, mut same) = (0f64, 0f64, 0usize);
    for (p, q) in reference.iter().zip(&quantized) {
        let (lp, lq) = (log_softmax(p), log_softmax(q));
        let kl: f64 = lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum();
        kl_sum += kl;
        kl_max = kl_max.max(kl);
        same += usize::from(argmax(p) == argmax(q));
    }
    let n = reference.len();
    let mean = kl_sum / n as f64;
    let agree = same as f64 / n as f64;
    println!(
        "{n} positions: mean KL {mean:.5} nats, max {kl_max:.4}, argmax agreement {:.1}%",
        100.0 * agree
    );
    assert!(mean < 0.02, "mean KL {mean} nats");
    assert!(agree > 0.85, "argmax agreement {agree}");
}
