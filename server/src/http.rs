//! Routing (under `--root-path` too), the API key, the content type and body
//! limits (the responses are built in response.rs). Every error a handler returns becomes an
//! OpenAI-shaped JSON body and a log line; nothing a client sends can make a
//! handler panic or leave a request behind.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ACCEPT, ALLOW, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE,
};
use hyper::{Method, Request, Response, StatusCode};
use subtle::ConstantTimeEq;

use crate::endpoints::random_id;
use crate::error::{ApiError, ApiResult};
use crate::response::{error_response, json_response, Body};
use crate::state::AppState;
use crate::{chat, completions, endpoints, offload};

/// Largest request body accepted (413 beyond it).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Longest a request body may take to arrive (408 beyond it).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Paths open without the API key; every other route needs it.
const OPEN_PATHS: [&str; 3] = ["/health", "/metrics", "/version"];

/// Longest error message a log line repeats (a validation error quotes the
/// input, which may be megabytes).
const MAX_LOGGED_MESSAGE: usize = 1000;

/// Routes one request. Never fails: errors are responses, and log lines.
pub async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let id = request_id(&req);
    let what = format!("{} {}", req.method(), req.uri().path());
    let response = match route(state, req, &id).await {
        Ok(r) => r,
        Err(e) => {
            log_error(&id, &what, &e);
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

/// The client's `X-Request-Id` when it is a short printable token, else a new
/// id: what the log lines of an HTTP request carry.
fn request_id(req: &Request<Incoming>) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| format!("req-{}", &random_id()[..16]), str::to_string)
}

/// The line a request that ended in an error logs: its id, what it was, the
/// status and the reason. Server faults are errors, the client's warnings.
pub fn log_error(id: &str, what: &str, e: &ApiError) {
    let (message, cut) = cut_for_log(&e.message);
    let status = e.status.as_u16();
    if e.status.is_server_error() {
        tracing::error!("request {id} {what}: {status} {}: {message}{cut}", e.kind);
    } else {
        tracing::warn!("request {id} {what}: {status} {}: {message}{cut}", e.kind);
    }
}

/// At most [`MAX_LOGGED_MESSAGE`] bytes of `text` (on a character
/// boundary), and "…" when it was cut.
pub fn cut_for_log(text: &str) -> (&str, &'static str) {
    if text.len() <= MAX_LOGGED_MESSAGE {
        return (text, "");
    }
    let mut end = MAX_LOGGED_MESSAGE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (&text[..end], "…")
}

/// The path routes match: without `--root-path` when it starts with it (as
/// Starlette strips FastAPI's root_path), as it came otherwise.
fn route_path<'a>(state: &AppState, path: &'a str) -> &'a str {
    match &state.config.root_path {
        Some(root) => match path.strip_prefix(root.as_str()) {
            Some(rest) if rest.starts_with('/') => rest,
            // The root itself names no route.
            Some("") => "",
            _ => path,
        },
        None => path,
    }
}

async fn route(
    state: Arc<AppState>,
    req: Request<Incoming>,
    id: &str,
) -> ApiResult<Response<Body>> {
    let full_path = req.uri().path().to_string();
    let path = route_path(&state, &full_path).to_string();
    let method = req.method().clone();
    if !OPEN_PATHS.contains(&path.as_str()) {
        authorize(&state, &req)?;
    }
    let allowed: &[Method] = match path.as_str() {
        "/health" | "/version" | "/metrics" | "/v1/models" => &[Method::GET],
        "/v1/completions" | "/v1/chat/completions" | "/tokenize" | "/detokenize" => &[Method::POST],
        p if p.starts_with("/v1/models/") => &[Method::GET],
        _ => return Err(ApiError::not_found(format!("Not Found: {full_path}"))),
    };
    if !allowed.contains(&method) {
        let e = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("Method Not Allowed: {method} {full_path}"),
        );
        log_error(id, &format!("{method} {full_path}"), &e);
        let mut r = error_response(&e);
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
        "/metrics" => {
            let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
            Ok(endpoints::metrics(&state, accept))
        }
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

/// The body, at most [`MAX_BODY_BYTES`] within [`BODY_TIMEOUT`]. Kept here, not
/// as tower-http layers: `RequestBodyLimitLayer` answers 413 with its own plain
/// body (vLLM's is OpenAI-shaped JSON), and `RequestBodyTimeoutLayer` times each
/// frame, not the whole body (a trickling client would never time out).
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
