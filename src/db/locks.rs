//! Per-server serialisation (DESIGN.md rule 3): a session-level advisory lock
//! held on a pooled connection for as long as one action for that server runs.
//!
//! Raw SQL throughout: advisory-lock functions are not in Diesel's DSL.

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, PooledConnection};
use diesel::sql_types::BigInt;

use super::{DbError, PgPool};
use crate::domain::action::{backend_guard_lock_key, instance_sync_lock_key, server_lock_key};

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    locked: bool,
}

type Pooled = PooledConnection<ConnectionManager<PgConnection>>;

/// A pooled connection with the advisory locks taken on it. It releases
/// them when dropped, whatever drops it (release, a panic, a cancelled
/// task), so a connection never returns to the pool still holding a lock.
pub struct Session {
    conn: Pooled,
    /// True only right after [`Session::unlock_all`] succeeded and nothing
    /// ran on the connection since; otherwise dropping the session runs
    /// `pg_advisory_unlock_all()`, whatever locks it believes it holds (a
    /// statement cancelled between the two locks of
    /// [`Session::lock_server_and_backend`] may have taken one).
    released: bool,
}

impl Session {
    /// The connection, for the queries of the locked section.
    pub fn conn(&mut self) -> &mut PgConnection {
        self.released = false;
        &mut self.conn
    }

    fn new(conn: Pooled) -> Self {
        Session {
            conn,
            released: false,
        }
    }

    /// Waits for the lock of a server (rule 3).
    ///
    /// # Errors
    /// [`DbError`] when the lock query fails.
    pub fn lock_server(&mut self, server_id: i64) -> Result<(), DbError> {
        self.lock(server_lock_key(server_id))
            .map_err(|e| lock_timeout(e, || format!("the lock of server {server_id}")))
    }

    /// Waits for the lock of a server and then the guard lock of its
    /// backend, in one statement (one round trip). Only guarded actions
    /// hold a backend's lock, and they take their server's first, so no
    /// two sessions wait for each other.
    ///
    /// # Errors
    /// [`DbError`] when the lock query fails.
    pub fn lock_server_and_backend(
        &mut self,
        server_id: i64,
        backend_id: i64,
    ) -> Result<(), DbError> {
        let (server, backend) = (
            server_lock_key(server_id),
            backend_guard_lock_key(backend_id),
        );
        self.released = false;
        diesel::sql_query("SELECT pg_advisory_lock($1), pg_advisory_lock($2)")
            .bind::<BigInt, _>(server)
            .bind::<BigInt, _>(backend)
            .execute(&mut self.conn)
            .map_err(|e| {
                lock_timeout(e.into(), || {
                    format!(
                        "the lock of server {server_id} or the guard lock of backend {backend_id}"
                    )
                })
            })?;
        Ok(())
    }

    /// Waits for the locks of several servers and then the guard locks of
    /// several backends, in one statement: servers before backends, each in
    /// ascending key order, so no two sessions wait for each other (a
    /// session waits for a server only while it holds lower servers and no
    /// backend, and for a backend only while it holds all its servers and
    /// lower backends; [`Session::lock_server_and_backend`] is the same
    /// order for one of each).
    ///
    /// # Errors
    /// [`DbError`] when the lock query fails.
    pub fn lock_many(&mut self, server_ids: &[i64], backend_ids: &[i64]) -> Result<(), DbError> {
        let keys = lock_order(server_ids, backend_ids);
        self.released = false;
        diesel::sql_query("SELECT pg_advisory_lock(k) FROM unnest($1::bigint[]) AS k")
            .bind::<diesel::sql_types::Array<BigInt>, _>(keys)
            .execute(&mut self.conn)
            .map_err(|e| {
                lock_timeout(e.into(), || {
                    format!(
                        "the locks of {} servers and {} backends",
                        server_ids.len(),
                        backend_ids.len()
                    )
                })
            })?;
        Ok(())
    }

    fn lock(&mut self, key: i64) -> Result<(), DbError> {
        self.released = false;
        diesel::sql_query("SELECT pg_advisory_lock($1)")
            .bind::<BigInt, _>(key)
            .execute(&mut self.conn)?;
        Ok(())
    }

    /// Releases every lock of the session with one statement (the
    /// connection stays checked out).
    ///
    /// # Errors
    /// [`DbError`] when the unlock query fails.
    pub fn unlock_all(&mut self) -> Result<(), DbError> {
        if !self.released {
            diesel::sql_query("SELECT pg_advisory_unlock_all()").execute(&mut self.conn)?;
            self.released = true;
        }
        Ok(())
    }
}

/// The advisory-lock keys of servers then backends, each sorted and
/// without repeats: the one order every session takes them in.
fn lock_order(server_ids: &[i64], backend_ids: &[i64]) -> Vec<i64> {
    let sorted = |keys: Vec<i64>| {
        let mut keys = keys;
        keys.sort_unstable();
        keys.dedup();
        keys
    };
    let mut keys = sorted(server_ids.iter().map(|id| server_lock_key(*id)).collect());
    keys.extend(sorted(
        backend_ids
            .iter()
            .map(|id| backend_guard_lock_key(*id))
            .collect(),
    ));
    keys
}

/// A lock wait that ran out of `lock_timeout` (SQLSTATE 55P03,
/// lock_not_available) as [`DbError::LockTimeout`] naming `what`; any
/// other error unchanged. Diesel has no error kind for it, so PostgreSQL's
/// message ("canceling statement due to lock timeout") tells.
fn lock_timeout(error: DbError, what: impl FnOnce() -> String) -> DbError {
    match &error {
        DbError::Query(diesel::result::Error::DatabaseError(_, info))
            if info.message().contains("lock timeout") =>
        {
            DbError::LockTimeout(what())
        }
        _ => error,
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Err(e) = self.unlock_all() {
            // The connection is then almost surely dead, and a dead
            // session holds no lock.
            tracing::warn!(error = %e, "could not release the advisory locks");
        }
    }
}

/// Holds a [`Session`] (a server's lock, or one instance's sync lock)
/// across awaits; queries of the locked section run on its connection
/// through [`AdvisoryLocks::run`].
pub struct AdvisoryLocks {
    inner: Option<Session>,
}

impl AdvisoryLocks {
    /// Takes a pooled connection and runs `f` on it, in one blocking call;
    /// the locks `f` takes are held until [`AdvisoryLocks::finish`] or
    /// [`AdvisoryLocks::release`]. An action's whole locked preamble (resolve,
    /// claim, lock, read, guard) is one such call, not one per statement.
    ///
    /// # Errors
    /// [`DbError`] when no connection can be had, or from `f` (the locks it
    /// took are then released).
    pub async fn open<T, F>(pool: &PgPool, f: F) -> Result<(Self, T), DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Session) -> Result<T, DbError> + Send + 'static,
    {
        let pool = pool.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let mut session = Session::new(pool.get()?);
            match f(&mut session) {
                Ok(value) => Ok((
                    AdvisoryLocks {
                        inner: Some(session),
                    },
                    value,
                )),
                Err(e) => {
                    super::discard_if_dead(&mut session.conn, &e);
                    Err(e)
                }
            }
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }

    /// Waits for the sync lock of an instance.
    ///
    /// # Errors
    /// [`DbError`] when no connection can be had or the lock query fails.
    pub async fn instance(pool: &PgPool, instance_id: i64) -> Result<Self, DbError> {
        let key = instance_sync_lock_key(instance_id);
        let lock = move |s: &mut Session| {
            s.lock(key)
                .map_err(|e| lock_timeout(e, || format!("the sync lock of instance {instance_id}")))
        };
        Ok(Self::open(pool, lock).await?.0)
    }

    /// Takes the sync lock of an instance if nobody holds it (rule 7: one
    /// sync per instance at a time).
    ///
    /// # Errors
    /// [`DbError`] when no connection can be had or the query fails.
    pub async fn try_instance(pool: &PgPool, instance_id: i64) -> Result<Option<Self>, DbError> {
        Self::try_key(pool, instance_sync_lock_key(instance_id)).await
    }

    /// Takes the advisory lock `key` if nobody holds it, on a connection of
    /// its own that keeps it until release (or until the connection dies).
    ///
    /// # Errors
    /// [`DbError`] when no connection can be had or the query fails.
    pub async fn try_key(pool: &PgPool, key: i64) -> Result<Option<Self>, DbError> {
        let pool = pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get()?;
            let got: Locked = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS locked")
                .bind::<BigInt, _>(key)
                .get_result(&mut conn)?;
            Ok(got.locked.then(|| AdvisoryLocks {
                inner: Some(Session::new(conn)),
            }))
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }

    /// Runs `f` on the lock's own connection (an action in flight holds one
    /// connection, not two).
    ///
    /// # Errors
    /// [`DbError`] from `f`, or when the lock is gone.
    pub async fn run<T, F>(&mut self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut PgConnection) -> Result<T, DbError> + Send + 'static,
    {
        let Some(mut locked) = self.inner.take() else {
            return Err(DbError::Task("the server lock was already released".into()));
        };
        let span = tracing::Span::current();
        let (locked, result) = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let result = f(&mut locked.conn);
            if let Err(e) = &result {
                super::discard_if_dead(&mut locked.conn, e);
            }
            (locked, result)
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?;
        self.inner = Some(locked);
        result
    }

    /// Runs `f` on the lock's connection, then releases every lock and the
    /// connection, in one blocking call (an action's outcome and its
    /// unlock).
    ///
    /// # Errors
    /// [`DbError`] from `f` (the locks are released all the same), or when
    /// the lock is gone.
    pub async fn finish<T, F>(mut self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut PgConnection) -> Result<T, DbError> + Send + 'static,
    {
        let Some(mut session) = self.inner.take() else {
            return Err(DbError::Task("the server lock was already released".into()));
        };
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let result = f(&mut session.conn);
            match &result {
                Ok(_) => {
                    if let Err(e) = session.unlock_all() {
                        // Drop tries again; a dead session holds no lock.
                        tracing::warn!(error = %e, "could not release the advisory locks");
                    }
                }
                Err(e) => super::discard_if_dead(&mut session.conn, e),
            }
            result
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }

    /// Releases the lock.
    pub async fn release(mut self) {
        if let Some(locked) = self.inner.take() {
            let _ = tokio::task::spawn_blocking(move || drop(locked)).await;
        }
    }
}

impl Drop for AdvisoryLocks {
    fn drop(&mut self) {
        // Not released through `release` (a cancelled task): unlock here.
        drop(self.inner.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_come_before_backends_each_sorted_once() {
        let keys = lock_order(&[9, 3, 9, 1], &[7, 2, 7]);
        let expected: Vec<i64> = [1, 3, 9]
            .iter()
            .map(|id| server_lock_key(*id))
            .chain([2, 7].iter().map(|id| backend_guard_lock_key(*id)))
            .collect();
        assert_eq!(keys, expected);
        // Within each kind the order is ascending by key: the one order
        // every session takes them in.
        assert!(keys[..3].windows(2).all(|w| w[0] < w[1]));
        assert!(keys[3..].windows(2).all(|w| w[0] < w[1]));
    }
}
