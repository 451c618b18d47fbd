use serde_json::json;

use super::*;

fn shape_error(body: &str) -> String {
    SubmitRequest::from_json(body).unwrap_err().0
}

#[test]
fn errors_name_the_field() {
    assert!(shape_error("{").starts_with("the request is not valid JSON"));
    assert_eq!(
        shape_error("[1]"),
        "the request must be a JSON object, got an array"
    );
    assert_eq!(
        shape_error(r#"{"prompt": "x", "colour": 1}"#),
        "unknown field \"colour\" in the request (see engine.h for the fields)"
    );
    assert!(shape_error(r#"{"prompt": "x", "top_k": "many"}"#)
        .starts_with("field \"top_k\": invalid type: string \"many\""));
    assert_eq!(
        shape_error(r#"{"prompt": 5}"#),
        "field \"prompt\": expected text or an array of token ids, got a number"
    );
    assert!(shape_error(r#"{"prompt": [1, -2]}"#)
        .starts_with("field \"prompt\": expected text or an array of token ids: "));
    assert!(shape_error(r#"{"prompt": "x", "early_stopping": "soon"}"#)
        .starts_with("field \"early_stopping\": expected true, false or \"never\""));
    assert!(shape_error(r#"{"prompt": "x", "stop": ["a", 1]}"#)
        .starts_with("field \"stop\": expected a string or an array of strings"));
    let nested = r#"{"prompt": "x", "response_format": {"type": "json_schema",
        "json_schema": {"schema": {}, "extra": 1}}}"#;
    assert_eq!(
        shape_error(nested),
        "unknown field \"extra\" in \"response_format\" (see engine.h for the fields)"
    );
    assert!(
        shape_error(r#"{"prompt": "x", "response_format": {"type": "xml"}}"#)
            .contains("unknown variant `xml`")
    );
}

#[test]
fn max_tokens_tells_absent_from_null() {
    let read = |body: &str| SubmitRequest::from_json(body).unwrap().max_tokens;
    assert_eq!(read(r#"{"prompt": "x"}"#), None);
    assert_eq!(read(r#"{"prompt": "x", "max_tokens": null}"#), Some(None));
    assert_eq!(read(r#"{"prompt": "x", "max_tokens": 7}"#), Some(Some(7)));
    for max_tokens in [None, Some(None), Some(Some(7))] {
        let r = SubmitRequest {
            prompt: Some(Prompt::Tokens(vec![1])),
            max_tokens,
            ..SubmitRequest::default()
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(SubmitRequest::from_json(&text).unwrap(), r, "{text}");
    }
}

#[test]
fn writes_only_what_is_set_in_the_abis_shape() {
    let r = SubmitRequest {
        prompt: Some(Prompt::Tokens(vec![1, 2])),
        temperature: Some(0.5),
        stop: Some(Stop(vec!["a".into()])),
        early_stopping: Some(EarlyStopping::Never),
        response_format: Some(ResponseFormat::JsonObject),
        ..SubmitRequest::default()
    };
    assert_eq!(
        serde_json::to_value(&r).unwrap(),
        json!({"prompt": [1, 2], "temperature": 0.5, "stop": ["a"],
               "early_stopping": "never", "response_format": {"type": "json_object"}})
    );
    let one = SubmitRequest::from_json(r#"{"prompt": "x", "stop": "a"}"#).unwrap();
    assert_eq!(one.stop, Some(Stop(vec!["a".into()])));
    assert_eq!(one.prompt, Some(Prompt::Text("x".into())));
}

#[test]
fn guided_decoding_and_chat_fields_are_recognized() {
    let read = |body: &str| SubmitRequest::from_json(body).unwrap();
    assert!(!read(r#"{"prompt": "x"}"#).constrains());
    assert!(!read(r#"{"prompt": "x", "response_format": {"type": "text"}}"#).constrains());
    assert!(read(r#"{"prompt": "x", "response_format": {"type": "json_object"}}"#).constrains());
    assert!(read(r#"{"prompt": "x", "guided_regex": "a+"}"#).constrains());
    assert!(!read(r#"{"prompt": "x", "guided_decoding_backend": "outlines"}"#).constrains());
    assert_eq!(read(r#"{"prompt": "x"}"#).chat_only_field(), None);
    assert_eq!(
        read(r#"{"prompt": "x", "tools": []}"#).chat_only_field(),
        Some("tools")
    );
}

#[test]
fn one_field_reads_with_the_same_message() {
    assert_eq!(field::<i32>("top_k", json!(3)).unwrap(), 3);
    assert!(field::<Vec<u32>>("stop_token_ids", json!([-1]))
        .unwrap_err()
        .0
        .starts_with("field \"stop_token_ids\": invalid value"));
}
