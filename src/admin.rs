//! One-shot commands for operators: migrate, register and list instances.

use std::fmt::Write as _;

use crate::cli::{ActionArgs, EventsArgs, InstanceAddArgs};
use crate::config::Config;
use crate::db::{self, instances};
use crate::domain::action::ActionRequest;
use crate::fagent::client::AgentClient;
use crate::fagent::token_ref;
use crate::queue::message::{ActionMessage, TargetMessage, format_time, parse_instance_name};
use crate::worker;

/// # Errors
/// When the database is unreachable or a migration fails.
pub async fn migrate(config: &Config) -> anyhow::Result<Vec<String>> {
    let pool = db::pool_for_command(&config.database.url, 2).await?;
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
    let pool = db::pool_for_command(&config.database.url, 2).await?;
    worker::migrate(&pool).await?;
    let new = instances::NewInstance {
        server_id: args.server_id,
        name,
        fagent_url: url,
        fagent_token_ref: token_ref,
        is_active: !args.inactive,
    };
    let restore = args.restore_after_reload;
    let row = db::run(&pool, move |c| {
        let row = instances::upsert(c, &new)?;
        match restore {
            Some(on) => instances::set_restore_after_reload(c, row.id, on),
            None => Ok(row),
        }
    })
    .await?;
    let agents = AgentClient::new(
        std::time::Duration::from_millis(config.worker.agent_timeout_ms),
        config.worker.agent_ca_file.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    let template = crate::domain::mapping::NameTemplate::parse(&config.sync.name_template)
        .map_err(|e| anyhow::anyhow!("sync.name_template: {e}"))?;
    let loaded = match worker::agent_listing::refresh(&pool, &agents, &row, &template).await {
        Ok(r) => {
            let published = publish_events(config, &r.events).await;
            format!("synced from its agent: {}{published}", r.counts)
        }
        Err(e) => format!("could not sync it yet (the scheduler will retry): {e}"),
    };
    Ok(format!(
        "instance {} registered with id {}; {loaded}",
        row.name, row.id
    ))
}

/// Publishes events; says in a sentence when the broker could not be reached.
async fn publish_events(config: &Config, events: &[crate::domain::event::Event]) -> String {
    if events.is_empty() {
        return String::new();
    }
    let result = async {
        let topology =
            crate::queue::Topology::with_prefix(&config.amqp.prefix, config.amqp.delivery_limit);
        let conn =
            crate::queue::connect_with(&config.amqp.brokers()?, "haproxy-control cli", 0).await?;
        topology.declare(&conn.create_channel().await?).await?;
        let publisher = crate::queue::Publisher::new(&conn).await?;
        for e in events {
            publisher.publish_event(&topology, e).await?;
        }
        let _ = conn.close(200, "done".into()).await;
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => format!("; {} events published", events.len()),
        Err(e) => format!("; its {} events could not be published: {e}", events.len()),
    }
}

/// A table of every instance.
///
/// # Errors
/// When the database is unreachable.
pub async fn list_instances(config: &Config) -> anyhow::Result<String> {
    let pool = db::pool_for_command(&config.database.url, 2).await?;
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

/// Who a command given on the command line is from: `given`, else
/// `cli:$USER` (`$LOGNAME`, else `unknown`).
pub fn cli_actor(given: Option<&str>) -> String {
    given.map_or_else(
        || {
            let user = std::env::var("USER")
                .or_else(|_| std::env::var("LOGNAME"))
                .unwrap_or_else(|_| "unknown".into());
            format!("cli:{user}")
        },
        str::to_owned,
    )
}

/// Publishes an `action` command built from the flags (validated as the
/// worker validates a message) and waits for its outcome.
///
/// # Errors
/// When the flags do not make a valid command, or the broker or database
/// cannot be reached.
pub async fn send_action(config: &Config, args: &ActionArgs) -> anyhow::Result<String> {
    let transaction_id = uuid::Uuid::new_v4();
    let target = match (&args.server_id, &args.instance, &args.backend, &args.server) {
        (Some(id), None, None, None) => TargetMessage {
            server_id: Some(*id),
            ..TargetMessage::default()
        },
        (None, Some(i), Some(b), Some(s)) => TargetMessage {
            server_id: None,
            instance: Some(i.clone()),
            backend: Some(b.clone()),
            server: Some(s.clone()),
        },
        _ => anyhow::bail!("give --server-id, or --instance with --backend and --server"),
    };
    let actor = cli_actor(args.actor.as_deref());
    // The flags are read as the worker reads a message: the same checks.
    let request = ActionRequest::try_from(ActionMessage {
        transaction_id: transaction_id.to_string(),
        action: args.state.clone(),
        target,
        actor,
        requested_at: Some(format_time(chrono::Utc::now())),
        reason: args.reason.clone(),
        force: Some(args.force),
        batch_id: None,
        callback_url: None,
    })
    .map_err(|e| anyhow::anyhow!(e.0))?;

    let topology =
        crate::queue::Topology::with_prefix(&config.amqp.prefix, config.amqp.delivery_limit);
    let conn = crate::queue::connect_with(
        &config.amqp.brokers()?,
        "haproxy-control cli",
        crate::queue::DEFAULT_RECONNECT_ATTEMPTS,
    )
    .await?;
    topology.declare(&conn.create_channel().await?).await?;
    let publisher = crate::queue::Publisher::new(&conn).await?;
    publisher
        .publish_command(&topology, &ActionMessage::from(&request))
        .await?;
    let _ = conn.close(200, "done".into()).await;
    if args.wait == 0 {
        return Ok(format!("published {transaction_id}"));
    }
    let pool = db::pool_for_command(&config.database.url, 1).await?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(args.wait);
    loop {
        let row = db::run(&pool, move |c| {
            db::actions::get_by_transaction(c, transaction_id)
        })
        .await?;
        if let Some(row) = row.filter(|r| r.status.is_final()) {
            return Ok(serde_json::to_string_pretty(&serde_json::json!({
                "transaction_id": transaction_id,
                "status": row.status,
                "attempts": row.attempts,
                "error": row.error,
                "error_detail": row.error_detail,
                "events": row.events,
            }))?);
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "published {transaction_id}, but it had not finished after {} s",
                args.wait
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Prints events as JSON lines until `count` have been printed or the
/// process is interrupted.
///
/// # Errors
/// When the broker cannot be reached.
pub async fn tail_events(config: &Config, args: &EventsArgs) -> anyhow::Result<()> {
    use futures::StreamExt;

    let topology =
        crate::queue::Topology::with_prefix(&config.amqp.prefix, config.amqp.delivery_limit);
    let conn = crate::queue::connect_with(
        &config.amqp.brokers()?,
        "haproxy-control events",
        crate::queue::DEFAULT_RECONNECT_ATTEMPTS,
    )
    .await?;
    let ch = conn.create_channel().await?;
    topology.declare(&ch).await?;
    let mut consumer = topology
        .tap_events(&ch, "", &args.pattern, "events-cli")
        .await?;
    eprintln!(
        "listening on {} for {}",
        topology.events_exchange, args.pattern
    );
    let mut seen = 0;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        println!("{}", String::from_utf8_lossy(&delivery.data));
        seen += 1;
        if args.count > 0 && seen >= args.count {
            break;
        }
    }
    Ok(())
}
