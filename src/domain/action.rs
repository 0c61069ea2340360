//! Actions: what was asked, where it stands, and the ordering rule.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::names::{BackendName, ServerName};
use super::state::AdminState;

/// Which server an action is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
    /// Set on the actions a batch was expanded into.
    pub batch_id: Option<i64>,
}

/// What a batch acts on (its wire form is `queue::message::BatchTargetsMessage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchTargets {
    ServerIds(Vec<i64>),
    ApplicationIds(Vec<i64>),
    ApplicationGroup(i64),
}

/// A validated `batch` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRequest {
    pub transaction_id: Uuid,
    pub action: AdminState,
    pub targets: BatchTargets,
    pub actor: String,
    pub requested_at: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    pub force: bool,
}

/// The transaction id of a batch's action for one server (CONTRACT.md).
pub fn batch_action_id(batch_transaction_id: Uuid, server_id: i64) -> Uuid {
    Uuid::new_v5(
        &batch_transaction_id,
        format!("server:{server_id}").as_bytes(),
    )
}

/// Why a sync runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncReason {
    Schedule,
    Force,
}

impl SyncReason {
    pub const ALL: [SyncReason; 2] = [SyncReason::Schedule, SyncReason::Force];

    pub fn as_str(self) -> &'static str {
        match self {
            SyncReason::Schedule => "schedule",
            SyncReason::Force => "force",
        }
    }
}

impl FromStr for SyncReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        find(&SyncReason::ALL, s, SyncReason::as_str, "sync reason")
    }
}

/// `haproxy_sync_runs.status`, and `haproxy_instances.last_sync_result`
/// (which holds only `success` or `failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncStatus {
    Running,
    Success,
    Failed,
    Skipped,
}

impl SyncStatus {
    pub const ALL: [SyncStatus; 4] = [
        SyncStatus::Running,
        SyncStatus::Success,
        SyncStatus::Failed,
        SyncStatus::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SyncStatus::Running => "running",
            SyncStatus::Success => "success",
            SyncStatus::Failed => "failed",
            SyncStatus::Skipped => "skipped",
        }
    }
}

impl fmt::Display for SyncStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SyncStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        find(&SyncStatus::ALL, s, SyncStatus::as_str, "sync status")
    }
}

/// The one of `all` whose text is `s`; otherwise an error naming what was
/// looked for and the text found (cut to 64 characters).
pub(crate) fn find<T: Copy>(
    all: &[T],
    s: &str,
    text: fn(T) -> &'static str,
    kind: &str,
) -> Result<T, String> {
    all.iter().copied().find(|x| text(*x) == s).ok_or_else(|| {
        let expected: Vec<&str> = all.iter().map(|x| text(*x)).collect();
        let found: String = s.chars().take(64).collect();
        format!(
            "unknown {kind} {found:?}; expected one of {}",
            expected.join(", ")
        )
    })
}

/// A validated `sync` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRequest {
    pub transaction_id: Uuid,
    /// None: every active instance.
    pub instance_id: Option<i64>,
    pub reason: SyncReason,
    pub actor: String,
    pub requested_at: Option<DateTime<Utc>>,
}

/// The transaction id of one instance's part of a sync for every instance.
pub fn instance_sync_id(fleet_transaction_id: Uuid, instance_id: i64) -> Uuid {
    Uuid::new_v5(
        &fleet_transaction_id,
        format!("instance:{instance_id}").as_bytes(),
    )
}

/// The scheduler's transaction id of one instance's sync for one time
/// bucket: several schedulers produce the same id, so duplicates dedupe.
pub fn scheduled_sync_id(instance_id: i64, bucket: i64) -> Uuid {
    const NAMESPACE: Uuid = Uuid::from_u128(0x2b8e_61f4_7c3d_4a09_9e15_b6d2_0c7a_f348);
    Uuid::new_v5(
        &NAMESPACE,
        format!("sync:{instance_id}:{bucket}").as_bytes(),
    )
}

/// `haproxy_actions.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    /// Recorded, held until its approval is decided (docs/approvals.md).
    AwaitingApproval,
    Pending,
    Running,
    Success,
    Failed,
    Superseded,
    Rejected,
}

impl ActionStatus {
    pub const ALL: [ActionStatus; 7] = [
        ActionStatus::AwaitingApproval,
        ActionStatus::Pending,
        ActionStatus::Running,
        ActionStatus::Success,
        ActionStatus::Failed,
        ActionStatus::Superseded,
        ActionStatus::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionStatus::AwaitingApproval => "awaiting_approval",
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
        !matches!(
            self,
            ActionStatus::AwaitingApproval | ActionStatus::Pending | ActionStatus::Running
        )
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
        find(&ActionStatus::ALL, s, ActionStatus::as_str, "action status")
    }
}

/// `haproxy_batches.status`: whether a batch may be expanded. A batch
/// waits as a whole while its approval is pending (no action of it is
/// recorded); a rejected or expired approval ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    AwaitingApproval,
    Accepted,
    Rejected,
}

impl BatchStatus {
    pub const ALL: [BatchStatus; 3] = [
        BatchStatus::AwaitingApproval,
        BatchStatus::Accepted,
        BatchStatus::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::AwaitingApproval => "awaiting_approval",
            BatchStatus::Accepted => "accepted",
            BatchStatus::Rejected => "rejected",
        }
    }
}

impl fmt::Display for BatchStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BatchStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        find(&BatchStatus::ALL, s, BatchStatus::as_str, "batch status")
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
    pub const ALL: [FailureCode; 5] = [
        FailureCode::CircuitOpen,
        FailureCode::AgentUnreachable,
        FailureCode::AgentError,
        FailureCode::NotFound,
        FailureCode::Invalid,
    ];

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

impl FromStr for FailureCode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        find(&FailureCode::ALL, s, FailureCode::as_str, "failure code")
    }
}

/// DESIGN.md rule 3: a command older than the newest one already applied to
/// the server is superseded. Equal times are not: they are applied in arrival
/// order.
pub fn is_superseded(requested_at: DateTime<Utc>, newest_applied: Option<DateTime<Utc>>) -> bool {
    newest_applied.is_some_and(|newest| requested_at < newest)
}

/// A command whose `requested_at` is further ahead of the database's clock
/// than the tolerance. Accepted, it would supersede (rule 3) every command
/// for its server requested before that time, i.e. every later one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "requested_at {requested_at} is {ahead_secs} s ahead of the database's clock \
     ({now}), more than worker.clock_tolerance_secs = {tolerance_secs}; a command from the \
     future would supersede every later command for its server"
)]
pub struct FromTheFuture {
    pub requested_at: String,
    pub now: String,
    pub ahead_secs: i64,
    pub tolerance_secs: u64,
}

/// Refuses a `requested_at` more than `tolerance_secs` ahead of `now` (the
/// database's clock).
///
/// # Errors
/// [`FromTheFuture`].
pub fn check_requested_at(
    requested_at: DateTime<Utc>,
    now: DateTime<Utc>,
    tolerance_secs: u64,
) -> Result<(), FromTheFuture> {
    // A tolerance beyond what a duration holds (a huge configured value) is
    // no limit.
    let tolerance = i64::try_from(tolerance_secs)
        .ok()
        .and_then(chrono::TimeDelta::try_seconds)
        .unwrap_or(chrono::TimeDelta::MAX);
    let ahead = requested_at.signed_duration_since(now);
    if ahead <= tolerance {
        return Ok(());
    }
    let fmt = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    Err(FromTheFuture {
        requested_at: fmt(requested_at),
        now: fmt(now),
        ahead_secs: ahead.num_seconds(),
        tolerance_secs,
    })
}

/// A stable key for a server's advisory lock, apart from other lock users.
pub fn server_lock_key(server_id: i64) -> i64 {
    // The high bits carry a namespace so server locks never meet the
    // migration lock or other advisory locks.
    const NAMESPACE: i64 = 0x4843_0000_0000_0000; // "HC"
    NAMESPACE ^ (server_id & 0x0000_FFFF_FFFF_FFFF)
}

/// The key of a backend's guard lock, in a namespace of its own.
pub fn backend_guard_lock_key(backend_id: i64) -> i64 {
    const NAMESPACE: i64 = 0x4247_0000_0000_0000; // "BG"
    NAMESPACE ^ (backend_id & 0x0000_FFFF_FFFF_FFFF)
}

/// The key of an instance's sync lock, in a namespace of its own.
pub fn instance_sync_lock_key(instance_id: i64) -> i64 {
    const NAMESPACE: i64 = 0x5359_0000_0000_0000; // "SY"
    NAMESPACE ^ (instance_id & 0x0000_FFFF_FFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_requested_at_beyond_the_tolerance_is_refused_with_the_reason() {
        let now = Utc::now();
        let ahead = |secs| now + chrono::Duration::seconds(secs);
        assert!(check_requested_at(ahead(60), now, 60).is_ok());
        assert!(check_requested_at(ahead(-86_400), now, 60).is_ok());
        let e = check_requested_at(ahead(61), now, 60).expect_err("61 s ahead");
        assert_eq!((e.ahead_secs, e.tolerance_secs), (61, 60));
        let text = e.to_string();
        assert!(
            text.contains("61 s ahead") && text.contains("clock_tolerance_secs = 60"),
            "{text}"
        );
        assert!(check_requested_at(ahead(1), now, 0).is_err());
        assert!(check_requested_at(ahead(1), now, u64::MAX).is_ok());
    }
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
        assert!(!ActionStatus::AwaitingApproval.is_final());
        assert_eq!(
            "awaiting_approval".parse::<ActionStatus>(),
            Ok(ActionStatus::AwaitingApproval)
        );
        assert!(ActionStatus::Superseded.is_final());
        assert!("done".parse::<ActionStatus>().is_err());
        for s in SyncStatus::ALL {
            assert_eq!(s.as_str().parse::<SyncStatus>(), Ok(s));
        }
        for s in FailureCode::ALL {
            assert_eq!(s.as_str().parse::<FailureCode>(), Ok(s));
        }
        for s in BatchStatus::ALL {
            assert_eq!(s.as_str().parse::<BatchStatus>(), Ok(s));
        }
        for s in SyncReason::ALL {
            assert_eq!(s.as_str().parse::<SyncReason>(), Ok(s));
        }
        assert_eq!(
            "ajar".parse::<SyncStatus>(),
            Err(
                "unknown sync status \"ajar\"; expected one of running, success, failed, skipped"
                    .into()
            )
        );
    }

    #[test]
    fn scheduled_ids_are_the_same_for_the_same_instance_and_bucket() {
        assert_eq!(scheduled_sync_id(1, 100), scheduled_sync_id(1, 100));
        assert_ne!(scheduled_sync_id(1, 100), scheduled_sync_id(1, 101));
        assert_ne!(scheduled_sync_id(1, 100), scheduled_sync_id(2, 100));
        let fleet = Uuid::new_v4();
        assert_ne!(instance_sync_id(fleet, 1), instance_sync_id(fleet, 2));
    }

    #[test]
    fn lock_keys_differ_per_server() {
        assert_ne!(server_lock_key(1), server_lock_key(2));
        assert_eq!(server_lock_key(7), server_lock_key(7));
    }
}
