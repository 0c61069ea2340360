//! The circuit breaker per HAProxy instance, shared by every worker through
//! its row in `haproxy_instances` (DESIGN.md rule 4). PostgreSQL holds the
//! count and the state so every worker and the API see the same; the rule
//! that opens it is [`failure_opens`]. What failsafe does for us: its
//! `consecutive_failures` policy is the definition that rule is tested
//! against (its in-process state machine cannot be shared between workers,
//! so it does not run in production).

use std::time::Duration;

use chrono::Utc;
use diesel::Connection as _;
use diesel::pg::PgConnection;

use crate::db::{self, DbError, PgPool, instances};
use crate::domain::breaker::{Admission, BreakerState, BreakerView, admit, failure_opens};

#[derive(Debug, Clone)]
pub struct BreakerSettings {
    pub failures: u32,
    pub open_for: Duration,
    /// A probe that has not reported within this time is presumed dead.
    pub probe_timeout: Duration,
}

/// What a recorded call changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Opened,
    Closed,
}

/// Whether a call may go out now. `TryProbe` is settled here: exactly one
/// caller becomes the probe, the others are rejected.
///
/// # Errors
/// [`DbError`].
pub fn admission_on(
    conn: &mut PgConnection,
    instance_id: i64,
    s: &BreakerSettings,
) -> Result<bool, DbError> {
    let Some(row) = instances::get(conn, instance_id)? else {
        return Ok(false);
    };
    match admit(&row.breaker(), Utc::now(), s.open_for, s.probe_timeout) {
        Admission::Allow => Ok(true),
        Admission::Reject => Ok(false),
        Admission::TryProbe => instances::claim_probe(
            conn,
            instance_id,
            s.open_for.as_secs_f64(),
            s.probe_timeout.as_secs_f64(),
        ),
    }
}

/// Records a call that the agent answered: the breaker closes.
///
/// # Errors
/// [`DbError`].
pub fn record_success_on(conn: &mut PgConnection, instance_id: i64) -> Result<Transition, DbError> {
    Ok(match instances::record_success(conn, instance_id)? {
        Some(BreakerState::Open | BreakerState::HalfOpen) => Transition::Closed,
        _ => Transition::None,
    })
}

/// Records a failed call: counts it and opens the breaker when the policy
/// says so, or at once when it was the half-open probe that failed.
///
/// # Errors
/// [`DbError`].
pub fn record_failure_on(
    conn: &mut PgConnection,
    instance_id: i64,
    s: &BreakerSettings,
) -> Result<Transition, DbError> {
    conn.transaction(|conn| {
        let Some(view) = instances::lock_breaker(conn, instance_id)? else {
            return Ok(Transition::None);
        };
        let (failures, open) = decide(&view, s);
        instances::write_failure(conn, instance_id, failures, open)?;
        Ok(if open {
            Transition::Opened
        } else {
            Transition::None
        })
    })
}

/// [`admission_on`] with a pooled connection.
///
/// # Errors
/// [`DbError`].
pub async fn admission(
    pool: &PgPool,
    instance_id: i64,
    settings: &BreakerSettings,
) -> Result<bool, DbError> {
    let s = settings.clone();
    db::run(pool, move |conn| admission_on(conn, instance_id, &s)).await
}

/// [`record_success_on`] with a pooled connection.
///
/// # Errors
/// [`DbError`].
pub async fn record_success(pool: &PgPool, instance_id: i64) -> Result<Transition, DbError> {
    db::run(pool, move |conn| record_success_on(conn, instance_id)).await
}

/// [`record_failure_on`] with a pooled connection.
///
/// # Errors
/// [`DbError`].
pub async fn record_failure(
    pool: &PgPool,
    instance_id: i64,
    settings: &BreakerSettings,
) -> Result<Transition, DbError> {
    let s = settings.clone();
    db::run(pool, move |conn| record_failure_on(conn, instance_id, &s)).await
}

/// The new failure count, and whether the breaker opens now.
pub fn decide(view: &BreakerView, settings: &BreakerSettings) -> (i32, bool) {
    let failures = view.consecutive_failures.saturating_add(1);
    let opens = failure_opens(view.state, view.consecutive_failures, settings.failures);
    (failures, opens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            failures: 3,
            open_for: Duration::from_secs(60),
            probe_timeout: Duration::from_secs(10),
        }
    }

    fn view(state: BreakerState, failures: i32) -> BreakerView {
        BreakerView {
            state,
            consecutive_failures: failures,
            opened_at: None,
            probe_started_at: None,
        }
    }

    #[test]
    fn the_third_consecutive_failure_opens() {
        assert_eq!(
            decide(&view(BreakerState::Closed, 0), &settings()),
            (1, false)
        );
        assert_eq!(
            decide(&view(BreakerState::Closed, 1), &settings()),
            (2, false)
        );
        assert_eq!(
            decide(&view(BreakerState::Closed, 2), &settings()),
            (3, true)
        );
    }

    /// The one comparison opens exactly where failsafe's
    /// `consecutive_failures` policy, replayed over the stored count, does.
    #[test]
    fn the_rule_is_failsafes_consecutive_failures_policy() {
        use failsafe::failure_policy::{FailurePolicy, consecutive_failures};
        for threshold in 1..=5 {
            for before in 0..=8 {
                let mut policy = consecutive_failures(
                    threshold,
                    failsafe::backoff::constant(Duration::from_secs(60)),
                );
                for _ in 0..before {
                    let _ = policy.mark_dead_on_failure();
                }
                let failsafe_opens = policy.mark_dead_on_failure().is_some();
                assert_eq!(
                    failure_opens(BreakerState::Closed, before, threshold),
                    failsafe_opens,
                    "threshold {threshold}, {before} failures before"
                );
            }
        }
    }

    #[test]
    fn a_failed_probe_reopens_and_an_open_breaker_stays_open() {
        assert_eq!(
            decide(&view(BreakerState::HalfOpen, 3), &settings()),
            (4, true)
        );
        assert_eq!(
            decide(&view(BreakerState::Open, 3), &settings()),
            (4, false)
        );
    }
}
