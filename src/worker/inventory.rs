//! Loading an instance's backends and servers from its agent with a plain
//! upsert (until the full sync exists).

use crate::db::PgPool;
use crate::db::{self, instances::InstanceRow, inventory};
use crate::fagent::client::{AgentClient, AgentEndpoint};
use crate::fagent::token_ref;

/// Fetches the agent's listing and upserts it. Returns the servers seen.
///
/// # Errors
/// A readable message (agent or database).
pub async fn refresh(
    pool: &PgPool,
    agents: &AgentClient,
    instance: &InstanceRow,
) -> Result<usize, String> {
    let endpoint = endpoint(instance)?;
    let listing = agents
        .backends(&endpoint)
        .await
        .map_err(|e| e.to_string())?;
    let id = instance.id;
    db::run(pool, move |conn| {
        inventory::upsert_listing(conn, id, listing.fetched_at, &listing.backends)
    })
    .await
    .map_err(|e| e.to_string())
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
