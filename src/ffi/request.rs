//! The JSON request body of `engine_submit`: the prompt (text, token ids or chat
//! messages) and every sampling parameter, by vLLM's names.
//!
//! Parsing takes the known fields out of the object one by one, each converted
//! with an error that names it; whatever is left over is an unknown field. A new
//! field is one `take` line (and one line in the header's schema).

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{FfiError, FfiResult};
use crate::sampling::{EarlyStopping, GuidedDecodingParams, SamplingParams};

/// How the prompt was given.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PromptSpec {
    Text {
        text: String,
        add_special_tokens: bool,
    },
    Tokens(Vec<u32>),
    Chat {
        chat: Box<ChatSpec>,
        add_special_tokens: bool,
    },
}

/// Chat messages and what the template is rendered with.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ChatSpec {
    pub messages: Value,
    pub add_generation_prompt: bool,
    pub continue_final_message: bool,
    pub tools: Option<Value>,
    pub documents: Option<Value>,
    pub chat_template_kwargs: Option<Map<String, Value>>,
}

/// A parsed request body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RequestSpec {
    pub prompt: PromptSpec,
    pub params: SamplingParams,
}

/// A JSON object whose fields are taken out as they are read.
pub(crate) struct Fields {
    map: Map<String, Value>,
    /// What the object is, for messages ("the request").
    what: &'static str,
}

impl Fields {
    pub fn parse(text: &str, what: &'static str) -> FfiResult<Fields> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| FfiError::json(format!("{what} is not valid JSON: {e}")))?;
        Fields::from_value(value, what)
    }

    pub fn from_value(value: Value, what: &'static str) -> FfiResult<Fields> {
        match value {
            Value::Object(map) => Ok(Fields { map, what }),
            other => Err(FfiError::json(format!(
                "{what} must be a JSON object, got {}",
                kind(&other)
            ))),
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.map.get(key).is_some_and(|v| !v.is_null())
    }

    /// Removes `key` and converts it; absent and `null` give `None`.
    pub fn take<T: DeserializeOwned>(&mut self, key: &str) -> FfiResult<Option<T>> {
        match self.map.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| FfiError::json(format!("field \"{key}\": {e}"))),
        }
    }

    /// Removes `key` as it is, `null` included.
    pub fn take_raw(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key)
    }

    /// Removes a non-negative integer field (see [`count_value`]).
    pub fn count(&mut self, key: &str) -> FfiResult<Option<usize>> {
        match self.map.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => count_value(key, v).map(Some),
        }
    }

    /// Fails naming the first field nobody took.
    pub fn finish(self) -> FfiResult<()> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(key) => Err(FfiError::json(format!(
                "unknown field \"{key}\" in {} (see engine.h for the fields)",
                self.what
            ))),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Takes the chat fields (everything but `messages`' own presence check and
/// `add_generation_prompt`, which the caller decides).
pub(crate) fn take_chat(
    fields: &mut Fields,
    messages: Value,
    add_generation_prompt: bool,
) -> FfiResult<ChatSpec> {
    if !messages.is_array() {
        return Err(FfiError::json(format!(
            "field \"messages\": expected an array of message objects, got {}",
            kind(&messages)
        )));
    }
    Ok(ChatSpec {
        messages,
        add_generation_prompt,
        continue_final_message: fields.take("continue_final_message")?.unwrap_or(false),
        tools: fields.take("tools")?,
        documents: fields.take("documents")?,
        chat_template_kwargs: fields.take("chat_template_kwargs")?,
    })
}

/// Fields that only chat requests have; an error names the first one present.
const CHAT_ONLY: &[&str] = &[
    "add_generation_prompt",
    "continue_final_message",
    "tools",
    "documents",
    "chat_template_kwargs",
];

/// Parses a request body (see `engine_submit` in engine.h for the schema).
pub(crate) fn parse_request(text: &str) -> FfiResult<RequestSpec> {
    let mut f = Fields::parse(text, "the request")?;
    let prompt = match (f.has("prompt"), f.has("messages")) {
        (true, true) => {
            return Err(FfiError::json(
                "the request has both \"prompt\" and \"messages\": give one",
            ))
        }
        (false, false) => {
            return Err(FfiError::json(
                "the request needs a \"prompt\" (text or token ids) or \"messages\" (chat)",
            ))
        }
        (true, false) => {
            if let Some(key) = CHAT_ONLY.iter().find(|k| f.has(k)) {
                return Err(FfiError::json(format!(
                    "field \"{key}\" applies to \"messages\" requests only"
                )));
            }
            let add_special_tokens = f.take("add_special_tokens")?;
            match f.take::<Value>("prompt")? {
                Some(Value::String(text)) => PromptSpec::Text {
                    text,
                    add_special_tokens: add_special_tokens.unwrap_or(true),
                },
                Some(ids @ Value::Array(_)) => {
                    PromptSpec::Tokens(serde_json::from_value(ids).map_err(|e| {
                        FfiError::json(format!(
                            "field \"prompt\": expected text or an array of token ids: {e}"
                        ))
                    })?)
                }
                other => {
                    return Err(FfiError::json(format!(
                        "field \"prompt\": expected text or an array of token ids, got {}",
                        other.as_ref().map_or("null", kind)
                    )))
                }
            }
        }
        (false, true) => {
            let messages: Value = f.take("messages")?.unwrap_or(Value::Null);
            let add_generation_prompt = f.take("add_generation_prompt")?.unwrap_or(true);
            let chat = take_chat(&mut f, messages, add_generation_prompt)?;
            PromptSpec::Chat {
                chat: Box::new(chat),
                add_special_tokens: f.take("add_special_tokens")?.unwrap_or(false),
            }
        }
    };
    let params = take_sampling_params(&mut f)?;
    f.finish()?;
    Ok(RequestSpec { prompt, params })
}

/// Every SamplingParams field, by vLLM's name, over vLLM's defaults. Ranges are
/// checked later by `SamplingParams::verify`, with vLLM's messages; only what
/// the Rust types cannot hold (a negative count) is reported here, in vLLM's
/// words too.
/// Later vLLM reads seed -1 as "no seed" (clients send it for "random").
fn take_seed(f: &mut Fields) -> FfiResult<Option<u64>> {
    match f.take::<i128>("seed")? {
        None | Some(-1) => Ok(None),
        Some(s) => u64::try_from(s).map(Some).map_err(|_| {
            FfiError::json(format!(
                "field \"seed\": expected -1 (none) or an integer from 0 to {}, got {s}",
                u64::MAX
            ))
        }),
    }
}

fn take_sampling_params(f: &mut Fields) -> FfiResult<SamplingParams> {
    let mut p = SamplingParams::default();
    if let Some(v) = f.count("n")? {
        p.n = v;
    }
    p.best_of = f.count("best_of")?;
    if let Some(v) = f.take("presence_penalty")? {
        p.presence_penalty = v;
    }
    if let Some(v) = f.take("frequency_penalty")? {
        p.frequency_penalty = v;
    }
    if let Some(v) = f.take("repetition_penalty")? {
        p.repetition_penalty = v;
    }
    if let Some(v) = f.take("temperature")? {
        p.temperature = v;
    }
    if let Some(v) = f.take("top_p")? {
        p.top_p = v;
    }
    if let Some(v) = f.take("top_k")? {
        p.top_k = v;
    }
    if let Some(v) = f.take("min_p")? {
        p.min_p = v;
    }
    p.seed = take_seed(f)?;
    if let Some(v) = f.take("use_beam_search")? {
        p.use_beam_search = v;
    }
    if let Some(v) = f.take("length_penalty")? {
        p.length_penalty = v;
    }
    if let Some(v) = f.take::<Value>("early_stopping")? {
        p.early_stopping = match v {
            Value::Bool(false) => EarlyStopping::False,
            Value::Bool(true) => EarlyStopping::True,
            Value::String(s) if s == "never" => EarlyStopping::Never,
            other => {
                return Err(FfiError::json(format!(
                    "field \"early_stopping\": expected true, false or \"never\", got {other}"
                )))
            }
        };
    }
    if let Some(v) = f.take::<Value>("stop")? {
        p.stop = match v {
            Value::String(s) => vec![s],
            list => serde_json::from_value(list).map_err(|e| {
                FfiError::json(format!(
                    "field \"stop\": expected a string or an array of strings: {e}"
                ))
            })?,
        };
    }
    if let Some(v) = f.take("stop_token_ids")? {
        p.stop_token_ids = v;
    }
    if let Some(v) = f.take("include_stop_str_in_output")? {
        p.include_stop_str_in_output = v;
    }
    if let Some(v) = f.take("ignore_eos")? {
        p.ignore_eos = v;
    }
    // Absent: vLLM's default (16); null: no limit but the model's length.
    match f.take_raw("max_tokens") {
        None => {}
        Some(Value::Null) => p.max_tokens = None,
        Some(v) => p.max_tokens = Some(count_value("max_tokens", v)?),
    }
    if let Some(v) = f.count("min_tokens")? {
        p.min_tokens = v;
    }
    p.logprobs = f.count("logprobs")?;
    p.prompt_logprobs = f.count("prompt_logprobs")?;
    if let Some(v) = f.take("detokenize")? {
        p.detokenize = v;
    }
    if let Some(v) = f.take("skip_special_tokens")? {
        p.skip_special_tokens = v;
    }
    if let Some(v) = f.take("spaces_between_special_tokens")? {
        p.spaces_between_special_tokens = v;
    }
    if let Some(bias) = f.take::<Map<String, Value>>("logit_bias")? {
        for (id, v) in bias {
            let token = id.trim().parse::<u32>().map_err(|_| {
                FfiError::json(format!(
                    "field \"logit_bias\": key \"{id}\" is not a token id"
                ))
            })?;
            let value = v.as_f64().ok_or_else(|| {
                FfiError::json(format!(
                    "field \"logit_bias\": the bias of token {id} is not a number"
                ))
            })?;
            p.logit_bias.insert(token, value);
        }
    }
    p.truncate_prompt_tokens = f.count("truncate_prompt_tokens")?;
    p.guided_decoding = take_guided_decoding(f)?;
    Ok(p)
}

/// vLLM's guided decoding fields and OpenAI's `response_format`. Shapes are
/// checked here (ENGINE_ERR_JSON); the constraint itself is compiled when the
/// request is validated (ENGINE_ERR_INVALID_ARGUMENT with the parser's message).
fn take_guided_decoding(f: &mut Fields) -> FfiResult<Option<GuidedDecodingParams>> {
    let mut g = GuidedDecodingParams {
        json: match f.take::<Value>("guided_json")? {
            // vLLM accepts the schema as JSON text too.
            Some(Value::String(text)) => Some(serde_json::from_str(&text).map_err(|e| {
                FfiError::invalid(format!("guided_json: the schema is not valid JSON: {e}"))
            })?),
            other => other,
        },
        regex: f.take("guided_regex")?,
        choice: f.take("guided_choice")?,
        grammar: f.take("guided_grammar")?,
        json_schema: None,
        whitespace_pattern: f.take("guided_whitespace_pattern")?,
        backend: f.take("guided_decoding_backend")?,
        json_object: false,
    };
    if let Some(format) = f.take::<Value>("response_format")? {
        let mut rf = Fields::from_value(format, "\"response_format\"")?;
        let kind: Option<String> = rf.take("type")?;
        match kind.as_deref() {
            Some("text") => {}
            Some("json_object") => g.json_object = true,
            Some("json_schema") => {
                let mut js = match rf.take_raw("json_schema") {
                    Some(v @ Value::Object(_)) => Fields::from_value(v, "\"json_schema\"")?,
                    _ => {
                        return Err(FfiError::json(
                            "field \"response_format\": type \"json_schema\" needs a \"json_schema\" object",
                        ))
                    }
                };
                let _name: Option<String> = js.take("name")?;
                let _description: Option<String> = js.take("description")?;
                let _strict: Option<bool> = js.take("strict")?;
                // No schema: any JSON value (OpenAI makes it optional).
                let schema: Value = js.take("schema")?.unwrap_or_else(|| Value::Object(Map::new()));
                js.finish()?;
                // Any guided_* field wins, as over json_object.
                g.json_schema = Some(schema);
            }
            other => {
                return Err(FfiError::json(format!(
                    "field \"response_format\": \"type\" must be \"text\", \"json_object\" or \"json_schema\", got {}",
                    other.map_or("nothing".to_string(), |t| format!("{t:?}"))
                )))
            }
        }
        rf.finish()?;
    }
    let given = g.is_active() || g.whitespace_pattern.is_some() || g.backend.is_some();
    Ok(given.then_some(g))
}

/// A non-negative integer field's value. A negative one gets vLLM's message for
/// that field (ENGINE_ERR_INVALID_ARGUMENT) where vLLM has one.
fn count_value(key: &str, v: Value) -> FfiResult<usize> {
    if let Some(negative) = v.as_i64().filter(|&n| n < 0) {
        if let Some(e) = SamplingParams::negative_integer_error(key, negative) {
            return Err(e.into());
        }
    }
    serde_json::from_value(v).map_err(|e| FfiError::json(format!("field \"{key}\": {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::engine_status;

    #[test]
    fn text_tokens_and_chat_prompts() {
        let r = parse_request(r#"{"prompt": "Hi", "max_tokens": 3, "temperature": 0}"#).unwrap();
        assert_eq!(
            r.prompt,
            PromptSpec::Text {
                text: "Hi".into(),
                add_special_tokens: true
            }
        );
        assert_eq!(r.params.max_tokens, Some(3));
        assert_eq!(r.params.temperature, 0.0);
        for seedless in [r#""seed": -1"#, r#""seed": null"#] {
            let r = parse_request(&format!(r#"{{"prompt": [1], {seedless}}}"#)).unwrap();
            assert_eq!(r.params.seed, None, "{seedless}");
        }
        assert!(parse_request(r#"{"prompt": [1], "seed": -2}"#).is_err());
        let r = parse_request(r#"{"prompt": [1, 2, 3], "seed": null}"#).unwrap();
        assert_eq!(r.prompt, PromptSpec::Tokens(vec![1, 2, 3]));
        assert_eq!(r.params, SamplingParams::default());
        let r = parse_request(
            r#"{"messages": [{"role": "user", "content": "Hi"}], "add_generation_prompt": false}"#,
        )
        .unwrap();
        let PromptSpec::Chat {
            chat,
            add_special_tokens,
        } = r.prompt
        else {
            panic!("a chat prompt")
        };
        assert!(!chat.add_generation_prompt && !add_special_tokens);
    }

    #[test]
    fn guided_fields_and_response_format() {
        let r = parse_request(
            r#"{"prompt": "x", "guided_json": "{\"type\": \"integer\"}", "guided_decoding_backend": "outlines"}"#,
        )
        .unwrap();
        let g = r.params.guided_decoding.unwrap();
        assert_eq!(g.json, Some(serde_json::json!({"type": "integer"})));
        assert_eq!(g.backend.as_deref(), Some("outlines"));
        let r = parse_request(
            r#"{"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "string"}, "strict": true}}}"#,
        )
        .unwrap();
        let g = r.params.guided_decoding.unwrap();
        assert_eq!(g.json_schema, Some(serde_json::json!({"type": "string"})));
        assert_eq!(
            g.json, None,
            "response_format's schema is not a guided_json"
        );
        let r = parse_request(r#"{"prompt": "x", "response_format": {"type": "json_object"}}"#)
            .unwrap();
        assert!(r.params.guided_decoding.unwrap().json_object);
        let r = parse_request(r#"{"prompt": "x", "response_format": {"type": "text"}}"#).unwrap();
        assert_eq!(r.params.guided_decoding, None);
        let r = parse_request(r#"{"prompt": "x", "guided_choice": ["a", "b"]}"#).unwrap();
        assert_eq!(
            r.params.guided_decoding.unwrap().choice,
            Some(vec!["a".to_string(), "b".to_string()])
        );
        let err = |body: &str| parse_request(body).unwrap_err();
        assert_eq!(
            err(r#"{"prompt": "x", "response_format": {"type": "xml"}}"#).status,
            engine_status::ENGINE_ERR_JSON
        );
        assert_eq!(
            err(r#"{"prompt": "x", "guided_json": "{"}"#).status,
            engine_status::ENGINE_ERR_INVALID_ARGUMENT
        );
        assert!(err(r#"{"prompt": "x", "guided_choice": "a"}"#)
            .message
            .contains("guided_choice"));
        assert!(err(r#"{"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"schema": {}, "extra": 1}}}"#)
            .message
            .contains("unknown field \"extra\""));
    }

    #[test]
    fn errors_name_the_field() {
        let msg = |body: &str| parse_request(body).unwrap_err().message;
        assert!(msg("{").contains("not valid JSON"));
        assert!(msg("[1]").contains("must be a JSON object, got an array"));
        assert!(msg(r#"{"prompt": "x", "colour": 1}"#).contains("unknown field \"colour\""));
        assert!(msg(r#"{"prompt": "x", "top_k": "many"}"#).contains("field \"top_k\""));
        assert!(msg(r#"{"prompt": 5}"#).contains("got a number"));
        assert!(msg(r#"{"prompt": [1, -2]}"#).contains("field \"prompt\""));
        assert!(msg(r#"{"max_tokens": 1}"#).contains("needs a \"prompt\""));
        assert!(msg(r#"{"prompt": "x", "messages": []}"#).contains("both"));
        assert!(msg(r#"{"prompt": "x", "tools": []}"#).contains("\"tools\" applies to"));
        assert!(msg(r#"{"messages": {}}"#).contains("expected an array"));
    }
}
