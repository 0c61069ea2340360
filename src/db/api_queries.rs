//! Queries of the HTTP API: keyset-paginated listings, settings and the
//! aggregates `/metrics` reads. Every listing walks an index in order and
//! stops after `limit + 1` rows (never OFFSET, never a whole table).
//!
//! Raw SQL where the DSL cannot say it: optional filters written as
//! `($n IS NULL OR …)` so each listing is one prepared statement, row-value
//! keyset comparisons, `LATERAL` and the histogram's CTE.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Int4, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use uuid::Uuid;

use super::DbError;
use super::instances::InstanceRow;
use super::schema::{haproxy_instances as i, servers as ac};
use crate::domain::{AdminState, HistorySource, OpState};

/// A live backend of an instance with its live server counts.
#[derive(Debug, Clone, QueryableByName)]
pub struct BackendListRow {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub backend_name: String,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub last_seen_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = BigInt)]
    pub servers: i64,
    #[diesel(sql_type = BigInt)]
    pub ready: i64,
    #[diesel(sql_type = BigInt)]
    pub drain: i64,
    #[diesel(sql_type = BigInt)]
    pub maint: i64,
    #[diesel(sql_type = BigInt)]
    pub up: i64,
    #[diesel(sql_type = BigInt)]
    pub down: i64,
}

/// Live backends of `instance_id` whose name sorts after `after_name`, by
/// name (the unique index on `(haproxy_id, backend_name)`), with counts of
/// their live servers.
pub fn backends_page(
    conn: &mut PgConnection,
    instance_id: i64,
    after_name: &str,
    limit: i64,
) -> Result<Vec<BackendListRow>, DbError> {
    Ok(diesel::sql_query(
        "SELECT b.id, b.backend_name, b.created_at, b.last_seen_at, \
                c.servers, c.ready, c.drain, c.maint, c.up, c.down \
         FROM (SELECT id, backend_name, created_at, last_seen_at FROM haproxy_backends \
               WHERE haproxy_id = $1 AND removed_at IS NULL AND backend_name > $2 \
               ORDER BY backend_name LIMIT $3) b \
         CROSS JOIN LATERAL ( \
           SELECT count(*) AS servers, \
                  count(*) FILTER (WHERE admin_state = 'ready') AS ready, \
                  count(*) FILTER (WHERE admin_state = 'drain') AS drain, \
                  count(*) FILTER (WHERE admin_state = 'maint') AS maint, \
                  count(*) FILTER (WHERE op_state = 'up') AS up, \
                  count(*) FILTER (WHERE op_state = 'down') AS down \
           FROM haproxy_servers s WHERE s.backend_id = b.id AND s.removed_at IS NULL) c \
         ORDER BY b.backend_name",
    )
    .bind::<BigInt, _>(instance_id)
    .bind::<Text, _>(after_name)
    .bind::<BigInt, _>(limit)
    .load(conn)?)
}

/// A backend with its instance, for the servers listing.
#[derive(Debug, Clone, QueryableByName)]
pub struct BackendRef {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub backend_name: String,
    #[diesel(sql_type = BigInt)]
    pub instance_id: i64,
    #[diesel(sql_type = Text)]
    pub instance_name: String,
}

pub fn backend(conn: &mut PgConnection, id: i64) -> Result<Option<BackendRef>, DbError> {
    Ok(diesel::sql_query(
        "SELECT b.id, b.backend_name, i.id AS instance_id, i.name AS instance_name \
         FROM haproxy_backends b JOIN haproxy_instances i ON i.id = b.haproxy_id WHERE b.id = $1",
    )
    .bind::<BigInt, _>(id)
    .get_result(conn)
    .optional()?)
}

/// Filters of the servers listing; `None` means any.
#[derive(Debug, Clone, Default)]
pub struct ServerFilter {
    pub admin_state: Option<AdminState>,
    pub op_state: Option<OpState>,
    pub application_id: Option<i64>,
    /// `Some(false)`: only servers linked to no application.
    pub linked: Option<bool>,
    /// Only servers whose name or address contains this text (any case).
    pub search: Option<String>,
}

/// A live server of a backend with its application.
#[derive(Debug, Clone, QueryableByName)]
pub struct ServerListRow {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub server_name: String,
    #[diesel(sql_type = Text)]
    pub address: String,
    #[diesel(sql_type = Nullable<Int4>)]
    pub port: Option<i32>,
    #[diesel(sql_type = Text)]
    pub admin_state: AdminState,
    #[diesel(sql_type = Text)]
    pub op_state: OpState,
    #[diesel(sql_type = Int4)]
    pub weight: i32,
    #[diesel(sql_type = BigInt)]
    pub current_sessions: i64,
    #[diesel(sql_type = Nullable<Text>)]
    pub check_status: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub application_id: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    pub application_name: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub last_seen_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub state_changed_at: Option<DateTime<Utc>>,
}

/// Live servers of `backend_id` with an id above `after_id`, by id (the
/// index on `(backend_id, id)`).
pub fn servers_page(
    conn: &mut PgConnection,
    backend_id: i64,
    filter: &ServerFilter,
    after_id: i64,
    limit: i64,
) -> Result<Vec<ServerListRow>, DbError> {
    Ok(diesel::sql_query(
        "SELECT s.id, s.server_name, s.address, s.port, s.admin_state, s.op_state, s.weight, \
                s.current_sessions, s.check_status, s.application_id, a.name AS application_name, \
                s.last_seen_at, s.state_changed_at \
         FROM haproxy_servers s LEFT JOIN applications a ON a.id = s.application_id \
         WHERE s.backend_id = $1 AND s.removed_at IS NULL AND s.id > $2 \
           AND ($3::text IS NULL OR s.admin_state = $3) \
           AND ($4::text IS NULL OR s.op_state = $4) \
           AND ($5::bigint IS NULL OR s.application_id = $5) \
           AND ($6::boolean IS NULL OR (s.application_id IS NOT NULL) = $6) \
           AND ($8::text IS NULL OR strpos(lower(s.server_name), lower($8)) > 0 \
                OR strpos(lower(s.address), lower($8)) > 0) \
         ORDER BY s.id LIMIT $7",
    )
    .bind::<BigInt, _>(backend_id)
    .bind::<BigInt, _>(after_id)
    .bind::<Nullable<Text>, _>(filter.admin_state)
    .bind::<Nullable<Text>, _>(filter.op_state)
    .bind::<Nullable<BigInt>, _>(filter.application_id)
    .bind::<Nullable<Bool>, _>(filter.linked)
    .bind::<BigInt, _>(limit)
    .bind::<Nullable<Text>, _>(filter.search.as_deref())
    .load(conn)?)
}

/// Whether a server row exists (live or removed: its history stays readable).
pub fn server_exists(conn: &mut PgConnection, id: i64) -> Result<bool, DbError> {
    use super::schema::haproxy_servers as s;
    Ok(diesel::select(diesel::dsl::exists(s::table.find(id))).get_result(conn)?)
}

/// One history row with the transaction id of the action that wrote it.
#[derive(Debug, Clone, QueryableByName)]
pub struct HistoryListRow {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Nullable<Text>)]
    pub previous_admin_state: Option<AdminState>,
    #[diesel(sql_type = Text)]
    pub new_admin_state: AdminState,
    #[diesel(sql_type = Nullable<Text>)]
    pub previous_op_state: Option<OpState>,
    #[diesel(sql_type = Text)]
    pub new_op_state: OpState,
    #[diesel(sql_type = Text)]
    pub source: HistorySource,
    #[diesel(sql_type = Text)]
    pub actor: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub action_id: Option<i64>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub transaction_id: Option<Uuid>,
    /// The reason of the action that made the change.
    #[diesel(sql_type = Nullable<Text>)]
    pub reason: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    pub changed_at: DateTime<Utc>,
}

/// Filters and position of a history page.
#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    /// The last row of the previous page: `(changed_at, id)`.
    pub before: Option<(DateTime<Utc>, i64)>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: i64,
}

/// A server's history, newest first (the index on
/// `(server_id, changed_at DESC, id DESC)`).
pub fn history_page(
    conn: &mut PgConnection,
    server_id: i64,
    page: &HistoryPage,
) -> Result<Vec<HistoryListRow>, DbError> {
    let (before_at, before_id) = page.before.map_or((None, 0), |(t, id)| (Some(t), id));
    Ok(diesel::sql_query(
        "SELECT h.id, h.previous_admin_state, h.new_admin_state, h.previous_op_state, \
                h.new_op_state, h.source, h.actor, h.action_id, a.transaction_id, a.reason, h.changed_at \
         FROM haproxy_server_status_history h LEFT JOIN haproxy_actions a ON a.id = h.action_id \
         WHERE h.server_id = $1 \
           AND ($2::timestamptz IS NULL OR (h.changed_at, h.id) < ($2, $3)) \
           AND ($4::timestamptz IS NULL OR h.changed_at >= $4) \
           AND ($5::timestamptz IS NULL OR h.changed_at <= $5) \
         ORDER BY h.changed_at DESC, h.id DESC LIMIT $6",
    )
    .bind::<BigInt, _>(server_id)
    .bind::<Nullable<Timestamptz>, _>(before_at)
    .bind::<BigInt, _>(before_id)
    .bind::<Nullable<Timestamptz>, _>(page.since)
    .bind::<Nullable<Timestamptz>, _>(page.until)
    .bind::<BigInt, _>(page.limit)
    .load(conn)?)
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// How many actions of a batch have been recorded (by the index on
/// `(batch_id, status)`).
pub fn batch_recorded(conn: &mut PgConnection, batch_id: i64) -> Result<i64, DbError> {
    Ok(
        diesel::sql_query("SELECT count(*) AS n FROM haproxy_actions WHERE batch_id = $1")
            .bind::<BigInt, _>(batch_id)
            .get_result::<Count>(conn)?
            .n,
    )
}

/// What `PUT /api/servers/{id}/haproxy` asks for.
#[derive(Debug, Clone)]
pub struct InstanceSettings {
    pub is_haproxy_node: bool,
    /// Required when the server is (made) an HAProxy node.
    pub name: Option<String>,
    pub fagent_url: Option<String>,
    /// The reference to store (`token:…`, `env:…`, `file:…`); `None` keeps
    /// the one stored.
    pub fagent_token_ref: Option<String>,
    pub is_active: Option<bool>,
    /// `None` keeps the stored value (false for a new instance).
    pub restore_after_reload: Option<bool>,
}

/// The result of [`put_instance_settings`].
#[derive(Debug)]
pub enum SettingsOutcome {
    /// No such AC server.
    NoServer,
    /// Another server's instance has that name.
    NameTaken,
    /// A field needed to create the instance is missing; its name.
    Missing(&'static str),
    /// `fagent_url` would change without a new `fagent_token`: the stored
    /// token (possibly a reference set on the host) would be sent to the
    /// new address.
    UrlWithoutToken,
    Saved {
        instance: Option<Box<InstanceRow>>,
        created: bool,
    },
}

/// Marks the AC server as an HAProxy node (or not) and creates or updates
/// its instance, in one transaction with the server row locked. An
/// instance registered without a server (e.g. by `instance add`) and
/// carrying the requested name is adopted. A server that stops being a
/// node keeps its instance, made inactive.
pub fn put_instance_settings(
    conn: &mut PgConnection,
    server_id: i64,
    s: &InstanceSettings,
) -> Result<SettingsOutcome, DbError> {
    use diesel::result::{DatabaseErrorKind, Error as Q};
    // A concurrent request that took the name (or made this server's
    // instance) first makes the insert fail on a unique index.
    match save_settings(conn, server_id, s) {
        Err(DbError::Query(Q::DatabaseError(DatabaseErrorKind::UniqueViolation, _))) => {
            Ok(SettingsOutcome::NameTaken)
        }
        other => other,
    }
}

/// A server that stops being a node keeps its instance, made inactive.
fn deactivate(
    conn: &mut PgConnection,
    mine: Option<InstanceRow>,
) -> Result<SettingsOutcome, DbError> {
    let instance = match mine {
        Some(row) => Some(Box::new(
            diesel::update(i::table.find(row.id))
                .set((i::is_active.eq(false), i::updated_at.eq(diesel::dsl::now)))
                .returning(InstanceRow::as_returning())
                .get_result(conn)?,
        )),
        None => None,
    };
    Ok(SettingsOutcome::Saved {
        instance,
        created: false,
    })
}

/// Updates the server's (or the adopted) instance; a setting not given
/// keeps the stored value.
fn update_instance(
    conn: &mut PgConnection,
    server_id: i64,
    row: &InstanceRow,
    name: &str,
    s: &InstanceSettings,
) -> Result<SettingsOutcome, DbError> {
    let new_url = s.fagent_url.as_deref().is_some_and(|u| u != row.fagent_url);
    if new_url && s.fagent_token_ref.is_none() {
        return Ok(SettingsOutcome::UrlWithoutToken);
    }
    let updated = diesel::update(i::table.find(row.id))
        .set((
            i::server_id.eq(Some(server_id)),
            i::name.eq(name),
            i::fagent_url.eq(s.fagent_url.as_deref().unwrap_or(&row.fagent_url)),
            i::fagent_token_ref.eq(s
                .fagent_token_ref
                .as_deref()
                .unwrap_or(&row.fagent_token_ref)),
            i::is_active.eq(s.is_active.unwrap_or(row.is_active)),
            i::restore_after_reload.eq(s.restore_after_reload.unwrap_or(row.restore_after_reload)),
            i::updated_at.eq(diesel::dsl::now),
        ))
        .returning(InstanceRow::as_returning())
        .get_result(conn)?;
    Ok(SettingsOutcome::Saved {
        instance: Some(Box::new(updated)),
        created: false,
    })
}

fn save_settings(
    conn: &mut PgConnection,
    server_id: i64,
    s: &InstanceSettings,
) -> Result<SettingsOutcome, DbError> {
    conn.transaction(|conn| {
        let server: Option<i64> = ac::table
            .find(server_id)
            .select(ac::id)
            .for_update()
            .first(conn)
            .optional()?;
        if server.is_none() {
            return Ok(SettingsOutcome::NoServer);
        }
        diesel::update(ac::table.find(server_id))
            .set(ac::is_haproxy_node.eq(s.is_haproxy_node))
            .execute(conn)?;
        let mine: Option<InstanceRow> = i::table
            .filter(i::server_id.eq(server_id))
            .select(InstanceRow::as_select())
            .for_update()
            .first(conn)
            .optional()?;
        if !s.is_haproxy_node {
            return deactivate(conn, mine);
        }
        let Some(name) = s.name.clone() else {
            return Ok(SettingsOutcome::Missing("name"));
        };
        let named: Option<InstanceRow> = i::table
            .filter(i::name.eq(&name))
            .select(InstanceRow::as_select())
            .for_update()
            .first(conn)
            .optional()?;
        let existing = match (mine, named) {
            (Some(m), Some(n)) if m.id != n.id => return Ok(SettingsOutcome::NameTaken),
            (Some(m), _) => Some(m),
            (None, Some(n)) if n.server_id.is_some() => return Ok(SettingsOutcome::NameTaken),
            (None, Some(n)) => Some(n),
            (None, None) => None,
        };
        if let Some(row) = existing {
            return update_instance(conn, server_id, &row, &name, s);
        }
        let Some(url) = s.fagent_url.clone() else {
            return Ok(SettingsOutcome::Missing("fagent_url"));
        };
        let Some(token_ref) = s.fagent_token_ref.clone() else {
            return Ok(SettingsOutcome::Missing("fagent_token"));
        };
        let new = super::instances::NewInstance {
            server_id: Some(server_id),
            name,
            fagent_url: url,
            fagent_token_ref: token_ref,
            is_active: s.is_active.unwrap_or(true),
        };
        let restore = s.restore_after_reload.unwrap_or(false);
        let created = diesel::insert_into(i::table)
            .values((&new, i::restore_after_reload.eq(restore)))
            .returning(InstanceRow::as_returning())
            .get_result(conn)?;
        Ok(SettingsOutcome::Saved {
            instance: Some(Box::new(created)),
            created: true,
        })
    })
}

/// The last finished successful sync of an instance, for `/metrics`.
#[derive(Debug, Clone, QueryableByName)]
pub struct LastSync {
    #[diesel(sql_type = BigInt)]
    pub instance_id: i64,
    #[diesel(sql_type = Text)]
    pub instance: String,
    #[diesel(sql_type = diesel::sql_types::Jsonb)]
    pub counts: serde_json::Value,
}

/// The newest successful sync run of each instance with an id above
/// `after_id`, `limit` instances at a time (one index probe each).
pub fn last_syncs(
    conn: &mut PgConnection,
    after_id: i64,
    limit: i64,
) -> Result<Vec<LastSync>, DbError> {
    Ok(diesel::sql_query(
        "SELECT i.id AS instance_id, i.name AS instance, r.counts \
         FROM (SELECT id, name FROM haproxy_instances WHERE id > $1 ORDER BY id LIMIT $2) i \
         CROSS JOIN LATERAL (SELECT counts FROM haproxy_sync_runs \
                             WHERE instance_id = i.id AND status = 'success' \
                             ORDER BY started_at DESC LIMIT 1) r \
         ORDER BY i.id",
    )
    .bind::<BigInt, _>(after_id)
    .bind::<BigInt, _>(limit)
    .load(conn)?)
}

/// `SELECT 1`, for `/readyz`.
pub fn ping(conn: &mut PgConnection) -> Result<(), DbError> {
    diesel::sql_query("SELECT 1").execute(conn)?;
    Ok(())
}
