//! The sync's database side: load an instance's inventory in one query,
//! apply a reconcile plan in one transaction of a handful of bulk
//! statements (arrays, so no bind-parameter limit), and the sync runs that
//! dedupe sync commands.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{
    Array, BigInt, Bool, Int4, Int8, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use uuid::Uuid;

use super::DbError;
use crate::domain::action::server_lock_key;
use crate::domain::event::StatePair;
use crate::domain::mapping::{AppCandidate, Link, Matcher};
use crate::domain::reconcile::{BackendRef, Plan, StoredBackend, StoredServer};
use crate::domain::{AdminState, OpState};

#[derive(QueryableByName)]
struct InventoryRow {
    #[diesel(sql_type = BigInt)]
    backend_id: i64,
    #[diesel(sql_type = Text)]
    backend_name: String,
    #[diesel(sql_type = Bool)]
    backend_removed: bool,
    #[diesel(sql_type = Nullable<BigInt>)]
    id: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    server_name: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    address: Option<String>,
    #[diesel(sql_type = Nullable<Int4>)]
    port: Option<i32>,
    #[diesel(sql_type = Nullable<Text>)]
    admin_state: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    op_state: Option<String>,
    #[diesel(sql_type = Nullable<Int4>)]
    weight: Option<i32>,
    #[diesel(sql_type = Nullable<BigInt>)]
    current_sessions: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    check_status: Option<String>,
    #[diesel(sql_type = Nullable<Bool>)]
    server_removed: Option<bool>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    state_written_at: Option<DateTime<Utc>>,
}

/// Every backend and server row of an instance (live and removed), in one query.
pub fn load(
    conn: &mut PgConnection,
    instance_id: i64,
) -> Result<(Vec<StoredBackend>, Vec<StoredServer>), DbError> {
    let rows: Vec<InventoryRow> = diesel::sql_query(
        "SELECT b.id AS backend_id, b.backend_name, b.removed_at IS NOT NULL AS backend_removed, \
                s.id, s.server_name, s.address, s.port, s.admin_state, s.op_state, s.weight, \
                s.current_sessions, s.check_status, s.removed_at IS NOT NULL AS server_removed, s.state_written_at \
         FROM haproxy_backends b LEFT JOIN haproxy_servers s ON s.backend_id = b.id \
         WHERE b.haproxy_id = $1",
    )
    .bind::<BigInt, _>(instance_id)
    .load(conn)?;
    let mut backends: HashMap<i64, StoredBackend> = HashMap::new();
    let mut servers = Vec::with_capacity(rows.len());
    for r in rows {
        backends
            .entry(r.backend_id)
            .or_insert_with(|| StoredBackend {
                id: r.backend_id,
                name: r.backend_name.clone(),
                removed: r.backend_removed,
            });
        let (Some(id), Some(name)) = (r.id, r.server_name) else {
            continue;
        };
        servers.push(StoredServer {
            id,
            backend_id: r.backend_id,
            name,
            address: r.address.unwrap_or_default(),
            port: r.port,
            admin_state: r
                .admin_state
                .and_then(|s| s.parse().ok())
                .unwrap_or(AdminState::Ready),
            op_state: r
                .op_state
                .and_then(|s| s.parse().ok())
                .unwrap_or(OpState::Down),
            weight: r.weight.unwrap_or_default(),
            current_sessions: r.current_sessions.unwrap_or_default(),
            check_status: r.check_status,
            removed: r.server_removed.unwrap_or(false),
            state_written_at: r.state_written_at,
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

#[derive(QueryableByName)]
struct IdName {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct ServerOut {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = BigInt)]
    backend_id: i64,
    #[diesel(sql_type = Text)]
    server_name: String,
    #[diesel(sql_type = Text)]
    address: String,
    #[diesel(sql_type = Nullable<Int4>)]
    port: Option<i32>,
    #[diesel(sql_type = Text)]
    admin_state: String,
    #[diesel(sql_type = Text)]
    op_state: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    application_id: Option<i64>,
}

#[derive(QueryableByName)]
struct Applies {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Bool)]
    state_applied: bool,
}

#[derive(QueryableByName)]
struct AppRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Nullable<Int4>)]
    port: Option<i32>,
    #[diesel(sql_type = Nullable<Text>)]
    instance: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    ip: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    hostname: Option<String>,
}

#[derive(QueryableByName)]
struct CachedLink {
    #[diesel(sql_type = Text)]
    address: String,
    #[diesel(sql_type = Int4)]
    port: i32,
    #[diesel(sql_type = Text)]
    server_name: String,
    #[diesel(sql_type = BigInt)]
    application_id: i64,
}

fn pair(admin: &str, op: &str) -> StatePair {
    StatePair {
        admin_state: admin.parse().unwrap_or(AdminState::Ready),
        op_state: op.parse().unwrap_or(OpState::Down),
    }
}

/// Applies `plan` in one transaction. State columns are written only where
/// no action wrote after `fetched_at` (checked by the UPDATE itself, so an
/// action committing meanwhile still wins); history rows (source `sync`,
/// actor `actor`) are written for the state changes that were applied.
/// New servers are linked to applications: first from the link cache, then
/// by `matcher`. The instance's last sync is recorded.
pub fn apply(
    conn: &mut PgConnection,
    instance_id: i64,
    fetched_at: DateTime<Utc>,
    plan: &Plan,
    actor: &str,
    template: &crate::domain::mapping::NameTemplate,
) -> Result<Applied, DbError> {
    conn.transaction(|conn| {
        super::durable(conn)?;
        let mut applied = Applied::default();
        let mut backend_names: HashMap<i64, String> = HashMap::new();

        // Backends: new, back, gone.
        let created: Vec<IdName> = diesel::sql_query(
            "INSERT INTO haproxy_backends (haproxy_id, backend_name, last_seen_at) \
             SELECT $1, n, $3 FROM UNNEST($2::text[]) AS n \
             ON CONFLICT (haproxy_id, backend_name) DO UPDATE SET removed_at = NULL, last_seen_at = EXCLUDED.last_seen_at \
             RETURNING id, backend_name AS name",
        )
        .bind::<BigInt, _>(instance_id)
        .bind::<Array<Text>, _>(&plan.new_backends)
        .bind::<Timestamptz, _>(fetched_at)
        .load(conn)?;
        let new_backend_ids: HashMap<String, i64> = created.into_iter().map(|r| (r.name, r.id)).collect();
        diesel::sql_query("UPDATE haproxy_backends SET removed_at = NULL, last_seen_at = $2 WHERE id = ANY($1)")
            .bind::<Array<Int8>, _>(&plan.revived_backends)
            .bind::<Timestamptz, _>(fetched_at)
            .execute(conn)?;
        diesel::sql_query("UPDATE haproxy_backends SET removed_at = now() WHERE id = ANY($1) AND removed_at IS NULL")
            .bind::<Array<Int8>, _>(&plan.removed_backends)
            .execute(conn)?;
        let names: Vec<IdName> = diesel::sql_query("SELECT id, backend_name AS name FROM haproxy_backends WHERE haproxy_id = $1")
            .bind::<BigInt, _>(instance_id)
            .load(conn)?;
        for r in names {
            backend_names.insert(r.id, r.name);
        }

        // New servers.
        let mut cols = NewColumns::default();
        for n in &plan.new_servers {
            let backend_id = match &n.backend {
                BackendRef::Existing(id) => Some(*id),
                BackendRef::New(name) => new_backend_ids.get(name).copied(),
            };
            let Some(backend_id) = backend_id else { continue };
            cols.backend_id.push(backend_id);
            cols.name.push(n.server.name.clone());
            cols.address.push(n.server.address.clone());
            cols.port.push(n.server.port.map(i32::from));
            cols.admin.push(n.server.admin_state.as_str().to_owned());
            cols.op.push(n.server.op_state.as_str().to_owned());
            cols.weight.push(i32::try_from(n.server.weight).unwrap_or(i32::MAX));
            cols.sessions.push(i64::try_from(n.server.current_sessions).unwrap_or(i64::MAX));
            cols.check.push(n.server.check_status.clone());
        }
        let inserted: Vec<ServerOut> = diesel::sql_query(
            "INSERT INTO haproxy_servers (backend_id, server_name, address, port, admin_state, op_state, \
                 weight, current_sessions, check_status, last_seen_at, state_written_at, state_changed_at) \
             SELECT u.*, $10, $10, $10 FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::int4[], $5::text[], \
                 $6::text[], $7::int4[], $8::int8[], $9::text[]) AS u \
             ON CONFLICT (backend_id, server_name) DO NOTHING \
             RETURNING id, backend_id, server_name, address, port, admin_state, op_state, application_id",
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
        .load(conn)?;

        // Servers that are gone.
        let gone: Vec<ServerOut> = diesel::sql_query(
            "UPDATE haproxy_servers SET removed_at = now() WHERE id = ANY($1) AND removed_at IS NULL \
             RETURNING id, backend_id, server_name, address, port, admin_state, op_state, application_id",
        )
        .bind::<Array<Int8>, _>(&plan.removed_servers)
        .load(conn)?;

        // Updates, revived rows included. A state change is applied only to
        // a server no action is working on (see `busy_servers`), and only if
        // the stored state is still the one the plan was made from: an
        // action that committed since then already recorded the change.
        let busy = busy_servers(conn, plan)?;
        let mut u = UpdateColumns::default();
        for up in &plan.updates {
            u.id.push(up.id);
            u.address.push(up.address.clone());
            u.port.push(up.port);
            u.weight.push(up.weight);
            u.sessions.push(up.current_sessions);
            u.check.push(up.check_status.clone());
            u.admin.push(up.admin_state.as_str().to_owned());
            u.op.push(up.op_state.as_str().to_owned());
            let (prev_admin, prev_op) = up.state_change.map_or((None, None), |(prev, _)| {
                (Some(prev.admin_state.as_str().to_owned()), Some(prev.op_state.as_str().to_owned()))
            });
            u.prev_admin.push(prev_admin);
            u.prev_op.push(prev_op);
            u.change.push(up.state_change.is_some() && !busy.contains(&up.id));
        }
        let updated: Vec<Applies> = diesel::sql_query(
            "UPDATE haproxy_servers s SET \
               address = u.address, port = u.port, weight = u.weight, current_sessions = u.sessions, \
               check_status = u.chk, removed_at = NULL, last_seen_at = $10, \
               admin_state = CASE WHEN u.change AND (s.state_written_at IS NULL OR s.state_written_at <= $10) AND s.admin_state = u.prev_admin AND s.op_state = u.prev_op THEN u.admin ELSE s.admin_state END, \
               op_state = CASE WHEN u.change AND (s.state_written_at IS NULL OR s.state_written_at <= $10) AND s.admin_state = u.prev_admin AND s.op_state = u.prev_op THEN u.op ELSE s.op_state END, \
               state_changed_at = CASE WHEN u.change AND (s.state_written_at IS NULL OR s.state_written_at <= $10) AND s.admin_state = u.prev_admin AND s.op_state = u.prev_op THEN now() ELSE s.state_changed_at END, \
               state_written_at = CASE WHEN u.change AND (s.state_written_at IS NULL OR s.state_written_at <= $10) AND s.admin_state = u.prev_admin AND s.op_state = u.prev_op THEN $10 ELSE s.state_written_at END \
             FROM UNNEST($1::int8[], $2::text[], $3::int4[], $4::int4[], $5::int8[], $6::text[], $7::text[], $8::text[], $9::bool[], $11::text[], $12::text[]) \
                  AS u(id, address, port, weight, sessions, chk, admin, op, change, prev_admin, prev_op) \
             WHERE s.id = u.id \
             RETURNING s.id, (u.change AND s.state_written_at = $10) AS state_applied",
        )
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
        applied.updated = updated.len();
        let state_applied: std::collections::HashSet<i64> =
            updated.iter().filter(|r| r.state_applied).map(|r| r.id).collect();

        // Link new servers to applications.
        let links = link_new_servers(conn, instance_id, &inserted, template)?;
        applied.linked = links.len();

        // History for the applied state changes.
        let mut h = HistoryColumns::default();
        for up in plan.updates.iter().filter(|x| state_applied.contains(&x.id)) {
            if let Some((prev, cur)) = up.state_change {
                h.server_id.push(up.id);
                h.prev_admin.push(prev.admin_state.as_str().to_owned());
                h.new_admin.push(cur.admin_state.as_str().to_owned());
                h.prev_op.push(prev.op_state.as_str().to_owned());
                h.new_op.push(cur.op_state.as_str().to_owned());
            }
        }
        diesel::sql_query(
            "INSERT INTO haproxy_server_status_history (server_id, previous_admin_state, new_admin_state, \
                 previous_op_state, new_op_state, source, actor, changed_at) \
             SELECT u.*, 'sync', $6, now() FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[]) AS u",
        )
        .bind::<Array<Int8>, _>(&h.server_id)
        .bind::<Array<Text>, _>(&h.prev_admin)
        .bind::<Array<Text>, _>(&h.new_admin)
        .bind::<Array<Text>, _>(&h.prev_op)
        .bind::<Array<Text>, _>(&h.new_op)
        .bind::<Text, _>(actor)
        .execute(conn)?;

        diesel::sql_query(
            "UPDATE haproxy_instances SET last_sync_at = now(), last_sync_result = 'success', last_sync_error = NULL, \
             updated_at = now() WHERE id = $1",
        )
        .bind::<BigInt, _>(instance_id)
        .execute(conn)?;

        // Findings for events.
        let finding = |r: &ServerOut, previous: Option<StatePair>| Finding {
            server_id: r.id,
            server_name: r.server_name.clone(),
            backend_id: r.backend_id,
            backend_name: backend_names.get(&r.backend_id).cloned().unwrap_or_default(),
            address: r.address.clone(),
            port: r.port,
            application_id: links.get(&r.id).copied().or(r.application_id),
            previous,
            current: pair(&r.admin_state, &r.op_state),
        };
        applied.discovered = inserted.iter().map(|r| finding(r, None)).collect();
        applied.removed = gone.iter().map(|r| finding(r, None)).collect();
        let touched: Vec<i64> = plan
            .updates
            .iter()
            .filter(|x| x.revived || state_applied.contains(&x.id))
            .map(|x| x.id)
            .collect();
        if !touched.is_empty() {
            let rows: Vec<ServerOut> = diesel::sql_query(
                "SELECT id, backend_id, server_name, address, port, admin_state, op_state, application_id \
                 FROM haproxy_servers WHERE id = ANY($1)",
            )
            .bind::<Array<Int8>, _>(&touched)
            .load(conn)?;
            let by_id: HashMap<i64, &ServerOut> = rows.iter().map(|r| (r.id, r)).collect();
            for up in plan.updates.iter().filter(|x| x.revived || state_applied.contains(&x.id)) {
                let Some(row) = by_id.get(&up.id) else { continue };
                if up.revived {
                    applied.discovered.push(finding(row, None));
                }
                if state_applied.contains(&up.id)
                    && let Some((prev, _)) = up.state_change
                {
                    applied.changed.push(finding(row, Some(prev)));
                }
            }
        }
        Ok(applied)
    })
}

#[derive(QueryableByName)]
struct Busy {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// The servers with a planned state change that an action is working on:
/// their lock (rule 3) is held, so the change the snapshot shows may be that
/// action's, applied at HAProxy and not committed yet. Their state is left
/// to the action (the next sync sees the outcome). Every other server with a
/// planned change is locked until this transaction ends, so no action can
/// start on it meanwhile; an action that held it before has committed.
fn busy_servers(
    conn: &mut PgConnection,
    plan: &Plan,
) -> Result<std::collections::HashSet<i64>, DbError> {
    let (ids, keys): (Vec<i64>, Vec<i64>) = plan
        .updates
        .iter()
        .filter(|up| up.state_change.is_some())
        .map(|up| (up.id, server_lock_key(up.id)))
        .unzip();
    if ids.is_empty() {
        return Ok(std::collections::HashSet::new());
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
/// matcher. Returns server id → application id for those linked.
fn link_new_servers(
    conn: &mut PgConnection,
    instance_id: i64,
    inserted: &[ServerOut],
    template: &crate::domain::mapping::NameTemplate,
) -> Result<HashMap<i64, i64>, DbError> {
    let mut links: HashMap<i64, i64> = HashMap::new();
    if inserted.is_empty() {
        return Ok(links);
    }
    let cached: Vec<CachedLink> = diesel::sql_query(
        "SELECT l.address, l.port, l.server_name, l.application_id FROM haproxy_application_links l \
         JOIN UNNEST($2::text[], $3::int4[], $4::text[]) AS u(address, port, server_name) \
           ON l.address = u.address AND l.port = u.port AND l.server_name = u.server_name \
         WHERE l.haproxy_id = $1",
    )
    .bind::<BigInt, _>(instance_id)
    .bind::<Array<Text>, _>(inserted.iter().map(|r| r.address.clone()).collect::<Vec<_>>())
    .bind::<Array<Int4>, _>(inserted.iter().map(|r| r.port.unwrap_or(0)).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(inserted.iter().map(|r| r.server_name.clone()).collect::<Vec<_>>())
    .load(conn)?;
    let cache: HashMap<(String, i32, String), i64> = cached
        .into_iter()
        .map(|c| ((c.address, c.port, c.server_name), c.application_id))
        .collect();
    let mut unmatched = Vec::new();
    for r in inserted {
        match cache.get(&(
            r.address.clone(),
            r.port.unwrap_or(0),
            r.server_name.clone(),
        )) {
            Some(app) => {
                links.insert(r.id, *app);
            }
            None => unmatched.push(r),
        }
    }
    if !unmatched.is_empty() {
        let apps: Vec<AppRow> = diesel::sql_query(
            "SELECT a.id, a.name, a.port, a.instance, s.ip, s.hostname \
             FROM applications a LEFT JOIN servers s ON s.id = a.server_id",
        )
        .load(conn)?;
        let candidates: Vec<AppCandidate> = apps
            .into_iter()
            .map(|a| AppCandidate {
                id: a.id,
                name: a.name,
                port: a.port,
                instance: a.instance,
                host_ip: a.ip,
                hostname: a.hostname,
            })
            .collect();
        let matcher = Matcher::new(&candidates, template);
        let mut new_links = LinkColumns::default();
        for r in unmatched {
            match matcher.find(&r.address, r.port, &r.server_name) {
                Link::Linked { application_id, by } => {
                    tracing::debug!(server = %r.server_name, application_id, by = by.as_str(), "server linked");
                    links.insert(r.id, application_id);
                    new_links.address.push(r.address.clone());
                    new_links.port.push(r.port.unwrap_or(0));
                    new_links.name.push(r.server_name.clone());
                    new_links.app.push(application_id);
                }
                Link::Ambiguous(ids) => {
                    tracing::info!(server = %r.server_name, candidates = ?ids, "server left unlinked: ambiguous");
                }
                Link::Unmatched => {}
            }
        }
        diesel::sql_query(
            "INSERT INTO haproxy_application_links (haproxy_id, address, port, server_name, application_id) \
             SELECT $1, u.* FROM UNNEST($2::text[], $3::int4[], $4::text[], $5::int8[]) AS u \
             ON CONFLICT (haproxy_id, address, port, server_name) DO NOTHING",
        )
        .bind::<BigInt, _>(instance_id)
        .bind::<Array<Text>, _>(&new_links.address)
        .bind::<Array<Int4>, _>(&new_links.port)
        .bind::<Array<Text>, _>(&new_links.name)
        .bind::<Array<Int8>, _>(&new_links.app)
        .execute(conn)?;
    }
    let (ids, apps): (Vec<i64>, Vec<i64>) = links.iter().map(|(s, a)| (*s, *a)).unzip();
    diesel::sql_query(
        "UPDATE haproxy_servers s SET application_id = u.app FROM UNNEST($1::int8[], $2::int8[]) AS u(id, app) WHERE s.id = u.id",
    )
    .bind::<Array<Int8>, _>(&ids)
    .bind::<Array<Int8>, _>(&apps)
    .execute(conn)?;
    Ok(links)
}

#[derive(Default)]
struct NewColumns {
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

#[derive(Default)]
struct UpdateColumns {
    id: Vec<i64>,
    address: Vec<String>,
    port: Vec<Option<i32>>,
    weight: Vec<i32>,
    sessions: Vec<i64>,
    check: Vec<Option<String>>,
    admin: Vec<String>,
    op: Vec<String>,
    change: Vec<bool>,
    /// The stored state the plan's change starts from (None without one).
    prev_admin: Vec<Option<String>>,
    prev_op: Vec<Option<String>>,
}

#[derive(Default)]
struct HistoryColumns {
    server_id: Vec<i64>,
    prev_admin: Vec<String>,
    new_admin: Vec<String>,
    prev_op: Vec<String>,
    new_op: Vec<String>,
}

#[derive(Default)]
struct LinkColumns {
    address: Vec<String>,
    port: Vec<i32>,
    name: Vec<String>,
    app: Vec<i64>,
}

/// A sync run row.
#[derive(Debug, Clone, QueryableByName)]
pub struct RunRow {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub status: String,
    #[diesel(sql_type = Jsonb)]
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
    reason: &str,
    actor: &str,
    requested_at: DateTime<Utc>,
) -> Result<RunClaim, DbError> {
    let inserted: Option<RunRow> = diesel::sql_query(
        "INSERT INTO haproxy_sync_runs (transaction_id, instance_id, reason, actor, requested_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (transaction_id) DO NOTHING RETURNING id, status, events",
    )
    .bind::<SqlUuid, _>(transaction_id)
    .bind::<BigInt, _>(instance_id)
    .bind::<Text, _>(reason)
    .bind::<Text, _>(actor)
    .bind::<Timestamptz, _>(requested_at)
    .get_result(conn)
    .optional()?;
    if let Some(row) = inserted {
        return Ok(RunClaim::New(row.id));
    }
    let row: RunRow = diesel::sql_query(
        "SELECT id, status, events FROM haproxy_sync_runs WHERE transaction_id = $1",
    )
    .bind::<SqlUuid, _>(transaction_id)
    .get_result(conn)?;
    Ok(RunClaim::Existing(row))
}

/// Finishes a run with its outcome.
pub fn finish_run(
    conn: &mut PgConnection,
    run_id: i64,
    status: &str,
    error: Option<&str>,
    counts: &serde_json::Value,
    events: &serde_json::Value,
) -> Result<(), DbError> {
    conn.transaction(|conn| {
        super::durable(conn)?;
        finish_run_in(conn, run_id, status, error, counts, events)
    })
}

fn finish_run_in(
    conn: &mut PgConnection,
    run_id: i64,
    status: &str,
    error: Option<&str>,
    counts: &serde_json::Value,
    events: &serde_json::Value,
) -> Result<(), DbError> {
    diesel::sql_query(
        "UPDATE haproxy_sync_runs SET status = $2, error = $3, counts = $4, events = $5, finished_at = now() WHERE id = $1",
    )
    .bind::<BigInt, _>(run_id)
    .bind::<Text, _>(status)
    .bind::<Nullable<Text>, _>(error)
    .bind::<Jsonb, _>(counts)
    .bind::<Jsonb, _>(events)
    .execute(conn)?;
    Ok(())
}

/// Records a failed sync on the instance.
pub fn record_failure(
    conn: &mut PgConnection,
    instance_id: i64,
    error: &str,
) -> Result<(), DbError> {
    diesel::sql_query(
        "UPDATE haproxy_instances SET last_sync_at = now(), last_sync_result = 'failed', last_sync_error = $2, \
         updated_at = now() WHERE id = $1",
    )
    .bind::<BigInt, _>(instance_id)
    .bind::<Text, _>(error)
    .execute(conn)?;
    Ok(())
}
