//! The scheduler: a `sync` command per active instance every interval,
//! history retention, and the [sweeper](crate::sweeper). Several schedulers
//! may run at once: a tick's transaction id is derived from (instance, time
//! bucket), so the workers dedupe their duplicate ticks like any other
//! message, and the sweeper skips rows another one holds.

use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;

use crate::app::{App, Role};
use crate::config::Config;
use crate::db::{self, PgPool, history, instances};
use crate::domain::action::{SyncReason, SyncRequest, scheduled_sync_id};
use crate::queue::message::{SCHEDULER_ACTOR, SyncMessage};
use crate::queue::publisher::Publisher;
use crate::queue::topology::Topology;
use crate::sweeper::{self, Sweeper};

/// Runs until `shutdown` turns true.
///
/// # Errors
/// When PostgreSQL or RabbitMQ cannot be reached at start.
pub async fn run(config: &Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let App {
        pool,
        conn,
        topology,
        publisher,
    } = App::connect(config, Role::SCHEDULER, 2).await?;
    let conn = std::sync::Arc::new(conn);
    let metrics_server =
        crate::metrics::server::serve_if_asked(config, "scheduler", &pool, &conn, shutdown.clone())
            .await?;
    let sweeper = Sweeper {
        pool: &pool,
        publisher: &publisher,
        topology: &topology,
        settings: &config.sweeper,
    };
    let longest = config
        .worker
        .longest_action_secs(config.database.lock_timeout_ms);
    let (served, (), ()) = tokio::join!(
        metrics_server,
        ticks(config, &pool, &publisher, &topology, shutdown.clone()),
        sweeper::run(sweeper, longest, shutdown),
    );
    let _ = conn.close(200, "scheduler stopped".into()).await;
    served
}

/// Scheduled syncs and history pruning, every sync interval.
async fn ticks(
    config: &Config,
    pool: &PgPool,
    publisher: &Publisher,
    topology: &Topology,
    shutdown: watch::Receiver<bool>,
) {
    let interval = Duration::from_secs(config.sync.interval_secs.max(1));
    let retention = Duration::from_secs(config.sync.history_retention_days.saturating_mul(86_400));
    tracing::info!(interval_secs = interval.as_secs(), "scheduler started");
    every(interval, shutdown, || async {
        match publish_ticks(pool, publisher, topology, interval).await {
            Ok(n) => tracing::info!(instances = n, "scheduled syncs published"),
            Err(e) => tracing::warn!(error = %e, "could not publish scheduled syncs"),
        }
        match prune(pool, retention, config.sync.retention_batch).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "pruned status history"),
            Err(e) => tracing::warn!(error = %e, "could not prune status history"),
        }
    })
    .await;
}

/// Runs `work` at once and then every `interval` (a late tick is skipped,
/// not made up) until `shutdown` turns true.
pub(crate) async fn every<F, Fut>(
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
    mut work: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
            }
            _ = tick.tick() => work().await,
        }
    }
}

/// Publishes one scheduled sync per active instance for the current bucket.
///
/// # Errors
/// When the database or broker fails.
pub async fn publish_ticks(
    pool: &PgPool,
    publisher: &Publisher,
    topology: &Topology,
    interval: Duration,
) -> anyhow::Result<usize> {
    let now = Utc::now();
    let bucket = now.timestamp() / i64::try_from(interval.as_secs().max(1)).unwrap_or(60);
    let mut after = 0;
    let mut published = 0;
    loop {
        let page = db::run(pool, move |c| instances::list(c, after, 500)).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for instance in page.iter().filter(|i| i.is_active) {
            let request = SyncRequest {
                transaction_id: scheduled_sync_id(instance.id, bucket),
                instance_id: Some(instance.id),
                reason: SyncReason::Schedule,
                actor: SCHEDULER_ACTOR.to_owned(),
                requested_at: Some(now),
            };
            publisher
                .publish_command(topology, &SyncMessage::from(&request))
                .await?;
            published += 1;
        }
    }
    Ok(published)
}

/// Deletes history older than `retention` in batches of `batch` rows, with a
/// pause between batches so the table stays available.
///
/// # Errors
/// When the database fails.
pub async fn prune(pool: &PgPool, retention: Duration, batch: i64) -> Result<usize, db::DbError> {
    let secs = retention.as_secs_f64();
    let batch = batch.max(1);
    let mut total = 0;
    loop {
        let n = db::run(pool, move |c| history::prune(c, secs, batch)).await?;
        total += n;
        if i64::try_from(n).unwrap_or(i64::MAX) < batch {
            return Ok(total);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
