//! The r2d2 connection pool.
//!
//! Raw SQL: `SET` of session settings, which are not tables.

use std::time::Duration;

use diesel::pg::PgConnection;
use diesel::r2d2::ConnectionManager;

use super::DbError;

/// A pool of PostgreSQL connections. Diesel is blocking: use it from
/// `tokio::task::spawn_blocking`, never directly on an async task.
pub type PgPool = diesel::r2d2::Pool<ConnectionManager<PgConnection>>;

/// How long to wait for a connection, both when the pool is built and on every `get()`.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections are not tested on check-out (that would double the round
/// trips of every query); a connection that broke is noticed by Diesel and
/// discarded by the pool when it is returned.
///
/// Builds a pool of at most `max_size` connections (at least 1) to `database_url`.
///
/// One connection is opened at once and kept idle; the others are opened on demand (so that
/// many pools, e.g. one per test, do not exhaust `max_connections`). Fails if that first
/// connection cannot be opened within [`CONNECTION_TIMEOUT`], so a wrong URL or a down
/// database is reported at start-up rather than on the first query.
pub fn pool(database_url: &str, max_size: u32) -> Result<PgPool, DbError> {
    build(database_url, max_size, false)
}

/// A pool whose connections commit asynchronously (`synchronous_commit =
/// off`) unless a transaction asks otherwise with [`durable`]. The worker
/// uses it: claims, attempt counters and breaker counts need not survive a
/// PostgreSQL crash before the message is acked (the redelivered message
/// redoes them), while an outcome commits synchronously — and since the WAL
/// is sequential, that flush carries every earlier write of the session.
pub fn pool_async_commit(database_url: &str, max_size: u32) -> Result<PgPool, DbError> {
    build(database_url, max_size, true)
}

/// Makes the current transaction's commit wait for the WAL flush,
/// whatever the session's setting.
pub fn durable(conn: &mut PgConnection) -> Result<(), DbError> {
    use diesel::RunQueryDsl as _;
    diesel::sql_query("SET LOCAL synchronous_commit = on").execute(conn)?;
    Ok(())
}

#[derive(Debug)]
struct AsyncCommit;

impl diesel::r2d2::CustomizeConnection<PgConnection, diesel::r2d2::Error> for AsyncCommit {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        use diesel::RunQueryDsl as _;
        diesel::sql_query("SET synchronous_commit = off")
            .execute(conn)
            .map(|_| ())
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

fn build(database_url: &str, max_size: u32, async_commit: bool) -> Result<PgPool, DbError> {
    let manager = ConnectionManager::<PgConnection>::new(database_url);
    let mut builder = diesel::r2d2::Pool::builder()
        .max_size(max_size.max(1))
        .min_idle(Some(1))
        .connection_timeout(CONNECTION_TIMEOUT)
        .test_on_check_out(false);
    if async_commit {
        builder = builder.connection_customizer(Box::new(AsyncCommit));
    }
    Ok(builder.build(manager)?)
}

/// [`pool`] built on the blocking thread pool: building opens a first
/// connection, which must not block an async runtime's thread.
///
/// # Errors
/// As [`pool`].
pub async fn pool_off_runtime(
    database_url: &str,
    max_size: u32,
    async_commit: bool,
) -> Result<PgPool, DbError> {
    let url = database_url.to_owned();
    tokio::task::spawn_blocking(move || build(&url, max_size, async_commit))
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
}
