//! The `rollout.*` events. Ids derive from (rollout, server, step,
//! attempt) or (rollout, change), so a re-published fact keeps its id.

use chrono::{DateTime, Utc};

use super::tick::Loaded;
use crate::db::rollouts::{RolloutRow, RolloutServerRow, TargetInfo};
use crate::domain::event::{Event, EventType, NamedRef, ServerRef};
use crate::domain::rollout::Step;
use crate::domain::rollout::tick::RolloutChange;

/// Largest hook output carried by an event (its tail).
const OUTPUT_TAIL_BYTES: usize = 4096;

fn base(kind: EventType, r: &RolloutRow, fact: &str, at: DateTime<Utc>) -> Event {
    let mut e = Event::new(
        kind,
        &format!("{}|{fact}", r.transaction_id),
        at,
        &r.actor,
        Some(r.transaction_id),
    );
    e.rollout_id = Some(r.id);
    e
}

fn with_server(mut e: Event, t: Option<&TargetInfo>) -> Event {
    if let Some(t) = t {
        e.instance = Some(NamedRef {
            id: t.instance_id,
            name: t.instance_name.clone(),
        });
        e.backend = Some(NamedRef {
            id: t.backend_id,
            name: t.backend_name.clone(),
        });
        e.server = Some(ServerRef {
            id: t.server_id,
            name: t.server_name.clone(),
            address: t.address.clone(),
            port: t.port,
        });
        e.application_id = t.application_id;
    }
    e
}

/// The last `OUTPUT_TAIL_BYTES` of a hook's output, cut at a character.
pub fn output_tail(output: &str) -> String {
    let mut start = output.len().saturating_sub(OUTPUT_TAIL_BYTES);
    while !output.is_char_boundary(start) {
        start += 1;
    }
    output[start..].to_owned()
}

/// `rollout.started`.
pub fn started(r: &RolloutRow) -> Event {
    base(EventType::RolloutStarted, r, "started", r.created_at)
}

/// The event of entering `step`, if it has one.
pub fn entered(
    r: &RolloutRow,
    s: &RolloutServerRow,
    t: Option<&TargetInfo>,
    step: Step,
    at: DateTime<Utc>,
) -> Option<Event> {
    let kind = match step {
        Step::Drained => EventType::RolloutServerDrained,
        Step::Updated => EventType::RolloutServerUpdated,
        Step::Ready => EventType::RolloutServerReady,
        _ => return None,
    };
    let fact = format!("{}|{step}|{}", s.server_id, s.attempt);
    Some(with_server(base(kind, r, &fact, at), t))
}

/// `rollout.server_failed`, with the hook's exit code and output tail when
/// the hook failed.
pub fn server_failed(
    r: &RolloutRow,
    s: &RolloutServerRow,
    t: Option<&TargetInfo>,
    why: &str,
    at: DateTime<Utc>,
) -> Event {
    let fact = format!("{}|failed|{}", s.server_id, s.attempt);
    let mut e = with_server(base(EventType::RolloutServerFailed, r, &fact, at), t);
    e.error = Some(why.to_owned());
    add_hook(&mut e, s);
    e
}

fn add_hook(e: &mut Event, s: &RolloutServerRow) {
    if s.step == Step::Updating && s.hook_finished_at.is_some() {
        e.exit_code = s.hook_exit_code;
        e.output_tail = s.hook_output.as_deref().map(output_tail);
    }
}

/// The events of the rollout's own changes in a tick.
/// `failed` is the server whose failure halted the rollout, if any.
pub fn rollout_changes(
    l: &Loaded,
    changes: &[RolloutChange],
    failed: Option<&RolloutServerRow>,
    at: DateTime<Utc>,
) -> Vec<Event> {
    let r = &l.rollout;
    changes
        .iter()
        .map(|c| match c {
            RolloutChange::WaveCompleted(w) => {
                let mut e = base(EventType::RolloutWaveCompleted, r, &format!("wave|{w}"), at);
                e.wave = Some(*w);
                e
            }
            RolloutChange::Halted(why) => {
                let fact = format!("halted|{}", r.tick_seq);
                let mut e = base(EventType::RolloutHalted, r, &fact, at);
                e.error = Some(why.clone());
                if let Some(s) = failed {
                    e = with_server(e, l.targets.get(&s.id));
                    e.error = Some(why.clone());
                    add_hook(&mut e, s);
                }
                e
            }
            RolloutChange::Completed => base(EventType::RolloutCompleted, r, "completed", at),
            RolloutChange::Aborted => base(EventType::RolloutAborted, r, "aborted", at),
        })
        .collect()
}
