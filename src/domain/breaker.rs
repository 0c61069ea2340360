//! The circuit breaker's rules (DESIGN.md rule 4), as pure decisions over the
//! state every worker shares through PostgreSQL: whether a call may go out
//! ([`admit`]) and whether a failed call opens the breaker
//! ([`failure_opens`], failsafe's `consecutive_failures` policy as one
//! comparison; `worker::breaker`'s tests hold it to failsafe's).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub const ALL: [BreakerState; 3] = [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so `{:<10}` lines a table up.
        f.pad(self.as_str())
    }
}

impl FromStr for BreakerState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        super::action::find(&BreakerState::ALL, s, BreakerState::as_str, "breaker state")
    }
}

/// What the shared row says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerView {
    pub state: BreakerState,
    pub consecutive_failures: i32,
    pub opened_at: Option<DateTime<Utc>>,
    pub probe_started_at: Option<DateTime<Utc>>,
}

/// Whether a call may go to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: call.
    Allow,
    /// Open long enough: this caller may try to become the one probe.
    TryProbe,
    /// Open, or another caller is probing: fail fast with `circuit_open`.
    Reject,
}

/// Decides admission. A probe that has not reported back within
/// `probe_timeout` (its worker died) may be replaced by a new one.
pub fn admit(
    view: &BreakerView,
    now: DateTime<Utc>,
    open_for: Duration,
    probe_timeout: Duration,
) -> Admission {
    let elapsed = |since: Option<DateTime<Utc>>, d: Duration| {
        since.is_none_or(|t| (now - t).to_std().is_ok_and(|e| e >= d))
    };
    match view.state {
        BreakerState::Closed => Admission::Allow,
        BreakerState::Open if elapsed(view.opened_at, open_for) => Admission::TryProbe,
        BreakerState::HalfOpen if elapsed(view.probe_started_at, probe_timeout) => {
            Admission::TryProbe
        }
        BreakerState::Open | BreakerState::HalfOpen => Admission::Reject,
    }
}

/// Whether a failed call opens the breaker: the half-open probe failed, or
/// a closed breaker's consecutive failures (`failures_before` plus this one)
/// reach `threshold`. An open breaker stays as it is.
pub fn failure_opens(state: BreakerState, failures_before: i32, threshold: u32) -> bool {
    state == BreakerState::HalfOpen
        || (state == BreakerState::Closed
            && i64::from(failures_before.max(0)) + 1 >= i64::from(threshold))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN_FOR: Duration = Duration::from_secs(60);
    const PROBE: Duration = Duration::from_secs(10);

    fn view(
        state: BreakerState,
        opened_ago: i64,
        probe_ago: Option<i64>,
    ) -> (BreakerView, DateTime<Utc>) {
        let now = Utc::now();
        (
            BreakerView {
                state,
                consecutive_failures: 3,
                opened_at: Some(now - chrono::Duration::seconds(opened_ago)),
                probe_started_at: probe_ago.map(|s| now - chrono::Duration::seconds(s)),
            },
            now,
        )
    }

    #[test]
    fn closed_lets_calls_through() {
        let (v, now) = view(BreakerState::Closed, 0, None);
        assert_eq!(admit(&v, now, OPEN_FOR, PROBE), Admission::Allow);
    }

    #[test]
    fn open_rejects_until_the_window_passes_then_offers_one_probe() {
        let (v, now) = view(BreakerState::Open, 59, None);
        assert_eq!(admit(&v, now, OPEN_FOR, PROBE), Admission::Reject);
        let (v, now) = view(BreakerState::Open, 60, None);
        assert_eq!(admit(&v, now, OPEN_FOR, PROBE), Admission::TryProbe);
    }

    #[test]
    fn half_open_rejects_others_while_the_probe_runs() {
        let (v, now) = view(BreakerState::HalfOpen, 70, Some(1));
        assert_eq!(admit(&v, now, OPEN_FOR, PROBE), Admission::Reject);
        let (v, now) = view(BreakerState::HalfOpen, 90, Some(11));
        assert_eq!(admit(&v, now, OPEN_FOR, PROBE), Admission::TryProbe);
    }

    #[test]
    fn states_round_trip() {
        for s in [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
        ] {
            assert_eq!(s.as_str().parse::<BreakerState>(), Ok(s));
        }
    }
}
