//! Tensor parallelism on the CPU (worker threads, an in-process all-reduce):
//! the model sharded over 2 and 4 ranks gives the unsharded model's results.
//! Teacher-forced logits within 1e-5 relative L2 in float32 (the sums run in
//! another order, so bits differ), and greedy tokens equal up to the first
//! position where the unsharded model's top-2 logprob margin is at most 1e-3
//! (a near-tie either order of sums may break either way); in bfloat16 (a
//! 16-bit KV cache, whose rounding a reordered sum can tip) at most 5e-2, as
//! tests/backend_parity.rs allows.
//!
//! Models: the three reference fixtures (4 heads over 2 KV heads: TP 4
//! replicates the KV heads; Qwen2 has q/k/v biases, Mistral a sliding
//! window) and a generated one with tied embeddings and a vocabulary no rank
//! count divides (a padded vocab-parallel LM head).

mod common;

use std::path::{Path, PathBuf};

use common::{fixture_dir, reference, rel_l2, u32s, FIXTURES};
use engine::backend::DType;
use engine::config::Arch;
use engine::engine::{Prompt, SeqResult};
use engine::fixture::{write_model_dir, FixtureSpec};
use engine::generate::{Llm, Request};
use engine::loader::LoadOptions;
use engine::sampling::SamplingParams;

const LOGITS_TOL: f64 = 1e-5;
const F32_TIE_MARGIN: f32 = 1e-3;
const BF16_TIE_MARGIN: f32 = 5e-2;

fn options(dtype: &str, tp: Option<usize>) -> LoadOptions {
    LoadOptions {
        dtype: dtype.into(),
        num_kv_blocks: Some(256),
        tensor_parallel_size: tp,
        ..LoadOptions::default()
    }
}

fn load(dir: &Path, dtype: &str, tp: Option<usize>) -> Llm {
    Llm::load(dir, &options(dtype, tp))
        .unwrap_or_else(|e| panic!("{} at tp {tp:?}: {e}", dir.display()))
}

/// Tied embeddings, vocabulary 509 (prime): every rank count pads the LM head.
fn tied_fixture() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("engine-tp-tied-{}", std::process::id()));
    if !dir.join("config.json").exists() {
        let spec = FixtureSpec {
            tie_word_embeddings: true,
            vocab_size: 509,
            dtype: DType::F32,
            seed: 5,
            ..FixtureSpec::tiny(Arch::Qwen2)
        };
        let tmp = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        write_model_dir(&spec, tmp.path()).unwrap();
        let _ = std::fs::rename(tmp.keep(), &dir);
    }
    dir
}

/// Every model with its prompts (token ids).
fn models() -> Vec<(String, PathBuf, Vec<Vec<u32>>)> {
    let mut models: Vec<_> = FIXTURES
        .iter()
        .map(|name| {
            let prompts = reference(name)["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|case| u32s(&case["prompt_token_ids"]))
                .collect();
            (name.to_string(), fixture_dir(name), prompts)
        })
        .collect();
    let tied = vec![vec![5, 77, 301, 12, 508, 9, 44], (3..90).collect()];
    models.push(("tied-509".into(), tied_fixture(), tied));
    models
}

#[test]
fn sharded_logits_match_the_unsharded_model() {
    for (name, dir, prompts) in models() {
        let mut single = load(&dir, "float32", None);
        let want: Vec<_> = prompts
            .iter()
            .map(|p| single.prompt_logits(p).unwrap())
            .collect();
        for tp in [1, 2, 4] {
            let mut sharded = load(&dir, "float32", Some(tp));
            let mut worst = 0f64;
            for (prompt, want) in prompts.iter().zip(&want) {
                let got = sharded.prompt_logits(prompt).unwrap();
                assert_eq!(got.len(), want.len(), "{name} tp {tp}");
                for (g, w) in got.iter().zip(want) {
                    assert_eq!(g.len(), w.len(), "{name} tp {tp}: vocabulary");
                    worst = worst.max(rel_l2(g, w));
                }
            }
            assert!(
                worst < LOGITS_TOL,
                "{name} tp {tp}: logits differ by {worst:.2e} relative"
            );
        }
    }
}

fn greedy_requests(prompts: &[Vec<u32>]) -> Vec<Request> {
    let params = SamplingParams {
        logprobs: Some(2),
        ignore_eos: true,
        ..SamplingParams::greedy(24)
    };
    prompts
        .iter()
        .map(|p| Request {
            prompt: Prompt::Tokens(p.clone()),
            params: params.clone(),
        })
        .collect()
}

/// `got` follows `want` up to the first near-tie of `want`'s.
fn assert_same_greedy(what: &str, got: &SeqResult, want: &SeqResult, tie: f32) {
    for (i, (g, w)) in got.token_ids.iter().zip(&want.token_ids).enumerate() {
        if g != w {
            let top = &want.logprobs[i].top;
            let margin = top[0].logprob - top[1].logprob;
            assert!(
                margin <= tie,
                "{what}: token {i} is {g}, unsharded {w} (top-2 margin {margin:.2e})"
            );
            return;
        }
    }
    assert_eq!(got.token_ids.len(), want.token_ids.len(), "{what}");
}

#[test]
fn sharded_greedy_decoding_matches_in_each_dtype() {
    for (name, dir, prompts) in models() {
        for dtype in ["float32", "bfloat16"] {
            let requests = greedy_requests(&prompts);
            let tie = if dtype == "float32" {
                F32_TIE_MARGIN
            } else {
                BF16_TIE_MARGIN
            };
            let want = load(&dir, dtype, None).generate(&requests).unwrap();
            for tp in [2, 4] {
                let got = load(&dir, dtype, Some(tp)).generate(&requests).unwrap();
                for (r, (g, w)) in got.iter().zip(&want).enumerate() {
                    let what = format!("{name} {dtype} tp {tp} request {r}");
                    assert_same_greedy(&what, g.best(), w.best(), tie);
                }
            }
        }
    }
}

fn load_err(dir: &Path, tp: usize) -> String {
    match Llm::load(dir, &options("float32", Some(tp))) {
        Ok(_) => panic!("tensor parallel size {tp} loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn sizes_that_do_not_divide_the_model_are_clear_errors() {
    let dir = fixture_dir("tiny-llama");
    let err = load_err(&dir, 3);
    assert!(
        err.contains("attention heads (4) must be divisible by tensor parallel size (3)"),
        "{err}"
    );
    let err = load_err(&dir, 8);
    assert!(err.contains("attention heads (4)"), "{err}");
    let err = load_err(&dir, 0);
    assert!(
        err.contains("tensor_parallel_size must be between 1"),
        "{err}"
    );
    let err = load_err(&dir, 1 << 20);
    assert!(
        err.contains("tensor_parallel_size must be between 1"),
        "{err}"
    );
}

/// On the GPU machine (scripts/device/e2e.sh sets ENGINE_TP_CUDA=1): one GPU
/// as a tensor-parallel group of one, its all-reduces and all-gather through
/// NCCL, against the unsharded CPU model. TP ≥ 2 needs several GPUs.
#[cfg(feature = "cuda")]
#[test]
fn cuda_tp1_through_nccl_matches_the_cpu() {
    use engine::backend::cuda::CudaBackend;
    use engine::backend::Backend;
    use engine::loader::load_engine_core;
    if std::env::var_os("ENGINE_TP_CUDA").is_none_or(|v| v != "1") {
        eprintln!("skipped: set ENGINE_TP_CUDA=1 on a machine with a GPU and NCCL");
        return;
    }
    for (name, dir, prompts) in models() {
        let mut cpu = load(&dir, "float32", None);
        let backend = CudaBackend::new(0).expect("a GPU");
        let core = load_engine_core(&dir, &options("float32", Some(1)), backend, &mut |_, _| {})
            .unwrap_or_else(|e| panic!("{name} on cuda -tp 1: {e}"));
        assert_eq!(core.tensor_parallel_size(), 1);
        let mut gpu = Llm::from_core(core);
        let mut worst = 0f64;
        for prompt in &prompts {
            let want = cpu.prompt_logits(prompt).unwrap();
            let got = gpu.prompt_logits(prompt).unwrap();
            for (g, w) in got.iter().zip(&want) {
                worst = worst.max(rel_l2(g, w));
            }
        }
        eprintln!("{name}: cuda -tp 1 (NCCL) vs cpu: worst relative L2 {worst:.2e}");
        assert!(worst < LOGITS_TOL, "{name}: {worst:.2e}");
        let requests = greedy_requests(&prompts);
        let want = cpu.generate(&requests).unwrap();
        let got = gpu.generate(&requests).unwrap();
        for (r, (g, w)) in got.iter().zip(&want).enumerate() {
            let what = format!("{name} cuda -tp 1 request {r}");
            assert_same_greedy(&what, g.best(), w.best(), F32_TIE_MARGIN);
        }
        // Decode steps through CUDA graphs that hold the NCCL collectives.
        let graphed = LoadOptions {
            cuda_graphs: true,
            ..options("float32", Some(1))
        };
        let backend = CudaBackend::new(0).expect("a GPU");
        let core = load_engine_core(&dir, &graphed, backend, &mut |_, _| {})
            .unwrap_or_else(|e| panic!("{name} on cuda -tp 1 with graphs: {e}"));
        let mut gpu = Llm::from_core(core);
        let got = gpu.generate(&requests).unwrap();
        for (r, (g, w)) in got.iter().zip(&want).enumerate() {
            let what = format!("{name} cuda -tp 1 with graphs, request {r}");
            assert_same_greedy(&what, g.best(), w.best(), F32_TIE_MARGIN);
        }
        let captured = gpu.model().backend().graphs_captured();
        eprintln!("{name}: cuda -tp 1 (NCCL): {captured} graphs captured");
        assert!(captured >= 1, "{name}: no graph captured under NCCL");
    }
}
