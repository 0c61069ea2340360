//! The `sync` handler (DESIGN.md rules 6 and 7): read an instance's listing
//! through its breaker, diff it against PostgreSQL in pure code, apply the
//! plan in one transaction, publish what changed, then ack.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;

use super::events::sync_failed;
use super::{InfraError, WorkerContext, agent_listing, breaker};
use crate::db::locks::AdvisoryLocks;
use crate::db::sync::{self as db_sync, RunClaim};
use crate::db::{self, DbError, instances};
use crate::domain::action::{ActionRequest, SyncRequest, SyncStatus, instance_sync_id};
use crate::domain::event::Event;
use crate::domain::mapping::NameTemplate;
use crate::queue::message::{InvalidMessage, SyncMessage, parse_sync};
use crate::queue::{Disposition, InfraRetryPolicy, MessageHandler};

/// How a sync run ends.
#[derive(Debug)]
pub enum SyncOutcome {
    /// The plan was applied; `events` are what changed.
    Success {
        counts: serde_json::Value,
        events: Vec<Event>,
        /// Commands re-applying states a reload reset, already recorded
        /// `pending`: published after the events.
        restores: Vec<ActionRequest>,
    },
    /// The agent could not be read (or its breaker is open): one
    /// `sync.failed` event.
    Failed { error: String, event: Box<Event> },
    /// Nothing was done: the instance is inactive or another sync runs.
    Skipped { reason: String },
}

impl SyncOutcome {
    /// The run's status, error, counts and stored events.
    fn into_run(
        self,
    ) -> (
        SyncStatus,
        Option<String>,
        serde_json::Value,
        serde_json::Value,
    ) {
        let empty = || serde_json::json!({});
        match self {
            SyncOutcome::Success { counts, events, .. } => {
                (SyncStatus::Success, None, counts, events_json(&events))
            }
            SyncOutcome::Failed { error, event } => (
                SyncStatus::Failed,
                Some(error),
                empty(),
                events_json(&[*event]),
            ),
            SyncOutcome::Skipped { reason } => (
                SyncStatus::Skipped,
                Some(reason),
                empty(),
                serde_json::json!([]),
            ),
        }
    }
}

/// Events as stored on the run, to be re-published verbatim. An `Event`
/// is plain data, so this serialisation cannot fail; if it ever did, the
/// run stores no events rather than failing a sync that was applied.
fn events_json(events: &[Event]) -> serde_json::Value {
    serde_json::to_value(events).unwrap_or_else(|e| {
        tracing::error!(error = %e, "sync events could not be serialised");
        serde_json::json!([])
    })
}

pub struct SyncHandler {
    ctx: Arc<WorkerContext>,
    template: NameTemplate,
}

impl SyncHandler {
    pub fn new(ctx: Arc<WorkerContext>, template: NameTemplate) -> Self {
        Self { ctx, template }
    }
}

impl MessageHandler for SyncHandler {
    type Request = SyncRequest;
    type InfraError = InfraError;

    const INFRA_RETRY: InfraRetryPolicy = InfraRetryPolicy {
        retries: &[],
        pause_before_requeue: Duration::from_secs(1),
    };

    fn parse(&self, data: &[u8]) -> Result<SyncRequest, InvalidMessage> {
        parse_sync(data)
    }

    fn span(&self, request: &SyncRequest) -> tracing::Span {
        tracing::info_span!(
            "sync",
            transaction_id = %request.transaction_id,
            instance_id = ?request.instance_id,
            reason = request.reason.as_str(),
        )
    }

    async fn process(&self, request: &SyncRequest) -> Result<Disposition, InfraError> {
        self.sync(request).await
    }
}

impl SyncHandler {
    async fn sync(&self, req: &SyncRequest) -> Result<Disposition, InfraError> {
        let ctx = &self.ctx;
        let Some(instance_id) = req.instance_id else {
            return self.fan_out(req).await;
        };
        let Some(instance) = db::run(&ctx.pool, move |c| instances::get(c, instance_id)).await?
        else {
            return Ok(Disposition::DeadLetter(format!(
                "instance {instance_id} does not exist"
            )));
        };
        let requested_at = req.requested_at.unwrap_or_else(Utc::now);
        let (txn, reason, actor) = (req.transaction_id, req.reason, req.actor.clone());
        let run = db::run(&ctx.pool, move |c| {
            db_sync::claim_run(c, txn, instance_id, reason, &actor, requested_at)
        })
        .await?;
        let run_id = match run {
            RunClaim::Existing(row) if row.status != SyncStatus::Running => {
                tracing::info!(status = %row.status, "duplicate of a finished sync; re-publishing its events");
                ctx.publisher
                    .publish_stored(&ctx.topology, &row.events)
                    .await?;
                return Ok(Disposition::Ack);
            }
            RunClaim::Existing(row) => row.id,
            RunClaim::New(id) => id,
        };
        // `took`: how long the sync ran, when it reached the agent.
        let finish = |outcome: SyncOutcome, took: Option<std::time::Duration>| {
            let pool = ctx.pool.clone();
            async move {
                let (status, error, counts, events) = outcome.into_run();
                let stored = events.clone();
                db::run(&pool, move |c| {
                    db_sync::finish_run(c, run_id, status, error.as_deref(), &counts, &events)
                })
                .await?;
                crate::metrics::global().sync_finished(&status.to_string(), took);
                Ok::<_, DbError>(stored)
            }
        };
        if !instance.is_active {
            finish(
                SyncOutcome::Skipped {
                    reason: "instance is not active".into(),
                },
                None,
            )
            .await?;
            return Ok(Disposition::Ack);
        }
        // Rule 7: one sync per instance at a time; a concurrent one is skipped.
        let Some(lock) = AdvisoryLocks::try_instance(&ctx.pool, instance_id).await? else {
            tracing::info!(instance = %instance.name, "another sync of this instance is running; skipped");
            finish(
                SyncOutcome::Skipped {
                    reason: "another sync of this instance was running".into(),
                },
                None,
            )
            .await?;
            return Ok(Disposition::Ack);
        };
        let started = Instant::now();
        let result = self.sync_locked(&instance, txn).await;
        let took = started.elapsed();
        lock.release().await;
        let outcome = result?;
        let restores = match &outcome {
            SyncOutcome::Success { restores, .. } => restores.clone(),
            _ => Vec::new(),
        };
        let events = finish(outcome, Some(took)).await?;
        ctx.publisher.publish_stored(&ctx.topology, &events).await?;
        // A restore whose publish is lost stays `pending`; the sweeper
        // publishes it again.
        agent_listing::publish_restores(&ctx.publisher, &ctx.topology, &restores).await?;
        Ok(Disposition::Ack)
    }

    /// Syncs an instance whose sync lock is held; the outcome is the run's.
    async fn sync_locked(
        &self,
        instance: &instances::InstanceRow,
        txn: uuid::Uuid,
    ) -> Result<SyncOutcome, InfraError> {
        let ctx = &self.ctx;
        let started = Instant::now();
        let failed = |error: String| async move {
            let id = instance.id;
            let e2 = error.clone();
            db::run(&ctx.pool, move |c| db_sync::record_failure(c, id, &e2)).await?;
            let event = sync_failed(instance.id, &instance.name, txn, &error);
            tracing::warn!(instance = %instance.name, error = %error, "sync failed");
            Ok::<_, InfraError>(SyncOutcome::Failed {
                error,
                event: Box::new(event),
            })
        };
        if !breaker::admission(&ctx.pool, instance.id, &ctx.breaker).await? {
            return failed(format!(
                "circuit_open: the circuit breaker of instance {} is open",
                instance.name
            ))
            .await;
        }
        let endpoint = match agent_listing::endpoint(instance) {
            Ok(e) => e,
            Err(e) => return failed(e).await,
        };
        // Rule 6 on one clock: the snapshot is newer than this database time.
        let asked_at = db::run(&ctx.pool, db::database_now).await?;
        let listing = match ctx.agents.backends(&endpoint).await {
            Ok(l) => {
                super::action::publish_breaker_transition(
                    ctx,
                    instance,
                    breaker::record_success(&ctx.pool, instance.id).await?,
                )
                .await?;
                l
            }
            Err(e) => {
                // As on the action path: a call the agent answered (a 4xx,
                // e.g. 401 for a wrong token) shows a live agent, so it
                // counts as a success for the breaker.
                let transition = if e.counts_for_breaker() {
                    breaker::record_failure(&ctx.pool, instance.id, &ctx.breaker).await?
                } else {
                    breaker::record_success(&ctx.pool, instance.id).await?
                };
                super::action::publish_breaker_transition(ctx, instance, transition).await?;
                return failed(format!("{}: {e}", e.failure_code())).await;
            }
        };
        let fetched = started.elapsed();
        let reconciled = agent_listing::reconcile_listing(
            &ctx.pool,
            instance,
            listing,
            asked_at,
            &self.template,
        )
        .await?;
        let mut counts = reconciled.counts;
        counts["fetch_ms"] = serde_json::json!(fetched.as_millis());
        counts["total_ms"] = serde_json::json!(started.elapsed().as_millis());
        tracing::info!(instance = %instance.name, counts = %counts, "synced");
        Ok(SyncOutcome::Success {
            counts,
            events: reconciled.events,
            restores: reconciled.restores,
        })
    }

    /// A sync of every active instance becomes one sync command per instance.
    async fn fan_out(&self, req: &SyncRequest) -> Result<Disposition, InfraError> {
        let ctx = &self.ctx;
        let mut after = 0;
        let mut count = 0;
        loop {
            let page = db::run(&ctx.pool, move |c| instances::list(c, after, 500)).await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            for instance in page.iter().filter(|i| i.is_active) {
                let one = SyncRequest {
                    transaction_id: instance_sync_id(req.transaction_id, instance.id),
                    instance_id: Some(instance.id),
                    ..req.clone()
                };
                ctx.publisher
                    .publish_command(&ctx.topology, &SyncMessage::from(&one))
                    .await?;
                count += 1;
            }
        }
        tracing::info!(
            instances = count,
            "sync of every active instance fanned out"
        );
        Ok(Disposition::Ack)
    }
}
