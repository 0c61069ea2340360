//! The worker: consumes commands, applies them through the agents, records
//! outcomes, publishes events, and acks last.

pub mod action;
mod action_group;
pub mod agent_listing;
pub mod batch;
pub mod breaker;
pub mod events;
pub mod retry;
pub mod rollout;
pub mod slots;
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
use crate::queue::{Grouping, Handler, Publisher, Topology, reconnect_backoff};
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

/// Rollout ticks handled at once per worker (each is short).
pub const ROLLOUT_TICK_PREFETCH: u16 = 1;

/// Rollout update hooks run at once per worker: each holds its lock on one
/// connection for the hook's whole run.
pub const ROLLOUT_HOOK_PREFETCH: u16 = 2;

/// Connections a worker needs besides one per action in flight: each sync
/// holds its instance's sync lock on one connection and queries on a second
/// (2 × [`SYNC_PREFETCH`]), each batch being expanded holds one
/// ([`BATCH_PREFETCH`]), each rollout tick one ([`ROLLOUT_TICK_PREFETCH`]),
/// each running update hook one ([`ROLLOUT_HOOK_PREFETCH`]), and one spare
/// for an action that loads an unknown server's listing (it holds that
/// instance's sync lock and queries), and the webhook dispatcher's
/// [`crate::webhooks::DISPATCHER_CONNECTIONS`] (reserved even when
/// `webhooks.dispatcher` is off, so turning it on never starves actions).
pub const RESERVED_CONNECTIONS: u32 = SYNC_PREFETCH as u32 * 2
    + BATCH_PREFETCH as u32
    + ROLLOUT_TICK_PREFETCH as u32
    + ROLLOUT_HOOK_PREFETCH as u32
    + 1
    + crate::webhooks::DISPATCHER_CONNECTIONS;

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
    /// The database's clock: what a command's `requested_at` is checked
    /// against, and its time when it carries none.
    pub clock: db::clock::DbClock,
    /// `worker.clock_tolerance_secs`.
    pub clock_tolerance_secs: u64,
    /// Where rollout update hooks may come from, and the Ansible program.
    pub rollout: crate::config::RolloutConfig,
    /// Actions processed at once: no more than the pool serves.
    pub action_slots: slots::ActionSlots,
    /// How commands' `callback_url`s are checked.
    pub callbacks: CallbackPolicy,
}

/// How a command's `callback_url` is checked (`[webhooks]`).
#[derive(Debug, Clone, Copy, Default)]
pub struct CallbackPolicy {
    pub allow_private_targets: bool,
    /// `webhooks.callback_secret` is set: without it nothing could sign a
    /// callback, so a command asking for one is refused.
    pub secret_configured: bool,
}

impl CallbackPolicy {
    /// A command body's `callback_url`, checked.
    ///
    /// # Errors
    /// [`crate::queue::message::InvalidMessage`] with the reason.
    pub fn parse(
        &self,
        body: &[u8],
    ) -> Result<Option<crate::domain::webhook::TargetUrl>, crate::queue::message::InvalidMessage>
    {
        let url = crate::queue::message::parse_callback_url(body, self.allow_private_targets)?;
        if url.is_some() && !self.secret_configured {
            return Err(crate::queue::message::InvalidMessage(
                "callback_url: this service has no webhooks.callback_secret to sign callbacks with"
                    .into(),
            ));
        }
        Ok(url)
    }
}

/// A command with its optional callback URL.
#[derive(Debug, Clone)]
pub struct Commanded<R> {
    pub request: R,
    pub callback_url: Option<crate::domain::webhook::TargetUrl>,
}

/// Records a command's callback URL (before the command is handled, so
/// its final event finds it).
///
/// # Errors
/// [`InfraError`] when the database is away.
pub async fn record_callback(
    ctx: &WorkerContext,
    transaction_id: uuid::Uuid,
    kind: crate::domain::webhook::CallbackKind,
    url: Option<&crate::domain::webhook::TargetUrl>,
) -> Result<(), InfraError> {
    let Some(url) = url.map(|u| u.as_str().to_owned()) else {
        return Ok(());
    };
    db::run(&ctx.pool, move |c| {
        db::webhooks::record_callback(c, transaction_id, kind, &url)
    })
    .await?;
    Ok(())
}

/// The worker's tunables, resolved from [`Config`].
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub prefetch: u16,
    /// How action commands are grouped (`worker.group_max`,
    /// `worker.groups_in_flight`).
    pub grouping: crate::queue::Grouping,
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
            grouping: crate::queue::Grouping {
                max: usize::from(w.group_max.max(1)),
                in_flight: usize::from(w.groups_in_flight.max(1)),
            },
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

/// A worker's connections: how many actions it processes at once and the
/// pool that serves them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connections {
    /// Actions processed at once; each holds one connection (its server's
    /// lock session) while it runs. Deliveries beyond this wait for a slot.
    pub actions: u32,
    /// The pool: `actions` + [`RESERVED_CONNECTIONS`].
    pub pool: u32,
}

/// `database.pool_size` leaves no connection for actions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "database.pool_size (--pool-size, DATABASE_POOL_SIZE) is {configured}, too small for a \
     worker: it needs {RESERVED_CONNECTIONS} connections for its syncs, batches, rollouts and webhook dispatcher and one per \
     action processed at once, so at least {}",
    RESERVED_CONNECTIONS + 1
)]
pub struct PoolTooSmall {
    /// The size configured.
    pub configured: u32,
}

/// A worker's connections from `database.pool_size` (`configured`, its
/// whole pool) and the prefetch: actions at once = min(prefetch, configured
/// − [`RESERVED_CONNECTIONS`]), pool = actions + [`RESERVED_CONNECTIONS`]
/// (never more than configured; less when the prefetch could not use it).
///
/// # Errors
/// [`PoolTooSmall`] when `configured` leaves no connection for actions: the
/// worker refuses to start rather than raise the pool behind the
/// operator's back (that is how two workers once outgrew `max_connections`).
pub fn pool_size(configured: u32, prefetch: u16) -> Result<Connections, PoolTooSmall> {
    let room = configured
        .checked_sub(RESERVED_CONNECTIONS)
        .filter(|room| *room >= 1)
        .ok_or(PoolTooSmall { configured })?;
    let actions = room.min(u32::from(prefetch.max(1)));
    Ok(Connections {
        actions,
        pool: actions + RESERVED_CONNECTIONS,
    })
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
    let connections = pool_size(config.database.pool_size, settings.prefetch)?;
    let webhooks = config
        .webhooks
        .dispatcher
        .then(|| crate::webhooks::DispatcherSettings::from_config(&config.webhooks))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let App {
        pool,
        conn,
        topology,
        publisher,
    } = App::connect(config, Role::WORKER, connections.pool).await?;
    let conn = Arc::new(conn);
    let metrics_server =
        crate::metrics::server::serve_if_asked(config, "worker", &pool, &conn, shutdown.clone())
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
        clock: db::clock::DbClock::default(),
        clock_tolerance_secs: config.worker.clock_tolerance_secs,
        rollout: config.rollout.clone(),
        action_slots: slots::ActionSlots::new(connections.actions),
        callbacks: CallbackPolicy {
            allow_private_targets: config.webhooks.allow_private_targets,
            secret_configured: config
                .webhooks
                .callback_secret()
                .map_err(anyhow::Error::msg)?
                .is_some(),
        },
    });
    let dispatcher_pool = ctx.pool.clone();
    let actions: Arc<dyn Handler> = Arc::new(action::ActionHandler::new(ctx.clone()));
    let batches: Arc<dyn Handler> = Arc::new(batch::BatchHandler::new(ctx.clone()));
    let ticks: Arc<dyn Handler> = Arc::new(rollout::TickHandler::new(ctx.clone()));
    let hooks: Arc<dyn Handler> = Arc::new(rollout::HookHandler::new(ctx.clone()));
    let syncs: Arc<dyn Handler> = Arc::new(sync::SyncHandler::new(ctx, template));
    tracing::info!(
        actions = %topology.actions_queue,
        sync = %topology.sync_queue,
        pool = connections.pool,
        actions_at_once = connections.actions,
        "worker started"
    );
    let outage = max_outage(config.amqp.reconnect_attempts);
    let (dispatcher_publisher, dispatcher_shutdown) = (publisher.clone(), shutdown.clone());
    // Each command queue's consumer: its queue, prefetch, handler, grouping.
    let consumer = |queue: &str, prefetch: u16, handler: Arc<dyn Handler>, grouping: Grouping| {
        let spec = ConsumerSpec {
            queue: queue.to_owned(),
            prefetch,
            publisher: publisher.clone(),
            topology: topology.clone(),
            handler,
            max_outage: outage,
            grouping,
        };
        consume(&conn, spec, shutdown.clone())
    };
    let t = &topology;
    let consumers = async {
        tokio::try_join!(
            consumer(
                &t.actions_queue,
                settings.prefetch,
                actions,
                settings.grouping
            ),
            consumer(&t.batches_queue, BATCH_PREFETCH, batches, Grouping::NONE),
            consumer(
                &t.rollouts_queue,
                ROLLOUT_TICK_PREFETCH,
                ticks,
                Grouping::NONE
            ),
            consumer(
                &t.rollout_hooks_queue,
                ROLLOUT_HOOK_PREFETCH,
                hooks,
                Grouping::NONE
            ),
            consumer(&t.sync_queue, SYNC_PREFETCH, syncs, Grouping::NONE),
            async {
                match webhooks {
                    Some(settings) => {
                        crate::webhooks::run_dispatcher(
                            &conn,
                            dispatcher_pool,
                            dispatcher_publisher,
                            topology.clone(),
                            settings,
                            outage,
                            dispatcher_shutdown,
                        )
                        .await
                    }
                    None => Ok(()),
                }
            },
        )
    };
    tokio::try_join!(metrics_server, async {
        consumers.await.map_err(anyhow::Error::from)
    })?;
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
    }

    #[test]
    fn the_pool_is_what_the_worker_uses_at_once() {
        assert_eq!(RESERVED_CONNECTIONS, 16);
        // The default: 6 actions at once, 22 connections; three workers,
        // the API (8) and the scheduler (2) need 76 of PostgreSQL's 100.
        let default = crate::config::Config::default();
        assert_eq!(
            pool_size(default.database.pool_size, default.worker.prefetch),
            Ok(Connections {
                actions: 6,
                pool: 22
            })
        );
        // A prefetch that cannot use the pool does not open it all.
        assert_eq!(
            pool_size(100, 8),
            Ok(Connections {
                actions: 8,
                pool: 24
            })
        );
        assert_eq!(
            pool_size(17, 64),
            Ok(Connections {
                actions: 1,
                pool: 17
            })
        );
    }

    #[test]
    fn a_pool_with_no_room_for_actions_is_refused() {
        for configured in [0, 8, 16] {
            let e = pool_size(configured, 64).expect_err("refused");
            assert_eq!(e, PoolTooSmall { configured });
            assert!(e.to_string().contains("so at least 17"), "{e}");
        }
    }
}
