//! Reading a model directory's tokenizer files the way transformers 5 does.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use super::python::universal_newlines;
use super::{ChatTemplate, NamedTemplate, SpecialTokens, Tokenizer};
use crate::config::token_id_list;
use crate::error::{read_to_string, Error, Result};

/// Model types that transformers 5 tokenizes with its `Qwen2Tokenizer` class, which
/// rebuilds a byte-level BPE tokenizer with its own normalizer (NFC) and
/// pre-tokenizer (digits one at a time) instead of taking tokenizer.json's. Real Qwen
/// tokenizer.json files already carry exactly this pipeline.
const QWEN2_MODEL_TYPES: [&str; 4] = ["qwen2", "qwen2_moe", "qwen3", "qwen3_moe"];
const QWEN2_TOKENIZER_CLASSES: [&str; 2] = ["Qwen2Tokenizer", "Qwen2TokenizerFast"];
const QWEN2_PRETOKENIZE_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub(super) fn from_model_dir(dir: &Path) -> Result<Tokenizer> {
    let tokenizer_path = dir.join("tokenizer.json");
    let mut inner = read_tokenizer_json(&tokenizer_path)?;

    let config_path = dir.join("tokenizer_config.json");
    let config = read_optional_json(&config_path)?.unwrap_or(Json::Null);
    let map_path = dir.join("special_tokens_map.json");
    let special_map = read_optional_json(&map_path)?.unwrap_or(Json::Null);
    let generation_path = dir.join("generation_config.json");
    let generation = read_optional_json(&generation_path)?.unwrap_or(Json::Null);
    let model_config = read_optional_json(&dir.join("config.json"))?.unwrap_or(Json::Null);

    if uses_qwen2_tokenizer(&model_config, &config) {
        use_qwen2_pipeline(&mut inner).map_err(|m| Error::bad_file(&tokenizer_path, m))?;
    }
    add_declared_tokens(&mut inner, &config, &config_path)?;
    let special_tokens = special_tokens((&special_map, &map_path), (&config, &config_path))?;
    let generation_eos = generation_ids(&generation, &generation_path, "eos_token_id")?;
    let generation_bos = generation_ids(&generation, &generation_path, "bos_token_id")?;

    let id_of = |t: &Option<String>| t.as_deref().and_then(|t| inner.token_to_id(t));
    let bos_token_id = id_of(&special_tokens.bos_token).or(generation_bos.first().copied());
    let eos_token_id = id_of(&special_tokens.eos_token);
    let mut generation_eos_token_ids = Vec::new();
    for id in eos_token_id.into_iter().chain(generation_eos) {
        if !generation_eos_token_ids.contains(&id) {
            generation_eos_token_ids.push(id);
        }
    }

    let special_ids = inner
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| t.special)
        .map(|(id, _)| id)
        .collect();
    let chat_templates = load_chat_templates(dir, &config, &config_path, &special_tokens)?;
    Ok(Tokenizer {
        inner,
        special_tokens,
        bos_token_id,
        eos_token_id,
        generation_eos_token_ids,
        special_ids,
        chat_templates,
        model_dir: dir.to_path_buf(),
    })
}

/// tokenizer.json, without the truncation and padding it may carry
/// (transformers and vLLM encode without them).
fn read_tokenizer_json(path: &Path) -> Result<tokenizers::Tokenizer> {
    let mut inner: tokenizers::Tokenizer = read_to_string(path)?
        .parse()
        .map_err(|e| Error::bad_file(path, format!("not a valid tokenizer: {e}")))?;
    inner
        .with_truncation(None)
        .map_err(|e| Error::bad_file(path, format!("cannot disable truncation: {e}")))?;
    inner.with_padding(None);
    Ok(inner)
}

/// transformers 5 picks `Qwen2Tokenizer` by the model type or the declared class.
fn uses_qwen2_tokenizer(model_config: &Json, tokenizer_config: &Json) -> bool {
    let model_type = model_config
        .get("model_type")
        .and_then(Json::as_str)
        .unwrap_or_default();
    let tokenizer_class = tokenizer_config
        .get("tokenizer_class")
        .and_then(Json::as_str)
        .unwrap_or_default();
    QWEN2_MODEL_TYPES.contains(&model_type) || QWEN2_TOKENIZER_CLASSES.contains(&tokenizer_class)
}

/// The special tokens; as in transformers, special_tokens_map.json wins over
/// tokenizer_config.json. Each file comes with its path, for errors.
fn special_tokens(
    (special_map, map_path): (&Json, &Path),
    (config, config_path): (&Json, &Path),
) -> Result<SpecialTokens> {
    let token = |key: &str| -> Result<Option<String>> {
        match token_field(special_map, key).map_err(|m| Error::bad_file(map_path, m))? {
            Some(t) => Ok(Some(t)),
            None => token_field(config, key).map_err(|m| Error::bad_file(config_path, m)),
        }
    };
    Ok(SpecialTokens {
        bos_token: token("bos_token")?,
        eos_token: token("eos_token")?,
        unk_token: token("unk_token")?,
        pad_token: token("pad_token")?,
    })
}

/// generation_config.json's token ids under `key` (one or a list).
fn generation_ids(generation: &Json, path: &Path, key: &str) -> Result<Vec<u32>> {
    match generation.get(key) {
        None => Ok(vec![]),
        Some(v) => token_id_list(v).ok_or_else(|| {
            Error::bad_file(
                path,
                format!("`{key}` must be an integer or a list of integers"),
            )
        }),
    }
}

/// Gives a byte-level BPE tokenizer the normalizer and pre-tokenizer of transformers'
/// `Qwen2Tokenizer`; other tokenizers are left alone, as transformers falls back to
/// tokenizer.json's pipeline for them.
fn use_qwen2_pipeline(inner: &mut tokenizers::Tokenizer) -> std::result::Result<(), String> {
    if !matches!(inner.get_decoder(), Some(DecoderWrapper::ByteLevel(_))) {
        return Ok(());
    }
    let split = Split::new(
        SplitPattern::Regex(QWEN2_PRETOKENIZE_REGEX.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| format!("Qwen2 pre-tokenizer: {e}"))?;
    inner.with_pre_tokenizer(Some(Sequence::new(vec![
        split.into(),
        ByteLevel::new(false, false, false).into(),
    ])));
    inner
        .with_normalizer(Some(NFC))
        .map_err(|e| format!("Qwen2 normalizer: {e}"))?;
    Ok(())
}

/// Reads a JSON file that may be absent.
fn read_optional_json(path: &Path) -> Result<Option<Json>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::bad_file(path, format!("invalid JSON: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// A special token given as a string or as an AddedToken object (`{"content": ...}`).
fn token_field(config: &Json, key: &str) -> std::result::Result<Option<String>, String> {
    match config.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Object(o)) => match o.get("content") {
            Some(Json::String(s)) => Ok(Some(s.clone())),
            _ => Err(format!("`{key}` has no string \"content\"")),
        },
        Some(_) => Err(format!(
            "`{key}` must be a string or an object with \"content\""
        )),
    }
}

/// Adds tokens that tokenizer_config.json's `added_tokens_decoder` declares but
/// tokenizer.json lacks, checking each lands on its declared id.
fn add_declared_tokens(
    inner: &mut tokenizers::Tokenizer,
    config: &Json,
    path: &Path,
) -> Result<()> {
    let Some(declared) = config.get("added_tokens_decoder") else {
        return Ok(());
    };
    let declared = declared
        .as_object()
        .ok_or_else(|| Error::bad_file(path, "`added_tokens_decoder` must be an object"))?;
    let mut missing = Vec::new();
    for (id, entry) in declared {
        let id: u32 = id
            .parse()
            .map_err(|_| Error::bad_file(path, format!("added token id {id:?} is not a number")))?;
        let content = entry.get("content").and_then(Json::as_str).ok_or_else(|| {
            Error::bad_file(path, format!("added token {id} has no string \"content\""))
        })?;
        if inner.token_to_id(content).is_none() {
            missing.push((id, content.to_string(), entry));
        }
    }
    missing.sort_by_key(|(id, ..)| *id);
    for (id, content, entry) in missing {
        let flag =
            |name: &str, default: bool| entry.get(name).and_then(Json::as_bool).unwrap_or(default);
        let special = flag("special", false);
        let token = AddedToken {
            content: content.clone(),
            single_word: flag("single_word", false),
            lstrip: flag("lstrip", false),
            rstrip: flag("rstrip", false),
            normalized: flag("normalized", !special),
            special,
        };
        let added = if special {
            inner.add_special_tokens([token])
        } else {
            inner.add_tokens([token])
        };
        added.map_err(|e| Error::bad_file(path, format!("cannot add token {content:?}: {e}")))?;
        if inner.token_to_id(&content) != Some(id) {
            return Err(Error::bad_file(
                path,
                format!("added token {content:?} is declared with id {id} but tokenizer.json does not have it there"),
            ));
        }
    }
    Ok(())
}

/// Finds and compiles the model's chat templates. `chat_template.jinja` replaces the
/// one in tokenizer_config.json (as transformers does); a list of `{name, template}`
/// there, or files in `additional_chat_templates/`, add named ones.
fn load_chat_templates(
    dir: &Path,
    config: &Json,
    config_path: &Path,
    tokens: &SpecialTokens,
) -> Result<Vec<NamedTemplate>> {
    let mut sources: Vec<(String, String, PathBuf)> = Vec::new();
    let jinja_path = dir.join("chat_template.jinja");
    match std::fs::read_to_string(&jinja_path) {
        Ok(text) => sources.push(("default".into(), universal_newlines(text), jinja_path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match config.get("chat_template") {
            None | Some(Json::Null) => {}
            Some(Json::String(text)) => {
                sources.push(("default".into(), text.clone(), config_path.to_path_buf()))
            }
            Some(Json::Array(list)) => {
                for item in list {
                    let field = |k: &str| item.get(k).and_then(Json::as_str);
                    let (Some(name), Some(text)) = (field("name"), field("template")) else {
                        return Err(Error::bad_file(
                            config_path,
                            "`chat_template` list entries need string `name` and `template`",
                        ));
                    };
                    sources.push((name.into(), text.into(), config_path.to_path_buf()));
                }
            }
            Some(_) => {
                return Err(Error::bad_file(
                    config_path,
                    "`chat_template` must be a string or a list of {name, template}",
                ))
            }
        },
        Err(e) => return Err(Error::io(&jinja_path, e)),
    }
    let extra_dir = dir.join("additional_chat_templates");
    if let Ok(entries) = std::fs::read_dir(&extra_dir) {
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths
            .into_iter()
            .filter(|p| p.extension().is_some_and(|x| x == "jinja"))
        {
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            sources.push((name, universal_newlines(read_to_string(&path)?), path));
        }
    }
    Ok(sources
        .into_iter()
        .map(|(name, text, origin)| {
            let compiled = ChatTemplate::new(text, tokens.clone()).map_err(|e| {
                format!(
                    "{} (template {name:?}): {}",
                    origin.display(),
                    chat_template_message(&e)
                )
            });
            NamedTemplate { name, compiled }
        })
        .collect())
}

/// The message of a chat-template error without the variant's "chat template: " prefix,
/// so it can be re-wrapped with the file it came from.
pub(super) fn chat_template_message(err: &Error) -> String {
    match err {
        Error::ChatTemplate(msg) => msg.clone(),
        other => other.to_string(),
    }
}
