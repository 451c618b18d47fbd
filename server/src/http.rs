//! Routing, the API key, body limits and the response helpers. Every error a
//! handler returns becomes an OpenAI-shaped JSON body; nothing a client sends
//! can make a handler panic or leave a request behind.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE,
};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::{chat, completions, endpoints};

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Largest request body accepted (413 beyond it).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Routes one request. Never fails: errors are responses.
pub async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let response = match route(state, req).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    Ok(response)
}

async fn route(state: Arc<AppState>, req: Request<Incoming>) -> ApiResult<Response<Body>> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if path == "/v1" || path.starts_with("/v1/") {
        authorize(&state, &req)?;
    }
    let allowed: &[Method] = match path.as_str() {
        "/health" | "/version" | "/metrics" | "/v1/models" => &[Method::GET],
        "/v1/completions" | "/v1/chat/completions" | "/tokenize" | "/detokenize" => &[Method::POST],
        _ => return Err(ApiError::not_found(format!("Not Found: {path}"))),
    };
    if !allowed.contains(&method) {
        let mut r = error_response(&ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("Method Not Allowed: {method} {path}"),
        ));
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allowed[0].as_str()));
        return Ok(r);
    }
    match path.as_str() {
        "/health" => Ok(endpoints::health(&state)),
        "/version" => Ok(json_response(StatusCode::OK, &endpoints::version())),
        "/metrics" => Ok(endpoints::metrics(&state)),
        "/v1/models" => Ok(json_response(StatusCode::OK, &endpoints::models(&state)?)),
        "/tokenize" => {
            let body = read_body(req).await?;
            Ok(json_response(
                StatusCode::OK,
                &endpoints::tokenize(&state, &body)?,
            ))
        }
        "/detokenize" => {
            let body = read_body(req).await?;
            Ok(json_response(
                StatusCode::OK,
                &endpoints::detokenize(&state, &body)?,
            ))
        }
        "/v1/completions" => {
            let body = read_body(req).await?;
            completions::create(state, &body).await
        }
        _ => {
            let body = read_body(req).await?;
            chat::create(state, &body).await
        }
    }
}

/// `Authorization: Bearer <key>` when the server has a key; compared in constant
/// time so the comparison leaks nothing about the key.
fn authorize(state: &AppState, req: &Request<Incoming>) -> ApiResult<()> {
    let Some(key) = &state.config.api_key else {
        return Ok(());
    };
    let expected = format!("Bearer {key}");
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if bool::from(given.ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "AuthenticationError",
            "Unauthorized: a valid API key is required (Authorization: Bearer <key>).",
        ))
    }
}

async fn read_body(req: Request<Incoming>) -> ApiResult<Bytes> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestTooLarge",
            format!("Request body is larger than the limit of {MAX_BODY_BYTES} bytes."),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ApiError::bad_request(format!(
            "Could not read the request body: {e}"
        ))),
    }
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

pub fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut r = Response::new(full(value.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.status, &e.body())
}

/// A `text/event-stream` response whose events are sent through the returned
/// sender; the client going away closes it (`Sender::closed`).
pub fn sse_response() -> (mpsc::Sender<Bytes>, Response<Body>) {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let stream = ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream)));
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    (tx, r)
}

/// One server-sent event: `data: <json>\n\n`.
pub fn sse_event(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

pub fn sse_done() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}
