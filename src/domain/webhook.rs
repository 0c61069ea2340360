//! Webhooks' pure rules (issue 13): which events an endpoint's patterns
//! match, which addresses a delivery may go to, what a target URL may look
//! like, and when the next attempt is due. No I/O: the dispatcher in
//! `crate::webhooks` does the sending.

pub mod address;
pub mod pattern;
pub mod schedule;
pub mod target;

pub use address::{AddressClass, classify};
pub use pattern::{EventPattern, PatternError, matches_any};
pub use schedule::{AttemptOutcome, RetrySchedule, Verdict, retry_after, verdict};
pub use target::{TargetError, TargetUrl};

/// Event types whose event ends the request they report, by the kind of
/// request a callback URL was given with: an action's final outcome, a
/// batch's completion, a rollout's end (halted included: it waits for
/// people).
pub fn is_final_for(request: CallbackKind, event_type: &str) -> bool {
    match request {
        CallbackKind::Action => matches!(
            event_type,
            "action.succeeded" | "action.failed" | "action.superseded" | "action.rejected"
        ),
        CallbackKind::Batch => event_type == "batch.completed",
        CallbackKind::Rollout => matches!(
            event_type,
            "rollout.completed" | "rollout.halted" | "rollout.aborted"
        ),
    }
}

/// The kind of request a callback URL was given with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackKind {
    Action,
    Batch,
    Rollout,
}

impl CallbackKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CallbackKind::Action => "action",
            CallbackKind::Batch => "batch",
            CallbackKind::Rollout => "rollout",
        }
    }
}

impl std::str::FromStr for CallbackKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "action" => Ok(CallbackKind::Action),
            "batch" => Ok(CallbackKind::Batch),
            "rollout" => Ok(CallbackKind::Rollout),
            other => Err(format!(
                "callback kind {other:?} is not action, batch or rollout"
            )),
        }
    }
}

/// Where a delivery goes: a configured endpoint or a request's callback URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Waiting for its next attempt (or being attempted).
    Pending,
    /// A 2xx answered.
    Delivered,
    /// Gave up: the schedule ran out, the endpoint was disabled or gone.
    Failed,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 3] = [
        DeliveryStatus::Pending,
        DeliveryStatus::Delivered,
        DeliveryStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }
}

impl std::fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DeliveryStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeliveryStatus::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| format!("delivery status {s:?} is not pending, delivered or failed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_events_by_request_kind() {
        assert!(is_final_for(CallbackKind::Action, "action.failed"));
        assert!(!is_final_for(CallbackKind::Action, "server.state_changed"));
        assert!(is_final_for(CallbackKind::Batch, "batch.completed"));
        assert!(!is_final_for(CallbackKind::Batch, "action.succeeded"));
        assert!(is_final_for(CallbackKind::Rollout, "rollout.halted"));
        assert!(!is_final_for(CallbackKind::Rollout, "rollout.started"));
        for k in [
            CallbackKind::Action,
            CallbackKind::Batch,
            CallbackKind::Rollout,
        ] {
            assert_eq!(k.as_str().parse::<CallbackKind>(), Ok(k));
        }
        for d in DeliveryStatus::ALL {
            assert_eq!(d.as_str().parse::<DeliveryStatus>(), Ok(d));
        }
        assert!("done".parse::<DeliveryStatus>().is_err());
    }
}
