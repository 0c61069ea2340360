//! `rollout status ID --follow`: reads the rollout from PostgreSQL every
//! 500 ms and shows its progress until it completes, aborts or halts. On a
//! terminal, one bar per wave (servers done) and a line of the servers in a
//! step; elsewhere (CI, logs), a plain line per change.

use std::collections::VecDeque;
use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::report::{self, Names, Snapshot, WaveProgress};
use crate::db::rollouts;
use crate::db::{self, DbError, PgPool};
use crate::domain::rollout::RolloutStatus;

/// Time between two reads.
const REFRESH: Duration = Duration::from_millis(500);
/// Failed reads in a row before giving up (10 s).
const MAX_READ_FAILURES: u32 = 20;
/// Finished wave bars kept on screen; older ones become a printed line.
const FINISHED_BARS_KEPT: usize = 5;
/// Exit code of a follow that ended halted or aborted.
pub const EXIT_NOT_COMPLETED: u8 = 2;

/// Reads a rollout and its servers in one snapshot; `None`: no such rollout.
///
/// # Errors
/// [`DbError`].
pub async fn snapshot(pool: &PgPool, id: i64) -> Result<Option<Snapshot>, DbError> {
    db::run(pool, move |c| {
        c.build_transaction()
            .read_only()
            .repeatable_read()
            .run(|c| {
                let Some(rollout) = rollouts::get(c, id)? else {
                    return Ok(None);
                };
                let servers = rollouts::servers(c, id)?;
                Ok(Some(Snapshot { rollout, servers }))
            })
    })
    .await
}

/// The display names of a rollout's servers.
///
/// # Errors
/// [`DbError`].
pub async fn names(pool: &PgPool, id: i64) -> Result<Names, DbError> {
    let infos = db::run(pool, move |c| rollouts::target_infos(c, id)).await?;
    Ok(Names::new(&infos))
}

/// Follows rollout `id` until it ends; exit code 0 when it completed,
/// [`EXIT_NOT_COMPLETED`] when it halted or was aborted.
///
/// # Errors
/// No such rollout, or the database unreadable for 10 s.
pub async fn follow(pool: &PgPool, id: i64) -> anyhow::Result<ExitCode> {
    let names = names(pool, id).await?;
    let mut view = if std::io::stdout().is_terminal() {
        View::Bars(Bars::new())
    } else {
        View::Plain(None)
    };
    let mut failures = 0;
    loop {
        let snap = match snapshot(pool, id).await {
            Ok(Some(s)) => s,
            Ok(None) => anyhow::bail!("no rollout with id {id}"),
            Err(e) if failures < MAX_READ_FAILURES => {
                failures += 1;
                tracing::warn!(error = %e, rollout_id = id, "cannot read the rollout; trying again");
                tokio::time::sleep(REFRESH).await;
                continue;
            }
            Err(e) => return Err(anyhow::anyhow!("cannot read rollout {id}: {e}")),
        };
        failures = 0;
        view.show(&snap, &names);
        if let Some(code) = ending(snap.rollout.status) {
            view.finish();
            print!("{}", report::status_text(&snap, &names));
            println!("{}", ending_line(&snap, &names));
            return Ok(ExitCode::from(code));
        }
        tokio::time::sleep(REFRESH).await;
    }
}

/// The exit code when `status` ends a follow.
fn ending(status: RolloutStatus) -> Option<u8> {
    match status {
        RolloutStatus::Completed => Some(0),
        RolloutStatus::Halted | RolloutStatus::Aborted | RolloutStatus::Rejected => {
            Some(EXIT_NOT_COMPLETED)
        }
        RolloutStatus::AwaitingApproval
        | RolloutStatus::Running
        | RolloutStatus::Paused
        | RolloutStatus::Aborting => None,
    }
}

/// The last line: how it ended, and what it left out of traffic.
fn ending_line(s: &Snapshot, names: &Names) -> String {
    let r = &s.rollout;
    let out = report::left_out(s, names);
    let out = if out.is_empty() {
        String::new()
    } else {
        format!("; out of traffic: {}", out.join(", "))
    };
    match r.status {
        RolloutStatus::Completed => format!("rollout {} completed{out}", r.id),
        RolloutStatus::Halted => format!(
            "rollout {id} halted{out}; when the cause is fixed: `haproxy-control rollout resume {id}` \
             retries, `haproxy-control rollout skip {id} --server-id ID` leaves a failed server out",
            id = r.id
        ),
        _ => format!("rollout {} {}{out}", r.id, r.status),
    }
}

enum View {
    Bars(Bars),
    /// The last snapshot printed.
    Plain(Option<Snapshot>),
}

impl View {
    fn show(&mut self, snap: &Snapshot, names: &Names) {
        match self {
            View::Bars(b) => b.show(snap, names),
            View::Plain(prev) => {
                let at = chrono::Utc::now().format("%H:%M:%S");
                for line in report::changes(prev.as_ref(), snap, names) {
                    println!("{at} {line}");
                }
                *prev = Some(snap.clone());
            }
        }
    }

    fn finish(&mut self) {
        if let View::Bars(b) = self {
            b.finish();
        }
    }
}

/// The terminal display: a headline, a bar per started wave, the servers
/// in a step.
struct Bars {
    multi: MultiProgress,
    head: ProgressBar,
    busy: ProgressBar,
    /// By wave; created when the wave starts.
    waves: Vec<Option<ProgressBar>>,
    /// Waves whose bar finished, oldest first.
    finished: VecDeque<usize>,
}

fn line_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_bar())
}

fn wave_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>11} [{bar:40}] {pos:>4}/{len:<4} {msg}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

impl Bars {
    fn new() -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let head = multi.add(ProgressBar::new(0).with_style(line_style()));
        let busy = multi.add(ProgressBar::new(0).with_style(line_style()));
        Self {
            multi,
            head,
            busy,
            waves: Vec::new(),
            finished: VecDeque::new(),
        }
    }

    fn show(&mut self, snap: &Snapshot, names: &Names) {
        self.head.set_message(report::headline(snap));
        let waves = report::waves(snap);
        self.waves.resize(waves.len(), None);
        for w in &waves {
            if w.started || w.wave <= snap.rollout.current_wave {
                self.show_wave(w, waves.len());
            }
        }
        let mut busy = report::in_progress_line(snap, names);
        if let Some(h) = report::halted_line(&snap.rollout) {
            busy = format!("{h}\n{busy}");
        }
        self.busy.set_message(busy);
    }

    fn show_wave(&mut self, w: &WaveProgress, of: usize) {
        let Some(slot) = usize::try_from(w.wave)
            .ok()
            .filter(|i| *i < self.waves.len())
        else {
            return;
        };
        let bar = self.waves[slot].get_or_insert_with(|| {
            let bar = ProgressBar::new(w.total).with_style(wave_style());
            bar.set_prefix(format!("wave {}/{of}", slot + 1));
            self.multi.insert_before(&self.busy, bar)
        });
        if bar.is_finished() {
            return;
        }
        bar.set_position(w.done);
        if w.is_done() {
            bar.finish_with_message("done");
            self.finished.push_back(slot);
            self.drop_old_bars(of);
        } else {
            bar.set_message(w.message());
        }
    }

    /// Keeps at most [`FINISHED_BARS_KEPT`] finished bars; older ones are
    /// printed once above the display and removed.
    fn drop_old_bars(&mut self, of: usize) {
        while self.finished.len() > FINISHED_BARS_KEPT {
            let Some(old) = self.finished.pop_front() else {
                return;
            };
            if let Some(bar) = self.waves.get(old).and_then(Option::as_ref) {
                let _ = self.multi.println(format!(
                    "wave {}/{of} done: {} servers",
                    old + 1,
                    bar.length().unwrap_or(0)
                ));
                self.multi.remove(bar);
            }
        }
    }

    fn finish(&mut self) {
        self.head.finish();
        self.busy.finish_and_clear();
        for bar in self.waves.iter().flatten() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_completed_exits_zero_and_active_states_keep_following() {
        assert_eq!(ending(RolloutStatus::Completed), Some(0));
        for s in [RolloutStatus::Halted, RolloutStatus::Aborted] {
            assert_eq!(ending(s), Some(EXIT_NOT_COMPLETED));
        }
        for s in [
            RolloutStatus::Running,
            RolloutStatus::Paused,
            RolloutStatus::Aborting,
        ] {
            assert_eq!(ending(s), None);
        }
    }
}
