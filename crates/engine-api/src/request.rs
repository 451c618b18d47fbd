//! The request body of `engine_submit` (include/engine.h documents each field):
//! the prompt (text, token ids or chat messages) and every sampling parameter,
//! by vLLM's names. The server writes it, the engine reads it; the engine alone
//! checks what the values mean (ranges, vLLM's messages).
//!
//! Reading checks the shape only: JSON types, unknown fields. Its errors name
//! the field (`field "top_k": invalid type: ...`), as the C ABI's
//! ENGINE_ERR_JSON messages always have.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// An `engine_submit` request body. `None` is an absent field: the engine's
/// default (vLLM's) applies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<Prompt>,
    /// Chat messages, rendered with the model's chat template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_generation_prompt: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_final_message: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub documents: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template_kwargs: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_special_tokens: Option<bool>,
    // vLLM's SamplingParams. Counts are signed so that a negative one reaches
    // the engine, which answers with vLLM's message for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_of: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f64>,
    /// -1 is "no seed" (later vLLM; clients send it for "random").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i128>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_beam_search: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_token_ids: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_stop_str_in_output: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_eos: Option<bool>,
    /// Absent: vLLM's default (16); `Some(None)` (JSON null): no limit but the
    /// model's length.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_tokens: Option<Option<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detokenize: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_special_tokens: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spaces_between_special_tokens: Option<bool>,
    /// Token id (as text, OpenAI's form) to the bias added to its logit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<BTreeMap<String, f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate_prompt_tokens: Option<i64>,
    // vLLM's guided decoding and OpenAI's `response_format`.
    /// A JSON schema, or its text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guided_json: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guided_regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guided_choice: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guided_grammar: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guided_whitespace_pattern: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guided_decoding_backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
}

impl SubmitRequest {
    /// A constraint is asked for (vLLM's test for "guided decoding or tools").
    pub fn constrains(&self) -> bool {
        self.guided_json.is_some()
            || self.guided_regex.is_some()
            || self.guided_choice.is_some()
            || self.guided_grammar.is_some()
            || self
                .response_format
                .as_ref()
                .is_some_and(|f| *f != ResponseFormat::Text)
    }

    /// Reads a request body.
    pub fn from_json(text: &str) -> Result<SubmitRequest, ShapeError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| ShapeError(format!("the request is not valid JSON: {e}")))?;
        from_object(value, "the request")
    }

    /// The first chat-only field that is set.
    pub fn chat_only_field(&self) -> Option<&'static str> {
        [
            (
                "add_generation_prompt",
                self.add_generation_prompt.is_some(),
            ),
            (
                "continue_final_message",
                self.continue_final_message.is_some(),
            ),
            ("tools", self.tools.is_some()),
            ("documents", self.documents.is_some()),
            ("chat_template_kwargs", self.chat_template_kwargs.is_some()),
        ]
        .into_iter()
        .find_map(|(name, set)| set.then_some(name))
    }
}

/// The chat of `engine_apply_chat_template` in its object form: the messages
/// and the chat fields a request has (the JSON array form is `messages` alone).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatTemplateRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_final_message: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub documents: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template_kwargs: Option<Map<String, Value>>,
}

impl ChatTemplateRequest {
    /// Reads a chat: an array of messages, or the object.
    pub fn from_json(text: &str) -> Result<ChatTemplateRequest, ShapeError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| ShapeError(format!("the messages are not valid JSON: {e}")))?;
        if value.is_array() {
            return Ok(ChatTemplateRequest {
                messages: Some(value),
                ..ChatTemplateRequest::default()
            });
        }
        from_object(value, "the chat")
    }
}

/// How a text or token prompt is given.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

impl Serialize for Prompt {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Prompt::Text(t) => s.serialize_str(t),
            Prompt::Tokens(ids) => ids.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Prompt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Prompt, D::Error> {
        const EXPECTED: &str = "expected text or an array of token ids";
        match Value::deserialize(d)? {
            Value::String(text) => Ok(Prompt::Text(text)),
            ids @ Value::Array(_) => serde_json::from_value(ids)
                .map(Prompt::Tokens)
                .map_err(|e| D::Error::custom(format!("{EXPECTED}: {e}"))),
            other => Err(D::Error::custom(format!(
                "{EXPECTED}, got {}",
                kind(&other)
            ))),
        }
    }
}

/// Beam search's `early_stopping`: true, false or "never".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyStopping {
    False,
    True,
    Never,
}

impl Serialize for EarlyStopping {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            EarlyStopping::False => s.serialize_bool(false),
            EarlyStopping::True => s.serialize_bool(true),
            EarlyStopping::Never => s.serialize_str("never"),
        }
    }
}

impl<'de> Deserialize<'de> for EarlyStopping {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<EarlyStopping, D::Error> {
        match Value::deserialize(d)? {
            Value::Bool(false) => Ok(EarlyStopping::False),
            Value::Bool(true) => Ok(EarlyStopping::True),
            Value::String(s) if s == "never" => Ok(EarlyStopping::Never),
            other => Err(D::Error::custom(format!(
                "expected true, false or \"never\", got {other}"
            ))),
        }
    }
}

/// `stop`: one string or several (always written as a list).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stop(pub Vec<String>);

impl Serialize for Stop {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Stop {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Stop, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Stop(vec![s])),
            list => serde_json::from_value(list).map(Stop).map_err(|e| {
                D::Error::custom(format!("expected a string or an array of strings: {e}"))
            }),
        }
    }
}

/// OpenAI's `response_format`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

/// `response_format.json_schema`: only `schema` constrains the output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonSchemaFormat {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
    /// No schema: any JSON value (OpenAI makes it optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
}

/// A field present, `null` included (`Some(None)`); absent is `None` (serde's default).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A request (or part of one) whose JSON does not have the documented shape;
/// the message names the field (ENGINE_ERR_JSON at the C ABI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeError(pub String);

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ShapeError {}

/// Reads a JSON object (`what` names it in messages: "the request").
pub fn from_object<T: DeserializeOwned>(value: Value, what: &str) -> Result<T, ShapeError> {
    if !value.is_object() {
        return Err(ShapeError(format!(
            "{what} must be a JSON object, got {}",
            kind(&value)
        )));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        named_error(&path, &inner, what)
    })
}

/// Reads one field's value as its type, with the message `from_object` gives.
pub fn field<T: DeserializeOwned>(name: &str, value: Value) -> Result<T, ShapeError> {
    serde_json::from_value(value).map_err(|e| ShapeError(format!("field \"{name}\": {e}")))
}

/// `field "a.b": message`; an unknown field named in quotes, with where it was.
fn named_error(path: &str, inner: &str, what: &str) -> ShapeError {
    if let Some(rest) = inner.strip_prefix("unknown field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        // The path ends with the unknown field where serde could follow it,
        // else (inside a tagged enum) it is the object that has the field.
        let parent = match path.rsplit_once('.') {
            _ if path == name || path == "." => "",
            Some((parent, last)) if last == name => parent,
            _ => path,
        };
        let place = if parent.is_empty() {
            what.to_string()
        } else {
            format!("\"{parent}\"")
        };
        return ShapeError(format!(
            "unknown field \"{name}\" in {place} (see engine.h for the fields)"
        ));
    }
    if path == "." || path.is_empty() {
        ShapeError(format!("{what}: {inner}"))
    } else {
        ShapeError(format!("field \"{path}\": {inner}"))
    }
}

/// A JSON value's kind, for messages ("got a number").
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
#[path = "request/tests.rs"]
mod tests;
