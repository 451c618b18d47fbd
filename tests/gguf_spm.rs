//! SentencePiece-style GGUF vocabularies (`tokenizer.ggml.model` = "llama"): the
//! fixture tests/fixtures/spm-gguf/model.gguf carries Mistral 7B's real
//! SentencePiece vocabulary (32000 pieces, scores, byte tokens) and tiny random
//! weights; reference.json holds the ids transformers' GGUF tokenizer gives for 320
//! strings (see its generate.py). Our ids must equal them, decoding must give
//! transformers' text back, the chat template from the metadata must render and
//! serve, and a vocabulary type we do not build must be a clear error naming it.

mod common;

use std::path::PathBuf;

use common::*;
use engine::generate::Llm;
use engine::gguf::GgufFile;
use engine::loader::LoadOptions;
use engine::tokenizer::Tokenizer;

fn model_path() -> PathBuf {
    fixture_dir("spm-gguf").join("model.gguf")
}

fn tokenizer_of(path: &std::path::Path) -> engine::error::Result<Tokenizer> {
    Tokenizer::from_gguf(&GgufFile::open(path)?)
}

/// The fixture with the bytes of `from` (found once, in the metadata) replaced by `to`.
fn patched(from: &[u8], to: &[u8]) -> (tempfile::TempDir, PathBuf) {
    assert_eq!(from.len(), to.len());
    let mut bytes = std::fs::read(model_path()).unwrap();
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("the pattern is in the fixture");
    bytes[at..at + to.len()].copy_from_slice(to);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("patched.gguf");
    std::fs::write(&path, bytes).unwrap();
    (tmp, path)
}

#[test]
fn ids_and_decodes_equal_transformers() {
    let tok = tokenizer_of(&model_path()).unwrap();
    let reference = reference("spm-gguf");
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() >= 300);
    let mut round_trips = 0;
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(ids, u32s(&case["ids"]), "{text:?}");
        assert_eq!(
            tok.encode(text, true).unwrap(),
            u32s(&case["ids_special"]),
            "{text:?} with BOS"
        );
        let decoded = tok.decode(&ids, false, true).unwrap();
        assert_eq!(decoded, case["decoded"].as_str().unwrap(), "{text:?}");
        round_trips += usize::from(decoded == text);
    }
    // Most strings come back whole; the rest differ only where transformers' do
    // (a leading space the Metaspace prefix absorbs), checked above.
    assert!(
        round_trips * 10 >= cases.len() * 8,
        "{round_trips} round trips"
    );
    assert_eq!(tok.bos_token_id(), Some(1));
    assert_eq!(tok.eos_token_id(), Some(2));
    // Byte fallback: a character outside the vocabulary is its UTF-8 bytes.
    assert_eq!(
        tok.encode("𐍈", false).unwrap(),
        vec![28705, 243, 147, 144, 139]
    );
}

#[test]
fn add_space_prefix_false_prepends_nothing() {
    let key = b"tokenizer.ggml.add_space_prefix";
    let mut on = key.to_vec();
    on.extend(7u32.to_le_bytes());
    on.push(1);
    let mut off = on.clone();
    *off.last_mut().unwrap() = 0;
    let (_tmp, path) = patched(&on, &off);
    let plain = tokenizer_of(&model_path()).unwrap();
    let bare = tokenizer_of(&path).unwrap();
    for text in ["Hello world", "日本語", "x"] {
        let spaced = format!(" {text}");
        assert_eq!(
            bare.encode(&spaced, false).unwrap(),
            plain.encode(text, false).unwrap(),
            "{text:?}"
        );
        let ids = plain.encode(text, false).unwrap();
        assert_eq!(bare.decode(&ids, false, true).unwrap(), spaced);
    }
}

#[test]
fn an_unknown_vocabulary_type_is_named() {
    let value = |name: &[u8]| {
        let mut v = b"tokenizer.ggml.model".to_vec();
        v.extend(8u32.to_le_bytes());
        v.extend((name.len() as u64).to_le_bytes());
        v.extend(name);
        v
    };
    let (_tmp, path) = patched(&value(b"llama"), &value(b"ugram"));
    let e = tokenizer_of(&path).unwrap_err().to_string();
    assert!(
        e.contains("patched.gguf") && e.contains("\"ugram\"") && e.contains("--tokenizer"),
        "{e}"
    );
}

#[test]
fn the_chat_template_renders_and_serves() {
    let tok = tokenizer_of(&model_path()).unwrap();
    let chat = &reference("spm-gguf")["chat"];
    let rendered = tok
        .chat_template()
        .unwrap()
        .render(&chat["messages"], false, None)
        .unwrap();
    assert_eq!(rendered, chat["rendered"].as_str().unwrap());

    let mut llm = Llm::load(&model_path(), &LoadOptions::default()).unwrap();
    let question = &reference("spm-gguf")["chat_prompt"];
    let tok = llm.tokenizer().expect("the GGUF carries its tokenizer");
    let prompt = tok
        .chat_template()
        .unwrap()
        .render(&question["messages"], true, None)
        .unwrap();
    assert_eq!(prompt, question["rendered"].as_str().unwrap());
    let ids = tok.encode(&prompt, false).unwrap();
    assert_eq!(
        ids,
        u32s(&question["ids"]),
        "the template's <s> is the BOS id"
    );
    let logits = llm.prompt_logits(&ids).unwrap();
    assert_eq!(logits.len(), ids.len());
    assert!(logits.iter().flatten().all(|x: &f32| x.is_finite()));
}
