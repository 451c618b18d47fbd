use serde_json::json;

use super::*;

fn delta() -> Event {
    Event::Delta(Delta {
        request_id: 3,
        index: 1,
        token_ids: vec![5],
        text: "a".into(),
        logprobs: Some(vec![vec![LogprobEntry {
            token_id: 5,
            logprob: f32_digits(-0.1),
            rank: 1,
            decoded_token: Some("a".into()),
        }]]),
        finish_reason: Some(FinishReason::Stop),
        stop_reason: Some(StopReason::Text("a".into())),
        usage: Usage::new(4, 1),
        prompt_logprobs: None,
    })
}

#[test]
fn a_delta_has_the_documented_shape() {
    assert_eq!(
        serde_json::to_value(delta()).unwrap(),
        json!({"kind": "delta", "request_id": 3, "index": 1, "token_ids": [5], "text": "a",
               "logprobs": [[{"token_id": 5, "logprob": -0.1, "rank": 1, "decoded_token": "a"}]],
               "finish_reason": "stop", "stop_reason": "a",
               "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}})
    );
    let text = serde_json::to_string(&delta()).unwrap();
    assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), delta());
}

#[test]
fn a_final_event_reads_back_with_an_unwritable_logprob() {
    let text = r#"{"kind": "final", "request_id": 3, "finish_reason": "length",
        "results": [{"index": 0, "token_ids": [], "text": "", "logprobs": null,
                     "cumulative_logprob": null, "finish_reason": "length", "stop_reason": 7}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 0, "total_tokens": 2},
        "prompt_logprobs": [null]}"#;
    let Event::Final(f) = serde_json::from_str(text).unwrap() else {
        panic!("a final event")
    };
    assert_eq!(f.results[0].cumulative_logprob, f64::NEG_INFINITY);
    assert_eq!(f.results[0].stop_reason, Some(StopReason::Token(7)));
    assert_eq!(f.prompt_logprobs, Some(vec![None]));
    assert_eq!(f.finish_reason.map(FinishReason::as_str), Some("length"));
}

#[test]
fn f32_logprobs_keep_their_digits() {
    assert_eq!(f32_digits(-0.1), -0.1);
    assert_eq!(f32_digits(-1.5), -1.5);
    assert_eq!(f32_digits(f32::NEG_INFINITY), f64::NEG_INFINITY);
    assert_ne!(f64::from(-0.1f32), -0.1, "widening alone would change them");
}
