//! Extractors whose rejections are JSON errors like every other answer.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::AgentError;

/// `axum::Json` with a JSON error body on rejection.
pub(crate) struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = AgentError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(JsonBody(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> AgentError {
    let message = rejection.body_text();
    match rejection {
        JsonRejection::MissingJsonContentType(_) => AgentError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        ),
        JsonRejection::BytesRejection(_) if rejection_is_too_large(&message) => {
            AgentError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", message)
        }
        _ => AgentError::bad_request("invalid_body", message),
    }
}

fn rejection_is_too_large(message: &str) -> bool {
    message.contains("length limit")
}

/// `axum::extract::Path` with a JSON error body on rejection.
pub(crate) struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = AgentError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(PathParams(v)),
            Err(rejection) => Err(path_rejection(rejection)),
        }
    }
}

fn path_rejection(rejection: PathRejection) -> AgentError {
    AgentError::bad_request("invalid_path", rejection.body_text())
}
