//! From a validated HTTP request to the engine's request (engine_api's
//! `SubmitRequest`, the body of engine.h's `engine_submit`). The engine checks
//! the values (ranges, logprobs, guided decoding) and its messages become the
//! 400s; the server checks only what it needs itself: the context length
//! (vLLM's message needs the prompt's length before the engine sees it).

use engine_api::request::{field, EarlyStopping, Prompt, ShapeError, Stop, SubmitRequest};
use serde::de::DeserializeOwned;
use serde_json::Value;

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
        Some(m) => {
            // In i128: a max_tokens near i64::MAX must not wrap past the check.
            let total = prompt_len as i128 + i128::from(m);
            if total > max_model_len as i128 {
                return Err(ApiError::bad_request(format!(
                    "This model's maximum context length is {max_model_len} tokens. However, \
                     you requested {total} tokens ({prompt_len} in the messages, {m} in the \
                     completion). Please reduce the length of the messages or completion."
                )));
            }
            Ok(m)
        }
    }
}

/// Keeps the last `k` prompt tokens (vLLM truncates on the left), for the
/// context check and the log; the engine gets `k` too, and refuses a `k` below
/// 1 with vLLM's message.
pub fn keep_last(ids: &mut Vec<u32>, k: Option<i64>) {
    if let Some(k) = k.and_then(|k| usize::try_from(k).ok()).filter(|&k| k >= 1) {
        if ids.len() > k {
            ids.drain(..ids.len() - k);
        }
    }
}

/// Guided decoding with tools: vLLM's rule, one or the other. The engine's
/// own test of the request decides.
pub fn uses_guided_decoding(c: &CommonFields) -> ApiResult<bool> {
    let mut request = SubmitRequest::default();
    put_guided(&mut request, c)?;
    Ok(request.constrains())
}

/// What the endpoint decided beyond the shared fields.
pub struct EngineParams {
    pub prompt_ids: Vec<u32>,
    pub max_tokens: i64,
    pub default_temperature: f64,
    pub logprobs: Option<i64>,
    pub prompt_logprobs: Option<i64>,
}

/// The engine request for one prompt. Fields the server keeps as raw JSON get
/// their types here, with the message the engine would give (a 400).
pub fn engine_request(c: &CommonFields, p: EngineParams) -> ApiResult<SubmitRequest> {
    let mut r = SubmitRequest {
        prompt: Some(Prompt::Tokens(p.prompt_ids)),
        max_tokens: Some(Some(p.max_tokens)),
        temperature: Some(c.temperature.unwrap_or(p.default_temperature)),
        logprobs: p.logprobs,
        prompt_logprobs: p.prompt_logprobs,
        n: c.n,
        best_of: c.best_of,
        presence_penalty: c.presence_penalty,
        frequency_penalty: c.frequency_penalty,
        repetition_penalty: c.repetition_penalty,
        top_p: c.top_p,
        top_k: typed("top_k", c.top_k.map(Value::from))?,
        min_p: c.min_p,
        seed: c.seed.map(i128::from),
        use_beam_search: c.use_beam_search,
        length_penalty: c.length_penalty,
        early_stopping: typed::<EarlyStopping>("early_stopping", c.early_stopping.clone())?,
        stop: c.stop.as_ref().map(|s| match s {
            StringOrList::One(s) => Stop(vec![s.clone()]),
            StringOrList::Many(v) => Stop(v.clone()),
        }),
        stop_token_ids: typed(
            "stop_token_ids",
            c.stop_token_ids.as_ref().map(|v| v.clone().into()),
        )?,
        ignore_eos: c.ignore_eos,
        min_tokens: c.min_tokens,
        skip_special_tokens: c.skip_special_tokens,
        spaces_between_special_tokens: c.spaces_between_special_tokens,
        include_stop_str_in_output: c.include_stop_str_in_output,
        logit_bias: typed("logit_bias", c.logit_bias.clone().map(Value::Object))?,
        truncate_prompt_tokens: c.truncate_prompt_tokens,
        ..SubmitRequest::default()
    };
    put_guided(&mut r, c)?;
    Ok(r)
}

/// Structured output: the engine compiles and checks these (400 with the
/// parser's message when they do not compile).
fn put_guided(r: &mut SubmitRequest, c: &CommonFields) -> ApiResult<()> {
    r.guided_json = c.guided_json.clone();
    r.guided_regex = typed("guided_regex", c.guided_regex.clone())?;
    r.guided_choice = typed("guided_choice", c.guided_choice.clone())?;
    r.guided_grammar = typed("guided_grammar", c.guided_grammar.clone())?;
    r.guided_whitespace_pattern = typed(
        "guided_whitespace_pattern",
        c.guided_whitespace_pattern.clone(),
    )?;
    r.guided_decoding_backend =
        typed("guided_decoding_backend", c.guided_decoding_backend.clone())?;
    r.response_format = typed("response_format", c.response_format.clone())?;
    Ok(())
}

/// One field's value as the engine's type; `null` is absent.
fn typed<T: DeserializeOwned>(name: &str, value: Option<Value>) -> ApiResult<Option<T>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => field(name, v)
            .map(Some)
            .map_err(|ShapeError(message)| ApiError::bad_request(message)),
    }
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
        // The sum of a huge max_tokens and the prompt does not wrap past the check.
        let e = max_tokens(Some(i64::MAX), 1, 64).unwrap_err();
        assert!(e
            .message
            .contains(&format!("requested {} tokens", i64::MAX as i128 + 1)));
        assert_eq!(max_tokens(Some(63), 1, 64).unwrap(), 63);
    }

    #[test]
    fn truncation_keeps_the_last_tokens() {
        let mut ids = vec![1, 2, 3, 4];
        keep_last(&mut ids, Some(2));
        assert_eq!(ids, vec![3, 4]);
        keep_last(&mut ids, Some(9));
        assert_eq!(ids, vec![3, 4]);
        keep_last(&mut ids, Some(0));
        assert_eq!(ids, vec![3, 4], "the engine refuses 0, with vLLM's message");
    }
}
