//! From a validated request to the engine's request JSON (engine.h's
//! `engine_submit` fields), with the checks vLLM's server makes before the
//! engine sees a request: the context length, logprobs limits, truncation.

use serde_json::{json, Map, Value};

use crate::error::{ApiError, ApiResult};
use crate::request::{CommonFields, StringOrList};

/// `max_tokens` after vLLM's context check: a request without one gets the rest
/// of the context; one that does not fit is refused in vLLM's words.
pub fn max_tokens(
    requested: Option<i64>,
    prompt_len: usize,
    max_model_len: usize,
) -> ApiResult<i64> {
    match requested {
        None if prompt_len >= max_model_len => Err(ApiError::bad_request(format!(
            "This model's maximum context length is {max_model_len} tokens. However, you \
             requested {prompt_len} tokens in the messages, Please reduce the length of the \
             messages."
        ))),
        None => Ok((max_model_len - prompt_len) as i64),
        Some(m) if m < 1 => Err(ApiError::bad_request(format!(
            "max_tokens must be at least 1, got {m}."
        ))),
        Some(m) if prompt_len as i64 + m > max_model_len as i64 => {
            Err(ApiError::bad_request(format!(
                "This model's maximum context length is {max_model_len} tokens. However, you \
                 requested {} tokens ({prompt_len} in the messages, {m} in the completion). \
                 Please reduce the length of the messages or completion.",
                prompt_len as i64 + m
            )))
        }
        Some(m) => Ok(m),
    }
}

/// Keeps the last `k` prompt tokens (vLLM truncates on the left).
pub fn truncate(ids: &mut Vec<u32>, k: Option<i64>) -> ApiResult<()> {
    let Some(k) = k else { return Ok(()) };
    if k < 1 {
        return Err(ApiError::bad_request(format!(
            "truncate_prompt_tokens must be >= 1, got {k}"
        )));
    }
    let k = k as usize;
    if ids.len() > k {
        ids.drain(..ids.len() - k);
    }
    Ok(())
}

/// The server-wide cap on logprobs (`--max-logprobs`).
pub fn check_logprobs_limit(requested: Option<i64>, max_logprobs: i64) -> ApiResult<()> {
    match requested {
        Some(n) if n > max_logprobs => Err(ApiError::bad_request(format!(
            "Cannot request more than {max_logprobs} logprobs."
        ))),
        _ => Ok(()),
    }
}

/// Guided decoding with tools: vLLM's rule, one or the other.
pub fn uses_guided_decoding(c: &CommonFields) -> bool {
    [
        &c.guided_json,
        &c.guided_regex,
        &c.guided_choice,
        &c.guided_grammar,
    ]
    .iter()
    .any(|v| v.is_some())
        || c.response_format
            .as_ref()
            .is_some_and(|f| f.get("type").is_some_and(|t| t != "text"))
}

/// What the endpoint decided beyond the shared fields.
pub struct EngineParams {
    pub prompt_ids: Vec<u32>,
    pub max_tokens: i64,
    pub default_temperature: f64,
    pub logprobs: Option<i64>,
    pub prompt_logprobs: Option<i64>,
}

/// The engine request for one prompt.
pub fn engine_body(c: &CommonFields, p: EngineParams) -> Value {
    let mut body = Map::new();
    body.insert("prompt".into(), json!(p.prompt_ids));
    body.insert("max_tokens".into(), json!(p.max_tokens));
    body.insert(
        "temperature".into(),
        json!(c.temperature.unwrap_or(p.default_temperature)),
    );
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(v) = value {
            body.insert(key.into(), v);
        }
    };
    put("logprobs", p.logprobs.map(Value::from));
    put("prompt_logprobs", p.prompt_logprobs.map(Value::from));
    put("n", c.n.map(Value::from));
    put("best_of", c.best_of.map(Value::from));
    put("presence_penalty", c.presence_penalty.map(Value::from));
    put("frequency_penalty", c.frequency_penalty.map(Value::from));
    put("repetition_penalty", c.repetition_penalty.map(Value::from));
    put("top_p", c.top_p.map(Value::from));
    put("top_k", c.top_k.map(Value::from));
    put("min_p", c.min_p.map(Value::from));
    put("seed", c.seed.map(Value::from));
    put("use_beam_search", c.use_beam_search.map(Value::from));
    put("length_penalty", c.length_penalty.map(Value::from));
    put("early_stopping", c.early_stopping.clone());
    put(
        "stop",
        c.stop.as_ref().map(|s| match s {
            StringOrList::One(s) => json!([s]),
            StringOrList::Many(v) => json!(v),
        }),
    );
    put(
        "stop_token_ids",
        c.stop_token_ids.as_ref().map(|v| json!(v)),
    );
    put("ignore_eos", c.ignore_eos.map(Value::from));
    put("min_tokens", c.min_tokens.map(Value::from));
    put(
        "skip_special_tokens",
        c.skip_special_tokens.map(Value::from),
    );
    put(
        "spaces_between_special_tokens",
        c.spaces_between_special_tokens.map(Value::from),
    );
    put(
        "include_stop_str_in_output",
        c.include_stop_str_in_output.map(Value::from),
    );
    put("logit_bias", c.logit_bias.clone().map(Value::Object));
    // Structured output: the engine compiles and checks these (400 with the
    // parser's message when they do not compile).
    put("guided_json", c.guided_json.clone());
    put("guided_regex", c.guided_regex.clone());
    put("guided_choice", c.guided_choice.clone());
    put("guided_grammar", c.guided_grammar.clone());
    put(
        "guided_whitespace_pattern",
        c.guided_whitespace_pattern.clone(),
    );
    put("guided_decoding_backend", c.guided_decoding_backend.clone());
    put("response_format", c.response_format.clone());
    Value::Object(body)
}

/// True when the request's sequences can be streamed as they grow; otherwise
/// (best_of > n, beam search) the result is only known at the end, and vLLM
/// sends it as one chunk.
pub fn streams_incrementally(c: &CommonFields) -> bool {
    let n = c.n.unwrap_or(1);
    c.use_beam_search != Some(true) && c.best_of.is_none_or(|b| b == n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_length_messages_are_vllms() {
        assert_eq!(max_tokens(None, 10, 64).unwrap(), 54);
        let e = max_tokens(None, 64, 64).unwrap_err();
        assert!(e
            .message
            .contains("you requested 64 tokens in the messages, Please reduce"));
        let e = max_tokens(Some(60), 10, 64).unwrap_err();
        assert_eq!(
            e.message,
            "This model's maximum context length is 64 tokens. However, you requested 70 \
             tokens (10 in the messages, 60 in the completion). Please reduce the length of \
             the messages or completion."
        );
        assert!(max_tokens(Some(0), 1, 64)
            .unwrap_err()
            .message
            .contains("at least 1"));
    }

    #[test]
    fn truncation_keeps_the_last_tokens() {
        let mut ids = vec![1, 2, 3, 4];
        truncate(&mut ids, Some(2)).unwrap();
        assert_eq!(ids, vec![3, 4]);
        truncate(&mut ids, Some(9)).unwrap();
        assert_eq!(ids, vec![3, 4]);
        assert!(truncate(&mut ids, Some(0)).is_err());
    }
}
