//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod c_engine;
pub mod json_schema;

use std::path::PathBuf;

pub const FIXTURES: [&str; 3] = ["tiny-llama", "tiny-mistral", "tiny-qwen2"];

/// The repository: `ENGINE_REPO_DIR` when a test binary runs away from the
/// checkout it was built in (the GPU machine), else the build's.
pub fn repo_dir() -> PathBuf {
    std::env::var_os("ENGINE_REPO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

pub fn fixture_dir(name: &str) -> PathBuf {
    repo_dir().join("tests/fixtures").join(name)
}

pub fn reference(name: &str) -> serde_json::Value {
    let text =
        std::fs::read_to_string(fixture_dir(name).join("reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("reference.json parses")
}

pub fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

pub fn f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// ‖a − b‖₂ / ‖b‖₂
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}
