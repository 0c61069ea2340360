//! The statements of a group of actions (docs/architecture.md, "Actions in
//! groups"): each phase of the action path done for the whole group in one
//! statement — resolve, read the rows the transaction ids have, read the
//! servers under their locks, count ready servers for the guard, record the
//! actions as running.
//!
//! Diesel DSL where it can say it (`= ANY($1)` takes one bind, so the
//! statement is prepared once whatever the group's size); raw SQL for the
//! multi-row insert (one round trip). The outcomes are committed by
//! [`super::actions::finish_success`], the statement one action uses too.

use std::collections::{HashMap, HashSet};

use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use uuid::Uuid;

use super::DbError;
use super::actions::{ActionRow, NewAction};
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
