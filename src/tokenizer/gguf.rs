//! The tokenizer of a GGUF file, from its `tokenizer.ggml.*` metadata, built as a
//! `tokenizers` tokenizer: a GPT-2-style byte-level BPE (`tokenizer.ggml.model` =
//! "gpt2": tokens, merges, token types, BOS/EOS ids, `add_bos_token`) with the
//! pre-tokenizer picked from `tokenizer.ggml.pre` as llama.cpp does, or a
//! SentencePiece-style vocabulary ("llama", `gguf_spm.rs`); and the chat template
//! from `tokenizer.chat_template`. Other vocabulary types are a clear error
//! (`--tokenizer DIR` can stand in).

use serde_json::{json, Map, Value as Json};

use super::gguf_spm::{self, SpmIds};
use super::{ChatTemplate, NamedTemplate, SpecialTokens, Tokenizer};
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Value};

/// llama.cpp's token types.
pub(super) const TOKEN_CONTROL: u64 = 3;
pub(super) const TOKEN_USER_DEFINED: u64 = 4;

/// The split regex of Qwen2 and Llama 3 vocabularies (llama.cpp's "qwen2" and
/// "llama-bpe" pre-tokenizers).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub(super) fn strings<'a>(file: &'a GgufFile, key: &str) -> Result<Option<Vec<&'a str>>> {
    let Some(v) = file.get(key) else {
        return Ok(None);
    };
    let items = v
        .as_array()
        .ok_or_else(|| file.error(format!("`{key}` is not an array")))?;
    items
        .iter()
        .map(|s| {
            s.as_str()
                .ok_or_else(|| file.error(format!("`{key}` holds a non-string")))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// The pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre`.
fn pre_tokenizer(pre: &str) -> Json {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    match pre {
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "qwen2" | "llama-bpe" | "llama3" => {
            let regex = if pre == "qwen2" {
                LLAMA3_REGEX.replace(r"\p{N}{1,3}", r"\p{N}")
            } else {
                LLAMA3_REGEX.to_string()
            };
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
                byte_level(false)]})
        }
        _ => byte_level(true),
    }
}

pub(super) fn from_gguf(file: &GgufFile) -> Result<Tokenizer> {
    let model = vocabulary_type(file)?;
    let tokens = strings(file, "tokenizer.ggml.tokens")?
        .ok_or_else(|| file.error("no `tokenizer.ggml.tokens`"))?;
    let types = token_types(file, tokens.len())?;
    let id_key = |k: &str| -> Option<u32> {
        file.get(k)
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
            .filter(|&v| (v as usize) < tokens.len())
    };
    let bos = id_key("tokenizer.ggml.bos_token_id");
    let eos = id_key("tokenizer.ggml.eos_token_id");
    let eot = id_key("tokenizer.ggml.eot_token_id");
    let unk = id_key("tokenizer.ggml.unknown_token_id");
    let spec = if model == "llama" {
        gguf_spm::spec(file, &tokens, &types, &SpmIds { bos, eos, unk })?
    } else {
        byte_level_spec(file, &tokens, &types, bos)?
    };
    let inner: tokenizers::Tokenizer = serde_json::from_value(spec).map_err(|e| {
        file.error(format!(
            "cannot build the tokenizer from the vocabulary: {e}"
        ))
    })?;

    let name = |id: Option<u32>| id.map(|i| tokens[i as usize].to_string());
    let special_tokens = SpecialTokens {
        bos_token: name(bos),
        eos_token: name(eos),
        unk_token: name(unk),
        pad_token: name(id_key("tokenizer.ggml.padding_token_id")),
    };
    let mut generation_eos_token_ids: Vec<u32> = eos.into_iter().collect();
    if let Some(e) = eot.filter(|e| !generation_eos_token_ids.contains(e)) {
        generation_eos_token_ids.push(e);
    }
    let special_ids = inner
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| t.special)
        .map(|(id, _)| id)
        .collect();
    let chat_templates = chat_templates(file, &special_tokens)?;
    Ok(Tokenizer {
        inner,
        special_tokens,
        bos_token_id: bos,
        eos_token_id: eos,
        generation_eos_token_ids,
        special_ids,
        chat_templates,
        model_dir: file.path.clone(),
    })
}

/// A GPT-2-style byte-level BPE vocabulary's `tokenizer.json` value.
fn byte_level_spec(
    file: &GgufFile,
    tokens: &[&str],
    types: &[u64],
    bos: Option<u32>,
) -> Result<Json> {
    let merges = strings(file, "tokenizer.ggml.merges")?
        .ok_or_else(|| file.error("the BPE vocabulary has no merges (`tokenizer.ggml.merges`)"))?;
    let (vocab, added) = vocab_and_added(tokens, types);
    let merge_pairs = split_merges(file, &merges)?;
    let add_bos = file
        .get("tokenizer.ggml.add_bos_token")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let pre = file
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(pre),
        "post_processor": post_processor(tokens, bos.filter(|_| add_bos)),
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merge_pairs},
    }))
}

/// `tokenizer.ggml.merges` entries ("a b") as `tokenizers` merge pairs.
pub(super) fn split_merges(file: &GgufFile, merges: &[&str]) -> Result<Vec<Json>> {
    merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| json!([a, b]))
                .ok_or_else(|| file.error(format!("merge {m:?} is not two tokens")))
        })
        .collect()
}

/// `tokenizer.ggml.model`: "gpt2" (byte-level BPE) or "llama" (SentencePiece);
/// anything else is an error naming it.
fn vocabulary_type(file: &GgufFile) -> Result<&str> {
    let model = file
        .get("tokenizer.ggml.model")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            file.error(
                "no tokenizer in the metadata (`tokenizer.ggml.model`); pass --tokenizer DIR",
            )
        })?;
    if model != "gpt2" && model != "llama" {
        return Err(file.error(format!(
            "tokenizer model {model:?} (`tokenizer.ggml.model`) is not supported (only \"gpt2\" byte-level BPE and \"llama\" SentencePiece); pass a Hugging Face tokenizer with --tokenizer DIR"
        )));
    }
    Ok(model)
}

/// Each token's llama.cpp type (normal when the file gives none).
fn token_types(file: &GgufFile, num_tokens: usize) -> Result<Vec<u64>> {
    let types: Vec<u64> = match file.get("tokenizer.ggml.token_type") {
        None => vec![1; num_tokens],
        Some(v) => v
            .as_array()
            .map(|a| a.iter().map(|t| t.as_u64().unwrap_or(1)).collect())
            .ok_or_else(|| file.error("`tokenizer.ggml.token_type` is not an array"))?,
    };
    if types.len() != num_tokens {
        return Err(file.error(format!(
            "{} token types for {} tokens",
            types.len(),
            num_tokens
        )));
    }
    Ok(types)
}

/// The BPE vocabulary, and the control and user-defined tokens as added tokens.
fn vocab_and_added(tokens: &[&str], types: &[u64]) -> (Map<String, Json>, Vec<Json>) {
    let mut vocab = Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, (&tok, &ty)) in tokens.iter().zip(types).enumerate() {
        vocab.insert(tok.to_string(), json!(id));
        if ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED {
            let special = ty == TOKEN_CONTROL;
            added.push(
                json!({"id": id, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": !special, "special": special}),
            );
        }
    }
    (vocab, added)
}

/// Prepends BOS when the file asks for it (`add_bos`), else byte-level only.
fn post_processor(tokens: &[&str], add_bos: Option<u32>) -> Json {
    match add_bos {
        Some(b) => {
            let t = tokens[b as usize];
            json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": Json::Object(Map::from_iter([(t.to_string(), json!({"id": t, "ids": [b], "tokens": [t]}))]))})
        }
        None => {
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false})
        }
    }
}

/// `tokenizer.chat_template`, compiled (a template that fails to compile is
/// an error only when used).
fn chat_templates(file: &GgufFile, special_tokens: &SpecialTokens) -> Result<Vec<NamedTemplate>> {
    match file.get("tokenizer.chat_template") {
        None => Ok(vec![]),
        Some(Value::String(text)) => Ok(vec![NamedTemplate {
            name: "default".into(),
            compiled: ChatTemplate::new(text.clone(), special_tokens.clone()).map_err(|e| {
                format!(
                    "{} (tokenizer.chat_template): {}",
                    file.path.display(),
                    super::load::chat_template_message(&e)
                )
            }),
        }]),
        Some(_) => Err(file.error("`tokenizer.chat_template` is not a string")),
    }
}

impl Tokenizer {
    /// The tokenizer and chat template a GGUF file carries (see the module docs).
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer> {
        from_gguf(file).map_err(|e| match e {
            Error::BadFile { .. } => e,
            other => file.error(other.to_string()),
        })
    }
}
