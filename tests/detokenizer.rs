//! Streaming detokenization: deltas never split a character and add up to the full decode.

mod tokenizer_fixtures;

use engine::tokenizer::{IncrementalDetokenizer, Tokenizer};
use tokenizer_fixtures::*;

const REPLACEMENT: char = '\u{fffd}';

/// Streams `generated` after `prompt`; returns the delta of each push and the final flush.
fn stream(
    tok: &Tokenizer,
    prompt: &[u32],
    generated: &[u32],
    skip_special: bool,
) -> (Vec<String>, String) {
    let mut detok = IncrementalDetokenizer::new(tok, prompt, skip_special, true).unwrap();
    let deltas = generated
        .iter()
        .map(|&id| detok.push(tok, id).unwrap())
        .collect();
    let tail = detok.finish(tok).unwrap();
    assert_eq!(detok.generated_ids(), generated);
    (deltas, tail)
}

fn concat(deltas: &[String], tail: &str) -> String {
    deltas.concat() + tail
}

#[test]
fn prefix_decodes_stream_without_partial_characters() {
    for model in MODELS {
        let tok = load(model);
        let reference = tokenizer_reference(model);
        let cases = array(&reference, "prefix_decodes");
        assert!(!cases.is_empty());
        for case in cases {
            let ids = ids(&case["ids"]);
            let prefixes: Vec<&str> = array(case, "prefix_decodes")
                .iter()
                .map(|p| p.as_str().unwrap())
                .collect();
            assert_eq!(prefixes.len(), ids.len());
            for skip in [false, true] {
                let mut detok = IncrementalDetokenizer::new(&tok, &[], skip, true).unwrap();
                let mut emitted = String::new();
                let mut last_whole = "";
                for (i, &id) in ids.iter().enumerate() {
                    emitted.push_str(&detok.push(&tok, id).unwrap());
                    // Streamed text is the latest prefix decode that does not end in a
                    // possibly unfinished character.
                    if !prefixes[i].ends_with(REPLACEMENT) {
                        last_whole = prefixes[i];
                    }
                    assert_eq!(
                        emitted,
                        last_whole,
                        "{model} {:?} step {i}",
                        str_of(case, "text")
                    );
                }
                emitted.push_str(&detok.finish(&tok).unwrap());
                assert_eq!(emitted, str_of(case, "text"), "{model}");
                assert_eq!(emitted, *prefixes.last().unwrap(), "{model}");
            }
        }
    }
}

#[test]
fn greedy_continuations_stream_to_the_reference_text() {
    for model in MODELS {
        let tok = load(model);
        let reference = model_reference(model);
        for result in array(&reference, "results") {
            let name = str_of(result, "name");
            let prompt = ids(&result["prompt_token_ids"]);
            let generated = ids(&result["greedy_token_ids"]);
            for (skip, key) in [(true, "greedy_text"), (false, "greedy_text_with_special")] {
                let (deltas, tail) = stream(&tok, &prompt, &generated, skip);
                let text = concat(&deltas, &tail);
                assert_eq!(text, str_of(result, key), "{model} {name}: streamed {key}");
                assert_eq!(
                    text,
                    tok.decode(&generated, skip, true).unwrap(),
                    "{model} {name}: full decode"
                );
                // A delta only ends in U+FFFD when the text really has one there.
                let mut offset = 0;
                for delta in &deltas {
                    offset += delta.len();
                    if delta.ends_with(REPLACEMENT) {
                        assert!(text[..offset].ends_with(REPLACEMENT), "{model} {name}");
                    }
                }
            }
            // Stopping at the first EOS (which is not part of the text) gives the truncated text.
            if let Some(step) = result["first_eos_step"].as_u64() {
                let (deltas, tail) = stream(&tok, &prompt, &generated[..step as usize], true);
                assert_eq!(
                    concat(&deltas, &tail),
                    str_of(result, "greedy_text_until_eos"),
                    "{model} {name}"
                );
            }
        }
    }
}

#[test]
fn multibyte_stress_at_every_prompt_boundary() {
    let text = "👨‍👩‍👧‍👦 family, e\u{301} vs é, 日本語のテキスト, 한국어, عربى, 🇺🇸🇯🇵 flags, \
                👍🏽 skin, ZWJ\u{200d}joined, math ∑∫√≤≥∞, “quotes” — dash … ellipsis, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟘𝟙𝟚, \u{0}nul";
    for model in MODELS {
        let tok = load(model);
        let ids = tok.encode(text, false).unwrap();
        assert!(ids.len() > 100, "{model}: {} ids", ids.len());
        let full = tok.decode(&ids, false, true).unwrap();
        // Every split point: a prompt may end in the middle of a character, and the
        // stream must not borrow its bytes.
        for split in 0..=ids.len() {
            let (prompt, generated) = ids.split_at(split);
            let (deltas, tail) = stream(&tok, prompt, generated, false);
            let want = tok.decode(generated, false, true).unwrap();
            assert_eq!(concat(&deltas, &tail), want, "{model}: split at {split}");
            for delta in &deltas {
                assert!(
                    !delta.ends_with(REPLACEMENT) || want.contains(REPLACEMENT),
                    "{model}: split at {split}"
                );
            }
        }
        // From the start, the stream is the text itself (qwen2 normalizes to NFC).
        let (deltas, tail) = stream(&tok, &[], &ids, true);
        assert_eq!(concat(&deltas, &tail), full, "{model}");
        if model != "tiny-qwen2" {
            assert_eq!(full, text, "{model}: round trip");
        }
    }
}

#[test]
fn special_tokens_and_unknown_ids_in_the_stream() {
    let tok = load("tiny-llama");
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    let tool_call = tok.token_to_id("<tool_call>").unwrap();
    let mut generated = tok.encode("Hello", false).unwrap();
    generated.extend([im_end, tool_call]);
    generated.extend(tok.encode(" world", false).unwrap());
    generated.push(1_000_000); // outside the vocabulary: contributes nothing
    generated.extend(tok.encode("!", false).unwrap());
    let prompt = tok.encode("<|im_start|>assistant\n", false).unwrap();

    let (deltas, tail) = stream(&tok, &prompt, &generated, true);
    assert_eq!(concat(&deltas, &tail), "Hello<tool_call> world!");
    let (deltas, tail) = stream(&tok, &prompt, &generated, false);
    assert_eq!(concat(&deltas, &tail), "Hello<|im_end|><tool_call> world!");
    assert_eq!(
        concat(&deltas, &tail),
        tok.decode(&generated, false, true).unwrap()
    );
}

#[test]
fn finish_flushes_an_unfinished_character() {
    let tok = load("tiny-llama");
    let ids = tok.encode("ok 😀", false).unwrap();
    let (head, last) = ids.split_at(ids.len() - 1);
    let mut detok = IncrementalDetokenizer::new(&tok, &[], true, true).unwrap();
    let streamed: String = head
        .iter()
        .map(|&id| detok.push(&tok, id).unwrap())
        .collect();
    assert_eq!(streamed, "ok ", "the partial emoji is held back");
    assert_eq!(
        detok.finish(&tok).unwrap(),
        "\u{fffd}",
        "flushed as a full decode renders it"
    );
    assert_eq!(detok.finish(&tok).unwrap(), "", "nothing left");
    // A stray continuation byte after the flush is held back, then flushed, like any other.
    assert_eq!(detok.push(&tok, last[0]).unwrap(), "");
    assert_eq!(detok.finish(&tok).unwrap(), "\u{fffd}");
}

/// A SentencePiece-style decoder drops the first token's leading space; with the
/// prompt as context the stream keeps it, as vLLM does.
#[test]
fn prompt_context_keeps_the_leading_space() {
    let dir = scratch_dir("metaspace");
    let tokenizer_json = r#"{
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true},
        "post_processor": null,
        "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true},
        "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "▁Hello": 1, "▁world": 2, "!": 3}, "unk_token": "<unk>"}
    }"#;
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json).unwrap();
    let tok = Tokenizer::from_model_dir(&dir).unwrap();
    assert_eq!(tok.encode("Hello world", false).unwrap(), vec![1, 2]);
    assert_eq!(tok.decode(&[2, 3], false, true).unwrap(), "world!");

    let (deltas, tail) = stream(&tok, &[1], &[2, 3], false);
    assert_eq!(deltas, vec![" world", "!"]);
    assert_eq!(tail, "");
    let (deltas, _) = stream(&tok, &[], &[2, 3], false);
    assert_eq!(deltas.concat(), "world!");
}

#[test]
fn peek_reads_a_token_as_push_would_without_adding_it() {
    for model in MODELS {
        let tok = load(model);
        let reference = tokenizer_reference(model);
        for case in array(&reference, "prefix_decodes") {
            let ids = ids(&case["ids"]);
            let (prompt, generated) = ids.split_at(ids.len() / 3);
            let mut detok = IncrementalDetokenizer::new(&tok, prompt, true, true).unwrap();
            for &id in generated {
                let peeked = detok.peek(&tok, id).unwrap();
                // Peeking twice, and at another token, changes nothing.
                let other = generated[0];
                detok.peek(&tok, other).unwrap();
                assert_eq!(detok.peek(&tok, id).unwrap(), peeked);
                assert_eq!(detok.push(&tok, id).unwrap(), peeked, "{model}");
            }
        }
    }
}
