//! The fixture generator writes directories that the engine's config parser,
//! the tokenizers crate and the safetensors crate all read back as intended.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use engine::backend::DType;
use engine::config::{Arch, ModelConfig, RopeScaling};
use engine::fixture::{write_model_dir, ConfigLayout, FixtureSpec, TokenizerKind};
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};

/// A directory under the system temp dir, removed on drop (also when a test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("engine-fixture-gen-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

fn write(spec: &FixtureSpec, name: &str) -> TempDir {
    let dir = TempDir::new(name);
    write_model_dir(spec, &dir).unwrap();
    dir
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every file in `dir`, by name, with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Tensor name -> (dtype, shape, bytes) across all weight files of `dir`.
fn tensors(dir: &Path) -> BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for (name, bytes) in files(dir) {
        if !name.ends_with(".safetensors") {
            continue;
        }
        let st = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (t, view) in st.tensors() {
            let prev = out.insert(
                t.clone(),
                (view.dtype(), view.shape().to_vec(), view.data().to_vec()),
            );
            assert!(prev.is_none(), "{t} stored twice");
        }
    }
    out
}

fn to_f32(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => panic!("unexpected dtype {other:?}"),
    }
}

fn mean_std(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

const ARCHS: [(Arch, &str, DType, Dtype); 3] = [
    (Arch::Llama, "llama", DType::BF16, Dtype::BF16),
    (Arch::Mistral, "mistral", DType::F16, Dtype::F16),
    (Arch::Qwen2, "qwen2", DType::F32, Dtype::F32),
];

#[test]
fn tiny_configs_parse_with_the_right_fields() {
    for (arch, name, dtype, _) in ARCHS {
        let dir = write(&FixtureSpec::tiny(arch), &format!("cfg-{name}"));
        let c = ModelConfig::from_model_dir(&dir).unwrap();
        assert_eq!(c.arch, arch);
        assert_eq!(
            (c.hidden_size, c.intermediate_size, c.num_layers),
            (64, 128, 2)
        );
        assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (4, 2, 16));
        assert_eq!(c.vocab_size, 512);
        assert_eq!(c.rms_norm_eps, 1e-5);
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.rope_scaling, RopeScaling::None);
        assert_eq!(c.dtype, Some(dtype));
        assert!(!c.tie_word_embeddings);
        assert_eq!(c.qkv_bias, arch == Arch::Qwen2);
        assert!(!c.o_bias && !c.mlp_bias);
        let window = if arch == Arch::Mistral {
            Some(64)
        } else {
            None
        };
        assert_eq!(c.sliding_window, vec![window; 2]);
        assert_eq!(
            (c.bos_token_id, c.eos_token_ids.clone()),
            (Some(1), vec![2])
        );

        let gen = read_json(&dir.join("generation_config.json"));
        let eos = if arch == Arch::Mistral {
            json!(2)
        } else {
            json!([4, 2])
        };
        assert_eq!(gen["eos_token_id"], eos, "{name}");
        assert_eq!(gen["bos_token_id"], json!(1));
    }
}

#[test]
fn tokenizer_loads_round_trips_and_stays_in_the_vocabulary() {
    let texts = [
        "Hello, world!",
        "  leading spaces and\ttabs\nand newlines\r\n",
        "Grüße aus München — café, naïve, señor",
        "你好，世界！こんにちは 안녕하세요 Привет مرحبا",
        "emoji 🦀🚀 👩‍💻 and flags 🇫🇷",
        "fn main() { println!(\"{}\", 1 + 2); }",
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
        "<tool_call>{\"name\": \"f\"}</tool_call>",
        "never seen: ꙮ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u{0} \u{7f}",
        "",
    ];
    for (arch, name, _, _) in ARCHS {
        let spec = FixtureSpec::tiny(arch);
        let dir = write(&spec, &format!("tok-{name}"));
        let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        assert!(tok.get_vocab_size(true) <= spec.vocab_size);
        for (i, special) in ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
            .iter()
            .enumerate()
        {
            assert_eq!(tok.token_to_id(special), Some(i as u32));
        }
        for text in texts {
            let enc = tok.encode(text, false).unwrap();
            assert!(enc
                .get_ids()
                .iter()
                .all(|&id| (id as usize) < spec.vocab_size));
            assert_eq!(
                tok.decode(enc.get_ids(), false).unwrap(),
                text,
                "{name}: {text:?}"
            );

            let with_bos = tok.encode(text, true).unwrap();
            assert_eq!(with_bos.get_ids().first(), Some(&1), "<s> is prepended");
            assert_eq!(&with_bos.get_ids()[1..], enc.get_ids());
        }
        // Non-special added tokens survive skip_special_tokens; specials do not.
        let enc = tok
            .encode("<|im_start|>a<tool_call>b<|im_end|>", false)
            .unwrap();
        assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "a<tool_call>b");
        // The merges learned something: common words are single tokens.
        assert_eq!(tok.encode(" the", false).unwrap().get_ids().len(), 1);

        let cfg = read_json(&dir.join("tokenizer_config.json"));
        let eos = if arch == Arch::Mistral {
            "</s>"
        } else {
            "<|im_end|>"
        };
        assert_eq!(cfg["eos_token"], json!(eos));
        assert_eq!(cfg["bos_token"], json!("<s>"));
        assert!(cfg["chat_template"]
            .as_str()
            .unwrap()
            .contains(if arch == Arch::Mistral {
                "[INST]"
            } else {
                "<|im_start|>"
            }));
        for (id, entry) in cfg["added_tokens_decoder"].as_object().unwrap() {
            let content = entry["content"].as_str().unwrap();
            assert_eq!(
                tok.token_to_id(content),
                Some(id.parse().unwrap()),
                "{content}"
            );
        }
        let map = read_json(&dir.join("special_tokens_map.json"));
        assert_eq!(map["eos_token"], json!(eos));
    }
}

#[test]
fn same_seed_same_bytes_different_seed_different_weights() {
    let spec = FixtureSpec::tiny(Arch::Llama);
    let a = write(&spec, "det-a");
    let b = write(&spec, "det-b");
    assert_eq!(files(&a), files(&b));

    let mut other = spec.clone();
    other.seed += 1;
    let c = write(&other, "det-c");
    let (fa, fc) = (files(&a), files(&c));
    assert_eq!(
        fa["tokenizer.json"], fc["tokenizer.json"],
        "the tokenizer does not depend on the seed"
    );
    let (ta, tc) = (tensors(&a), tensors(&c));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tc.keys().collect::<Vec<_>>());
    for (name, (_, _, bytes)) in &ta {
        assert_ne!(bytes, &tc[name].2, "{name} did not change with the seed");
    }
}

#[test]
fn sharded_index_covers_every_tensor_once() {
    let mut spec = FixtureSpec::tiny(Arch::Qwen2);
    spec.shards = 3;
    let dir = write(&spec, "sharded");
    let names: BTreeSet<String> = files(&dir).into_keys().collect();
    assert!(!names.contains("model.safetensors"));
    let shard_names: Vec<String> = (1..=3)
        .map(|i| format!("model-{i:05}-of-00003.safetensors"))
        .collect();
    for s in &shard_names {
        assert!(names.contains(s), "{s} missing");
    }

    let index = read_json(&dir.join("model.safetensors.index.json"));
    let weight_map = index["weight_map"].as_object().unwrap();
    let mut total = 0;
    let mut seen = BTreeSet::new();
    for shard in &shard_names {
        let bytes = std::fs::read(dir.join(shard)).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert!(!st.is_empty(), "{shard} is empty");
        for (t, view) in st.tensors() {
            assert_eq!(weight_map[&t], json!(shard), "{t}");
            assert!(seen.insert(t), "tensor in two shards");
            total += view.data().len();
        }
    }
    assert_eq!(
        seen.len(),
        weight_map.len(),
        "weight_map names a tensor no shard holds"
    );
    assert_eq!(index["metadata"]["total_size"], json!(total));

    // Sharding moves tensors between files but never changes them.
    spec.shards = 1;
    let single = write(&spec, "unsharded");
    assert_eq!(tensors(&single), tensors(&dir));
}

#[test]
fn rewriting_a_directory_removes_stale_files() {
    let mut spec = FixtureSpec::tiny(Arch::Mistral);
    spec.shards = 2;
    spec.separate_chat_template_file = true;
    let dir = write(&spec, "rewrite");
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();

    let spec = FixtureSpec::tiny(Arch::Mistral);
    write_model_dir(&spec, &dir).unwrap();
    let names: Vec<String> = files(&dir).into_keys().collect();
    let expected = [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "notes.txt",
        "provenance.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ];
    assert_eq!(names, expected);
}

#[test]
fn tensor_names_shapes_and_dtypes() {
    for (arch, name, _, st_dtype) in ARCHS {
        let dir = write(&FixtureSpec::tiny(arch), &format!("shapes-{name}"));
        let t = tensors(&dir);
        let shape = |n: &str| {
            t.get(n)
                .map(|x| x.1.clone())
                .unwrap_or_else(|| panic!("{name}: no {n}"))
        };
        assert!(t.values().all(|x| x.0 == st_dtype));
        assert_eq!(shape("model.embed_tokens.weight"), vec![512, 64]);
        assert_eq!(shape("lm_head.weight"), vec![512, 64]);
        assert_eq!(shape("model.norm.weight"), vec![64]);
        for i in 0..2 {
            let p = format!("model.layers.{i}");
            assert_eq!(shape(&format!("{p}.self_attn.q_proj.weight")), vec![64, 64]);
            assert_eq!(shape(&format!("{p}.self_attn.k_proj.weight")), vec![32, 64]);
            assert_eq!(shape(&format!("{p}.self_attn.v_proj.weight")), vec![32, 64]);
            assert_eq!(shape(&format!("{p}.self_attn.o_proj.weight")), vec![64, 64]);
            assert_eq!(shape(&format!("{p}.mlp.gate_proj.weight")), vec![128, 64]);
            assert_eq!(shape(&format!("{p}.mlp.up_proj.weight")), vec![128, 64]);
            assert_eq!(shape(&format!("{p}.mlp.down_proj.weight")), vec![64, 128]);
            assert_eq!(shape(&format!("{p}.input_layernorm.weight")), vec![64]);
            assert_eq!(
                shape(&format!("{p}.post_attention_layernorm.weight")),
                vec![64]
            );
            for proj in ["q_proj", "k_proj", "v_proj"] {
                let bias = t.get(&format!("{p}.self_attn.{proj}.bias"));
                assert_eq!(bias.is_some(), arch == Arch::Qwen2, "{name} {proj} bias");
            }
        }
        let per_layer = if arch == Arch::Qwen2 { 12 } else { 9 };
        assert_eq!(t.len(), 3 + 2 * per_layer, "{name}: no extra tensors");
    }
}

#[test]
fn weights_follow_the_documented_init() {
    let dir = write(&FixtureSpec::tiny(Arch::Qwen2), "init");
    let t = tensors(&dir);
    let values = |n: &str| to_f32(t[n].0, &t[n].2);
    let (m, s) = mean_std(&values("model.embed_tokens.weight"));
    assert!(
        m.abs() < 0.05 && (s - 1.0).abs() < 0.05,
        "embeddings {m} {s}"
    );
    let (m, s) = mean_std(&values("model.layers.0.mlp.gate_proj.weight"));
    assert!(
        m.abs() < 0.01 && (s - 0.125).abs() < 0.01,
        "gate_proj {m} {s}"
    );
    let (m, s) = mean_std(&values("model.layers.0.mlp.down_proj.weight"));
    assert!((s - 1.0 / 128f64.sqrt()).abs() < 0.01, "down_proj {m} {s}");
    let norm = values("model.layers.1.input_layernorm.weight");
    let (m, s) = mean_std(&norm);
    assert!(
        (m - 1.0).abs() < 0.05 && (s - 0.1).abs() < 0.04,
        "norm {m} {s}"
    );
    let bias = values("model.layers.0.self_attn.q_proj.bias");
    assert!(bias.iter().all(|&b| b != 0.0) && bias.iter().all(|b| b.abs() < 1.0));
}

#[test]
fn tied_embeddings_have_no_lm_head() {
    let mut spec = FixtureSpec::tiny(Arch::Llama);
    spec.tie_word_embeddings = true;
    let dir = write(&spec, "tied");
    assert!(
        ModelConfig::from_model_dir(&dir)
            .unwrap()
            .tie_word_embeddings
    );
    let t = tensors(&dir);
    assert!(!t.contains_key("lm_head.weight"));
    assert!(t.contains_key("model.embed_tokens.weight"));
}

#[test]
fn transformers5_layout_and_rope_scaling_parse() {
    let llama3 = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 1024});
    for layout in [ConfigLayout::Classic, ConfigLayout::Transformers5] {
        let mut spec = FixtureSpec::tiny(Arch::Llama);
        spec.config_layout = layout;
        spec.rope_scaling = Some(llama3.clone());
        spec.head_dim = Some(32);
        spec.dtype = DType::F16;
        let dir = write(&spec, &format!("layout-{layout:?}"));
        let raw = read_json(&dir.join("config.json"));
        let t5 = layout == ConfigLayout::Transformers5;
        assert_eq!(raw.get("rope_parameters").is_some(), t5);
        assert_eq!(raw.get("dtype").is_some(), t5);
        assert_eq!(raw.get("torch_dtype").is_some(), !t5);
        let c = ModelConfig::from_model_dir(&dir).unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.dtype, Some(DType::F16));
        assert_eq!(c.head_dim, 32);
        assert_eq!(
            c.rope_scaling,
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 1024.0
            }
        );
        assert_eq!(
            tensors(&dir)["model.layers.0.self_attn.q_proj.weight"].1,
            vec![128, 64]
        );
    }
}

#[test]
fn chat_template_file_and_no_tokenizer() {
    let mut spec = FixtureSpec::tiny(Arch::Mistral);
    spec.separate_chat_template_file = true;
    let dir = write(&spec, "jinja");
    let template = std::fs::read_to_string(dir.join("chat_template.jinja")).unwrap();
    assert_eq!(Some(template), spec.chat_template);
    assert!(read_json(&dir.join("tokenizer_config.json"))
        .get("chat_template")
        .is_none());

    let mut spec = FixtureSpec::tiny(Arch::Llama);
    spec.tokenizer = TokenizerKind::None;
    spec.chat_template = None;
    let dir = write(&spec, "no-tokenizer");
    let names = files(&dir).into_keys().collect::<Vec<_>>();
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with("tokenizer") && !n.starts_with("special_tokens")),
        "{names:?}"
    );
    assert!(ModelConfig::from_model_dir(&dir).is_ok());
}

#[test]
fn llama_1b_spec_has_tinyllama_shape() {
    // Only the spec: writing 2.2 GB does not belong in a test.
    let s = FixtureSpec::llama_1b();
    assert_eq!(
        (s.hidden_size, s.intermediate_size, s.num_layers),
        (2048, 5632, 22)
    );
    assert_eq!((s.num_heads, s.num_kv_heads, s.vocab_size), (32, 4, 32000));
    assert_eq!(
        (s.dtype, s.rope_theta, s.tokenizer),
        (DType::BF16, 10000.0, TokenizerKind::None)
    );
    s.validate().unwrap();
}
