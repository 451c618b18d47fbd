//! FP8 weights on the CPU: compressed-tensors checkpoints (per-tensor and
//! per-channel scales) written from the f32 tiny Llama by the fixture
//! generator, and `--quantization fp8` (dynamic per-tensor scales at load).
//!
//! - exactness: the FP8 engine equals the engine on the same weights
//!   dequantized to f32 (the kernel dequantizes exactly; only the order of the
//!   f32 sums differs);
//! - fidelity: against the unquantized model, mean KL and argmax agreement;
//! - bad files: clear errors, no panic.

mod common;

use std::path::Path;

use common::rel_l2;
use engine::backend::DType;
use engine::config::fp8::Fp8Strategy;
use engine::config::Arch;
use engine::fixture::fp8::{write_fp8_checkpoint, Fp8Fixture};
use engine::fixture::{write_model_dir, FixtureSpec};
use engine::generate::{Llm, Prompt, Request};
use engine::loader::LoadOptions;
use engine::sampling::SamplingParams;
use serde_json::{json, Value};

/// 48 tokens of the tiny vocabulary (512).
fn prompt() -> Vec<u32> {
    (0..48u32).map(|i| 1 + (i * 37 + 11) % 500).collect()
}

fn load(dir: &Path, quantization: &str) -> engine::error::Result<Llm> {
    let options = LoadOptions {
        dtype: "float32".into(),
        quantization: quantization.into(),
        ..LoadOptions::default()
    };
    Llm::load(dir, &options)
}

fn logits(dir: &Path, quantization: &str) -> Vec<Vec<f32>> {
    let mut llm = load(dir, quantization).unwrap();
    llm.prompt_logits(&prompt()).unwrap()
}

fn greedy(dir: &Path, quantization: &str) -> Vec<u32> {
    let mut llm = load(dir, quantization).unwrap();
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(24)
    };
    let request = Request {
        prompt: Prompt::Tokens(prompt()[..8].to_vec()),
        params,
    };
    let out = llm.generate(&[request]).unwrap();
    out[0].best().token_ids.clone()
}

/// The f32 tiny Llama, its FP8 checkpoint and the FP8 weights dequantized.
struct Dirs {
    original: tempfile::TempDir,
    fp8: tempfile::TempDir,
    dequantized: tempfile::TempDir,
}

fn write_dirs(strategy: Fp8Strategy, static_input_scales: bool) -> Dirs {
    let dirs = Dirs {
        original: tempfile::tempdir().unwrap(),
        fp8: tempfile::tempdir().unwrap(),
        dequantized: tempfile::tempdir().unwrap(),
    };
    let spec = FixtureSpec {
        dtype: DType::F32,
        ..FixtureSpec::tiny(Arch::Llama)
    };
    write_model_dir(&spec, dirs.original.path()).unwrap();
    let fixture = Fp8Fixture {
        strategy,
        static_input_scales,
    };
    write_fp8_checkpoint(
        dirs.original.path(),
        fixture,
        dirs.fp8.path(),
        Some(dirs.dequantized.path()),
    )
    .unwrap();
    dirs
}

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits.iter().map(|&l| l as f64 - max - sum.ln()).collect()
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

/// Mean KL(reference ‖ other) in nats and the argmax agreement.
fn kl_and_agreement(reference: &[Vec<f32>], other: &[Vec<f32>]) -> (f64, f64) {
    let (mut kl, mut same) = (0f64, 0usize);
    for (p, q) in reference.iter().zip(other) {
        let (lp, lq) = (log_softmax(p), log_softmax(q));
        kl += lp
            .iter()
            .zip(&lq)
            .map(|(a, b)| a.exp() * (a - b))
            .sum::<f64>();
        same += usize::from(argmax(p) == argmax(q));
    }
    let n = reference.len() as f64;
    (kl / n, same as f64 / n)
}

#[test]
fn fp8_checkpoints_equal_their_dequantized_weights() {
    for strategy in [Fp8Strategy::Tensor, Fp8Strategy::Channel] {
        let dirs = write_dirs(strategy, false);
        let size = std::fs::metadata(dirs.fp8.path().join("model.safetensors")).unwrap();
        assert!(size.len() < 1 << 20, "{} bytes", size.len());
        let fp8 = logits(dirs.fp8.path(), "auto");
        let exact = logits(dirs.dequantized.path(), "auto");
        for (row, (a, b)) in fp8.iter().zip(&exact).enumerate() {
            let err = rel_l2(a, b);
            assert!(
                err < 1e-5,
                "{strategy:?} position {row}: relative L2 {err:.2e}"
            );
        }
        assert_eq!(
            greedy(dirs.fp8.path(), "auto"),
            greedy(dirs.dequantized.path(), "auto"),
            "{strategy:?}"
        );
        // `--quantization none` dequantizes at load: the same f32 weights, so the same bits.
        assert_eq!(logits(dirs.fp8.path(), "none"), exact, "{strategy:?}");

        let (kl, agree) = kl_and_agreement(&logits(dirs.original.path(), "auto"), &fp8);
        println!(
            "{strategy:?} vs unquantized f32: mean KL {kl:.5} nats, argmax agreement {:.1}%",
            agree * 100.0
        );
        assert!(
            kl < 0.05 && agree > 0.8,
            "{strategy:?}: KL {kl}, agreement {agree}"
        );
    }
}

#[test]
fn static_input_scales_are_read_past() {
    let dirs = write_dirs(Fp8Strategy::Channel, true);
    let fp8 = logits(dirs.fp8.path(), "auto");
    let exact = logits(dirs.dequantized.path(), "auto");
    assert!(fp8.iter().zip(&exact).all(|(a, b)| rel_l2(a, b) < 1e-5));
}

#[test]
fn quantization_fp8_quantizes_a_bf16_checkpoint_at_load() {
    let dir = tempfile::tempdir().unwrap();
    write_model_dir(&FixtureSpec::tiny(Arch::Llama), dir.path()).unwrap();
    let bf16 = logits(dir.path(), "auto");
    let fp8 = logits(dir.path(), "fp8");
    let worst = bf16
        .iter()
        .zip(&fp8)
        .map(|(a, b)| rel_l2(a, b))
        .fold(0f64, f64::max);
    let (kl, agree) = kl_and_agreement(&bf16, &fp8);
    println!(
        "fp8 dynamic vs bf16: worst relative L2 {worst:.4}, mean KL {kl:.5}, agreement {:.1}%",
        agree * 100.0
    );
    assert!(worst > 0.0, "the weights were not quantized");
    assert!(
        worst < 0.15 && kl < 0.05 && agree > 0.8,
        "L2 {worst}, KL {kl}, agreement {agree}"
    );
    let e = load(dir.path(), "awq").err().unwrap().to_string();
    assert!(e.contains("\"awq\" is not served"), "{e}");
}

/// The FP8 checkpoint's tensors, to be edited and written back.
fn edit_tensors(dir: &Path, edit: impl FnOnce(&mut Tensors)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let parsed = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = parsed
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

fn load_error(dir: &Path) -> String {
    match load(dir, "auto") {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// An edit of config.json.
type ConfigEdit<'a> = &'a dyn Fn(&mut Value);

/// A checkpoint's tensors: name, dtype, shape, bytes.
type Tensors = Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>;

const Q_PROJ: &str = "model.layers.0.self_attn.q_proj.weight";

#[test]
fn bad_fp8_files_are_clear_errors() {
    let dirs = write_dirs(Fp8Strategy::Channel, false);
    let dir = dirs.fp8.path();
    edit_tensors(dir, |t| t.retain(|(n, ..)| *n != format!("{Q_PROJ}_scale")));
    let e = load_error(dir);
    assert!(
        e.contains(Q_PROJ) && e.contains("has no") && e.contains("weight_scale"),
        "{e}"
    );

    edit_tensors(dir, |t| {
        t.push((
            format!("{Q_PROJ}_scale"),
            safetensors::Dtype::F32,
            vec![3, 1],
            vec![0; 12],
        ))
    });
    let e = load_error(dir);
    assert!(e.contains("[3, 1]") && e.contains("channel"), "{e}");

    // Codes whose byte size disagrees with their shape: the safetensors header is
    // rewritten by hand (the crate refuses to write such a file).
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    let mut value: Value = serde_json::from_str(&header).unwrap();
    value[Q_PROJ]["shape"] = json!([64, 65]);
    let mut text = serde_json::to_string(&value).unwrap();
    while text.len() < n {
        text.push(' ');
    }
    assert_eq!(text.len(), n, "the edited header must keep its length");
    bytes[8..8 + n].copy_from_slice(text.as_bytes());
    std::fs::write(&path, bytes).unwrap();
    let e = load_error(dir);
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
}

#[test]
fn unsupported_schemes_and_missing_configs_are_refused() {
    let dirs = write_dirs(Fp8Strategy::Tensor, false);
    let dir = dirs.fp8.path();
    let config_path = dir.join("config.json");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut c = config.clone();
        edit(&mut c);
        std::fs::write(&config_path, serde_json::to_string(&c).unwrap()).unwrap();
        load_error(dir)
    };
    let weights = "/quantization_config/config_groups/group_0/weights";
    let cases: [(ConfigEdit, &str); 4] = [
        (
            &|c| {
                *c.pointer_mut(weights).unwrap() =
                    json!({"num_bits": 4, "type": "int", "strategy": "group", "group_size": 128})
            },
            "4-bit int",
        ),
        (
            &|c| c.pointer_mut(weights).unwrap()["strategy"] = json!("block"),
            "\"block\"",
        ),
        (
            &|c| {
                c["quantization_config"]["sparsity_config"] = json!({"format": "sparse-24-bitmask"})
            },
            "sparse-24-bitmask",
        ),
        (
            &|c| {
                c.as_object_mut()
                    .unwrap()
                    .remove("quantization_config")
                    .map(|_| ())
                    .unwrap()
            },
            "no FP8 quantization_config",
        ),
    ];
    for (edit, needle) in cases {
        let e = with(edit);
        assert!(e.contains(needle), "{needle}: {e}");
    }
    // An e5m2 tensor is named as such.
    std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();
    edit_tensors(dir, |t| {
        let q = t.iter_mut().find(|(n, ..)| n == Q_PROJ).unwrap();
        q.1 = safetensors::Dtype::F8_E5M2;
    });
    let e = load_error(dir);
    assert!(e.contains("F8_E5M2"), "{e}");
}
