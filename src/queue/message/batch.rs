//! Command `batch`: one action for many servers.

use serde::{Deserialize, Serialize};

use super::{
    Command, InvalidMessage, MAX_BATCH_IDS, MAX_BATCH_MESSAGE_BYTES, format_time, invalid,
    parse_action_kind, parse_actor, parse_reason, parse_requested_at, parse_transaction_id,
};
use crate::domain::action::{BatchRequest, BatchTargets};

/// The `batch` command as it is on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchMessage {
    pub transaction_id: String,
    pub action: String,
    pub targets: BatchTargetsMessage,
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
    /// Optional extension (issue 13): where `batch.completed` goes; read by
    /// [`super::parse_callback_url`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

/// A batch's `targets`: exactly one of the three. Also how the targets are
/// stored with the batch and given to the API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchTargetsMessage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_ids: Option<Vec<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application_ids: Option<Vec<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application_group_id: Option<i64>,
}

impl Command for BatchMessage {
    const ROUTING_KEY: &'static str = "batch";
    const MAX_BYTES: usize = MAX_BATCH_MESSAGE_BYTES;
    type Request = BatchRequest;

    fn transaction_id(&self) -> &str {
        &self.transaction_id
    }
}

impl From<&BatchRequest> for BatchMessage {
    fn from(r: &BatchRequest) -> Self {
        Self {
            transaction_id: r.transaction_id.to_string(),
            action: r.action.as_str().to_owned(),
            targets: BatchTargetsMessage::from(&r.targets),
            actor: r.actor.clone(),
            requested_at: r.requested_at.map(format_time),
            reason: r.reason.clone(),
            force: Some(r.force),
            callback_url: None,
        }
    }
}

impl From<&BatchTargets> for BatchTargetsMessage {
    fn from(t: &BatchTargets) -> Self {
        match t {
            BatchTargets::ServerIds(ids) => Self {
                server_ids: Some(ids.clone()),
                ..Self::default()
            },
            BatchTargets::ApplicationIds(ids) => Self {
                application_ids: Some(ids.clone()),
                ..Self::default()
            },
            BatchTargets::ApplicationGroup(id) => Self {
                application_group_id: Some(*id),
                ..Self::default()
            },
        }
    }
}

impl BatchTargetsMessage {
    /// The contract's JSON form (exactly one key), as stored with a batch.
    ///
    /// # Errors
    /// When serde cannot write it (it always can: ids and options only).
    pub fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(self)
    }
}

impl TryFrom<BatchMessage> for BatchRequest {
    type Error = InvalidMessage;

    fn try_from(m: BatchMessage) -> Result<Self, InvalidMessage> {
        Ok(BatchRequest {
            transaction_id: parse_transaction_id(&m.transaction_id)?,
            action: parse_action_kind(&m.action)?,
            targets: BatchTargets::try_from(m.targets)?,
            actor: parse_actor(&m.actor)?,
            requested_at: parse_requested_at(m.requested_at.as_deref())?,
            reason: parse_reason(m.reason)?,
            force: m.force.unwrap_or(false),
        })
    }
}

impl TryFrom<BatchTargetsMessage> for BatchTargets {
    type Error = InvalidMessage;

    fn try_from(t: BatchTargetsMessage) -> Result<Self, InvalidMessage> {
        let ids = |name: &str, ids: Vec<i64>| -> Result<Vec<i64>, InvalidMessage> {
            if ids.is_empty() || ids.len() > MAX_BATCH_IDS {
                return Err(invalid(format!(
                    "targets.{name} must hold 1 to {MAX_BATCH_IDS} ids"
                )));
            }
            if let Some(bad) = ids.iter().find(|i| **i <= 0) {
                return Err(invalid(format!(
                    "targets.{name} holds {bad}; ids are positive"
                )));
            }
            Ok(ids)
        };
        match (t.server_ids, t.application_ids, t.application_group_id) {
            (Some(s), None, None) => Ok(BatchTargets::ServerIds(ids("server_ids", s)?)),
            (None, Some(a), None) => Ok(BatchTargets::ApplicationIds(ids("application_ids", a)?)),
            (None, None, Some(g)) if g > 0 => Ok(BatchTargets::ApplicationGroup(g)),
            (None, None, Some(g)) => Err(invalid(format!(
                "targets.application_group_id must be positive, not {g}"
            ))),
            _ => Err(invalid(
                "targets must be exactly one of server_ids, application_ids, application_group_id",
            )),
        }
    }
}

/// Parses the body of a `batch` command.
///
/// # Errors
/// [`InvalidMessage`] naming the first thing that is wrong.
pub fn parse_batch(body: &[u8]) -> Result<BatchRequest, InvalidMessage> {
    super::parse::<BatchMessage>(body)
}

/// Validates batch targets given as JSON (the API's request body and the
/// targets stored with a batch).
///
/// # Errors
/// [`InvalidMessage`] naming what is wrong.
pub fn parse_batch_targets_json(value: &serde_json::Value) -> Result<BatchTargets, InvalidMessage> {
    let message: BatchTargetsMessage =
        serde_json::from_value(value.clone()).map_err(|e| invalid(format!("targets: {e}")))?;
    BatchTargets::try_from(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AdminState;
    use serde_json::json;

    fn request(targets: BatchTargets) -> BatchRequest {
        BatchRequest {
            transaction_id: uuid::Uuid::new_v4(),
            action: AdminState::Drain,
            targets,
            actor: "ac:deploy-job-77".to_owned(),
            requested_at: Some(chrono::Utc::now()),
            reason: Some("deploy 1.4.2".to_owned()),
            force: false,
        }
    }

    fn valid() -> serde_json::Value {
        json!({
            "transaction_id": "9b2f3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
            "action": "drain",
            "actor": "ac:deploy-job-77",
            "targets": {"application_group_id": 3},
            "reason": "deploy 1.4.2",
            "force": false,
            "requested_at": "2026-11-28T05:00:00Z"
        })
    }

    #[test]
    fn a_built_batch_reads_back_as_the_same_request() {
        for targets in [
            BatchTargets::ServerIds(vec![1, 2, 3]),
            BatchTargets::ApplicationIds(vec![5]),
            BatchTargets::ApplicationGroup(3),
        ] {
            let r = request(targets);
            let body = serde_json::to_vec(&BatchMessage::from(&r)).expect("serialises");
            assert_eq!(parse_batch(&body), Ok(r.clone()));
            let stored = BatchTargetsMessage::from(&r.targets)
                .to_value()
                .expect("serialises");
            assert_eq!(stored.as_object().map(serde_json::Map::len), Some(1));
            assert_eq!(parse_batch_targets_json(&stored), Ok(r.targets));
        }
    }

    /// The API publishes without re-reading its own command: the largest
    /// batch it can build must still be under the size limit.
    #[test]
    fn the_largest_batch_that_can_be_built_is_within_the_limit() {
        let r = BatchRequest {
            targets: BatchTargets::ServerIds(vec![i64::MAX; MAX_BATCH_IDS]),
            actor: "\"".repeat(super::super::MAX_ACTOR_LEN),
            reason: Some("\u{1}".repeat(super::super::MAX_REASON_LEN)),
            ..request(BatchTargets::ApplicationGroup(1))
        };
        let body = serde_json::to_vec(&BatchMessage::from(&r)).expect("serialises");
        assert!(
            body.len() <= MAX_BATCH_MESSAGE_BYTES,
            "{} bytes",
            body.len()
        );
        assert_eq!(parse_batch(&body), Ok(r));
    }

    #[test]
    fn every_kind_of_bad_batch_is_refused_with_a_reason() {
        let with = |member: &str, value: serde_json::Value| {
            let mut v = valid();
            v[member] = value;
            v
        };
        let cases = [
            (json!([]), "not a valid batch command"),
            (with("extra", json!(1)), "unknown field"),
            (with("transaction_id", json!("x")), "not a UUID"),
            (with("action", json!("sleep")), "action \"sleep\""),
            (with("actor", json!(" ")), "actor must not be empty"),
            (with("requested_at", json!("now")), "RFC 3339"),
            (with("reason", json!("a\u{0}b")), "NUL"),
            (with("targets", json!({})), "exactly one of"),
            (with("targets", json!({"server_ids": []})), "1 to 10000 ids"),
            (
                with("targets", json!({"application_ids": [4, -1]})),
                "holds -1",
            ),
            (
                with("targets", json!({"application_group_id": 0})),
                "must be positive",
            ),
            (with("targets", json!({"server_id": 1})), "unknown field"),
        ];
        for (msg, expected) in cases {
            let body = serde_json::to_vec(&msg).unwrap_or_default();
            let err = parse_batch(&body).expect_err("must be refused").0;
            assert!(
                err.contains(expected),
                "{msg} gave {err:?}, expected {expected:?}"
            );
        }
        let too_big = vec![b' '; MAX_BATCH_MESSAGE_BYTES + 1];
        assert!(
            parse_batch(&too_big)
                .expect_err("too big")
                .0
                .contains("limit")
        );
    }
}
