//! The sweeper's queries: unfinished actions and open batches older than a
//! grace period, taken up under `FOR UPDATE SKIP LOCKED` so that several
//! schedulers never take up the same row in one grace period, and the
//! `haproxy_sweeps` counter.
//!
//! Times are compared with PostgreSQL's `now()` only (one clock). The
//! candidate queries are raw SQL: `GREATEST` and a locking subselect are
//! not in Diesel's DSL; the status literals let the planner use the partial
//! index on unfinished actions.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Integer, Text};

use super::DbError;
use super::actions::ActionRow;
use super::batches::{self, BatchRow};
use super::schema::{haproxy_actions as a, haproxy_batches as t, haproxy_sweeps as w};
use crate::domain::event::StatusCounts;

/// What the sweeper takes up, as counted in `haproxy_sweeps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepKind {
    /// A `pending` action's command published again.
    Pending,
    /// A `running` action's command published again.
    Running,
    /// A batch's command published again.
    BatchRepublished,
    /// A batch completed by the sweeper.
    BatchCompleted,
    /// A rollout whose ticks stopped (a worker died between writing a tick
    /// and publishing the next) ticked again.
    Rollout,
}

impl SweepKind {
    pub const ALL: [SweepKind; 5] = [
        SweepKind::Pending,
        SweepKind::Running,
        SweepKind::BatchRepublished,
        SweepKind::BatchCompleted,
        SweepKind::Rollout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SweepKind::Pending => "pending",
            SweepKind::Running => "running",
            SweepKind::BatchRepublished => "batch_republished",
            SweepKind::BatchCompleted => "batch_completed",
            SweepKind::Rollout => "rollout",
        }
    }
}

/// How long and how often.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub grace_secs: f64,
    pub max_republishes: i32,
    pub batch_size: i64,
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// Actions of status `$4` (`pending` or `running`) older than a grace: a
/// `pending` one since it was recorded, a `running` one since its last
/// attempt began (by the database's clock); and not taken up within one.
/// The literal `IN` lets the planner use the partial index.
const STUCK_ACTIONS: &str = "\
SELECT id FROM haproxy_actions
 WHERE status IN ('pending', 'running') AND status = $4
   AND created_at < now() - make_interval(secs => $1)
   AND GREATEST(CASE WHEN status = 'running' THEN started_at ELSE created_at END, swept_at)
       < now() - make_interval(secs => $1)
   AND sweeps < $2
 ORDER BY created_at LIMIT $3
 FOR UPDATE SKIP LOCKED";

/// Takes up stuck actions of one kind (`Pending` or `Running`): counts one
/// more sweep on each and returns them, committed, for re-publication.
///
/// # Errors
/// [`DbError`].
pub fn take_actions(
    conn: &mut PgConnection,
    kind: SweepKind,
    limits: Limits,
) -> Result<Vec<ActionRow>, DbError> {
    let status = if kind == SweepKind::Running {
        "running"
    } else {
        "pending"
    };
    conn.transaction(|conn| {
        let ids: Vec<i64> = diesel::sql_query(STUCK_ACTIONS)
            .bind::<Double, _>(limits.grace_secs)
            .bind::<Integer, _>(limits.max_republishes)
            .bind::<BigInt, _>(limits.batch_size)
            .bind::<Text, _>(status)
            .load::<Id>(conn)?
            .into_iter()
            .map(|r| r.id)
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = diesel::update(a::table.filter(a::id.eq_any(&ids)))
            .set((
                a::sweeps.eq(a::sweeps + 1),
                a::swept_at.eq(diesel::dsl::now),
            ))
            .returning(ActionRow::as_returning())
            .get_results(conn)?;
        count(conn, kind, rows.len())?;
        Ok(rows)
    })
}

/// Open batches older than a grace, none of whose recorded actions is in
/// flight, not taken up within one. A batch held for approval is not stuck.
const STUCK_BATCHES: &str = "\
SELECT b.id FROM haproxy_batches b
 WHERE b.completed_at IS NULL AND b.status = 'accepted'
   AND b.created_at < now() - make_interval(secs => $1)
   AND GREATEST(b.created_at, b.swept_at) < now() - make_interval(secs => $1)
   AND NOT EXISTS (SELECT 1 FROM haproxy_actions a
                    WHERE a.batch_id = b.id AND a.status IN ('pending', 'running'))
 ORDER BY b.created_at LIMIT $2
 FOR UPDATE OF b SKIP LOCKED";

/// What the sweeper does with a stuck batch.
#[derive(Debug)]
pub enum StuckBatch {
    /// Some of its servers have no action recorded: publish the batch's
    /// command again (its expansion dedupes the actions it has).
    Republish(BatchRow),
    /// Completed now: publish `batch.completed` with these counts
    /// (servers whose action was never recorded count as `pending`).
    Completed(BatchRow, StatusCounts),
}

/// Takes up stuck batches: one whose actions are all recorded (and final),
/// or that was re-published `max_republishes` times, is completed; another
/// is marked for re-publication. Committed when this returns.
///
/// # Errors
/// [`DbError`].
pub fn take_batches(conn: &mut PgConnection, limits: Limits) -> Result<Vec<StuckBatch>, DbError> {
    conn.transaction(|conn| {
        let ids: Vec<Id> = diesel::sql_query(STUCK_BATCHES)
            .bind::<Double, _>(limits.grace_secs)
            .bind::<BigInt, _>(limits.batch_size)
            .load(conn)?;
        let mut out = Vec::with_capacity(ids.len());
        for Id { id } in ids {
            out.push(take_batch(conn, id, limits.max_republishes)?);
        }
        let completed = out
            .iter()
            .filter(|b| matches!(b, StuckBatch::Completed(..)))
            .count();
        count(conn, SweepKind::BatchCompleted, completed)?;
        count(conn, SweepKind::BatchRepublished, out.len() - completed)?;
        Ok(out)
    })
}

fn take_batch(
    conn: &mut PgConnection,
    id: i64,
    max_republishes: i32,
) -> Result<StuckBatch, DbError> {
    let recorded = super::api_queries::batch_recorded(conn, id)?;
    let swept = (
        t::sweeps.eq(t::sweeps + 1),
        t::swept_at.eq(diesel::dsl::now),
    );
    let (row, sweeps): (BatchRow, i32) = diesel::update(t::table.find(id))
        .set(swept)
        .returning((BatchRow::as_returning(), t::sweeps))
        .get_result(conn)?;
    if recorded < i64::from(row.total) && sweeps <= max_republishes {
        return Ok(StuckBatch::Republish(row));
    }
    let row: BatchRow = diesel::update(t::table.find(id))
        .set(t::completed_at.eq(diesel::dsl::now))
        .returning(BatchRow::as_returning())
        .get_result(conn)?;
    let counts = batches::counts(conn, &row)?;
    Ok(StuckBatch::Completed(row, counts))
}

/// Adds `n` to the counter of `kind`.
fn count(conn: &mut PgConnection, kind: SweepKind, n: usize) -> Result<(), DbError> {
    if n == 0 {
        return Ok(());
    }
    let n = i64::try_from(n).unwrap_or(i64::MAX);
    diesel::insert_into(w::table)
        .values((
            w::kind.eq(kind.as_str()),
            w::count.eq(n),
            w::last_at.eq(diesel::dsl::now),
        ))
        .on_conflict(w::kind)
        .do_update()
        .set((w::count.eq(w::count + n), w::last_at.eq(diesel::dsl::now)))
        .execute(conn)?;
    Ok(())
}

/// A rollout whose ticks stopped.
#[derive(Debug, Clone, Copy, QueryableByName)]
pub struct StalledRollout {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = BigInt)]
    pub tick_seq: i64,
}

/// Rollouts that should be ticking (running or aborting, or with a server
/// in a step) whose last tick is older than `stale_secs` (ticks come every
/// half second), counted as swept. Their next tick is to be published with
/// their current sequence number: if a tick is in flight after all, one of
/// the two is dropped as a duplicate.
///
/// # Errors
/// [`DbError`].
pub fn take_stalled_rollouts(
    conn: &mut PgConnection,
    stale_secs: f64,
) -> Result<Vec<StalledRollout>, DbError> {
    let rows: Vec<StalledRollout> = diesel::sql_query(
        "SELECT r.id, r.tick_seq FROM haproxy_rollouts r \
         WHERE r.status IN ('running', 'paused', 'halted', 'aborting') \
           AND r.updated_at < now() - make_interval(secs => $1) \
           AND (r.status IN ('running', 'aborting') OR EXISTS ( \
                SELECT 1 FROM haproxy_rollout_servers s WHERE s.rollout_id = r.id \
                AND s.step IN ('draining', 'drained', 'updating', 'updated', 'healthy'))) \
         ORDER BY r.id LIMIT 100",
    )
    .bind::<diesel::sql_types::Double, _>(stale_secs)
    .load(conn)?;
    count(conn, SweepKind::Rollout, rows.len())?;
    Ok(rows)
}

/// Every counter of `haproxy_sweeps`, by kind.
///
/// # Errors
/// [`DbError`].
pub fn counters(conn: &mut PgConnection) -> Result<Vec<(String, i64)>, DbError> {
    Ok(w::table
        .select((w::kind, w::count))
        .order(w::kind)
        .load(conn)?)
}
