//! Request bodies of the OpenAI endpoints (vLLM v0.4.3's fields, with v0.5's
//! `stream_options`), validated like vLLM's pydantic models: unknown fields are
//! rejected (`extra_forbidden`), wrong types name their field, required fields
//! are `missing`.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{validation_error, ApiResult, FieldError};

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
    pub continuous_usage_stats: Option<bool>,
}

/// Fields both APIs share: the sampling parameters and vLLM's extras.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CommonFields {
    pub model: String,
    pub frequency_penalty: Option<f64>,
    pub logit_bias: Option<Map<String, Value>>,
    /// Absent: `None`; `null`: `Some(None)` (completions tell the two apart).
    #[serde(default, deserialize_with = "present")]
    pub max_tokens: Option<Option<i64>>,
    pub n: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub seed: Option<i64>,
    pub stop: Option<StringOrList>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// OpenAI's end-user id: accepted, not used (as in vLLM).
    #[allow(dead_code)]
    pub user: Option<String>,
    pub best_of: Option<i64>,
    pub use_beam_search: Option<bool>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub length_penalty: Option<f64>,
    pub early_stopping: Option<Value>,
    pub ignore_eos: Option<bool>,
    pub min_tokens: Option<i64>,
    pub stop_token_ids: Option<Vec<i64>>,
    pub skip_special_tokens: Option<bool>,
    pub spaces_between_special_tokens: Option<bool>,
    pub truncate_prompt_tokens: Option<i64>,
    pub echo: Option<bool>,
    pub include_stop_str_in_output: Option<bool>,
    pub add_special_tokens: Option<bool>,
    pub return_tokens_as_token_ids: Option<bool>,
    pub response_format: Option<Value>,
    pub guided_json: Option<Value>,
    pub guided_regex: Option<Value>,
    pub guided_choice: Option<Value>,
    pub guided_grammar: Option<Value>,
    pub guided_decoding_backend: Option<Value>,
    pub guided_whitespace_pattern: Option<Value>,
}

const COMMON_FIELDS: &[&str] = &[
    "model",
    "frequency_penalty",
    "logit_bias",
    "max_tokens",
    "n",
    "presence_penalty",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "user",
    "best_of",
    "use_beam_search",
    "top_k",
    "min_p",
    "repetition_penalty",
    "length_penalty",
    "early_stopping",
    "ignore_eos",
    "min_tokens",
    "stop_token_ids",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "truncate_prompt_tokens",
    "echo",
    "include_stop_str_in_output",
    "add_special_tokens",
    "return_tokens_as_token_ids",
    "response_format",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "guided_decoding_backend",
    "guided_whitespace_pattern",
];

/// `POST /v1/completions`.
#[derive(Debug, Clone)]
pub struct CompletionRequest {
    pub common: CommonFields,
    pub prompt: Value,
    pub logprobs: Option<i64>,
    pub suffix: Option<String>,
}

/// The completions-only fields (deserialized apart from the shared ones, so that
/// type errors keep their field's path).
#[derive(Debug, Clone, Deserialize)]
struct CompletionOwn {
    prompt: Value,
    logprobs: Option<i64>,
    suffix: Option<String>,
}

const COMPLETION_FIELDS: &[&str] = &["prompt", "logprobs", "suffix"];

/// One chat message: any role; content as text or a list of parts.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Value>,
    pub name: Option<String>,
    pub tool_calls: Option<Value>,
    pub tool_call_id: Option<String>,
}

const MESSAGE_FIELDS: &[&str] = &["role", "content", "name", "tool_calls", "tool_call_id"];

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub common: CommonFields,
    pub own: ChatFields,
}

/// The chat-only fields.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatFields {
    pub messages: Vec<ChatMessage>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    pub add_generation_prompt: Option<bool>,
    pub continue_final_message: Option<bool>,
    pub documents: Option<Vec<Value>>,
    pub chat_template_kwargs: Option<Map<String, Value>>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<Value>,
    /// OpenAI's newer name for `max_tokens`; it wins where both are given (as vLLM).
    pub max_completion_tokens: Option<i64>,
}

const CHAT_FIELDS: &[&str] = &[
    "messages",
    "logprobs",
    "top_logprobs",
    "add_generation_prompt",
    "continue_final_message",
    "documents",
    "chat_template_kwargs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "max_completion_tokens",
];

/// `POST /tokenize`: a prompt, or chat messages rendered with the template.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<ChatMessage>>,
    pub add_special_tokens: Option<bool>,
    pub add_generation_prompt: Option<bool>,
}

const TOKENIZE_FIELDS: &[&str] = &[
    "model",
    "prompt",
    "messages",
    "add_special_tokens",
    "add_generation_prompt",
];

/// `POST /detokenize`.
#[derive(Debug, Clone, Deserialize)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Vec<i64>,
}

const DETOKENIZE_FIELDS: &[&str] = &["model", "tokens"];

pub fn parse_completion(body: &[u8]) -> ApiResult<CompletionRequest> {
    let value = parse_object(body, &[COMMON_FIELDS, COMPLETION_FIELDS], |_| Vec::new())?;
    let own: CompletionOwn = typed(&value)?;
    Ok(CompletionRequest {
        common: typed(&value)?,
        prompt: own.prompt,
        logprobs: own.logprobs,
        suffix: own.suffix,
    })
}

pub fn parse_chat(body: &[u8]) -> ApiResult<ChatRequest> {
    let value = parse_object(body, &[COMMON_FIELDS, CHAT_FIELDS], |v| {
        message_extras(v.get("messages"), &["messages"])
    })?;
    Ok(ChatRequest {
        own: typed(&value)?,
        common: typed(&value)?,
    })
}

pub fn parse_tokenize(body: &[u8]) -> ApiResult<TokenizeRequest> {
    let value = parse_object(body, &[TOKENIZE_FIELDS], |v| {
        message_extras(v.get("messages"), &["messages"])
    })?;
    typed(&value)
}

pub fn parse_detokenize(body: &[u8]) -> ApiResult<DetokenizeRequest> {
    typed(&parse_object(body, &[DETOKENIZE_FIELDS], |_| Vec::new())?)
}

/// Parses `body` as a JSON object with no unknown keys (top level, and whatever
/// `nested` finds).
fn parse_object(
    body: &[u8],
    known: &[&[&str]],
    nested: impl Fn(&Map<String, Value>) -> Vec<FieldError>,
) -> ApiResult<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(validation_error(&[FieldError {
            kind: "missing",
            loc: vec![],
            msg: "Field required".into(),
            input: Value::Null,
        }]));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        validation_error(&[FieldError {
            kind: "json_invalid",
            loc: vec![Value::from(e.column())],
            msg: "JSON decode error".into(),
            input: Value::Object(Map::new()),
        }])
    })?;
    let Value::Object(map) = &value else {
        return Err(validation_error(&[FieldError {
            kind: "model_attributes_type",
            loc: vec![],
            msg: "Input should be a valid dictionary or object to extract fields from".into(),
            input: value.clone(),
        }]));
    };
    let mut errors: Vec<FieldError> = map
        .iter()
        .filter(|(k, _)| !known.iter().any(|list| list.contains(&k.as_str())))
        .map(|(k, v)| extra_forbidden(vec![Value::from(k.as_str())], v))
        .collect();
    errors.extend(nested(map));
    if !errors.is_empty() {
        return Err(validation_error(&errors));
    }
    Ok(value)
}

/// The typed fields of an object, a wrong type or a missing field named by its path.
fn typed<T: DeserializeOwned>(value: &Value) -> ApiResult<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let loc = path_loc(e.path());
        let message = e.inner().to_string();
        let input = lookup(value, e.path()).cloned().unwrap_or(Value::Null);
        let error = match message.strip_prefix("missing field `") {
            Some(rest) => {
                let mut loc = loc;
                loc.push(Value::from(rest.trim_end_matches('`')));
                FieldError {
                    kind: "missing",
                    loc,
                    msg: "Field required".into(),
                    input,
                }
            }
            None => FieldError {
                kind: "type_error",
                loc,
                msg: type_message(&message),
                input,
            },
        };
        validation_error(&[error])
    })
}

/// For `Option<Option<T>>` fields: a present field (even `null`) is `Some`.
fn present<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

fn extra_forbidden(loc: Vec<Value>, input: &Value) -> FieldError {
    FieldError {
        kind: "extra_forbidden",
        loc,
        msg: "Extra inputs are not permitted".into(),
        input: input.clone(),
    }
}

/// Unknown keys inside chat messages are rejected too, as vLLM does.
fn message_extras(messages: Option<&Value>, at: &[&str]) -> Vec<FieldError> {
    let Some(Value::Array(messages)) = messages else {
        return Vec::new();
    };
    let mut errors = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let Value::Object(fields) = m else { continue };
        for (k, v) in fields {
            if !MESSAGE_FIELDS.contains(&k.as_str()) {
                let mut loc: Vec<Value> = at.iter().map(|s| Value::from(*s)).collect();
                loc.push(Value::from(i));
                loc.push(Value::from(k.as_str()));
                errors.push(extra_forbidden(loc, v));
            }
        }
    }
    errors
}

/// serde's "invalid type: string \"x\", expected f64" in pydantic's words.
fn type_message(serde_message: &str) -> String {
    let expected = serde_message
        .rsplit_once("expected ")
        .map(|(_, e)| e.trim_end_matches('.'))
        .unwrap_or(serde_message);
    let readable = match expected {
        "f64" => "a valid number",
        "i64" | "u32" | "u64" | "usize" => "a valid integer",
        "a boolean" => "a valid boolean",
        "a string" => "a valid string",
        "a sequence" => "a valid list",
        "a map" | "struct StreamOptions" | "struct ChatMessage" => "a valid dictionary",
        // serde says "data did not match any variant of untagged enum StringOrList".
        e if e.ends_with("untagged enum StringOrList") => "a valid string or list of strings",
        other => return format!("Input should be {other} ({serde_message})"),
    };
    format!("Input should be {readable}")
}

fn path_loc(path: &serde_path_to_error::Path) -> Vec<Value> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|s| match s {
            Segment::Seq { index } => Some(Value::from(*index)),
            Segment::Map { key } => Some(Value::from(key.as_str())),
            Segment::Enum { variant } => Some(Value::from(variant.as_str())),
            Segment::Unknown => None,
        })
        .collect()
}

fn lookup<'a>(value: &'a Value, path: &serde_path_to_error::Path) -> Option<&'a Value> {
    use serde_path_to_error::Segment;
    let mut at = value;
    for s in path.iter() {
        at = match s {
            Segment::Seq { index } => at.get(*index)?,
            Segment::Map { key } => at.get(key.as_str())?,
            _ => return Some(at),
        };
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_extra_forbidden() {
        let e = parse_completion(br#"{"model": "m", "prompt": "x", "foo": 1}"#).unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
        assert!(
            e.message.contains("'type': 'extra_forbidden'"),
            "{}",
            e.message
        );
        assert!(e.message.contains("('body', 'foo')"), "{}", e.message);
        let e = parse_chat(
            br#"{"model": "m", "messages": [{"role": "user", "content": "hi", "x": 2}]}"#,
        )
        .unwrap_err();
        assert!(
            e.message.contains("('body', 'messages', 0, 'x')"),
            "{}",
            e.message
        );
    }

    #[test]
    fn wrong_types_and_missing_fields_name_the_field() {
        let e = parse_completion(br#"{"model": "m", "prompt": "x", "temperature": "hot"}"#)
            .unwrap_err();
        assert!(
            e.message.contains("('body', 'temperature')"),
            "{}",
            e.message
        );
        assert!(e.message.contains("a valid number"), "{}", e.message);
        let e = parse_completion(br#"{"prompt": "x"}"#).unwrap_err();
        assert!(e.message.contains("'type': 'missing'"), "{}", e.message);
        assert!(e.message.contains("('body', 'model')"), "{}", e.message);
        let e = parse_chat(br#"{"model": "m", "messages": [{"content": "x"}]}"#).unwrap_err();
        assert!(e.message.contains("'messages', 0, 'role'"), "{}", e.message);
    }

    #[test]
    fn bodies_that_are_not_objects() {
        assert!(parse_completion(b"")
            .unwrap_err()
            .message
            .contains("missing"));
        assert!(parse_completion(b"{bad")
            .unwrap_err()
            .message
            .contains("json_invalid"));
        assert!(parse_completion(b"[1, 2]")
            .unwrap_err()
            .message
            .contains("model_attributes_type"));
    }

    #[test]
    fn a_stop_of_the_wrong_type_reads_as_pydantic_says_it() {
        let e = parse_completion(br#"{"model": "m", "prompt": "x", "stop": [1]}"#).unwrap_err();
        assert!(
            e.message
                .contains("Input should be a valid string or list of strings"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("untagged"), "{}", e.message);
    }

    #[test]
    fn a_valid_request_parses() {
        let r = parse_completion(
            br#"{"model": "m", "prompt": [1, 2], "stop": "x", "n": 2, "stream_options": {"include_usage": true}}"#,
        )
        .unwrap();
        assert_eq!(r.common.n, Some(2));
        assert!(matches!(r.common.stop, Some(StringOrList::One(_))));
        assert_eq!(r.common.stream_options.unwrap().include_usage, Some(true));
    }
}
