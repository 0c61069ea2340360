//! Every error the agent answers, as `{"error": {"code", "message"}}`.

use axum::http::StatusCode;

use super::runtime::RuntimeError;
pub(crate) use crate::http::error::HttpError as AgentError;

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
