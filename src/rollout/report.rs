//! What the `rollout` commands print, as pure text from rows: the
//! rollout's headline, one line per server, the list of rollouts, the
//! lines of what changed between two reads, and each wave's progress.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::db::rollouts::{RolloutRow, RolloutServerRow, TargetInfo};
use crate::domain::rollout::{RolloutStatus, Step};

/// Most servers named on the "in progress" line.
const IN_PROGRESS_NAMED: usize = 8;

/// Display names of a rollout's servers (`instance/backend/server`), by
/// the rollout server row's id.
#[derive(Debug, Clone, Default)]
pub struct Names(HashMap<i64, String>);

impl Names {
    /// From the rollout's targets.
    pub fn new(infos: &[TargetInfo]) -> Self {
        Self(
            infos
                .iter()
                .map(|t| {
                    let name = format!("{}/{}/{}", t.instance_name, t.backend_name, t.server_name);
                    (t.row_id, name)
                })
                .collect(),
        )
    }

    /// The name of `s` (its server id when unknown).
    pub fn of(&self, s: &RolloutServerRow) -> String {
        self.0
            .get(&s.id)
            .cloned()
            .unwrap_or_else(|| format!("server {}", s.server_id))
    }
}

/// A rollout and its servers, read together.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub rollout: RolloutRow,
    pub servers: Vec<RolloutServerRow>,
}

/// `wave k/n`: the wave in progress, counted from 1.
pub fn wave_label(r: &RolloutRow) -> String {
    let n = r.waves.max(1);
    format!("wave {}/{n}", (r.current_wave + 1).clamp(1, n))
}

fn done_count(servers: &[RolloutServerRow]) -> usize {
    servers.iter().filter(|s| s.step.is_done()).count()
}

/// `rollout 7 running: wave 2/3, 4/12 servers done, by cli:alice (deploy 1.4.2)`.
pub fn headline(s: &Snapshot) -> String {
    let r = &s.rollout;
    let reason = r
        .reason
        .as_deref()
        .map(|x| format!(" ({x})"))
        .unwrap_or_default();
    format!(
        "rollout {} {}: {}, {}/{} servers done, by {}{reason}",
        r.id,
        r.status,
        wave_label(r),
        done_count(&s.servers),
        r.total,
        r.actor
    )
}

/// Why the rollout halted, when it did.
pub fn halted_line(r: &RolloutRow) -> Option<String> {
    (r.status == RolloutStatus::Halted).then(|| {
        format!(
            "halted: {}",
            r.halted_reason.as_deref().unwrap_or("(no reason recorded)")
        )
    })
}

/// A server's step, with the step it failed in.
fn step_text(s: &RolloutServerRow) -> String {
    match (s.step, s.failed_step) {
        (Step::Failed, Some(f)) => format!("failed({f})"),
        (step, _) => step.to_string(),
    }
}

/// The hook's exit code, `running` while it runs, `-` otherwise.
fn hook_text(s: &RolloutServerRow) -> String {
    match (s.hook_started_at, s.hook_finished_at, s.hook_exit_code) {
        (_, Some(_), Some(code)) => code.to_string(),
        (_, Some(_), None) => "killed".into(),
        (Some(_), None, _) if s.step == Step::Updating => "running".into(),
        _ => "-".into(),
    }
}

/// One line per server, under a header: id, name, wave, step, attempt,
/// hook exit code, error.
pub fn server_table(s: &Snapshot, names: &Names) -> String {
    let width = s
        .servers
        .iter()
        .map(|x| names.of(x).len())
        .max()
        .unwrap_or(0)
        .max(4);
    let mut out = format!(
        "{:<9} {:<width$} {:<5} {:<18} {:<7} {:<7} ERROR\n",
        "SERVER_ID", "NAME", "WAVE", "STEP", "ATTEMPT", "HOOK"
    );
    for x in &s.servers {
        let _ = writeln!(
            out,
            "{:<9} {:<width$} {:<5} {:<18} {:<7} {:<7} {}",
            x.server_id,
            names.of(x),
            x.wave + 1,
            step_text(x),
            x.attempt,
            hook_text(x),
            x.error.as_deref().unwrap_or("-")
        );
    }
    out
}

/// What `status` prints: headline, why it halted, the servers.
pub fn status_text(s: &Snapshot, names: &Names) -> String {
    let mut out = headline(s);
    out.push('\n');
    if let Some(h) = halted_line(&s.rollout) {
        out.push_str(&h);
        out.push('\n');
    }
    out.push_str(&server_table(s, names));
    out
}

/// What `list` prints.
pub fn list_table(rows: &[RolloutRow]) -> String {
    let mut out = format!(
        "{:<6} {:<9} {:<11} {:<6} {:<20} {:<20} REASON\n",
        "ID", "STATUS", "WAVE", "TOTAL", "ACTOR", "CREATED"
    );
    for r in rows {
        let wave = wave_label(r);
        let _ = writeln!(
            out,
            "{:<6} {:<9} {:<11} {:<6} {:<20} {:<20} {}",
            r.id,
            r.status,
            wave.trim_start_matches("wave "),
            r.total,
            r.actor,
            r.created_at.format("%Y-%m-%dT%H:%M:%SZ"),
            r.reason.as_deref().unwrap_or("-")
        );
    }
    out
}

/// One server's line when its step changed.
fn server_change(s: &RolloutServerRow, names: &Names) -> String {
    let mut line = format!("{} (wave {}): {}", names.of(s), s.wave + 1, step_text(s));
    if s.attempt > 0 {
        let _ = write!(line, ", attempt {}", s.attempt);
    }
    if let Some(e) = &s.error {
        let _ = write!(line, ": {e}");
    }
    line
}

/// The lines of what changed from `prev` to `next` (everything started
/// when there is no `prev`): the rollout's status or wave, each server
/// whose step or attempt moved.
pub fn changes(prev: Option<&Snapshot>, next: &Snapshot, names: &Names) -> Vec<String> {
    let mut lines = Vec::new();
    let r = &next.rollout;
    let moved = prev
        .is_none_or(|p| p.rollout.status != r.status || p.rollout.current_wave != r.current_wave);
    if moved {
        lines.push(format!("rollout {} {}: {}", r.id, r.status, wave_label(r)));
        lines.extend(halted_line(r));
    }
    let before: HashMap<i64, (Step, i32)> = prev
        .map(|p| {
            p.servers
                .iter()
                .map(|s| (s.id, (s.step, s.attempt)))
                .collect()
        })
        .unwrap_or_default();
    for s in &next.servers {
        let was = before.get(&s.id).copied().unwrap_or((Step::Pending, 0));
        if was != (s.step, s.attempt) {
            lines.push(server_change(s, names));
        }
    }
    lines
}

/// How far one wave is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaveProgress {
    /// From 0.
    pub wave: i32,
    pub total: u64,
    /// Ready or skipped.
    pub done: u64,
    pub failed: u64,
    /// In a step now.
    pub busy: u64,
    /// Some server of it has left `pending`.
    pub started: bool,
}

impl WaveProgress {
    /// Every server is ready or skipped.
    pub fn is_done(&self) -> bool {
        self.done == self.total
    }

    /// `2 in progress, 1 failed` / `done`.
    pub fn message(&self) -> String {
        if self.is_done() {
            return "done".into();
        }
        let mut parts = Vec::new();
        if self.busy > 0 {
            parts.push(format!("{} in progress", self.busy));
        }
        if self.failed > 0 {
            parts.push(format!("{} failed", self.failed));
        }
        parts.join(", ")
    }
}

/// Every wave's progress, in order.
pub fn waves(s: &Snapshot) -> Vec<WaveProgress> {
    let n = usize::try_from(s.rollout.waves.max(0)).unwrap_or(0);
    let mut out: Vec<WaveProgress> = (0..n)
        .map(|w| WaveProgress {
            wave: i32::try_from(w).unwrap_or(i32::MAX),
            total: 0,
            done: 0,
            failed: 0,
            busy: 0,
            started: false,
        })
        .collect();
    for x in &s.servers {
        let Some(w) = usize::try_from(x.wave).ok().and_then(|w| out.get_mut(w)) else {
            continue;
        };
        w.total += 1;
        w.done += u64::from(x.step.is_done());
        w.failed += u64::from(x.step == Step::Failed);
        w.busy += u64::from(x.step.in_flight());
        w.started |= x.step != Step::Pending;
    }
    out
}

/// `in progress: lb-1/web/s2 draining, lb-1/api/s1 updating`.
pub fn in_progress_line(s: &Snapshot, names: &Names) -> String {
    let busy: Vec<String> = s
        .servers
        .iter()
        .filter(|x| x.step.in_flight())
        .map(|x| format!("{} {}", names.of(x), x.step))
        .collect();
    if busy.is_empty() {
        return "in progress: none".into();
    }
    let more = busy.len().saturating_sub(IN_PROGRESS_NAMED);
    let mut line = format!(
        "in progress: {}",
        busy.iter()
            .take(IN_PROGRESS_NAMED)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );
    if more > 0 {
        let _ = write!(line, " and {more} more");
    }
    line
}

/// Servers the rollout left out of traffic: failed, skipped (a failed
/// server an operator left out), or stopped mid-step by an abort.
pub fn left_out(s: &Snapshot, names: &Names) -> Vec<String> {
    s.servers
        .iter()
        .filter(|x| x.step.is_out() || x.step == Step::Skipped)
        .map(|x| format!("{} {}", names.of(x), step_text(x)))
        .collect()
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
