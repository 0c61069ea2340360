//! The database's clock as one process sees it: PostgreSQL's
//! `clock_timestamp()`, read at most every [`REFRESH`] and carried forward
//! in between by the process's monotonic clock, so a check against it costs
//! no round trip and never depends on this host's wall clock.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::{DbError, PgPool};

/// How long one reading of the database's clock is carried forward.
pub const REFRESH: Duration = Duration::from_secs(30);

/// The database's time, cached per process.
#[derive(Debug, Default)]
pub struct DbClock {
    /// The last reading and the monotonic instant it was taken at.
    last: Mutex<Option<(Instant, DateTime<Utc>)>>,
}

impl DbClock {
    /// The database's current time (within the drift of the local
    /// monotonic clock over at most [`REFRESH`]).
    ///
    /// # Errors
    /// [`DbError`] when a new reading is due and the database fails.
    pub async fn now(&self, pool: &PgPool) -> Result<DateTime<Utc>, DbError> {
        if let Some(now) = self.carried_forward() {
            return Ok(now);
        }
        let read = super::run(pool, super::database_now).await?;
        // Taken after the reading came back, not before it was asked for:
        // carried forward, the time is then never ahead of the database's
        // (a wait for a pooled connection under load would otherwise put it
        // ahead by that wait, and a command stamped with it could supersede
        // a later one), only behind by at most the round trip.
        let taken = Instant::now();
        if let Ok(mut last) = self.last.lock() {
            *last = Some((taken, read));
        }
        Ok(read)
    }

    fn carried_forward(&self) -> Option<DateTime<Utc>> {
        let last = *self.last.lock().ok()?;
        let (at, read) = last?;
        let elapsed = at.elapsed();
        if elapsed >= REFRESH {
            return None;
        }
        Some(read + chrono::Duration::from_std(elapsed).ok()?)
    }
}
