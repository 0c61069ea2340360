//! `haproxy_instances`: registered HAProxy instances and their shared
//! circuit-breaker state.
//!
//! Raw SQL in two breaker statements: the probe claim compares with
//! `make_interval`, and [`record_success`] is a CTE that locks and reads the
//! state it replaces.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::BigInt;

use super::DbError;
use super::schema::haproxy_instances as t;
use crate::domain::action::SyncStatus;
use crate::domain::breaker::{BreakerState, BreakerView};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = t)]
pub struct InstanceRow {
    pub id: i64,
    pub server_id: Option<i64>,
    pub name: String,
    pub fagent_url: String,
    pub fagent_token_ref: String,
    pub is_active: bool,
    pub breaker_state: BreakerState,
    pub consecutive_failures: i32,
    pub opened_at: Option<DateTime<Utc>>,
    pub probe_started_at: Option<DateTime<Utc>>,
    pub last_sync_at: Option<DateTime<Utc>>,
    pub last_sync_result: Option<SyncStatus>,
    pub last_sync_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub haproxy_pid: Option<i32>,
    pub haproxy_started_at: Option<DateTime<Utc>>,
    pub last_reload_at: Option<DateTime<Utc>>,
    pub restore_after_reload: bool,
}

impl InstanceRow {
    /// The breaker as the domain rules see it.
    pub fn breaker(&self) -> BreakerView {
        BreakerView {
            state: self.breaker_state,
            consecutive_failures: self.consecutive_failures,
            opened_at: self.opened_at,
            probe_started_at: self.probe_started_at,
        }
    }
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = t)]
pub struct NewInstance {
    pub server_id: Option<i64>,
    pub name: String,
    pub fagent_url: String,
    pub fagent_token_ref: String,
    pub is_active: bool,
}

/// Creates the instance, or updates URL, token and activity of the one with
/// that name.
pub fn upsert(conn: &mut PgConnection, new: &NewInstance) -> Result<InstanceRow, DbError> {
    Ok(diesel::insert_into(t::table)
        .values(new)
        .on_conflict(t::name)
        .do_update()
        .set((
            t::fagent_url.eq(&new.fagent_url),
            t::fagent_token_ref.eq(&new.fagent_token_ref),
            t::is_active.eq(new.is_active),
            t::server_id.eq(new.server_id),
            t::updated_at.eq(diesel::dsl::now),
        ))
        .returning(InstanceRow::as_returning())
        .get_result(conn)?)
}

/// Sets the instance's `restore_after_reload`.
pub fn set_restore_after_reload(
    conn: &mut PgConnection,
    id: i64,
    on: bool,
) -> Result<InstanceRow, DbError> {
    Ok(diesel::update(t::table.find(id))
        .set((
            t::restore_after_reload.eq(on),
            t::updated_at.eq(diesel::dsl::now),
        ))
        .returning(InstanceRow::as_returning())
        .get_result(conn)?)
}

pub fn list(
    conn: &mut PgConnection,
    after_id: i64,
    limit: i64,
) -> Result<Vec<InstanceRow>, DbError> {
    Ok(t::table
        .filter(t::id.gt(after_id))
        .order(t::id)
        .limit(limit)
        .select(InstanceRow::as_select())
        .load(conn)?)
}

pub fn get(conn: &mut PgConnection, id: i64) -> Result<Option<InstanceRow>, DbError> {
    Ok(t::table
        .find(id)
        .select(InstanceRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn find_by_name(conn: &mut PgConnection, name: &str) -> Result<Option<InstanceRow>, DbError> {
    Ok(t::table
        .filter(t::name.eq(name))
        .select(InstanceRow::as_select())
        .first(conn)
        .optional()?)
}

/// Makes the caller the one probe of an open breaker whose window has
/// passed (or whose previous probe went silent). Exactly one concurrent
/// caller wins, because the row is updated conditionally.
pub fn claim_probe(
    conn: &mut PgConnection,
    id: i64,
    open_for_secs: f64,
    probe_timeout_secs: f64,
) -> Result<bool, DbError> {
    let claimed = diesel::sql_query(
        "UPDATE haproxy_instances SET breaker_state = 'half_open', probe_started_at = now(), updated_at = now() \
         WHERE id = $1 AND ( \
           (breaker_state = 'open' AND (opened_at IS NULL OR opened_at <= now() - make_interval(secs => $2))) \
           OR (breaker_state = 'half_open' AND (probe_started_at IS NULL OR probe_started_at <= now() - make_interval(secs => $3))))",
    )
    .bind::<BigInt, _>(id)
    .bind::<diesel::sql_types::Double, _>(open_for_secs)
    .bind::<diesel::sql_types::Double, _>(probe_timeout_secs)
    .execute(conn)?;
    Ok(claimed == 1)
}

/// Records a successful call: closes the breaker and clears its failure
/// count. Returns the state it had when it was open or half-open.
///
/// One statement that writes (and locks) the row only when there is
/// something to clear, so the common case — a closed breaker with no
/// failures — costs one index lookup and no write on a row every action
/// of the instance shares. `FOR NO KEY UPDATE` makes the state it returns
/// the latest committed one, not the statement's snapshot.
pub fn record_success(conn: &mut PgConnection, id: i64) -> Result<Option<BreakerState>, DbError> {
    #[derive(QueryableByName)]
    struct Before {
        #[diesel(sql_type = diesel::sql_types::Text)]
        breaker_state: BreakerState,
    }
    let before: Option<Before> = diesel::sql_query(
        "WITH before AS ( \
           SELECT breaker_state FROM haproxy_instances \
            WHERE id = $1 AND (breaker_state <> 'closed' OR consecutive_failures <> 0) \
              FOR NO KEY UPDATE \
         ) \
         UPDATE haproxy_instances t \
            SET breaker_state = 'closed', consecutive_failures = 0, opened_at = NULL, \
                probe_started_at = NULL, updated_at = now() \
           FROM before WHERE t.id = $1 \
         RETURNING before.breaker_state",
    )
    .bind::<BigInt, _>(id)
    .get_result(conn)
    .optional()?;
    Ok(before
        .map(|b| b.breaker_state)
        .filter(|state| *state != BreakerState::Closed))
}

/// Locks the instance row and returns its breaker (for a failure update).
pub fn lock_breaker(conn: &mut PgConnection, id: i64) -> Result<Option<BreakerView>, DbError> {
    let row: Option<InstanceRow> = t::table
        .find(id)
        .select(InstanceRow::as_select())
        .for_update()
        .first(conn)
        .optional()?;
    Ok(row.map(|r| r.breaker()))
}

/// Writes a failure: the new count, and `open` with `opened_at = now()` when
/// the policy decided to open.
pub fn write_failure(
    conn: &mut PgConnection,
    id: i64,
    failures: i32,
    open: bool,
) -> Result<(), DbError> {
    if open {
        diesel::update(t::table.find(id))
            .set((
                t::consecutive_failures.eq(failures),
                t::breaker_state.eq(BreakerState::Open),
                t::opened_at.eq(diesel::dsl::now),
                t::probe_started_at.eq(None::<DateTime<Utc>>),
                t::updated_at.eq(diesel::dsl::now),
            ))
            .execute(conn)?;
    } else {
        diesel::update(t::table.find(id))
            .set((
                t::consecutive_failures.eq(failures),
                t::updated_at.eq(diesel::dsl::now),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// `opened_at` of the instance, for the stable id of its `circuit_opened` event.
pub fn opened_at(conn: &mut PgConnection, id: i64) -> Result<Option<DateTime<Utc>>, DbError> {
    Ok(t::table
        .find(id)
        .select(t::opened_at)
        .first::<Option<DateTime<Utc>>>(conn)
        .optional()?
        .flatten())
}
