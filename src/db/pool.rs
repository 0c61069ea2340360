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
    build(database_url, max_size, SessionSettings::default())
}

/// A pool whose connections commit asynchronously (`synchronous_commit =
/// off`) unless a transaction asks otherwise with [`durable`]. The worker
/// uses it: claims, attempt counters and breaker counts need not survive a
/// PostgreSQL crash before the message is acked (the redelivered message
/// redoes them), while an outcome commits synchronously — and since the WAL
/// is sequential, that flush carries every earlier write of the session.
pub fn pool_async_commit(database_url: &str, max_size: u32) -> Result<PgPool, DbError> {
    build(
        database_url,
        max_size,
        SessionSettings {
            async_commit: true,
            ..SessionSettings::default()
        },
    )
}

/// Makes the current transaction's commit wait for the WAL flush,
/// whatever the session's setting.
pub fn durable(conn: &mut PgConnection) -> Result<(), DbError> {
    use diesel::RunQueryDsl as _;
    diesel::sql_query("SET LOCAL synchronous_commit = on").execute(conn)?;
    Ok(())
}

/// Settings every connection of a pool gets when it is opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionSettings {
    /// `synchronous_commit = off` (see [`pool_async_commit`]).
    pub async_commit: bool,
    /// `lock_timeout`: how long one statement waits for a lock, advisory
    /// locks included (SQLSTATE 55P03 when it runs out); none: no limit.
    pub lock_timeout: Option<Duration>,
    /// `statement_timeout`: how long one statement may run (SQLSTATE 57014);
    /// none: no limit.
    pub statement_timeout: Option<Duration>,
}

impl SessionSettings {
    /// The `SET` statements, `;`-separated; empty when nothing is set.
    /// Only numbers are formatted in: nothing from outside reaches the SQL.
    fn statements(&self) -> String {
        let mut sets = Vec::new();
        if self.async_commit {
            sets.push("SET synchronous_commit = off".to_owned());
        }
        if let Some(t) = self.lock_timeout {
            sets.push(format!("SET lock_timeout = {}", t.as_millis().max(1)));
        }
        if let Some(t) = self.statement_timeout {
            sets.push(format!("SET statement_timeout = {}", t.as_millis().max(1)));
        }
        sets.join("; ")
    }
}

#[derive(Debug)]
struct OnAcquire(String);

impl diesel::r2d2::CustomizeConnection<PgConnection, diesel::r2d2::Error> for OnAcquire {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        use diesel::connection::SimpleConnection as _;
        conn.batch_execute(&self.0)
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// TCP keepalives, so that a peer that vanished (a dead host, a cut link)
/// is noticed in about a minute instead of the kernel's two hours; each is
/// added to the URL unless the URL sets it already. Diesel hands the URL
/// to libpq (`PQconnectdb`), which reads these.
const KEEPALIVES: [(&str, &str); 4] = [
    ("keepalives", "1"),
    ("keepalives_idle", "30"),
    ("keepalives_interval", "10"),
    ("keepalives_count", "3"),
];

/// `database_url` with the [`KEEPALIVES`] it does not set itself, as URI
/// query parameters (`postgres://…?a=b&c=d`) or, for a `key=value`
/// connection string, as more `key=value` words.
pub fn with_keepalives(database_url: &str) -> String {
    let uri = database_url.starts_with("postgres://") || database_url.starts_with("postgresql://");
    let mut url = database_url.to_owned();
    for (key, value) in KEEPALIVES {
        if sets_parameter(database_url, key, uri) {
            continue;
        }
        let sep = if !uri {
            " "
        } else if url.contains('?') {
            "&"
        } else {
            "?"
        };
        url.push_str(sep);
        url.push_str(key);
        url.push('=');
        url.push_str(value);
    }
    url
}

fn sets_parameter(url: &str, key: &str, uri: bool) -> bool {
    if uri {
        let Some((_, query)) = url.split_once('?') else {
            return false;
        };
        query
            .split('&')
            .any(|p| p.split_once('=').map_or(p, |(k, _)| k) == key)
    } else {
        url.split_whitespace()
            .any(|w| w.split_once('=').is_some_and(|(k, _)| k.trim() == key))
    }
}

fn build(database_url: &str, max_size: u32, settings: SessionSettings) -> Result<PgPool, DbError> {
    build_with(database_url, max_size, settings, 1)
}

fn build_with(
    database_url: &str,
    max_size: u32,
    settings: SessionSettings,
    min_idle: u32,
) -> Result<PgPool, DbError> {
    let manager = ConnectionManager::<PgConnection>::new(with_keepalives(database_url));
    let mut builder = diesel::r2d2::Pool::builder()
        .max_size(max_size.max(1))
        .min_idle(Some(min_idle))
        .connection_timeout(CONNECTION_TIMEOUT)
        .test_on_check_out(false);
    let statements = settings.statements();
    if !statements.is_empty() {
        builder = builder.connection_customizer(Box::new(OnAcquire(statements)));
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
    settings: SessionSettings,
) -> Result<PgPool, DbError> {
    let url = database_url.to_owned();
    tokio::task::spawn_blocking(move || build(&url, max_size, settings))
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
}

/// A pool for a one-shot command (`migrate`, `instance add`, `rollout …`):
/// it keeps no idle connection in reserve. A pool that does opens a spare
/// connection in a background thread whenever one is checked out; a command
/// exiting while that thread was in its TLS handshake died by SIGSEGV in
/// OpenSSL's exit cleanup (about 1 run in 8 of `instance list`).
///
/// # Errors
/// As [`pool`].
pub async fn pool_for_command(database_url: &str, max_size: u32) -> Result<PgPool, DbError> {
    let url = database_url.to_owned();
    tokio::task::spawn_blocking(move || build_with(&url, max_size, SessionSettings::default(), 0))
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalives_are_added_to_a_uri_unless_it_sets_them() {
        assert_eq!(
            with_keepalives("postgres://u@h/db"),
            "postgres://u@h/db?keepalives=1&keepalives_idle=30&keepalives_interval=10&keepalives_count=3"
        );
        assert_eq!(
            with_keepalives("postgres://u@h/db?sslmode=disable&keepalives_idle=5"),
            "postgres://u@h/db?sslmode=disable&keepalives_idle=5&keepalives=1&keepalives_interval=10&keepalives_count=3"
        );
    }

    #[test]
    fn keepalives_are_added_to_a_key_value_string_unless_it_sets_them() {
        assert_eq!(
            with_keepalives("host=h dbname=db keepalives_count=9"),
            "host=h dbname=db keepalives_count=9 keepalives=1 keepalives_idle=30 keepalives_interval=10"
        );
    }

    #[test]
    fn session_settings_become_set_statements() {
        assert_eq!(SessionSettings::default().statements(), "");
        let s = SessionSettings {
            async_commit: true,
            lock_timeout: Some(Duration::from_secs(10)),
            statement_timeout: Some(Duration::from_secs(60)),
        };
        assert_eq!(
            s.statements(),
            "SET synchronous_commit = off; SET lock_timeout = 10000; SET statement_timeout = 60000"
        );
    }
}
