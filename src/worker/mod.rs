//! The worker: consumes commands, applies them through the agents, records
//! outcomes, publishes events, and acks last.

pub mod action;
pub mod agent_listing;
pub mod batch;
pub mod breaker;
pub mod events;
pub mod retry;
pub mod sync;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use backon::BackoffBuilder as _;

use crate::app::{App, Role};
use crate::config::Config;
use crate::db::{self, PgPool};
use crate::fagent::client::AgentClient;
use crate::queue::consumer::{ConsumerSpec, consume};
use crate::queue::{Handler, Publisher, Topology, reconnect_backoff};
use breaker::BreakerSettings;
use retry::RetryPolicy;

/// Infrastructure trouble while handling a message (database or broker
/// down): the message is kept and handled again.
#[derive(Debug, thiserror::Error)]
pub enum InfraError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(transparent)]
    Publish(#[from] crate::queue::publisher::PublishError),
}

/// Batches expanded at once per worker.
pub const BATCH_PREFETCH: u16 = 2;

/// Syncs in flight per worker: each holds one instance's listing in memory.
pub const SYNC_PREFETCH: u16 = 4;

/// What handlers need, passed in (no globals).
pub struct WorkerContext {
    pub pool: PgPool,
    pub publisher: Publisher,
    pub topology: Arc<Topology>,
    pub agents: AgentClient,
    pub retry: RetryPolicy,
    pub breaker: BreakerSettings,
    /// How server names are built from applications, for linking.
    pub template: crate::domain::mapping::NameTemplate,
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
    configured
        .max(u32::from(prefetch) + u32::from(SYNC_PREFETCH) * 2 + u32::from(BATCH_PREFETCH) + 4)
}

/// How long a broker connection may be down before the role gives up: the
/// reconnection backoff's total (0.5 s doubling to 5 s) and a 5 s margin.
pub fn max_outage(reconnect_attempts: usize) -> Duration {
    let backoff: Duration = reconnect_backoff(reconnect_attempts).build().sum();
    backoff + Duration::from_secs(5)
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
    let App {
        pool,
        conn,
        topology,
        publisher,
    } = App::connect(
        config,
        Role::WORKER,
        pool_size(config.database.pool_size, settings.prefetch),
    )
    .await?;
    let template = crate::domain::mapping::NameTemplate::parse(&config.sync.name_template)
        .map_err(|e| anyhow::anyhow!("sync.name_template: {e}"))?;
    let ctx = Arc::new(WorkerContext {
        template: template.clone(),
        pool,
        publisher: publisher.clone(),
        topology: topology.clone(),
        agents: AgentClient::new(
            settings.agent_timeout,
            config.worker.agent_ca_file.as_deref(),
        )
        .map_err(anyhow::Error::msg)?,
        retry: settings.retry.clone(),
        breaker: settings.breaker.clone(),
    });
    let actions: Arc<dyn Handler> = Arc::new(action::ActionHandler::new(ctx.clone()));
    let batches: Arc<dyn Handler> = Arc::new(batch::BatchHandler::new(ctx.clone()));
    let syncs: Arc<dyn Handler> = Arc::new(sync::SyncHandler::new(ctx, template));
    tracing::info!(actions = %topology.actions_queue, sync = %topology.sync_queue, "worker started");
    let outage = max_outage(config.amqp.reconnect_attempts);
    tokio::try_join!(
        consume(
            &conn,
            ConsumerSpec {
                queue: topology.actions_queue.clone(),
                prefetch: settings.prefetch,
                publisher: publisher.clone(),
                topology: topology.clone(),
                handler: actions,
                max_outage: outage,
            },
            shutdown.clone(),
        ),
        consume(
            &conn,
            ConsumerSpec {
                queue: topology.batches_queue.clone(),
                prefetch: BATCH_PREFETCH,
                publisher: publisher.clone(),
                topology: topology.clone(),
                handler: batches,
                max_outage: outage,
            },
            shutdown.clone(),
        ),
        consume(
            &conn,
            ConsumerSpec {
                queue: topology.sync_queue.clone(),
                prefetch: SYNC_PREFETCH,
                publisher,
                topology: topology.clone(),
                handler: syncs,
                max_outage: outage,
            },
            shutdown,
        ),
    )?;
    let _ = conn.close(200, "worker stopped".into()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outage_budget_follows_the_backoff() {
        assert_eq!(max_outage(0), Duration::from_secs(5));
        assert_eq!(max_outage(2), Duration::from_millis(6_500));
        assert_eq!(max_outage(12), Duration::from_millis(52_500));
        assert_eq!(pool_size(16, 64), 78);
        assert_eq!(pool_size(100, 8), 100);
    }
}
