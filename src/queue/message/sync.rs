//! Command `sync`: read one instance (or every active one) and reconcile.

use serde::{Deserialize, Serialize};

use super::{
    Command, InvalidMessage, MAX_MESSAGE_BYTES, format_time, invalid, parse_actor,
    parse_requested_at, parse_transaction_id,
};
use crate::domain::action::{SyncReason, SyncRequest};

/// The actor of a scheduled sync that names none.
pub const SCHEDULER_ACTOR: &str = "haproxy-control:scheduler";

/// The `sync` command as it is on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncMessage {
    pub transaction_id: String,
    /// Absent: every active instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<String>,
}

impl Command for SyncMessage {
    const ROUTING_KEY: &'static str = "sync";
    const MAX_BYTES: usize = MAX_MESSAGE_BYTES;
    type Request = SyncRequest;

    fn transaction_id(&self) -> &str {
        &self.transaction_id
    }
}

impl From<&SyncRequest> for SyncMessage {
    fn from(r: &SyncRequest) -> Self {
        Self {
            transaction_id: r.transaction_id.to_string(),
            instance_id: r.instance_id,
            reason: Some(r.reason.as_str().to_owned()),
            actor: Some(r.actor.clone()),
            requested_at: r.requested_at.map(format_time),
        }
    }
}

/// `reason` defaults to `force`, `actor` to [`SCHEDULER_ACTOR`] for
/// scheduled syncs and `unknown` otherwise.
impl TryFrom<SyncMessage> for SyncRequest {
    type Error = InvalidMessage;

    fn try_from(m: SyncMessage) -> Result<Self, InvalidMessage> {
        let reason = match m.reason.as_deref() {
            None | Some("force") => SyncReason::Force,
            Some("schedule") => SyncReason::Schedule,
            Some(other) => {
                return Err(invalid(format!(
                    "reason {other:?} is not one of schedule, force"
                )));
            }
        };
        if let Some(id) = m.instance_id
            && id <= 0
        {
            return Err(invalid(format!(
                "instance_id must be a positive integer, not {id}"
            )));
        }
        let actor = match m.actor.as_deref() {
            Some(a) => parse_actor(a)?,
            None if reason == SyncReason::Schedule => SCHEDULER_ACTOR.to_owned(),
            None => "unknown".to_owned(),
        };
        Ok(SyncRequest {
            transaction_id: parse_transaction_id(&m.transaction_id)?,
            instance_id: m.instance_id,
            reason,
            actor,
            requested_at: parse_requested_at(m.requested_at.as_deref())?,
        })
    }
}

/// Parses the body of a `sync` command (defaults: see [`SyncRequest`]'s
/// `TryFrom<SyncMessage>`).
///
/// # Errors
/// [`InvalidMessage`] naming the first thing that is wrong.
pub fn parse_sync(body: &[u8]) -> Result<SyncRequest, InvalidMessage> {
    super::parse::<SyncMessage>(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_commands_parse_with_defaults_and_refuse_garbage() {
        let r = parse_sync(br#"{"transaction_id": "5f0c6f4e-1b7e-4a52-9d0e-2f4f2a8f3c11", "instance_id": 1, "reason": "force", "actor": "user:alice"}"#)
            .expect("valid");
        assert_eq!(
            (r.instance_id, r.reason, r.actor.as_str()),
            (Some(1), SyncReason::Force, "user:alice")
        );
        let r = parse_sync(
            br#"{"transaction_id": "5f0c6f4e-1b7e-4a52-9d0e-2f4f2a8f3c11", "reason": "schedule"}"#,
        )
        .expect("valid");
        assert_eq!(
            (r.instance_id, r.actor.as_str()),
            (None, "haproxy-control:scheduler")
        );
        for bad in [
            &br#"{"instance_id": 1}"#[..],
            br#"{"transaction_id": "x"}"#,
            br#"{"transaction_id": "5f0c6f4e-1b7e-4a52-9d0e-2f4f2a8f3c11", "reason": "now"}"#,
            br#"{"transaction_id": "5f0c6f4e-1b7e-4a52-9d0e-2f4f2a8f3c11", "instance_id": 0}"#,
            br#"{"transaction_id": "5f0c6f4e-1b7e-4a52-9d0e-2f4f2a8f3c11", "extra": 1}"#,
            b"[]",
        ] {
            assert!(parse_sync(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_built_sync_reads_back_as_the_same_request() {
        let scheduled = SyncRequest {
            transaction_id: uuid::Uuid::new_v4(),
            instance_id: Some(3),
            reason: SyncReason::Schedule,
            actor: SCHEDULER_ACTOR.to_owned(),
            requested_at: Some(chrono::Utc::now()),
        };
        let every_instance = SyncRequest {
            instance_id: None,
            reason: SyncReason::Force,
            actor: "user:alice".to_owned(),
            requested_at: None,
            ..scheduled.clone()
        };
        for r in [scheduled, every_instance] {
            let body = serde_json::to_vec(&SyncMessage::from(&r)).expect("serialises");
            assert_eq!(parse_sync(&body), Ok(r.clone()));
        }
    }

    #[test]
    fn every_kind_of_bad_sync_is_refused_with_a_reason() {
        let id = "5f0c6f4e-1b7e-4a52-9d0e-2f4f2a8f3c11";
        let cases = [
            (
                format!(r#"{{"transaction_id": "{id}", "reason": "now"}}"#),
                "reason \"now\"",
            ),
            (
                format!(r#"{{"transaction_id": "{id}", "instance_id": -2}}"#),
                "not -2",
            ),
            (
                format!(r#"{{"transaction_id": "{id}", "actor": ""}}"#),
                "actor must not be empty",
            ),
            (
                format!(r#"{{"transaction_id": "{id}", "requested_at": "x"}}"#),
                "RFC 3339",
            ),
            (
                format!(r#"{{"transaction_id": "{id}", "extra": 1}}"#),
                "unknown field",
            ),
            (r#"{"transaction_id": "x"}"#.to_owned(), "not a UUID"),
            ("[]".to_owned(), "not a valid sync command"),
            (" ".repeat(MAX_MESSAGE_BYTES + 1), "limit"),
        ];
        for (body, expected) in cases {
            let err = parse_sync(body.as_bytes()).expect_err("must be refused").0;
            assert!(
                err.contains(expected),
                "{body:.80} gave {err:?}, expected {expected:?}"
            );
        }
    }
}
