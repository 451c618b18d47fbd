//! Errors as OpenAI clients parse them: `{"error": {"message", "type", "param",
//! "code"}}` with vLLM's types ("BadRequestError", "NotFoundError", ...) and the
//! HTTP status as `code`. Request-validation failures read like vLLM's (FastAPI +
//! pydantic): a Python-style list of `{'type', 'loc', 'msg', 'input'}` entries.

use engine_api::python::json_repr;
use hyper::StatusCode;
use serde_json::{json, Value};

use crate::engine_handle::EngineError;
use crate::sys;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "BadRequestError", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "NotFoundError", message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableError",
            message,
        )
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            message,
        )
    }

    /// The unknown-model error, in vLLM's words.
    pub fn unknown_model(model: &str) -> ApiError {
        ApiError::not_found(format!("The model `{model}` does not exist."))
    }

    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": null,
            "code": self.status.as_u16(),
        }})
    }
}

/// The engine's status codes mapped to HTTP: the client's mistakes are 400s; a
/// stopped engine is 503; only the engine's own bugs and a failed device are 500s.
impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        match e.status {
            sys::ENGINE_ERR_STOPPED => ApiError::unavailable(e.message),
            sys::ENGINE_ERR_INTERNAL
            | sys::ENGINE_ERR_WRONG_THREAD
            | sys::ENGINE_ERR_NULL
            | sys::ENGINE_ERR_DEVICE => ApiError::internal(e.message),
            _ => ApiError::bad_request(e.message),
        }
    }
}

/// One request-validation problem, as pydantic describes it.
#[derive(Debug, Clone)]
pub struct FieldError {
    pub kind: &'static str,
    pub loc: Vec<Value>,
    pub msg: String,
    pub input: Value,
}

/// The 400 for a body that does not validate: the list of problems written as
/// vLLM's FastAPI handler writes them (Python reprs).
pub fn validation_error(errors: &[FieldError]) -> ApiError {
    let entries: Vec<String> = errors
        .iter()
        .map(|e| {
            let loc: Vec<String> = std::iter::once("'body'".to_string())
                .chain(e.loc.iter().map(json_repr))
                .collect();
            let loc = if loc.len() == 1 {
                format!("({},)", loc[0])
            } else {
                format!("({})", loc.join(", "))
            };
            format!(
                "{{'type': '{}', 'loc': {loc}, 'msg': {}, 'input': {}}}",
                e.kind,
                json_repr(&Value::from(e.msg.as_str())),
                json_repr(&e.input)
            )
        })
        .collect();
    ApiError::bad_request(format!("[{}]", entries.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_messages_read_like_fastapi() {
        let e = validation_error(&[FieldError {
            kind: "extra_forbidden",
            loc: vec![json!("foo")],
            msg: "Extra inputs are not permitted".into(),
            input: json!(1),
        }]);
        assert_eq!(
            e.message,
            "[{'type': 'extra_forbidden', 'loc': ('body', 'foo'), \
             'msg': 'Extra inputs are not permitted', 'input': 1}]"
        );
        let e = validation_error(&[FieldError {
            kind: "missing",
            loc: vec![],
            msg: "Field required".into(),
            input: Value::Null,
        }]);
        assert!(e.message.contains("'loc': ('body',)"));
    }
}
