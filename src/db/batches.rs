//! `haproxy_batches`: one action for many servers, and their expansion.
//!
//! DSL throughout, except [`complete_if_done`]: its UPDATE compares a
//! correlated count with the row's own `total`, which the DSL cannot say.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use uuid::Uuid;

use super::DbError;
use super::schema::{
    application_group_members as g, haproxy_actions as a, haproxy_backends as b,
    haproxy_batches as t, haproxy_instances as i, haproxy_servers as s,
};
use crate::domain::AdminState;
use crate::domain::action::{ActionStatus, BatchRequest, BatchStatus, BatchTargets};

/// A batch as stored.
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = t)]
pub struct BatchRow {
    pub id: i64,
    pub transaction_id: Uuid,
    pub action: AdminState,
    pub actor: String,
    pub reason: Option<String>,
    pub force: bool,
    pub targets: serde_json::Value,
    pub total: i32,
    pub requested_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub status: BatchStatus,
    /// Why it was rejected (names the approval).
    pub status_detail: Option<String>,
}

impl BatchRow {
    /// The `batch` command this row was recorded from, with `targets` (the
    /// row's, parsed by the caller): what is published again for it.
    pub fn request(&self, targets: BatchTargets) -> BatchRequest {
        BatchRequest {
            transaction_id: self.transaction_id,
            action: self.action,
            targets,
            actor: self.actor.clone(),
            requested_at: Some(self.requested_at),
            reason: self.reason.clone(),
            force: self.force,
        }
    }
}

/// The live servers a batch's targets name, ordered by backend then server
/// (so the guard is evaluated backend by backend, in order).
pub fn expand(conn: &mut PgConnection, targets: &BatchTargets) -> Result<Vec<i64>, DbError> {
    let live = s::table
        .inner_join(b::table.inner_join(i::table))
        .filter(s::removed_at.is_null())
        .filter(b::removed_at.is_null())
        .filter(i::is_active)
        .order((b::id, s::id))
        .select(s::id)
        .into_boxed();
    // `assume_not_null`: a server linked to no application matches no id.
    let application = s::application_id.assume_not_null();
    let query = match targets {
        BatchTargets::ServerIds(ids) => live.filter(s::id.eq_any(ids)),
        BatchTargets::ApplicationIds(ids) => live.filter(application.eq_any(ids)),
        BatchTargets::ApplicationGroup(group) => live.filter(
            application.eq_any(
                g::table
                    .filter(g::group_id.eq(*group))
                    .select(g::application_id),
            ),
        ),
    };
    Ok(query.load(conn)?)
}

/// What [`create`] needs.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = t)]
pub struct NewBatch {
    pub transaction_id: Uuid,
    pub action: AdminState,
    pub actor: String,
    pub reason: Option<String>,
    pub force: bool,
    pub targets: serde_json::Value,
    pub total: i32,
    pub requested_at: DateTime<Utc>,
}

/// Records a batch, or returns the one its transaction id already has;
/// the flag says whether it was created now.
pub fn create(conn: &mut PgConnection, new: &NewBatch) -> Result<(BatchRow, bool), DbError> {
    create_with_status(conn, new, BatchStatus::Accepted)
}

/// [`create`] with the status a new row gets (`awaiting_approval` for a
/// batch held for approval).
pub fn create_with_status(
    conn: &mut PgConnection,
    new: &NewBatch,
    status: BatchStatus,
) -> Result<(BatchRow, bool), DbError> {
    let inserted: Option<BatchRow> = diesel::insert_into(t::table)
        .values((new, t::status.eq(status)))
        .on_conflict(t::transaction_id)
        .do_nothing()
        .returning(BatchRow::as_returning())
        .get_result(conn)
        .optional()?;
    if let Some(row) = inserted {
        return Ok((row, true));
    }
    let row = by_transaction(conn, new.transaction_id)?
        .ok_or(DbError::Query(diesel::result::Error::NotFound))?;
    Ok((row, false))
}

pub fn by_transaction(
    conn: &mut PgConnection,
    transaction_id: Uuid,
) -> Result<Option<BatchRow>, DbError> {
    Ok(t::table
        .filter(t::transaction_id.eq(transaction_id))
        .select(BatchRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn get(conn: &mut PgConnection, id: i64) -> Result<Option<BatchRow>, DbError> {
    Ok(t::table
        .find(id)
        .select(BatchRow::as_select())
        .first(conn)
        .optional()?)
}

/// Counts of the batch's actions by status. Servers of the batch whose
/// action has not been recorded yet count as `pending`.
pub fn counts(conn: &mut PgConnection, batch: &BatchRow) -> Result<BTreeMap<String, i64>, DbError> {
    let rows: Vec<(ActionStatus, i64)> = a::table
        .filter(a::batch_id.eq(batch.id))
        .group_by(a::status)
        .select((a::status, diesel::dsl::count_star()))
        .load(conn)?;
    let mut counts: BTreeMap<String, i64> = ActionStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    let mut recorded = 0;
    for (status, n) in rows {
        recorded += n;
        counts.insert(status.as_str().to_owned(), n);
    }
    let missing = i64::from(batch.total) - recorded;
    // A batch's servers with no action yet: waiting for the batch's
    // approval, ended by its rejection, or about to be expanded.
    let unrecorded = match batch.status {
        BatchStatus::AwaitingApproval => ActionStatus::AwaitingApproval,
        BatchStatus::Rejected => ActionStatus::Rejected,
        BatchStatus::Accepted => ActionStatus::Pending,
    };
    if missing > 0 {
        *counts.entry(unrecorded.as_str().to_owned()).or_insert(0) += missing;
    }
    Ok(counts)
}

/// The instance and backend names of live servers, one per server found
/// (for the approval policy's `maint_*` rules).
///
/// # Errors
/// [`DbError`].
pub fn places(
    conn: &mut PgConnection,
    server_ids: &[i64],
) -> Result<Vec<crate::domain::approval::Place>, DbError> {
    let rows: Vec<(String, String)> = s::table
        .inner_join(b::table.inner_join(i::table))
        .filter(s::id.eq_any(server_ids))
        .select((i::name, b::backend_name))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(instance, backend)| crate::domain::approval::Place { instance, backend })
        .collect())
}

/// Marks the batch completed when every one of its actions is final.
/// Exactly one caller gets `true` (the one that should publish
/// `batch.completed`).
pub fn complete_if_done(conn: &mut PgConnection, batch_id: i64) -> Result<bool, DbError> {
    let done = diesel::sql_query(
        "UPDATE haproxy_batches b SET completed_at = now() WHERE b.id = $1 AND b.completed_at IS NULL \
         AND (SELECT count(*) FROM haproxy_actions a WHERE a.batch_id = b.id \
              AND a.status IN ('success', 'failed', 'superseded', 'rejected')) >= b.total",
    )
    .bind::<BigInt, _>(batch_id)
    .execute(conn)?;
    Ok(done == 1)
}

/// Sets the total of a batch created by a command (not through the API).
pub fn set_total(conn: &mut PgConnection, batch_id: i64, total: i32) -> Result<(), DbError> {
    diesel::update(t::table.find(batch_id))
        .set(t::total.eq(total))
        .execute(conn)?;
    Ok(())
}
