//! Four-eyes approval (docs/approvals.md): holding a request the policy
//! matches, and deciding it — approve, reject, or expire — for the API, the
//! worker and the sweeper alike.
//!
//! A held request is recorded with status `awaiting_approval` together with
//! its approval row, in one transaction ([`hold_action`], [`hold_batch`],
//! and `db::rollouts::create` for rollouts). A decision locks the approval
//! row, writes it and moves the request in one transaction: approved, the
//! request becomes `pending` (a rollout `running`) with the database's now
//! as its `requested_at`, and its command is published on the normal path
//! under its original transaction id; rejected or expired, it ends
//! (`rejected`, with a reason naming the approval) and nothing reaches
//! HAProxy. Events are published after the commit; a lost publish of the
//! command is repaired by the sweeper (a `pending` action or an open batch
//! is published again after its grace).

use chrono::Utc;
use diesel::prelude::*;
use uuid::Uuid;

use crate::db::actions::{self, ActionRow, Claim, NewAction};
use crate::db::approvals::{self, ApprovalRow, NewApproval};
use crate::db::batches::{self, BatchRow, NewBatch};
use crate::db::rollouts::RolloutRow;
use crate::db::schema::{haproxy_actions as a, haproxy_batches as t, haproxy_rollouts as r};
use crate::db::{self, DbError, PgPool, inventory};
use crate::domain::action::{ActionStatus, BatchStatus};
use crate::domain::approval::{ApprovalKind, ApprovalStatus, MatchedRule};
use crate::domain::event::{ApprovalRef, Event, EventType};
use crate::domain::rollout::RolloutStatus;
use crate::queue::message::{ActionMessage, BatchMessage, RolloutTick, parse_batch_targets_json};
use crate::queue::publisher::{PublishError, Publisher};
use crate::queue::topology::Topology;
use crate::worker::events::ActionFacts;

/// The actor of expiries.
pub const EXPIRY_ACTOR: &str = "system:approval-expiry";

/// Approvals expired per statement of a sweep.
const EXPIRE_BATCH: i64 = 100;

/// The `approval.*` event of an approval's current state (its id derives
/// from the approval and the event type, so a re-publication is the same).
pub fn event(kind: EventType, row: &ApprovalRow) -> Event {
    let (actor, at) = match kind {
        EventType::ApprovalRequested => (row.requester.as_str(), row.requested_at),
        EventType::ApprovalExpired => (EXPIRY_ACTOR, row.decided_at.unwrap_or(row.expires_at)),
        _ => (
            row.decided_by.as_deref().unwrap_or(EXPIRY_ACTOR),
            row.decided_at.unwrap_or_else(Utc::now),
        ),
    };
    let mut e = Event::new(
        kind,
        &format!("approval:{}", row.id),
        at,
        actor,
        Some(row.transaction_id),
    );
    e.approval = Some(ApprovalRef {
        id: row.id,
        kind: row.kind.to_string(),
        status: row.status.to_string(),
        requester: row.requester.clone(),
        summary: row.summary.clone(),
        matched_rules: row.matched_rules.clone(),
        requested_at: row.requested_at,
        expires_at: row.expires_at,
        decided_by: row.decided_by.clone(),
        decided_at: row.decided_at,
        comment: row.comment.clone(),
    });
    e
}

/// A request held or found.
#[derive(Debug)]
pub enum Held<T> {
    /// Recorded now, awaiting this approval.
    New(T, ApprovalRow),
    /// The transaction id has a row already (left as it is).
    Existing(T),
}

fn approval_of(
    kind: ApprovalKind,
    transaction_id: Uuid,
    requester: &str,
    summary: serde_json::Value,
    rules: Vec<MatchedRule>,
    ttl_secs: u64,
) -> NewApproval {
    NewApproval {
        kind,
        transaction_id,
        requester: requester.to_owned(),
        summary,
        matched_rules: rules,
        ttl_secs,
    }
}

/// Records an action held for approval (`awaiting_approval`) and its
/// approval in one transaction; a transaction id that has a row already
/// creates nothing.
///
/// # Errors
/// [`DbError`].
pub fn hold_action(
    conn: &mut PgConnection,
    new: &NewAction,
    summary: serde_json::Value,
    rules: Vec<MatchedRule>,
    ttl_secs: u64,
) -> Result<Held<ActionRow>, DbError> {
    let new = NewAction {
        status: ActionStatus::AwaitingApproval,
        ..new.clone()
    };
    let approval = approval_of(
        ApprovalKind::Action,
        new.transaction_id,
        &new.actor,
        summary,
        rules,
        ttl_secs,
    );
    conn.transaction(|c| {
        db::pool::durable(c)?;
        match actions::claim(c, &new)? {
            Claim::New(row) => Ok(Held::New(row, approvals::create(c, &approval)?.0)),
            Claim::Existing(row) => Ok(Held::Existing(row)),
        }
    })
}

/// Records a batch held for approval and its approval in one transaction;
/// a transaction id that has a batch already creates nothing.
///
/// # Errors
/// [`DbError`].
pub fn hold_batch(
    conn: &mut PgConnection,
    new: &NewBatch,
    summary: serde_json::Value,
    rules: Vec<MatchedRule>,
    ttl_secs: u64,
) -> Result<Held<BatchRow>, DbError> {
    let approval = approval_of(
        ApprovalKind::Batch,
        new.transaction_id,
        &new.actor,
        summary,
        rules,
        ttl_secs,
    );
    conn.transaction(|c| {
        db::pool::durable(c)?;
        let (row, created) = batches::create_with_status(c, new, BatchStatus::AwaitingApproval)?;
        if !created {
            return Ok(Held::Existing(row));
        }
        Ok(Held::New(row, approvals::create(c, &approval)?.0))
    })
}

/// What an approver sees of a held action.
pub fn action_summary(new: &NewAction, target: &inventory::ServerTarget) -> serde_json::Value {
    serde_json::json!({
        "action": new.action, "server_id": target.server.id,
        "instance": target.instance.name, "backend": target.backend_name,
        "server": target.server.server_name, "force": new.force, "reason": new.reason,
    })
}

/// The summary an approver sees of a batch.
pub fn batch_summary(new: &NewBatch) -> serde_json::Value {
    serde_json::json!({
        "action": new.action, "targets": new.targets, "servers": new.total,
        "force": new.force, "reason": new.reason,
    })
}

/// The places of servers, for the `maint_*` rules (only read when the
/// policy has such a rule and the action is `maint`).
///
/// # Errors
/// [`DbError`].
pub fn places_of(
    conn: &mut PgConnection,
    policy: &crate::domain::approval::ApprovalPolicy,
    action: crate::domain::AdminState,
    server_ids: &[i64],
) -> Result<Vec<crate::domain::approval::Place>, DbError> {
    let needed = action == crate::domain::AdminState::Maint
        && !(policy.maint_instances.is_empty() && policy.maint_backends.is_empty());
    if !needed {
        // Only the count matters to the other rules.
        return Ok(vec![
            crate::domain::approval::Place {
                instance: String::new(),
                backend: String::new(),
            };
            server_ids.len()
        ]);
    }
    batches::places(conn, server_ids)
}

/// What a decision is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Reject,
}

/// Why a decision was not made.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("no approval with id {0}")]
    NotFound(i64),
    #[error(
        "{actor} asked for this request (approval {id}); an approval needs a second person: \
         another approver must decide it"
    )]
    OwnRequest { id: i64, actor: String },
    /// Decided already, or expired (now or before): the approval as it is.
    #[error("approval {} is {} already", .0.id, .0.status)]
    NotPending(Box<ApprovalRow>),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// What a committed decision leaves to publish.
enum Resumed {
    Action(ActionRow),
    Batch(BatchRow),
    Rollout(RolloutRow),
    Nothing,
}

/// The events of an ended request, committed with it.
type Ended = Vec<Event>;

enum Decided {
    NotFound,
    Own(String),
    NotPending(ApprovalRow),
    Expired(ApprovalRow, Ended),
    Approved(ApprovalRow, Box<Resumed>),
    Rejected(ApprovalRow, Ended),
}

/// Where approvals are decided and their consequences published.
pub struct Approvals<'a> {
    pub pool: &'a PgPool,
    pub publisher: &'a Publisher,
    pub topology: &'a Topology,
}

impl Approvals<'_> {
    /// Approves or rejects approval `id` as `actor`, with `comment`.
    ///
    /// # Errors
    /// [`DecideError`]: no such approval (404), the actor's own request
    /// (403), decided or expired (409, with the approval; an approval found
    /// past its expiry is expired now).
    pub async fn decide(
        &self,
        id: i64,
        decision: Decision,
        actor: &str,
        comment: Option<String>,
    ) -> Result<ApprovalRow, DecideError> {
        let who = actor.to_owned();
        let decided = db::run(self.pool, move |c| {
            c.transaction(|c| decide_in(c, id, decision, &who, comment.as_deref()))
        })
        .await?;
        match decided {
            Decided::NotFound => Err(DecideError::NotFound(id)),
            Decided::Own(actor) => Err(DecideError::OwnRequest { id, actor }),
            Decided::NotPending(row) => Err(DecideError::NotPending(Box::new(row))),
            Decided::Expired(row, ended) => {
                self.publish_end(EventType::ApprovalExpired, &row, &ended)
                    .await?;
                Err(DecideError::NotPending(Box::new(row)))
            }
            Decided::Rejected(row, ended) => {
                tracing::info!(approval_id = id, actor, "approval rejected");
                self.publish_end(EventType::ApprovalRejected, &row, &ended)
                    .await?;
                Ok(row)
            }
            Decided::Approved(row, resumed) => {
                tracing::info!(approval_id = id, actor, transaction_id = %row.transaction_id, "approval approved; the request runs");
                self.publisher
                    .publish_event(self.topology, &event(EventType::ApprovalApproved, &row))
                    .await?;
                self.resume(*resumed).await?;
                Ok(row)
            }
        }
    }

    async fn publish_end(
        &self,
        kind: EventType,
        row: &ApprovalRow,
        ended: &[Event],
    ) -> Result<(), PublishError> {
        self.publisher
            .publish_event(self.topology, &event(kind, row))
            .await?;
        for e in ended {
            self.publisher.publish_event(self.topology, e).await?;
        }
        Ok(())
    }

    /// Publishes an approved request's command on the normal path.
    async fn resume(&self, resumed: Resumed) -> Result<(), DecideError> {
        match resumed {
            Resumed::Action(row) => {
                if let Some(request) = row.request() {
                    self.publisher
                        .publish_command(self.topology, &ActionMessage::from(&request))
                        .await?;
                }
            }
            Resumed::Batch(row) => {
                let Ok(targets) = parse_batch_targets_json(&row.targets) else {
                    tracing::error!(
                        batch_id = row.id,
                        "an approved batch's stored targets do not parse; left to the sweeper"
                    );
                    return Ok(());
                };
                self.publisher
                    .publish_command(self.topology, &BatchMessage::from(&row.request(targets)))
                    .await?;
            }
            Resumed::Rollout(row) => {
                self.publisher
                    .publish_event(
                        self.topology,
                        &crate::worker::rollout::events::started(&row),
                    )
                    .await?;
                let tick = RolloutTick {
                    rollout_id: row.id,
                    seq: row.tick_seq,
                };
                self.publisher
                    .publish_tick(self.topology, &tick, false)
                    .await?;
            }
            Resumed::Nothing => {}
        }
        Ok(())
    }

    /// Expires every pending approval past its `expires_at` (database
    /// clock): each ends its request like a rejection. Returns how many.
    ///
    /// # Errors
    /// Database or broker trouble.
    pub async fn expire_due(&self) -> Result<usize, DecideError> {
        let expired = db::run(self.pool, |c| {
            c.transaction(|c| {
                db::pool::durable(c)?;
                let mut out = Vec::new();
                for row in approvals::take_expired(c, EXPIRE_BATCH)? {
                    out.push(expire(c, row)?);
                }
                Ok::<_, DbError>(out)
            })
        })
        .await?;
        for (row, ended) in &expired {
            tracing::warn!(approval_id = row.id, transaction_id = %row.transaction_id, kind = %row.kind, "approval expired; its request ends");
            self.publish_end(EventType::ApprovalExpired, row, ended)
                .await?;
        }
        Ok(expired.len())
    }
}

fn decide_in(
    c: &mut PgConnection,
    id: i64,
    decision: Decision,
    actor: &str,
    comment: Option<&str>,
) -> Result<Decided, DbError> {
    db::pool::durable(c)?;
    let Some((row, past)) = approvals::lock(c, id)? else {
        return Ok(Decided::NotFound);
    };
    if row.status != ApprovalStatus::Pending {
        return Ok(Decided::NotPending(row));
    }
    if row.requester == actor {
        return Ok(Decided::Own(row.requester));
    }
    if past {
        let (row, ended) = expire(c, row)?;
        return Ok(Decided::Expired(row, ended));
    }
    Ok(match decision {
        Decision::Approve => {
            let row = approvals::decide(c, id, ApprovalStatus::Approved, Some(actor), comment)?;
            let resumed = resume_in(c, &row)?;
            Decided::Approved(row, Box::new(resumed))
        }
        Decision::Reject => {
            let row = approvals::decide(c, id, ApprovalStatus::Rejected, Some(actor), comment)?;
            let why = format!(
                "approval {id} was rejected by {actor}{}",
                comment.map(|m| format!(": {m}")).unwrap_or_default()
            );
            let ended = end_in(c, &row, &why)?;
            Decided::Rejected(row, ended)
        }
    })
}

fn expire(c: &mut PgConnection, row: ApprovalRow) -> Result<(ApprovalRow, Ended), DbError> {
    let row = approvals::decide(c, row.id, ApprovalStatus::Expired, None, None)?;
    let why = format!(
        "approval {} expired at {} without a decision",
        row.id,
        row.expires_at.to_rfc3339()
    );
    let ended = end_in(c, &row, &why)?;
    Ok((row, ended))
}

/// Approved: the request as if sent now — `pending` with the database's
/// now as `requested_at` (a rollout `running`); `swept_at` too, so the
/// sweeper's grace starts now.
fn resume_in(c: &mut PgConnection, row: &ApprovalRow) -> Result<Resumed, DbError> {
    let txn = row.transaction_id;
    let now = diesel::dsl::now;
    Ok(match row.kind {
        ApprovalKind::Action => diesel::update(
            a::table
                .filter(a::transaction_id.eq(txn))
                .filter(a::status.eq(ActionStatus::AwaitingApproval)),
        )
        .set((
            a::status.eq(ActionStatus::Pending),
            a::requested_at.eq(now),
            a::swept_at.eq(now),
        ))
        .returning(ActionRow::as_returning())
        .get_result(c)
        .optional()?
        .map_or(Resumed::Nothing, Resumed::Action),
        ApprovalKind::Batch => diesel::update(
            t::table
                .filter(t::transaction_id.eq(txn))
                .filter(t::status.eq(BatchStatus::AwaitingApproval)),
        )
        .set((
            t::status.eq(BatchStatus::Accepted),
            t::requested_at.eq(now),
            t::swept_at.eq(now),
        ))
        .returning(BatchRow::as_returning())
        .get_result(c)
        .optional()?
        .map_or(Resumed::Nothing, Resumed::Batch),
        ApprovalKind::Rollout => diesel::update(
            r::table
                .filter(r::transaction_id.eq(txn))
                .filter(r::status.eq(RolloutStatus::AwaitingApproval)),
        )
        .set((r::status.eq(RolloutStatus::Running), r::updated_at.eq(now)))
        .returning(RolloutRow::as_returning())
        .get_result(c)
        .optional()?
        .map_or(Resumed::Nothing, Resumed::Rollout),
    })
}

/// Rejected or expired: the request ends `rejected` with `why` (naming the
/// approval); returns its final events (stored on an action's row too, so
/// a duplicate of its command re-publishes them).
fn end_in(c: &mut PgConnection, row: &ApprovalRow, why: &str) -> Result<Ended, DbError> {
    let txn = row.transaction_id;
    match row.kind {
        ApprovalKind::Action => {
            let Some(action) = actions::get_by_transaction(c, txn)?
                .filter(|r| r.status == ActionStatus::AwaitingApproval)
            else {
                return Ok(Vec::new());
            };
            let target = match action.server_id {
                Some(id) => inventory::find_server(c, id)?,
                None => None,
            };
            let facts = ActionFacts {
                transaction_id: txn,
                action: action.action,
                actor: &action.actor,
                target: target.as_ref(),
                occurred_at: Utc::now(),
            };
            let events = vec![facts.not_approved(why, target.as_ref().map(|t| t.server.state()))];
            let stored = serde_json::to_value(&events).unwrap_or_default();
            diesel::update(a::table.find(action.id))
                .set((
                    a::status.eq(ActionStatus::Rejected),
                    a::error_detail.eq(why),
                    a::events.eq(&stored),
                    a::finished_at.eq(diesel::dsl::now),
                ))
                .execute(c)?;
            Ok(events)
        }
        ApprovalKind::Batch => {
            let batch: Option<BatchRow> = diesel::update(
                t::table
                    .filter(t::transaction_id.eq(txn))
                    .filter(t::status.eq(BatchStatus::AwaitingApproval)),
            )
            .set((
                t::status.eq(BatchStatus::Rejected),
                t::status_detail.eq(why),
                t::completed_at.eq(diesel::dsl::now),
            ))
            .returning(BatchRow::as_returning())
            .get_result(c)
            .optional()?;
            let Some(batch) = batch else {
                return Ok(Vec::new());
            };
            let counts = batches::counts(c, &batch)?;
            Ok(vec![crate::worker::events::batch_completed(&batch, counts)])
        }
        ApprovalKind::Rollout => {
            diesel::update(
                r::table
                    .filter(r::transaction_id.eq(txn))
                    .filter(r::status.eq(RolloutStatus::AwaitingApproval)),
            )
            .set((
                r::status.eq(RolloutStatus::Rejected),
                r::halted_reason.eq(why),
                r::updated_at.eq(diesel::dsl::now),
                r::finished_at.eq(diesel::dsl::now),
            ))
            .execute(c)?;
            Ok(Vec::new())
        }
    }
}
