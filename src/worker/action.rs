//! The `action` handler. It reads like DESIGN.md's rules: parse (or
//! dead-letter), resolve the server, lock it, skip a finished duplicate,
//! check order, guard and breaker, record the transaction id, call the agent
//! with retries, commit outcome + state + history + events together, publish,
//! and only then ack.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tracing::Instrument;

use super::breaker::{self, BreakerSettings, Transition};
use super::events::{ActionFacts, circuit};
use super::{Trouble, WorkerContext, inventory as refresh};
use crate::db::actions::{self, ActionRow, Claim, HistoryWrite, NewAction, Outcome, ServerWrite};
use crate::db::inventory::{self, ServerRow, ServerTarget};
use crate::db::locks::{ServerLock, Session};
use crate::db::{DbError, instances};
use crate::domain::action::{ActionRequest, ActionStatus, FailureCode, Target, is_superseded};
use crate::domain::breaker::BreakerState;
use crate::domain::event::{EventType, StatePair};
use crate::domain::{BackendName, ServerName};
use crate::fagent::client::{AgentEndpoint, CallError};
use crate::fagent::wire::StateChanged;
use crate::queue::message::parse_action;
use crate::queue::publisher::PublishError;
use crate::queue::{Disposition, Handler, Incoming};

/// Waits between in-process retries of a message whose processing hit
/// infrastructure trouble (database or broker down), before giving it back.
const TROUBLE_BACKOFF: [Duration; 4] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

pub struct ActionHandler {
    ctx: Arc<WorkerContext>,
}

impl ActionHandler {
    pub fn new(ctx: Arc<WorkerContext>) -> Self {
        Self { ctx }
    }
}

impl Handler for ActionHandler {
    fn handle(self: Arc<Self>, message: Incoming) -> BoxFuture<'static, Disposition> {
        Box::pin(async move {
            let request = match parse_action(&message.data) {
                Ok(r) => r,
                Err(e) => return Disposition::DeadLetter(e.0),
            };
            let received_at = Utc::now();
            let span = tracing::info_span!(
                "action",
                transaction_id = %request.transaction_id,
                action = %request.action,
                actor = %request.actor,
            );
            async move {
                for (attempt, wait) in TROUBLE_BACKOFF.iter().enumerate() {
                    match process(&self.ctx, &request, received_at).await {
                        Ok(d) => return d,
                        Err(e) => {
                            tracing::warn!(error = %e, attempt, "infrastructure trouble; retrying the message");
                            tokio::time::sleep(*wait).await;
                        }
                    }
                }
                match process(&self.ctx, &request, received_at).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::error!(error = %e, "giving the message back to the broker");
                        Disposition::Requeue
                    }
                }
            }
            .instrument(span)
            .await
        })
    }
}

async fn process(
    ctx: &WorkerContext,
    req: &ActionRequest,
    received_at: DateTime<Utc>,
) -> Result<Disposition, Trouble> {
    let requested_at = req.requested_at.unwrap_or(received_at);
    let mut may_refresh = true;
    loop {
        let (r, settings) = (req.clone(), ctx.breaker.clone());
        let (lock, prepared) = ServerLock::open(&ctx.pool, move |session| {
            prepare(session, &r, requested_at, &settings, may_refresh)
        })
        .await?;
        let (events, batch_id) = match prepared {
            Prepared::Refresh(instance) => {
                lock.release().await;
                load_listing(ctx, &instance).await;
                may_refresh = false;
                continue;
            }
            Prepared::Again => {
                lock.release().await;
                continue;
            }
            Prepared::DeadLetter(reason) => {
                lock.release().await;
                return Ok(Disposition::DeadLetter(reason));
            }
            Prepared::Done { events, batch_id } => {
                lock.release().await;
                (events, batch_id)
            }
            Prepared::Call(call) => {
                let batch_id = call.batch_id;
                (apply(ctx, req, requested_at, *call, lock).await?, batch_id)
            }
        };
        ctx.publisher.publish_stored(&ctx.topology, &events).await?;
        batch_progress(ctx, batch_id).await?;
        return Ok(Disposition::Ack);
    }
}

/// After an action of a batch finished: `batch.completed` when it was the last.
async fn batch_progress(ctx: &WorkerContext, batch_id: Option<i64>) -> Result<(), Trouble> {
    let Some(batch_id) = batch_id else {
        return Ok(());
    };
    super::batch::completed(ctx, batch_id).await
}

/// What the preamble of an action decided.
enum Prepared {
    /// The instance is known but the server named is not: load the
    /// instance's listing from its agent, then prepare again.
    Refresh(instances::InstanceRow),
    DeadLetter(String),
    /// The transaction id got a row between reading and writing it (a
    /// command sent to two servers under one id): prepare again.
    Again,
    /// Nothing (more) to call: publish these events, committed already.
    Done {
        events: serde_json::Value,
        batch_id: Option<i64>,
    },
    /// Call the agent; the first attempt is admitted by the breaker and
    /// counted, and the server's lock (and its backend's guard lock when
    /// rule 10 applies) is held.
    Call(Box<Call>),
}

struct Call {
    action_id: i64,
    batch_id: Option<i64>,
    target: ServerTarget,
    /// The server's row as read under its lock.
    server: ServerRow,
    previous: StatePair,
    endpoint: AgentEndpoint,
    backend: BackendName,
    server_name: ServerName,
}

/// Everything before the agent call, on one connection in one blocking
/// call: resolve the target, lock the server, look the transaction id up,
/// check order, activity, the guard and the breaker, then record the
/// action with its first attempt counted. An action that ends here is
/// committed here.
fn prepare(
    session: &mut Session,
    req: &ActionRequest,
    requested_at: DateTime<Utc>,
    breaker_settings: &BreakerSettings,
    may_refresh: bool,
) -> Result<Prepared, DbError> {
    let txn = req.transaction_id;
    let target = match &req.target {
        Target::ServerId(id) => inventory::find_server(session.conn(), *id)?,
        Target::Names {
            instance,
            backend,
            server,
        } => {
            let found = inventory::find_server_by_names(
                session.conn(),
                instance,
                backend.as_str(),
                server.as_str(),
            )?;
            if found.is_none()
                && may_refresh
                && let Some(row) = instances::find_by_name(session.conn(), instance)?
                && row.is_active
                && row.breaker_state == BreakerState::Closed
            {
                return Ok(Prepared::Refresh(row));
            }
            found
        }
    };
    let new = NewAction {
        transaction_id: txn,
        server_id: target.as_ref().map(|t| t.server.id),
        batch_id: req.batch_id,
        action: req.action,
        status: ActionStatus::Pending,
        actor: req.actor.clone(),
        reason: req.reason.clone(),
        force: req.force,
        requested_at,
    };
    let Some(target) = target else {
        return not_found(session, req, new);
    };

    // Under the server's lock: a delivery of the same command waits here
    // for this one, then finds its row. A drain or maint without force may
    // meet rule 10's guard: it takes its backend's guard lock at once too
    // (one round trip), whether or not the server turns out to be ready.
    if may_be_guarded(req) {
        session.lock_server_and_backend(target.server.id, target.server.backend_id)?;
    } else {
        session.lock_server(target.server.id)?;
    }
    let server_id = target.server.id;
    let existing = actions::get_by_transaction(session.conn(), txn)?;
    if let Some(row) = existing.as_ref()
        && let Some(end) = check_existing(session, req, row, Some(server_id))?
    {
        return Ok(end);
    }
    let batch_id = existing.as_ref().map_or(req.batch_id, |r| r.batch_id);
    let existing_id = existing.as_ref().map(|r| r.id);
    // An action that ends before the call: its row is written (or
    // finished) with the outcome, and the locks go.
    let done = |session: &mut Session, outcome: Outcome| -> Result<Prepared, DbError> {
        let events = outcome.events.clone();
        match existing_id {
            Some(id) => actions::finish(session.conn(), id, &outcome)?,
            None => {
                let row = NewAction {
                    status: outcome.status,
                    ..new.clone()
                };
                if actions::insert_finished(session.conn(), &row, &outcome)?.is_none() {
                    return Ok(Prepared::Again);
                }
            }
        }
        session.unlock_all()?;
        Ok(Prepared::Done { events, batch_id })
    };
    let server =
        inventory::server(session.conn(), server_id)?.unwrap_or_else(|| target.server.clone());
    let previous = server.state();
    let facts = facts(req, Some(&target));

    if is_superseded(requested_at, server.last_requested_at) {
        tracing::info!(status = "superseded", "action superseded");
        let detail = format!(
            "a command requested at {} was already applied",
            server
                .last_requested_at
                .map(|t| t.to_rfc3339())
                .unwrap_or_default()
        );
        return done(
            session,
            Outcome {
                status: ActionStatus::Superseded,
                error: None,
                error_detail: Some(detail),
                events: serde_json::json!([facts.superseded(Some(previous))]),
            },
        );
    }
    if !target.instance.is_active {
        let detail = format!("instance {} is not active", target.instance.name);
        return done(session, failed(&facts, FailureCode::Invalid, &detail));
    }

    // Rule 10: taking a server out must not leave its backend without a
    // ready server. Guarded actions in one backend run one at a time (the
    // backend's lock is held until the outcome is committed), so two of
    // them — or a whole batch — cannot empty it together.
    if guard_applies(req, &previous)
        && inventory::ready_servers_besides(session.conn(), server.backend_id, server_id)? == 0
    {
        let detail = format!(
            "{} would leave backend {} with no ready server; send force: true to do it anyway",
            req.action, target.backend_name
        );
        tracing::info!(status = "rejected", "action rejected by the guard");
        return done(
            session,
            Outcome {
                status: ActionStatus::Rejected,
                error: None,
                error_detail: Some(detail.clone()),
                events: serde_json::json!([facts.rejected(&detail, previous)]),
            },
        );
    }

    // Names in the database came from HAProxy through the agent; they are
    // parsed again before they go anywhere near a request path.
    let names = match (
        BackendName::parse(&target.backend_name),
        ServerName::parse(&target.server.server_name),
    ) {
        (Ok(b), Ok(s)) => (b, s),
        (Err(e), _) | (_, Err(e)) => {
            return done(
                session,
                failed(&facts, FailureCode::Invalid, &e.to_string()),
            );
        }
    };
    let endpoint = match refresh::endpoint(&target.instance) {
        Ok(e) => e,
        Err(detail) => return done(session, failed(&facts, FailureCode::AgentError, &detail)),
    };
    // The instance row loaded with the target is fresh enough when it shows
    // a closed breaker; otherwise the breaker decides (and may make this
    // call its half-open probe).
    if target.instance.breaker_state != BreakerState::Closed
        && !breaker::admission_on(session.conn(), target.instance.id, breaker_settings)?
    {
        let detail = format!(
            "the circuit breaker of instance {} is open",
            target.instance.name
        );
        return done(session, failed(&facts, FailureCode::CircuitOpen, &detail));
    }
    let action_id = match existing_id {
        Some(id) => {
            actions::begin_attempt(session.conn(), id, true)?;
            id
        }
        None => {
            let row = NewAction {
                status: ActionStatus::Running,
                ..new
            };
            match actions::insert_started(session.conn(), &row)? {
                Some(id) => id,
                None => return Ok(Prepared::Again),
            }
        }
    };
    Ok(Prepared::Call(Box::new(Call {
        action_id,
        batch_id,
        server,
        previous,
        endpoint,
        backend: names.0,
        server_name: names.1,
        target,
    })))
}

/// The target names no live server: the action fails with `not_found`
/// (or, for a duplicate, ends as its first delivery did).
fn not_found(
    session: &mut Session,
    req: &ActionRequest,
    new: NewAction,
) -> Result<Prepared, DbError> {
    let row = match actions::claim(session.conn(), &new)? {
        Claim::New(row) => row,
        Claim::Existing(row) => {
            if let Some(end) = check_existing(session, req, &row, None)? {
                return Ok(end);
            }
            row
        }
    };
    let detail = format!(
        "no live server matches the target {:?}",
        describe(&req.target)
    );
    tracing::info!(error = "not_found", "action failed");
    let outcome = failed(&facts(req, None), FailureCode::NotFound, &detail);
    let events = outcome.events.clone();
    actions::finish(session.conn(), row.id, &outcome)?;
    Ok(Prepared::Done {
        events,
        batch_id: row.batch_id,
    })
}

/// What a row that the transaction id has already says: another command
/// under the same id is dead-lettered, a finished one is re-announced,
/// `None` means carry on with it.
fn check_existing(
    session: &mut Session,
    req: &ActionRequest,
    row: &ActionRow,
    server_id: Option<i64>,
) -> Result<Option<Prepared>, DbError> {
    let txn = req.transaction_id;
    if row.action != req.action {
        return Ok(Some(Prepared::DeadLetter(format!(
            "transaction_id {txn} was already used for another command ({} on server {:?})",
            row.action, row.server_id
        ))));
    }
    // A duplicate of a finished action: its final events again, nothing else.
    if row.status.is_final() {
        tracing::info!(status = %row.status, "duplicate of a finished action; re-publishing its events");
        session.unlock_all()?;
        return Ok(Some(Prepared::Done {
            events: row.events.clone(),
            batch_id: row.batch_id,
        }));
    }
    if row.server_id != server_id {
        return Ok(Some(Prepared::DeadLetter(format!(
            "transaction_id {txn} was already used for another server ({:?})",
            row.server_id
        ))));
    }
    Ok(None)
}

/// Whether rule 10's guard may apply: a `drain` or `maint` without `force`.
fn may_be_guarded(req: &ActionRequest) -> bool {
    req.action != crate::domain::AdminState::Ready && !req.force
}

/// Whether rule 10's guard applies: a `drain` or `maint` without `force` of
/// a server that is `ready` now.
fn guard_applies(req: &ActionRequest, previous: &StatePair) -> bool {
    may_be_guarded(req) && previous.admin_state == crate::domain::AdminState::Ready
}

/// Calls the agent (the server is locked), then commits the outcome and
/// releases the locks. Returns the events to publish.
async fn apply(
    ctx: &WorkerContext,
    req: &ActionRequest,
    requested_at: DateTime<Utc>,
    call: Call,
    mut lock: ServerLock,
) -> Result<serde_json::Value, Trouble> {
    let facts = facts(req, Some(&call.target));
    let action_id = call.action_id;
    let outcome = match call_with_retries(ctx, req, &call, &mut lock).await? {
        Ok(changed) => changed,
        Err((code, detail)) => {
            tracing::info!(error = %code, detail = %detail, "action failed");
            let outcome = failed(&facts, code, &detail);
            let events = outcome.events.clone();
            lock.finish(move |c| actions::finish(c, action_id, &outcome))
                .await?;
            return Ok(events);
        }
    };

    let previous = call.previous;
    let current = StatePair {
        admin_state: outcome.server.admin_state,
        op_state: outcome.server.op_state,
    };
    let changed = current != previous;
    let mut events = vec![facts.succeeded(previous, current)];
    if changed {
        events.push(facts.state_changed(previous, current));
    }
    let write = ServerWrite {
        server_id: call.server.id,
        admin_state: current.admin_state,
        op_state: current.op_state,
        weight: i32::try_from(outcome.server.weight).unwrap_or(i32::MAX),
        current_sessions: i64::try_from(outcome.server.current_sessions).unwrap_or(i64::MAX),
        check_status: outcome.server.check_status.clone(),
        last_requested_at: call
            .server
            .last_requested_at
            .map_or(requested_at, |t| t.max(requested_at)),
    };
    let history = changed.then(|| HistoryWrite {
        previous,
        actor: req.actor.clone(),
    });
    let stored = serde_json::to_value(&events).unwrap_or_default();
    let instance_id = call.target.instance.id;
    let to_store = stored.clone();
    // The breaker's success, the outcome and the unlock: one blocking call.
    let transition = lock
        .finish(move |c| {
            let transition = breaker::record_success_on(c, instance_id)?;
            actions::finish_success(c, action_id, &to_store, &write, history.as_ref())?;
            Ok(transition)
        })
        .await?;
    note(ctx, &call.target.instance, transition).await?;
    tracing::info!(
        status = "success",
        admin_state = %current.admin_state,
        op_state = %current.op_state,
        changed,
        "action applied"
    );
    Ok(stored)
}

fn failed(facts: &ActionFacts<'_>, code: FailureCode, detail: &str) -> Outcome {
    Outcome {
        status: ActionStatus::Failed,
        error: Some(code),
        error_detail: Some(detail.to_owned()),
        events: serde_json::json!([facts.failed(code, detail)]),
    }
}

fn facts<'a>(req: &'a ActionRequest, target: Option<&'a ServerTarget>) -> ActionFacts<'a> {
    ActionFacts {
        transaction_id: req.transaction_id,
        action: req.action,
        actor: &req.actor,
        target,
        occurred_at: Utc::now(),
    }
}

fn describe(target: &Target) -> String {
    match target {
        Target::ServerId(id) => format!("server_id {id}"),
        Target::Names {
            instance,
            backend,
            server,
        } => format!("{instance}/{backend}/{server}"),
    }
}

/// Loads an instance's servers from its agent, for a command that names a
/// server not known yet.
async fn load_listing(ctx: &WorkerContext, instance: &instances::InstanceRow) {
    match refresh::refresh(&ctx.pool, &ctx.agents, instance, &ctx.template).await {
        Ok(r) => {
            tracing::info!(instance = %instance.name, counts = %r.counts, "loaded the instance's servers");
            if let Err(e) = publish_all(ctx, &r.events).await {
                tracing::warn!(error = %e, "could not publish the findings of a refresh");
            }
        }
        Err(e) => {
            tracing::warn!(instance = %instance.name, error = %e, "could not load the instance's servers")
        }
    }
}

type CallOutcome = Result<StateChanged, (FailureCode, String)>;

/// Calls the agent through the instance's breaker, retrying what may
/// succeed on retry. The first attempt was admitted and counted by
/// [`prepare`]; a success is recorded with the outcome.
async fn call_with_retries(
    ctx: &WorkerContext,
    req: &ActionRequest,
    call: &Call,
    lock: &mut ServerLock,
) -> Result<CallOutcome, Trouble> {
    let instance = &call.target.instance;
    let action_id = call.action_id;
    let mut last: Option<CallError> = None;
    for attempt in 1..=ctx.retry.max_attempts {
        // Breaker reads and writes go through the server lock's connection:
        // an action must not need a second pooled connection while it holds
        // locks others wait for (that exhausted the pool under load).
        let (id, settings) = (instance.id, ctx.breaker.clone());
        if attempt > 1
            && !lock
                .run(move |c| {
                    let admitted = breaker::admission_on(c, id, &settings)?;
                    if admitted {
                        actions::begin_attempt(c, action_id, false)?;
                    }
                    Ok(admitted)
                })
                .await?
        {
            return Ok(Err(match last {
                None => (
                    FailureCode::CircuitOpen,
                    format!("the circuit breaker of instance {} is open", instance.name),
                ),
                Some(e) => (
                    e.failure_code(),
                    format!("{e}; then the circuit breaker opened"),
                ),
            }));
        }
        match ctx
            .agents
            .set_state(
                &call.endpoint,
                &call.backend,
                &call.server_name,
                req.action,
                req.transaction_id,
            )
            .await
        {
            Ok(changed) => return Ok(Ok(changed)),
            Err(e) => {
                tracing::warn!(attempt, error = %e, "agent call failed");
                let transition = if e.counts_for_breaker() {
                    let settings = ctx.breaker.clone();
                    lock.run(move |c| breaker::record_failure_on(c, id, &settings))
                        .await?
                } else {
                    lock.run(move |c| breaker::record_success_on(c, id)).await?
                };
                note(ctx, instance, transition).await?;
                if !e.is_transient() {
                    return Ok(Err((e.failure_code(), e.to_string())));
                }
                last = Some(e);
                if attempt < ctx.retry.max_attempts {
                    tokio::time::sleep(ctx.retry.delay_before_retry(attempt)).await;
                }
            }
        }
    }
    Ok(Err(match last {
        Some(e) => (e.failure_code(), e.to_string()),
        None => (FailureCode::AgentError, "no attempt was made".into()),
    }))
}

async fn publish_all(
    ctx: &WorkerContext,
    events: &[crate::domain::event::Event],
) -> Result<(), PublishError> {
    for e in events {
        ctx.publisher.publish_event(&ctx.topology, e).await?;
    }
    Ok(())
}

/// Publishes a breaker transition.
pub(crate) async fn note_transition(
    ctx: &WorkerContext,
    instance: &instances::InstanceRow,
    transition: Transition,
) -> Result<(), PublishError> {
    note(ctx, instance, transition).await
}

async fn note(
    ctx: &WorkerContext,
    instance: &instances::InstanceRow,
    transition: Transition,
) -> Result<(), PublishError> {
    let kind = match transition {
        Transition::None => return Ok(()),
        Transition::Opened => EventType::InstanceCircuitOpened,
        Transition::Closed => EventType::InstanceCircuitClosed,
    };
    tracing::warn!(instance = %instance.name, event = kind.routing_key(), "circuit breaker transition");
    let event = circuit(kind, instance.id, &instance.name, Utc::now());
    ctx.publisher.publish_event(&ctx.topology, &event).await
}
