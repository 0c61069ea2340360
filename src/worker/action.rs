//! The `action` handler. It reads like DESIGN.md's rules: parse (or
//! dead-letter), resolve the server, lock it, skip a finished duplicate,
//! check order, guard and breaker, record the transaction id, call the agent
//! with retries, commit outcome + state + history + events together, publish,
//! and only then ack.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::breaker::{self, BreakerSettings, Transition};
use super::events::{ActionFacts, circuit};
use super::{InfraError, WorkerContext, agent_listing};
use crate::approvals::Held;
use crate::db::actions::{
    self, ActionRow, Claim, HistoryWrite, NewAction, Outcome, ServerWrite, Success,
};
use crate::db::approvals;
use crate::db::inventory::{self, ServerRow, ServerTarget};
use crate::db::locks::{AdvisoryLocks, Session};
use crate::db::{DbError, instances};
use crate::domain::action::{
    ActionRequest, ActionStatus, FailureCode, Target, check_requested_at, is_superseded,
};
use crate::domain::approval;
use crate::domain::breaker::BreakerState;
use crate::domain::event::{EventType, StatePair};
use crate::domain::{BackendName, ServerName};
use crate::fagent::client::{AgentEndpoint, CallError};
use crate::fagent::wire::StateChanged;
use crate::queue::message::{InvalidMessage, parse_action};
use crate::queue::publisher::PublishError;
use crate::queue::{Disposition, InfraRetryPolicy, MessageHandler};

/// Waits between in-process retries of a message whose processing hit
/// infrastructure trouble (database or broker down), before giving it back:
/// an action holds no lock while it waits, and a quick retry keeps its
/// place ahead of later commands for its server.
const INFRA_RETRY_BACKOFF: [Duration; 4] = [
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

impl MessageHandler for ActionHandler {
    type Request = super::Commanded<ActionRequest>;
    type InfraError = InfraError;

    const INFRA_RETRY: InfraRetryPolicy = InfraRetryPolicy {
        retries: &INFRA_RETRY_BACKOFF,
        pause_before_requeue: Duration::ZERO,
    };

    fn parse(&self, data: &[u8]) -> Result<Self::Request, InvalidMessage> {
        Ok(super::Commanded {
            request: parse_action(data)?,
            callback_url: self.ctx.callbacks.parse(data)?,
        })
    }

    fn span(&self, request: &Self::Request) -> tracing::Span {
        span(&request.request)
    }

    async fn process_group(
        &self,
        requests: &[&Self::Request],
    ) -> Result<Vec<Option<Disposition>>, InfraError> {
        super::action_group::process(&self.ctx, requests).await
    }

    async fn process(&self, commanded: &Self::Request) -> Result<Disposition, InfraError> {
        let request = &commanded.request;
        super::record_callback(
            &self.ctx,
            request.transaction_id,
            crate::domain::webhook::CallbackKind::Action,
            commanded.callback_url.as_ref(),
        )
        .await?;
        // No more actions at once than the pool serves (see `slots`).
        let _slot = self.ctx.action_slots.acquire(&request.target).await;
        process(&self.ctx, request).await
    }
}

/// The command's `requested_at`, or the database's time when it carries
/// none; `Err` with the reason when it is too far in the future (by the
/// database's clock, `worker.clock_tolerance_secs`).
///
/// # Errors
/// [`InfraError`] when the database's clock cannot be read.
pub(crate) async fn requested_at(
    ctx: &WorkerContext,
    requested_at: Option<DateTime<Utc>>,
) -> Result<Result<DateTime<Utc>, String>, InfraError> {
    let now = ctx.clock.now(&ctx.pool).await?;
    let Some(at) = requested_at else {
        return Ok(Ok(now));
    };
    Ok(check_requested_at(at, now, ctx.clock_tolerance_secs)
        .map(|()| at)
        .map_err(|e| e.to_string()))
}

async fn process(ctx: &WorkerContext, req: &ActionRequest) -> Result<Disposition, InfraError> {
    let requested_at = match requested_at(ctx, req.requested_at).await? {
        Ok(at) => at,
        Err(reason) => {
            tracing::warn!(reason = %reason, "command refused");
            return Ok(Disposition::DeadLetter(reason));
        }
    };
    let mut may_refresh = true;
    loop {
        let (r, settings) = (req.clone(), ctx.breaker.clone());
        let (lock, prepared) = AdvisoryLocks::open(&ctx.pool, move |session| {
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
            Prepared::TransactionIdClaimedMeanwhile => {
                lock.release().await;
                continue;
            }
            Prepared::DeadLetter(reason) => {
                lock.release().await;
                return Ok(Disposition::DeadLetter(reason));
            }
            Prepared::Done {
                events,
                batch_id,
                ended,
            } => {
                lock.release().await;
                if let Some(status) = ended {
                    action_finished(req, requested_at, status);
                }
                (events, batch_id)
            }
            Prepared::Call(call) => {
                let batch_id = call.batch_id;
                (apply(ctx, req, *call, lock).await?, batch_id)
            }
        };
        ctx.publisher.publish_stored(&ctx.topology, &events).await?;
        batch_progress(ctx, batch_id).await?;
        return Ok(Disposition::Ack);
    }
}

/// After an action of a batch finished: `batch.completed` when it was the last.
async fn batch_progress(ctx: &WorkerContext, batch_id: Option<i64>) -> Result<(), InfraError> {
    let Some(batch_id) = batch_id else {
        return Ok(());
    };
    super::batch::completed(ctx, batch_id).await
}

/// The span an action is processed in, alone or in a group.
pub(super) fn span(req: &ActionRequest) -> tracing::Span {
    tracing::info_span!(
        "action",
        transaction_id = %req.transaction_id,
        action = %req.action,
        actor = %req.actor,
    )
}

/// What the preamble of an action decided.
enum Prepared {
    /// The instance is known but the server named is not: load the
    /// instance's listing from its agent, then prepare again.
    Refresh(instances::InstanceRow),
    DeadLetter(String),
    /// The transaction id got a row between reading and writing it (a
    /// command sent to two servers under one id): prepare again.
    TransactionIdClaimedMeanwhile,
    /// Nothing (more) to call: publish these events, committed already.
    /// `ended` is the final status this delivery wrote (none for a
    /// duplicate of a finished action).
    Done {
        events: serde_json::Value,
        batch_id: Option<i64>,
        ended: Option<ActionStatus>,
    },
    /// Call the agent; the first attempt is admitted by the breaker and
    /// counted, and the server's lock (and its backend's guard lock when
    /// rule 10 applies) is held.
    Call(Box<Call>),
}

pub(super) struct Call {
    pub(super) action_id: i64,
    /// The `requested_at` the action runs at (its row's when recorded).
    pub(super) requested_at: DateTime<Utc>,
    pub(super) batch_id: Option<i64>,
    pub(super) target: ServerTarget,
    /// The server's row as read under its lock.
    pub(super) server: ServerRow,
    pub(super) previous: StatePair,
    pub(super) agent: AgentTarget,
}

/// The agent and the names a call addresses, parsed.
pub(super) struct AgentTarget {
    pub(super) endpoint: AgentEndpoint,
    pub(super) backend: BackendName,
    pub(super) server_name: ServerName,
}

impl AgentTarget {
    /// The single-server call that applies `req` here.
    pub(super) async fn set_state(
        &self,
        agents: &crate::fagent::client::AgentClient,
        req: &ActionRequest,
    ) -> Result<StateChanged, CallError> {
        agents
            .set_state(
                &self.endpoint,
                &self.backend,
                &self.server_name,
                req.action,
                req.transaction_id,
            )
            .await
    }
}

/// Everything before the agent call, on one connection in one blocking
/// call, in DESIGN.md's order: resolve the target, lock the server, dedupe
/// on the transaction id, then [`Pending::decide`] (order, activity, guard,
/// breaker, record). An action that ends here is committed here.
fn prepare(
    session: &mut Session,
    req: &ActionRequest,
    requested_at: DateTime<Utc>,
    breaker_settings: &BreakerSettings,
    may_refresh: bool,
) -> Result<Prepared, DbError> {
    let target = match resolve(session, req, may_refresh)? {
        Resolved::Server(target) => *target,
        Resolved::Refresh(instance) => return Ok(Prepared::Refresh(*instance)),
        Resolved::NoServer => {
            return not_found(session, req, new_action(req, requested_at, None));
        }
    };
    lock(session, req, &target)?;
    match dedupe(session, req, requested_at, target)? {
        ControlFlow::Continue(pending) => pending.decide(breaker_settings),
        ControlFlow::Break(end) => Ok(end),
    }
}

/// What the target of an action resolved to.
enum Resolved {
    Server(Box<ServerTarget>),
    /// The instance is known, active and reachable, but not the server:
    /// its listing may name it.
    Refresh(Box<instances::InstanceRow>),
    NoServer,
}

/// Resolve: the live server the target names.
fn resolve(
    session: &mut Session,
    req: &ActionRequest,
    may_refresh: bool,
) -> Result<Resolved, DbError> {
    let found = match &req.target {
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
                && breaker_closed(&row)
            {
                return Ok(Resolved::Refresh(Box::new(row)));
            }
            found
        }
    };
    Ok(found.map_or(Resolved::NoServer, |t| Resolved::Server(Box::new(t))))
}

/// Lock: under the server's lock a delivery of the same command waits for
/// this one, then finds its row. A drain or maint without force may meet
/// rule 10's guard: it takes its backend's guard lock at once too (one round
/// trip), whether or not the server turns out to be ready.
fn lock(session: &mut Session, req: &ActionRequest, target: &ServerTarget) -> Result<(), DbError> {
    if may_be_guarded(req) {
        session.lock_server_and_backend(target.server.id, target.server.backend_id)
    } else {
        session.lock_server(target.server.id)
    }
}

/// Dedupe: a row the transaction id already has ends a finished duplicate
/// or another command; otherwise the action carries on, with the server's
/// row read again under its lock.
fn dedupe<'a>(
    session: &'a mut Session,
    req: &'a ActionRequest,
    requested_at: DateTime<Utc>,
    target: ServerTarget,
) -> Result<ControlFlow<Prepared, Pending<'a>>, DbError> {
    let server_id = target.server.id;
    let existing = actions::get_by_transaction(session.conn(), req.transaction_id)?;
    if let Some(row) = existing.as_ref()
        && let Some(end) = check_existing(session, req, row, Some(server_id))?
    {
        return Ok(ControlFlow::Break(end));
    }
    if existing.is_none()
        && let Some(end) = hold_if_needed(session, req, requested_at, &target)?
    {
        return Ok(ControlFlow::Break(end));
    }
    // A recorded action runs at its row's time: an approved one at its
    // approval's (docs/approvals.md), whatever time a late duplicate of
    // its first command carries.
    let requested_at = existing.as_ref().map_or(requested_at, |r| r.requested_at);
    let server =
        inventory::server(session.conn(), server_id)?.unwrap_or_else(|| target.server.clone());
    Ok(ControlFlow::Continue(Pending {
        previous: server.state(),
        occurred_at: Utc::now(),
        batch_id: existing.as_ref().map_or(req.batch_id, |r| r.batch_id),
        existing_id: existing.as_ref().map(|r| r.id),
        new: new_action(req, requested_at, Some(server_id)),
        session,
        req,
        requested_at,
        target,
        server,
    }))
}

/// Approval (docs/approvals.md): a new command the policy matches is
/// recorded `awaiting_approval` with its approval, and ends here (its
/// `approval.requested` event is published, the message acked). The
/// actions of a batch (its approval covered the whole batch) and of system
/// actors are not asked about; a rollout's actions have rows already.
fn hold_if_needed(
    session: &mut Session,
    req: &ActionRequest,
    requested_at: DateTime<Utc>,
    target: &ServerTarget,
) -> Result<Option<Prepared>, DbError> {
    if req.batch_id.is_some() || approval::actor_is_exempt(&req.actor) {
        return Ok(None);
    }
    let policy = approvals::policy(session.conn())?;
    let place = approval::Place {
        instance: target.instance.name.clone(),
        backend: target.backend_name.clone(),
    };
    let rules = approval::evaluate(
        &policy,
        &approval::Subject::Action {
            action: req.action,
            force: req.force,
            place: &place,
        },
    );
    if rules.is_empty() {
        return Ok(None);
    }
    let new = new_action(req, requested_at, Some(target.server.id));
    let summary = crate::approvals::action_summary(&new, target);
    let held =
        crate::approvals::hold_action(session.conn(), &new, summary, rules, policy.ttl_secs)?;
    let Held::New(_, approval) = held else {
        return Ok(Some(Prepared::TransactionIdClaimedMeanwhile));
    };
    tracing::info!(approval_id = approval.id, "action held for approval");
    session.unlock_all()?;
    let event = crate::approvals::event(EventType::ApprovalRequested, &approval);
    Ok(Some(Prepared::Done {
        events: serde_json::to_value([event]).unwrap_or_default(),
        batch_id: None,
        ended: None,
    }))
}

/// An action under its locks, past dedupe: what the checks before the call
/// read, and how one that ends before the call is recorded ([`Self::end`]).
struct Pending<'a> {
    session: &'a mut Session,
    req: &'a ActionRequest,
    requested_at: DateTime<Utc>,
    target: ServerTarget,
    /// The server's row as read under its lock.
    server: ServerRow,
    previous: StatePair,
    /// When the events of an action that ends before the call occurred.
    occurred_at: DateTime<Utc>,
    batch_id: Option<i64>,
    /// The row of an earlier delivery that did not finish.
    existing_id: Option<i64>,
    new: NewAction,
}

impl Pending<'_> {
    /// The checks in DESIGN.md's order; the first that fails ends the
    /// action, else it is recorded as running.
    fn decide(mut self, breaker_settings: &BreakerSettings) -> Result<Prepared, DbError> {
        if let Some(outcome) = self.order().or_else(|| self.inactive()) {
            return self.end(outcome);
        }
        if let Some(outcome) = self.guard()? {
            return self.end(outcome);
        }
        let agent = match self.agent_target() {
            Ok(agent) => agent,
            Err(outcome) => return self.end(outcome),
        };
        if let Some(outcome) = self.breaker(breaker_settings)? {
            return self.end(outcome);
        }
        self.record(agent)
    }

    fn facts(&self) -> ActionFacts<'_> {
        ActionFacts {
            occurred_at: self.occurred_at,
            ..facts(self.req, Some(&self.target))
        }
    }

    /// Order (rule 3): a command older than the newest one applied to the
    /// server is superseded.
    fn order(&self) -> Option<Outcome> {
        let newest = self.server.last_requested_at?;
        if !is_superseded(self.requested_at, Some(newest)) {
            return None;
        }
        tracing::info!(status = "superseded", "action superseded");
        let detail = format!(
            "a command requested at {} was already applied",
            newest.to_rfc3339()
        );
        Some(Outcome {
            status: ActionStatus::Superseded,
            error: None,
            error_detail: Some(detail),
            events: serde_json::json!([self.facts().superseded(Some(self.previous))]),
        })
    }

    /// An inactive instance takes no command.
    fn inactive(&self) -> Option<Outcome> {
        let instance = &self.target.instance;
        (!instance.is_active).then(|| {
            let detail = format!("instance {} is not active", instance.name);
            failed(&self.facts(), FailureCode::Invalid, &detail)
        })
    }

    /// Guard (rule 10): taking a server out must not leave its backend
    /// without a ready server. Guarded actions in one backend run one at a
    /// time (the backend's lock is held until the outcome is committed), so
    /// two of them — or a whole batch — cannot empty it together.
    fn guard(&mut self) -> Result<Option<Outcome>, DbError> {
        if !guard_applies(self.req, &self.previous)
            || inventory::ready_servers_besides(
                self.session.conn(),
                self.server.backend_id,
                self.server.id,
            )? > 0
        {
            return Ok(None);
        }
        let detail = format!(
            "{} would leave backend {} with no ready server; send force: true to do it anyway",
            self.req.action, self.target.backend_name
        );
        tracing::info!(status = "rejected", "action rejected by the guard");
        Ok(Some(Outcome {
            status: ActionStatus::Rejected,
            error: None,
            error_detail: Some(detail.clone()),
            events: serde_json::json!([self.facts().rejected(&detail, self.previous)]),
        }))
    }

    /// Where the call goes. Names in the database came from HAProxy through
    /// the agent; they are parsed again before they go anywhere near a
    /// request path.
    fn agent_target(&self) -> Result<AgentTarget, Outcome> {
        agent_target(&self.target).map_err(|(code, detail)| failed(&self.facts(), code, &detail))
    }

    /// Breaker (rule 4). The instance row loaded with the target is fresh
    /// enough when it shows a closed breaker; otherwise the breaker decides
    /// (and may make this call its half-open probe).
    fn breaker(&mut self, settings: &BreakerSettings) -> Result<Option<Outcome>, DbError> {
        let instance = &self.target.instance;
        if breaker_closed(instance)
            || breaker::admission_on(self.session.conn(), instance.id, settings)?
        {
            return Ok(None);
        }
        let detail = format!("the circuit breaker of instance {} is open", instance.name);
        Ok(Some(failed(
            &self.facts(),
            FailureCode::CircuitOpen,
            &detail,
        )))
    }

    /// Record: the action is running, its first attempt counted.
    fn record(self, agent: AgentTarget) -> Result<Prepared, DbError> {
        let action_id = match self.existing_id {
            Some(id) => {
                actions::begin_attempt(self.session.conn(), id, true)?;
                id
            }
            None => {
                let row = NewAction {
                    status: ActionStatus::Running,
                    ..self.new
                };
                match actions::insert_started(self.session.conn(), &row)? {
                    Some(id) => id,
                    None => return Ok(Prepared::TransactionIdClaimedMeanwhile),
                }
            }
        };
        Ok(Prepared::Call(Box::new(Call {
            action_id,
            requested_at: self.requested_at,
            batch_id: self.batch_id,
            server: self.server,
            previous: self.previous,
            agent,
            target: self.target,
        })))
    }

    /// Ends the action before the call: its row is written (or finished)
    /// with the outcome, and the locks go.
    fn end(self, outcome: Outcome) -> Result<Prepared, DbError> {
        let events = outcome.events.clone();
        let outcome_status = outcome.status;
        match self.existing_id {
            Some(id) => actions::finish(self.session.conn(), id, &outcome)?,
            None => {
                let row = NewAction {
                    status: outcome.status,
                    ..self.new
                };
                if actions::insert_finished(self.session.conn(), &row, &outcome)?.is_none() {
                    return Ok(Prepared::TransactionIdClaimedMeanwhile);
                }
            }
        }
        self.session.unlock_all()?;
        Ok(Prepared::Done {
            events,
            batch_id: self.batch_id,
            ended: Some(outcome_status),
        })
    }
}

/// Where an action's call goes, or why it cannot go anywhere. Names in the
/// database came from HAProxy through the agent; they are parsed again
/// before they go anywhere near a request path.
pub(super) fn agent_target(target: &ServerTarget) -> Result<AgentTarget, (FailureCode, String)> {
    let names = BackendName::parse(&target.backend_name)
        .and_then(|b| Ok((b, ServerName::parse(&target.server.server_name)?)));
    let (backend, server_name) = names.map_err(|e| (FailureCode::Invalid, e.to_string()))?;
    let endpoint = agent_listing::endpoint(&target.instance)
        .map_err(|detail| (FailureCode::AgentError, detail))?;
    Ok(AgentTarget {
        endpoint,
        backend,
        server_name,
    })
}

/// The row an action is recorded with.
pub(super) fn new_action(
    req: &ActionRequest,
    requested_at: DateTime<Utc>,
    server_id: Option<i64>,
) -> NewAction {
    NewAction {
        transaction_id: req.transaction_id,
        server_id,
        batch_id: req.batch_id,
        action: req.action,
        status: ActionStatus::Pending,
        actor: req.actor.clone(),
        reason: req.reason.clone(),
        force: req.force,
        requested_at,
    }
}

/// Whether an instance's row shows a closed breaker.
pub(super) fn breaker_closed(instance: &instances::InstanceRow) -> bool {
    instance.breaker_state == BreakerState::Closed
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
        ended: Some(ActionStatus::Failed),
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
    // Held for approval: nothing until it is decided (its approval re-enters
    // the path with the same transaction id; a rejection ends it).
    if row.status == ActionStatus::AwaitingApproval {
        tracing::info!("duplicate of an action awaiting approval; nothing to do");
        session.unlock_all()?;
        return Ok(Some(Prepared::Done {
            events: serde_json::json!([]),
            batch_id: None,
            ended: None,
        }));
    }
    // A duplicate of a finished action: its final events again, nothing else.
    if row.status.is_final() {
        tracing::info!(status = %row.status, "duplicate of a finished action; re-publishing its events");
        session.unlock_all()?;
        return Ok(Some(Prepared::Done {
            events: row.events.clone(),
            batch_id: row.batch_id,
            ended: None,
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
pub(super) fn may_be_guarded(req: &ActionRequest) -> bool {
    req.action != crate::domain::AdminState::Ready && !req.force
}

/// Whether rule 10's guard applies: a `drain` or `maint` without `force` of
/// a server that is `ready` now.
pub(super) fn guard_applies(req: &ActionRequest, previous: &StatePair) -> bool {
    may_be_guarded(req) && previous.admin_state == crate::domain::AdminState::Ready
}

/// Calls the agent (the server is locked), then commits the outcome and
/// releases the locks. Returns the events to publish.
async fn apply(
    ctx: &WorkerContext,
    req: &ActionRequest,
    call: Call,
    mut lock: AdvisoryLocks,
) -> Result<serde_json::Value, InfraError> {
    let outcome = call_with_retries(ctx, req, &call, &mut lock, None).await?;
    let settled = settle(req, &call, outcome);
    let events = settled.events().clone();
    let status = settled.status();
    let instance_id = call.target.instance.id;
    // The outcome (with the breaker's success) and the unlock: one blocking call.
    let transition = lock.finish(move |c| settled.commit(c, instance_id)).await?;
    action_finished(req, call.requested_at, status);
    publish_breaker_transition(ctx, &call.target.instance, transition).await?;
    Ok(events)
}

/// What an action's call came to, ready to be committed.
pub(super) enum Settled {
    Failed { action_id: i64, outcome: Outcome },
    Succeeded(Success),
}

impl Settled {
    /// The final events, as stored.
    pub(super) fn events(&self) -> &serde_json::Value {
        match self {
            Settled::Failed { outcome, .. } => &outcome.events,
            Settled::Succeeded(success) => &success.events,
        }
    }

    pub(super) fn status(&self) -> ActionStatus {
        match self {
            Settled::Failed { .. } => ActionStatus::Failed,
            Settled::Succeeded(_) => ActionStatus::Success,
        }
    }

    /// Commits the outcome durably; a success records the breaker's success
    /// of the instance too.
    ///
    /// # Errors
    /// [`DbError`].
    pub(super) fn commit(
        self,
        conn: &mut diesel::PgConnection,
        instance_id: i64,
    ) -> Result<Transition, DbError> {
        match self {
            Settled::Failed { action_id, outcome } => {
                actions::finish(conn, action_id, &outcome)?;
                Ok(Transition::None)
            }
            Settled::Succeeded(s) => {
                let transition = breaker::record_success_on(conn, instance_id)?;
                actions::finish_success(conn, std::slice::from_ref(&s))?;
                Ok(transition)
            }
        }
    }
}

/// The outcome of an action's call: its final events, and on success the
/// server's state read back and, when it changed, its history row.
pub(super) fn settle(req: &ActionRequest, call: &Call, outcome: CallOutcome) -> Settled {
    let facts = facts(req, Some(&call.target));
    let changed_state = match outcome {
        Ok(changed) => changed,
        Err((code, detail)) => {
            tracing::info!(error = %code, detail = %detail, "action failed");
            return Settled::Failed {
                action_id: call.action_id,
                outcome: failed(&facts, code, &detail),
            };
        }
    };
    let previous = call.previous;
    let server = &changed_state.server;
    let current = StatePair {
        admin_state: server.admin_state,
        op_state: server.op_state,
    };
    let changed = current != previous;
    let mut events = vec![facts.succeeded(previous, current)];
    if changed {
        events.push(facts.state_changed(previous, current));
    }
    let requested_at = call.requested_at;
    let write = ServerWrite {
        server_id: call.server.id,
        admin_state: current.admin_state,
        op_state: current.op_state,
        weight: i32::try_from(server.weight).unwrap_or(i32::MAX),
        current_sessions: i64::try_from(server.current_sessions).unwrap_or(i64::MAX),
        check_status: server.check_status.clone(),
        last_requested_at: call
            .server
            .last_requested_at
            .map_or(requested_at, |t| t.max(requested_at)),
    };
    tracing::info!(
        status = "success",
        admin_state = %current.admin_state,
        op_state = %current.op_state,
        changed,
        "action applied"
    );
    Settled::Succeeded(Success {
        action_id: call.action_id,
        events: serde_json::to_value(&events).unwrap_or_default(),
        server: write,
        history: changed.then(|| HistoryWrite {
            previous,
            actor: req.actor.clone(),
        }),
    })
}

/// Counts an action that reached its final `status` (after its commit).
pub(super) fn action_finished(
    req: &ActionRequest,
    requested_at: DateTime<Utc>,
    status: ActionStatus,
) {
    let elapsed = (Utc::now() - requested_at).to_std().unwrap_or_default();
    crate::metrics::global().action_finished(req.action, status, elapsed);
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
    match agent_listing::refresh(&ctx.pool, &ctx.agents, instance, &ctx.template).await {
        Ok(r) => {
            tracing::info!(instance = %instance.name, counts = %r.counts, "loaded the instance's servers");
            if let Err(e) = publish_all(ctx, &r.events).await {
                tracing::warn!(error = %e, "could not publish the findings of a refresh");
            }
            let restores =
                agent_listing::publish_restores(&ctx.publisher, &ctx.topology, &r.restores);
            if let Err(e) = restores.await {
                tracing::warn!(error = %e, "could not publish restores; the sweeper will");
            }
        }
        Err(e) => {
            tracing::warn!(instance = %instance.name, error = %e, "could not load the instance's servers")
        }
    }
}

pub(super) type CallOutcome = Result<StateChanged, (FailureCode, String)>;

/// Calls the agent through the instance's breaker, retrying what may
/// succeed on retry (rule 5, waits from [`RetryPolicy::backoff`]). The
/// first attempt was admitted and counted by [`prepare`]; a success is
/// recorded with the outcome. `first_failed`: the first attempt was made
/// already (in a group's call) and failed so; carry on from there.
///
/// [`RetryPolicy::backoff`]: super::retry::RetryPolicy::backoff
pub(super) async fn call_with_retries(
    ctx: &WorkerContext,
    req: &ActionRequest,
    call: &Call,
    lock: &mut AdvisoryLocks,
    mut first_failed: Option<CallError>,
) -> Result<CallOutcome, InfraError> {
    let instance = &call.target.instance;
    let mut delays = ctx.retry.backoff();
    let mut last: Option<CallError> = None;
    let mut attempt = 1;
    loop {
        if attempt > 1 && !admit_retry(ctx, call, lock).await? {
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
        let result = match first_failed.take() {
            Some(e) => Err(e),
            None => call.agent.set_state(&ctx.agents, req).await,
        };
        let e = match result {
            Ok(changed) => return Ok(Ok(changed)),
            Err(e) => e,
        };
        tracing::warn!(attempt, error = %e, "agent call failed");
        record_call_failure(ctx, instance, &e, lock).await?;
        let delay = delays.next();
        let Some(delay) = delay.filter(|_| e.is_transient()) else {
            return Ok(Err((e.failure_code(), e.to_string())));
        };
        last = Some(e);
        tokio::time::sleep(delay).await;
        crate::metrics::global().action_retried();
        attempt += 1;
    }
}

/// Whether the breaker lets a retry go out; if so it is counted. Breaker
/// reads and writes go through the server lock's connection: an action
/// must not need a second pooled connection while it holds locks others
/// wait for (that exhausted the pool under load).
async fn admit_retry(
    ctx: &WorkerContext,
    call: &Call,
    lock: &mut AdvisoryLocks,
) -> Result<bool, DbError> {
    let (id, settings, action_id) = (call.target.instance.id, ctx.breaker.clone(), call.action_id);
    lock.run(move |c| {
        let admitted = breaker::admission_on(c, id, &settings)?;
        if admitted {
            actions::begin_attempt(c, action_id, false)?;
        }
        Ok(admitted)
    })
    .await
}

/// Records a failed call with the breaker: a call the agent answered (a
/// 4xx) shows a live agent, so it counts as a success.
async fn record_call_failure(
    ctx: &WorkerContext,
    instance: &instances::InstanceRow,
    e: &CallError,
    lock: &mut AdvisoryLocks,
) -> Result<(), InfraError> {
    let id = instance.id;
    let transition = if e.counts_for_breaker() {
        let settings = ctx.breaker.clone();
        lock.run(move |c| breaker::record_failure_on(c, id, &settings))
            .await?
    } else {
        lock.run(move |c| breaker::record_success_on(c, id)).await?
    };
    publish_breaker_transition(ctx, instance, transition).await?;
    Ok(())
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

/// Publishes a breaker transition (`instance.circuit_opened` or
/// `instance.circuit_closed`); nothing when the breaker did not move.
pub(crate) async fn publish_breaker_transition(
    ctx: &WorkerContext,
    instance: &instances::InstanceRow,
    transition: Transition,
) -> Result<(), PublishError> {
    let (kind, to) = match transition {
        Transition::None => return Ok(()),
        Transition::Opened => (EventType::InstanceCircuitOpened, "open"),
        Transition::Closed => (EventType::InstanceCircuitClosed, "closed"),
    };
    crate::metrics::global().breaker_transition(to);
    tracing::warn!(instance = %instance.name, event = kind.routing_key(), "circuit breaker transition");
    let event = circuit(kind, instance.id, &instance.name, Utc::now());
    ctx.publisher.publish_event(&ctx.topology, &event).await
}
