//! Every error the API answers, as `{"error": {"code", "message"}}`, mapped
//! to HTTP in one place. Infrastructure trouble is a 503 or an opaque 500
//! whose cause is logged, never sent.

use axum::http::StatusCode;

use crate::db::DbError;
pub use crate::fagent::wire::{ErrorBody, ErrorDetail};
pub use crate::http::error::HttpError as ApiError;

impl ApiError {
    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 422.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 500 with the cause logged, not answered.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error answering an API request");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the cause is in the server log",
        )
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        use diesel::result::{DatabaseErrorKind, Error as Q};
        match &e {
            DbError::Connection(_)
            | DbError::Pool(_)
            | DbError::Query(Q::DatabaseError(DatabaseErrorKind::ClosedConnection, _)) => {
                tracing::warn!(error = %e, "database unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_unavailable",
                    "PostgreSQL is not reachable; try again",
                )
            }
            _ => Self::internal(&e),
        }
    }
}

/// The JSON 404 of unknown routes.
pub async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no such path: {}", uri.path()))
}

/// The JSON 405 of known paths asked with another method.
pub async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}
