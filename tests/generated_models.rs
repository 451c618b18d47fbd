//! Model directories in every layout the loader accepts, written by the fixture
//! generator: sharded checkpoints, tied embeddings, the transformers-5 config
//! layout, a separate chat_template.jinja, explicit head_dim, llama3 rope scaling.

use std::path::Path;

use engine::backend::DType;
use engine::config::Arch;
use engine::fixture::{write_model_dir, ConfigLayout, FixtureSpec};
use engine::generate::{Llm, Prompt, Request};
use engine::loader::LoadOptions;
use engine::sampling::SamplingParams;

fn write(spec: &FixtureSpec) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_model_dir(spec, dir.path()).unwrap();
    dir
}

fn load(dir: &Path) -> Llm {
    Llm::load(
        dir,
        &LoadOptions {
            dtype: "float32".into(),
            ..LoadOptions::default()
        },
    )
    .unwrap()
}

const PROMPT: [u32; 9] = [1, 40, 41, 300, 7, 99, 12, 500, 3];

fn last_logits(dir: &Path) -> Vec<f32> {
    load(dir).prompt_logits(&PROMPT).unwrap().pop().unwrap()
}

#[test]
fn every_architecture_generates_from_text_and_chat() {
    for arch in [Arch::Llama, Arch::Mistral, Arch::Qwen2] {
        let dir = write(&FixtureSpec::tiny(arch));
        let mut llm = load(dir.path());
        let tok = llm.tokenizer().unwrap();
        let messages = serde_json::json!([{"role": "user", "content": "Hello there"}]);
        let chat = tok
            .chat_template()
            .unwrap()
            .render(&messages, true, None)
            .unwrap();
        assert!(chat.contains("Hello there"));
        let params = SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(8)
        };
        let out = llm
            .generate(&[Request {
                prompt: Prompt::Text("The quick brown fox".into()),
                params,
            }])
            .unwrap();
        let best = out[0].best();
        assert_eq!(best.token_ids.len(), 8, "{arch:?}");
        assert_eq!(
            best.text,
            llm.tokenizer()
                .unwrap()
                .decode(&best.token_ids, true, true)
                .unwrap()
        );
    }
}

#[test]
fn sharded_checkpoint_equals_single_file() {
    let single = FixtureSpec::tiny(Arch::Qwen2);
    let sharded = FixtureSpec {
        shards: 3,
        ..single.clone()
    };
    let (a, b) = (write(&single), write(&sharded));
    assert!(b.path().join("model.safetensors.index.json").exists());
    assert!(!b.path().join("model.safetensors").exists());
    assert_eq!(last_logits(a.path()), last_logits(b.path()));
}

#[test]
fn tied_embeddings_use_the_embedding_as_lm_head() {
    let spec = FixtureSpec {
        tie_word_embeddings: true,
        ..FixtureSpec::tiny(Arch::Llama)
    };
    let dir = write(&spec);
    assert!(last_logits(dir.path()).iter().all(|l| l.is_finite()));
    // Untied, the same checkpoint lacks its head: proof the tied path read the embedding.
    let config = dir.path().join("config.json");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "\"tie_word_embeddings\": true",
        "\"tie_word_embeddings\": false",
    );
    std::fs::write(&config, text).unwrap();
    let err = Llm::load(dir.path(), &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("missing tensor `lm_head.weight`"), "{err}");
}

#[test]
fn transformers5_layout_with_llama3_rope_equals_classic_layout() {
    let rope = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
    let classic = FixtureSpec {
        rope_scaling: Some(rope),
        ..FixtureSpec::tiny(Arch::Llama)
    };
    let modern = FixtureSpec {
        config_layout: ConfigLayout::Transformers5,
        separate_chat_template_file: true,
        ..classic.clone()
    };
    let (a, b) = (write(&classic), write(&modern));
    let text = std::fs::read_to_string(b.path().join("config.json")).unwrap();
    assert!(
        text.contains("rope_parameters") && !text.contains("torch_dtype"),
        "{text}"
    );
    assert!(b.path().join("chat_template.jinja").exists());
    assert_eq!(last_logits(a.path()), last_logits(b.path()));
    // The scaling is really applied: without it the logits move.
    let plain = write(&FixtureSpec {
        rope_scaling: None,
        ..classic.clone()
    });
    assert_ne!(last_logits(a.path()), last_logits(plain.path()));
    // And the chat template comes from chat_template.jinja.
    assert!(load(b.path()).tokenizer().unwrap().chat_template().is_ok());
}

#[test]
fn explicit_head_dim_wider_than_hidden_over_heads() {
    let spec = FixtureSpec {
        head_dim: Some(32),
        ..FixtureSpec::tiny(Arch::Mistral)
    };
    let dir = write(&spec);
    let llm = load(dir.path());
    assert_eq!(llm.model().config.head_dim, 32);
    assert_eq!(
        llm.model().config.num_heads * 32,
        128,
        "q projection wider than hidden 64"
    );
    assert!(last_logits(dir.path()).iter().all(|l| l.is_finite()));
}

#[test]
fn stored_dtype_converts_to_requested() {
    let dir = write(&FixtureSpec {
        dtype: DType::F32,
        ..FixtureSpec::tiny(Arch::Llama)
    });
    for (requested, expect) in [
        ("auto", DType::F32),
        ("half", DType::F16),
        ("bfloat16", DType::BF16),
        ("float", DType::F32),
    ] {
        let llm = Llm::load(
            dir.path(),
            &LoadOptions {
                dtype: requested.into(),
                ..LoadOptions::default()
            },
        )
        .unwrap();
        assert_eq!(llm.model().dtype, expect, "{requested}");
    }
}

/// vLLM's `--load-format dummy`: a directory with only config.json and a
/// tokenizer serves random weights, the same every time and on every rank.
#[test]
fn dummy_weights_need_only_the_config() {
    let dir = write(&FixtureSpec::tiny(Arch::Llama));
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let err = Llm::load(dir.path(), &LoadOptions::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("safetensors"), "{err}");
    let dummy = |tp: Option<usize>| LoadOptions {
        dtype: "float32".into(),
        load_format: "dummy".into(),
        tensor_parallel_size: tp,
        ..LoadOptions::default()
    };
    let logits = |tp| {
        let mut llm = Llm::load(dir.path(), &dummy(tp)).unwrap();
        llm.prompt_logits(&PROMPT).unwrap().pop().unwrap()
    };
    let one = logits(None);
    assert!(one.iter().all(|x| x.is_finite()));
    assert!(one.iter().any(|&x| x != one[0]), "the logits vary");
    assert_eq!(one, logits(None), "the same weights every run");
    let two = logits(Some(2));
    let err = one
        .iter()
        .zip(&two)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        err <= 1e-5 * one.iter().fold(0f32, |m, x| m.max(x.abs())),
        "tp 2 differs by {err}"
    );
}
