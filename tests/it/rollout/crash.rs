//! Proof 5 of issue 12: a 12-server rollout run by worker processes that
//! are SIGKILLed 3 times at random points (seeded; `FAULTS_SEED` replays)
//! and restarted, with a scheduler process whose sweeper ticks a rollout
//! that stopped ticking. It completes; every server saw each of its
//! rollout's `set server` commands once at HAProxy's socket; its update
//! hook (the fixture `count-run.sh`) ran once, again only where a kill hit
//! that hook, and never twice at the same time.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::Fleet;
use crate::harness::SeededRng;
use crate::harness::demo_apps::fixture_dir;

const NAMES: [&str; 12] = [
    "w1", "w2", "w3", "w4", "w5", "w6", "a1", "a2", "a3", "a4", "a5", "a6",
];

/// A child process killed when dropped (a failed assertion leaves none).
struct Process(Child);

impl Process {
    fn sigkill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// The sections the processes read from a file: the fleet's hook
/// allow-list, and a sweeper every second.
fn config_file(fleet: &Fleet, dir: &Path) -> PathBuf {
    let r = &fleet.config.rollout;
    let quoted = |p: &Path| format!("{:?}", p.display().to_string());
    let commands: Vec<String> = r.commands.iter().map(|c| quoted(c)).collect();
    let text = format!(
        "[rollout]\nplaybook_dir = {}\nansible_playbook = {}\ncommands = [{}]\n\n\
         [sweeper]\ninterval_secs = 1\n",
        quoted(r.playbook_dir.as_deref().expect("playbook dir")),
        quoted(&r.ansible_playbook),
        commands.join(", ")
    );
    let path = dir.join("rollout.toml");
    std::fs::write(&path, text).expect("config file");
    path
}

fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The fixture hook's record for one app: (time, `start`/`end`/`overlap`).
fn hook_record(dir: &Path) -> Vec<(f64, String)> {
    std::fs::read_to_string(dir.join("hook-runs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.parse().ok()?, f.next()?.to_owned()))
        })
        .collect()
}

fn backend_of(name: &str) -> &'static str {
    if name.starts_with('w') { "web" } else { "api" }
}

#[tokio::test]
async fn a_rollout_of_12_servers_survives_3_worker_sigkills_acting_once_per_step() {
    let fleet = Fleet::without_worker(&NAMES).await;
    let ids = fleet.ids(&NAMES).await;
    let logs = tempfile::tempdir().expect("log dir");
    let file = config_file(&fleet, logs.path());
    let spawn = |role: &str, log: &str| {
        let log = logs.path().join(log);
        Process(
            fleet
                .sys
                .spawn_process_with_file(role, &fleet.config, &log, &file),
        )
    };
    let _scheduler = spawn("scheduler", "scheduler.log");
    let mut worker = spawn("worker", "worker-0.log");
    let hook = fixture_dir().join("count-run.sh");
    let id = fleet
        .start_rollout(&json!({
            "targets": {"server_ids": ids},
            "wave": {"size": "25%", "max_unavailable_per_backend": 2},
            "drain": {"timeout_secs": 30, "poll_ms": 200},
            "update": {"kind": "command", "argv": [hook, fleet.apps.root(), "{server}", "1"], "timeout_secs": 30},
            "health": {"healthy_for_secs": 0, "timeout_secs": 60},
        }))
        .await;

    let mut rng = SeededRng::from_env_or_clock("rollout crash");
    let mut kills = Vec::new();
    for k in 0..3 {
        tokio::time::sleep(Duration::from_millis(rng.range(800, 3000))).await;
        let r = fleet.rollout(id).await;
        assert_eq!(r["status"], "running", "kill {k} would come too late: {r}");
        worker.sigkill();
        kills.push(epoch_now());
        eprintln!("kill {k} at {:.3}", kills[k]);
        worker = spawn("worker", &format!("worker-{}.log", k + 1));
    }
    let done = completed(&fleet, id, logs.path()).await;

    for (name, server) in NAMES.iter().zip(&ids) {
        let s = Fleet::server_of(&done, *server);
        assert_eq!(s["step"], "ready", "{s}");
        let backend = backend_of(name);
        // The rollout's design (`Step::entry_action`): drain, maint, drain
        // again for the health gate (checks back on), ready.
        for (state, times) in [("drain", 2), ("maint", 1), ("ready", 1)] {
            let line = format!("set server {backend}/{name} state {state}");
            let seen = fleet
                .spy
                .lines(&line)
                .iter()
                .filter(|l| **l == line)
                .count();
            assert_eq!(seen, times, "{line}");
        }
        let states: Vec<String> = fleet
            .action_changes(*server)
            .await
            .into_iter()
            .map(|c| c.state)
            .collect();
        assert_eq!(states, ["drain", "maint", "drain", "ready"], "{name}");
        check_hook_runs(name, fleet.apps.dir(name), &s, &kills);
    }
    let bits = fleet.haproxy.admin_bits().await;
    assert!(bits.iter().all(|(_, b)| *b == 0), "{bits:?}");
    assert!(
        fleet.sys.dead_letters().await.is_empty(),
        "nothing dead-lettered"
    );
}

/// Waits for the rollout to complete; else fails with it and the
/// processes' logs.
async fn completed(fleet: &Fleet, id: i64, logs: &Path) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while tokio::time::Instant::now() < deadline {
        let r = fleet.rollout(id).await;
        if r["status"] == "completed" {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut names: Vec<PathBuf> = std::fs::read_dir(logs)
        .expect("log dir")
        .filter_map(|e| Some(e.ok()?.path()))
        .collect();
    names.sort();
    for log in names {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        eprintln!(
            "--- {}\n{}",
            log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    panic!("rollout {id} did not complete: {}", fleet.rollout(id).await);
}

/// One run per server, another only after a kill that hit the run before;
/// never two at once.
fn check_hook_runs(name: &str, dir: &Path, row: &serde_json::Value, kills: &[f64]) {
    let record = hook_record(dir);
    assert!(
        record.iter().all(|(_, kind)| kind != "overlap"),
        "{name}: two runs of its hook at once: {record:?}"
    );
    let starts: Vec<f64> = record
        .iter()
        .filter(|(_, kind)| kind == "start")
        .map(|(t, _)| *t)
        .collect();
    assert!(!starts.is_empty(), "{name}: its hook never ran");
    // Each re-run follows a kill that hit the run before it (one hook may
    // be hit by two kills).
    for pair in starts.windows(2) {
        assert!(
            kills.iter().any(|k| (pair[0]..=pair[1]).contains(k)),
            "{name}: a re-run without a kill during the run before: {record:?}, kills {kills:?}"
        );
    }
    // Counted by the worker when it starts a run (a kill may fall between
    // counting and starting).
    let counted = row["hook_runs"].as_u64().unwrap_or(0) as usize;
    assert!(
        (starts.len()..=1 + kills.len()).contains(&counted),
        "{name}: hook_runs {counted}, {record:?}"
    );
    eprintln!("{name}: hook runs {}: {record:?}", starts.len());
}
