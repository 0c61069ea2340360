//! Extractors of both HTTP servers, the API and the reference fagent, whose
//! rejections are [`HttpError`] JSON bodies like every other answer: a bad
//! path or query is a 400, and a bad body is worded by the server itself
//! ([`BodyRejection`] on its state), since the two contracts differ there.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::http::error::HttpError;

/// How a server answers a JSON body axum refused; implemented by the
/// server's state type.
pub trait BodyRejection {
    fn body_rejection(rejection: JsonRejection) -> HttpError;
}

/// Whether a body rejection is the body limit's.
pub fn is_too_large(rejection: &JsonRejection) -> bool {
    matches!(rejection, JsonRejection::BytesRejection(_))
        && rejection.body_text().contains("length limit")
}

/// `axum::Json` with the server's JSON error body on rejection.
pub struct Json<T>(pub T);

impl<S: BodyRejection + Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rejection) => Err(S::body_rejection(rejection)),
        }
    }
}

/// `axum::extract::Path` with a JSON 400 `invalid_path` on rejection.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(rejection) => Err(HttpError::bad_request(
                "invalid_path",
                rejection.body_text(),
            )),
        }
    }
}

/// `axum::extract::Query` with a JSON 400 `invalid_query` on rejection
/// (unknown parameters are refused, so a typo never widens a listing).
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Query<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(rejection) => Err(HttpError::bad_request(
                "invalid_query",
                rejection.body_text(),
            )),
        }
    }
}
