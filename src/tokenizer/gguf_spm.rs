//! llama.cpp's SentencePiece-style vocabularies (`tokenizer.ggml.model` = "llama":
//! tokens, scores, token types with `<0xNN>` byte tokens) as the `tokenizers`
//! tokenizer Hugging Face transformers builds from the same GGUF (its
//! `LlamaTokenizer` through the GGUF converter), so ids match what a vLLM user
//! gets for the file:
//! - BPE with byte fallback; the merges are the file's, or derived from the
//!   scores as transformers' `generate_merges` does: every split of a token into
//!   two tokens, ranked by the whole token's score (`merges_from_scores`), which
//!   is SentencePiece's "merge the pair whose result scores best";
//! - a `Metaspace` pre-tokenizer (spaces as `▁`, one `▁` prepended to the text
//!   unless it already starts with one) when `tokenizer.ggml.add_space_prefix`
//!   (default true); the decoder undoes it and strips that one leading space;
//! - BOS prepended when `add_bos_token` (default true for this vocabulary
//!   type, as in llama.cpp), EOS appended when `add_eos_token`.
//!
//! One known difference from llama.cpp: it always prepends the space, so for a
//! text that starts with a space it gives one more `▁` than transformers.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Map, Value as Json};

use super::gguf::{TOKEN_CONTROL, TOKEN_USER_DEFINED};
use crate::error::Result;
use crate::gguf::{GgufFile, Value};

/// The longest token whose splits are looked up when merges are derived (the work
/// is quadratic in a token's length; real vocabularies stay far below this).
const MAX_PIECE_BYTES: usize = 1024;

/// What a SentencePiece vocabulary needs besides its tokens and types.
pub(super) struct SpmIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
}

/// The `tokenizer.json` value of the vocabulary.
pub(super) fn spec(file: &GgufFile, tokens: &[&str], types: &[u64], ids: &SpmIds) -> Result<Json> {
    let flag = |key: &str, default: bool| file.get(key).and_then(Value::as_bool).unwrap_or(default);
    let add_prefix = flag("tokenizer.ggml.add_space_prefix", true);
    let add_bos = flag("tokenizer.ggml.add_bos_token", true);
    let add_eos = flag("tokenizer.ggml.add_eos_token", false);
    let merges = match super::gguf::strings(file, "tokenizer.ggml.merges")? {
        Some(m) => super::gguf::split_merges(file, &m)?,
        None => {
            merges_from_scores(tokens, &scores(file, tokens.len())?).map_err(|e| file.error(e))?
        }
    };
    let vocab: Map<String, Json> = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.to_string(), json!(id)))
        .collect();
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let prepend = if add_prefix { "first" } else { "never" };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens(tokens, types, ids.unk),
        "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": prepend, "split": false},
        "post_processor": post_processor(tokens, ids.bos.filter(|_| add_bos), ids.eos.filter(|_| add_eos)),
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges},
    }))
}

/// `tokenizer.ggml.scores`, one per token.
fn scores(file: &GgufFile, num_tokens: usize) -> Result<Vec<f64>> {
    let values = file
        .get("tokenizer.ggml.scores")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            file.error("the SentencePiece vocabulary has neither merges nor scores (`tokenizer.ggml.scores`)")
        })?;
    if values.len() != num_tokens {
        return Err(file.error(format!(
            "{} token scores for {num_tokens} tokens",
            values.len()
        )));
    }
    values
        .iter()
        .map(|v| {
            v.as_f64()
                .ok_or_else(|| file.error("`tokenizer.ggml.scores` holds a non-number"))
        })
        .collect()
}

/// The merges a vocabulary of scored pieces implies, in transformers'
/// `generate_merges` order: each token's two-token splits (by the halves' ids),
/// all of them sorted stably by (token score, left length, right length),
/// highest first — lengths in characters.
pub(super) fn merges_from_scores(
    tokens: &[&str],
    scores: &[f64],
) -> std::result::Result<Vec<Json>, String> {
    // A repeated token keeps its last id and score but its first place, as a
    // Python dict built from the lists does.
    let id_of: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, &t)| (t, i)).collect();
    let mut seen = HashSet::with_capacity(tokens.len());
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    for &token in tokens {
        if !seen.insert(token) {
            continue;
        }
        if token.len() > MAX_PIECE_BYTES {
            return Err(format!(
                "token {:?}… is {} bytes long; SentencePiece pieces up to {MAX_PIECE_BYTES} bytes are supported",
                token.chars().take(16).collect::<String>(),
                token.len()
            ));
        }
        let score = scores[id_of[token]];
        let start = merges.len();
        for (at, _) in token.char_indices().skip(1) {
            let (l, r) = token.split_at(at);
            if id_of.contains_key(l) && id_of.contains_key(r) {
                merges.push((l, r, score));
            }
        }
        merges[start..].sort_by_key(|(l, r, _)| (id_of[l], id_of[r]));
    }
    let key = |(l, r, s): &(&str, &str, f64)| (*s, l.chars().count(), r.chars().count());
    // Stable, and descending with equal keys left in place, as Python's
    // `sorted(..., reverse=True)`.
    merges.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0)
            .then(kb.1.cmp(&ka.1))
            .then(kb.2.cmp(&ka.2))
    });
    Ok(merges.into_iter().map(|(l, r, _)| json!([l, r])).collect())
}

/// Control tokens and the unknown token as special added tokens, user-defined
/// ones as plain added tokens, all matched whole in the raw text.
fn added_tokens(tokens: &[&str], types: &[u64], unk: Option<u32>) -> Vec<Json> {
    let mut added = Vec::new();
    for (id, (&tok, &ty)) in tokens.iter().zip(types).enumerate() {
        let special = ty == TOKEN_CONTROL || unk == Some(id as u32);
        if special || ty == TOKEN_USER_DEFINED {
            added.push(
                json!({"id": id, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": special}),
            );
        }
    }
    added
}

/// BOS before and EOS after each sequence, where the file asks for them.
fn post_processor(tokens: &[&str], bos: Option<u32>, eos: Option<u32>) -> Json {
    if bos.is_none() && eos.is_none() {
        return Json::Null;
    }
    let special = |id: Option<u32>, type_id: u32| {
        id.map(|i| json!({"SpecialToken": {"id": tokens[i as usize], "type_id": type_id}}))
    };
    let seq = |name: &str, type_id: u32| json!({"Sequence": {"id": name, "type_id": type_id}});
    let single: Vec<Json> = [special(bos, 0), Some(seq("A", 0)), special(eos, 0)]
        .into_iter()
        .flatten()
        .collect();
    let mut pair = single.clone();
    pair.extend(
        [special(bos, 1), Some(seq("B", 1)), special(eos, 1)]
            .into_iter()
            .flatten(),
    );
    let mut specials = Map::new();
    for id in [bos, eos].into_iter().flatten() {
        let t = tokens[id as usize];
        specials.insert(t.to_string(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
}
