//! Stop rules and streamed text: stop strings split across deltas, overlapping
//! and at the very start, include_stop_str_in_output, the hold-back of partial
//! matches, multi-byte text, min_tokens, EOS / stop tokens / length limits.

use engine::sampling::stop::{Finish, FinishReason, OutputText, StopChecker, StopReason};
use engine::sampling::SamplingParams;

const EOS: u32 = 2;

/// What a stream of (token, text delta) steps produced.
#[derive(Debug)]
struct Run {
    finish: Option<Finish>,
    /// Steps consumed (tokens generated) when it finished.
    steps: usize,
    text: String,
    /// What was streamed, chunk by chunk.
    chunks: Vec<String>,
}

fn run_with(
    params: &SamplingParams,
    steps: &[(u32, &str)],
    prompt_len: usize,
    max_model_len: usize,
    minimal: bool,
) -> Run {
    let checker = StopChecker::new(params, &[EOS], max_model_len);
    let mut out = OutputText::new();
    let mut chunks = Vec::new();
    let mut finish = None;
    let mut taken = 0;
    for (i, &(token, delta)) in steps.iter().enumerate() {
        let output_len = i + 1;
        finish = checker.check(&mut out, token, output_len, prompt_len + output_len, delta);
        let chunk = if minimal {
            out.take_delta_minimal(params)
        } else {
            out.take_delta(params)
        };
        chunks.push(chunk);
        taken = output_len;
        assert!(
            out.text().starts_with(&chunks.concat()),
            "streamed past the text"
        );
        if finish.is_some() {
            break;
        }
    }
    // Every streamed chunk is final text: once finished, together they are
    // exactly the output.
    if finish.is_some() {
        assert_eq!(
            chunks.concat(),
            out.text(),
            "streamed text differs from the output"
        );
    }
    Run {
        finish,
        steps: taken,
        text: out.text().to_string(),
        chunks,
    }
}

fn run(params: &SamplingParams, steps: &[(u32, &str)]) -> Run {
    run_with(params, steps, 3, 1000, false)
}

fn stop_on(stop: &[&str]) -> SamplingParams {
    SamplingParams {
        stop: stop.iter().map(|s| s.to_string()).collect(),
        max_tokens: Some(100),
        ..SamplingParams::default()
    }
}

fn text_stop(s: &str) -> Option<Finish> {
    Some(Finish {
        reason: FinishReason::Stop,
        stop_reason: Some(StopReason::Text(s.into())),
    })
}

/// Token ids do not matter for stop strings; number the steps 10, 11, ...
fn deltas<'a>(texts: &[&'a str]) -> Vec<(u32, &'a str)> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| (10 + i as u32, *t))
        .collect()
}

#[test]
fn a_stop_string_split_across_deltas() {
    let params = stop_on(&["lo W"]);
    let r = run(&params, &deltas(&["Hel", "lo", " W", "orld"]));
    assert_eq!(r.finish, text_stop("lo W"));
    assert_eq!(r.steps, 3);
    assert_eq!(r.text, "Hel");
    // vLLM's buffer (longest stop - 1 = 3 chars): "Hel" -> "", "Hello" -> "He",
    // then the cut text "Hel" is final and its last "l" goes out.
    assert_eq!(r.chunks, vec!["", "He", "l"]);
}

#[test]
fn overlapping_stop_strings_follow_list_order() {
    let r = run(&stop_on(&["abc", "bcd"]), &deltas(&["xab", "cd"]));
    assert_eq!((r.finish, r.text.as_str()), (text_stop("abc"), "x"));
    // vLLM takes the first string of the list that occurs, not the earliest one.
    let r = run(&stop_on(&["bcd", "abc"]), &deltas(&["xab", "cd"]));
    assert_eq!((r.finish, r.text.as_str()), (text_stop("bcd"), "xa"));
    // A stop string inside another one's occurrence.
    let r = run(&stop_on(&["aXa"]), &deltas(&["aXaXa"]));
    assert_eq!(r.text, "");
}

#[test]
fn include_stop_str_in_output_cuts_after_it() {
    let params = SamplingParams {
        include_stop_str_in_output: true,
        ..stop_on(&["bc"])
    };
    let r = run(&params, &deltas(&["xa", "bcdy"]));
    assert_eq!((r.finish, r.text.as_str()), (text_stop("bc"), "xabc"));
    // Nothing is held back: the stop string would be sent anyway.
    assert_eq!(r.chunks, vec!["xa", "bc"]);
    let r = run(&params, &deltas(&["xab", "c"]));
    assert_eq!(r.text, "xabc");
}

#[test]
fn a_stop_string_at_the_very_start() {
    let r = run(&stop_on(&["STOP"]), &deltas(&["STOP and more"]));
    assert_eq!(
        (r.finish, r.text.as_str(), r.steps),
        (text_stop("STOP"), "", 1)
    );
    assert_eq!(r.chunks, vec![""]);
}

#[test]
fn partial_matches_are_held_back() {
    let params = SamplingParams {
        max_tokens: Some(6),
        ..stop_on(&["STOP", "xy"])
    };
    // "STO" is a partial match until "p!" shows it is not "STOP".
    let steps = deltas(&["aS", "T", "O", "p!", "x", "z"]);
    let vllm = run(&params, &steps);
    let minimal = run_with(&params, &steps, 3, 1000, true);
    for r in [&vllm, &minimal] {
        assert_eq!(r.finish.as_ref().unwrap().reason, FinishReason::Length);
        assert_eq!(r.text, "aSTOp!xz");
        assert_eq!(r.steps, 6);
    }
    // vLLM holds back 3 characters (longest stop string - 1) until the end.
    assert_eq!(vllm.chunks, vec!["", "", "a", "ST", "O", "p!xz"]);
    // The minimal policy holds back only a suffix that could start a stop string:
    // "S", "ST", "STO", then nothing, then "x" (could start "xy").
    assert_eq!(minimal.chunks, vec!["a", "", "", "STOp!", "", "xz"]);
}

#[test]
fn the_stream_never_overtakes_a_later_cut() {
    let params = stop_on(&["xyz"]);
    for minimal in [false, true] {
        let r = run_with(&params, &deltas(&["ab", "cx", "y", "zq"]), 3, 1000, minimal);
        assert_eq!((r.finish, r.text.as_str()), (text_stop("xyz"), "abc"));
    }
}

#[test]
fn multi_byte_text_is_cut_by_characters() {
    let r = run(&stop_on(&["é"]), &deltas(&["ça", "vé", "rité"]));
    assert_eq!((r.finish, r.text.as_str()), (text_stop("é"), "çav"));
    // The hold-back is one character (not three bytes) for a two-character stop.
    let params = stop_on(&["日本"]);
    let r = run(&params, &deltas(&["こん", "に", "ちは", "日本"]));
    assert_eq!(r.text, "こんにちは");
    assert_eq!(r.chunks, vec!["こ", "ん", "にち", "は"]);
    // A window of new + stop characters reaches back over multi-byte text exactly.
    let r = run(&stop_on(&["ab"]), &deltas(&["ééa", "b"]));
    assert_eq!(r.text, "éé");
}

#[test]
fn min_tokens_blocks_every_stop() {
    let params = SamplingParams {
        min_tokens: 3,
        stop_token_ids: vec![7],
        ..stop_on(&["END"])
    };
    // EOS at 1 and "END" at 2 are ignored; the stop token at 3 counts.
    let r = run(&params, &[(EOS, ""), (10, "END"), (7, "x")]);
    let by_token = Some(Finish {
        reason: FinishReason::Stop,
        stop_reason: Some(StopReason::Token(7)),
    });
    assert_eq!((r.finish, r.steps, r.text.as_str()), (by_token, 3, "END"));
    let r = run(&params, &[(7, "a"), (EOS, "b"), (10, "c"), (EOS, "d")]);
    let by_eos = Some(Finish {
        reason: FinishReason::Stop,
        stop_reason: None,
    });
    assert_eq!((r.finish, r.steps, r.text.as_str()), (by_eos, 4, "abc"));
    // A stop string completed exactly at min_tokens stops.
    let r = run(&params, &[(10, "a"), (11, "EN"), (12, "D")]);
    assert_eq!((r.finish, r.text.as_str()), (text_stop("END"), "a"));
    // One completed before min_tokens is found by a later step only while it is
    // inside that step's window (new chars + len(stop) back), as in vLLM.
    let r = run(&params, &[(10, "a"), (11, "END"), (12, "x")]);
    assert_eq!((r.finish, r.text.as_str()), (text_stop("END"), "a"));
    // vLLM would have streamed "aE" at step 2 (its 2-char buffer) and then lost
    // the "E"; the whole stop string at the end is held back instead.
    assert_eq!(r.chunks, vec!["", "a", ""]);
    let r = run(&params, &[(10, "END"), (11, "a"), (12, "xyz")]);
    assert_eq!((r.finish, r.text.as_str()), (None, "ENDaxyz"));
}

#[test]
fn eos_and_stop_tokens_drop_their_text() {
    let params = SamplingParams {
        stop_token_ids: vec![7],
        ..SamplingParams::default()
    };
    let r = run(&params, &[(10, "hi"), (EOS, "</s>")]);
    assert_eq!(
        r.finish,
        Some(Finish {
            reason: FinishReason::Stop,
            stop_reason: None
        })
    );
    assert_eq!(r.text, "hi");
    let r = run(&params, &[(10, "hi"), (7, "!!")]);
    assert_eq!(
        r.finish,
        Some(Finish {
            reason: FinishReason::Stop,
            stop_reason: Some(StopReason::Token(7))
        })
    );
    assert_eq!(r.text, "hi");
    let include = SamplingParams {
        include_stop_str_in_output: true,
        ..params.clone()
    };
    assert_eq!(run(&include, &[(10, "hi"), (7, "!!")]).text, "hi!!");
    let ignore = SamplingParams {
        ignore_eos: true,
        max_tokens: Some(3),
        ..params
    };
    let r = run(&ignore, &[(EOS, "a"), (EOS, "b"), (EOS, "c"), (EOS, "d")]);
    assert_eq!(
        (r.finish.unwrap().reason, r.steps, r.text.as_str()),
        (FinishReason::Length, 3, "abc")
    );
}

#[test]
fn length_limits() {
    let params = SamplingParams {
        max_tokens: Some(2),
        ..SamplingParams::default()
    };
    let r = run(&params, &deltas(&["a", "b", "c"]));
    assert_eq!(
        (r.finish.unwrap().reason, r.steps),
        (FinishReason::Length, 2)
    );
    // The model length: prompt 3 + output > 4 stops after the second token.
    let unlimited = SamplingParams {
        max_tokens: None,
        ..SamplingParams::default()
    };
    let r = run_with(&unlimited, &deltas(&["a", "b", "c"]), 3, 4, false);
    assert_eq!(
        (r.finish.unwrap().reason, r.steps),
        (FinishReason::Length, 2)
    );
    // Even before min_tokens (a deviation: vLLM would run past the model).
    let min = SamplingParams {
        min_tokens: 10,
        ..unlimited
    };
    let r = run_with(&min, &deltas(&["a", "b", "c"]), 3, 4, false);
    assert_eq!(
        (r.finish.unwrap().reason, r.steps),
        (FinishReason::Length, 2)
    );
    assert_eq!(FinishReason::Stop.as_str(), "stop");
    assert_eq!(FinishReason::Length.as_str(), "length");
    assert_eq!(FinishReason::Abort.as_str(), "abort");
}

#[test]
fn flushed_text_and_aborts() {
    let params = stop_on(&["zzzz"]);
    let checker = StopChecker::new(&params, &[EOS], 100);
    let mut out = OutputText::new();
    assert_eq!(checker.check(&mut out, 10, 1, 4, "abcdef"), None);
    assert_eq!(out.take_delta(&params), "abc");
    out.append_flushed("\u{FFFD}");
    out.finish();
    assert_eq!(out.take_delta(&params), "def\u{FFFD}");
    assert_eq!(out.take_delta(&params), "");
}
