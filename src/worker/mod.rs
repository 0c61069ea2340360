//! The worker: consumes commands, applies them through the agents, records
//! outcomes, publishes events, and acks last.

pub mod action;
pub mod breaker;
pub mod events;
pub mod inventory;
pub mod retry;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Config;
use crate::db::{self, PgPool};
use crate::fagent::client::AgentClient;
use crate::queue::consumer::{HandlerDyn, consume};
use crate::queue::{Publisher, Topology};
use breaker::BreakerSettings;
use retry::RetryPolicy;

/// What handlers need, passed in (no globals).
pub struct WorkerContext {
    pub pool: PgPool,
    pub publisher: Publisher,
    pub topology: Arc<Topology>,
    pub agents: AgentClient,
    pub retry: RetryPolicy,
    pub breaker: BreakerSettings,
}

/// The worker's tunables, resolved from [`Config`].
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub prefetch: u16,
    pub retry: RetryPolicy,
    pub breaker: BreakerSettings,
    pub agent_timeout: Duration,
}

impl WorkerSettings {
    pub fn from_config(config: &Config) -> Self {
        let w = &config.worker;
        let open_for = Duration::from_secs(w.breaker_open_secs);
        Self {
            prefetch: w.prefetch.max(1),
            retry: RetryPolicy {
                max_attempts: w.max_attempts.max(1),
                backoff: w
                    .retry_backoff_ms
                    .iter()
                    .map(|ms| Duration::from_millis(*ms))
                    .collect(),
            },
            breaker: BreakerSettings {
                failures: w.breaker_failures.max(1),
                open_for,
                probe_timeout: Duration::from_millis(w.agent_timeout_ms)
                    .saturating_mul(2)
                    .max(Duration::from_secs(1)),
            },
            agent_timeout: Duration::from_millis(w.agent_timeout_ms),
        }
    }
}

/// Pool size for a worker: every action in flight holds one connection
/// while its server is locked, plus a few for everything else.
pub fn pool_size(configured: u32, prefetch: u16) -> u32 {
    configured.max(u32::from(prefetch) + 4)
}

/// Runs migrations (under their advisory lock).
///
/// # Errors
/// When the database is unreachable or a migration fails.
pub async fn migrate(pool: &PgPool) -> Result<Vec<String>, db::DbError> {
    db::run(pool, db::run_migrations).await
}

/// Runs a worker until `shutdown` turns true.
///
/// # Errors
/// When PostgreSQL or RabbitMQ cannot be reached at start, or the broker
/// connection is lost for good later.
pub async fn run(config: &Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let settings = WorkerSettings::from_config(config);
    let pool = db::pool(
        &config.database.url,
        pool_size(config.database.pool_size, settings.prefetch),
    )?;
    let applied = migrate(&pool).await?;
    if !applied.is_empty() {
        tracing::info!(?applied, "migrations applied");
    }
    let topology = Arc::new(Topology::with_prefix(
        &config.amqp.prefix,
        config.amqp.delivery_limit,
    ));
    let conn = crate::queue::connect(&config.amqp.url, "haproxy-control worker").await?;
    let setup = conn.create_channel().await?;
    topology.declare(&setup).await?;
    let publisher = Publisher::new(&conn).await?;
    let ctx = Arc::new(WorkerContext {
        pool,
        publisher: publisher.clone(),
        topology: topology.clone(),
        agents: AgentClient::new(settings.agent_timeout).map_err(anyhow::Error::msg)?,
        retry: settings.retry.clone(),
        breaker: settings.breaker.clone(),
    });
    let handler: Arc<dyn HandlerDyn> = Arc::new(Arc::new(action::ActionHandler::new(ctx)));
    tracing::info!(queue = %topology.actions_queue, "worker started");
    consume(
        &conn,
        &topology.actions_queue,
        settings.prefetch,
        publisher,
        topology.clone(),
        handler,
        shutdown,
    )
    .await?;
    let _ = conn.close(200, "worker stopped".into()).await;
    Ok(())
}
