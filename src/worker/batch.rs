//! The `batch` handler: expands a batch into one `action` per live server,
//! each with transaction id UUIDv5(batch transaction id, "server:{id}"), so
//! re-sending a batch never doubles an action. The actions carry the batch's
//! id; the last one to finish publishes `batch.completed`.

use std::sync::Arc;
use std::time::Duration;

use super::events::batch_completed;
use super::{InfraError, WorkerContext};
use crate::approvals::Held;
use crate::db;
use crate::db::approvals;
use crate::db::batches::{self, NewBatch};
use crate::domain::action::{ActionRequest, BatchRequest, BatchStatus, Target, batch_action_id};
use crate::domain::approval::{Subject, actor_is_exempt, evaluate};
use crate::domain::event::EventType;
use crate::queue::message::{ActionMessage, BatchTargetsMessage, InvalidMessage, parse_batch};
use crate::queue::{Disposition, InfraRetryPolicy, MessageHandler};

pub struct BatchHandler {
    ctx: Arc<WorkerContext>,
}

impl BatchHandler {
    pub fn new(ctx: Arc<WorkerContext>) -> Self {
        Self { ctx }
    }
}

impl MessageHandler for BatchHandler {
    type Request = super::Commanded<BatchRequest>;
    type InfraError = InfraError;

    const INFRA_RETRY: InfraRetryPolicy = InfraRetryPolicy {
        retries: &[],
        pause_before_requeue: Duration::from_secs(1),
    };

    fn parse(&self, data: &[u8]) -> Result<Self::Request, InvalidMessage> {
        Ok(super::Commanded {
            request: parse_batch(data)?,
            callback_url: self.ctx.callbacks.parse(data)?,
        })
    }

    fn span(&self, request: &Self::Request) -> tracing::Span {
        let request = &request.request;
        tracing::info_span!(
            "batch",
            transaction_id = %request.transaction_id,
            action = %request.action,
            actor = %request.actor,
        )
    }

    async fn process(&self, commanded: &Self::Request) -> Result<Disposition, InfraError> {
        super::record_callback(
            &self.ctx,
            commanded.request.transaction_id,
            crate::domain::webhook::CallbackKind::Batch,
            commanded.callback_url.as_ref(),
        )
        .await?;
        expand(&self.ctx, &commanded.request).await
    }
}

/// What recording a batch command found.
enum Recorded {
    Created(crate::db::batches::BatchRow),
    Found(crate::db::batches::BatchRow),
    /// Recorded now, held for this approval.
    Held(Box<crate::db::approvals::ApprovalRow>),
}

async fn expand(ctx: &WorkerContext, req: &BatchRequest) -> Result<Disposition, InfraError> {
    let requested_at = match super::action::requested_at(ctx, req.requested_at).await? {
        Ok(at) => at,
        Err(reason) => {
            tracing::warn!(reason = %reason, "batch refused");
            return Ok(Disposition::DeadLetter(reason));
        }
    };
    let targets = req.targets.clone();
    let server_ids = db::run(&ctx.pool, move |c| batches::expand(c, &targets)).await?;
    let server_ids_for_policy = server_ids.clone();
    let total = i32::try_from(server_ids.len()).unwrap_or(i32::MAX);
    let targets = match BatchTargetsMessage::from(&req.targets).to_value() {
        Ok(t) => t,
        Err(e) => {
            return Ok(Disposition::DeadLetter(format!(
                "the targets cannot be recorded: {e}"
            )));
        }
    };
    let new = NewBatch {
        transaction_id: req.transaction_id,
        action: req.action,
        actor: req.actor.clone(),
        reason: req.reason.clone(),
        force: req.force,
        targets,
        total,
        requested_at,
    };
    let exempt = actor_is_exempt(&req.actor);
    let (txn, action) = (req.transaction_id, req.action);
    let recorded = db::run(&ctx.pool, move |c| {
        if let Some(row) = batches::by_transaction(c, txn)? {
            return Ok(Recorded::Found(row));
        }
        if !exempt {
            let policy = approvals::policy(c)?;
            let places = crate::approvals::places_of(c, &policy, action, &server_ids_for_policy)?;
            let rules = evaluate(
                &policy,
                &Subject::Batch {
                    action,
                    force: new.force,
                    places: &places,
                },
            );
            if !rules.is_empty() {
                let summary = crate::approvals::batch_summary(&new);
                return Ok(
                    match crate::approvals::hold_batch(c, &new, summary, rules, policy.ttl_secs)? {
                        Held::New(_, approval) => Recorded::Held(Box::new(approval)),
                        Held::Existing(row) => Recorded::Found(row),
                    },
                );
            }
        }
        let (row, created) = batches::create(c, &new)?;
        Ok(if created {
            Recorded::Created(row)
        } else {
            Recorded::Found(row)
        })
    })
    .await?;
    let (batch, created) = match recorded {
        Recorded::Held(approval) => {
            tracing::info!(approval_id = approval.id, "batch held for approval");
            let event = crate::approvals::event(EventType::ApprovalRequested, &approval);
            ctx.publisher.publish_event(&ctx.topology, &event).await?;
            return Ok(Disposition::Ack);
        }
        Recorded::Found(row) if row.status == BatchStatus::AwaitingApproval => {
            tracing::info!(batch_id = row.id, "batch awaiting approval; nothing to do");
            return Ok(Disposition::Ack);
        }
        Recorded::Found(row) if row.status == BatchStatus::Rejected => {
            // Its batch.completed again, as for a duplicate of a finished batch.
            completed(ctx, row.id).await?;
            return Ok(Disposition::Ack);
        }
        Recorded::Found(row) => (row, false),
        Recorded::Created(row) => (row, true),
    };
    if batch.action != req.action {
        return Ok(Disposition::DeadLetter(format!(
            "transaction_id {} was already used for another batch ({})",
            req.transaction_id, batch.action
        )));
    }
    if !created && batch.total != total {
        // Recorded by the API a moment ago: the servers now live are what
        // the batch acts on.
        let id = batch.id;
        db::run(&ctx.pool, move |c| batches::set_total(c, id, total)).await?;
    }
    for server_id in &server_ids {
        // The batch's row as recorded (its action is the request's: checked above).
        let action = ActionRequest {
            transaction_id: batch_action_id(batch.transaction_id, *server_id),
            action: req.action,
            target: Target::ServerId(*server_id),
            actor: batch.actor.clone(),
            requested_at: Some(batch.requested_at),
            reason: batch.reason.clone(),
            force: batch.force,
            batch_id: Some(batch.id),
        };
        ctx.publisher
            .publish_command(&ctx.topology, &ActionMessage::from(&action))
            .await?;
    }
    tracing::info!(
        batch_id = batch.id,
        actions = server_ids.len(),
        "batch expanded"
    );
    if server_ids.is_empty() {
        completed(ctx, batch.id).await?;
    }
    Ok(Disposition::Ack)
}

/// Publishes `batch.completed` when every action of the batch is final
/// (marking it completed first); once completed, a later call publishes the
/// same event again (same `event_id`), so a lost publish is repaired by the
/// redelivery of the message that completed it.
///
/// # Errors
/// Database or broker trouble.
pub async fn completed(ctx: &WorkerContext, batch_id: i64) -> Result<(), InfraError> {
    let done = db::run(&ctx.pool, move |c| {
        batches::complete_if_done(c, batch_id)?;
        let Some(batch) = batches::get(c, batch_id)? else {
            return Ok(None);
        };
        if batch.completed_at.is_none() {
            return Ok(None);
        }
        let counts = batches::counts(c, &batch)?;
        Ok(Some((batch, counts)))
    })
    .await?;
    if let Some((batch, counts)) = done {
        let event = batch_completed(&batch, counts);
        ctx.publisher.publish_event(&ctx.topology, &event).await?;
    }
    Ok(())
}
