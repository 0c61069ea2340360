//! Load: 10 HAProxy instances of 1,000 servers each; 5,000 actions spread
//! over 60 s and a forced sync of every instance every second, against one
//! worker process. No action lost or doubled, every change has its history
//! row, everything final; the worker's peak memory is reported.
//!
//! Runs alone (see .config/nextest.toml): it uses the whole machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::json;
use uuid::Uuid;

use crate::harness::{SpiedLb, TestSystem, assert_db_matches_haproxy, final_check};

const INSTANCES: usize = 10;
/// 10 backends of 99 servers and a spare: 1,000 servers per instance.
const BACKENDS: usize = 10;
const PER_BACKEND: usize = 99;
/// Servers `s1..s50` of every backend are drained: 5,000 actions, each a
/// change; the other 49 and the spare stay ready, so the guard never refuses.
const DRAINED_PER_BACKEND: usize = 50;
const ACTIONS: usize = INSTANCES * BACKENDS * DRAINED_PER_BACKEND;
const SECONDS: usize = 60;
const TICKS_PER_SECOND: usize = 10;
/// The worker's memory target.
const RSS_TARGET_KB: u64 = 100 * 1024;

/// A `/proc/<pid>/status` field in kB.
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Samples the process's resident memory every 200 ms: the largest VmRSS
/// seen and the last VmHWM (the kernel's own peak) read.
struct RssSampler {
    peak_rss_kb: Arc<AtomicU64>,
    hwm_kb: Arc<AtomicU64>,
    samples: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let (peak_rss_kb, hwm_kb, samples) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let (p, h, n) = (peak_rss_kb.clone(), hwm_kb.clone(), samples.clone());
        let task = tokio::spawn(async move {
            loop {
                if let Some(rss) = status_kb(pid, "VmRSS:") {
                    p.fetch_max(rss, Ordering::Relaxed);
                    n.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(hwm) = status_kb(pid, "VmHWM:") {
                    h.store(hwm, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self {
            peak_rss_kb,
            hwm_kb,
            samples,
            task,
        }
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_instances_of_1000_servers_take_5000_actions_and_a_sync_per_second_each_for_60_s() {
    let setup = Instant::now();
    let lbs = join_all((0..INSTANCES).map(|_| SpiedLb::fleet(BACKENDS, PER_BACKEND))).await;
    let sys = TestSystem::start().await;
    let mut instance_ids = Vec::new();
    for (i, lb) in lbs.iter().enumerate() {
        instance_ids.push(
            sys.register_agent(&format!("lb-{}", i + 1), &lb.agent)
                .await,
        );
    }
    let all = sys.servers().await;
    assert_eq!(all.len(), INSTANCES * 1000, "10 instances of 1,000 servers");
    let names: Vec<String> = (1..=DRAINED_PER_BACKEND).map(|i| format!("s{i}")).collect();
    let servers: Vec<i64> = all
        .iter()
        .filter(|s| names.contains(&s.name))
        .map(|s| s.id)
        .collect();
    assert_eq!(servers.len(), ACTIONS);
    // A fixed permutation (7919 is prime to 5,000) so every moment of the
    // run has actions for every instance.
    let order: Vec<i64> = (0..ACTIONS)
        .map(|j| servers[(j * 7919) % ACTIONS])
        .collect();
    let txns: Vec<Uuid> = (0..ACTIONS).map(|_| Uuid::new_v4()).collect();

    let logs = tempfile::tempdir().expect("tempdir");
    let worker = sys.spawn_worker_process(&sys.config(), &logs.path().join("worker.log"));
    let rss = RssSampler::start(worker.id());
    eprintln!("load: set up in {:?}", setup.elapsed());

    // 60 s: every 100 ms a tenth of a second's actions; every second a
    // forced sync of each instance.
    let run = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let ticks = SECONDS * TICKS_PER_SECOND;
    let mut syncs = Vec::new();
    for t in 0..ticks {
        tick.tick().await;
        let slice = (t * ACTIONS / ticks)..((t + 1) * ACTIONS / ticks);
        let bodies: Vec<_> = slice
            .map(|j| {
                json!({"transaction_id": txns[j], "action": "drain", "actor": "ac:load",
                       "target": {"server_id": order[j]}, "reason": "load"})
            })
            .collect();
        join_all(bodies.iter().map(|b| sys.publish_action(b))).await;
        if t % TICKS_PER_SECOND == 0 {
            syncs.extend(join_all(instance_ids.iter().map(|id| sys.publish_sync(Some(*id)))).await);
        }
    }
    let published_in = run.elapsed();
    let done_when_published = sys.successes().await;
    eprintln!(
        "load: {} actions and {} syncs published in {published_in:?}; {done_when_published} actions done then",
        txns.len(),
        syncs.len()
    );

    let mut workers = vec![worker];
    let spies: Vec<_> = lbs.iter().map(|lb| &lb.spy).collect();
    let settled = final_check(&sys, &txns, &spies, &mut workers, Duration::from_secs(90)).await;
    let (peak_rss, hwm, samples) = (
        rss.peak_rss_kb.load(Ordering::Relaxed),
        rss.hwm_kb.load(Ordering::Relaxed),
        rss.samples.load(Ordering::Relaxed),
    );
    eprintln!(
        "load: settled {:?} after the start of the run; {settled:?}",
        run.elapsed()
    );
    eprintln!(
        "load: worker peak VmRSS {peak_rss} kB over {samples} samples, VmHWM {hwm} kB (target {RSS_TARGET_KB} kB)"
    );

    assert_eq!(
        (settled.status("success"), settled.changed),
        (ACTIONS, ACTIONS)
    );
    for (i, lb) in lbs.iter().enumerate() {
        assert_eq!(
            lb.servers_with_bits(8).await,
            BACKENDS * DRAINED_PER_BACKEND,
            "lb-{}",
            i + 1
        );
        assert!(lb.spares_ready().await, "lb-{}: a spare was touched", i + 1);
        assert_db_matches_haproxy(&sys, &format!("lb-{}", i + 1), &lb.haproxy).await;
    }
    let forced = sys.sync_runs_by("force").await;
    let runs = |status: &str| forced.iter().filter(|r| r.status == status).count();
    let (ok, skipped, failed) = (runs("success"), runs("skipped"), runs("failed"));
    let sync_history = sys.history_from("sync").await.len();
    eprintln!(
        "load: sync runs: {ok} success, {skipped} skipped (another sync of the instance was running), {failed} failed; {sync_history} sync history rows"
    );
    assert_eq!(
        ok + skipped,
        syncs.len(),
        "every forced sync was handled once"
    );
    assert_eq!(failed, 0);
    assert_eq!(
        sync_history, 0,
        "nothing changed behind the module's back: the syncs recorded no change of their own"
    );
    assert!(ok >= INSTANCES);
    assert!(
        peak_rss > 0 && hwm > 0,
        "the worker's memory was sampled ({samples} samples)"
    );
    // The last VmHWM read may predate the last VmRSS sample by one read.
    let peak = peak_rss.max(hwm);
    assert!(
        peak <= RSS_TARGET_KB,
        "the worker's peak RSS {peak} kB is over the {RSS_TARGET_KB} kB target"
    );
}
