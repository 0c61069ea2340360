//! `haproxy_rollouts` and `haproxy_rollout_servers`: a rollout, its servers'
//! steps, what a tick reads and what it writes. A tick's writes commit only
//! if the rollout's `tick_seq` is still the tick's (compare and set), so a
//! duplicate tick changes nothing.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use super::DbError;
use super::actions::NewAction;
use super::schema::{
    haproxy_actions as a, haproxy_backends as b, haproxy_rollout_servers as rs,
    haproxy_rollouts as r, haproxy_servers as s,
};
use crate::domain::action::ActionStatus;
use crate::domain::rollout::{PlannedServer, RolloutStatus, Step};
use crate::domain::{AdminState, OpState};

/// A rollout as stored.
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = r)]
pub struct RolloutRow {
    pub id: i64,
    pub transaction_id: Uuid,
    pub actor: String,
    pub reason: Option<String>,
    pub status: RolloutStatus,
    pub spec: serde_json::Value,
    pub total: i32,
    pub waves: i32,
    pub current_wave: i32,
    pub wave_done_at: Option<DateTime<Utc>>,
    pub tick_seq: i64,
    pub halted_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One server of a rollout as stored.
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = rs)]
pub struct RolloutServerRow {
    pub id: i64,
    pub rollout_id: i64,
    pub server_id: i64,
    pub backend_id: i64,
    pub wave: i32,
    pub position: i32,
    pub step: Step,
    pub failed_step: Option<Step>,
    pub attempt: i32,
    pub step_started_at: Option<DateTime<Utc>>,
    pub healthy_since: Option<DateTime<Utc>>,
    pub hook_runs: i32,
    pub hook_started_at: Option<DateTime<Utc>>,
    pub hook_finished_at: Option<DateTime<Utc>>,
    pub hook_exit_code: Option<i32>,
    pub hook_output: Option<String>,
    pub error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// What [`create`] records.
#[derive(Debug, Clone)]
pub struct NewRollout {
    pub transaction_id: Uuid,
    pub actor: String,
    pub reason: Option<String>,
    pub spec: serde_json::Value,
    pub waves: i32,
}

/// What [`create`] found.
#[derive(Debug)]
pub enum Created {
    New(RolloutRow),
    /// Recorded `awaiting_approval`, with its approval.
    Held(RolloutRow, Box<super::approvals::ApprovalRow>),
    /// The transaction id has a rollout already.
    Existing(RolloutRow),
    /// A target is in another active rollout: (that rollout, the server).
    Overlap {
        rollout_id: i64,
        server_id: i64,
    },
}

/// Key of the advisory lock that serialises rollout creation, so two
/// overlapping rollouts created at once cannot both pass the check.
const CREATE_LOCK: i64 = 0x524f_4c4c_4f55_5400; // "ROLLOUT\0"

/// Records a rollout and its planned servers, unless its transaction id is
/// taken or a target belongs to an active rollout.
///
/// # Errors
/// [`DbError`].
/// With `hold`, it is recorded `awaiting_approval` together with that
/// approval (same transaction).
pub fn create(
    conn: &mut PgConnection,
    new: &NewRollout,
    planned: &[PlannedServer],
    hold: Option<&super::approvals::NewApproval>,
) -> Result<Created, DbError> {
    conn.transaction(|conn| {
        super::durable(conn)?;
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
            "pg_advisory_xact_lock({CREATE_LOCK}) IS NOT NULL"
        )))
        .execute(conn)?;
        if let Some(row) = by_transaction(conn, new.transaction_id)? {
            return Ok(Created::Existing(row));
        }
        let ids: Vec<i64> = planned.iter().map(|p| p.server_id).collect();
        let overlap: Option<(i64, i64)> = rs::table
            .inner_join(r::table)
            .filter(rs::server_id.eq_any(&ids))
            .filter(r::status.eq_any(active_statuses()))
            .select((r::id, rs::server_id))
            .first(conn)
            .optional()?;
        if let Some((rollout_id, server_id)) = overlap {
            return Ok(Created::Overlap {
                rollout_id,
                server_id,
            });
        }
        let row: RolloutRow = diesel::insert_into(r::table)
            .values((
                r::transaction_id.eq(new.transaction_id),
                r::actor.eq(&new.actor),
                r::reason.eq(&new.reason),
                r::spec.eq(&new.spec),
                r::total.eq(i32::try_from(planned.len()).unwrap_or(i32::MAX)),
                r::waves.eq(new.waves),
                r::status.eq(if hold.is_some() {
                    RolloutStatus::AwaitingApproval
                } else {
                    RolloutStatus::Running
                }),
            ))
            .returning(RolloutRow::as_returning())
            .get_result(conn)?;
        let rows: Vec<_> = planned
            .iter()
            .map(|p| {
                (
                    rs::rollout_id.eq(row.id),
                    rs::server_id.eq(p.server_id),
                    rs::backend_id.eq(p.backend_id),
                    rs::wave.eq(p.wave),
                    rs::position.eq(p.position),
                )
            })
            .collect();
        diesel::insert_into(rs::table).values(&rows).execute(conn)?;
        if let Some(hold) = hold {
            let (approval, _) = super::approvals::create(conn, hold)?;
            return Ok(Created::Held(row, Box::new(approval)));
        }
        Ok(Created::New(row))
    })
}

/// How many rollouts are in each status that is not final (`/metrics`);
/// a partial index keeps this off the finished rollouts.
///
/// # Errors
/// [`DbError`].
pub fn count_active_by_status(
    conn: &mut PgConnection,
) -> Result<Vec<(RolloutStatus, i64)>, DbError> {
    Ok(r::table
        .filter(r::status.eq_any(active_statuses()))
        .group_by(r::status)
        .select((r::status, diesel::dsl::count_star()))
        .load(conn)?)
}

fn active_statuses() -> Vec<RolloutStatus> {
    RolloutStatus::ALL
        .into_iter()
        .filter(|s| s.is_active())
        .collect()
}

/// The live servers a rollout's targets name, with their backends.
///
/// # Errors
/// [`DbError`].
pub fn backends_of(
    conn: &mut PgConnection,
    server_ids: &[i64],
) -> Result<Vec<(i64, i64)>, DbError> {
    Ok(s::table
        .filter(s::id.eq_any(server_ids))
        .filter(s::removed_at.is_null())
        .select((s::id, s::backend_id))
        .load(conn)?)
}

pub fn by_transaction(conn: &mut PgConnection, txn: Uuid) -> Result<Option<RolloutRow>, DbError> {
    Ok(r::table
        .filter(r::transaction_id.eq(txn))
        .select(RolloutRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn get(conn: &mut PgConnection, id: i64) -> Result<Option<RolloutRow>, DbError> {
    Ok(r::table
        .find(id)
        .select(RolloutRow::as_select())
        .first(conn)
        .optional()?)
}

/// A page of rollouts, newest first (keyset on id).
pub fn list(
    conn: &mut PgConnection,
    before_id: Option<i64>,
    limit: i64,
) -> Result<Vec<RolloutRow>, DbError> {
    let mut q = r::table.order(r::id.desc()).limit(limit).into_boxed();
    if let Some(before) = before_id {
        q = q.filter(r::id.lt(before));
    }
    Ok(q.select(RolloutRow::as_select()).load(conn)?)
}

/// A rollout's servers in plan order.
pub fn servers(conn: &mut PgConnection, rollout_id: i64) -> Result<Vec<RolloutServerRow>, DbError> {
    Ok(rs::table
        .filter(rs::rollout_id.eq(rollout_id))
        .order(rs::position)
        .select(RolloutServerRow::as_select())
        .load(conn)?)
}

/// How the actions with these transaction ids stand: status and error.
///
/// # Errors
/// [`DbError`].
pub fn action_outcomes(
    conn: &mut PgConnection,
    txns: &[Uuid],
) -> Result<HashMap<Uuid, (ActionStatus, Option<String>)>, DbError> {
    let rows: Vec<(Uuid, ActionStatus, Option<String>, Option<String>)> = a::table
        .filter(a::transaction_id.eq_any(txns))
        .select((a::transaction_id, a::status, a::error, a::error_detail))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(t, st, e, d)| {
            (
                t,
                (st, e.map(|e| d.map_or(e.clone(), |d| format!("{e}: {d}")))),
            )
        })
        .collect())
}

/// A server of a backend the rollout touches: state in the database.
#[derive(Debug, Clone, Queryable)]
pub struct BackendServer {
    pub id: i64,
    pub backend_id: i64,
    pub admin_state: AdminState,
    pub op_state: OpState,
}

/// Every live server of these backends, with its state.
///
/// # Errors
/// [`DbError`].
pub fn backend_servers(
    conn: &mut PgConnection,
    backend_ids: &[i64],
) -> Result<Vec<BackendServer>, DbError> {
    Ok(s::table
        .inner_join(b::table)
        .filter(s::backend_id.eq_any(backend_ids))
        .filter(s::removed_at.is_null())
        .select((s::id, s::backend_id, s::admin_state, s::op_state))
        .load(conn)?)
}

/// One server's change in a tick.
#[derive(Debug, Clone, Default)]
pub struct ServerWrite {
    pub id: i64,
    pub step: Option<Step>,
    pub failed_step: Option<Step>,
    pub healthy_since: Option<Option<DateTime<Utc>>>,
    pub error: Option<String>,
    /// Set `step_started_at` to this time (the database's clock, the time
    /// its entry action is requested at), and `started_at` on the first start.
    pub started: Option<DateTime<Utc>>,
    pub finished: bool,
}

/// The rollout's change in a tick: the columns given are written, in the
/// tick's compare-and-set statement.
#[derive(Debug, Clone, Default, AsChangeset)]
#[diesel(table_name = r)]
pub struct RolloutWrite {
    pub status: Option<RolloutStatus>,
    pub current_wave: Option<i32>,
    pub wave_done_at: Option<Option<DateTime<Utc>>>,
    pub halted_reason: Option<String>,
}

/// Writes a tick's decisions if the rollout's `tick_seq` is still `seq`,
/// and moves it to `seq + 1`; records the actions the tick asks for as
/// `pending` with the rollout's id (published after commit). `false` when
/// another tick got there first (nothing written).
///
/// # Errors
/// [`DbError`].
pub fn apply_tick(
    conn: &mut PgConnection,
    rollout_id: i64,
    seq: i64,
    rollout: &RolloutWrite,
    servers: &[ServerWrite],
    actions: &[NewAction],
) -> Result<bool, DbError> {
    conn.transaction(|conn| {
        super::durable(conn)?;
        let moved = diesel::update(r::table.find(rollout_id).filter(r::tick_seq.eq(seq)))
            .set((
                r::tick_seq.eq(seq + 1),
                r::updated_at.eq(diesel::dsl::now),
                rollout,
            ))
            .execute(conn)?;
        if moved == 0 {
            return Ok(false);
        }
        if rollout.status.is_some_and(|s| !s.is_active()) {
            diesel::update(r::table.find(rollout_id))
                .set(r::finished_at.eq(diesel::dsl::now))
                .execute(conn)?;
        }
        for w in servers {
            write_server(conn, w)?;
        }
        if !actions.is_empty() {
            diesel::insert_into(a::table)
                .values(
                    actions
                        .iter()
                        .map(|n| (n, a::rollout_id.eq(rollout_id)))
                        .collect::<Vec<_>>(),
                )
                .on_conflict(a::transaction_id)
                .do_nothing()
                .execute(conn)?;
        }
        Ok(true)
    })
}

/// The columns of a server row a tick writes; `None` leaves one as it is.
#[derive(AsChangeset)]
#[diesel(table_name = rs)]
struct ServerChange<'a> {
    step: Option<Step>,
    failed_step: Option<Step>,
    error: Option<&'a str>,
    healthy_since: Option<Option<DateTime<Utc>>>,
    step_started_at: Option<DateTime<Utc>>,
}

/// One statement for the server's columns, plus `started_at` on its first
/// start and `finished_at` when it is done.
fn write_server(conn: &mut PgConnection, w: &ServerWrite) -> Result<(), DbError> {
    let row = rs::table.find(w.id);
    let change = ServerChange {
        step: w.step,
        failed_step: w.failed_step,
        error: w.failed_step.and(w.error.as_deref()),
        healthy_since: w.healthy_since,
        step_started_at: w.started,
    };
    let nothing = change.step.is_none()
        && change.failed_step.is_none()
        && change.healthy_since.is_none()
        && change.step_started_at.is_none();
    if !nothing {
        diesel::update(row).set(&change).execute(conn)?;
    }
    if let Some(at) = w.started {
        diesel::update(row.filter(rs::started_at.is_null()))
            .set(rs::started_at.eq(at))
            .execute(conn)?;
    }
    if w.finished {
        diesel::update(row)
            .set(rs::finished_at.eq(diesel::dsl::now))
            .execute(conn)?;
    }
    Ok(())
}

/// Marks the hook of a server started (one more run) if the server is
/// still `updating` in `attempt` and its hook has not finished. `false`:
/// nothing to run.
///
/// # Errors
/// [`DbError`].
pub fn begin_hook(conn: &mut PgConnection, row_id: i64, attempt: i32) -> Result<bool, DbError> {
    Ok(diesel::update(
        rs::table
            .find(row_id)
            .filter(rs::step.eq(Step::Updating))
            .filter(rs::attempt.eq(attempt))
            .filter(rs::hook_finished_at.is_null()),
    )
    .set((
        rs::hook_started_at.eq(diesel::dsl::now),
        rs::hook_runs.eq(rs::hook_runs + 1),
    ))
    .execute(conn)?
        == 1)
}

/// Records a hook's end.
///
/// # Errors
/// [`DbError`].
pub fn finish_hook(
    conn: &mut PgConnection,
    row_id: i64,
    attempt: i32,
    exit_code: Option<i32>,
    output: &str,
) -> Result<(), DbError> {
    diesel::update(
        rs::table
            .find(row_id)
            .filter(rs::attempt.eq(attempt))
            .filter(rs::hook_finished_at.is_null()),
    )
    .set((
        rs::hook_finished_at.eq(diesel::dsl::now),
        rs::hook_exit_code.eq(exit_code),
        rs::hook_output.eq(output),
    ))
    .execute(conn)?;
    Ok(())
}

/// What a tick, an event or a hook needs of one target server.
#[derive(Debug, Clone, QueryableByName)]
pub struct TargetInfo {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub row_id: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub server_id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub server_name: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub address: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Integer>)]
    pub port: Option<i32>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub backend_id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub backend_name: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub instance_id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub instance_name: String,
    /// The AC host of the server's application (`servers.hostname`).
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub hostname: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub application: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    pub application_id: Option<i64>,
}

/// Every target of a rollout with its names, instance and AC host.
///
/// # Errors
/// [`DbError`].
pub fn target_infos(conn: &mut PgConnection, rollout_id: i64) -> Result<Vec<TargetInfo>, DbError> {
    Ok(diesel::sql_query(
        "SELECT rs.id AS row_id, s.id AS server_id, s.server_name, s.address, s.port, \
                b.id AS backend_id, b.backend_name, i.id AS instance_id, i.name AS instance_name, \
                ac.hostname, app.name AS application, app.id AS application_id \
         FROM haproxy_rollout_servers rs \
         JOIN haproxy_servers s ON s.id = rs.server_id \
         JOIN haproxy_backends b ON b.id = s.backend_id \
         JOIN haproxy_instances i ON i.id = b.haproxy_id \
         LEFT JOIN applications app ON app.id = s.application_id \
         LEFT JOIN servers ac ON ac.id = app.server_id \
         WHERE rs.rollout_id = $1 ORDER BY rs.position",
    )
    .bind::<diesel::sql_types::BigInt, _>(rollout_id)
    .load(conn)?)
}
