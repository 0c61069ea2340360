//! Bearer-token check, compared in constant time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::AgentState;
use super::error::AgentError;

/// The agent's secret. Debug output never shows it.
#[derive(Clone)]
pub struct BearerToken(Arc<str>);

impl BearerToken {
    /// # Errors
    /// When the token is empty or has surrounding white space.
    pub fn new(token: &str) -> Result<Self, String> {
        let trimmed = token.trim();
        if trimmed.is_empty() {
            return Err("the agent token is empty".into());
        }
        Ok(Self(trimmed.into()))
    }

    /// Constant-time comparison (the length is not secret).
    pub fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(***)")
    }
}

pub(crate) async fn require_token(
    State(state): State<AgentState>,
    request: Request,
    next: Next,
) -> Result<Response, AgentError> {
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token) if state.token.matches(token) => Ok(next.run(request).await),
        Some(_) => Err(AgentError::unauthorized("the bearer token is not valid")),
        None => Err(AgentError::unauthorized(
            "an 'Authorization: Bearer <token>' header is required",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::BearerToken;

    #[test]
    fn matches_only_the_exact_token() {
        let t = BearerToken::new("s3cret\n").expect("token");
        assert!(t.matches("s3cret"));
        assert!(!t.matches("s3cre"));
        assert!(!t.matches("s3cret "));
        assert!(!t.matches(""));
        assert!(BearerToken::new("  ").is_err());
        assert_eq!(format!("{t:?}"), "BearerToken(***)");
    }
}
