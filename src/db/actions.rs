//! `haproxy_actions` and the history rows an action writes. An action's
//! outcome, its server's new state, its history row and its final events
//! commit together in [`finish_success`] (or [`finish`] when no server changed).
//!
//! Raw SQL only in [`finish_success`]: one CTE statement over `unnest`
//! writes the actions, their servers and history rows — one action's or a
//! whole group's (one round trip on the hot path).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Integer, Jsonb, Nullable, Text, Timestamptz};
use uuid::Uuid;

use super::DbError;
use super::schema::haproxy_actions as a;
use crate::domain::action::{ActionRequest, ActionStatus, FailureCode, Target};
use crate::domain::event::StatePair;
use crate::domain::{AdminState, OpState};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = a)]
pub struct ActionRow {
    pub id: i64,
    pub transaction_id: Uuid,
    pub server_id: Option<i64>,
    pub batch_id: Option<i64>,
    pub action: AdminState,
    pub status: ActionStatus,
    pub actor: String,
    pub reason: Option<String>,
    pub force: bool,
    pub requested_at: DateTime<Utc>,
    pub attempts: i32,
    /// A [`FailureCode`]'s text; the column has no CHECK and callers read it as text.
    pub error: Option<String>,
    pub error_detail: Option<String>,
    pub events: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Times the sweeper published the command again.
    pub sweeps: i32,
}

impl ActionRow {
    /// The status (kept as a method for the callers that read it so).
    pub fn status(&self) -> ActionStatus {
        self.status
    }

    /// The `action` command this row was recorded for, with its
    /// transaction id, `requested_at`, actor, reason, force and batch, so
    /// publishing it again is deduplicated (rule 1). None when the row
    /// names no server.
    pub fn request(&self) -> Option<ActionRequest> {
        Some(ActionRequest {
            transaction_id: self.transaction_id,
            action: self.action,
            target: Target::ServerId(self.server_id?),
            actor: self.actor.clone(),
            requested_at: Some(self.requested_at),
            reason: self.reason.clone(),
            force: self.force,
            batch_id: self.batch_id,
        })
    }
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = a)]
pub struct NewAction {
    pub transaction_id: Uuid,
    pub server_id: Option<i64>,
    pub batch_id: Option<i64>,
    pub action: AdminState,
    pub status: ActionStatus,
    pub actor: String,
    pub reason: Option<String>,
    pub force: bool,
    pub requested_at: DateTime<Utc>,
}

/// Whether [`claim`] created the row or found it.
#[derive(Debug)]
pub enum Claim {
    New(ActionRow),
    Existing(ActionRow),
}

/// Records the action, or returns the row its transaction id already has
/// (the unique index makes a concurrent duplicate wait, then find it).
pub fn claim(conn: &mut PgConnection, new: &NewAction) -> Result<Claim, DbError> {
    let inserted: Option<ActionRow> = diesel::insert_into(a::table)
        .values(new)
        .on_conflict(a::transaction_id)
        .do_nothing()
        .returning(ActionRow::as_returning())
        .get_result(conn)
        .optional()?;
    if let Some(row) = inserted {
        return Ok(Claim::New(row));
    }
    get_by_transaction(conn, new.transaction_id)?
        .map(Claim::Existing)
        .ok_or(DbError::Query(diesel::result::Error::NotFound))
}

/// Records an action that is about to call its agent: `running`, first
/// attempt counted. `None` when the transaction id has a row already.
/// (The worker records an action under its server's lock, once it knows
/// what happens to it: one INSERT instead of INSERT + UPDATE.)
pub fn insert_started(conn: &mut PgConnection, new: &NewAction) -> Result<Option<i64>, DbError> {
    Ok(diesel::insert_into(a::table)
        .values((new, a::attempts.eq(1), a::started_at.eq(diesel::dsl::now)))
        .on_conflict(a::transaction_id)
        .do_nothing()
        .returning(a::id)
        .get_result(conn)
        .optional()?)
}

/// Records an action that ends without calling its agent (superseded,
/// rejected, failed before the call), durably. `None` when the transaction
/// id has a row already.
pub fn insert_finished(
    conn: &mut PgConnection,
    new: &NewAction,
    outcome: &Outcome,
) -> Result<Option<i64>, DbError> {
    conn.transaction(|conn| {
        super::durable(conn)?;
        Ok(diesel::insert_into(a::table)
            .values((
                new,
                a::error.eq(outcome.error),
                a::error_detail.eq(outcome.error_detail.as_deref()),
                a::events.eq(&outcome.events),
                a::finished_at.eq(diesel::dsl::now),
            ))
            .on_conflict(a::transaction_id)
            .do_nothing()
            .returning(a::id)
            .get_result(conn)
            .optional()?)
    })
}

pub fn get_by_transaction(
    conn: &mut PgConnection,
    transaction_id: Uuid,
) -> Result<Option<ActionRow>, DbError> {
    Ok(a::table
        .filter(a::transaction_id.eq(transaction_id))
        .select(ActionRow::as_select())
        .first(conn)
        .optional()?)
}

/// Marks the action running and counts one more call to the agent. Both
/// forms are Diesel DSL, so PostgreSQL gets cached prepared statements.
pub fn begin_attempt(conn: &mut PgConnection, action_id: i64, first: bool) -> Result<i32, DbError> {
    let target = a::table.find(action_id);
    let running = a::status.eq(ActionStatus::Running);
    let attempts = a::attempts.eq(a::attempts + 1);
    Ok(if first {
        diesel::update(target)
            .set((running, attempts, a::started_at.eq(diesel::dsl::now)))
            .returning(a::attempts)
            .get_result(conn)?
    } else {
        diesel::update(target)
            .set((running, attempts))
            .returning(a::attempts)
            .get_result(conn)?
    })
}

/// The final state of an action.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: ActionStatus,
    pub error: Option<FailureCode>,
    pub error_detail: Option<String>,
    /// The final events, stored so a duplicate re-publishes them verbatim.
    pub events: serde_json::Value,
}

/// A server's state as read back after an action.
#[derive(Debug, Clone)]
pub struct ServerWrite {
    pub server_id: i64,
    pub admin_state: AdminState,
    pub op_state: OpState,
    pub weight: i32,
    pub current_sessions: i64,
    pub check_status: Option<String>,
    /// The newest `requested_at` applied to the server, this one included.
    pub last_requested_at: DateTime<Utc>,
}

/// The history row (source `action`) of an action that changed its
/// server's state; the new state is the [`ServerWrite`]'s.
#[derive(Debug, Clone)]
pub struct HistoryWrite {
    pub previous: StatePair,
    pub actor: String,
}

/// Commits the outcome of an action that changed no server (failed,
/// superseded, rejected) durably.
pub fn finish(conn: &mut PgConnection, action_id: i64, outcome: &Outcome) -> Result<(), DbError> {
    conn.transaction(|conn| {
        super::durable(conn)?;
        diesel::update(a::table.find(action_id))
            .set((
                a::status.eq(outcome.status),
                a::error.eq(outcome.error),
                a::error_detail.eq(outcome.error_detail.as_deref()),
                a::events.eq(&outcome.events),
                a::finished_at.eq(diesel::dsl::now),
            ))
            .execute(conn)?;
        Ok(())
    })
}

/// One successful action: what [`finish_success`] writes for it.
#[derive(Debug, Clone)]
pub struct Success {
    pub action_id: i64,
    pub events: serde_json::Value,
    pub server: ServerWrite,
    pub history: Option<HistoryWrite>,
}

/// The statement of [`finish_success`]: each action's outcome, its server's
/// state and (when the state changed) its history row, for one action or a
/// group (`unnest`, one row per action), as one statement — one round trip
/// and one commit. `set_config(…, true)` makes that commit wait for the WAL
/// flush whatever the session's `synchronous_commit`.
const FINISH_SUCCESS: &str = "\
WITH durable AS (
    SELECT set_config('synchronous_commit', 'on', true) AS setting
), input AS (
    SELECT *
      FROM unnest($1::bigint[], $2::jsonb[], $3::bigint[], $4::text[], $5::text[], $6::int[],
                  $7::bigint[], $8::text[], $9::timestamptz[], $10::bool[], $11::text[],
                  $12::text[], $13::text[])
           AS t(action_id, events, server_id, admin_state, op_state, weight, sessions,
                check_status, last_requested_at, changed, previous_admin, previous_op, actor)
), act AS (
    UPDATE haproxy_actions AS x
       SET status = 'success', error = NULL, error_detail = NULL, events = input.events,
           finished_at = now()
      FROM input
     WHERE x.id = input.action_id
 RETURNING x.id
), srv AS (
    UPDATE haproxy_servers AS x
       SET admin_state = input.admin_state, op_state = input.op_state, weight = input.weight,
           current_sessions = input.sessions, check_status = input.check_status,
           state_written_at = now(), last_requested_at = input.last_requested_at,
           state_changed_at = CASE WHEN input.changed THEN now() ELSE x.state_changed_at END
      FROM input
     WHERE x.id = input.server_id
 RETURNING x.id
), hist AS (
    INSERT INTO haproxy_server_status_history
        (server_id, previous_admin_state, new_admin_state, previous_op_state, new_op_state,
         source, actor, action_id)
    SELECT server_id, previous_admin, admin_state, previous_op, op_state, 'action', actor,
           action_id
      FROM input
     WHERE changed
 RETURNING id
)
SELECT (SELECT count(*) FROM act) AS actions,
       (SELECT count(*) FROM srv) AS servers,
       (SELECT count(*) FROM hist) AS history,
       (SELECT setting FROM durable) AS setting";

/// The rows [`FINISH_SUCCESS`] wrote.
#[derive(QueryableByName)]
struct FinishCounts {
    #[diesel(sql_type = BigInt)]
    actions: i64,
    #[diesel(sql_type = BigInt)]
    servers: i64,
    #[diesel(sql_type = BigInt)]
    history: i64,
    #[allow(dead_code)]
    #[diesel(sql_type = Text)]
    setting: String,
}

/// Commits successful actions (one, or a group's) — each outcome, its
/// server's state read back and, when it changed, its history row —
/// together and durably, in one statement.
///
/// # Errors
/// [`DbError`].
pub fn finish_success(conn: &mut PgConnection, done: &[Success]) -> Result<(), DbError> {
    if done.is_empty() {
        return Ok(());
    }
    let history = |f: fn(&HistoryWrite) -> &str| -> Vec<&str> {
        done.iter()
            .map(|d| d.history.as_ref().map_or("", f))
            .collect()
    };
    let counts: FinishCounts = diesel::sql_query(FINISH_SUCCESS)
        .bind::<Array<BigInt>, _>(done.iter().map(|d| d.action_id).collect::<Vec<_>>())
        .bind::<Array<Jsonb>, _>(done.iter().map(|d| &d.events).collect::<Vec<_>>())
        .bind::<Array<BigInt>, _>(done.iter().map(|d| d.server.server_id).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(
            done.iter()
                .map(|d| d.server.admin_state.as_str())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Text>, _>(
            done.iter()
                .map(|d| d.server.op_state.as_str())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Integer>, _>(done.iter().map(|d| d.server.weight).collect::<Vec<_>>())
        .bind::<Array<BigInt>, _>(
            done.iter()
                .map(|d| d.server.current_sessions)
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Nullable<Text>>, _>(
            done.iter()
                .map(|d| d.server.check_status.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Timestamptz>, _>(
            done.iter()
                .map(|d| d.server.last_requested_at)
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Bool>, _>(done.iter().map(|d| d.history.is_some()).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(history(|h| h.previous.admin_state.as_str()))
        .bind::<Array<Text>, _>(history(|h| h.previous.op_state.as_str()))
        .bind::<Array<Text>, _>(history(|h| h.actor.as_str()))
        .get_result(conn)?;
    let changed = done.iter().filter(|d| d.history.is_some()).count();
    let expected = i64::try_from(done.len()).unwrap_or(i64::MAX);
    if counts.actions != expected
        || counts.servers != expected
        || counts.history != i64::try_from(changed).unwrap_or(i64::MAX)
    {
        // Committed already; rows are soft-deleted, so this is not expected.
        tracing::warn!(
            actions = counts.actions,
            servers = counts.servers,
            history = counts.history,
            expected,
            "finishing actions wrote fewer rows than expected"
        );
    }
    Ok(())
}
