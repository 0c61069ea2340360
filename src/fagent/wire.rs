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
    /// The HAProxy process that answered; absent from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub haproxy_process: Option<HaproxyProcess>,
}

/// `GET /v1/backends`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Backends {
    pub fetched_at: DateTime<Utc>,
    pub backends: Vec<BackendSnapshot>,
    /// The HAProxy process these states were read from (on the same
    /// runtime-API connection); absent from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub haproxy_process: Option<HaproxyProcess>,
}

/// Which HAProxy process answered, from its `show info`: a reload or a
/// restart starts a new process, with a new `pid` and `started_at`, whose
/// servers start from the config (and the server-state file, if loaded).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HaproxyProcess {
    /// `Pid`.
    pub pid: u32,
    /// `Start_time_sec` (HAProxy's own clock), when HAProxy reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// `Uptime_sec` at the time of the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_secs: Option<u64>,
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

#[cfg(test)]
impl StateChanged {
    /// An applied drain of `server`, for tests.
    pub(crate) fn example(transaction_id: Uuid, server: &str) -> Self {
        Self {
            transaction_id,
            applied: true,
            server: ServerSnapshot {
                name: server.into(),
                address: "127.0.0.1".into(),
                port: Some(80),
                admin_state: AdminState::Drain,
                op_state: crate::domain::OpState::Up,
                weight: 1,
                current_sessions: 0,
                check_status: None,
            },
        }
    }
}

/// The most changes an agent takes in one `POST /v1/state`; more are a 400.
pub const MAX_STATE_CHANGES: usize = 500;

/// Body of `POST /v1/state`: at least one change, at most
/// [`MAX_STATE_CHANGES`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SetStates {
    pub changes: Vec<StateChange>,
}

/// One change of `POST /v1/state`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StateChange {
    pub backend: String,
    pub server: String,
    pub state: AdminState,
    pub transaction_id: Uuid,
}

/// Answer of `POST /v1/state` (200): one result per change, in the order asked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatesChanged {
    pub results: Vec<ChangeResult>,
}

/// `status` is the HTTP status the single-server endpoint would have
/// answered for this change (200, 400, 404, 409, 503 …); `changed` is
/// present exactly when it is 200, `error` otherwise.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChangeResult {
    pub transaction_id: Uuid,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<StateChanged>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_identity_is_optional_both_ways() {
        let old: Health = serde_json::from_str(r#"{"status":"ok","haproxy_version":"2.6.12"}"#)
            .expect("old body");
        assert_eq!(old.haproxy_process, None);
        assert_eq!(
            serde_json::to_value(&old).expect("json"),
            serde_json::json!({"status": "ok", "haproxy_version": "2.6.12"})
        );
        let new: Backends = serde_json::from_str(
            r#"{"fetched_at":"2026-12-01T00:00:00Z","backends":[],
                "haproxy_process":{"pid":7,"started_at":"2026-12-01T00:00:00Z","uptime_secs":3}}"#,
        )
        .expect("new body");
        let process = new.haproxy_process.expect("process");
        assert_eq!((process.pid, process.uptime_secs), (7, Some(3)));
        assert!(process.started_at.is_some());
    }
}
