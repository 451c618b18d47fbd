//! A GGUF file whose header (metadata and tensor table) is the fuzzer's input,
//! followed by the tensor data of a well-formed seed file (`ENGINE_FUZZ_GGUF`),
//! so the mutations land where the parser, the config, the tokenizer and the
//! loader read rather than in megabytes of weights. Loading must end in a model
//! or an error, never a panic; a model that loads must tokenize and generate.

#![no_main]

use std::sync::OnceLock;

use engine::generate::{Llm, Prompt, Request};
use engine::gguf::GgufFile;
use engine::loader::LoadOptions;
use engine::sampling::SamplingParams;
use libfuzzer_sys::fuzz_target;

/// The seed's tensor data: everything from its first tensor's offset on.
fn seed_data() -> &'static [u8] {
    static DATA: OnceLock<Vec<u8>> = OnceLock::new();
    DATA.get_or_init(|| {
        let path = std::env::var("ENGINE_FUZZ_GGUF").expect("ENGINE_FUZZ_GGUF names a seed .gguf");
        let file = GgufFile::open(path.as_ref()).expect("the seed is a valid GGUF");
        let start = file.tensors.iter().map(|t| t.offset).min().unwrap_or(file.map.len());
        file.map[start..].to_vec()
    })
}

fuzz_target!(|header: &[u8]| {
    let dir = std::env::temp_dir().join(format!("engine-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.gguf");
    let mut bytes = header.to_vec();
    bytes.resize(bytes.len().next_multiple_of(32), 0);
    bytes.extend_from_slice(seed_data());
    std::fs::write(&path, &bytes).unwrap();

    let options = LoadOptions {
        dtype: "float32".into(),
        max_model_len: Some(64),
        num_kv_blocks: Some(16),
        ..LoadOptions::default()
    };
    let Ok(mut llm) = Llm::load(&path, &options) else {
        return;
    };
    let _ = llm.generate(&[Request {
        prompt: Prompt::Text("Hello, world! <|im_start|> 12345".into()),
        params: SamplingParams::greedy(2),
    }]);
});
