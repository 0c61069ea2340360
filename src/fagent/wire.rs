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

/// Every error answer: `{"error": {"code": "…", "message": "…"}}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}
