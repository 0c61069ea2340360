//! Starting and steering rollouts, for the API and the CLI alike: record,
//! then publish a tick (the worker does the rest).

use chrono::Utc;

use super::request::ValidRollout;
use crate::db::approvals::NewApproval;
use crate::db::rollouts::{self, Created, NewRollout, RolloutRow};
use crate::db::schema::{haproxy_rollout_servers as rs, haproxy_rollouts as r};
use crate::db::{self, DbError, PgPool, batches};
use crate::domain::approval::{ApprovalKind, Subject, evaluate};
use crate::domain::event::EventType;
use crate::domain::rollout::{RolloutStatus, Step, plan_waves};
use crate::queue::message::RolloutTick;
use crate::queue::publisher::{PublishError, Publisher};
use crate::queue::topology::Topology;
use crate::worker::rollout::events;

/// What went wrong, by what the caller answers.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// 422.
    #[error("{0}")]
    Invalid(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409, with a code.
    #[error("{1}")]
    Conflict(&'static str, String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// Where rollouts are recorded and their ticks published.
pub struct Rollouts<'a> {
    pub pool: &'a PgPool,
    pub publisher: &'a Publisher,
    pub topology: &'a Topology,
}

/// A recorded rollout and whether this request created it.
#[derive(Debug)]
pub struct Started {
    pub rollout: RolloutRow,
    pub created: bool,
    /// The approval it waits for (`awaiting_approval`).
    pub approval_id: Option<i64>,
}

impl Rollouts<'_> {
    /// Records a rollout of `valid` by `actor` and starts it.
    ///
    /// # Errors
    /// [`RolloutError`]: no live target (422), its transaction id used for
    /// another request or a target in another active rollout (409).
    pub async fn start(&self, actor: &str, valid: &ValidRollout) -> Result<Started, RolloutError> {
        let targets = valid.targets.clone();
        let pairs = db::run(self.pool, move |c| {
            let ids = batches::expand(c, &targets)?;
            rollouts::backends_of(c, &ids)
        })
        .await?;
        if pairs.is_empty() {
            return Err(RolloutError::Invalid(
                "targets name no live server of an active instance".into(),
            ));
        }
        let planned = plan_waves(pairs.clone(), valid.wave_size.servers(pairs.len()));
        let waves = planned.iter().map(|p| p.wave).max().unwrap_or(0) + 1;
        let spec = serde_json::to_value(&valid.spec)
            .map_err(|e| RolloutError::Invalid(format!("the request cannot be stored: {e}")))?;
        let new = NewRollout {
            transaction_id: valid.transaction_id,
            actor: actor.to_owned(),
            reason: valid.reason.clone(),
            spec: spec.clone(),
            waves,
        };
        let servers = planned.len();
        let (txn, requester) = (valid.transaction_id, actor.to_owned());
        let summary = serde_json::json!({
            "servers": servers, "waves": waves, "reason": valid.reason, "spec": spec,
        });
        let created = db::run(self.pool, move |c| {
            let policy = crate::db::approvals::policy(c)?;
            let rules = evaluate(&policy, &Subject::Rollout { servers });
            let hold = (!rules.is_empty()).then_some(NewApproval {
                kind: ApprovalKind::Rollout,
                transaction_id: txn,
                requester,
                summary,
                matched_rules: rules,
                ttl_secs: policy.ttl_secs,
            });
            rollouts::create(c, &new, &planned, hold.as_ref())
        })
        .await?;
        let (rollout, created) = match created {
            Created::New(row) => (row, true),
            Created::Held(row, approval) => {
                self.publisher
                    .publish_event(
                        self.topology,
                        &crate::approvals::event(EventType::ApprovalRequested, &approval),
                    )
                    .await?;
                return Ok(Started {
                    rollout: row,
                    created: true,
                    approval_id: Some(approval.id),
                });
            }
            Created::Existing(row)
                if row.spec == spec && row.actor == actor && row.reason == valid.reason =>
            {
                (row, false)
            }
            Created::Existing(row) => {
                return Err(RolloutError::Conflict(
                    "transaction_conflict",
                    format!(
                        "transaction_id {} was already used for another rollout (rollout {})",
                        row.transaction_id, row.id
                    ),
                ));
            }
            Created::Overlap {
                rollout_id,
                server_id,
            } => {
                return Err(RolloutError::Conflict(
                    "rollout_overlap",
                    format!(
                        "server {server_id} is in rollout {rollout_id}, which is still active: \
                         wait for it to finish or abort it"
                    ),
                ));
            }
        };
        if rollout.status == RolloutStatus::AwaitingApproval {
            let txn = rollout.transaction_id;
            let approval = db::run(self.pool, move |c| {
                crate::db::approvals::by_request(c, ApprovalKind::Rollout, txn)
            })
            .await?;
            return Ok(Started {
                rollout,
                created,
                approval_id: approval.map(|a| a.id),
            });
        }
        // The first tick (again, for a repeated request that may have lost
        // it: a duplicate is dropped by its sequence number). Not for one
        // its approval ended.
        if rollout.tick_seq == 0 && rollout.status.ticks() {
            self.publisher
                .publish_event(self.topology, &events::started(&rollout))
                .await?;
            self.tick(&rollout).await?;
        }
        Ok(Started {
            rollout,
            created,
            approval_id: None,
        })
    }

    async fn tick(&self, rollout: &RolloutRow) -> Result<(), PublishError> {
        let tick = RolloutTick {
            rollout_id: rollout.id,
            seq: rollout.tick_seq,
        };
        self.publisher
            .publish_tick(self.topology, &tick, false)
            .await
    }

    async fn get(&self, id: i64) -> Result<RolloutRow, RolloutError> {
        db::run(self.pool, move |c| rollouts::get(c, id))
            .await?
            .ok_or_else(|| RolloutError::NotFound(format!("no rollout with id {id}")))
    }

    /// Moves the rollout from one of `from` to `to` (and, on a resume,
    /// retries its failed servers), then publishes a tick.
    async fn steer(
        &self,
        id: i64,
        from: &'static [RolloutStatus],
        to: RolloutStatus,
    ) -> Result<RolloutRow, RolloutError> {
        let resume = to == RolloutStatus::Running;
        let changed = db::run(self.pool, move |c| {
            use diesel::prelude::*;
            c.transaction(|c| {
                let row = diesel::update(
                    r::table
                        .find(id)
                        .filter(r::status.eq_any(from.iter().copied())),
                )
                .set((
                    r::status.eq(to),
                    r::halted_reason.eq(None::<String>),
                    r::updated_at.eq(diesel::dsl::now),
                ))
                .returning(RolloutRow::as_returning())
                .get_result(c)
                .optional()?;
                if row.is_some() && resume {
                    retry_failed(c, id)?;
                }
                Ok::<_, DbError>(row)
            })
        })
        .await?;
        let Some(row) = changed else {
            let row = self.get(id).await?;
            return Err(RolloutError::Conflict(
                "invalid_state",
                format!(
                    "rollout {id} is {}; this needs it to be {}",
                    row.status,
                    from.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            ));
        };
        self.kick(&row).await?;
        Ok(row)
    }

    /// Publishes a tick and the hook runs a resume asked for.
    async fn kick(&self, row: &RolloutRow) -> Result<(), RolloutError> {
        let id = row.id;
        let hooks = db::run(self.pool, move |c| {
            use diesel::prelude::*;
            Ok(rs::table
                .filter(rs::rollout_id.eq(id))
                .filter(rs::step.eq(Step::Updating))
                .filter(rs::hook_started_at.is_null())
                .select((rs::id, rs::attempt))
                .load::<(i64, i32)>(c)?)
        })
        .await?;
        for (server_row_id, attempt) in hooks {
            let run = crate::queue::message::RolloutHookRun {
                rollout_id: id,
                server_row_id,
                attempt,
            };
            self.publisher.publish_hook_run(self.topology, &run).await?;
        }
        self.tick(row).await?;
        Ok(())
    }

    /// Pauses a running rollout: no server starts; those in a step finish it.
    ///
    /// # Errors
    /// [`RolloutError`].
    pub async fn pause(&self, id: i64) -> Result<RolloutRow, RolloutError> {
        self.steer(id, &[RolloutStatus::Running], RolloutStatus::Paused)
            .await
    }

    /// Resumes a paused or halted rollout; a halted one retries its failed
    /// servers from the step they failed in.
    ///
    /// # Errors
    /// [`RolloutError`].
    pub async fn resume(&self, id: i64) -> Result<RolloutRow, RolloutError> {
        self.steer(
            id,
            &[RolloutStatus::Paused, RolloutStatus::Halted],
            RolloutStatus::Running,
        )
        .await
    }

    /// Aborts: no server starts; servers in a step are brought to a safe
    /// state (ready if not yet updated or healthy, else left out).
    ///
    /// # Errors
    /// [`RolloutError`].
    pub async fn abort(&self, id: i64) -> Result<RolloutRow, RolloutError> {
        self.steer(
            id,
            &[
                RolloutStatus::Running,
                RolloutStatus::Paused,
                RolloutStatus::Halted,
            ],
            RolloutStatus::Aborting,
        )
        .await
    }

    /// A manual update of `server_id` is done: the rollout goes on with it.
    ///
    /// # Errors
    /// [`RolloutError`]: 409 unless that server waits in `updating`.
    pub async fn continue_server(&self, id: i64, server_id: i64) -> Result<(), RolloutError> {
        let row = self.get(id).await?;
        let done = db::run(self.pool, move |c| {
            use diesel::prelude::*;
            Ok(diesel::update(
                rs::table
                    .filter(rs::rollout_id.eq(id))
                    .filter(rs::server_id.eq(server_id))
                    .filter(rs::step.eq(Step::Updating))
                    .filter(rs::hook_finished_at.is_null()),
            )
            .set((
                rs::hook_finished_at.eq(diesel::dsl::now),
                rs::hook_exit_code.eq(Some(0)),
                rs::hook_output.eq(Some(format!(
                    "continued by an operator at {}",
                    Utc::now().to_rfc3339()
                ))),
            ))
            .execute(c)?)
        })
        .await?;
        if done == 0 {
            return Err(RolloutError::Conflict(
                "invalid_state",
                format!("server {server_id} of rollout {id} does not wait for its update"),
            ));
        }
        self.tick(&row).await?;
        Ok(())
    }

    /// Leaves a failed server out of the rollout (it stays as it is, out of
    /// traffic); a halted rollout with no other failed server goes on.
    ///
    /// # Errors
    /// [`RolloutError`]: 409 unless that server failed.
    pub async fn skip_server(&self, id: i64, server_id: i64) -> Result<(), RolloutError> {
        let row = self.get(id).await?;
        let skipped = db::run(self.pool, move |c| {
            use diesel::prelude::*;
            c.transaction(|c| {
                let n = diesel::update(
                    rs::table
                        .filter(rs::rollout_id.eq(id))
                        .filter(rs::server_id.eq(server_id))
                        .filter(rs::step.eq(Step::Failed)),
                )
                .set((
                    rs::step.eq(Step::Skipped),
                    rs::finished_at.eq(diesel::dsl::now),
                ))
                .execute(c)?;
                let failed_left: i64 = rs::table
                    .filter(rs::rollout_id.eq(id))
                    .filter(rs::step.eq(Step::Failed))
                    .count()
                    .get_result(c)?;
                if n == 1 && failed_left == 0 {
                    diesel::update(
                        r::table
                            .find(id)
                            .filter(r::status.eq(RolloutStatus::Halted)),
                    )
                    .set((
                        r::status.eq(RolloutStatus::Running),
                        r::halted_reason.eq(None::<String>),
                    ))
                    .execute(c)?;
                }
                Ok::<_, DbError>(n)
            })
        })
        .await?;
        if skipped == 0 {
            return Err(RolloutError::Conflict(
                "invalid_state",
                format!("server {server_id} of rollout {id} has not failed"),
            ));
        }
        self.tick(&row).await?;
        Ok(())
    }
}

/// Failed servers go back to the step they failed in, as a new attempt
/// (new transaction ids; a failed hook runs again).
fn retry_failed(c: &mut diesel::PgConnection, id: i64) -> Result<(), DbError> {
    use diesel::prelude::*;
    diesel::update(
        rs::table
            .filter(rs::rollout_id.eq(id))
            .filter(rs::step.eq(Step::Failed)),
    )
    .set((
        rs::step.eq(rs::failed_step.assume_not_null()),
        rs::attempt.eq(rs::attempt + 1),
        rs::error.eq(None::<String>),
        rs::healthy_since.eq(None::<chrono::DateTime<Utc>>),
        rs::step_started_at.eq(diesel::dsl::now),
        rs::hook_started_at.eq(None::<chrono::DateTime<Utc>>),
        rs::hook_finished_at.eq(None::<chrono::DateTime<Utc>>),
        rs::hook_exit_code.eq(None::<i32>),
    ))
    .execute(c)?;
    Ok(())
}
