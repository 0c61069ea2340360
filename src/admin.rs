//! One-shot commands for operators: migrate, register and list instances.

use std::fmt::Write as _;

use crate::cli::InstanceAddArgs;
use crate::config::Config;
use crate::db::{self, instances};
use crate::fagent::client::AgentClient;
use crate::fagent::token_ref;
use crate::queue::message::parse_instance_name;
use crate::worker;

/// # Errors
/// When the database is unreachable or a migration fails.
pub async fn migrate(config: &Config) -> anyhow::Result<Vec<String>> {
    let pool = db::pool(&config.database.url, 2)?;
    Ok(worker::migrate(&pool).await?)
}

/// Registers (or updates) an instance, then loads its servers from its agent.
///
/// # Errors
/// When the name, URL or token is invalid, or the database is unreachable.
/// An unreachable agent is reported, not an error: the instance is saved.
pub async fn add_instance(config: &Config, args: &InstanceAddArgs) -> anyhow::Result<String> {
    let name = parse_instance_name(&args.name)
        .map_err(|e| anyhow::anyhow!(e.0.replace("target.instance", "name")))?;
    let url = args.fagent_url.trim_end_matches('/').to_owned();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        anyhow::bail!("--fagent-url must start with http:// or https://");
    }
    let token_ref = args.token_ref()?;
    token_ref::resolve(&token_ref).map_err(anyhow::Error::msg)?;
    let pool = db::pool(&config.database.url, 2)?;
    worker::migrate(&pool).await?;
    let new = instances::NewInstance {
        server_id: args.server_id,
        name,
        fagent_url: url,
        fagent_token_ref: token_ref,
        is_active: !args.inactive,
    };
    let row = db::run(&pool, move |c| instances::upsert(c, &new)).await?;
    let agents = AgentClient::new(std::time::Duration::from_millis(
        config.worker.agent_timeout_ms,
    ))
    .map_err(anyhow::Error::msg)?;
    let loaded = match worker::inventory::refresh(&pool, &agents, &row).await {
        Ok(n) => format!("loaded {n} servers from its agent"),
        Err(e) => format!("could not load its servers yet: {e}"),
    };
    Ok(format!(
        "instance {} registered with id {}; {loaded}",
        row.name, row.id
    ))
}

/// A table of every instance.
///
/// # Errors
/// When the database is unreachable.
pub async fn list_instances(config: &Config) -> anyhow::Result<String> {
    let pool = db::pool(&config.database.url, 2)?;
    let mut out = format!(
        "{:<6} {:<20} {:<32} {:<7} {:<10} {:<9} {}\n",
        "ID", "NAME", "FAGENT", "ACTIVE", "BREAKER", "FAILURES", "LAST SYNC"
    );
    let mut after = 0;
    loop {
        let page = db::run(&pool, move |c| instances::list(c, after, 500)).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for i in &page {
            let _ = writeln!(
                out,
                "{:<6} {:<20} {:<32} {:<7} {:<10} {:<9} {}",
                i.id,
                i.name,
                i.fagent_url,
                i.is_active,
                i.breaker_state,
                i.consecutive_failures,
                i.last_sync_at
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_else(|| "never".into())
            );
        }
    }
    Ok(out)
}
