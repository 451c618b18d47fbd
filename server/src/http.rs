//! Routing, the API key, the content type, body limits and the response helpers. Every error a
//! handler returns becomes an OpenAI-shaped JSON body; nothing a client sends
//! can make a handler panic or leave a request behind.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE,
};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::{chat, completions, endpoints, offload};

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Largest request body accepted (413 beyond it).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Longest a request body may take to arrive (408 beyond it).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Paths open without the API key; every other route needs it.
const OPEN_PATHS: [&str; 3] = ["/health", "/metrics", "/version"];

/// Routes one request. Never fails: errors are responses.
pub async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let response = match route(state, req).await {
        Ok(r) => r,
        Err(e) => {
            let mut r = error_response(&e);
            if matches!(
                e.status,
                StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
            ) {
                // The rest of the body is not read: the connection closes
                // (gracefully, see `conn`) after the error.
                r.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            r
        }
    };
    Ok(response)
}

async fn route(state: Arc<AppState>, req: Request<Incoming>) -> ApiResult<Response<Body>> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if !OPEN_PATHS.contains(&path.as_str()) {
        authorize(&state, &req)?;
    }
    let allowed: &[Method] = match path.as_str() {
        "/health" | "/version" | "/metrics" | "/v1/models" => &[Method::GET],
        "/v1/completions" | "/v1/chat/completions" | "/tokenize" | "/detokenize" => &[Method::POST],
        p if p.starts_with("/v1/models/") => &[Method::GET],
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
    if method == Method::POST {
        check_json(&req)?;
    }
    match path.as_str() {
        "/health" => Ok(endpoints::health(&state)),
        "/version" => Ok(json_response(StatusCode::OK, &endpoints::version())),
        "/metrics" => Ok(endpoints::metrics(&state)),
        "/v1/models" => Ok(json_response(StatusCode::OK, &endpoints::models(&state)?)),
        p if p.starts_with("/v1/models/") => {
            let card = endpoints::model(&state, &p["/v1/models/".len()..])?;
            Ok(json_response(StatusCode::OK, &card))
        }
        "/tokenize" | "/detokenize" => {
            let body = read_body(req).await?;
            let size = body.len();
            let tokenize = path == "/tokenize";
            let s = state.clone();
            let value = offload::run(&state.large_jobs, size, move || {
                if tokenize {
                    endpoints::tokenize(&s, &body)
                } else {
                    endpoints::detokenize(&s, &body)
                }
            })
            .await??;
            Ok(json_response(StatusCode::OK, &value))
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

/// 415 unless the body is declared JSON (`application/json`, parameters such as
/// `charset` allowed): a web page cannot send that cross-origin without a
/// preflight, so another site cannot post to a server without a key.
fn check_json(req: &Request<Incoming>) -> ApiResult<()> {
    let media_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim());
    if media_type.is_some_and(|m| m.eq_ignore_ascii_case("application/json")) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UnsupportedMediaType",
        format!(
            "Unsupported Media Type: the body must be JSON sent as `Content-Type: \
             application/json`, not {}.",
            media_type.map_or_else(|| "no content type".to_string(), |m| format!("`{m}`"))
        ),
    ))
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
    let collect = Limited::new(req.into_body(), MAX_BODY_BYTES).collect();
    match tokio::time::timeout(BODY_TIMEOUT, collect).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::bad_request(format!(
            "Could not read the request body: {e}"
        ))),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "RequestTimeout",
            format!(
                "The request body did not arrive within {} s.",
                BODY_TIMEOUT.as_secs()
            ),
        )),
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
