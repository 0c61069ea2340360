//! Rolling updates (issue 12) as pure rules: the request's parts, the steps
//! of a server, and what one tick of a rollout does with what it observes.
//!
//! A server goes `pending → draining → drained → updating → updated →
//! healthy → ready` (or `failed`, or `skipped` by an operator). Entering a
//! step may ask for an action (through the ordinary action path) or for the
//! update hook; a step is left once that action succeeded and the step's own
//! condition holds (no sessions left, hook succeeded, check up long enough).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::state::{AdminState, OpState};

/// Where a server stands in its rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Pending,
    Draining,
    Drained,
    Updating,
    Updated,
    Healthy,
    Ready,
    Failed,
    Skipped,
}

impl Step {
    pub const ALL: [Step; 9] = [
        Step::Pending,
        Step::Draining,
        Step::Drained,
        Step::Updating,
        Step::Updated,
        Step::Healthy,
        Step::Ready,
        Step::Failed,
        Step::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Pending => "pending",
            Step::Draining => "draining",
            Step::Drained => "drained",
            Step::Updating => "updating",
            Step::Updated => "updated",
            Step::Healthy => "healthy",
            Step::Ready => "ready",
            Step::Failed => "failed",
            Step::Skipped => "skipped",
        }
    }

    /// Out of traffic because of the rollout (counts against
    /// `max_unavailable_per_backend`): started and not back, or failed.
    pub fn is_out(self) -> bool {
        !matches!(self, Step::Pending | Step::Ready | Step::Skipped)
    }

    /// Started and not finished: a tick still has work for it.
    pub fn in_flight(self) -> bool {
        matches!(
            self,
            Step::Draining | Step::Drained | Step::Updating | Step::Updated | Step::Healthy
        )
    }

    /// Done with, for the wave: back in traffic or left out by an operator.
    pub fn is_done(self) -> bool {
        matches!(self, Step::Ready | Step::Skipped)
    }

    /// The action entering this step asks for, with its tag in the
    /// transaction id. `maint` controls the two that only exist with
    /// `maint_during_update`.
    pub fn entry_action(self, maint: bool) -> Option<(AdminState, &'static str)> {
        match self {
            Step::Draining => Some((AdminState::Drain, "drain")),
            Step::Drained if maint => Some((AdminState::Maint, "maint")),
            // Out of maint, still without traffic, so HAProxy's checks run
            // again for the health gate.
            Step::Updated if maint => Some((AdminState::Drain, "checks")),
            Step::Healthy => Some((AdminState::Ready, "ready")),
            _ => None,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Step {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Step::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("unknown rollout step {s:?}"))
    }
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutStatus {
    /// Recorded, held until its approval is decided; its servers are taken.
    AwaitingApproval,
    Running,
    Paused,
    Halted,
    Aborting,
    Aborted,
    Completed,
    /// Its approval was rejected or expired: it never started.
    Rejected,
}

impl RolloutStatus {
    pub const ALL: [RolloutStatus; 8] = [
        RolloutStatus::AwaitingApproval,
        RolloutStatus::Running,
        RolloutStatus::Paused,
        RolloutStatus::Halted,
        RolloutStatus::Aborting,
        RolloutStatus::Aborted,
        RolloutStatus::Completed,
        RolloutStatus::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutStatus::AwaitingApproval => "awaiting_approval",
            RolloutStatus::Running => "running",
            RolloutStatus::Paused => "paused",
            RolloutStatus::Halted => "halted",
            RolloutStatus::Aborting => "aborting",
            RolloutStatus::Aborted => "aborted",
            RolloutStatus::Completed => "completed",
            RolloutStatus::Rejected => "rejected",
        }
    }

    /// Not finished: its servers belong to it (overlap check), ticks run.
    pub fn is_active(self) -> bool {
        !matches!(
            self,
            RolloutStatus::Aborted | RolloutStatus::Completed | RolloutStatus::Rejected
        )
    }

    /// Active and started: its ticks do work (one awaiting approval waits).
    pub fn ticks(self) -> bool {
        self.is_active() && self != RolloutStatus::AwaitingApproval
    }
}

impl fmt::Display for RolloutStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RolloutStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        RolloutStatus::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("unknown rollout status {s:?}"))
    }
}

/// What to do when sessions outlast `drain.timeout_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    Halt,
    ShutdownSessions,
}

/// The timing parts of a rollout, as stored in its `spec`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Timings {
    pub drain_timeout_secs: u64,
    pub drain_poll_ms: u64,
    pub on_timeout: OnTimeout,
    pub maint_during_update: bool,
    pub healthy_for_secs: u64,
    pub health_timeout_secs: u64,
    pub soak_secs: u64,
    pub max_unavailable_per_backend: u32,
}

/// A rollout's request as stored (`haproxy_rollouts.spec`): the parts as
/// asked, validated, and the timings resolved with their defaults.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RolloutSpec {
    /// As a batch's (`server_ids`, `application_ids`, `application_group_id`).
    pub targets: serde_json::Value,
    /// `1` or `"25%"`.
    pub wave_size: serde_json::Value,
    pub timings: Timings,
    /// The `update` object as asked (`domain::rollout_hook` reads it).
    pub update: serde_json::Value,
}

/// Wave size: a count, or a percentage of the targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaveSize {
    Count(u32),
    Percent(u32),
}

impl WaveSize {
    /// Parses `1` or `"25%"`: at least 1 server, at most 100 %.
    ///
    /// # Errors
    /// A sentence for a 422.
    pub fn parse(v: &serde_json::Value) -> Result<WaveSize, String> {
        let bad = || {
            format!(
                "wave.size must be a number of servers (>= 1) or a percentage like \"25%\" (1% to 100%), not {v}"
            )
        };
        if let Some(n) = v.as_u64() {
            return u32::try_from(n)
                .ok()
                .filter(|n| *n >= 1)
                .map(WaveSize::Count)
                .ok_or_else(bad);
        }
        let text = v.as_str().ok_or_else(bad)?;
        let pct = text.strip_suffix('%').ok_or_else(bad)?;
        pct.trim()
            .parse::<u32>()
            .ok()
            .filter(|p| (1..=100).contains(p))
            .map(WaveSize::Percent)
            .ok_or_else(bad)
    }

    /// Servers per wave for `total` targets (a percentage rounds up).
    pub fn servers(self, total: usize) -> usize {
        let n = match self {
            WaveSize::Count(n) => usize::try_from(n).unwrap_or(usize::MAX),
            WaveSize::Percent(p) => (total * usize::try_from(p).unwrap_or(100)).div_ceil(100),
        };
        n.clamp(1, total.max(1))
    }
}

/// A target server as the plan orders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedServer {
    pub server_id: i64,
    pub backend_id: i64,
    pub wave: i32,
    pub position: i32,
}

/// Orders the targets round-robin across backends (so a wave spreads over
/// backends instead of taking one backend's servers in a row) and cuts the
/// order into waves of `per_wave`. Input: (server_id, backend_id), any order.
pub fn plan_waves(mut targets: Vec<(i64, i64)>, per_wave: usize) -> Vec<PlannedServer> {
    targets.sort_unstable_by_key(|(s, b)| (*b, *s));
    let mut rank: std::collections::HashMap<i64, usize> = std::collections::HashMap::new();
    let mut ranked: Vec<(usize, i64, i64)> = targets
        .into_iter()
        .map(|(s, b)| {
            let r = rank.entry(b).or_insert(0);
            *r += 1;
            (*r, b, s)
        })
        .collect();
    ranked.sort_unstable();
    let per_wave = per_wave.max(1);
    ranked
        .into_iter()
        .enumerate()
        .map(|(i, (_, backend_id, server_id))| PlannedServer {
            server_id,
            backend_id,
            wave: i32::try_from(i / per_wave).unwrap_or(i32::MAX),
            position: i32::try_from(i).unwrap_or(i32::MAX),
        })
        .collect()
}

/// Namespace of rollout transaction ids (a fixed random UUID).
const ROLLOUT_NAMESPACE: Uuid = Uuid::from_u128(0x91c3_5d0e_7a24_4b6f_a8e1_3f90_c2d7_4e5b);

/// The transaction id of one step's action for one server: UUIDv5 of (the
/// rollout's transaction id, server, step tag, attempt), so a redelivered
/// tick never acts twice and a resume (attempt + 1) acts again.
pub fn step_transaction_id(rollout_tx: Uuid, server_id: i64, tag: &str, attempt: i32) -> Uuid {
    Uuid::new_v5(
        &ROLLOUT_NAMESPACE,
        format!("{rollout_tx}|{server_id}|{tag}|{attempt}").as_bytes(),
    )
}

/// The advisory lock key of one rollout server's update hook: held while
/// the hook runs, so it never runs twice at the same time for one server.
pub fn hook_lock_key(server_row_id: i64) -> i64 {
    const NAMESPACE: i64 = 0x524b_0000_0000_0000; // "RK"
    NAMESPACE ^ (server_row_id & 0x0000_FFFF_FFFF_FFFF)
}

/// How the action of the current step ended, as far as known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionOutcome {
    /// Not recorded: the step was entered again by a resume (a new
    /// attempt), so its action is still to be asked for.
    Missing,
    /// Pending or running.
    Waiting,
    Succeeded,
    /// failed, rejected or superseded, with what the row says.
    Ended(String),
}

/// What HAProxy says of the server now (through its agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Live {
    pub admin_state: AdminState,
    pub op_state: OpState,
    pub sessions: u64,
}

/// One server as a tick sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerView {
    pub step: Step,
    pub step_started_at: Option<DateTime<Utc>>,
    pub healthy_since: Option<DateTime<Utc>>,
    /// The entry action of the current step (when it has one).
    pub action: ActionOutcome,
    /// `None` when the agent could not be read this tick.
    pub live: Option<Live>,
    /// The hook's exit code once it finished (`None` while it runs).
    pub hook_exit_code: Option<i32>,
    pub hook_finished: bool,
}

/// What a tick does with one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Move {
    /// Nothing yet.
    Stay,
    /// Ask again for the current step's action (a resumed step).
    Reenter,
    /// Enter `to` (its entry action or hook is asked for by the caller).
    To(Step),
    /// Sessions outlasted the drain timeout: shut them down, stay.
    ShutdownSessions,
    /// The check is up: remember since when, stay.
    HealthySince(DateTime<Utc>),
    /// The check went down again: forget since when, stay.
    NotHealthy,
    /// The server failed in its step; the rollout halts.
    Fail(String),
}

fn secs_since(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> i64 {
    t.map_or(0, |t| now.signed_duration_since(t).num_seconds())
}

fn over(t: Option<DateTime<Utc>>, now: DateTime<Utc>, limit_secs: u64) -> bool {
    u64::try_from(secs_since(t, now)).unwrap_or(0) >= limit_secs
}

/// One server's move in a tick (not `pending`: starting is the rollout's
/// decision, [`may_start`]).
pub fn advance(s: &ServerView, t: &Timings, now: DateTime<Utc>) -> Move {
    // Every step with an entry action waits for it first.
    if s.step.entry_action(t.maint_during_update).is_some() {
        match &s.action {
            ActionOutcome::Missing => return Move::Reenter,
            ActionOutcome::Waiting => return Move::Stay,
            ActionOutcome::Ended(why) => {
                return Move::Fail(format!("the {} action ended: {why}", s.step));
            }
            ActionOutcome::Succeeded => {}
        }
    }
    match s.step {
        Step::Draining => {
            let Some(live) = s.live else {
                return Move::Stay;
            };
            if live.sessions == 0 {
                return Move::To(Step::Drained);
            }
            if over(s.step_started_at, now, t.drain_timeout_secs) {
                return match t.on_timeout {
                    OnTimeout::ShutdownSessions => Move::ShutdownSessions,
                    OnTimeout::Halt => Move::Fail(format!(
                        "drain_timeout: {} sessions still open after {} s",
                        live.sessions, t.drain_timeout_secs
                    )),
                };
            }
            Move::Stay
        }
        Step::Drained => Move::To(Step::Updating),
        Step::Updating => match (s.hook_finished, s.hook_exit_code) {
            (true, Some(0)) => Move::To(Step::Updated),
            (true, code) => Move::Fail(format!(
                "update_failed: the hook exited with {}",
                code.map_or_else(|| "no exit code (killed)".to_owned(), |c| c.to_string())
            )),
            (false, _) => Move::Stay,
        },
        Step::Updated => health_gate(s, t, now),
        Step::Healthy => Move::To(Step::Ready),
        Step::Pending | Step::Ready | Step::Failed | Step::Skipped => Move::Stay,
    }
}

/// After the update: `ready` only once HAProxy's check says up for
/// `healthy_for_secs`. A server without checks (`no_check`) passes at once:
/// there is nothing to wait for (documented; the caller logs a warning).
fn health_gate(s: &ServerView, t: &Timings, now: DateTime<Utc>) -> Move {
    let Some(live) = s.live else {
        return Move::Stay;
    };
    match live.op_state {
        OpState::NoCheck => Move::To(Step::Healthy),
        OpState::Up => match s.healthy_since {
            None if t.healthy_for_secs == 0 => Move::To(Step::Healthy),
            None => Move::HealthySince(now),
            Some(since) if over(Some(since), now, t.healthy_for_secs) => Move::To(Step::Healthy),
            Some(_) => Move::Stay,
        },
        _ if over(s.step_started_at, now, t.health_timeout_secs) => Move::Fail(format!(
            "health_timeout: the check did not stay up for {} s within {} s (now {})",
            t.healthy_for_secs, t.health_timeout_secs, live.op_state
        )),
        _ if s.healthy_since.is_some() => Move::NotHealthy,
        _ => Move::Stay,
    }
}

/// A backend as the start decision sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendLoad {
    /// Servers of this backend the rollout holds out of traffic.
    pub out: u32,
    /// Servers of the backend that are `ready` and up now, this one included.
    pub ready_up: u32,
}

/// Whether a pending server may start: the backend stays within
/// `max_unavailable_per_backend` and keeps at least one ready server
/// besides it (rule 10; a rollout never forces).
pub fn may_start(backend: BackendLoad, t: &Timings, server_is_ready_up: bool) -> bool {
    let others_ready = backend
        .ready_up
        .saturating_sub(u32::from(server_is_ready_up));
    backend.out < t.max_unavailable_per_backend.max(1) && others_ready >= 1
}

pub mod tick;

#[cfg(test)]
mod tests;
