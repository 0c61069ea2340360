//! The sync's database side: load an instance's inventory in one query,
//! apply a reconcile plan in one transaction of a handful of bulk
//! statements, and the sync runs that dedupe sync commands.
//!
//! Raw SQL stays where Diesel's DSL cannot say it: the bulk writes take
//! their rows as arrays through `UNNEST` (one statement and no
//! bind-parameter limit for 10,000 servers), the update of the servers
//! computes rule 6's predicate once in a CTE, and [`busy_servers`] takes
//! advisory locks. Everything else is DSL, checked against `schema.rs`.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Int4, Int8, Nullable, Text, Timestamptz};
use uuid::Uuid;

use super::DbError;
use super::schema::{
    applications as a, haproxy_backends as b, haproxy_instances as i, haproxy_servers as s,
    haproxy_sync_runs as r, servers as ac,
};
use crate::domain::action::{SyncReason, SyncStatus, server_lock_key};
use crate::domain::event::StatePair;
use crate::domain::mapping::{AppCandidate, Link, Matcher, NameTemplate};
use crate::domain::reconcile::{BackendRef, Plan, StoredBackend, StoredServer};
use crate::domain::{AdminState, HistorySource, OpState};

/// The columns of a server row the reconcile compares.
#[derive(Queryable, Selectable)]
#[diesel(table_name = s)]
struct StoredRow {
    id: i64,
    server_name: String,
    address: String,
    port: Option<i32>,
    admin_state: AdminState,
    op_state: OpState,
    weight: i32,
    current_sessions: i64,
    check_status: Option<String>,
    removed_at: Option<DateTime<Utc>>,
    state_written_at: Option<DateTime<Utc>>,
}

type InventoryRow = (i64, String, bool, Option<StoredRow>);

/// Every backend and server row of an instance (live and removed), in one query.
pub fn load(
    conn: &mut PgConnection,
    instance_id: i64,
) -> Result<(Vec<StoredBackend>, Vec<StoredServer>), DbError> {
    let rows: Vec<InventoryRow> = b::table
        .left_join(s::table)
        .filter(b::haproxy_id.eq(instance_id))
        .select((
            b::id,
            b::backend_name,
            b::removed_at.is_not_null(),
            Option::<StoredRow>::as_select(),
        ))
        .load(conn)?;
    let mut backends: HashMap<i64, StoredBackend> = HashMap::new();
    let mut servers = Vec::with_capacity(rows.len());
    for (backend_id, backend_name, backend_removed, server) in rows {
        backends.entry(backend_id).or_insert_with(|| StoredBackend {
            id: backend_id,
            name: backend_name,
            removed: backend_removed,
        });
        let Some(row) = server else { continue };
        servers.push(StoredServer {
            id: row.id,
            backend_id,
            name: row.server_name,
            address: row.address,
            port: row.port,
            admin_state: row.admin_state,
            op_state: row.op_state,
            weight: row.weight,
            current_sessions: row.current_sessions,
            check_status: row.check_status,
            removed: row.removed_at.is_some(),
            state_written_at: row.state_written_at,
        });
    }
    Ok((backends.into_values().collect(), servers))
}

/// A server the sync found, lost or changed, for its event.
#[derive(Debug, Clone)]
pub struct Finding {
    pub server_id: i64,
    pub server_name: String,
    pub backend_id: i64,
    pub backend_name: String,
    pub address: String,
    pub port: Option<i32>,
    pub application_id: Option<i64>,
    pub previous: Option<StatePair>,
    pub current: StatePair,
}

/// What a sync changed.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub discovered: Vec<Finding>,
    pub removed: Vec<Finding>,
    pub changed: Vec<Finding>,
    pub updated: usize,
    pub linked: usize,
}

/// A server row inserted by the sync, as linking needs it.
#[derive(QueryableByName)]
#[diesel(table_name = s)]
struct Inserted {
    id: i64,
    server_name: String,
    address: String,
    port: Option<i32>,
}

/// A server row as its event shows it.
#[derive(Queryable, Selectable)]
#[diesel(table_name = s)]
struct FoundRow {
    id: i64,
    backend_id: i64,
    server_name: String,
    address: String,
    port: Option<i32>,
    admin_state: AdminState,
    op_state: OpState,
    application_id: Option<i64>,
}

/// Applies `plan` in one transaction, in the order of DESIGN.md rule 6:
/// backends, new servers, gone servers, then the updates, whose state
/// columns are written only where no action wrote after `fetched_at`
/// (checked by the UPDATE itself, so an action committing meanwhile still
/// wins); history rows (source `sync`, actor `actor`) for the state changes
/// that were applied. New servers are linked to applications: first from
/// the link cache, then by `template`. The instance's last sync is recorded.
pub fn apply(
    conn: &mut PgConnection,
    instance_id: i64,
    fetched_at: DateTime<Utc>,
    plan: &Plan,
    actor: &str,
    template: &NameTemplate,
) -> Result<Applied, DbError> {
    conn.transaction(|conn| {
        super::durable(conn)?;
        let new_backend_ids = write_backends(conn, instance_id, fetched_at, plan)?;
        let inserted = insert_new_servers(conn, fetched_at, plan, &new_backend_ids)?;
        let gone: Vec<i64> = diesel::update(
            s::table
                .filter(s::id.eq_any(&plan.removed_servers))
                .filter(s::removed_at.is_null()),
        )
        .set(s::removed_at.eq(diesel::dsl::now))
        .returning(s::id)
        .get_results(conn)?;
        let (updated, state_applied) = update_servers(conn, fetched_at, plan)?;
        let linked = link_new_servers(conn, instance_id, &inserted, template)?;
        record_history(conn, plan, &state_applied, actor)?;
        diesel::update(i::table.find(instance_id))
            .set((
                i::last_sync_at.eq(diesel::dsl::now),
                i::last_sync_result.eq(SyncStatus::Success),
                i::last_sync_error.eq(None::<String>),
                i::updated_at.eq(diesel::dsl::now),
            ))
            .execute(conn)?;
        let inserted: Vec<i64> = inserted.iter().map(|r| r.id).collect();
        let mut applied = findings(conn, plan, &inserted, &gone, &state_applied)?;
        applied.updated = updated;
        applied.linked = linked;
        Ok(applied)
    })
}

/// Inserts the new backends (or revives them by name) and marks the
/// revived and the gone ones. Returns the ids of the new backends by name.
fn write_backends(
    conn: &mut PgConnection,
    instance_id: i64,
    fetched_at: DateTime<Utc>,
    plan: &Plan,
) -> Result<HashMap<String, i64>, DbError> {
    #[derive(QueryableByName)]
    #[diesel(table_name = b)]
    struct Created {
        id: i64,
        backend_name: String,
    }
    let created: Vec<Created> = diesel::sql_query(
        "INSERT INTO haproxy_backends (haproxy_id, backend_name, last_seen_at) \
         SELECT $1, n, $3 FROM UNNEST($2::text[]) AS n \
         ON CONFLICT (haproxy_id, backend_name) DO UPDATE SET removed_at = NULL, last_seen_at = EXCLUDED.last_seen_at \
         RETURNING id, backend_name",
    )
    .bind::<BigInt, _>(instance_id)
    .bind::<Array<Text>, _>(&plan.new_backends)
    .bind::<Timestamptz, _>(fetched_at)
    .load(conn)?;
    diesel::update(b::table.filter(b::id.eq_any(&plan.revived_backends)))
        .set((
            b::removed_at.eq(None::<DateTime<Utc>>),
            b::last_seen_at.eq(fetched_at),
        ))
        .execute(conn)?;
    diesel::update(
        b::table
            .filter(b::id.eq_any(&plan.removed_backends))
            .filter(b::removed_at.is_null()),
    )
    .set(b::removed_at.eq(diesel::dsl::now))
    .execute(conn)?;
    Ok(created
        .into_iter()
        .map(|r| (r.backend_name, r.id))
        .collect())
}

/// Inserts the plan's new servers in one statement.
fn insert_new_servers(
    conn: &mut PgConnection,
    fetched_at: DateTime<Utc>,
    plan: &Plan,
    new_backend_ids: &HashMap<String, i64>,
) -> Result<Vec<Inserted>, DbError> {
    let mut cols = NewColumns::default();
    for n in &plan.new_servers {
        let backend_id = match &n.backend {
            BackendRef::Existing(id) => Some(*id),
            BackendRef::New(name) => new_backend_ids.get(name).copied(),
        };
        let Some(backend_id) = backend_id else {
            continue;
        };
        cols.backend_id.push(backend_id);
        cols.name.push(n.server.name.clone());
        cols.address.push(n.server.address.clone());
        cols.port.push(n.server.port.map(i32::from));
        cols.admin.push(n.server.admin_state);
        cols.op.push(n.server.op_state);
        cols.weight
            .push(i32::try_from(n.server.weight).unwrap_or(i32::MAX));
        cols.sessions
            .push(i64::try_from(n.server.current_sessions).unwrap_or(i64::MAX));
        cols.check.push(n.server.check_status.clone());
    }
    Ok(diesel::sql_query(
        "INSERT INTO haproxy_servers (backend_id, server_name, address, port, admin_state, op_state, \
             weight, current_sessions, check_status, last_seen_at, state_written_at, state_changed_at) \
         SELECT u.*, $10, $10, $10 FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::int4[], $5::text[], \
             $6::text[], $7::int4[], $8::int8[], $9::text[]) AS u \
         ON CONFLICT (backend_id, server_name) DO NOTHING \
         RETURNING id, server_name, address, port",
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
    .load(conn)?)
}

/// Rule 6 for the updates, revived rows included. `apply_state` is the
/// rule, computed once per row: the plan changes the state, no action is
/// working on the server (see [`busy_servers`]), no action wrote it after
/// the snapshot, and the stored state is still the one the plan was made
/// from (an action that committed since then already recorded the change).
/// The CTE locks the rows it reads, so the rule sees their latest committed
/// version, as the UPDATE would.
const UPDATE_SERVERS: &str = "\
WITH u AS (
    SELECT * FROM UNNEST($1::int8[], $2::text[], $3::int4[], $4::int4[], $5::int8[], $6::text[],
                         $7::text[], $8::text[], $9::bool[], $11::text[], $12::text[])
        AS u(id, address, port, weight, sessions, chk, admin, op, change, prev_admin, prev_op)
), d AS (
    SELECT u.*,
           u.change
           AND (s.state_written_at IS NULL OR s.state_written_at <= $10)
           AND s.admin_state = u.prev_admin AND s.op_state = u.prev_op AS apply_state
      FROM u JOIN haproxy_servers s ON s.id = u.id
       FOR NO KEY UPDATE OF s
)
UPDATE haproxy_servers s SET
    address = d.address, port = d.port, weight = d.weight, current_sessions = d.sessions,
    check_status = d.chk, removed_at = NULL, last_seen_at = $10,
    admin_state = CASE WHEN d.apply_state THEN d.admin ELSE s.admin_state END,
    op_state = CASE WHEN d.apply_state THEN d.op ELSE s.op_state END,
    state_changed_at = CASE WHEN d.apply_state THEN now() ELSE s.state_changed_at END,
    state_written_at = CASE WHEN d.apply_state THEN $10 ELSE s.state_written_at END
  FROM d
 WHERE s.id = d.id
RETURNING s.id, d.apply_state";

/// Writes the plan's updates; returns how many rows were updated and the
/// servers whose state was written.
fn update_servers(
    conn: &mut PgConnection,
    fetched_at: DateTime<Utc>,
    plan: &Plan,
) -> Result<(usize, HashSet<i64>), DbError> {
    #[derive(QueryableByName)]
    #[diesel(table_name = s)]
    struct Written {
        id: i64,
        #[diesel(sql_type = Bool)]
        apply_state: bool,
    }
    let busy = busy_servers(conn, plan)?;
    let mut u = UpdateColumns::default();
    for up in &plan.updates {
        u.id.push(up.id);
        u.address.push(up.address.clone());
        u.port.push(up.port);
        u.weight.push(up.weight);
        u.sessions.push(up.current_sessions);
        u.check.push(up.check_status.clone());
        u.admin.push(up.admin_state);
        u.op.push(up.op_state);
        let (prev_admin, prev_op) = up.state_change.map_or((None, None), |(prev, _)| {
            (Some(prev.admin_state), Some(prev.op_state))
        });
        u.prev_admin.push(prev_admin);
        u.prev_op.push(prev_op);
        u.change
            .push(up.state_change.is_some() && !busy.contains(&up.id));
    }
    let written: Vec<Written> = diesel::sql_query(UPDATE_SERVERS)
        .bind::<Array<Int8>, _>(&u.id)
        .bind::<Array<Text>, _>(&u.address)
        .bind::<Array<Nullable<Int4>>, _>(&u.port)
        .bind::<Array<Int4>, _>(&u.weight)
        .bind::<Array<Int8>, _>(&u.sessions)
        .bind::<Array<Nullable<Text>>, _>(&u.check)
        .bind::<Array<Text>, _>(&u.admin)
        .bind::<Array<Text>, _>(&u.op)
        .bind::<Array<Bool>, _>(&u.change)
        .bind::<Timestamptz, _>(fetched_at)
        .bind::<Array<Nullable<Text>>, _>(&u.prev_admin)
        .bind::<Array<Nullable<Text>>, _>(&u.prev_op)
        .load(conn)?;
    let state_applied = written
        .iter()
        .filter(|w| w.apply_state)
        .map(|w| w.id)
        .collect();
    Ok((written.len(), state_applied))
}

/// The history rows (source `sync`) of the state changes that were written.
fn record_history(
    conn: &mut PgConnection,
    plan: &Plan,
    state_applied: &HashSet<i64>,
    actor: &str,
) -> Result<(), DbError> {
    let mut h = HistoryColumns::default();
    for up in plan
        .updates
        .iter()
        .filter(|x| state_applied.contains(&x.id))
    {
        if let Some((prev, cur)) = up.state_change {
            h.server_id.push(up.id);
            h.prev_admin.push(prev.admin_state);
            h.new_admin.push(cur.admin_state);
            h.prev_op.push(prev.op_state);
            h.new_op.push(cur.op_state);
        }
    }
    diesel::sql_query(
        "INSERT INTO haproxy_server_status_history (server_id, previous_admin_state, new_admin_state, \
             previous_op_state, new_op_state, source, actor, changed_at) \
         SELECT u.*, $6, $7, now() FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[]) AS u",
    )
    .bind::<Array<Int8>, _>(&h.server_id)
    .bind::<Array<Text>, _>(&h.prev_admin)
    .bind::<Array<Text>, _>(&h.new_admin)
    .bind::<Array<Text>, _>(&h.prev_op)
    .bind::<Array<Text>, _>(&h.new_op)
    .bind::<Text, _>(HistorySource::Sync)
    .bind::<Text, _>(actor)
    .execute(conn)?;
    Ok(())
}

/// The servers the sync discovered (new or back), removed and changed,
/// read back with their backend's name in one query.
fn findings(
    conn: &mut PgConnection,
    plan: &Plan,
    inserted: &[i64],
    gone: &[i64],
    state_applied: &HashSet<i64>,
) -> Result<Applied, DbError> {
    let touched =
        |x: &&crate::domain::reconcile::ServerUpdate| x.revived || state_applied.contains(&x.id);
    let ids: Vec<i64> = inserted
        .iter()
        .chain(gone)
        .copied()
        .chain(plan.updates.iter().filter(touched).map(|x| x.id))
        .collect();
    let rows: Vec<(FoundRow, String)> = if ids.is_empty() {
        Vec::new()
    } else {
        s::table
            .inner_join(b::table)
            .filter(s::id.eq_any(&ids))
            .select((FoundRow::as_select(), b::backend_name))
            .load(conn)?
    };
    let by_id: HashMap<i64, (FoundRow, String)> = rows.into_iter().map(|r| (r.0.id, r)).collect();
    let finding = |id: &i64, previous: Option<StatePair>| {
        by_id.get(id).map(|(r, backend_name)| Finding {
            server_id: r.id,
            server_name: r.server_name.clone(),
            backend_id: r.backend_id,
            backend_name: backend_name.clone(),
            address: r.address.clone(),
            port: r.port,
            application_id: r.application_id,
            previous,
            current: StatePair {
                admin_state: r.admin_state,
                op_state: r.op_state,
            },
        })
    };
    let mut applied = Applied {
        discovered: inserted.iter().filter_map(|id| finding(id, None)).collect(),
        removed: gone.iter().filter_map(|id| finding(id, None)).collect(),
        ..Applied::default()
    };
    for up in plan.updates.iter().filter(touched) {
        if up.revived {
            applied.discovered.extend(finding(&up.id, None));
        }
        if state_applied.contains(&up.id)
            && let Some((prev, _)) = up.state_change
        {
            applied.changed.extend(finding(&up.id, Some(prev)));
        }
    }
    Ok(applied)
}

/// The servers with a planned state change that an action is working on:
/// their lock (rule 3) is held, so the change the snapshot shows may be that
/// action's, applied at HAProxy and not committed yet. Their state is left
/// to the action (the next sync sees the outcome). Every other server with a
/// planned change is locked until this transaction ends, so no action can
/// start on it meanwhile; an action that held it before has committed.
fn busy_servers(conn: &mut PgConnection, plan: &Plan) -> Result<HashSet<i64>, DbError> {
    #[derive(QueryableByName)]
    #[diesel(table_name = s)]
    struct Busy {
        id: i64,
    }
    let (ids, keys): (Vec<i64>, Vec<i64>) = plan
        .updates
        .iter()
        .filter(|up| up.state_change.is_some())
        .map(|up| (up.id, server_lock_key(up.id)))
        .unzip();
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let busy: Vec<Busy> = diesel::sql_query(
        "SELECT k.id FROM UNNEST($1::int8[], $2::int8[]) AS k(id, key) \
         WHERE NOT pg_try_advisory_xact_lock(k.key)",
    )
    .bind::<Array<Int8>, _>(&ids)
    .bind::<Array<Int8>, _>(&keys)
    .load(conn)?;
    Ok(busy.into_iter().map(|b| b.id).collect())
}

/// Links newly inserted servers: the cache of (instance, address, port,
/// server name) first — it keeps links across backend renames — then the
/// matcher; records the matcher's links in the cache and the links on the
/// servers. Returns how many servers were linked.
fn link_new_servers(
    conn: &mut PgConnection,
    instance_id: i64,
    inserted: &[Inserted],
    template: &NameTemplate,
) -> Result<usize, DbError> {
    if inserted.is_empty() {
        return Ok(0);
    }
    let cache = cached_links(conn, instance_id, inserted)?;
    let mut links: Vec<(i64, i64)> = Vec::new();
    let mut unmatched: Vec<&Inserted> = Vec::new();
    for r in inserted {
        match cache.get(&r.link_key()) {
            Some(app) => links.push((r.id, *app)),
            None => unmatched.push(r),
        }
    }
    let matched = if unmatched.is_empty() {
        Vec::new()
    } else {
        match_links(conn, &unmatched, template)?
    };
    if !matched.is_empty() {
        cache_links(conn, instance_id, &matched)?;
    }
    links.extend(matched.iter().map(|(r, app)| (r.id, *app)));
    let (ids, apps): (Vec<i64>, Vec<i64>) = links.iter().copied().unzip();
    diesel::sql_query(
        "UPDATE haproxy_servers s SET application_id = u.app FROM UNNEST($1::int8[], $2::int8[]) AS u(id, app) WHERE s.id = u.id",
    )
    .bind::<Array<Int8>, _>(&ids)
    .bind::<Array<Int8>, _>(&apps)
    .execute(conn)?;
    Ok(links.len())
}

/// The link cache's key of a server. The cache's `port` is NOT NULL; a
/// server without a port is cached under port 0, which no server has.
type LinkKey = (String, i32, String);

impl Inserted {
    fn link_key(&self) -> LinkKey {
        const NO_PORT: i32 = 0;
        (
            self.address.clone(),
            self.port.unwrap_or(NO_PORT),
            self.server_name.clone(),
        )
    }
}

/// The cached links of the inserted servers.
fn cached_links(
    conn: &mut PgConnection,
    instance_id: i64,
    inserted: &[Inserted],
) -> Result<HashMap<LinkKey, i64>, DbError> {
    #[derive(QueryableByName)]
    #[diesel(table_name = super::schema::haproxy_application_links)]
    struct CachedLink {
        address: String,
        port: i32,
        server_name: String,
        application_id: i64,
    }
    let (addresses, ports, names) = link_columns(inserted.iter());
    let cached: Vec<CachedLink> = diesel::sql_query(
        "SELECT l.address, l.port, l.server_name, l.application_id FROM haproxy_application_links l \
         JOIN UNNEST($2::text[], $3::int4[], $4::text[]) AS u(address, port, server_name) \
           ON l.address = u.address AND l.port = u.port AND l.server_name = u.server_name \
         WHERE l.haproxy_id = $1",
    )
    .bind::<BigInt, _>(instance_id)
    .bind::<Array<Text>, _>(addresses)
    .bind::<Array<Int4>, _>(ports)
    .bind::<Array<Text>, _>(names)
    .load(conn)?;
    Ok(cached
        .into_iter()
        .map(|c| ((c.address, c.port, c.server_name), c.application_id))
        .collect())
}

/// The link-key columns of `servers`, for an `UNNEST`.
fn link_columns<'a>(
    servers: impl Iterator<Item = &'a Inserted>,
) -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut columns = (Vec::new(), Vec::new(), Vec::new());
    for (address, port, name) in servers.map(Inserted::link_key) {
        columns.0.push(address);
        columns.1.push(port);
        columns.2.push(name);
    }
    columns
}

/// The servers the matcher links to an application (an ambiguous match is
/// logged and left unlinked).
fn match_links<'a>(
    conn: &mut PgConnection,
    unmatched: &[&'a Inserted],
    template: &NameTemplate,
) -> Result<Vec<(&'a Inserted, i64)>, DbError> {
    let candidates: Vec<AppCandidate> = a::table
        .left_join(ac::table)
        .select((
            a::id,
            a::name,
            a::port,
            a::instance,
            ac::ip.nullable(),
            ac::hostname.nullable(),
        ))
        .load::<(
            i64,
            String,
            Option<i32>,
            Option<String>,
            Option<String>,
            Option<String>,
        )>(conn)?
        .into_iter()
        .map(
            |(id, name, port, instance, host_ip, hostname)| AppCandidate {
                id,
                name,
                port,
                instance,
                host_ip,
                hostname,
            },
        )
        .collect();
    let matcher = Matcher::new(&candidates, template);
    let mut matched = Vec::new();
    for r in unmatched {
        match matcher.find(&r.address, r.port, &r.server_name) {
            Link::Linked { application_id, by } => {
                tracing::debug!(server = %r.server_name, application_id, by = by.as_str(), "server linked");
                matched.push((*r, application_id));
            }
            Link::Ambiguous(ids) => {
                tracing::info!(server = %r.server_name, candidates = ?ids, "server left unlinked: ambiguous");
            }
            Link::Unmatched => {}
        }
    }
    Ok(matched)
}

/// Records the matcher's links in the link cache.
fn cache_links(
    conn: &mut PgConnection,
    instance_id: i64,
    matched: &[(&Inserted, i64)],
) -> Result<(), DbError> {
    let (addresses, ports, names) = link_columns(matched.iter().map(|(r, _)| *r));
    let apps: Vec<i64> = matched.iter().map(|(_, app)| *app).collect();
    diesel::sql_query(
        "INSERT INTO haproxy_application_links (haproxy_id, address, port, server_name, application_id) \
         SELECT $1, u.* FROM UNNEST($2::text[], $3::int4[], $4::text[], $5::int8[]) AS u \
         ON CONFLICT (haproxy_id, address, port, server_name) DO NOTHING",
    )
    .bind::<BigInt, _>(instance_id)
    .bind::<Array<Text>, _>(addresses)
    .bind::<Array<Int4>, _>(ports)
    .bind::<Array<Text>, _>(names)
    .bind::<Array<Int8>, _>(apps)
    .execute(conn)?;
    Ok(())
}

#[derive(Default)]
struct NewColumns {
    backend_id: Vec<i64>,
    name: Vec<String>,
    address: Vec<String>,
    port: Vec<Option<i32>>,
    admin: Vec<AdminState>,
    op: Vec<OpState>,
    weight: Vec<i32>,
    sessions: Vec<i64>,
    check: Vec<Option<String>>,
}

#[derive(Default)]
struct UpdateColumns {
    id: Vec<i64>,
    address: Vec<String>,
    port: Vec<Option<i32>>,
    weight: Vec<i32>,
    sessions: Vec<i64>,
    check: Vec<Option<String>>,
    admin: Vec<AdminState>,
    op: Vec<OpState>,
    change: Vec<bool>,
    /// The stored state the plan's change starts from (None without one).
    prev_admin: Vec<Option<AdminState>>,
    prev_op: Vec<Option<OpState>>,
}

#[derive(Default)]
struct HistoryColumns {
    server_id: Vec<i64>,
    prev_admin: Vec<AdminState>,
    new_admin: Vec<AdminState>,
    prev_op: Vec<OpState>,
    new_op: Vec<OpState>,
}

/// A sync run row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = r)]
pub struct RunRow {
    pub id: i64,
    pub status: SyncStatus,
    pub events: serde_json::Value,
}

/// Whether [`claim_run`] created the run or found it.
pub enum RunClaim {
    New(i64),
    Existing(RunRow),
}

/// Records a sync run, or returns the one its transaction id already has.
pub fn claim_run(
    conn: &mut PgConnection,
    transaction_id: Uuid,
    instance_id: i64,
    reason: SyncReason,
    actor: &str,
    requested_at: DateTime<Utc>,
) -> Result<RunClaim, DbError> {
    let inserted: Option<i64> = diesel::insert_into(r::table)
        .values((
            r::transaction_id.eq(transaction_id),
            r::instance_id.eq(instance_id),
            r::reason.eq(reason),
            r::actor.eq(actor),
            r::requested_at.eq(requested_at),
        ))
        .on_conflict(r::transaction_id)
        .do_nothing()
        .returning(r::id)
        .get_result(conn)
        .optional()?;
    if let Some(id) = inserted {
        return Ok(RunClaim::New(id));
    }
    let row = r::table
        .filter(r::transaction_id.eq(transaction_id))
        .select(RunRow::as_select())
        .first(conn)?;
    Ok(RunClaim::Existing(row))
}

/// Finishes a run with its outcome, durably.
pub fn finish_run(
    conn: &mut PgConnection,
    run_id: i64,
    status: SyncStatus,
    error: Option<&str>,
    counts: &serde_json::Value,
    events: &serde_json::Value,
) -> Result<(), DbError> {
    conn.transaction(|conn| {
        super::durable(conn)?;
        diesel::update(r::table.find(run_id))
            .set((
                r::status.eq(status),
                r::error.eq(error),
                r::counts.eq(counts),
                r::events.eq(events),
                r::finished_at.eq(diesel::dsl::now),
            ))
            .execute(conn)?;
        Ok(())
    })
}

/// Records a failed sync on the instance.
pub fn record_failure(
    conn: &mut PgConnection,
    instance_id: i64,
    error: &str,
) -> Result<(), DbError> {
    diesel::update(i::table.find(instance_id))
        .set((
            i::last_sync_at.eq(diesel::dsl::now),
            i::last_sync_result.eq(SyncStatus::Failed),
            i::last_sync_error.eq(error),
            i::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)?;
    Ok(())
}
