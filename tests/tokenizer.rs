//! Encoding, decoding and special tokens against transformers' reference
//! (tests/fixtures/*/tokenizer-reference.json), plus loading errors.

mod tokenizer_fixtures;

use std::collections::HashSet;

use engine::tokenizer::Tokenizer;
use engine::Error;
use serde_json::Value;
use tokenizer_fixtures::*;

#[test]
fn strings_encode_and_decode_like_transformers() {
    for model in MODELS {
        let tok = load(model);
        let reference = tokenizer_reference(model);
        let cases = array(&reference, "strings");
        assert!(cases.len() >= 30, "{model}: too few string cases");
        for case in cases {
            let text = str_of(case, "text");
            let with_special = ids(&case["ids_with_special"]);
            let no_special = ids(&case["ids_no_special"]);
            let ctx = format!("{model} {text:?}");
            assert_eq!(
                tok.encode(text, true).unwrap(),
                with_special,
                "{ctx}: ids with special tokens"
            );
            assert_eq!(
                tok.encode(text, false).unwrap(),
                no_special,
                "{ctx}: ids without special tokens"
            );

            let tokens: Vec<String> = no_special
                .iter()
                .map(|&id| tok.id_to_token(id).unwrap())
                .collect();
            let want_tokens: Vec<&str> = array(case, "tokens_no_special")
                .iter()
                .map(|t| t.as_str().unwrap())
                .collect();
            assert_eq!(tokens, want_tokens, "{ctx}: tokens");

            for (ids, key, skip) in [
                (&with_special, "decode_with_special_keep", false),
                (&with_special, "decode_with_special_skip", true),
                (&no_special, "decode_no_special_keep", false),
                (&no_special, "decode_no_special_skip", true),
            ] {
                for spaces in [true, false] {
                    assert_eq!(
                        tok.decode(ids, skip, spaces).unwrap(),
                        str_of(case, key),
                        "{ctx}: {key} (spaces {spaces})"
                    );
                }
            }
            let per_token: Vec<String> = no_special
                .iter()
                .map(|&id| tok.decode(&[id], false, true).unwrap())
                .collect();
            let want: Vec<&str> = array(case, "per_token_decode")
                .iter()
                .map(|t| t.as_str().unwrap())
                .collect();
            assert_eq!(per_token, want, "{ctx}: per-token decode");

            let roundtrips = tok.decode(&no_special, false, true).unwrap() == text;
            assert_eq!(
                roundtrips,
                case["roundtrip_ok"].as_bool().unwrap(),
                "{ctx}: roundtrip"
            );
        }
    }
}

#[test]
fn decode_cases_match_transformers() {
    for model in MODELS {
        let tok = load(model);
        let reference = tokenizer_reference(model);
        let cases = array(&reference, "decode_cases");
        assert!(!cases.is_empty());
        for case in cases {
            let ids = ids(&case["ids"]);
            let skip = case["skip_special_tokens"].as_bool().unwrap();
            let want = str_of(case, "text");
            for spaces in [true, false] {
                let got = tok.decode(&ids, skip, spaces).unwrap();
                assert_eq!(
                    got,
                    want,
                    "{model} {}: skip {skip} spaces {spaces}",
                    str_of(case, "name")
                );
            }
        }
    }
}

#[test]
fn special_tokens_match_transformers() {
    for model in MODELS {
        let tok = load(model);
        let reference = tokenizer_reference(model);
        let meta = &reference["meta"];
        assert_eq!(tok.bos_token(), meta["bos_token"].as_str(), "{model}");
        assert_eq!(tok.eos_token(), meta["eos_token"].as_str(), "{model}");
        assert_eq!(
            tok.special_tokens().unk_token.as_deref(),
            meta["unk_token"].as_str(),
            "{model}"
        );
        assert_eq!(
            tok.special_tokens().pad_token.as_deref(),
            meta["pad_token"].as_str(),
            "{model}"
        );
        assert_eq!(
            tok.bos_token_id().map(u64::from),
            meta["bos_token_id"].as_u64(),
            "{model}"
        );
        assert_eq!(
            tok.eos_token_id().map(u64::from),
            meta["eos_token_id"].as_u64(),
            "{model}"
        );
        assert_eq!(
            tok.vocab_size() as u64,
            meta["len_tokenizer"].as_u64().unwrap(),
            "{model}"
        );

        let all_special: HashSet<u32> = ids(&meta["all_special_ids"]).into_iter().collect();
        for id in 0..tok.vocab_size() as u32 {
            assert_eq!(
                tok.is_special(id),
                all_special.contains(&id),
                "{model}: is_special({id})"
            );
        }
        let added = meta["added_tokens"].as_object().unwrap();
        for (content, info) in added {
            let id = info["id"].as_u64().unwrap() as u32;
            assert_eq!(tok.token_to_id(content), Some(id), "{model}: {content}");
            assert_eq!(
                tok.id_to_token(id).as_deref(),
                Some(content.as_str()),
                "{model}: {id}"
            );
            assert_eq!(
                tok.is_special(id),
                info["special"].as_bool().unwrap(),
                "{model}: {content} special"
            );
        }
    }
}

#[test]
fn stop_ids_are_generation_config_and_tokenizer_eos() {
    for model in MODELS {
        let tok = load(model);
        let generation: Value = serde_json::from_str(
            &std::fs::read_to_string(model_dir(model).join("generation_config.json")).unwrap(),
        )
        .unwrap();
        let mut want: Vec<u32> = match &generation["eos_token_id"] {
            Value::Array(_) => ids(&generation["eos_token_id"]),
            v => vec![v.as_u64().unwrap() as u32],
        };
        want.extend(tok.eos_token_id());
        let want: HashSet<u32> = want.into_iter().collect();
        let got = tok.generation_eos_token_ids();
        assert_eq!(got.iter().copied().collect::<HashSet<_>>(), want, "{model}");
        assert_eq!(got.len(), want.len(), "{model}: duplicates in {got:?}");
        assert_eq!(
            got.first().copied(),
            tok.eos_token_id(),
            "{model}: the tokenizer's eos comes first"
        );
    }
    // tiny-llama: the tokenizer stops on <|im_end|> and generation_config adds </s>.
    let llama = load("tiny-llama");
    assert_eq!(llama.generation_eos_token_ids(), &[4, 2]);
}

#[test]
fn missing_tokenizer_json_names_the_file() {
    let dir = scratch_dir("missing");
    let err = Tokenizer::from_model_dir(&dir).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("tokenizer.json") && msg.contains(dir.to_str().unwrap()),
        "{msg}"
    );
}

#[test]
fn broken_files_are_named_in_the_error() {
    let dir = copy_tokenizer_files("tiny-llama", "bad-config");
    std::fs::write(dir.join("tokenizer_config.json"), "{ \"bos_token\": ").unwrap();
    let msg = Tokenizer::from_model_dir(&dir).unwrap_err().to_string();
    assert!(
        msg.contains("tokenizer_config.json") && msg.contains("invalid JSON"),
        "{msg}"
    );

    let dir = copy_tokenizer_files("tiny-llama", "bad-tokenizer");
    std::fs::write(dir.join("tokenizer.json"), "{\"model\": 3}").unwrap();
    let msg = Tokenizer::from_model_dir(&dir).unwrap_err().to_string();
    assert!(msg.contains("tokenizer.json"), "{msg}");

    let dir = copy_tokenizer_files("tiny-llama", "bad-generation");
    std::fs::write(
        dir.join("generation_config.json"),
        "{\"eos_token_id\": \"two\"}",
    )
    .unwrap();
    let msg = Tokenizer::from_model_dir(&dir).unwrap_err().to_string();
    assert!(
        msg.contains("generation_config.json") && msg.contains("eos_token_id"),
        "{msg}"
    );

    let dir = copy_tokenizer_files("tiny-llama", "bad-eos");
    std::fs::write(dir.join("special_tokens_map.json"), "{}").unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), "{\"eos_token\": 7}").unwrap();
    let msg = Tokenizer::from_model_dir(&dir).unwrap_err().to_string();
    assert!(
        msg.contains("tokenizer_config.json") && msg.contains("eos_token"),
        "{msg}"
    );
}

#[test]
fn optional_files_may_be_absent_and_tokens_may_be_objects() {
    let dir = scratch_dir("only-tokenizer-json");
    std::fs::copy(
        model_dir("tiny-llama").join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    let tok = Tokenizer::from_model_dir(&dir).unwrap();
    assert_eq!(tok.eos_token_id(), None);
    assert!(tok.generation_eos_token_ids().is_empty());
    assert_eq!(
        tok.encode("Hello world", false).unwrap(),
        vec![1977, 358, 290, 2917]
    );
    assert!(tok.chat_template().is_err());

    // The AddedToken-dict form of a special token, as older tokenizer_config.json files have.
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"eos_token": {"content": "</s>", "special": true}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"eos_token_id": 2, "bos_token_id": 1}"#,
    )
    .unwrap();
    let tok = Tokenizer::from_model_dir(&dir).unwrap();
    assert_eq!(tok.eos_token(), Some("</s>"));
    assert_eq!(tok.eos_token_id(), Some(2));
    assert_eq!(
        tok.bos_token_id(),
        Some(1),
        "falls back to generation_config"
    );
    assert_eq!(tok.generation_eos_token_ids(), &[2]);
}

#[test]
fn added_tokens_decoder_adds_missing_tokens() {
    let dir = copy_tokenizer_files("tiny-llama", "added-tokens");
    let config = r#"{"added_tokens_decoder": {"3000": {"content": "<extra>", "special": true}}, "eos_token": "<extra>"}"#;
    std::fs::write(dir.join("tokenizer_config.json"), config).unwrap();
    std::fs::write(dir.join("special_tokens_map.json"), "{}").unwrap();
    let tok = Tokenizer::from_model_dir(&dir).unwrap();
    assert_eq!(tok.token_to_id("<extra>"), Some(3000));
    assert!(tok.is_special(3000));
    assert_eq!(tok.eos_token_id(), Some(3000));
    assert_eq!(tok.encode("a<extra>", false).unwrap(), vec![69, 3000]);

    let config = r#"{"added_tokens_decoder": {"3005": {"content": "<far>", "special": true}}}"#;
    std::fs::write(dir.join("tokenizer_config.json"), config).unwrap();
    let msg = Tokenizer::from_model_dir(&dir).unwrap_err().to_string();
    assert!(
        msg.contains("tokenizer_config.json") && msg.contains("3005"),
        "{msg}"
    );
}

#[test]
fn tokenizer_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
    assert_send_sync::<engine::tokenizer::IncrementalDetokenizer>();
}

#[test]
fn model_reference_prompts_encode_identically() {
    for model in MODELS {
        let tok = load(model);
        let reference = model_reference(model);
        let mut checked = 0;
        for result in array(&reference, "results") {
            let Some(text) = result["prompt_text"].as_str() else {
                continue;
            };
            // Chat prompts were tokenized without special tokens; text prompts say which.
            let add_special = result["add_special_tokens"].as_bool().unwrap_or(false);
            let want = ids(&result["prompt_token_ids"]);
            assert_eq!(
                tok.encode(text, add_special).unwrap(),
                want,
                "{model} {}",
                str_of(result, "name")
            );
            checked += 1;
        }
        assert!(checked >= 5, "{model}: only {checked} text prompts");
    }
}
