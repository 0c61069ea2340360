//! Every error the agent answers, as `{"error": {"code", "message"}}`.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::runtime::RuntimeError;
use crate::fagent::wire::{ErrorBody, ErrorDetail};

#[derive(Debug)]
pub(crate) struct AgentError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl AgentError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
}

impl From<RuntimeError> for AgentError {
    fn from(e: RuntimeError) -> Self {
        let (status, code) = match &e {
            RuntimeError::NoSuchBackend(_) => (StatusCode::NOT_FOUND, "no_such_backend"),
            RuntimeError::NoSuchServer(..) => (StatusCode::NOT_FOUND, "no_such_server"),
            RuntimeError::Unreachable { .. } | RuntimeError::Timeout { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "haproxy_unreachable")
            }
            RuntimeError::Refused(_) => (StatusCode::BAD_GATEWAY, "haproxy_refused"),
            RuntimeError::Unreadable(_) => (StatusCode::BAD_GATEWAY, "haproxy_unreadable"),
        };
        if status.is_server_error() {
            tracing::warn!(error = %e, "HAProxy call failed");
        }
        Self::new(status, code, e.to_string())
    }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
