//! Loading an instance's backends and servers from its agent: the sync's
//! reconcile, used by `instance add` and when a command names a server that
//! is not known yet.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use diesel::Connection as _;

use crate::db::locks::AdvisoryLocks;
use crate::db::{self, PgPool, instances::InstanceRow, reload as db_reload, sync as db_sync};
use crate::domain::action::{ActionRequest, Target};
use crate::domain::event::{Event, NamedRef, RestoreRef};
use crate::domain::mapping::NameTemplate;
use crate::domain::reconcile;
use crate::domain::reload::{self, ProcessChange, ProcessIdentity, ResetServer, Restore};
use crate::fagent::client::{AgentClient, AgentEndpoint};
use crate::fagent::token_ref;
use crate::queue::message::ActionMessage;
use crate::queue::publisher::{PublishError, Publisher};
use crate::queue::topology::Topology;

/// What one reconcile did.
#[derive(Debug, Clone)]
pub struct Reconciled {
    pub counts: serde_json::Value,
    pub events: Vec<Event>,
    /// Commands that re-apply states a reload reset (recorded `pending`;
    /// the caller publishes them after the events).
    pub restores: Vec<ActionRequest>,
}

/// Fetches the agent's listing and reconciles it under the instance's sync
/// lock (waiting for a running sync). Returns the counts and the events to
/// publish.
///
/// # Errors
/// A readable message (agent or database).
pub async fn refresh(
    pool: &PgPool,
    agents: &AgentClient,
    instance: &InstanceRow,
    template: &NameTemplate,
) -> Result<Reconciled, String> {
    let endpoint = endpoint(instance)?;
    let asked_at = db::run(pool, db::database_now)
        .await
        .map_err(|e| e.to_string())?;
    let listing = agents
        .backends(&endpoint)
        .await
        .map_err(|e| e.to_string())?;
    let lock = AdvisoryLocks::instance(pool, instance.id)
        .await
        .map_err(|e| e.to_string())?;
    let result = reconcile_listing(pool, instance, listing, asked_at, template).await;
    lock.release().await;
    result.map_err(|e| e.to_string())
}

/// Diffs a listing against PostgreSQL in pure code and applies the plan in
/// one transaction. The caller holds the instance's sync lock.
///
/// `asked_at` is the database's clock ([`db::database_now`]) read before the
/// agent was asked for the listing: the snapshot is at least that new. Rule
/// 6 compares it with the `state_written_at` of actions, a time from the same
/// clock; the agent's own `fetched_at` is from another machine's clock and is
/// not used for the rule.
///
/// # Errors
/// [`db::DbError`].
pub async fn reconcile_listing(
    pool: &PgPool,
    instance: &InstanceRow,
    listing: crate::fagent::wire::Backends,
    asked_at: DateTime<Utc>,
    template: &NameTemplate,
) -> Result<Reconciled, db::DbError> {
    let id = instance.id;
    let actor = format!("haproxy:{}", instance.name);
    let (a, t) = (actor.clone(), template.clone());
    let seen = listing.haproxy_process.map(|p| ProcessIdentity {
        pid: p.pid,
        started_at: p.started_at,
    });
    let (counts, applied, reload) = db::run(pool, move |c| {
        c.transaction(|c| {
            let (backends, servers) = db_sync::load(c, id)?;
            let plan = reconcile::plan(&backends, &servers, asked_at, &listing.backends);
            let counts = serde_json::json!({
                "servers_seen": listing.backends.iter().map(|b| b.servers.len()).sum::<usize>(),
                "new": plan.new_servers.len(),
                "updated": plan.updates.len(),
                "removed": plan.removed_servers.len(),
                "unchanged": plan.unchanged,
                "kept_states": plan.kept_states,
            });
            let (stored, restore_after_reload) = db_reload::stored_process(c, id)?;
            let change = reload::compare(stored, seen);
            let restoring = restore_after_reload && change.is_reload();
            let by_action = if restoring {
                db_reload::last_written_by_action(c, &admin_changes(&plan))?
            } else {
                HashSet::new()
            };
            let applied = db_sync::apply(c, id, asked_at, &plan, &a, &t)?;
            db_reload::record_process(c, id, seen, change)?;
            let reload = match (change, seen) {
                (ProcessChange::Reloaded { previous }, Some(current)) => {
                    let restores = restoring.then(|| {
                        reload::restores(id, current, &reset_servers(&applied, &by_action))
                    });
                    if let Some(r) = &restores {
                        let why = restore_reason(previous, current);
                        db_reload::record_restores(c, r, asked_at, &why)?;
                    }
                    Some((previous, current, restores))
                }
                _ => None,
            };
            Ok::<_, db::DbError>((counts, applied, reload))
        })
    })
    .await?;
    let mut counts = counts;
    counts["state_changes"] = serde_json::json!(applied.changed.len());
    counts["linked"] = serde_json::json!(applied.linked);
    let mut events =
        super::events::sync_findings(instance.id, &instance.name, &actor, asked_at, &applied);
    let mut restores = Vec::new();
    if let Some((previous, current, restored)) = reload {
        counts["reloaded"] = serde_json::json!(true);
        tracing::warn!(
            instance = %instance.name, previous_pid = previous.pid, pid = current.pid,
            restores = restored.as_ref().map_or(0, Vec::len),
            "HAProxy was reloaded since the last sync"
        );
        let named = NamedRef {
            id,
            name: instance.name.clone(),
        };
        let refs = restored
            .as_ref()
            .map(|r| r.iter().map(restore_ref).collect());
        // The reload first, then the state changes it caused.
        events.insert(
            0,
            super::events::instance_reloaded(&named, previous, current, asked_at, refs),
        );
        restores = restored
            .unwrap_or_default()
            .iter()
            .map(|r| restore_command(r, asked_at, restore_reason(previous, current)))
            .collect();
    }
    Ok(Reconciled {
        counts,
        events,
        restores,
    })
}

/// The servers whose admin state the plan changes.
fn admin_changes(plan: &reconcile::Plan) -> Vec<i64> {
    plan.updates
        .iter()
        .filter(|u| {
            u.state_change
                .is_some_and(|(before, now)| before.admin_state != now.admin_state)
        })
        .map(|u| u.id)
        .collect()
}

/// The state changes the sync applied, as a restore sees them.
fn reset_servers(applied: &db_sync::Applied, by_action: &HashSet<i64>) -> Vec<ResetServer> {
    applied
        .changed
        .iter()
        .filter_map(|f| {
            Some(ResetServer {
                server_id: f.server_id,
                before: f.previous?.admin_state,
                now: f.current.admin_state,
                before_written_by_action: by_action.contains(&f.server_id),
            })
        })
        .collect()
}

fn restore_ref(r: &Restore) -> RestoreRef {
    RestoreRef {
        server_id: r.server_id,
        action: r.action,
        transaction_id: r.transaction_id,
    }
}

/// The reason recorded on a restore action.
fn restore_reason(previous: ProcessIdentity, current: ProcessIdentity) -> String {
    format!(
        "re-applied after HAProxy was reloaded (pid {} -> {})",
        previous.pid, current.pid
    )
}

/// The action command of a recorded restore (the row's fields exactly).
fn restore_command(r: &Restore, requested_at: DateTime<Utc>, reason: String) -> ActionRequest {
    ActionRequest {
        transaction_id: r.transaction_id,
        action: r.action,
        target: Target::ServerId(r.server_id),
        actor: reload::RESTORE_ACTOR.to_owned(),
        requested_at: Some(requested_at),
        reason: Some(reason),
        force: true,
        batch_id: None,
    }
}

/// Publishes the commands of recorded restores.
///
/// # Errors
/// [`PublishError`]; the restores stay `pending` for the sweeper.
pub async fn publish_restores(
    publisher: &Publisher,
    topology: &Topology,
    restores: &[ActionRequest],
) -> Result<(), PublishError> {
    for r in restores {
        publisher
            .publish_command(topology, &ActionMessage::from(r))
            .await?;
    }
    Ok(())
}

/// The agent's address and token.
///
/// # Errors
/// When the token reference cannot be resolved.
pub fn endpoint(instance: &InstanceRow) -> Result<AgentEndpoint, String> {
    Ok(AgentEndpoint {
        base_url: instance.fagent_url.clone(),
        token: token_ref::resolve(&instance.fagent_token_ref)
            .map_err(|e| format!("instance {}: {e}", instance.name))?,
    })
}
