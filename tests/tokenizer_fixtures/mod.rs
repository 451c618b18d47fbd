//! Shared access to the reference fixtures for the tokenizer, chat-template and
//! detokenizer tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use engine::tokenizer::Tokenizer;
use serde_json::Value;

pub const MODELS: [&str; 3] = ["tiny-llama", "tiny-mistral", "tiny-qwen2"];

pub fn model_dir(model: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(model)
}

pub fn load(model: &str) -> Tokenizer {
    Tokenizer::from_model_dir(&model_dir(model)).unwrap_or_else(|e| panic!("{model}: {e}"))
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `tokenizer-reference.json`: encodings, decodings and chat renderings by transformers.
pub fn tokenizer_reference(model: &str) -> Value {
    read_json(&model_dir(model).join("tokenizer-reference.json"))
}

/// `reference.json`: prompts and greedy continuations by transformers.
pub fn model_reference(model: &str) -> Value {
    read_json(&model_dir(model).join("reference.json"))
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an id list, got {v}"))
        .iter()
        .map(|x| {
            x.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or_else(|| panic!("bad id {x}"))
        })
        .collect()
}

pub fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("missing string {key:?} in {v}"))
}

pub fn array<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("missing array {key:?}"))
}

/// A fresh, empty directory under cargo's per-test scratch space.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("tokenizer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// A scratch copy of a fixture's tokenizer files (not the weights).
pub fn copy_tokenizer_files(model: &str, name: &str) -> PathBuf {
    let dir = scratch_dir(name);
    for file in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
    ] {
        std::fs::copy(model_dir(model).join(file), dir.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    dir
}
