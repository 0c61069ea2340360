//! What an attempt's answer means and when the next attempt is due.
//! Standard Webhooks: only 2xx is success, a 3xx is a failure (redirects
//! are not followed), 410 Gone disables the endpoint, `Retry-After` on 429
//! and 503 is honoured; retries follow a schedule with jitter.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Delays before each attempt: the first entry is the first attempt's
/// (normally zero), entry n the wait after attempt n failed. When they run
/// out, the delivery has failed.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySchedule {
    pub delays: Vec<Duration>,
    /// Each wait is moved by up to ± this fraction of itself (0.1: ±10 %).
    pub jitter: f64,
    /// The longest `Retry-After` honoured.
    pub retry_after_cap: Duration,
}

impl RetrySchedule {
    /// Immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
    pub fn standard() -> Self {
        let s = Duration::from_secs;
        Self {
            delays: vec![
                Duration::ZERO,
                s(5),
                s(300),
                s(1800),
                s(7200),
                s(18_000),
                s(36_000),
                s(36_000),
            ],
            jitter: 0.1,
            retry_after_cap: s(3600),
        }
    }

    /// Attempts in all.
    pub fn attempts(&self) -> u32 {
        u32::try_from(self.delays.len()).unwrap_or(u32::MAX).max(1)
    }

    /// The wait after attempt `attempt` (from 1) failed, jittered by
    /// `random` (uniform in 0..1); None when it was the last.
    pub fn wait_after(&self, attempt: u32, random: f64) -> Option<Duration> {
        let base = *self.delays.get(usize::try_from(attempt).ok()?)?;
        let spread = (random.clamp(0.0, 1.0) * 2.0 - 1.0) * self.jitter.clamp(0.0, 1.0);
        Some(base.mul_f64((1.0 + spread).max(0.0)))
    }
}

/// One attempt's answer as far as the schedule cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptOutcome {
    /// The HTTP status; None when no answer came (connect error, timeout).
    pub status: Option<u16>,
    /// `Retry-After`, already parsed ([`retry_after`]).
    pub retry_after: Option<Duration>,
}

/// What follows an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// 410: the receiver wants no more; disable the endpoint.
    Gone,
    /// Try again after this long.
    RetryIn(Duration),
    /// The schedule ran out.
    GiveUp,
}

/// The verdict on attempt `attempt` (from 1).
pub fn verdict(
    schedule: &RetrySchedule,
    attempt: u32,
    outcome: AttemptOutcome,
    random: f64,
) -> Verdict {
    match outcome.status {
        Some(s) if (200..300).contains(&s) => return Verdict::Delivered,
        Some(410) => return Verdict::Gone,
        _ => {}
    }
    let Some(wait) = schedule.wait_after(attempt, random) else {
        return Verdict::GiveUp;
    };
    let asked = match outcome.status {
        Some(429 | 503) => outcome.retry_after.map(|d| d.min(schedule.retry_after_cap)),
        _ => None,
    };
    Verdict::RetryIn(asked.map_or(wait, |a| a.max(wait)))
}

/// `Retry-After`: delay-seconds or an HTTP date (relative to `now`); None
/// when it is neither.
pub fn retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> RetrySchedule {
        RetrySchedule {
            delays: vec![
                Duration::ZERO,
                Duration::from_millis(100),
                Duration::from_millis(200),
            ],
            jitter: 0.0,
            retry_after_cap: Duration::from_secs(10),
        }
    }

    #[test]
    fn the_standard_schedule_has_eight_attempts_with_jitter_around_each_wait() {
        let s = RetrySchedule::standard();
        assert_eq!(s.attempts(), 8);
        assert_eq!(s.wait_after(1, 0.5), Some(Duration::from_secs(5)));
        assert_eq!(s.wait_after(2, 0.0), Some(Duration::from_secs(270)));
        assert_eq!(s.wait_after(2, 1.0), Some(Duration::from_secs(330)));
        assert_eq!(s.wait_after(7, 0.5), Some(Duration::from_secs(36_000)));
        assert_eq!(s.wait_after(8, 0.5), None);
    }

    #[test]
    fn only_2xx_delivers_410_disables_and_the_rest_retry_until_the_schedule_ends() {
        let s = fast();
        let out = |status| AttemptOutcome {
            status,
            retry_after: None,
        };
        assert_eq!(verdict(&s, 1, out(Some(204)), 0.5), Verdict::Delivered);
        assert_eq!(verdict(&s, 1, out(Some(410)), 0.5), Verdict::Gone);
        for failing in [Some(301), Some(302), Some(404), Some(500), None] {
            assert_eq!(
                verdict(&s, 1, out(failing), 0.5),
                Verdict::RetryIn(Duration::from_millis(100)),
                "{failing:?}"
            );
        }
        assert_eq!(verdict(&s, 3, out(Some(500)), 0.5), Verdict::GiveUp);
    }

    #[test]
    fn retry_after_is_honoured_on_429_and_503_only_and_capped() {
        let s = fast();
        let with = |status, secs| AttemptOutcome {
            status: Some(status),
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert_eq!(
            verdict(&s, 1, with(429, 2), 0.5),
            Verdict::RetryIn(Duration::from_secs(2))
        );
        assert_eq!(
            verdict(&s, 1, with(503, 99), 0.5),
            Verdict::RetryIn(Duration::from_secs(10))
        );
        assert_eq!(
            verdict(&s, 1, with(500, 2), 0.5),
            Verdict::RetryIn(Duration::from_millis(100))
        );
        let now = DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after("Wed, 02 Dec 2026 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after("Wed, 02 Dec 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
    }
}
