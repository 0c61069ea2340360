//! The sweeper, run by the scheduler: no work is left stuck.
//!
//! - An action `pending` longer than `pending_grace_secs` (the API recorded
//!   it, its publish was lost) and one `running` longer than
//!   `running_grace_secs` (its worker died and its message is gone, e.g.
//!   dead-lettered after the delivery limit) get their command published
//!   again with the same transaction id, `requested_at`, actor, reason,
//!   force and batch. The worker dedupes on the transaction id (rule 1) and
//!   resumes a `running` row: it counts one more attempt and calls the
//!   agent again, which is idempotent — the safe move, since the dead worker
//!   may or may not have changed HAProxy.
//! - A batch open longer than `batch_grace_secs` with none of its actions
//!   in flight: its command is published again while some of its servers
//!   have no action recorded, else (or after `max_republishes`) it is
//!   completed with the counts of its actions and `batch.completed` is
//!   published, as the worker does.
//!
//! - A rollout that should be ticking and has not ticked for
//!   [`ROLLOUT_STALE_SECS`] (a worker died between writing a tick and
//!   publishing the next) gets a tick with its current sequence number.
//!
//! - An approval still pending past its `expires_at` expires: its held
//!   action, batch or rollout ends `rejected` (docs/approvals.md).
//!
//! Rows are taken up under `FOR UPDATE SKIP LOCKED` and stamped with the
//! database's time, so several schedulers may sweep at once. Each item is
//! logged (warn, with its transaction id) and counted in `haproxy_sweeps`.

use std::time::Duration;

use crate::config::SweeperConfig;
use crate::db::sweeps::{self, Limits, StuckBatch, SweepKind};
use crate::db::{self, PgPool};
use crate::queue::message::{ActionMessage, BatchMessage, parse_batch_targets_json};
use crate::queue::publisher::{PublishError, Publisher};
use crate::queue::topology::Topology;
use crate::worker::events::batch_completed;

/// A rollout that should tick and has not for this long stopped ticking
/// (its ticks come every half second; a long tick reads a few agents).
pub const ROLLOUT_STALE_SECS: f64 = 15.0;

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    pub pending: usize,
    pub running: usize,
    pub batches_republished: usize,
    pub batches_completed: usize,
    pub rollouts: usize,
    /// Approvals that expired (their requests ended).
    pub approvals_expired: usize,
}

impl SweepReport {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Errors of a sweep.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

impl From<crate::approvals::DecideError> for SweepError {
    fn from(e: crate::approvals::DecideError) -> Self {
        match e {
            crate::approvals::DecideError::Publish(e) => SweepError::Publish(e),
            crate::approvals::DecideError::Db(e) => SweepError::Db(e),
            other => SweepError::Db(db::DbError::Task(other.to_string())),
        }
    }
}

/// The sweeper's collaborators.
pub struct Sweeper<'a> {
    pub pool: &'a PgPool,
    pub publisher: &'a Publisher,
    pub topology: &'a Topology,
    pub settings: &'a SweeperConfig,
}

impl Sweeper<'_> {
    /// One sweep of every kind. An item whose publish fails is taken up
    /// again a grace period later.
    ///
    /// # Errors
    /// [`SweepError`] when the database or the broker fails.
    pub async fn sweep(&self) -> Result<SweepReport, SweepError> {
        let report = SweepReport {
            pending: self.actions(SweepKind::Pending).await?,
            running: self.actions(SweepKind::Running).await?,
            rollouts: self.rollouts().await?,
            approvals_expired: self.approvals().await?,
            ..self.batches().await?
        };
        if !report.is_empty() {
            tracing::info!(?report, "sweep done");
        }
        Ok(report)
    }

    /// Approvals past their `expires_at` (database clock) expire; their
    /// requests end like rejected ones (docs/approvals.md).
    async fn approvals(&self) -> Result<usize, SweepError> {
        let service = crate::approvals::Approvals {
            pool: self.pool,
            publisher: self.publisher,
            topology: self.topology,
        };
        Ok(service.expire_due().await?)
    }

    fn limits(&self, grace_secs: u64) -> Limits {
        Limits {
            grace_secs: grace_secs as f64,
            max_republishes: self.settings.max_republishes,
            batch_size: self.settings.batch_size.max(1),
        }
    }

    async fn actions(&self, kind: SweepKind) -> Result<usize, SweepError> {
        let grace = match kind {
            SweepKind::Running => self.settings.running_grace_secs,
            _ => self.settings.pending_grace_secs,
        };
        let limits = self.limits(grace);
        let rows = db::run(self.pool, move |c| sweeps::take_actions(c, kind, limits)).await?;
        for row in &rows {
            let Some(request) = row.request() else {
                tracing::warn!(transaction_id = %row.transaction_id, "a stuck action names no server; left as it is");
                continue;
            };
            tracing::warn!(
                transaction_id = %row.transaction_id,
                status = %row.status,
                sweeps = row.sweeps,
                "sweeper: publishing a stuck action's command again"
            );
            self.publisher
                .publish_command(self.topology, &ActionMessage::from(&request))
                .await?;
            if row.sweeps >= self.settings.max_republishes {
                tracing::error!(
                    transaction_id = %row.transaction_id,
                    "sweeper: last re-publication of this action; if it stays unfinished, see `haproxy-control dead-letters list`"
                );
            }
        }
        Ok(rows.len())
    }

    async fn batches(&self) -> Result<SweepReport, SweepError> {
        let limits = self.limits(self.settings.batch_grace_secs);
        let taken = db::run(self.pool, move |c| sweeps::take_batches(c, limits)).await?;
        let mut report = SweepReport::default();
        for batch in taken {
            match batch {
                StuckBatch::Republish(row) => {
                    report.batches_republished += 1;
                    self.republish_batch(&row).await?;
                }
                StuckBatch::Completed(row, counts) => {
                    report.batches_completed += 1;
                    tracing::warn!(transaction_id = %row.transaction_id, batch_id = row.id, ?counts, "sweeper: completing a stuck batch");
                    let event = batch_completed(&row, counts);
                    self.publisher.publish_event(self.topology, &event).await?;
                }
            }
        }
        Ok(report)
    }

    /// Rollouts whose ticks stopped get one again.
    async fn rollouts(&self) -> Result<usize, SweepError> {
        let stale = ROLLOUT_STALE_SECS;
        let rows = db::run(self.pool, move |c| sweeps::take_stalled_rollouts(c, stale)).await?;
        for r in &rows {
            tracing::warn!(
                rollout_id = r.id,
                seq = r.tick_seq,
                "sweeper: a rollout stopped ticking; ticking it again"
            );
            let tick = crate::queue::message::RolloutTick {
                rollout_id: r.id,
                seq: r.tick_seq,
            };
            self.publisher
                .publish_tick(self.topology, &tick, false)
                .await?;
        }
        Ok(rows.len())
    }

    async fn republish_batch(&self, row: &db::batches::BatchRow) -> Result<(), SweepError> {
        let targets = match parse_batch_targets_json(&row.targets) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(transaction_id = %row.transaction_id, error = %e.0, "sweeper: a stuck batch's targets do not parse");
                return Ok(());
            }
        };
        tracing::warn!(transaction_id = %row.transaction_id, batch_id = row.id, "sweeper: publishing a stuck batch's command again");
        self.publisher
            .publish_command(self.topology, &BatchMessage::from(&row.request(targets)))
            .await?;
        Ok(())
    }
}

/// Sweeps every `settings.interval_secs` until `shutdown` turns true; 0
/// turns the sweeper off.
pub async fn run(
    sweeper: Sweeper<'_>,
    worker_longest_secs: u64,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let s = sweeper.settings;
    if s.interval_secs == 0 {
        tracing::info!("sweeper off (sweeper.interval_secs = 0)");
        return;
    }
    if s.running_grace_secs <= worker_longest_secs {
        tracing::warn!(
            running_grace_secs = s.running_grace_secs,
            worker_longest_secs,
            "sweeper.running_grace_secs is not above a worker's longest action: live actions may be published again (harmless, deduplicated)"
        );
    }
    let interval = Duration::from_secs(s.interval_secs);
    crate::scheduler::every(interval, shutdown, || async {
        if let Err(e) = sweeper.sweep().await {
            tracing::warn!(error = %e, "sweep failed; next one at the next tick");
        }
    })
    .await;
}
