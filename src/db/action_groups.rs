//! The statements of a group of actions (docs/architecture.md, "Actions in
//! groups"): each phase of the action path done for the whole group in one
//! statement — resolve, read the rows the transaction ids have, read the
//! servers under their locks, count ready servers for the guard, record the
//! actions as running, and commit every outcome.
//!
//! Diesel DSL where it can say it (`= ANY($1)` takes one bind, so the
//! statement is prepared once whatever the group's size); raw SQL for the
//! multi-row insert and the outcome CTE over `unnest` (one round trip each).

use std::collections::{HashMap, HashSet};

use diesel::prelude::*;
use diesel::sql_types::{
    Array, BigInt, Bool, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use uuid::Uuid;

use super::DbError;
use super::actions::{ActionRow, FinishCounts, HistoryWrite, NewAction, ServerWrite};
use super::instances::InstanceRow;
use super::inventory::{ServerRow, ServerTarget, TargetRow, live_targets, to_target};
use super::schema::{
    haproxy_actions as a, haproxy_backends as b, haproxy_instances as i, haproxy_servers as s,
};
use crate::domain::AdminState;
use crate::domain::action::ActionStatus;

/// The live servers with these ids.
///
/// # Errors
/// [`DbError`].
pub fn find_servers(conn: &mut PgConnection, ids: &[i64]) -> Result<Vec<ServerTarget>, DbError> {
    let rows: Vec<TargetRow> = live_targets!().filter(s::id.eq_any(ids)).load(conn)?;
    Ok(rows.into_iter().map(to_target).collect())
}

/// The live servers named by these (instance, backend, server) triples,
/// given as three arrays of one triple per index: exactly those, in one
/// statement (the row-value `IN` over `unnest` is the one piece of raw SQL).
///
/// # Errors
/// [`DbError`].
pub fn find_servers_by_names(
    conn: &mut PgConnection,
    instances: &[&str],
    backends: &[&str],
    servers: &[&str],
) -> Result<Vec<ServerTarget>, DbError> {
    let named = diesel::dsl::sql::<Bool>(
        "(haproxy_instances.name, haproxy_backends.backend_name, haproxy_servers.server_name) \
         IN (SELECT * FROM unnest(",
    )
    .bind::<Array<Text>, _>(instances)
    .sql("::text[], ")
    .bind::<Array<Text>, _>(backends)
    .sql("::text[], ")
    .bind::<Array<Text>, _>(servers)
    .sql("::text[]))");
    let rows: Vec<TargetRow> = live_targets!().filter(named).load(conn)?;
    Ok(rows.into_iter().map(to_target).collect())
}

/// The rows these transaction ids already have.
///
/// # Errors
/// [`DbError`].
pub fn actions_by_transaction(
    conn: &mut PgConnection,
    transaction_ids: &[Uuid],
) -> Result<Vec<ActionRow>, DbError> {
    Ok(a::table
        .filter(a::transaction_id.eq_any(transaction_ids))
        .select(ActionRow::as_select())
        .load(conn)?)
}

/// The current rows of these servers (under their locks).
///
/// # Errors
/// [`DbError`].
pub fn servers(conn: &mut PgConnection, ids: &[i64]) -> Result<HashMap<i64, ServerRow>, DbError> {
    let rows: Vec<ServerRow> = s::table
        .filter(s::id.eq_any(ids))
        .select(ServerRow::as_select())
        .load(conn)?;
    Ok(rows.into_iter().map(|r| (r.id, r)).collect())
}

/// Live `ready` servers per backend, for these backends (a backend with
/// none is absent).
///
/// # Errors
/// [`DbError`].
pub fn ready_servers(
    conn: &mut PgConnection,
    backend_ids: &[i64],
) -> Result<HashMap<i64, i64>, DbError> {
    let rows: Vec<(i64, i64)> = s::table
        .filter(s::backend_id.eq_any(backend_ids))
        .filter(s::removed_at.is_null())
        .filter(s::admin_state.eq(AdminState::Ready))
        .group_by(s::backend_id)
        .select((s::backend_id, diesel::dsl::count_star()))
        .load(conn)?;
    Ok(rows.into_iter().collect())
}

/// The statement of [`insert_started`]: every action of the group recorded
/// `running` with its first attempt counted, in one statement; a
/// transaction id that has a row already is skipped (and not returned).
const INSERT_STARTED: &str = "\
INSERT INTO haproxy_actions
    (transaction_id, server_id, batch_id, action, status, actor, reason, force, requested_at,
     attempts, started_at)
SELECT t.transaction_id, t.server_id, t.batch_id, t.action, 'running', t.actor, t.reason,
       t.force, t.requested_at, 1, now()
  FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[],
              $7::bool[], $8::timestamptz[])
       AS t(transaction_id, server_id, batch_id, action, actor, reason, force, requested_at)
ON CONFLICT (transaction_id) DO NOTHING
RETURNING transaction_id, id";

#[derive(QueryableByName)]
struct Started {
    #[diesel(sql_type = SqlUuid)]
    transaction_id: Uuid,
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// Records the actions as running (first attempt counted), as
/// [`super::actions::insert_started`] does one: the id of each recorded,
/// by transaction id; one that had a row already is absent.
///
/// # Errors
/// [`DbError`].
pub fn insert_started(
    conn: &mut PgConnection,
    rows: &[NewAction],
) -> Result<HashMap<Uuid, i64>, DbError> {
    let started: Vec<Started> = diesel::sql_query(INSERT_STARTED)
        .bind::<Array<SqlUuid>, _>(rows.iter().map(|r| r.transaction_id).collect::<Vec<_>>())
        .bind::<Array<Nullable<BigInt>>, _>(rows.iter().map(|r| r.server_id).collect::<Vec<_>>())
        .bind::<Array<Nullable<BigInt>>, _>(rows.iter().map(|r| r.batch_id).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(rows.iter().map(|r| r.action.as_str()).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(rows.iter().map(|r| r.actor.as_str()).collect::<Vec<_>>())
        .bind::<Array<Nullable<Text>>, _>(
            rows.iter().map(|r| r.reason.as_deref()).collect::<Vec<_>>(),
        )
        .bind::<Array<Bool>, _>(rows.iter().map(|r| r.force).collect::<Vec<_>>())
        .bind::<Array<Timestamptz>, _>(rows.iter().map(|r| r.requested_at).collect::<Vec<_>>())
        .load(conn)?;
    Ok(started
        .into_iter()
        .map(|s| (s.transaction_id, s.id))
        .collect())
}

/// Marks `pending` actions running and counts their first attempt (as
/// [`super::actions::begin_attempt`] does one): the ids it changed.
///
/// # Errors
/// [`DbError`].
pub fn start_pending(conn: &mut PgConnection, ids: &[i64]) -> Result<HashSet<i64>, DbError> {
    let started: Vec<i64> = diesel::update(
        a::table
            .filter(a::id.eq_any(ids))
            .filter(a::status.eq(ActionStatus::Pending)),
    )
    .set((
        a::status.eq(ActionStatus::Running),
        a::attempts.eq(a::attempts + 1),
        a::started_at.eq(diesel::dsl::now),
    ))
    .returning(a::id)
    .get_results(conn)?;
    Ok(started.into_iter().collect())
}

/// One successful action of a group: what [`super::actions::finish_success`]
/// writes for one.
#[derive(Debug, Clone)]
pub struct Success {
    pub action_id: i64,
    pub events: serde_json::Value,
    pub server: ServerWrite,
    pub history: Option<HistoryWrite>,
}

/// The statement of [`finish_success`]: [`super::actions::finish_success`]'s
/// CTE over `unnest`, one row per action.
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

/// Commits the successful actions of a group — each outcome, its server's
/// state read back and, when it changed, its history row — together and
/// durably, in one statement.
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
            "finishing a group of actions wrote fewer rows than expected"
        );
    }
    Ok(())
}
