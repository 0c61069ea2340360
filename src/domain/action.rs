//! Actions: what was asked, where it stands, and the ordering rule.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::names::{BackendName, ServerName};
use super::state::AdminState;

/// Which server an action is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    ServerId(i64),
    Names {
        instance: String,
        backend: BackendName,
        server: ServerName,
    },
}

/// A validated `action` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRequest {
    pub transaction_id: Uuid,
    pub action: AdminState,
    pub target: Target,
    pub actor: String,
    /// When absent, the time the worker received it.
    pub requested_at: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    pub force: bool,
}

/// `haproxy_actions.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    Pending,
    Running,
    Success,
    Failed,
    Superseded,
    Rejected,
}

impl ActionStatus {
    pub const ALL: [ActionStatus; 6] = [
        ActionStatus::Pending,
        ActionStatus::Running,
        ActionStatus::Success,
        ActionStatus::Failed,
        ActionStatus::Superseded,
        ActionStatus::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionStatus::Pending => "pending",
            ActionStatus::Running => "running",
            ActionStatus::Success => "success",
            ActionStatus::Failed => "failed",
            ActionStatus::Superseded => "superseded",
            ActionStatus::Rejected => "rejected",
        }
    }

    /// A final status never changes again.
    pub fn is_final(self) -> bool {
        !matches!(self, ActionStatus::Pending | ActionStatus::Running)
    }
}

impl fmt::Display for ActionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ActionStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ActionStatus::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("unknown action status {s:?}"))
    }
}

/// Why an action failed (`action.failed`'s `error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCode {
    CircuitOpen,
    AgentUnreachable,
    AgentError,
    NotFound,
    Invalid,
}

impl FailureCode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCode::CircuitOpen => "circuit_open",
            FailureCode::AgentUnreachable => "agent_unreachable",
            FailureCode::AgentError => "agent_error",
            FailureCode::NotFound => "not_found",
            FailureCode::Invalid => "invalid",
        }
    }
}

impl fmt::Display for FailureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// DESIGN.md rule 3: a command older than the newest one already applied to
/// the server is superseded. Equal times are not: they are applied in arrival
/// order.
pub fn is_superseded(requested_at: DateTime<Utc>, newest_applied: Option<DateTime<Utc>>) -> bool {
    newest_applied.is_some_and(|newest| requested_at < newest)
}

/// A stable key for a server's advisory lock, apart from other lock users.
pub fn server_lock_key(server_id: i64) -> i64 {
    // The high bits carry a namespace so server locks never meet the
    // migration lock or other advisory locks.
    const NAMESPACE: i64 = 0x4843_0000_0000_0000; // "HC"
    NAMESPACE ^ (server_id & 0x0000_FFFF_FFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn only_strictly_older_commands_are_superseded() {
        let t = Utc::now();
        assert!(!is_superseded(t, None));
        assert!(!is_superseded(t, Some(t)));
        assert!(!is_superseded(t, Some(t - Duration::seconds(1))));
        assert!(is_superseded(t - Duration::milliseconds(1), Some(t)));
    }

    #[test]
    fn statuses_round_trip_and_know_which_are_final() {
        for s in ActionStatus::ALL {
            assert_eq!(s.as_str().parse::<ActionStatus>(), Ok(s));
        }
        assert!(!ActionStatus::Pending.is_final());
        assert!(!ActionStatus::Running.is_final());
        assert!(ActionStatus::Superseded.is_final());
        assert!("done".parse::<ActionStatus>().is_err());
    }

    #[test]
    fn lock_keys_differ_per_server() {
        assert_ne!(server_lock_key(1), server_lock_key(2));
        assert_eq!(server_lock_key(7), server_lock_key(7));
    }
}
