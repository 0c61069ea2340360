//! Command messages as they arrive on the wire, and their parsing into
//! validated domain requests. Anything that does not parse is dead-lettered
//! with the message of the error returned here.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use crate::domain::action::{
    ActionRequest, BatchRequest, BatchTargets, SyncReason, SyncRequest, Target,
};

/// Most servers or applications one batch may name.
pub const MAX_BATCH_IDS: usize = 10_000;
use crate::domain::{AdminState, BackendName, ServerName};

/// Largest message body accepted.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Longest `actor` accepted.
pub const MAX_ACTOR_LEN: usize = 256;
/// Longest `reason` accepted.
pub const MAX_REASON_LEN: usize = 2048;

/// Why a message was refused. The text goes into the dead letter's `x-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidMessage(pub String);

fn invalid(msg: impl Into<String>) -> InvalidMessage {
    InvalidMessage(msg.into())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionWire {
    transaction_id: String,
    action: String,
    target: TargetWire,
    actor: String,
    #[serde(default)]
    requested_at: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    force: Option<bool>,
    /// Optional extension: set on the actions a batch is expanded into.
    #[serde(default)]
    batch_id: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchWire {
    transaction_id: String,
    action: String,
    targets: BatchTargetsWire,
    actor: String,
    #[serde(default)]
    requested_at: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    force: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchTargetsWire {
    server_ids: Option<Vec<i64>>,
    application_ids: Option<Vec<i64>>,
    application_group_id: Option<i64>,
}

/// Parses the body of a `batch` command.
///
/// # Errors
/// [`InvalidMessage`] naming the first thing that is wrong.
pub fn parse_batch(body: &[u8]) -> Result<BatchRequest, InvalidMessage> {
    if body.len() > MAX_MESSAGE_BYTES * 4 {
        return Err(invalid(format!(
            "message is {} bytes; the limit is {}",
            body.len(),
            MAX_MESSAGE_BYTES * 4
        )));
    }
    let wire: BatchWire = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("not a valid batch command: {e}")))?;
    Ok(BatchRequest {
        transaction_id: parse_transaction_id(&wire.transaction_id)?,
        action: parse_action_kind(&wire.action)?,
        targets: parse_batch_targets(wire.targets)?,
        actor: parse_actor(&wire.actor)?,
        requested_at: wire.requested_at.as_deref().map(parse_time).transpose()?,
        reason: parse_reason(wire.reason)?,
        force: wire.force.unwrap_or(false),
    })
}

/// Validates batch targets given as JSON (the API uses it too).
///
/// # Errors
/// [`InvalidMessage`] naming what is wrong.
pub fn parse_batch_targets_json(value: &serde_json::Value) -> Result<BatchTargets, InvalidMessage> {
    let wire: BatchTargetsWire =
        serde_json::from_value(value.clone()).map_err(|e| invalid(format!("targets: {e}")))?;
    parse_batch_targets(wire)
}

fn parse_batch_targets(t: BatchTargetsWire) -> Result<BatchTargets, InvalidMessage> {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetWire {
    server_id: Option<i64>,
    instance: Option<String>,
    backend: Option<String>,
    server: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncWire {
    transaction_id: String,
    #[serde(default)]
    instance_id: Option<i64>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    requested_at: Option<String>,
}

/// Parses the body of a `sync` command. `reason` defaults to `force`,
/// `actor` to `haproxy-control:scheduler` for scheduled syncs and
/// `unknown` otherwise.
///
/// # Errors
/// [`InvalidMessage`] naming the first thing that is wrong.
pub fn parse_sync(body: &[u8]) -> Result<SyncRequest, InvalidMessage> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(invalid(format!(
            "message is {} bytes; the limit is {MAX_MESSAGE_BYTES}",
            body.len()
        )));
    }
    let wire: SyncWire = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("not a valid sync command: {e}")))?;
    let reason = match wire.reason.as_deref() {
        None | Some("force") => SyncReason::Force,
        Some("schedule") => SyncReason::Schedule,
        Some(other) => {
            return Err(invalid(format!(
                "reason {other:?} is not one of schedule, force"
            )));
        }
    };
    if let Some(id) = wire.instance_id
        && id <= 0
    {
        return Err(invalid(format!(
            "instance_id must be a positive integer, not {id}"
        )));
    }
    let actor = match wire.actor.as_deref() {
        Some(a) => parse_actor(a)?,
        None if reason == SyncReason::Schedule => "haproxy-control:scheduler".to_owned(),
        None => "unknown".to_owned(),
    };
    Ok(SyncRequest {
        transaction_id: parse_transaction_id(&wire.transaction_id)?,
        instance_id: wire.instance_id,
        reason,
        actor,
        requested_at: wire.requested_at.as_deref().map(parse_time).transpose()?,
    })
}

/// Parses the body of an `action` command.
///
/// # Errors
/// [`InvalidMessage`] naming the first thing that is wrong.
pub fn parse_action(body: &[u8]) -> Result<ActionRequest, InvalidMessage> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(invalid(format!(
            "message is {} bytes; the limit is {MAX_MESSAGE_BYTES}",
            body.len()
        )));
    }
    let wire: ActionWire = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("not a valid action command: {e}")))?;
    Ok(ActionRequest {
        transaction_id: parse_transaction_id(&wire.transaction_id)?,
        action: parse_action_kind(&wire.action)?,
        target: parse_target(wire.target)?,
        actor: parse_actor(&wire.actor)?,
        requested_at: wire.requested_at.as_deref().map(parse_time).transpose()?,
        reason: parse_reason(wire.reason)?,
        force: wire.force.unwrap_or(false),
        batch_id: match wire.batch_id {
            Some(id) if id <= 0 => {
                return Err(invalid(format!("batch_id must be positive, not {id}")));
            }
            other => other,
        },
    })
}

pub(crate) fn parse_transaction_id(raw: &str) -> Result<Uuid, InvalidMessage> {
    Uuid::parse_str(raw).map_err(|_| invalid(format!("transaction_id {raw:?} is not a UUID")))
}

pub(crate) fn parse_action_kind(raw: &str) -> Result<AdminState, InvalidMessage> {
    raw.parse()
        .map_err(|_| invalid(format!("action {raw:?} is not one of ready, drain, maint")))
}

pub(crate) fn parse_actor(raw: &str) -> Result<String, InvalidMessage> {
    if raw.trim().is_empty() {
        return Err(invalid("actor must not be empty"));
    }
    if raw.len() > MAX_ACTOR_LEN || raw.chars().any(char::is_control) {
        return Err(invalid(format!(
            "actor must be at most {MAX_ACTOR_LEN} bytes without control characters"
        )));
    }
    Ok(raw.to_owned())
}

/// Free text, but without NUL: PostgreSQL cannot store it in a `text`
/// column, so a NUL that got past here failed every insert and the message
/// went round until the broker's delivery limit instead of being refused.
pub(crate) fn parse_reason(raw: Option<String>) -> Result<Option<String>, InvalidMessage> {
    match raw {
        Some(r) if r.len() > MAX_REASON_LEN => Err(invalid(format!(
            "reason is {} bytes; the limit is {MAX_REASON_LEN}",
            r.len()
        ))),
        Some(r) if r.contains('\0') => Err(invalid("reason must not contain NUL characters")),
        other => Ok(other),
    }
}

pub(crate) fn parse_time(raw: &str) -> Result<DateTime<Utc>, InvalidMessage> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| invalid(format!("requested_at {raw:?} is not an RFC 3339 time")))
}

fn parse_target(t: TargetWire) -> Result<Target, InvalidMessage> {
    match (t.server_id, t.instance, t.backend, t.server) {
        (Some(id), None, None, None) if id > 0 => Ok(Target::ServerId(id)),
        (Some(id), None, None, None) => Err(invalid(format!(
            "target.server_id must be a positive integer, not {id}"
        ))),
        (None, Some(instance), Some(backend), Some(server)) => Ok(Target::Names {
            instance: parse_instance_name(&instance)?,
            backend: BackendName::parse(&backend)
                .map_err(|e| invalid(format!("target.backend: {e}")))?,
            server: ServerName::parse(&server)
                .map_err(|e| invalid(format!("target.server: {e}")))?,
        }),
        _ => Err(invalid(
            "target must be exactly one of {\"server_id\": N} or {\"instance\", \"backend\", \"server\"}",
        )),
    }
}

/// Instance names follow the same rule as HAProxy identifiers.
pub(crate) fn parse_instance_name(raw: &str) -> Result<String, InvalidMessage> {
    BackendName::parse(raw).map(|n| n.to_string()).map_err(|e| {
        invalid(format!(
            "target.instance: {}",
            e.to_string().replace("backend", "instance")
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap_or_default()
    }

    fn valid() -> serde_json::Value {
        json!({
            "transaction_id": "5f0c6f4e-1b7e-4a52-9d0e-2f4f2a8f3c11",
            "action": "drain",
            "target": {"server_id": 42},
            "actor": "user:alice",
            "requested_at": "2026-11-28T05:00:00Z",
            "reason": "deploy 1.4.2",
            "force": false
        })
    }

    #[test]
    fn the_contract_example_parses() {
        let r = parse_action(&body(valid())).expect("valid");
        assert_eq!(r.action, AdminState::Drain);
        assert_eq!(r.target, Target::ServerId(42));
        assert_eq!(r.actor, "user:alice");
        assert!(r.requested_at.is_some());
        assert!(!r.force);
    }

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
    fn names_target_parses_and_optional_fields_default() {
        let r = parse_action(&body(json!({
            "transaction_id": "5f0c6f4e-1b7e-4a52-9d0e-2f4f2a8f3c11",
            "action": "ready",
            "target": {"instance": "lb-1", "backend": "web", "server": "web1_shop_1"},
            "actor": "ac:task-9"
        })))
        .expect("valid");
        assert!(matches!(r.target, Target::Names { .. }));
        assert_eq!((r.requested_at, r.reason, r.force), (None, None, false));
    }

    #[test]
    fn every_kind_of_bad_message_is_refused_with_a_reason() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (json!({"action": "drain"}), "missing field"),
            (json!(null), "not a valid action command"),
            (
                {
                    let mut v = valid();
                    v["action"] = json!("sleep");
                    v
                },
                "action \"sleep\"",
            ),
            (
                {
                    let mut v = valid();
                    v["transaction_id"] = json!("nope");
                    v
                },
                "not a UUID",
            ),
            (
                {
                    let mut v = valid();
                    v["transaction_id"] = json!(5);
                    v
                },
                "invalid type",
            ),
            (
                {
                    let mut v = valid();
                    v["actor"] = json!("");
                    v
                },
                "actor must not be empty",
            ),
            (
                {
                    let mut v = valid();
                    v["requested_at"] = json!("yesterday");
                    v
                },
                "RFC 3339",
            ),
            (
                {
                    let mut v = valid();
                    v["extra"] = json!(1);
                    v
                },
                "unknown field",
            ),
            (
                {
                    let mut v = valid();
                    v["target"] = json!({});
                    v
                },
                "exactly one of",
            ),
            (
                {
                    let mut v = valid();
                    v["target"] = json!({"server_id": 1, "backend": "b"});
                    v
                },
                "exactly one of",
            ),
            (
                {
                    let mut v = valid();
                    v["target"] = json!({"server_id": -1});
                    v
                },
                "positive",
            ),
            (
                {
                    let mut v = valid();
                    v["target"] = json!({"instance": "lb", "backend": "web;x", "server": "s"});
                    v
                },
                "target.backend",
            ),
            (
                {
                    let mut v = valid();
                    v["target"] = json!({"instance": "lb", "backend": "web", "server": "s\nshow"});
                    v
                },
                "target.server",
            ),
            (
                {
                    let mut v = valid();
                    v["force"] = json!("yes");
                    v
                },
                "invalid type",
            ),
        ];
        for (msg, expected) in cases {
            let err = parse_action(&body(msg.clone()))
                .expect_err("must be refused")
                .0;
            assert!(
                err.contains(expected),
                "{msg} gave {err:?}, expected {expected:?}"
            );
        }
        assert!(parse_action(b"{not json").is_err());
        let mut nul = valid();
        nul["reason"] = json!("deploy\u{0}1.4.2");
        assert!(
            parse_action(&body(nul))
                .expect_err("NUL in reason")
                .0
                .contains("NUL")
        );
        assert!(
            parse_action(&vec![b' '; MAX_MESSAGE_BYTES + 1])
                .expect_err("too big")
                .0
                .contains("limit")
        );
    }
}
