//! The JSON request body of `engine_submit` (engine_api's `SubmitRequest`,
//! shared with the server) turned into what the engine runs: the prompt (text,
//! token ids or chat messages) and vLLM's SamplingParams over vLLM's defaults.
//!
//! The shape (JSON types, unknown fields) is checked when the body is read
//! (ENGINE_ERR_JSON); what the values mean here and in `SamplingParams::verify`,
//! with vLLM's messages (ENGINE_ERR_INVALID_ARGUMENT).

use std::collections::BTreeMap;

use engine_api::request::{
    self as wire, kind, ChatTemplateRequest, ResponseFormat, ShapeError, SubmitRequest,
};
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

impl From<ShapeError> for FfiError {
    fn from(e: ShapeError) -> FfiError {
        FfiError::json(e.0)
    }
}

/// A chat (a request's or `engine_apply_chat_template`'s) with its messages checked.
pub(crate) fn chat_spec(
    chat: ChatTemplateRequest,
    add_generation_prompt: bool,
) -> FfiResult<ChatSpec> {
    let messages = chat.messages.unwrap_or(Value::Null);
    if !messages.is_array() {
        return Err(FfiError::json(format!(
            "field \"messages\": expected an array of message objects, got {}",
            kind(&messages)
        )));
    }
    Ok(ChatSpec {
        messages,
        add_generation_prompt,
        continue_final_message: chat.continue_final_message.unwrap_or(false),
        tools: chat.tools,
        documents: chat.documents,
        chat_template_kwargs: chat.chat_template_kwargs,
    })
}

/// Parses a request body (see `engine_submit` in engine.h for the schema).
pub(crate) fn parse_request(text: &str) -> FfiResult<RequestSpec> {
    let mut request = SubmitRequest::from_json(text)?;
    let prompt = prompt_spec(&mut request)?;
    let params = sampling_params(request)?;
    Ok(RequestSpec { prompt, params })
}

/// The prompt, or chat messages, and how they are tokenized.
fn prompt_spec(r: &mut SubmitRequest) -> FfiResult<PromptSpec> {
    match (r.prompt.take(), r.messages.take()) {
        (Some(_), Some(_)) => Err(FfiError::json(
            "the request has both \"prompt\" and \"messages\": give one",
        )),
        (None, None) => Err(FfiError::json(
            "the request needs a \"prompt\" (text or token ids) or \"messages\" (chat)",
        )),
        (Some(prompt), None) => {
            if let Some(key) = r.chat_only_field() {
                return Err(FfiError::json(format!(
                    "field \"{key}\" applies to \"messages\" requests only"
                )));
            }
            Ok(match prompt {
                wire::Prompt::Text(text) => PromptSpec::Text {
                    text,
                    add_special_tokens: r.add_special_tokens.unwrap_or(true),
                },
                wire::Prompt::Tokens(ids) => PromptSpec::Tokens(ids),
            })
        }
        (None, Some(messages)) => {
            let chat = ChatTemplateRequest {
                messages: Some(messages),
                continue_final_message: r.continue_final_message,
                tools: r.tools.take(),
                documents: r.documents.take(),
                chat_template_kwargs: r.chat_template_kwargs.take(),
            };
            let add_generation_prompt = r.add_generation_prompt.unwrap_or(true);
            Ok(PromptSpec::Chat {
                chat: Box::new(chat_spec(chat, add_generation_prompt)?),
                add_special_tokens: r.add_special_tokens.unwrap_or(false),
            })
        }
    }
}

/// Every SamplingParams field over vLLM's defaults. Ranges are checked later by
/// `SamplingParams::verify`, with vLLM's messages; only what the Rust types
/// cannot hold (a negative count) is reported here, in vLLM's words too.
fn sampling_params(mut r: SubmitRequest) -> FfiResult<SamplingParams> {
    let mut p = SamplingParams::default();
    p.guided_decoding = guided_decoding(&mut r)?;
    p.n = count("n", r.n)?.unwrap_or(p.n);
    p.best_of = count("best_of", r.best_of)?;
    p.presence_penalty = r.presence_penalty.unwrap_or(p.presence_penalty);
    p.frequency_penalty = r.frequency_penalty.unwrap_or(p.frequency_penalty);
    p.repetition_penalty = r.repetition_penalty.unwrap_or(p.repetition_penalty);
    p.temperature = r.temperature.unwrap_or(p.temperature);
    p.top_p = r.top_p.unwrap_or(p.top_p);
    p.top_k = r.top_k.unwrap_or(p.top_k);
    p.min_p = r.min_p.unwrap_or(p.min_p);
    p.seed = seed(r.seed)?;
    p.use_beam_search = r.use_beam_search.unwrap_or(p.use_beam_search);
    p.length_penalty = r.length_penalty.unwrap_or(p.length_penalty);
    p.early_stopping = r.early_stopping.map_or(p.early_stopping, early_stopping);
    p.stop = r.stop.map_or(p.stop, |s| s.0.into());
    p.stop_token_ids = r.stop_token_ids.unwrap_or(p.stop_token_ids);
    p.include_stop_str_in_output = r
        .include_stop_str_in_output
        .unwrap_or(p.include_stop_str_in_output);
    p.ignore_eos = r.ignore_eos.unwrap_or(p.ignore_eos);
    // Absent: vLLM's default (16); null: no limit but the model's length.
    if let Some(max_tokens) = r.max_tokens {
        p.max_tokens = count("max_tokens", max_tokens)?;
    }
    p.min_tokens = count("min_tokens", r.min_tokens)?.unwrap_or(p.min_tokens);
    p.logprobs = count("logprobs", r.logprobs)?;
    p.prompt_logprobs = count("prompt_logprobs", r.prompt_logprobs)?;
    p.detokenize = r.detokenize.unwrap_or(p.detokenize);
    p.skip_special_tokens = r.skip_special_tokens.unwrap_or(p.skip_special_tokens);
    p.spaces_between_special_tokens = r
        .spaces_between_special_tokens
        .unwrap_or(p.spaces_between_special_tokens);
    if let Some(bias) = &r.logit_bias {
        p.logit_bias = logit_bias(bias)?;
    }
    p.truncate_prompt_tokens = count("truncate_prompt_tokens", r.truncate_prompt_tokens)?;
    Ok(p)
}

/// Later vLLM reads seed -1 as "no seed" (clients send it for "random").
fn seed(seed: Option<i128>) -> FfiResult<Option<u64>> {
    match seed {
        None | Some(-1) => Ok(None),
        Some(s) => u64::try_from(s).map(Some).map_err(|_| {
            FfiError::json(format!(
                "field \"seed\": expected -1 (none) or an integer from 0 to {}, got {s}",
                u64::MAX
            ))
        }),
    }
}

fn early_stopping(e: wire::EarlyStopping) -> EarlyStopping {
    match e {
        wire::EarlyStopping::False => EarlyStopping::False,
        wire::EarlyStopping::True => EarlyStopping::True,
        wire::EarlyStopping::Never => EarlyStopping::Never,
    }
}

/// OpenAI's token ids are JSON keys, that is text.
fn logit_bias(bias: &BTreeMap<String, f64>) -> FfiResult<BTreeMap<u32, f64>> {
    bias.iter()
        .map(|(id, &value)| {
            let token = id.trim().parse::<u32>().map_err(|_| {
                FfiError::json(format!(
                    "field \"logit_bias\": key \"{id}\" is not a token id"
                ))
            })?;
            Ok((token, value))
        })
        .collect()
}

/// vLLM's guided decoding fields and OpenAI's `response_format`; the constraint
/// is compiled when the request is validated (ENGINE_ERR_INVALID_ARGUMENT with
/// the parser's message).
fn guided_decoding(r: &mut SubmitRequest) -> FfiResult<Option<GuidedDecodingParams>> {
    let mut g = GuidedDecodingParams {
        json: match r.guided_json.take() {
            // vLLM accepts the schema as JSON text too.
            Some(Value::String(text)) => Some(serde_json::from_str(&text).map_err(|e| {
                FfiError::invalid(format!("guided_json: the schema is not valid JSON: {e}"))
            })?),
            other => other,
        },
        regex: r.guided_regex.take(),
        choice: r.guided_choice.take(),
        grammar: r.guided_grammar.take(),
        json_schema: None,
        whitespace_pattern: r.guided_whitespace_pattern.take(),
        backend: r.guided_decoding_backend.take(),
        json_object: false,
    };
    match r.response_format.take() {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => g.json_object = true,
        // No schema: any JSON value (OpenAI makes it optional). Any guided_*
        // field wins, as over json_object.
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            g.json_schema = Some(
                json_schema
                    .schema
                    .unwrap_or_else(|| Value::Object(Map::new())),
            );
        }
    }
    let given = g.is_active() || g.whitespace_pattern.is_some() || g.backend.is_some();
    Ok(given.then_some(g))
}

/// A non-negative integer field's value. A negative one gets vLLM's message for
/// that field (ENGINE_ERR_INVALID_ARGUMENT) where vLLM has one.
fn count(key: &str, value: Option<i64>) -> FfiResult<Option<usize>> {
    let Some(n) = value else { return Ok(None) };
    usize::try_from(n)
        .map(Some)
        .map_err(|_| match SamplingParams::negative_integer_error(key, n) {
            Some(e) => e.into(),
            None => FfiError::json(format!(
                "field \"{key}\": expected a non-negative integer, got {n}"
            )),
        })
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
