//! The `action` handler. It reads like DESIGN.md's rules: parse (or
//! dead-letter), skip a finished duplicate, resolve the server, claim the
//! transaction id, lock the server, check order and breaker, call the agent
//! with retries, commit outcome + state + history + events together, publish,
//! and only then ack.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tracing::Instrument;

use super::breaker::{self, Transition};
use super::events::{ActionFacts, circuit, stored_pair};
use super::{Trouble, WorkerContext, inventory as refresh};
use crate::db::actions::{self, Claim, HistoryWrite, NewAction, Outcome, ServerWrite};
use crate::db::inventory::{self, ServerTarget};
use crate::db::locks::ServerLock;
use crate::db::{self, DbError, instances};
use crate::domain::action::{ActionRequest, ActionStatus, FailureCode, Target, is_superseded};
use crate::domain::event::{EventType, StatePair};
use crate::domain::{BackendName, ServerName};
use crate::fagent::client::CallError;
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
    let txn = req.transaction_id;
    let requested_at = req.requested_at.unwrap_or(received_at);
    let target = resolve(ctx, &req.target).await?;
    let new = NewAction {
        transaction_id: txn,
        server_id: target.as_ref().map(|t| t.server.id),
        batch_id: req.batch_id,
        action: req.action.as_str().to_owned(),
        status: ActionStatus::Pending.as_str().to_owned(),
        actor: req.actor.clone(),
        reason: req.reason.clone(),
        force: req.force,
        requested_at,
    };
    let (row, existing) = match db::run(&ctx.pool, move |c| actions::claim(c, &new)).await? {
        Claim::New(row) => (row, false),
        Claim::Existing(row) => (row, true),
    };
    if existing && row.action != req.action.as_str() {
        return Ok(Disposition::DeadLetter(format!(
            "transaction_id {txn} was already used for another command ({} on server {:?})",
            row.action, row.server_id
        )));
    }
    // A duplicate of a finished action: its final events again, nothing else.
    if row.status().is_final() {
        tracing::info!(status = %row.status, "duplicate of a finished action; re-publishing its events");
        ctx.publisher
            .publish_stored(&ctx.topology, &row.events)
            .await?;
        batch_progress(ctx, row.batch_id).await?;
        return Ok(Disposition::Ack);
    }
    if existing && row.server_id != target.as_ref().map(|t| t.server.id) {
        return Ok(Disposition::DeadLetter(format!(
            "transaction_id {txn} was already used for another server ({:?})",
            row.server_id
        )));
    }

    let Some(target) = target else {
        let facts = facts(req, None);
        let detail = format!(
            "no live server matches the target {:?}",
            describe(&req.target)
        );
        let outcome = failed(&facts, FailureCode::NotFound, &detail);
        let id = row.id;
        let events = outcome.events.clone();
        db::run(&ctx.pool, move |c| {
            actions::finish(c, id, &outcome, None, None)
        })
        .await?;
        tracing::info!(error = "not_found", "action failed");
        ctx.publisher.publish_stored(&ctx.topology, &events).await?;
        batch_progress(ctx, row.batch_id).await?;
        return Ok(Disposition::Ack);
    };

    let mut lock = ServerLock::acquire(&ctx.pool, target.server.id).await?;
    let result = locked(ctx, req, requested_at, &target, row.id, &mut lock).await;
    lock.release().await;
    let events = result?;
    ctx.publisher.publish_stored(&ctx.topology, &events).await?;
    batch_progress(ctx, row.batch_id).await?;
    Ok(Disposition::Ack)
}

/// After an action of a batch finished: `batch.completed` when it was the last.
async fn batch_progress(ctx: &WorkerContext, batch_id: Option<i64>) -> Result<(), Trouble> {
    let Some(batch_id) = batch_id else {
        return Ok(());
    };
    super::batch::completed(ctx, batch_id).await
}

/// The part that runs while the server is locked. Returns the events to
/// publish (already committed with the outcome).
async fn locked(
    ctx: &WorkerContext,
    req: &ActionRequest,
    requested_at: DateTime<Utc>,
    target: &ServerTarget,
    action_id: i64,
    lock: &mut ServerLock,
) -> Result<serde_json::Value, Trouble> {
    let txn = req.transaction_id;
    let server_id = target.server.id;
    let (row, server) = lock
        .run(move |c| {
            Ok((
                actions::get_by_transaction(c, txn)?,
                inventory::server(c, server_id)?,
            ))
        })
        .await?;
    if let Some(row) = row
        && row.status().is_final()
    {
        // Another delivery finished it while we waited for the lock.
        return Ok(row.events);
    }
    let server = server.unwrap_or_else(|| target.server.clone());
    let previous = stored_pair(&server.admin_state, &server.op_state);
    let facts = facts(req, Some(target));

    if is_superseded(requested_at, server.last_requested_at) {
        let outcome = Outcome {
            status: ActionStatus::Superseded,
            error: None,
            error_detail: Some(format!(
                "a command requested at {} was already applied",
                server
                    .last_requested_at
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default()
            )),
            events: serde_json::json!([facts.superseded(Some(previous))]),
        };
        let events = outcome.events.clone();
        lock.run(move |c| actions::finish(c, action_id, &outcome, None, None))
            .await?;
        tracing::info!(status = "superseded", "action superseded");
        return Ok(events);
    }
    if !target.instance.is_active {
        let detail = format!("instance {} is not active", target.instance.name);
        return finish_failed(
            lock,
            action_id,
            failed(&facts, FailureCode::Invalid, &detail),
        )
        .await;
    }

    // Rule 10: taking a server out must not leave its backend without a
    // ready server. Guarded actions in one backend run one at a time (a
    // backend lock held until the outcome is committed), so two of them —
    // or a whole batch — cannot empty it together.
    let guarded = if guard_applies(req, &previous) {
        let backend_id = server.backend_id;
        lock.lock_backend(backend_id).await?;
        let ready_others = lock
            .run(move |c| inventory::ready_servers_besides(c, backend_id, server_id))
            .await?;
        if ready_others == 0 {
            lock.release_backend(backend_id).await?;
            let detail = format!(
                "{} would leave backend {} with no ready server; send force: true to do it anyway",
                req.action, target.backend_name
            );
            let outcome = Outcome {
                status: ActionStatus::Rejected,
                error: None,
                error_detail: Some(detail.clone()),
                events: serde_json::json!([facts.rejected(&detail, previous)]),
            };
            let events = outcome.events.clone();
            lock.run(move |c| actions::finish(c, action_id, &outcome, None, None))
                .await?;
            tracing::info!(status = "rejected", "action rejected by the guard");
            return Ok(events);
        }
        Some(backend_id)
    } else {
        None
    };
    let result = apply(
        ctx,
        req,
        requested_at,
        target,
        action_id,
        lock,
        previous,
        &server,
        &facts,
    )
    .await;
    if let Some(backend_id) = guarded {
        lock.release_backend(backend_id).await?;
    }
    result
}

/// Whether rule 10's guard applies: a `drain` or `maint` without `force` of
/// a server that is `ready` now.
fn guard_applies(req: &ActionRequest, previous: &StatePair) -> bool {
    req.action != crate::domain::AdminState::Ready
        && !req.force
        && previous.admin_state == crate::domain::AdminState::Ready
}

/// Calls the agent and commits the outcome (the server is locked).
#[allow(clippy::too_many_arguments)]
async fn apply(
    ctx: &WorkerContext,
    req: &ActionRequest,
    requested_at: DateTime<Utc>,
    target: &ServerTarget,
    action_id: i64,
    lock: &mut ServerLock,
    previous: StatePair,
    server: &crate::db::inventory::ServerRow,
    facts: &ActionFacts<'_>,
) -> Result<serde_json::Value, Trouble> {
    let server_id = server.id;

    let outcome = match call_with_retries(ctx, req, target, action_id, lock).await? {
        Ok(changed) => changed,
        Err((code, detail)) => {
            tracing::info!(error = %code, detail = %detail, "action failed");
            return finish_failed(lock, action_id, failed(facts, code, &detail)).await;
        }
    };

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
        server_id,
        admin_state: current.admin_state,
        op_state: current.op_state,
        weight: i32::try_from(outcome.server.weight).unwrap_or(i32::MAX),
        current_sessions: i64::try_from(outcome.server.current_sessions).unwrap_or(i64::MAX),
        check_status: outcome.server.check_status.clone(),
        last_requested_at: server
            .last_requested_at
            .map_or(requested_at, |t| t.max(requested_at)),
        changed,
    };
    let history = changed.then(|| HistoryWrite {
        server_id,
        previous_admin_state: previous.admin_state,
        new_admin_state: current.admin_state,
        previous_op_state: previous.op_state,
        new_op_state: current.op_state,
        actor: req.actor.clone(),
    });
    let outcome = Outcome {
        status: ActionStatus::Success,
        error: None,
        error_detail: None,
        events: serde_json::to_value(&events).unwrap_or_default(),
    };
    let stored = outcome.events.clone();
    lock.run(move |c| actions::finish(c, action_id, &outcome, Some(&write), history.as_ref()))
        .await?;
    tracing::info!(
        status = "success",
        admin_state = %current.admin_state,
        op_state = %current.op_state,
        changed,
        "action applied"
    );
    Ok(stored)
}

async fn finish_failed(
    lock: &mut ServerLock,
    action_id: i64,
    outcome: Outcome,
) -> Result<serde_json::Value, Trouble> {
    let events = outcome.events.clone();
    lock.run(move |c| actions::finish(c, action_id, &outcome, None, None))
        .await?;
    Ok(events)
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

/// Finds the live server. A server named but not known yet is looked for
/// again after loading its instance's listing from the agent.
async fn resolve(ctx: &WorkerContext, target: &Target) -> Result<Option<ServerTarget>, DbError> {
    match target.clone() {
        Target::ServerId(id) => db::run(&ctx.pool, move |c| inventory::find_server(c, id)).await,
        Target::Names {
            instance,
            backend,
            server,
        } => {
            let (i, b, s) = (instance.clone(), backend.to_string(), server.to_string());
            let found = db::run(&ctx.pool, move |c| {
                inventory::find_server_by_names(c, &i, &b, &s)
            })
            .await?;
            if found.is_some() {
                return Ok(found);
            }
            let i = instance.clone();
            let Some(row) = db::run(&ctx.pool, move |c| instances::find_by_name(c, &i)).await?
            else {
                return Ok(None);
            };
            if row.is_active && row.breaker_state == "closed" {
                match refresh::refresh(&ctx.pool, &ctx.agents, &row, &ctx.template).await {
                    Ok(r) => {
                        tracing::info!(instance = %row.name, counts = %r.counts, "loaded the instance's servers");
                        if let Err(e) = publish_all(ctx, &r.events).await {
                            tracing::warn!(error = %e, "could not publish the findings of a refresh");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(instance = %row.name, error = %e, "could not load the instance's servers")
                    }
                }
            }
            let (b, s) = (backend.to_string(), server.to_string());
            db::run(&ctx.pool, move |c| {
                inventory::find_server_by_names(c, &instance, &b, &s)
            })
            .await
        }
    }
}

type CallOutcome = Result<StateChanged, (FailureCode, String)>;

/// Calls the agent through the instance's breaker, retrying what may
/// succeed on retry.
async fn call_with_retries(
    ctx: &WorkerContext,
    req: &ActionRequest,
    target: &ServerTarget,
    action_id: i64,
    lock: &mut ServerLock,
) -> Result<CallOutcome, Trouble> {
    let instance = &target.instance;
    let endpoint = match refresh::endpoint(instance) {
        Ok(e) => e,
        Err(detail) => return Ok(Err((FailureCode::AgentError, detail))),
    };
    // Names in the database came from HAProxy through the agent; they are
    // parsed again before they go anywhere near a request path.
    let (backend, server) = match (
        BackendName::parse(&target.backend_name),
        ServerName::parse(&target.server.server_name),
    ) {
        (Ok(b), Ok(s)) => (b, s),
        (Err(e), _) | (_, Err(e)) => return Ok(Err((FailureCode::Invalid, e.to_string()))),
    };
    let mut last: Option<CallError> = None;
    for attempt in 1..=ctx.retry.max_attempts {
        // The instance row loaded with the target is fresh enough for the
        // first call when it shows a closed breaker; later calls read again.
        let closed_at_load = attempt == 1 && instance.breaker_state == "closed";
        // Breaker reads and writes go through the server lock's connection:
        // an action must not need a second pooled connection while it holds
        // locks others wait for (that exhausted the pool under load).
        let (id, settings) = (instance.id, ctx.breaker.clone());
        if !closed_at_load
            && !lock
                .run(move |c| breaker::admission_on(c, id, &settings))
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
        lock.run(move |c| actions::begin_attempt(c, action_id, attempt == 1))
            .await?;
        match ctx
            .agents
            .set_state(&endpoint, &backend, &server, req.action, req.transaction_id)
            .await
        {
            Ok(changed) => {
                note(
                    ctx,
                    instance,
                    lock.run(move |c| breaker::record_success_on(c, id)).await?,
                )
                .await?;
                return Ok(Ok(changed));
            }
            Err(e) => {
                tracing::warn!(attempt, error = %e, "agent call failed");
                let transition = if e.counts_for_breaker() {
                    {
                        let settings = ctx.breaker.clone();
                        lock.run(move |c| breaker::record_failure_on(c, id, &settings))
                            .await?
                    }
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
