//! `haproxy_backends` and `haproxy_servers`: what each instance has, and
//! looking a server up for an action.

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use super::DbError;
use super::instances::InstanceRow;
use super::schema::{haproxy_backends as b, haproxy_instances as i, haproxy_servers as s};
use crate::domain::event::StatePair;
use crate::domain::{AdminState, OpState};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = s)]
pub struct ServerRow {
    pub id: i64,
    pub backend_id: i64,
    pub server_name: String,
    pub address: String,
    pub port: Option<i32>,
    pub admin_state: AdminState,
    pub op_state: OpState,
    pub weight: i32,
    pub current_sessions: i64,
    pub check_status: Option<String>,
    pub application_id: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub removed_at: Option<DateTime<Utc>>,
    pub state_changed_at: Option<DateTime<Utc>>,
    pub state_written_at: Option<DateTime<Utc>>,
    pub last_requested_at: Option<DateTime<Utc>>,
}

impl ServerRow {
    /// The stored state as a pair.
    pub fn state(&self) -> StatePair {
        StatePair {
            admin_state: self.admin_state,
            op_state: self.op_state,
        }
    }
}

/// A live server with its backend and instance: what an action needs.
#[derive(Debug, Clone)]
pub struct ServerTarget {
    pub server: ServerRow,
    pub backend_name: String,
    pub instance: InstanceRow,
}

/// Servers that are live, with their live backend and instance, selected as
/// a [`TargetRow`]. The caller has `s`, `b` and `i` (the servers, backends
/// and instances tables), [`ServerRow`] and [`InstanceRow`] in scope.
macro_rules! live_targets {
    () => {
        s::table
            .inner_join(b::table.inner_join(i::table))
            .filter(s::removed_at.is_null())
            .filter(b::removed_at.is_null())
            .select((
                ServerRow::as_select(),
                b::backend_name,
                InstanceRow::as_select(),
            ))
    };
}
pub(super) use live_targets;

/// A [`ServerTarget`] as a query returns it.
pub(super) type TargetRow = (ServerRow, String, InstanceRow);

pub(super) fn to_target((server, backend_name, instance): TargetRow) -> ServerTarget {
    ServerTarget {
        server,
        backend_name,
        instance,
    }
}

/// The live server with this id.
pub fn find_server(
    conn: &mut PgConnection,
    server_id: i64,
) -> Result<Option<ServerTarget>, DbError> {
    let row: Option<TargetRow> = live_targets!()
        .filter(s::id.eq(server_id))
        .first(conn)
        .optional()?;
    Ok(row.map(to_target))
}

/// The live server `instance/backend/server`.
pub fn find_server_by_names(
    conn: &mut PgConnection,
    instance: &str,
    backend: &str,
    server: &str,
) -> Result<Option<ServerTarget>, DbError> {
    let row: Option<TargetRow> = live_targets!()
        .filter(i::name.eq(instance))
        .filter(b::backend_name.eq(backend))
        .filter(s::server_name.eq(server))
        .first(conn)
        .optional()?;
    Ok(row.map(to_target))
}

/// The current row of one server (under its lock, for ordering decisions).
pub fn server(conn: &mut PgConnection, server_id: i64) -> Result<Option<ServerRow>, DbError> {
    Ok(s::table
        .find(server_id)
        .select(ServerRow::as_select())
        .first(conn)
        .optional()?)
}

/// Live servers of an instance, by id, for listings.
pub fn servers_of_instance(
    conn: &mut PgConnection,
    instance_id: i64,
) -> Result<Vec<(ServerRow, String)>, DbError> {
    Ok(s::table
        .inner_join(b::table)
        .filter(b::haproxy_id.eq(instance_id))
        .filter(s::removed_at.is_null())
        .order(s::id)
        .select((ServerRow::as_select(), b::backend_name))
        .load(conn)?)
}

/// Live servers of a backend that are `ready`, other than `server_id`.
pub fn ready_servers_besides(
    conn: &mut PgConnection,
    backend_id: i64,
    server_id: i64,
) -> Result<i64, DbError> {
    Ok(s::table
        .filter(s::backend_id.eq(backend_id))
        .filter(s::id.ne(server_id))
        .filter(s::removed_at.is_null())
        .filter(s::admin_state.eq(AdminState::Ready))
        .count()
        .get_result(conn)?)
}
