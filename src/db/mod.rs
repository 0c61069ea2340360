//! The database layer: Diesel schema, connection pool and migrations.
//!
//! Migrations are embedded in the binary and run by [`run_migrations`], which serialises
//! concurrent runners (several replicas starting at once) with a PostgreSQL advisory lock.
//! That lock is raw SQL (advisory-lock functions are not in Diesel's DSL); so are the
//! statements of `testing` and `tests`, which create databases and inspect the catalog.

pub mod action_groups;
pub mod actions;
pub mod api_queries;
pub mod approvals;
pub mod batches;
pub mod clock;
pub mod enums;
pub mod history;
pub mod instances;
pub mod inventory;
pub mod locks;
pub mod pool;
pub mod reload;
pub mod rollouts;
pub mod schema;
pub mod sweeps;
pub mod sync;
pub mod testing;
pub mod webhooks;

#[cfg(test)]
mod tests;

use diesel::Connection as _;
use diesel::RunQueryDsl as _;
use diesel::pg::{Pg, PgConnection};
use diesel::sql_types::BigInt;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness as _, embed_migrations};

pub use pool::{
    PgPool, SessionSettings, durable, pool, pool_async_commit, pool_for_command, pool_off_runtime,
};

/// Every migration in `migrations/`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Key of the session-level advisory lock held while migrations run (ASCII "hapx-mig").
pub const MIGRATION_LOCK_KEY: i64 = 0x6861_7078_2d6d_6967;

/// Errors of the database layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A connection to PostgreSQL could not be established.
    #[error("cannot connect to PostgreSQL: {0}")]
    Connection(#[from] diesel::ConnectionError),
    /// The pool could not be built or gave no connection in time.
    #[error("database connection pool: {0}")]
    Pool(#[from] diesel::r2d2::PoolError),
    /// A query failed.
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    /// Running the migrations failed.
    #[error("database migration failed: {0}")]
    Migration(String),
    /// A lock was not had within the session's `lock_timeout` (SQLSTATE
    /// 55P03): another session holds it. Worth retrying later.
    #[error("timed out waiting for {0} (lock_timeout): another session holds it")]
    LockTimeout(String),
    /// A blocking database task panicked or was cancelled.
    #[error("database task failed: {0}")]
    Task(String),
}

/// Opens a single connection (no pool), e.g. for `migrate`.
pub fn connect(database_url: &str) -> Result<PgConnection, DbError> {
    Ok(PgConnection::establish(database_url)?)
}

/// The database's clock. Rule 6 compares times from this one clock only:
/// an action's `state_written_at` is the database's `now()`, so the time a
/// sync's snapshot is "taken after" must come from here too, never from the
/// agent's machine.
///
/// # Errors
/// [`DbError`] when the query fails.
pub fn database_now(conn: &mut PgConnection) -> Result<chrono::DateTime<chrono::Utc>, DbError> {
    Ok(
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Timestamptz>(
            "clock_timestamp()",
        ))
        .get_result(conn)?,
    )
}

/// Runs every pending migration and returns the names of those applied, oldest first (empty
/// when the schema is already up to date).
///
/// Holds the session-level advisory lock [`MIGRATION_LOCK_KEY`] meanwhile, so that runners
/// started at the same time on the same database apply each migration once; the others wait
/// and then find nothing pending. Each migration runs in its own transaction.
pub fn run_migrations(conn: &mut PgConnection) -> Result<Vec<String>, DbError> {
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
        .execute(conn)?;
    let outcome = run_pending(conn);
    let unlocked = diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
        .execute(conn);
    let applied = outcome?;
    // If the unlock failed the connection is broken, and the lock went with the session.
    if let Err(e) = unlocked {
        tracing::warn!(error = %e, "releasing the migration lock failed");
    }
    Ok(applied)
}

fn run_pending(conn: &mut PgConnection) -> Result<Vec<String>, DbError> {
    let versions: Vec<String> = conn
        .run_pending_migrations(MIGRATIONS)
        .map_err(|e| DbError::Migration(e.to_string()))?
        .into_iter()
        .map(|version| version.to_string())
        .collect();
    let names = migration_names().map_err(DbError::Migration)?;
    let applied: Vec<String> = versions
        .into_iter()
        .map(|version| {
            names
                .iter()
                .find(|(v, _)| *v == version)
                .map_or(version.clone(), |(_, name)| name.clone())
        })
        .collect();
    for name in &applied {
        tracing::info!(migration = %name, "applied migration");
    }
    Ok(applied)
}

/// (version, full name) of every embedded migration.
fn migration_names() -> Result<Vec<(String, String)>, String> {
    let migrations = diesel::migration::MigrationSource::<Pg>::migrations(&MIGRATIONS)
        .map_err(|e| e.to_string())?;
    Ok(migrations
        .iter()
        .map(|m| (m.name().version().to_string(), m.name().to_string()))
        .collect())
}

/// Marks a connection whose query failed because the connection itself is
/// gone (server closed it, network cut) as broken, so the pool discards it
/// instead of handing it out again. (Connections are not tested on
/// check-out, and Diesel only reports a broken transaction state.)
pub fn discard_if_dead(conn: &mut PgConnection, error: &DbError) {
    use diesel::connection::TransactionManager as _;
    use diesel::result::{DatabaseErrorKind, Error};
    let dead = match error {
        DbError::Query(Error::DatabaseError(DatabaseErrorKind::ClosedConnection, _)) => true,
        DbError::Query(Error::DatabaseError(_, info)) => {
            let m = info.message().to_ascii_lowercase();
            m.contains("connection") || m.contains("terminating") || m.contains("server closed")
        }
        DbError::Query(Error::BrokenTransactionManager) => true,
        _ => false,
    };
    if dead {
        tracing::warn!(error = %error, "discarding a dead database connection");
        diesel::connection::AnsiTransactionManager::transaction_manager_status_mut(conn)
            .set_in_error();
    }
}

/// Runs `f` with a pooled connection on the blocking thread pool.
///
/// # Errors
/// [`DbError`] from the pool or from `f`.
pub async fn run<T, F>(pool: &PgPool, f: F) -> Result<T, DbError>
where
    T: Send + 'static,
    F: FnOnce(&mut PgConnection) -> Result<T, DbError> + Send + 'static,
{
    let pool = pool.clone();
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        let mut conn = pool.get()?;
        let result = f(&mut conn);
        if let Err(e) = &result {
            discard_if_dead(&mut conn, e);
        }
        result
    })
    .await
    .map_err(|e| DbError::Task(e.to_string()))?
}
