//! The small endpoints: health, version, metrics, models, tokenize, detokenize.

use std::time::{SystemTime, UNIX_EPOCH};

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use crate::chat::render_chat;
use crate::error::{ApiError, ApiResult};
use crate::request::{parse_detokenize, parse_tokenize};
use crate::response::{full, Body};
use crate::state::AppState;

pub fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A random 32-hex-digit id, as vLLM's `random_uuid()`.
pub fn random_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// 200 with an empty body once the model is loaded and the engine serves; 503
/// while loading or after the engine stopped.
pub fn health(state: &AppState) -> Response<Body> {
    let (status, body) = match state.loaded_engine().map(|e| e.check()) {
        None => (StatusCode::SERVICE_UNAVAILABLE, "loading"),
        Some(Err(_)) => (StatusCode::SERVICE_UNAVAILABLE, "engine stopped"),
        Some(Ok(())) => (StatusCode::OK, ""),
    };
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r
}

pub fn version() -> Value {
    json!({"version": env!("CARGO_PKG_VERSION")})
}

/// Prometheus metrics: OpenMetrics when `accept` asks for it, else the
/// classic text format.
pub fn metrics(state: &AppState, accept: Option<&str>) -> Response<Body> {
    let (text, content_type) = state.metrics.render(accept);
    let mut r = Response::new(full(text));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// One card per served name, as vLLM's `ModelList`.
pub fn models(state: &AppState) -> ApiResult<Value> {
    let engine = state.engine()?;
    let created = unix_time();
    let root = state.model_name();
    let cards: Vec<Value> = state
        .config
        .served_model_names
        .iter()
        .map(|name| {
            json!({
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": root,
                "parent": null,
                "max_model_len": engine.info().max_model_len,
                "permission": [{
                    "id": format!("modelperm-{}", random_id()),
                    "object": "model_permission",
                    "created": created,
                    "allow_create_engine": false,
                    "allow_sampling": true,
                    "allow_logprobs": true,
                    "allow_search_indices": false,
                    "allow_view": true,
                    "allow_fine_tuning": false,
                    "organization": "*",
                    "group": null,
                    "is_blocking": false,
                }],
            })
        })
        .collect();
    Ok(json!({"object": "list", "data": cards}))
}

/// `GET /v1/models/{id}`: one card, or 404 for a name not served.
pub fn model(state: &AppState, id: &str) -> ApiResult<Value> {
    state.check_model(id)?;
    let list = models(state)?;
    list["data"]
        .as_array()
        .and_then(|cards| cards.iter().find(|c| c["id"] == id))
        .cloned()
        .ok_or_else(|| ApiError::unknown_model(id))
}

/// `{"prompt"}` or `{"messages"}` → `{"count", "max_model_len", "tokens"}`.
pub fn tokenize(state: &AppState, body: &[u8]) -> ApiResult<Value> {
    let req = parse_tokenize(body)?;
    if let Some(model) = &req.model {
        state.check_model(model)?;
    }
    let engine = state.engine()?;
    let tokens = match (&req.prompt, &req.messages) {
        (Some(prompt), None) => engine.tokenize(prompt, req.add_special_tokens.unwrap_or(true))?,
        (None, Some(messages)) => {
            let add_generation_prompt = req.add_generation_prompt.unwrap_or(true);
            let rendered = render_chat(&engine, messages, add_generation_prompt, None)?;
            engine.tokenize(&rendered.prompt, req.add_special_tokens.unwrap_or(false))?
        }
        _ => {
            return Err(ApiError::bad_request(
                "Give exactly one of `prompt` and `messages`.",
            ))
        }
    };
    Ok(json!({
        "count": tokens.len(),
        "max_model_len": engine.info().max_model_len,
        "tokens": tokens,
    }))
}

/// `{"tokens"}` → `{"prompt"}` (special tokens kept, as vLLM decodes).
pub fn detokenize(state: &AppState, body: &[u8]) -> ApiResult<Value> {
    let req = parse_detokenize(body)?;
    if let Some(model) = &req.model {
        state.check_model(model)?;
    }
    let engine = state.engine()?;
    let vocab = engine.info().vocab_size as i64;
    let mut ids = Vec::with_capacity(req.tokens.len());
    for &t in &req.tokens {
        if !(0..vocab).contains(&t) {
            return Err(ApiError::bad_request(format!(
                "token id {t} is out of range for a vocabulary of {vocab} tokens"
            )));
        }
        ids.push(t as u32);
    }
    Ok(json!({"prompt": engine.detokenize(&ids, false)?}))
}
