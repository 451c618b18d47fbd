//! A Hugging Face model directory whose config.json is a fixture's
//! (`ENGINE_FUZZ_MODEL_DIR`) with a few of its values replaced by the fuzzer:
//! sizes, head counts, rope scaling, token ids, dtypes, each set to a hostile
//! or an ordinary value of any JSON kind; the other files (weights,
//! tokenizer) are the fixture's. Loading must end in a model or an error,
//! never a panic; a model that loads must tokenize and generate.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::{Result, Unstructured};
use engine::generate::{Llm, Prompt, Request};
use engine::loader::LoadOptions;
use engine::sampling::SamplingParams;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};

/// The keys a Llama-family config.json holds (`rope_scaling.*` nested).
const KEYS: &[&str] = &[
    "architectures",
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "num_hidden_layers",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_scaling.rope_type",
    "rope_scaling.type",
    "rope_scaling.factor",
    "rope_scaling.original_max_position_embeddings",
    "rope_scaling.low_freq_factor",
    "rope_scaling.high_freq_factor",
    "partial_rotary_factor",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "torch_dtype",
    "dtype",
    "hidden_act",
    "attention_bias",
    "mlp_bias",
    "sliding_window",
    "use_sliding_window",
    "quantization_config",
    "quantization_config.quant_method",
];

const NUMBERS: &[f64] = &[
    0.0, 1.0, -1.0, 2.0, 3.0, 7.0, 64.0, 127.0, 128.0, 3000.0, 65536.0, 2147483647.0,
    2147483648.0, 4294967296.0, 1e15, 1e300, 0.5, 1e-30, -1e300,
];

const STRINGS: &[&str] = &[
    "llama", "qwen2", "mistral", "LlamaForCausalLM", "linear", "dynamic", "yarn", "llama3",
    "longrope", "default", "bfloat16", "float16", "float32", "float8_e4m3fn", "int8",
    "silu", "gelu", "fp8", "compressed-tensors", "gptq", "", "NaN",
];

fn value(u: &mut Unstructured, depth: u32) -> Result<Value> {
    Ok(match u.int_in_range(0..=9)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => json!(*u.choose(NUMBERS)?),
        3 => json!(u.arbitrary::<i64>()?),
        4 => json!(u.arbitrary::<u64>()?),
        5 => json!(u.arbitrary::<f64>()?),
        6 => json!(*u.choose(STRINGS)?),
        7 => json!(u.int_in_range(0u64..=300)?),
        8 if depth < 2 => {
            let n = u.int_in_range(0..=3)?;
            Value::Array((0..n).map(|_| value(u, depth + 1)).collect::<Result<_>>()?)
        }
        _ if depth < 2 => {
            let mut map = Map::new();
            for _ in 0..u.int_in_range(0..=3)? {
                let key = u.choose(KEYS)?.rsplit('.').next().unwrap_or_default();
                map.insert(key.to_string(), value(u, depth + 1)?);
            }
            Value::Object(map)
        }
        _ => Value::Null,
    })
}

/// The fixture's config with up to six keys set or removed.
fn config(base: &Value, u: &mut Unstructured) -> Result<Value> {
    let mut config = base.clone();
    for _ in 0..u.int_in_range(1..=6)? {
        let key = *u.choose(KEYS)?;
        let remove = u.ratio(1, 8)?;
        let new = value(u, 0)?;
        let (parent, leaf) = match key.split_once('.') {
            Some((outer, inner)) => {
                let slot = &mut config[outer];
                if !slot.is_object() {
                    *slot = json!({});
                }
                (slot, inner)
            }
            None => (&mut config, key),
        };
        let map = parent.as_object_mut().expect("an object");
        if remove {
            map.remove(leaf);
        } else {
            map.insert(leaf.to_string(), new);
        }
    }
    Ok(config)
}

/// A directory holding links to every file of the fixture but config.json,
/// and the fixture's config.
fn model_dir() -> &'static (PathBuf, Value) {
    static DIR: OnceLock<(PathBuf, Value)> = OnceLock::new();
    DIR.get_or_init(|| {
        let fixture = PathBuf::from(
            std::env::var("ENGINE_FUZZ_MODEL_DIR")
                .expect("ENGINE_FUZZ_MODEL_DIR names a model directory"),
        );
        let dir = std::env::temp_dir().join(format!("engine-fuzz-hf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(&fixture).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap();
            if name != "config.json" {
                let link = dir.join(name);
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(&path, link).unwrap();
            }
        }
        let base = std::fs::read(fixture.join("config.json")).unwrap();
        (dir, serde_json::from_slice(&base).unwrap())
    })
}

fuzz_target!(|data: &[u8]| {
    let (dir, base) = model_dir();
    let Ok(config) = config(base, &mut Unstructured::new(data)) else {
        return;
    };
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let options = LoadOptions {
        dtype: "float32".into(),
        ..LoadOptions::default()
    };
    let Ok(mut llm) = Llm::load(dir, &options) else {
        return;
    };
    let _ = llm.generate(&[Request {
        prompt: Prompt::Text("Hello, world! 12345".into()),
        params: SamplingParams::greedy(2),
    }]);
});
