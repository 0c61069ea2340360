//! Actions in groups (docs/architecture.md, "Actions in groups"). The
//! commands a consumer had ready together go through the action path's
//! phases together: one statement resolves them all, one takes every lock,
//! one reads the rows their transaction ids have, one the servers under
//! their locks, one records them running; one call per agent sends them to
//! HAProxy; one statement commits every outcome and the locks go.
//!
//! Only what runs the common way goes with the group: a command that would
//! end before its call (unknown server, duplicate, held for approval,
//! superseded, inactive instance, guard, breaker not closed) or that shares
//! a server or transaction id with an earlier one of the group is left to
//! the one-by-one path ([`super::action`]), which runs it once the group's
//! locks are gone — so every rule is decided by the code that decides it
//! for one command. A call that fails in a group carries on with that
//! path's retries, one action after the other, on the group's connection.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use futures::future::join_all;
use uuid::Uuid;

use super::action::{
    Call, Settled, action_finished, agent_target, breaker_closed, call_with_retries, guard_applies,
    may_be_guarded, new_action, publish_breaker_transition, settle, span,
};
use super::breaker::{self, Transition};
use super::{Commanded, InfraError, WorkerContext};
use crate::db::action_groups;
use crate::db::actions::{self, ActionRow, NewAction, Success};
use crate::db::approvals;
use crate::db::inventory::ServerTarget;
use crate::db::locks::{AdvisoryLocks, Session};
use crate::db::{DbError, instances};
use crate::domain::action::{
    ActionRequest, ActionStatus, Target, check_requested_at, is_superseded,
};
use crate::domain::action_group::{GuardItem, first_of_each, guard_admits};
use crate::domain::approval;
use crate::fagent::client::{AgentEndpoint, CallError};
use crate::fagent::wire::{MAX_STATE_CHANGES, StateChange, StateChanged};
use crate::queue::Disposition;

/// A command of the group, before its checks.
struct Candidate {
    /// Its place in the group.
    index: usize,
    req: ActionRequest,
    requested_at: DateTime<Utc>,
    /// The `pending` row the API, a batch, a rollout or an approval
    /// recorded for it (found under its server's lock).
    pending_id: Option<i64>,
}

/// A command of the group that calls its agent: recorded running, its
/// locks held by the group's session.
struct GroupCall {
    index: usize,
    req: ActionRequest,
    call: Call,
    pending_id: Option<i64>,
}

/// An action of the group whose outcome is committed.
struct Finished {
    index: usize,
    events: serde_json::Value,
    batch_id: Option<i64>,
}

/// Processes a group of action commands: `Some` for the commands the group
/// finished (committed, events published), `None` for those it leaves to
/// the one-by-one path.
///
/// # Errors
/// [`InfraError`]: the commands not finished yet are then left to the
/// one-by-one path, which finds what the group recorded (rule 1).
pub(super) async fn process(
    ctx: &WorkerContext,
    commands: &[&Commanded<ActionRequest>],
) -> Result<Vec<Option<Disposition>>, InfraError> {
    let mut dispositions = vec![None; commands.len()];
    for c in commands {
        super::record_callback(
            ctx,
            c.request.transaction_id,
            crate::domain::webhook::CallbackKind::Action,
            c.callback_url.as_ref(),
        )
        .await?;
    }
    let now = ctx.clock.now(&ctx.pool).await?;
    let candidates = candidates(commands, now, ctx.clock_tolerance_secs);
    if candidates.len() < 2 {
        return Ok(dispositions);
    }
    let _slot = ctx.action_slots.acquire_for_group().await;
    let (lock, calls) =
        AdvisoryLocks::open(&ctx.pool, move |session| plan(session, candidates)).await?;
    crate::metrics::global().action_group(commands.len(), calls.len());
    if calls.is_empty() {
        lock.release().await;
        return Ok(dispositions);
    }
    let results = call_agents(ctx, &calls).await;
    // The successes are committed and announced first; calls that failed
    // then retry (with the one-by-one path's waits) without holding them up.
    let (mut finished, failures) = finish(ctx, calls, results, lock).await?;
    publish(ctx, &finished).await?;
    if let Some((mut lock, failed)) = failures {
        let mut retried = Vec::with_capacity(failed.len());
        for (g, e) in failed {
            let span = span(&g.req);
            let done = retry_failed(ctx, &g, e, &mut lock);
            retried.push(tracing::Instrument::instrument(done, span).await?);
        }
        lock.release().await;
        publish(ctx, &retried).await?;
        finished.extend(retried);
    }
    let batches: HashSet<i64> = finished.iter().filter_map(|f| f.batch_id).collect();
    for batch_id in batches {
        super::batch::completed(ctx, batch_id).await?;
    }
    for f in finished {
        if let Some(d) = dispositions.get_mut(f.index) {
            *d = Some(Disposition::Ack);
        }
    }
    Ok(dispositions)
}

/// Publishes the final events of finished actions, all before any confirm
/// is awaited.
async fn publish(ctx: &WorkerContext, finished: &[Finished]) -> Result<(), InfraError> {
    let published = join_all(
        finished
            .iter()
            .map(|f| ctx.publisher.publish_stored(&ctx.topology, &f.events)),
    )
    .await;
    published.into_iter().collect::<Result<(), _>>()?;
    Ok(())
}

/// The commands that may go with the group: a `requested_at` within the
/// clock's tolerance (the one-by-one path dead-letters the others), and
/// the first of each target and of each transaction id.
fn candidates(
    commands: &[&Commanded<ActionRequest>],
    now: DateTime<Utc>,
    tolerance_secs: u64,
) -> Vec<Candidate> {
    let keys = commands.iter().map(|c| {
        vec![
            Key::Target(c.request.target.clone()),
            Key::Transaction(c.request.transaction_id),
        ]
    });
    let first = first_of_each(keys);
    commands
        .iter()
        .enumerate()
        .filter(|(i, _)| first.get(*i).copied().unwrap_or(false))
        .filter_map(|(index, c)| {
            let req = &c.request;
            let requested_at = match req.requested_at {
                None => now,
                Some(at) => check_requested_at(at, now, tolerance_secs)
                    .ok()
                    .map(|()| at)?,
            };
            Some(Candidate {
                index,
                req: req.clone(),
                requested_at,
                pending_id: None,
            })
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Target(Target),
    Transaction(Uuid),
    Server(i64),
}

/// Everything before the calls, on one connection in one blocking call:
/// resolve, lock, dedupe, approval, the checks, the guard, record. What
/// does not go on is left (its lock, if taken, goes with the group's).
fn plan(session: &mut Session, candidates: Vec<Candidate>) -> Result<Vec<GroupCall>, DbError> {
    let resolved = resolve(session, candidates)?;
    if resolved.is_empty() {
        return Ok(Vec::new());
    }
    let server_ids: Vec<i64> = resolved.iter().map(|(_, t)| t.server.id).collect();
    let guarded_backends: Vec<i64> = resolved
        .iter()
        .filter(|(c, _)| may_be_guarded(&c.req))
        .map(|(_, t)| t.server.backend_id)
        .collect();
    session.lock_many(&server_ids, &guarded_backends)?;
    let resolved = new_and_not_held(session, resolved)?;
    let mut rows = action_groups::servers(session.conn(), &server_ids)?;
    // Order, activity, agent target, breaker: as the one-by-one path decides
    // them, the checks that would end an action leave it to that path.
    let mut going: Vec<GroupCall> = Vec::with_capacity(resolved.len());
    for (c, target) in resolved {
        let Some(server) = rows.remove(&target.server.id) else {
            continue;
        };
        let runs = !is_superseded(c.requested_at, server.last_requested_at)
            && target.instance.is_active
            && breaker_closed(&target.instance);
        let Some(agent) = runs.then(|| agent_target(&target).ok()).flatten() else {
            continue;
        };
        let call = Call {
            action_id: 0,
            requested_at: c.requested_at,
            batch_id: c.req.batch_id,
            previous: server.state(),
            server,
            agent,
            target,
        };
        going.push(GroupCall {
            index: c.index,
            req: c.req,
            call,
            pending_id: c.pending_id,
        });
    }
    let going = guarded(session, going)?;
    record(session, going)
}

/// The live server of each candidate; one that names none, or a server an
/// earlier candidate has, is left.
fn resolve(
    session: &mut Session,
    candidates: Vec<Candidate>,
) -> Result<Vec<(Candidate, ServerTarget)>, DbError> {
    let mut ids = Vec::new();
    let (mut instances, mut backends, mut servers) = (Vec::new(), Vec::new(), Vec::new());
    for c in &candidates {
        match &c.req.target {
            Target::ServerId(id) => ids.push(*id),
            Target::Names {
                instance,
                backend,
                server,
            } => {
                instances.push(instance.as_str());
                backends.push(backend.as_str());
                servers.push(server.as_str());
            }
        }
    }
    let mut found = Vec::new();
    if !ids.is_empty() {
        found.extend(action_groups::find_servers(session.conn(), &ids)?);
    }
    if !instances.is_empty() {
        found.extend(action_groups::find_servers_by_names(
            session.conn(),
            &instances,
            &backends,
            &servers,
        )?);
    }
    let by_id: HashMap<i64, &ServerTarget> = found.iter().map(|t| (t.server.id, t)).collect();
    let by_names: HashMap<(&str, &str, &str), &ServerTarget> = found
        .iter()
        .map(|t| {
            let names = (
                t.instance.name.as_str(),
                t.backend_name.as_str(),
                t.server.server_name.as_str(),
            );
            (names, t)
        })
        .collect();
    let targets: Vec<Option<ServerTarget>> = candidates
        .iter()
        .map(|c| {
            let found = match &c.req.target {
                Target::ServerId(id) => by_id.get(id),
                Target::Names {
                    instance,
                    backend,
                    server,
                } => by_names.get(&(instance.as_str(), backend.as_str(), server.as_str())),
            };
            found.map(|t| (*t).clone())
        })
        .collect();
    let first = first_of_each(
        targets
            .iter()
            .map(|t| t.iter().map(|t| Key::Server(t.server.id)).collect()),
    );
    Ok(candidates
        .into_iter()
        .zip(targets)
        .zip(first)
        .filter_map(|((c, t), first)| Some((c, t.filter(|_| first)?)))
        .collect())
}

/// Dedupe and approval. A transaction id with a `pending` row for the same
/// action on the same server (recorded by the API, a batch, a rollout or
/// an approval) goes on as that row, at its `requested_at` and in its
/// batch; one with any other row (a duplicate, a command under another's
/// id, an action a dead worker left running) is left. A new command the
/// approval policy holds is left.
fn new_and_not_held(
    session: &mut Session,
    resolved: Vec<(Candidate, ServerTarget)>,
) -> Result<Vec<(Candidate, ServerTarget)>, DbError> {
    let ids: Vec<Uuid> = resolved.iter().map(|(c, _)| c.req.transaction_id).collect();
    let recorded: HashMap<Uuid, ActionRow> =
        action_groups::actions_by_transaction(session.conn(), &ids)?
            .into_iter()
            .map(|row| (row.transaction_id, row))
            .collect();
    let asks =
        |req: &ActionRequest| req.batch_id.is_none() && !approval::actor_is_exempt(&req.actor);
    let policy = if resolved
        .iter()
        .any(|(c, _)| asks(&c.req) && !recorded.contains_key(&c.req.transaction_id))
    {
        Some(approvals::policy(session.conn())?)
    } else {
        None
    };
    Ok(resolved
        .into_iter()
        .filter_map(|(mut c, target)| {
            if let Some(row) = recorded.get(&c.req.transaction_id) {
                let same = row.status == ActionStatus::Pending
                    && row.action == c.req.action
                    && row.server_id == Some(target.server.id);
                if !same {
                    return None;
                }
                c.pending_id = Some(row.id);
                c.requested_at = row.requested_at;
                c.req.batch_id = row.batch_id;
                return Some((c, target));
            }
            let held = policy
                .as_ref()
                .filter(|_| asks(&c.req))
                .is_some_and(|policy| {
                    let place = approval::Place {
                        instance: target.instance.name.clone(),
                        backend: target.backend_name.clone(),
                    };
                    let subject = approval::Subject::Action {
                        action: c.req.action,
                        force: c.req.force,
                        place: &place,
                    };
                    !approval::evaluate(policy, &subject).is_empty()
                });
            (!held).then_some((c, target))
        })
        .collect())
}

/// Rule 10 for the group ([`guard_admits`]): the backends' locks are held,
/// so the ready servers counted stay so, but for the group's own drains.
fn guarded(session: &mut Session, going: Vec<GroupCall>) -> Result<Vec<GroupCall>, DbError> {
    let items: Vec<GuardItem> = going
        .iter()
        .map(|g| GuardItem {
            backend_id: g.call.server.backend_id,
            applies: guard_applies(&g.req, &g.call.previous),
        })
        .collect();
    let backends: Vec<i64> = items
        .iter()
        .filter(|i| i.applies)
        .map(|i| i.backend_id)
        .collect();
    if backends.is_empty() {
        return Ok(going);
    }
    let ready = action_groups::ready_servers(session.conn(), &backends)?;
    let admitted = guard_admits(&items, &ready);
    Ok(going
        .into_iter()
        .zip(admitted)
        .filter_map(|(g, admitted)| admitted.then_some(g))
        .collect())
}

/// Records the group's actions running, first attempt counted: new ones
/// with one `INSERT`, `pending` rows with one `UPDATE`. One whose
/// transaction id got a row meanwhile (or whose row left `pending`) is left.
fn record(session: &mut Session, going: Vec<GroupCall>) -> Result<Vec<GroupCall>, DbError> {
    if going.is_empty() {
        return Ok(going);
    }
    let rows: Vec<NewAction> = going
        .iter()
        .filter(|g| g.pending_id.is_none())
        .map(|g| NewAction {
            status: ActionStatus::Running,
            ..new_action(&g.req, g.call.requested_at, Some(g.call.server.id))
        })
        .collect();
    let inserted = if rows.is_empty() {
        HashMap::new()
    } else {
        action_groups::insert_started(session.conn(), &rows)?
    };
    let pending: Vec<i64> = going.iter().filter_map(|g| g.pending_id).collect();
    let started: HashSet<i64> = if pending.is_empty() {
        HashSet::new()
    } else {
        action_groups::start_pending(session.conn(), &pending)?
    };
    Ok(going
        .into_iter()
        .filter_map(|mut g| {
            g.call.action_id = match g.pending_id {
                Some(id) => started.contains(&id).then_some(id)?,
                None => *inserted.get(&g.req.transaction_id)?,
            };
            Some(g)
        })
        .collect())
}

/// One call per agent for the group's actions at its instance (one action
/// alone: the single-server call); each action's answer, in order. An
/// agent without the bulk call (it answers 404 `not_found` for the path)
/// gets one call per action.
async fn call_agents(
    ctx: &WorkerContext,
    calls: &[GroupCall],
) -> Vec<Result<StateChanged, CallError>> {
    let mut by_instance: HashMap<i64, Vec<usize>> = HashMap::new();
    for (i, g) in calls.iter().enumerate() {
        by_instance
            .entry(g.call.target.instance.id)
            .or_default()
            .push(i);
    }
    let answers = join_all(by_instance.into_values().map(|positions| async move {
        let group: Vec<&GroupCall> = positions.iter().filter_map(|p| calls.get(*p)).collect();
        (positions, call_agent(ctx, &group).await)
    }))
    .await;
    let mut results: Vec<Option<Result<StateChanged, CallError>>> = vec![None; calls.len()];
    for (positions, answers) in answers {
        for (p, answer) in positions.into_iter().zip(answers) {
            if let Some(slot) = results.get_mut(p) {
                *slot = Some(answer);
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(CallError::Decode("no answer for this action".into()))))
        .collect()
}

/// The calls of one instance's actions: bulk calls of at most
/// [`MAX_STATE_CHANGES`] changes (what an agent takes in one), one after
/// the other.
async fn call_agent(
    ctx: &WorkerContext,
    group: &[&GroupCall],
) -> Vec<Result<StateChanged, CallError>> {
    let mut answers = Vec::with_capacity(group.len());
    for chunk in group.chunks(MAX_STATE_CHANGES) {
        answers.extend(call_agent_once(ctx, chunk).await);
    }
    answers
}

/// One bulk call (one action alone: the single-server call).
async fn call_agent_once(
    ctx: &WorkerContext,
    group: &[&GroupCall],
) -> Vec<Result<StateChanged, CallError>> {
    let Some(first) = group.first() else {
        return Vec::new();
    };
    let endpoint: &AgentEndpoint = &first.call.agent.endpoint;
    if group.len() > 1 {
        let changes: Vec<StateChange> = group
            .iter()
            .map(|g| StateChange {
                backend: g.call.agent.backend.to_string(),
                server: g.call.agent.server_name.to_string(),
                state: g.req.action,
                transaction_id: g.req.transaction_id,
            })
            .collect();
        match ctx.agents.set_states(endpoint, &changes).await {
            Ok(answers) => return answers,
            Err(CallError::Client {
                status: 404, code, ..
            }) if code == "not_found" => {
                tracing::debug!("the agent has no bulk call; one call per action");
            }
            Err(e) => return vec![Err(e); group.len()],
        }
    }
    join_all(
        group
            .iter()
            .map(|g| g.call.agent.set_state(&ctx.agents, &g.req)),
    )
    .await
}

/// The calls that failed, and the group's locks, which they keep.
type Failures = Option<(AdvisoryLocks, Vec<(GroupCall, CallError)>)>;

/// Commits the group's successes (and their instances' breaker successes)
/// in one blocking call — with the unlock when nothing failed; otherwise
/// the failed calls come back with the locks, to carry on with the
/// one-by-one path's retries ([`retry_failed`]).
async fn finish(
    ctx: &WorkerContext,
    calls: Vec<GroupCall>,
    results: Vec<Result<StateChanged, CallError>>,
    mut lock: AdvisoryLocks,
) -> Result<(Vec<Finished>, Failures), InfraError> {
    let mut succeeded = Vec::new();
    let mut failed = Vec::new();
    for (g, result) in calls.into_iter().zip(results) {
        let span = span(&g.req);
        match result {
            Ok(changed) => {
                let settled = span.in_scope(|| settle(&g.req, &g.call, Ok(changed)));
                if let Settled::Succeeded(success) = settled {
                    succeeded.push((g, success));
                }
            }
            Err(e) => failed.push((g, e)),
        }
    }
    let instances: Vec<&instances::InstanceRow> = {
        let mut seen = HashSet::new();
        succeeded
            .iter()
            .map(|(g, _)| &g.call.target.instance)
            .filter(|i| seen.insert(i.id))
            .collect()
    };
    let instance_ids: Vec<i64> = instances.iter().map(|i| i.id).collect();
    let successes: Vec<Success> = succeeded.iter().map(|(_, s)| s.clone()).collect();
    let commit = move |c: &mut diesel::PgConnection| {
        let transitions = instance_ids
            .iter()
            .map(|id| breaker::record_success_on(c, *id))
            .collect::<Result<Vec<Transition>, DbError>>()?;
        actions::finish_success(c, &successes)?;
        Ok(transitions)
    };
    let (transitions, held) = if failed.is_empty() {
        (lock.finish(commit).await?, None)
    } else {
        (lock.run(commit).await?, Some(lock))
    };
    for (instance, transition) in instances.iter().zip(transitions) {
        publish_breaker_transition(ctx, instance, transition).await?;
    }
    let finished: Vec<Finished> = succeeded
        .into_iter()
        .map(|(g, success)| {
            action_finished(&g.req, g.call.requested_at, ActionStatus::Success);
            Finished {
                index: g.index,
                events: success.events,
                batch_id: g.call.batch_id,
            }
        })
        .collect();
    Ok((finished, held.map(|lock| (lock, failed))))
}

/// A call that failed in the group: the one-by-one path's retries from its
/// second attempt (rule 5, through the breaker), then its outcome committed.
async fn retry_failed(
    ctx: &WorkerContext,
    g: &GroupCall,
    e: CallError,
    lock: &mut AdvisoryLocks,
) -> Result<Finished, InfraError> {
    let outcome = call_with_retries(ctx, &g.req, &g.call, lock, Some(e)).await?;
    let settled = settle(&g.req, &g.call, outcome);
    let events = settled.events().clone();
    let status = settled.status();
    let instance_id = g.call.target.instance.id;
    let transition = lock.run(move |c| settled.commit(c, instance_id)).await?;
    action_finished(&g.req, g.call.requested_at, status);
    publish_breaker_transition(ctx, &g.call.target.instance, transition).await?;
    Ok(Finished {
        index: g.index,
        events,
        batch_id: g.call.batch_id,
    })
}
