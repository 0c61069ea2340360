//! The r2d2 connection pool.

use std::time::Duration;

use diesel::pg::PgConnection;
use diesel::r2d2::ConnectionManager;

use super::DbError;

/// A pool of PostgreSQL connections. Diesel is blocking: use it from
/// `tokio::task::spawn_blocking`, never directly on an async task.
pub type PgPool = diesel::r2d2::Pool<ConnectionManager<PgConnection>>;

/// How long to wait for a connection, both when the pool is built and on every `get()`.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds a pool of at most `max_size` connections (at least 1) to `database_url`.
///
/// One connection is opened at once and kept idle; the others are opened on demand (so that
/// many pools, e.g. one per test, do not exhaust `max_connections`). Fails if that first
/// connection cannot be opened within [`CONNECTION_TIMEOUT`], so a wrong URL or a down
/// database is reported at start-up rather than on the first query.
pub fn pool(database_url: &str, max_size: u32) -> Result<PgPool, DbError> {
    let manager = ConnectionManager::<PgConnection>::new(database_url);
    Ok(diesel::r2d2::Pool::builder()
        .max_size(max_size.max(1))
        .min_idle(Some(1))
        .connection_timeout(CONNECTION_TIMEOUT)
        .test_on_check_out(true)
        .build(manager)?)
}
