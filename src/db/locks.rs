//! Per-server serialisation (DESIGN.md rule 3): a session-level advisory lock
//! held on a pooled connection for as long as one action for that server runs.

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

/// A pooled connection that holds a server's lock and releases it when
/// dropped, whatever drops it (release, a panic, a cancelled task), so a
/// connection never returns to the pool still holding a lock.
struct LockedConn {
    conn: Pooled,
    key: i64,
    /// Further locks taken on the same session (a backend's guard lock).
    extra: Vec<i64>,
}

impl Drop for LockedConn {
    fn drop(&mut self) {
        for key in self.extra.drain(..).rev().chain(std::iter::once(self.key)) {
            if let Err(e) = diesel::sql_query("SELECT pg_advisory_unlock($1)")
                .bind::<BigInt, _>(key)
                .execute(&mut self.conn)
            {
                // The connection is then almost surely dead, and a dead
                // session holds no lock.
                tracing::warn!(error = %e, "could not release an advisory lock");
            }
        }
    }
}

/// Holds the lock of one server (or one instance's sync); queries of the locked section run on its
/// connection through [`ServerLock::run`].
pub struct ServerLock {
    inner: Option<LockedConn>,
}

impl ServerLock {
    /// Waits for the lock of `server_id`.
    ///
    /// # Errors
    /// [`DbError`] when no connection can be had or the lock query fails.
    pub async fn acquire(pool: &PgPool, server_id: i64) -> Result<Self, DbError> {
        Self::blocking(pool, server_lock_key(server_id)).await
    }

    /// Takes a pooled connection and waits on it for the lock `key`.
    async fn blocking(pool: &PgPool, key: i64) -> Result<Self, DbError> {
        let pool = pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get()?;
            diesel::sql_query("SELECT pg_advisory_lock($1)")
                .bind::<BigInt, _>(key)
                .execute(&mut conn)?;
            Ok(ServerLock {
                inner: Some(LockedConn {
                    conn,
                    key,
                    extra: Vec::new(),
                }),
            })
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }

    /// Also takes the guard lock of a backend (rule 10) on the same
    /// session; it is released with this lock, or by
    /// [`ServerLock::release_backend`].
    ///
    /// # Errors
    /// [`DbError`] when the lock query fails.
    pub async fn lock_backend(&mut self, backend_id: i64) -> Result<(), DbError> {
        let key = backend_guard_lock_key(backend_id);
        self.run_locked(move |locked| {
            diesel::sql_query("SELECT pg_advisory_lock($1)")
                .bind::<BigInt, _>(key)
                .execute(&mut locked.conn)?;
            locked.extra.push(key);
            Ok(())
        })
        .await
    }

    /// Releases a backend's guard lock taken with [`ServerLock::lock_backend`].
    ///
    /// # Errors
    /// [`DbError`] when the unlock query fails.
    pub async fn release_backend(&mut self, backend_id: i64) -> Result<(), DbError> {
        let key = backend_guard_lock_key(backend_id);
        self.run_locked(move |locked| {
            if let Some(at) = locked.extra.iter().position(|k| *k == key) {
                locked.extra.remove(at);
                diesel::sql_query("SELECT pg_advisory_unlock($1)")
                    .bind::<BigInt, _>(key)
                    .execute(&mut locked.conn)?;
            }
            Ok(())
        })
        .await
    }

    async fn run_locked<T, F>(&mut self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut LockedConn) -> Result<T, DbError> + Send + 'static,
    {
        let Some(mut locked) = self.inner.take() else {
            return Err(DbError::Task("the lock was already released".into()));
        };
        let (locked, result) = tokio::task::spawn_blocking(move || {
            let result = f(&mut locked);
            (locked, result)
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?;
        self.inner = Some(locked);
        result
    }

    /// Waits for the sync lock of an instance.
    ///
    /// # Errors
    /// [`DbError`] when no connection can be had or the lock query fails.
    pub async fn instance(pool: &PgPool, instance_id: i64) -> Result<Self, DbError> {
        Self::blocking(pool, instance_sync_lock_key(instance_id)).await
    }

    /// Takes the sync lock of an instance if nobody holds it (rule 7: one
    /// sync per instance at a time).
    ///
    /// # Errors
    /// [`DbError`] when no connection can be had or the query fails.
    pub async fn try_instance(pool: &PgPool, instance_id: i64) -> Result<Option<Self>, DbError> {
        let pool = pool.clone();
        let key = instance_sync_lock_key(instance_id);
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get()?;
            let got: Locked = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS locked")
                .bind::<BigInt, _>(key)
                .get_result(&mut conn)?;
            Ok(got.locked.then(|| ServerLock {
                inner: Some(LockedConn {
                    conn,
                    key,
                    extra: Vec::new(),
                }),
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

    /// Releases the lock.
    pub async fn release(mut self) {
        if let Some(locked) = self.inner.take() {
            let _ = tokio::task::spawn_blocking(move || drop(locked)).await;
        }
    }
}

impl Drop for ServerLock {
    fn drop(&mut self) {
        // Not released through `release` (a cancelled task): unlock here.
        drop(self.inner.take());
    }
}
