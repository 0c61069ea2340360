//! Noticing a reload of HAProxy (issue 11, point 1), in pure rules: is the
//! process the agent reports a new one, and which servers does the module
//! put back when the instance asks for that.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::state::AdminState;

/// Actor of the actions that re-apply states a reload reset.
pub const RESTORE_ACTOR: &str = "system:reload-restore";

/// The identity of an HAProxy process: `Pid` and `Start_time_sec` of `show
/// info`. The start time is on the HAProxy host's clock; it is only ever
/// compared for equality, never with a time of the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessIdentity {
    pub pid: u32,
    pub started_at: Option<DateTime<Utc>>,
}

/// What a sync learns from the process identity in a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessChange {
    /// The agent reported no identity (an older agent): nothing is known.
    Unreported,
    /// The first identity seen for this instance: nothing to compare.
    FirstSeen,
    /// The same process as at the last sync.
    Same,
    /// Another process than at the last sync: HAProxy was reloaded or
    /// restarted since.
    Reloaded { previous: ProcessIdentity },
}

impl ProcessChange {
    pub fn is_reload(self) -> bool {
        matches!(self, ProcessChange::Reloaded { .. })
    }
}

/// Compares the identity stored at the last sync with the one just seen.
/// Another pid is another process; so is the same pid with another start
/// time (a pid reused after a restart). A start time missing on one side
/// does not count as a difference.
pub fn compare(stored: Option<ProcessIdentity>, seen: Option<ProcessIdentity>) -> ProcessChange {
    match (stored, seen) {
        (_, None) => ProcessChange::Unreported,
        (None, Some(_)) => ProcessChange::FirstSeen,
        (Some(previous), Some(seen)) => {
            let restarted = match (previous.started_at, seen.started_at) {
                (Some(a), Some(b)) => a != b,
                _ => false,
            };
            if previous.pid != seen.pid || restarted {
                ProcessChange::Reloaded { previous }
            } else {
                ProcessChange::Same
            }
        }
    }
}

/// A server whose admin state a sync just changed, as a restore sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetServer {
    pub server_id: i64,
    /// The state the database held before this sync.
    pub before: AdminState,
    /// The state HAProxy reports now.
    pub now: AdminState,
    /// Whether `before` was written by an action of the module (the latest
    /// history row of the server has source `action`), not by a sync.
    pub before_written_by_action: bool,
}

/// One state to re-apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restore {
    pub server_id: i64,
    pub action: AdminState,
    pub transaction_id: Uuid,
}

/// Namespace of restore transaction ids (a fixed random UUID).
const RESTORE_NAMESPACE: Uuid = Uuid::from_u128(0x2d4c_91a7_5e3b_4f08_b6d2_8a19_c7e0_53f4);

/// The transaction id of restoring `server_id` after the reload to process
/// `current`: a duplicate sync of the same reload gives the same id, so the
/// restore is applied once (rule 1).
pub fn restore_transaction_id(instance_id: i64, current: ProcessIdentity, server_id: i64) -> Uuid {
    let started = current.started_at.map_or(0, |t| t.timestamp());
    Uuid::new_v5(
        &RESTORE_NAMESPACE,
        format!("{instance_id}|{}|{started}|{server_id}", current.pid).as_bytes(),
    )
}

/// The states to re-apply after a reload: a server whose state the module
/// had applied (by an action) and that HAProxy now reports otherwise gets
/// that state back. States a sync had written (a change made at HAProxy)
/// are HAProxy's own and stay as they are.
pub fn restores(instance_id: i64, current: ProcessIdentity, reset: &[ResetServer]) -> Vec<Restore> {
    reset
        .iter()
        .filter(|s| s.before_written_by_action && s.before != s.now)
        .map(|s| Restore {
            server_id: s.server_id,
            action: s.before,
            transaction_id: restore_transaction_id(instance_id, current, s.server_id),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(pid: u32, started: i64) -> ProcessIdentity {
        ProcessIdentity {
            pid,
            started_at: DateTime::from_timestamp(started, 0),
        }
    }

    #[test]
    fn a_new_pid_or_a_new_start_time_is_a_reload() {
        let a = id(10, 1_000);
        assert_eq!(compare(Some(a), Some(a)), ProcessChange::Same);
        assert_eq!(
            compare(Some(a), Some(id(11, 1_000))),
            ProcessChange::Reloaded { previous: a }
        );
        assert_eq!(
            compare(Some(a), Some(id(10, 2_000))),
            ProcessChange::Reloaded { previous: a }
        );
        let no_start = ProcessIdentity {
            pid: 10,
            started_at: None,
        };
        assert_eq!(compare(Some(a), Some(no_start)), ProcessChange::Same);
        assert_eq!(compare(None, Some(a)), ProcessChange::FirstSeen);
        assert_eq!(compare(Some(a), None), ProcessChange::Unreported);
        assert!(!ProcessChange::FirstSeen.is_reload());
    }

    #[test]
    fn only_states_an_action_wrote_are_restored() {
        let current = id(11, 2_000);
        let reset = [
            ResetServer {
                server_id: 1,
                before: AdminState::Drain,
                now: AdminState::Ready,
                before_written_by_action: true,
            },
            ResetServer {
                server_id: 2,
                before: AdminState::Maint,
                now: AdminState::Ready,
                before_written_by_action: false,
            },
            ResetServer {
                server_id: 3,
                before: AdminState::Maint,
                now: AdminState::Maint,
                before_written_by_action: true,
            },
        ];
        let r = restores(7, current, &reset);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].server_id, r[0].action), (1, AdminState::Drain));
        assert_eq!(r[0].transaction_id, restore_transaction_id(7, current, 1));
        assert_ne!(
            r[0].transaction_id,
            restore_transaction_id(7, id(12, 2_000), 1)
        );
    }
}
