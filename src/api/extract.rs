//! The API's extractors ([`crate::http::extract`]): malformed JSON is a 400,
//! JSON of the wrong shape a 422, a bad path or query a 400.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;

use crate::http::extract::{BodyRejection, is_too_large};
pub use crate::http::extract::{Json as ApiJson, Path as ApiPath, Query as ApiQuery};

use super::ApiState;
use super::error::ApiError;

impl BodyRejection for ApiState {
    fn body_rejection(rejection: JsonRejection) -> ApiError {
        let message = rejection.body_text();
        match rejection {
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with 'Content-Type: application/json'",
            ),
            JsonRejection::JsonDataError(_) => ApiError::unprocessable("invalid_body", message),
            ref r if is_too_large(r) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", message)
            }
            _ => ApiError::bad_request("malformed_json", message),
        }
    }
}
