//! `haproxy_backends` and `haproxy_servers`: what each instance has, and
//! looking a server up for an action.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Int4, Int8, Nullable, Text, Timestamptz};

use super::DbError;
use super::instances::InstanceRow;
use super::schema::{haproxy_backends as b, haproxy_instances as i, haproxy_servers as s};
use crate::domain::snapshot::BackendSnapshot;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = s)]
pub struct ServerRow {
    pub id: i64,
    pub backend_id: i64,
    pub server_name: String,
    pub address: String,
    pub port: Option<i32>,
    pub admin_state: String,
    pub op_state: String,
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

/// A live server with its backend and instance: what an action needs.
#[derive(Debug, Clone)]
pub struct ServerTarget {
    pub server: ServerRow,
    pub backend_name: String,
    pub instance: InstanceRow,
}

/// Servers that are live, with their live backend and instance.
macro_rules! live_servers {
    () => {
        s::table
            .inner_join(b::table.inner_join(i::table))
            .filter(s::removed_at.is_null())
            .filter(b::removed_at.is_null())
    };
}

type TargetRow = (ServerRow, String, InstanceRow);

fn to_target((server, backend_name, instance): TargetRow) -> ServerTarget {
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
    let row: Option<TargetRow> = live_servers!()
        .filter(s::id.eq(server_id))
        .select((
            ServerRow::as_select(),
            b::backend_name,
            InstanceRow::as_select(),
        ))
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
    let row: Option<TargetRow> = live_servers!()
        .filter(i::name.eq(instance))
        .filter(b::backend_name.eq(backend))
        .filter(s::server_name.eq(server))
        .select((
            ServerRow::as_select(),
            b::backend_name,
            InstanceRow::as_select(),
        ))
        .first(conn)
        .optional()?;
    Ok(row.map(to_target))
}

#[derive(QueryableByName)]
struct BackendId {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    backend_name: String,
}

/// Plain upsert of an agent's listing: backends and servers are created or
/// refreshed (and marked live again). A server's state is overwritten only
/// when nothing wrote it after `fetched_at` (DESIGN.md rule 6). Nothing is
/// marked removed and no history is written: that is the sync's job.
/// One statement per table, with arrays, so no bind-parameter limit applies.
pub fn upsert_listing(
    conn: &mut PgConnection,
    instance_id: i64,
    fetched_at: DateTime<Utc>,
    backends: &[BackendSnapshot],
) -> Result<usize, DbError> {
    conn.transaction(|conn| {
        let names: Vec<String> = backends.iter().map(|x| x.name.clone()).collect();
        let ids: Vec<BackendId> = diesel::sql_query(
            "INSERT INTO haproxy_backends (haproxy_id, backend_name, last_seen_at) \
             SELECT $1, n, $3 FROM UNNEST($2::text[]) AS n \
             ON CONFLICT (haproxy_id, backend_name) DO UPDATE \
               SET last_seen_at = EXCLUDED.last_seen_at, removed_at = NULL \
             RETURNING id, backend_name",
        )
        .bind::<BigInt, _>(instance_id)
        .bind::<Array<Text>, _>(&names)
        .bind::<Timestamptz, _>(fetched_at)
        .load(conn)?;
        let id_of: std::collections::HashMap<&str, i64> =
            ids.iter().map(|r| (r.backend_name.as_str(), r.id)).collect();

        let mut cols = ServerColumns::default();
        for backend in backends {
            let Some(&backend_id) = id_of.get(backend.name.as_str()) else {
                continue;
            };
            for srv in &backend.servers {
                cols.backend_id.push(backend_id);
                cols.name.push(srv.name.clone());
                cols.address.push(srv.address.clone());
                cols.port.push(srv.port.map(i32::from));
                cols.admin.push(srv.admin_state.as_str().to_owned());
                cols.op.push(srv.op_state.as_str().to_owned());
                cols.weight.push(i32::try_from(srv.weight).unwrap_or(i32::MAX));
                cols.sessions.push(i64::try_from(srv.current_sessions).unwrap_or(i64::MAX));
                cols.check.push(srv.check_status.clone());
            }
        }
        let count = cols.name.len();
        diesel::sql_query(
            "INSERT INTO haproxy_servers (backend_id, server_name, address, port, admin_state, op_state, \
                 weight, current_sessions, check_status, last_seen_at, state_written_at, state_changed_at) \
             SELECT u.*, $10, $10, $10 FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::int4[], $5::text[], \
                 $6::text[], $7::int4[], $8::int8[], $9::text[]) AS u \
             ON CONFLICT (backend_id, server_name) DO UPDATE SET \
               address = EXCLUDED.address, port = EXCLUDED.port, weight = EXCLUDED.weight, \
               current_sessions = EXCLUDED.current_sessions, check_status = EXCLUDED.check_status, \
               last_seen_at = EXCLUDED.last_seen_at, removed_at = NULL, \
               admin_state = CASE WHEN haproxy_servers.state_written_at IS NULL OR haproxy_servers.state_written_at <= EXCLUDED.last_seen_at \
                                  THEN EXCLUDED.admin_state ELSE haproxy_servers.admin_state END, \
               op_state = CASE WHEN haproxy_servers.state_written_at IS NULL OR haproxy_servers.state_written_at <= EXCLUDED.last_seen_at \
                               THEN EXCLUDED.op_state ELSE haproxy_servers.op_state END",
        )
        .bind::<Array<Int8>, _>(&cols.backend_id)
        .bind::<Array<Text>, _>(&cols.name)
        .bind::<Array<Text>, _>(&cols.address)
        .bind::<Array<Nullable<Int4>>, _>(&cols.port)
        .bind::<Array<Text>, _>(&cols.admin)
        .bind::<Array<Text>, _>(&cols.op)
        .bind::<Array<Int4>, _>(&cols.weight)
        .bind::<Array<Int8>, _>(&cols.sessions)
        .bind::<Array<Nullable<Text>>, _>(&cols.check)
        .bind::<Timestamptz, _>(fetched_at)
        .execute(conn)?;
        Ok(count)
    })
}

#[derive(Default)]
struct ServerColumns {
    backend_id: Vec<i64>,
    name: Vec<String>,
    address: Vec<String>,
    port: Vec<Option<i32>>,
    admin: Vec<String>,
    op: Vec<String>,
    weight: Vec<i32>,
    sessions: Vec<i64>,
    check: Vec<Option<String>>,
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
