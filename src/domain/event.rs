//! Status events (CONTRACT.md, "Events on haproxy.events"). Pure values; the
//! queue layer publishes them. An event's id is derived from the fact it
//! reports, so re-publishing the same fact carries the same `event_id`.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::reload::ProcessIdentity;
use super::state::{AdminState, OpState};

/// Routing keys, which are also the `type` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum EventType {
    #[serde(rename = "action.succeeded")]
    ActionSucceeded,
    #[serde(rename = "action.failed")]
    ActionFailed,
    #[serde(rename = "action.superseded")]
    ActionSuperseded,
    #[serde(rename = "action.rejected")]
    ActionRejected,
    #[serde(rename = "batch.completed")]
    BatchCompleted,
    #[serde(rename = "server.state_changed")]
    ServerStateChanged,
    #[serde(rename = "server.discovered")]
    ServerDiscovered,
    #[serde(rename = "server.removed")]
    ServerRemoved,
    #[serde(rename = "instance.circuit_opened")]
    InstanceCircuitOpened,
    #[serde(rename = "instance.circuit_closed")]
    InstanceCircuitClosed,
    #[serde(rename = "instance.sync_failed")]
    InstanceSyncFailed,
    #[serde(rename = "instance.reloaded")]
    InstanceReloaded,
    #[serde(rename = "rollout.started")]
    RolloutStarted,
    #[serde(rename = "rollout.server_drained")]
    RolloutServerDrained,
    #[serde(rename = "rollout.server_updated")]
    RolloutServerUpdated,
    #[serde(rename = "rollout.server_ready")]
    RolloutServerReady,
    #[serde(rename = "rollout.server_failed")]
    RolloutServerFailed,
    #[serde(rename = "rollout.wave_completed")]
    RolloutWaveCompleted,
    #[serde(rename = "rollout.halted")]
    RolloutHalted,
    #[serde(rename = "rollout.completed")]
    RolloutCompleted,
    #[serde(rename = "rollout.aborted")]
    RolloutAborted,
    #[serde(rename = "approval.requested")]
    ApprovalRequested,
    #[serde(rename = "approval.approved")]
    ApprovalApproved,
    #[serde(rename = "approval.rejected")]
    ApprovalRejected,
    #[serde(rename = "approval.expired")]
    ApprovalExpired,
    #[serde(rename = "webhook.disabled")]
    WebhookDisabled,
}

impl EventType {
    pub const ALL: [EventType; 26] = [
        EventType::ActionSucceeded,
        EventType::ActionFailed,
        EventType::ActionSuperseded,
        EventType::ActionRejected,
        EventType::BatchCompleted,
        EventType::ServerStateChanged,
        EventType::ServerDiscovered,
        EventType::ServerRemoved,
        EventType::InstanceCircuitOpened,
        EventType::InstanceCircuitClosed,
        EventType::InstanceSyncFailed,
        EventType::InstanceReloaded,
        EventType::RolloutStarted,
        EventType::RolloutServerDrained,
        EventType::RolloutServerUpdated,
        EventType::RolloutServerReady,
        EventType::RolloutServerFailed,
        EventType::RolloutWaveCompleted,
        EventType::RolloutHalted,
        EventType::RolloutCompleted,
        EventType::RolloutAborted,
        EventType::ApprovalRequested,
        EventType::ApprovalApproved,
        EventType::ApprovalRejected,
        EventType::ApprovalExpired,
        EventType::WebhookDisabled,
    ];

    pub fn routing_key(self) -> &'static str {
        match self {
            EventType::ActionSucceeded => "action.succeeded",
            EventType::ActionFailed => "action.failed",
            EventType::ActionSuperseded => "action.superseded",
            EventType::ActionRejected => "action.rejected",
            EventType::BatchCompleted => "batch.completed",
            EventType::ServerStateChanged => "server.state_changed",
            EventType::ServerDiscovered => "server.discovered",
            EventType::ServerRemoved => "server.removed",
            EventType::InstanceCircuitOpened => "instance.circuit_opened",
            EventType::InstanceCircuitClosed => "instance.circuit_closed",
            EventType::InstanceSyncFailed => "instance.sync_failed",
            EventType::InstanceReloaded => "instance.reloaded",
            EventType::RolloutStarted => "rollout.started",
            EventType::RolloutServerDrained => "rollout.server_drained",
            EventType::RolloutServerUpdated => "rollout.server_updated",
            EventType::RolloutServerReady => "rollout.server_ready",
            EventType::RolloutServerFailed => "rollout.server_failed",
            EventType::RolloutWaveCompleted => "rollout.wave_completed",
            EventType::RolloutHalted => "rollout.halted",
            EventType::RolloutCompleted => "rollout.completed",
            EventType::RolloutAborted => "rollout.aborted",
            EventType::ApprovalRequested => "approval.requested",
            EventType::ApprovalApproved => "approval.approved",
            EventType::ApprovalRejected => "approval.rejected",
            EventType::ApprovalExpired => "approval.expired",
            EventType::WebhookDisabled => "webhook.disabled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NamedRef {
    pub id: i64,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServerRef {
    pub id: i64,
    pub name: String,
    pub address: String,
    pub port: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatePair {
    pub admin_state: AdminState,
    pub op_state: OpState,
}

/// A state re-applied after a reload, for `instance.reloaded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestoreRef {
    pub server_id: i64,
    pub action: AdminState,
    pub transaction_id: Uuid,
}

/// An approval, on `approval.*` events.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApprovalRef {
    pub id: i64,
    /// `action`, `batch` or `rollout`.
    pub kind: String,
    /// `pending`, `approved`, `rejected` or `expired`.
    pub status: String,
    pub requester: String,
    /// What was asked (action, targets, force, reason, ...).
    pub summary: serde_json::Value,
    /// The policy rules the request matched: `[{"rule", "detail"}]`.
    pub matched_rules: serde_json::Value,
    pub requested_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// Counts by status, for `batch.completed`.
pub type StatusCounts = std::collections::BTreeMap<String, i64>;

/// One event body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub occurred_at: DateTime<Utc>,
    pub actor: String,
    pub transaction_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<NamedRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<NamedRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<StatePair>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<StatePair>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Optional extension: a human-readable detail of `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_detail: Option<String>,
    /// Optional extension: the action (`ready`, `drain`, `maint`) for `action.*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<AdminState>,
    /// Optional extension: the batch's id for `batch.completed` and batch actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<i64>,
    /// Optional extension: counts by status for `batch.completed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<StatusCounts>,
    /// Optional extension: for `instance.reloaded`, the HAProxy process now running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub haproxy_process: Option<ProcessIdentity>,
    /// Optional extension: for `instance.reloaded`, the process the previous sync saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_haproxy_process: Option<ProcessIdentity>,
    /// Optional extension: for `instance.reloaded`, the states re-applied
    /// (present, possibly empty, when the instance has `restore_after_reload`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored: Option<Vec<RestoreRef>>,
    /// Optional extension: the rollout, on `rollout.*` events and on the
    /// events of a rollout's actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<i64>,
    /// Optional extension: the wave (from 0), on `rollout.wave_completed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<i32>,
    /// Optional extension: the update hook's exit code (absent when killed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Optional extension: the last lines of the update hook's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tail: Option<String>,
    /// Optional extension: the approval, on `approval.*` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRef>,
    /// Optional extension: the webhook endpoint, on `webhook.disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_id: Option<i64>,
}

/// Namespace of event ids (a fixed random UUID).
const EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x6a1f_35c2_9b0e_4d7e_8f43_2c51_d0a8_7e19);

/// The id of the event that reports `fact` of kind `kind`: the same inputs
/// always give the same id.
pub fn event_id(kind: EventType, fact: &str) -> Uuid {
    Uuid::new_v5(
        &EVENT_NAMESPACE,
        format!("{}|{fact}", kind.routing_key()).as_bytes(),
    )
}

impl Event {
    /// An event with only the fields every event has.
    pub fn new(
        kind: EventType,
        fact: &str,
        occurred_at: DateTime<Utc>,
        actor: &str,
        transaction_id: Option<Uuid>,
    ) -> Self {
        Event {
            event_id: event_id(kind, fact),
            kind,
            occurred_at,
            actor: actor.to_owned(),
            transaction_id,
            instance: None,
            backend: None,
            server: None,
            application_id: None,
            previous: None,
            current: None,
            error: None,
            error_detail: None,
            action: None,
            batch_id: None,
            counts: None,
            haproxy_process: None,
            previous_haproxy_process: None,
            restored: None,
            rollout_id: None,
            wave: None,
            exit_code: None,
            output_tail: None,
            approval: None,
            webhook_id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_stable_per_fact_and_distinct_across_facts() {
        let t = Uuid::new_v4().to_string();
        assert_eq!(
            event_id(EventType::ActionSucceeded, &t),
            event_id(EventType::ActionSucceeded, &t)
        );
        assert_ne!(
            event_id(EventType::ActionSucceeded, &t),
            event_id(EventType::ServerStateChanged, &t)
        );
        assert_ne!(
            event_id(EventType::ActionSucceeded, &t),
            event_id(EventType::ActionSucceeded, "other")
        );
    }

    #[test]
    fn type_is_the_routing_key_and_optional_fields_are_omitted() {
        for kind in EventType::ALL {
            let e = Event::new(kind, "x", Utc::now(), "user:a", None);
            let json = serde_json::to_value(&e).unwrap_or_default();
            assert_eq!(json["type"], kind.routing_key());
            assert!(json.get("transaction_id").is_some_and(|v| v.is_null()));
            assert!(json.get("server").is_none());
        }
    }
}
