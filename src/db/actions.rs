//! `haproxy_actions` and the history rows an action writes. An action's
//! outcome, its server's new state, its history row and its final events
//! commit together in [`finish_success`] (or [`finish`] when no server changed).
//!
//! Raw SQL only in [`finish_success`]: one CTE statement writes the action,
//! the server and the history row (one round trip on the hot path).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
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

/// The statement of [`finish_success`]: the action's outcome, its server's
/// state and (when the state changed) its history row, as one statement —
/// one round trip and one commit. `set_config(…, true)` makes that commit
/// wait for the WAL flush whatever the session's `synchronous_commit`.
const FINISH_SUCCESS: &str = "\
WITH durable AS (
    SELECT set_config('synchronous_commit', 'on', true) AS setting
), act AS (
    UPDATE haproxy_actions
       SET status = 'success', error = NULL, error_detail = NULL, events = $2,
           finished_at = now()
     WHERE id = $1
 RETURNING id
), srv AS (
    UPDATE haproxy_servers
       SET admin_state = $4, op_state = $5, weight = $6, current_sessions = $7,
           check_status = $8, state_written_at = now(), last_requested_at = $9,
           state_changed_at = CASE WHEN $10 THEN now() ELSE state_changed_at END
     WHERE id = $3
 RETURNING id
), hist AS (
    INSERT INTO haproxy_server_status_history
        (server_id, previous_admin_state, new_admin_state, previous_op_state, new_op_state,
         source, actor, action_id)
    SELECT $3, $11, $4, $12, $5, 'action', $13, $1
     WHERE $10
 RETURNING id
)
SELECT (SELECT count(*) FROM act) AS actions,
       (SELECT count(*) FROM srv) AS servers,
       (SELECT count(*) FROM hist) AS history,
       (SELECT setting FROM durable) AS setting";

/// The rows an outcome statement wrote (this one's and
/// [`super::action_groups`]' for a group).
#[derive(QueryableByName)]
pub(super) struct FinishCounts {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub(super) actions: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub(super) servers: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub(super) history: i64,
    #[allow(dead_code)]
    #[diesel(sql_type = diesel::sql_types::Text)]
    setting: String,
}

/// Commits a successful action: its outcome, the server's state read back
/// and, when that state changed (`history` is given), its history row,
/// together and durably, in one statement.
///
/// # Errors
/// [`DbError`].
pub fn finish_success(
    conn: &mut PgConnection,
    action_id: i64,
    events: &serde_json::Value,
    server: &ServerWrite,
    history: Option<&HistoryWrite>,
) -> Result<(), DbError> {
    use diesel::sql_types::{BigInt, Bool, Integer, Jsonb, Nullable, Text, Timestamptz};
    let changed = history.is_some();
    let counts: FinishCounts = diesel::sql_query(FINISH_SUCCESS)
        .bind::<BigInt, _>(action_id)
        .bind::<Jsonb, _>(events)
        .bind::<BigInt, _>(server.server_id)
        .bind::<Text, _>(server.admin_state.as_str())
        .bind::<Text, _>(server.op_state.as_str())
        .bind::<Integer, _>(server.weight)
        .bind::<BigInt, _>(server.current_sessions)
        .bind::<Nullable<Text>, _>(server.check_status.as_deref())
        .bind::<Timestamptz, _>(server.last_requested_at)
        .bind::<Bool, _>(changed)
        .bind::<Nullable<Text>, _>(history.map(|h| h.previous.admin_state.as_str()))
        .bind::<Nullable<Text>, _>(history.map(|h| h.previous.op_state.as_str()))
        .bind::<Text, _>(history.map_or("", |h| h.actor.as_str()))
        .get_result(conn)?;
    if counts.actions != 1 || counts.servers != 1 || counts.history != i64::from(changed) {
        // Committed already; rows are soft-deleted, so this is not expected.
        tracing::warn!(
            action_id,
            actions = counts.actions,
            servers = counts.servers,
            history = counts.history,
            "finishing an action wrote fewer rows than expected"
        );
    }
    Ok(())
}
