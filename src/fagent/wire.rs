//! Request and response bodies of the FAgent HTTP API.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::AdminState;
use crate::domain::snapshot::{BackendSnapshot, ServerSnapshot};

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Health {
    pub status: String,
    pub haproxy_version: String,
}

/// `GET /v1/backends`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Backends {
    pub fetched_at: DateTime<Utc>,
    pub backends: Vec<BackendSnapshot>,
}

/// Body of `PUT /v1/backends/{backend}/servers/{server}/state`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SetState {
    pub state: AdminState,
    pub transaction_id: Uuid,
}

/// Answer of `PUT …/state`: `applied` is false when the server already was in
/// that state; `server` is read back from HAProxy after the change.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StateChanged {
    pub transaction_id: Uuid,
    pub applied: bool,
    pub server: ServerSnapshot,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a stable machine-readable `code` and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// E.g. `malformed_json`, `unauthorized`, `not_found`, `transaction_conflict`, `invalid_action`.
    pub code: String,
    pub message: String,
}
