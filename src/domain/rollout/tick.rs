//! One tick of a rollout: every server's move, which pending servers
//! start, and where the rollout goes (wave done, soak, next wave, halted,
//! completed, aborted). Pure: the worker reads, calls [`plan`], writes.

use chrono::{DateTime, Utc};

use super::{BackendLoad, Move, RolloutStatus, ServerView, Step, Timings, advance, may_start};

/// One server of the rollout as the tick sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TickServer {
    pub backend_id: i64,
    pub wave: i32,
    pub view: ServerView,
    /// `ready` and up in HAProxy now (from the database's picture).
    pub is_ready_up: bool,
}

/// The rollout as the tick sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TickInput {
    pub status: RolloutStatus,
    pub current_wave: i32,
    pub waves: i32,
    pub wave_done_at: Option<DateTime<Utc>>,
    pub timings: Timings,
    pub now: DateTime<Utc>,
    pub servers: Vec<TickServer>,
    /// Per backend: its servers that are `ready` and up but not targets of
    /// this rollout (they keep the backend serving too).
    pub outside_ready: std::collections::HashMap<i64, u32>,
}

/// Something the rollout as a whole did, for its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutChange {
    WaveCompleted(i32),
    Halted(String),
    Completed,
    Aborted,
}

/// What the tick decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TickPlan {
    /// (index into `servers`, move); `Stay` is left out.
    pub moves: Vec<(usize, Move)>,
    pub status: Option<RolloutStatus>,
    pub current_wave: Option<i32>,
    /// `Some(None)` clears it.
    pub wave_done_at: Option<Option<DateTime<Utc>>>,
    pub changes: Vec<RolloutChange>,
    /// Whether another tick is needed (something is running or can run).
    pub keep_ticking: bool,
}

/// Plans one tick.
pub fn plan(input: &TickInput) -> TickPlan {
    let mut out = TickPlan::default();
    let t = &input.timings;
    let aborting = input.status == RolloutStatus::Aborting;
    let mut steps: Vec<Step> = input.servers.iter().map(|s| s.view.step).collect();
    for (i, s) in input.servers.iter().enumerate() {
        let m = match s.view.step {
            // Aborting: a server not yet updated goes straight back to ready
            // once its action is done (the ready action of `healthy`).
            Step::Draining | Step::Drained if aborting => match advance(&s.view, t, input.now) {
                Move::Fail(e) => Move::Fail(e),
                Move::Stay if s.view.action != super::ActionOutcome::Succeeded => Move::Stay,
                _ => Move::To(Step::Healthy),
            },
            _ => advance(&s.view, t, input.now),
        };
        if let Move::To(to) = m {
            steps[i] = to;
        }
        if let Move::Fail(_) = m {
            steps[i] = Step::Failed;
        }
        if m != Move::Stay {
            out.moves.push((i, m));
        }
    }
    let failed = out.moves.iter().find_map(|(_, m)| match m {
        Move::Fail(e) => Some(e.clone()),
        _ => None,
    });
    if let Some(reason) = failed.filter(|_| input.status == RolloutStatus::Running) {
        out.status = Some(RolloutStatus::Halted);
        out.changes.push(RolloutChange::Halted(reason));
    }
    let status = out.status.unwrap_or(input.status);
    if status == RolloutStatus::Running {
        start_pending(input, &mut steps, &mut out);
        advance_wave(input, &steps, &mut out);
    }
    let in_flight = steps.iter().any(|s| s.in_flight());
    if aborting && !in_flight {
        out.status = Some(RolloutStatus::Aborted);
        out.changes.push(RolloutChange::Aborted);
    }
    let final_status = out.status.unwrap_or(input.status);
    out.keep_ticking = match final_status {
        RolloutStatus::Running | RolloutStatus::Aborting => true,
        RolloutStatus::Paused | RolloutStatus::Halted => in_flight,
        RolloutStatus::Aborted
        | RolloutStatus::Completed
        | RolloutStatus::AwaitingApproval
        | RolloutStatus::Rejected => false,
    };
    out
}

/// Starts the current wave's pending servers that the budget allows.
fn start_pending(input: &TickInput, steps: &mut [Step], out: &mut TickPlan) {
    let wave = out.current_wave.unwrap_or(input.current_wave);
    for (i, s) in input.servers.iter().enumerate() {
        if steps[i] != Step::Pending || s.wave != wave {
            continue;
        }
        let out_now = u32::try_from(
            input
                .servers
                .iter()
                .zip(steps.iter())
                .filter(|(o, st)| o.backend_id == s.backend_id && st.is_out())
                .count(),
        )
        .unwrap_or(u32::MAX);
        let ready_up = u32::try_from(
            input
                .servers
                .iter()
                .zip(steps.iter())
                .filter(|(o, st)| o.backend_id == s.backend_id && o.is_ready_up && !st.is_out())
                .count(),
        )
        .unwrap_or(u32::MAX);
        let load = BackendLoad {
            out: out_now,
            ready_up: ready_up + input.outside_ready.get(&s.backend_id).copied().unwrap_or(0),
        };
        if may_start(load, &input.timings, s.is_ready_up) {
            steps[i] = Step::Draining;
            out.moves.push((i, Move::To(Step::Draining)));
        }
    }
}

/// Wave done → soak → next wave, or completed.
fn advance_wave(input: &TickInput, steps: &[Step], out: &mut TickPlan) {
    let wave = input.current_wave;
    let done = input
        .servers
        .iter()
        .zip(steps.iter())
        .filter(|(s, _)| s.wave == wave)
        .all(|(_, st)| st.is_done());
    if !done {
        return;
    }
    let Some(done_at) = input.wave_done_at else {
        out.wave_done_at = Some(Some(input.now));
        out.changes.push(RolloutChange::WaveCompleted(wave));
        if input.timings.soak_secs > 0 {
            return;
        }
        return next_wave(input, out);
    };
    let soaked = input.now.signed_duration_since(done_at).num_seconds();
    if u64::try_from(soaked).unwrap_or(0) >= input.timings.soak_secs {
        next_wave(input, out);
    }
}

fn next_wave(input: &TickInput, out: &mut TickPlan) {
    if input.current_wave + 1 >= input.waves {
        out.status = Some(RolloutStatus::Completed);
        out.changes.push(RolloutChange::Completed);
    } else {
        out.current_wave = Some(input.current_wave + 1);
        out.wave_done_at = Some(None);
    }
}
