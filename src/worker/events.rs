//! Building the events of an action from what the worker knows.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::inventory::ServerTarget;
use crate::domain::AdminState;
use crate::domain::action::FailureCode;
use crate::domain::event::{Event, EventType, NamedRef, RestoreRef, ServerRef, StatePair};
use crate::domain::reload::ProcessIdentity;

/// What every event of one action shares.
pub struct ActionFacts<'a> {
    pub transaction_id: Uuid,
    pub action: AdminState,
    pub actor: &'a str,
    pub target: Option<&'a ServerTarget>,
    pub occurred_at: DateTime<Utc>,
}

impl ActionFacts<'_> {
    fn event(&self, kind: EventType) -> Event {
        let mut e = Event::new(
            kind,
            &self.transaction_id.to_string(),
            self.occurred_at,
            self.actor,
            Some(self.transaction_id),
        );
        e.action = Some(self.action);
        if let Some(t) = self.target {
            e.instance = Some(NamedRef {
                id: t.instance.id,
                name: t.instance.name.clone(),
            });
            e.backend = Some(NamedRef {
                id: t.server.backend_id,
                name: t.backend_name.clone(),
            });
            e.server = Some(ServerRef {
                id: t.server.id,
                name: t.server.server_name.clone(),
                address: t.server.address.clone(),
                port: t.server.port,
            });
            e.application_id = t.server.application_id;
        }
        e
    }

    pub fn succeeded(&self, previous: StatePair, current: StatePair) -> Event {
        let mut e = self.event(EventType::ActionSucceeded);
        e.previous = Some(previous);
        e.current = Some(current);
        e
    }

    pub fn state_changed(&self, previous: StatePair, current: StatePair) -> Event {
        let mut e = self.event(EventType::ServerStateChanged);
        e.previous = Some(previous);
        e.current = Some(current);
        e
    }

    pub fn failed(&self, code: FailureCode, detail: &str) -> Event {
        let mut e = self.event(EventType::ActionFailed);
        e.error = Some(code.as_str().to_owned());
        e.error_detail = Some(detail.chars().take(2000).collect());
        e
    }

    pub fn rejected(&self, detail: &str, current: StatePair) -> Event {
        let mut e = self.event(EventType::ActionRejected);
        e.error_detail = Some(detail.to_owned());
        e.current = Some(current);
        e
    }

    /// `action.rejected` of an action whose approval was rejected or
    /// expired: `error_detail` names the approval.
    pub fn not_approved(&self, detail: &str, current: Option<StatePair>) -> Event {
        let mut e = self.event(EventType::ActionRejected);
        e.error_detail = Some(detail.chars().take(2000).collect());
        e.current = current;
        e
    }

    pub fn superseded(&self, current: Option<StatePair>) -> Event {
        let mut e = self.event(EventType::ActionSuperseded);
        e.current = current;
        e
    }
}

/// `instance.circuit_opened` / `instance.circuit_closed`.
pub fn circuit(kind: EventType, instance_id: i64, instance_name: &str, at: DateTime<Utc>) -> Event {
    let fact = format!("{instance_id}|{}", at.timestamp_micros());
    let mut e = Event::new(kind, &fact, at, "haproxy-control", None);
    e.instance = Some(NamedRef {
        id: instance_id,
        name: instance_name.to_owned(),
    });
    e
}

/// Events of one sync's findings; their ids derive from (server, fetched_at)
/// so a re-published run carries the same ids.
pub fn sync_findings(
    instance_id: i64,
    instance_name: &str,
    actor: &str,
    fetched_at: DateTime<Utc>,
    applied: &crate::db::sync::Applied,
) -> Vec<Event> {
    let at = fetched_at.timestamp_micros();
    let make = |kind: EventType, f: &crate::db::sync::Finding| {
        let mut e = Event::new(
            kind,
            &format!("{}|{at}", f.server_id),
            Utc::now(),
            actor,
            None,
        );
        e.instance = Some(NamedRef {
            id: instance_id,
            name: instance_name.to_owned(),
        });
        e.backend = Some(NamedRef {
            id: f.backend_id,
            name: f.backend_name.clone(),
        });
        e.server = Some(ServerRef {
            id: f.server_id,
            name: f.server_name.clone(),
            address: f.address.clone(),
            port: f.port,
        });
        e.application_id = f.application_id;
        e.previous = f.previous;
        e.current = Some(f.current);
        e
    };
    let mut events = Vec::new();
    events.extend(
        applied
            .discovered
            .iter()
            .map(|f| make(EventType::ServerDiscovered, f)),
    );
    events.extend(
        applied
            .removed
            .iter()
            .map(|f| make(EventType::ServerRemoved, f)),
    );
    events.extend(
        applied
            .changed
            .iter()
            .map(|f| make(EventType::ServerStateChanged, f)),
    );
    events
}

/// `instance.sync_failed`.
pub fn sync_failed(
    instance_id: i64,
    instance_name: &str,
    transaction_id: Uuid,
    error: &str,
) -> Event {
    let mut e = Event::new(
        EventType::InstanceSyncFailed,
        &transaction_id.to_string(),
        Utc::now(),
        &format!("haproxy:{instance_name}"),
        None,
    );
    e.instance = Some(NamedRef {
        id: instance_id,
        name: instance_name.to_owned(),
    });
    e.error = Some(error.chars().take(2000).collect());
    e
}

/// `instance.reloaded`: its id derives from (instance, new process), so
/// every re-publication of the same reload carries the same id. `restored`
/// is `Some` (possibly empty) when the instance restores states.
pub fn instance_reloaded(
    instance: &NamedRef,
    previous: ProcessIdentity,
    current: ProcessIdentity,
    detected_at: DateTime<Utc>,
    restored: Option<Vec<RestoreRef>>,
) -> Event {
    let started = current.started_at.map_or(0, |t| t.timestamp());
    let mut e = Event::new(
        EventType::InstanceReloaded,
        &format!("{}|{}|{started}", instance.id, current.pid),
        detected_at,
        &format!("haproxy:{}", instance.name),
        None,
    );
    e.instance = Some(instance.clone());
    e.haproxy_process = Some(current);
    e.previous_haproxy_process = Some(previous);
    e.restored = restored;
    e
}

/// `batch.completed`: its id derives from the batch's transaction id, so a
/// re-publication carries the same id.
pub fn batch_completed(
    batch: &crate::db::batches::BatchRow,
    counts: crate::domain::event::StatusCounts,
) -> Event {
    let mut e = Event::new(
        EventType::BatchCompleted,
        &batch.transaction_id.to_string(),
        batch.completed_at.unwrap_or_else(Utc::now),
        &batch.actor,
        Some(batch.transaction_id),
    );
    e.batch_id = Some(batch.id);
    e.action = Some(batch.action);
    e.counts = Some(counts);
    e
}
