//! The agent's extractors ([`crate::http::extract`]): every bad body is a
//! 400 `invalid_body`, except a missing content type (415) and a body over
//! the limit (413).

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;

use crate::http::extract::{BodyRejection, is_too_large};
pub(crate) use crate::http::extract::{Json as JsonBody, Path as PathParams};

use super::AgentState;
use super::error::AgentError;

impl BodyRejection for AgentState {
    fn body_rejection(rejection: JsonRejection) -> AgentError {
        let message = rejection.body_text();
        match rejection {
            JsonRejection::MissingJsonContentType(_) => AgentError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                message,
            ),
            ref r if is_too_large(r) => {
                AgentError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", message)
            }
            _ => AgentError::bad_request("invalid_body", message),
        }
    }
}
