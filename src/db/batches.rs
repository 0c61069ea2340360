//! `haproxy_batches`: one action for many servers, and their expansion.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{
    Array, BigInt, Bool, Int4, Int8, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use uuid::Uuid;

use super::DbError;
use crate::domain::action::BatchTargets;

/// A batch as stored.
#[derive(Debug, Clone, QueryableByName, serde::Serialize)]
pub struct BatchRow {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = SqlUuid)]
    pub transaction_id: Uuid,
    #[diesel(sql_type = Text)]
    pub action: String,
    #[diesel(sql_type = Text)]
    pub actor: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub reason: Option<String>,
    #[diesel(sql_type = Bool)]
    pub force: bool,
    #[diesel(sql_type = Jsonb)]
    pub targets: serde_json::Value,
    #[diesel(sql_type = Int4)]
    pub total: i32,
    #[diesel(sql_type = Timestamptz)]
    pub requested_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub completed_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, transaction_id, action, actor, reason, force, targets, total, requested_at, created_at, completed_at";

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// The live servers a batch's targets name, ordered by backend then server
/// (so the guard is evaluated backend by backend, in order).
pub fn expand(conn: &mut PgConnection, targets: &BatchTargets) -> Result<Vec<i64>, DbError> {
    let base = "SELECT s.id FROM haproxy_servers s JOIN haproxy_backends b ON b.id = s.backend_id \
                JOIN haproxy_instances i ON i.id = b.haproxy_id \
                WHERE s.removed_at IS NULL AND b.removed_at IS NULL AND i.is_active";
    let rows: Vec<Id> = match targets {
        BatchTargets::ServerIds(ids) => diesel::sql_query(format!("{base} AND s.id = ANY($1) ORDER BY b.id, s.id"))
            .bind::<Array<Int8>, _>(ids)
            .load(conn)?,
        BatchTargets::ApplicationIds(ids) => {
            diesel::sql_query(format!("{base} AND s.application_id = ANY($1) ORDER BY b.id, s.id"))
                .bind::<Array<Int8>, _>(ids)
                .load(conn)?
        }
        BatchTargets::ApplicationGroup(group) => diesel::sql_query(format!(
            "{base} AND s.application_id IN (SELECT application_id FROM application_group_members WHERE group_id = $1) \
             ORDER BY b.id, s.id"
        ))
        .bind::<BigInt, _>(*group)
        .load(conn)?,
    };
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// What [`create`] needs.
#[derive(Debug, Clone)]
pub struct NewBatch {
    pub transaction_id: Uuid,
    pub action: String,
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
    let inserted: Option<BatchRow> = diesel::sql_query(format!(
        "INSERT INTO haproxy_batches (transaction_id, action, actor, reason, force, targets, total, requested_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (transaction_id) DO NOTHING RETURNING {COLUMNS}"
    ))
    .bind::<SqlUuid, _>(new.transaction_id)
    .bind::<Text, _>(&new.action)
    .bind::<Text, _>(&new.actor)
    .bind::<Nullable<Text>, _>(new.reason.as_deref())
    .bind::<Bool, _>(new.force)
    .bind::<Jsonb, _>(&new.targets)
    .bind::<Int4, _>(new.total)
    .bind::<Timestamptz, _>(new.requested_at)
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
    Ok(diesel::sql_query(format!(
        "SELECT {COLUMNS} FROM haproxy_batches WHERE transaction_id = $1"
    ))
    .bind::<SqlUuid, _>(transaction_id)
    .get_result(conn)
    .optional()?)
}

pub fn get(conn: &mut PgConnection, id: i64) -> Result<Option<BatchRow>, DbError> {
    Ok(diesel::sql_query(format!(
        "SELECT {COLUMNS} FROM haproxy_batches WHERE id = $1"
    ))
    .bind::<BigInt, _>(id)
    .get_result(conn)
    .optional()?)
}

#[derive(QueryableByName)]
struct StatusCount {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Counts of the batch's actions by status. Servers of the batch whose
/// action has not been recorded yet count as `pending`.
pub fn counts(conn: &mut PgConnection, batch: &BatchRow) -> Result<BTreeMap<String, i64>, DbError> {
    let rows: Vec<StatusCount> = diesel::sql_query(
        "SELECT status, count(*) AS n FROM haproxy_actions WHERE batch_id = $1 GROUP BY status",
    )
    .bind::<BigInt, _>(batch.id)
    .load(conn)?;
    let mut counts: BTreeMap<String, i64> = crate::domain::action::ActionStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    let mut recorded = 0;
    for r in rows {
        recorded += r.n;
        counts.insert(r.status, r.n);
    }
    let missing = i64::from(batch.total) - recorded;
    if missing > 0 {
        *counts.entry("pending".into()).or_insert(0) += missing;
    }
    Ok(counts)
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
    diesel::sql_query("UPDATE haproxy_batches SET total = $2 WHERE id = $1")
        .bind::<BigInt, _>(batch_id)
        .bind::<Int4, _>(total)
        .execute(conn)?;
    Ok(())
}
