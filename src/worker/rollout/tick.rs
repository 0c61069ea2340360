//! One tick of a rollout: read it, ask HAProxy (through the agents) what
//! the servers in a waiting step look like, plan in pure code
//! ([`crate::domain::rollout::tick::plan`]), write the plan if no other
//! tick got there first, then publish what it asked for: actions, hook
//! runs, events, and the next tick.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::events;
use crate::db::actions::NewAction;
use crate::db::rollouts::{
    self, BackendServer, RolloutRow, RolloutServerRow, RolloutWrite, ServerWrite, TargetInfo,
};
use crate::db::{self, DbError, instances};
use crate::domain::action::{ActionRequest, ActionStatus, Target};
use crate::domain::event::Event;
use crate::domain::rollout::tick::{RolloutChange, TickInput, TickServer, plan};
use crate::domain::rollout::{
    ActionOutcome, Live, Move, RolloutSpec, ServerView, Step, step_transaction_id,
};
use crate::domain::{AdminState, OpState};
use crate::queue::Disposition;
use crate::queue::message::{ActionMessage, RolloutHookRun, RolloutTick};
use crate::worker::{InfraError, WorkerContext, agent_listing};

/// A waiting action or hook run not taken up after this long is published
/// again (its first publish may have been lost; duplicates dedupe).
const REPUBLISH_AFTER_SECS: i64 = 10;

/// Everything a tick reads from PostgreSQL, in one blocking call.
pub struct Loaded {
    pub rollout: RolloutRow,
    /// The stored spec, or why it does not read.
    pub spec: Result<RolloutSpec, String>,
    pub servers: Vec<RolloutServerRow>,
    pub targets: HashMap<i64, TargetInfo>,
    pub outcomes: HashMap<uuid::Uuid, (ActionStatus, Option<String>)>,
    pub backend_servers: Vec<BackendServer>,
}

impl Loaded {
    fn read(c: &mut diesel::PgConnection, id: i64) -> Result<Option<Self>, DbError> {
        let Some(rollout) = rollouts::get(c, id)? else {
            return Ok(None);
        };
        let spec = serde_json::from_value::<RolloutSpec>(rollout.spec.clone())
            .map_err(|e| format!("rollout {id}: its stored spec does not read: {e}"));
        let servers = rollouts::servers(c, id)?;
        let maint = spec.as_ref().is_ok_and(|s| s.timings.maint_during_update);
        let txns: Vec<uuid::Uuid> = servers
            .iter()
            .filter_map(|s| entry_txn(&rollout, s, maint))
            .collect();
        let outcomes = rollouts::action_outcomes(c, &txns)?;
        let targets = rollouts::target_infos(c, id)?
            .into_iter()
            .map(|t| (t.row_id, t))
            .collect();
        let backends: Vec<i64> = servers
            .iter()
            .map(|s| s.backend_id)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let backend_servers = rollouts::backend_servers(c, &backends)?;
        Ok(Some(Loaded {
            rollout,
            spec,
            servers,
            targets,
            outcomes,
            backend_servers,
        }))
    }
}

/// The transaction id of the entry action of the server's current step.
fn entry_txn(r: &RolloutRow, s: &RolloutServerRow, maint: bool) -> Option<uuid::Uuid> {
    let (_, tag) = s.step.entry_action(maint)?;
    Some(step_transaction_id(
        r.transaction_id,
        s.server_id,
        tag,
        s.attempt,
    ))
}

/// Runs one tick.
///
/// # Errors
/// [`InfraError`] (the tick is retried).
pub async fn run(ctx: &WorkerContext, t: RolloutTick) -> Result<Disposition, InfraError> {
    let id = t.rollout_id;
    let Some(l) = db::run(&ctx.pool, move |c| Loaded::read(c, id)).await? else {
        return Ok(Disposition::DeadLetter(format!(
            "rollout {id} does not exist"
        )));
    };
    if l.rollout.tick_seq != t.seq || !l.rollout.status.ticks() {
        return Ok(Disposition::Ack);
    }
    let spec = match &l.spec {
        Ok(s) => s.clone(),
        Err(why) => return Ok(Disposition::DeadLetter(why.clone())),
    };
    let now = ctx.clock.now(&ctx.pool).await?;
    let live = read_live(ctx, &l).await?;
    let input = input(&l, &spec, &live, now);
    let planned = plan(&input);
    let effects = Effects::of(&l, &spec, &planned.moves, now);
    let write = RolloutWrite {
        status: planned.status,
        current_wave: planned.current_wave,
        wave_done_at: planned.wave_done_at,
        halted_reason: planned.changes.iter().find_map(|c| match c {
            RolloutChange::Halted(r) => Some(r.clone()),
            _ => None,
        }),
    };
    let (writes, actions) = (effects.writes.clone(), effects.new_actions.clone());
    let applied = db::run(&ctx.pool, move |c| {
        rollouts::apply_tick(c, id, t.seq, &write, &writes, &actions)
    })
    .await?;
    if !applied {
        return Ok(Disposition::Ack);
    }
    let mut all_events = effects.events;
    let failed = planned.moves.iter().find_map(|(i, m)| match m {
        Move::Fail(_) => l.servers.get(*i),
        _ => None,
    });
    all_events.extend(events::rollout_changes(&l, &planned.changes, failed, now));
    warn_no_check(&l, &input, &planned.moves);
    for cmd in effects
        .commands
        .iter()
        .chain(stale_actions(&l, &spec, now).iter())
    {
        ctx.publisher
            .publish_command(&ctx.topology, &ActionMessage::from(cmd))
            .await?;
    }
    for run in effects.hooks.iter().chain(stale_hooks(&l, now).iter()) {
        ctx.publisher.publish_hook_run(&ctx.topology, run).await?;
    }
    for e in &all_events {
        ctx.publisher.publish_event(&ctx.topology, e).await?;
    }
    for row_id in &effects.shutdowns {
        if let Some(t) = l.targets.get(row_id) {
            shutdown_sessions(ctx, t).await?;
        }
    }
    if planned.keep_ticking {
        let next = RolloutTick {
            rollout_id: id,
            seq: t.seq + 1,
        };
        ctx.publisher
            .publish_tick(&ctx.topology, &next, true)
            .await?;
    }
    Ok(Disposition::Ack)
}

/// What HAProxy says now of the servers in a step that reads it (draining:
/// sessions; updated: the check), one listing per instance. An agent that
/// cannot be read gives no reading (the step waits).
async fn read_live(ctx: &WorkerContext, l: &Loaded) -> Result<HashMap<i64, Live>, InfraError> {
    let wanted: Vec<&TargetInfo> = l
        .servers
        .iter()
        .filter(|s| matches!(s.step, Step::Draining | Step::Updated))
        .filter_map(|s| l.targets.get(&s.id))
        .collect();
    let mut by_instance: HashMap<i64, Vec<&TargetInfo>> = HashMap::new();
    for t in wanted {
        by_instance.entry(t.instance_id).or_default().push(t);
    }
    let mut live = HashMap::new();
    for (instance_id, targets) in by_instance {
        let Some(instance) = db::run(&ctx.pool, move |c| instances::get(c, instance_id)).await?
        else {
            continue;
        };
        let listing = match agent_listing::endpoint(&instance) {
            Ok(endpoint) => ctx.agents.backends(&endpoint).await,
            Err(e) => {
                tracing::warn!(instance = %instance.name, error = %e, "rollout: no agent endpoint");
                continue;
            }
        };
        let listing = match listing {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(instance = %instance.name, error = %e, "rollout: the agent could not be read; the step waits");
                continue;
            }
        };
        for t in targets {
            let found = listing
                .backends
                .iter()
                .filter(|b| b.name == t.backend_name)
                .flat_map(|b| b.servers.iter())
                .find(|s| s.name == t.server_name);
            if let Some(s) = found {
                live.insert(
                    t.server_id,
                    Live {
                        admin_state: s.admin_state,
                        op_state: s.op_state,
                        sessions: s.current_sessions,
                    },
                );
            }
        }
    }
    Ok(live)
}

/// Closes a draining server's remaining sessions through its agent
/// (`on_timeout: shutdown_sessions`). A failure is logged; the next tick
/// tries again.
async fn shutdown_sessions(ctx: &WorkerContext, t: &TargetInfo) -> Result<(), InfraError> {
    let id = t.instance_id;
    let Some(instance) = db::run(&ctx.pool, move |c| instances::get(c, id)).await? else {
        return Ok(());
    };
    let names = (
        crate::domain::BackendName::parse(&t.backend_name),
        crate::domain::ServerName::parse(&t.server_name),
    );
    let (Ok(backend), Ok(server)) = names else {
        tracing::warn!(server = %t.server_name, "rollout: a stored name does not parse; sessions left");
        return Ok(());
    };
    let done = match agent_listing::endpoint(&instance) {
        Ok(endpoint) => ctx
            .agents
            .shutdown_sessions(&endpoint, &backend, &server)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    match done {
        Ok(s) => tracing::warn!(
            server = %t.server_name, backend = %t.backend_name, sessions_left = s.current_sessions,
            "rollout: the drain timed out; sessions shut down"
        ),
        Err(e) => {
            tracing::warn!(server = %t.server_name, error = %e, "rollout: shutting sessions down failed; the next tick tries again")
        }
    }
    Ok(())
}

/// A server without checks passes the health gate at once: said in the log.
fn warn_no_check(l: &Loaded, input: &TickInput, moves: &[(usize, Move)]) {
    for (i, m) in moves {
        let live = input.servers.get(*i).and_then(|s| s.view.live);
        if *m == Move::To(Step::Healthy) && live.map(|v| v.op_state) == Some(OpState::NoCheck) {
            let name = l
                .servers
                .get(*i)
                .and_then(|s| l.targets.get(&s.id))
                .map(|t| t.server_name.as_str());
            tracing::warn!(
                rollout_id = l.rollout.id, server = ?name,
                "rollout: the server has no health check; the health gate passes it at once"
            );
        }
    }
}

/// The pure tick's input.
fn input(
    l: &Loaded,
    spec: &RolloutSpec,
    live: &HashMap<i64, Live>,
    now: DateTime<Utc>,
) -> TickInput {
    let maint = spec.timings.maint_during_update;
    let targets: HashSet<i64> = l.servers.iter().map(|s| s.server_id).collect();
    let ready_up =
        |b: &BackendServer| b.admin_state == AdminState::Ready && b.op_state != OpState::Down;
    let state: HashMap<i64, &BackendServer> = l.backend_servers.iter().map(|b| (b.id, b)).collect();
    let mut outside_ready: HashMap<i64, u32> = HashMap::new();
    for b in l
        .backend_servers
        .iter()
        .filter(|b| !targets.contains(&b.id) && ready_up(b))
    {
        *outside_ready.entry(b.backend_id).or_insert(0) += 1;
    }
    let servers = l
        .servers
        .iter()
        .map(|s| {
            let action = match entry_txn(&l.rollout, s, maint).map(|t| l.outcomes.get(&t)) {
                None => ActionOutcome::Waiting,
                Some(None) => ActionOutcome::Missing,
                Some(Some((ActionStatus::Success, _))) => ActionOutcome::Succeeded,
                Some(Some((ActionStatus::Pending | ActionStatus::Running, _))) => {
                    ActionOutcome::Waiting
                }
                Some(Some((status, error))) => ActionOutcome::Ended(format!(
                    "{status}{}",
                    error
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                )),
            };
            TickServer {
                backend_id: s.backend_id,
                wave: s.wave,
                is_ready_up: state.get(&s.server_id).is_some_and(|b| ready_up(b)),
                view: ServerView {
                    step: s.step,
                    step_started_at: s.step_started_at,
                    healthy_since: s.healthy_since,
                    action,
                    live: live.get(&s.server_id).copied(),
                    hook_exit_code: s.hook_exit_code,
                    hook_finished: s.hook_finished_at.is_some(),
                },
            }
        })
        .collect();
    TickInput {
        status: l.rollout.status,
        current_wave: l.rollout.current_wave,
        waves: l.rollout.waves,
        wave_done_at: l.rollout.wave_done_at,
        timings: spec.timings.clone(),
        now,
        servers,
        outside_ready,
    }
}

/// What a tick's moves ask for.
#[derive(Default)]
struct Effects {
    writes: Vec<ServerWrite>,
    new_actions: Vec<NewAction>,
    commands: Vec<ActionRequest>,
    hooks: Vec<RolloutHookRun>,
    events: Vec<Event>,
    /// Servers whose sessions are to be shut down (rollout server rows).
    shutdowns: Vec<i64>,
}

impl Effects {
    fn of(l: &Loaded, spec: &RolloutSpec, moves: &[(usize, Move)], now: DateTime<Utc>) -> Self {
        let mut e = Effects::default();
        let maint = spec.timings.maint_during_update;
        for (i, m) in moves {
            let Some(s) = l.servers.get(*i) else { continue };
            let target = l.targets.get(&s.id);
            match m {
                Move::Stay => {}
                Move::ShutdownSessions => e.shutdowns.push(s.id),
                Move::Reenter => e.ask_entry_action(l, s, maint, now),
                Move::HealthySince(t) => e.writes.push(ServerWrite {
                    id: s.id,
                    healthy_since: Some(Some(*t)),
                    ..ServerWrite::default()
                }),
                Move::NotHealthy => e.writes.push(ServerWrite {
                    id: s.id,
                    healthy_since: Some(None),
                    ..ServerWrite::default()
                }),
                Move::Fail(why) => {
                    e.writes.push(ServerWrite {
                        id: s.id,
                        step: Some(Step::Failed),
                        failed_step: Some(s.step),
                        error: Some(why.clone()),
                        ..ServerWrite::default()
                    });
                    e.events
                        .push(events::server_failed(&l.rollout, s, target, why, now));
                }
                Move::To(step) => e.enter(l, s, target, *step, maint, now),
            }
        }
        e
    }

    fn enter(
        &mut self,
        l: &Loaded,
        s: &RolloutServerRow,
        target: Option<&TargetInfo>,
        step: Step,
        maint: bool,
        now: DateTime<Utc>,
    ) {
        self.writes.push(ServerWrite {
            id: s.id,
            step: Some(step),
            healthy_since: Some(None),
            started: Some(now),
            finished: step == Step::Ready,
            ..ServerWrite::default()
        });
        self.ask(l, s, step, maint, now);
        if step == Step::Updating {
            self.hooks.push(RolloutHookRun {
                rollout_id: l.rollout.id,
                server_row_id: s.id,
                attempt: s.attempt,
            });
        }
        if let Some(e) = events::entered(&l.rollout, s, target, step, now) {
            self.events.push(e);
        }
    }
}

impl Effects {
    /// Records (pending) and publishes the entry action of `step`, if any.
    fn ask(
        &mut self,
        l: &Loaded,
        s: &RolloutServerRow,
        step: Step,
        maint: bool,
        now: DateTime<Utc>,
    ) {
        let Some((action, tag)) = step.entry_action(maint) else {
            return;
        };
        let request = step_action(&l.rollout, s, action, tag, now);
        self.new_actions.push(NewAction {
            transaction_id: request.transaction_id,
            server_id: Some(s.server_id),
            batch_id: None,
            action,
            status: ActionStatus::Pending,
            actor: request.actor.clone(),
            reason: request.reason.clone(),
            force: false,
            requested_at: now,
        });
        self.commands.push(request);
    }

    /// A resumed step: its action again, under the new attempt's id; the
    /// step starts again now.
    fn ask_entry_action(
        &mut self,
        l: &Loaded,
        s: &RolloutServerRow,
        maint: bool,
        now: DateTime<Utc>,
    ) {
        self.writes.push(ServerWrite {
            id: s.id,
            started: Some(now),
            ..ServerWrite::default()
        });
        self.ask(l, s, s.step, maint, now);
    }
}

/// The action command of a step.
fn step_action(
    r: &RolloutRow,
    s: &RolloutServerRow,
    action: AdminState,
    tag: &str,
    requested_at: DateTime<Utc>,
) -> ActionRequest {
    ActionRequest {
        transaction_id: step_transaction_id(r.transaction_id, s.server_id, tag, s.attempt),
        action,
        target: Target::ServerId(s.server_id),
        actor: r.actor.clone(),
        requested_at: Some(requested_at),
        reason: Some(format!("rollout {}: {tag}", r.id)),
        force: false,
        batch_id: None,
    }
}

fn waited(s: &RolloutServerRow, now: DateTime<Utc>) -> bool {
    s.step_started_at
        .is_some_and(|t| now.signed_duration_since(t).num_seconds() >= REPUBLISH_AFTER_SECS)
}

/// Entry actions recorded long ago and still pending: published again.
fn stale_actions(l: &Loaded, spec: &RolloutSpec, now: DateTime<Utc>) -> Vec<ActionRequest> {
    let maint = spec.timings.maint_during_update;
    l.servers
        .iter()
        .filter(|s| waited(s, now))
        .filter_map(|s| {
            let (action, tag) = s.step.entry_action(maint)?;
            let txn = step_transaction_id(l.rollout.transaction_id, s.server_id, tag, s.attempt);
            let (status, _) = l.outcomes.get(&txn)?;
            (*status == ActionStatus::Pending).then(|| {
                // The step started when its action was recorded: the same time.
                step_action(&l.rollout, s, action, tag, s.step_started_at.unwrap_or(now))
            })
        })
        .collect()
}

/// Hooks asked for long ago and not started: published again.
fn stale_hooks(l: &Loaded, now: DateTime<Utc>) -> Vec<RolloutHookRun> {
    l.servers
        .iter()
        .filter(|s| s.step == Step::Updating && s.hook_started_at.is_none() && waited(s, now))
        .map(|s| RolloutHookRun {
            rollout_id: l.rollout.id,
            server_row_id: s.id,
            attempt: s.attempt,
        })
        .collect()
}
