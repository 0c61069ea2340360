//! `haproxy_server_status_history` housekeeping.
//!
//! Raw SQL: batched deletes (`DELETE … WHERE id IN (SELECT … LIMIT)`)
//! against a `make_interval` cut-off.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double};

use super::DbError;

/// Deletes at most `batch` history rows older than `older_than_secs`, and
/// as many finished sync runs; returns how many history rows went.
pub fn prune(conn: &mut PgConnection, older_than_secs: f64, batch: i64) -> Result<usize, DbError> {
    let history = diesel::sql_query(
        "DELETE FROM haproxy_server_status_history WHERE id IN ( \
           SELECT id FROM haproxy_server_status_history \
           WHERE changed_at < now() - make_interval(secs => $1) ORDER BY changed_at LIMIT $2)",
    )
    .bind::<Double, _>(older_than_secs)
    .bind::<BigInt, _>(batch)
    .execute(conn)?;
    diesel::sql_query(
        "DELETE FROM haproxy_sync_runs WHERE id IN ( \
           SELECT id FROM haproxy_sync_runs \
           WHERE started_at < now() - make_interval(secs => $1) AND status <> 'running' \
           ORDER BY started_at LIMIT $2)",
    )
    .bind::<Double, _>(older_than_secs)
    .bind::<BigInt, _>(batch)
    .execute(conn)?;
    Ok(history)
}
