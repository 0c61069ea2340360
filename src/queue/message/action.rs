//! Command `action`: change one server's state.

use serde::{Deserialize, Serialize};

use super::{
    Command, InvalidMessage, MAX_MESSAGE_BYTES, format_time, invalid, parse_action_kind,
    parse_actor, parse_instance_name, parse_reason, parse_requested_at, parse_transaction_id,
};
use crate::domain::action::{ActionRequest, Target};
use crate::domain::{BackendName, ServerName};

/// The `action` command as it is on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionMessage {
    pub transaction_id: String,
    pub action: String,
    pub target: TargetMessage,
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
    /// Optional extension: set on the actions a batch is expanded into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<i64>,
    /// Optional extension (issue 13): where the final event goes; read by
    /// [`super::parse_callback_url`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

/// An action's `target`: exactly one of `server_id` or the three names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetMessage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}

impl Command for ActionMessage {
    const ROUTING_KEY: &'static str = "action";
    const MAX_BYTES: usize = MAX_MESSAGE_BYTES;
    type Request = ActionRequest;

    fn transaction_id(&self) -> &str {
        &self.transaction_id
    }
}

impl From<&ActionRequest> for ActionMessage {
    fn from(r: &ActionRequest) -> Self {
        Self {
            transaction_id: r.transaction_id.to_string(),
            action: r.action.as_str().to_owned(),
            target: TargetMessage::from(&r.target),
            actor: r.actor.clone(),
            requested_at: r.requested_at.map(format_time),
            reason: r.reason.clone(),
            force: Some(r.force),
            batch_id: r.batch_id,
            callback_url: None,
        }
    }
}

impl From<&Target> for TargetMessage {
    fn from(t: &Target) -> Self {
        match t {
            Target::ServerId(id) => Self {
                server_id: Some(*id),
                ..Self::default()
            },
            Target::Names {
                instance,
                backend,
                server,
            } => Self {
                server_id: None,
                instance: Some(instance.clone()),
                backend: Some(backend.to_string()),
                server: Some(server.to_string()),
            },
        }
    }
}

impl TryFrom<ActionMessage> for ActionRequest {
    type Error = InvalidMessage;

    fn try_from(m: ActionMessage) -> Result<Self, InvalidMessage> {
        Ok(ActionRequest {
            transaction_id: parse_transaction_id(&m.transaction_id)?,
            action: parse_action_kind(&m.action)?,
            target: Target::try_from(m.target)?,
            actor: parse_actor(&m.actor)?,
            requested_at: parse_requested_at(m.requested_at.as_deref())?,
            reason: parse_reason(m.reason)?,
            force: m.force.unwrap_or(false),
            batch_id: match m.batch_id {
                Some(id) if id <= 0 => {
                    return Err(invalid(format!("batch_id must be positive, not {id}")));
                }
                other => other,
            },
        })
    }
}

impl TryFrom<TargetMessage> for Target {
    type Error = InvalidMessage;

    fn try_from(t: TargetMessage) -> Result<Self, InvalidMessage> {
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
}

/// Parses the body of an `action` command.
///
/// # Errors
/// [`InvalidMessage`] naming the first thing that is wrong.
pub fn parse_action(body: &[u8]) -> Result<ActionRequest, InvalidMessage> {
    super::parse::<ActionMessage>(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AdminState;
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

    fn request(target: Target) -> ActionRequest {
        ActionRequest {
            transaction_id: uuid::Uuid::new_v4(),
            action: AdminState::Maint,
            target,
            actor: "user:alice".to_owned(),
            requested_at: None,
            reason: None,
            force: false,
            batch_id: None,
        }
    }

    fn round_trip(r: &ActionRequest) -> Result<ActionRequest, InvalidMessage> {
        let body = serde_json::to_vec(&ActionMessage::from(r))
            .map_err(|e| InvalidMessage(e.to_string()))?;
        parse_action(&body)
    }

    #[test]
    fn a_built_action_reads_back_as_the_same_request() {
        let by_names = Target::Names {
            instance: "lb-1".to_owned(),
            backend: BackendName::parse("web").expect("name"),
            server: ServerName::parse("web1_shop_1").expect("name"),
        };
        let full = ActionRequest {
            requested_at: Some(chrono::Utc::now()),
            reason: Some("deploy \"1.4.2\"\t".to_owned()),
            force: true,
            batch_id: Some(7),
            ..request(Target::ServerId(42))
        };
        for r in [request(Target::ServerId(42)), request(by_names), full] {
            assert_eq!(round_trip(&r), Ok(r.clone()));
        }
    }

    #[test]
    fn absent_optional_fields_are_left_out_of_a_built_action() {
        let r = request(Target::ServerId(42));
        let value = serde_json::to_value(ActionMessage::from(&r)).expect("serialises");
        assert_eq!(
            value,
            json!({
                "transaction_id": r.transaction_id.to_string(),
                "action": "maint",
                "target": {"server_id": 42},
                "actor": "user:alice",
                "force": false
            })
        );
    }
}
