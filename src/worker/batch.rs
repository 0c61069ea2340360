//! The `batch` handler: expands a batch into one `action` per live server,
//! each with transaction id UUIDv5(batch transaction id, "server:{id}"), so
//! re-sending a batch never doubles an action. The actions carry the batch's
//! id; the last one to finish publishes `batch.completed`.

use std::sync::Arc;

use chrono::Utc;
use futures::future::BoxFuture;
use tracing::Instrument;

use super::events::batch_completed;
use super::{Trouble, WorkerContext};
use crate::db;
use crate::db::batches::{self, NewBatch};
use crate::domain::action::{BatchRequest, batch_action_id};
use crate::queue::message::parse_batch;
use crate::queue::publisher::Outgoing;
use crate::queue::topology::ROUTE_ACTION;
use crate::queue::{Disposition, Handler, Incoming};

pub struct BatchHandler {
    ctx: Arc<WorkerContext>,
}

impl BatchHandler {
    pub fn new(ctx: Arc<WorkerContext>) -> Self {
        Self { ctx }
    }
}

impl Handler for BatchHandler {
    fn handle(self: Arc<Self>, message: Incoming) -> BoxFuture<'static, Disposition> {
        Box::pin(async move {
            let request = match parse_batch(&message.data) {
                Ok(r) => r,
                Err(e) => return Disposition::DeadLetter(e.0),
            };
            let span = tracing::info_span!(
                "batch",
                transaction_id = %request.transaction_id,
                action = %request.action,
                actor = %request.actor,
            );
            async move {
                match expand(&self.ctx, &request).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(error = %e, "batch hit infrastructure trouble; giving it back");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        Disposition::Requeue
                    }
                }
            }
            .instrument(span)
            .await
        })
    }
}

async fn expand(ctx: &WorkerContext, req: &BatchRequest) -> Result<Disposition, Trouble> {
    let targets = req.targets.clone();
    let server_ids = db::run(&ctx.pool, move |c| batches::expand(c, &targets)).await?;
    let total = i32::try_from(server_ids.len()).unwrap_or(i32::MAX);
    let new = NewBatch {
        transaction_id: req.transaction_id,
        action: req.action,
        actor: req.actor.clone(),
        reason: req.reason.clone(),
        force: req.force,
        targets: req.targets.to_json(),
        total,
        requested_at: req.requested_at.unwrap_or_else(Utc::now),
    };
    let (batch, created) = db::run(&ctx.pool, move |c| batches::create(c, &new)).await?;
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
        let transaction_id = batch_action_id(batch.transaction_id, *server_id);
        let body = serde_json::to_vec(&serde_json::json!({
            "transaction_id": transaction_id,
            "action": batch.action,
            "target": { "server_id": server_id },
            "actor": batch.actor,
            "requested_at": batch.requested_at.to_rfc3339(),
            "reason": batch.reason,
            "force": batch.force,
            "batch_id": batch.id,
        }))
        .unwrap_or_default();
        ctx.publisher
            .publish(Outgoing {
                exchange: &ctx.topology.commands_exchange,
                routing_key: ROUTE_ACTION,
                body: &body,
                message_id: &transaction_id.to_string(),
                headers: lapin::types::FieldTable::default(),
            })
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
pub async fn completed(ctx: &WorkerContext, batch_id: i64) -> Result<(), Trouble> {
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
