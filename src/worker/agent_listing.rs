//! Loading an instance's backends and servers from its agent: the sync's
//! reconcile, used by `instance add` and when a command names a server that
//! is not known yet.

use chrono::{DateTime, Utc};

use crate::db::locks::AdvisoryLocks;
use crate::db::{self, PgPool, instances::InstanceRow, sync as db_sync};
use crate::domain::event::Event;
use crate::domain::mapping::NameTemplate;
use crate::domain::reconcile;
use crate::fagent::client::{AgentClient, AgentEndpoint};
use crate::fagent::token_ref;

/// What one reconcile did.
#[derive(Debug, Clone)]
pub struct Reconciled {
    pub counts: serde_json::Value,
    pub events: Vec<Event>,
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
    let (counts, applied) = db::run(pool, move |c| {
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
        let applied = db_sync::apply(c, id, asked_at, &plan, &a, &t)?;
        Ok((counts, applied))
    })
    .await?;
    let mut counts = counts;
    counts["state_changes"] = serde_json::json!(applied.changed.len());
    counts["linked"] = serde_json::json!(applied.linked);
    let events =
        super::events::sync_findings(instance.id, &instance.name, &actor, asked_at, &applied);
    Ok(Reconciled { counts, events })
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
