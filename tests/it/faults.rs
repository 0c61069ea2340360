//! Faults during a 500-action batch: the worker SIGKILLed at random points,
//! HAProxy reloaded, two workers and two schedulers at once. Each scenario
//! ends with the same check (harness::final_check): every accepted command
//! was applied exactly once, has its final status, its history row and its
//! event; nothing is left unacked or pending.
//!
//! (RabbitMQ and PostgreSQL connection cuts and a failing agent are covered
//! in action_path.rs.)

use std::time::Duration;

use haproxy_control::domain::action::batch_action_id;
use serde_json::json;
use uuid::Uuid;

use crate::harness::fleet::SPARE;
use crate::harness::rows::Change;
use crate::harness::{
    SeededRng, SpiedLb, TestSystem, assert_db_matches_haproxy, differences_from_haproxy,
    eventually, final_check,
};

/// How long a scenario may take to settle once its faults are over.
const SETTLE: Duration = Duration::from_secs(60);
/// What every action of the test costs at HAProxy: enough for a batch to be
/// in flight for a while, so the faults land in its middle.
const SET_SERVER_DELAY: Duration = Duration::from_millis(15);

/// Publishes one batch draining every server of every instance but the
/// spares; returns its transaction id and those of the actions it expands to.
async fn publish_drain_batch(sys: &TestSystem) -> (Uuid, Vec<Uuid>) {
    let ids: Vec<i64> = sys
        .servers()
        .await
        .into_iter()
        .filter(|s| s.name != SPARE)
        .map(|s| s.id)
        .collect();
    assert_eq!(ids.len(), 500, "the batch names 500 servers");
    let txn = Uuid::new_v4();
    let batch = json!({"transaction_id": txn, "action": "drain", "actor": "ac:deploy-job-6",
                       "targets": {"server_ids": ids}, "reason": "faults"});
    sys.publish_raw("batch", &serde_json::to_vec(&batch).expect("json"))
        .await;
    (
        txn,
        ids.iter().map(|id| batch_action_id(txn, *id)).collect(),
    )
}

async fn wait_successes(sys: &TestSystem, n: i64) {
    eventually(SETTLE, &format!("{n} actions done"), || async {
        (sys.successes().await >= n).then_some(())
    })
    .await;
}

/// The batch announced its completion with every action a success, under
/// one event id however often it was announced.
fn assert_batch_completed(sys: &TestSystem, txn: Uuid, total: usize) {
    let done = sys.events_for("batch.completed", txn);
    assert!(!done.is_empty(), "batch.completed was published");
    assert!(
        done.iter().all(|e| e["event_id"] == done[0]["event_id"]),
        "one event id: {done:?}"
    );
    assert_eq!(done[0]["counts"]["success"], total, "{}", done[0]);
}

/// Every `set server` line reached HAProxy once: no server was set twice.
fn assert_distinct_set_server(lb: &SpiedLb, n: usize) {
    let lines = lb.spy.lines("set server");
    let distinct: std::collections::HashSet<&String> = lines.iter().collect();
    assert_eq!(
        (lines.len(), distinct.len()),
        (n, n),
        "one `set server` per server"
    );
}

#[tokio::test]
async fn a_worker_sigkilled_at_random_points_of_a_500_action_batch_loses_and_doubles_nothing() {
    // 25 backends of 20 servers and a spare: the batch's drains are guarded
    // one backend at a time, so 25 run in parallel.
    let lb = SpiedLb::fleet(25, 20).await;
    let sys = TestSystem::start().await;
    sys.register_agent("lb-1", &lb.agent).await;
    lb.spy.set_delay("set server", SET_SERVER_DELAY);
    let config = sys.config();
    let logs = tempfile::tempdir().expect("tempdir");
    let mut rng = SeededRng::from_env_or_clock("worker kills");
    let mut worker = sys.spawn_worker_process(&config, &logs.path().join("worker-0.log"));

    let (batch, txns) = publish_drain_batch(&sys).await;
    // Five kills: the first at a random instant soon after the batch was
    // published (it may land in the worker's start or the batch's
    // expansion), the others after a random number of actions finished,
    // each after a further random delay.
    let mut thresholds: Vec<i64> = (0..4)
        .map(|_| i64::try_from(rng.range(10, 440)).expect("small"))
        .collect();
    thresholds.sort_unstable();
    thresholds.insert(0, 0);
    for (k, threshold) in thresholds.iter().enumerate() {
        wait_successes(&sys, *threshold).await;
        let delay = if k == 0 {
            rng.range(50, 1000)
        } else {
            rng.range(0, 200)
        };
        tokio::time::sleep(Duration::from_millis(delay)).await;
        worker.kill().expect("SIGKILL");
        let _ = worker.wait();
        let done = sys.successes().await;
        eprintln!(
            "kill {}: after {threshold} done and {delay} ms more; {done} of 500 done",
            k + 1
        );
        assert!(done < 500, "kill {} came after the batch was done", k + 1);
        worker =
            sys.spawn_worker_process(&config, &logs.path().join(format!("worker-{}.log", k + 1)));
    }

    let settled = final_check(&sys, &txns, &[&lb.spy], &mut vec![worker], SETTLE).await;
    eprintln!("settled: {settled:?}");
    assert_eq!((settled.status("success"), settled.changed), (500, 500));
    assert_batch_completed(&sys, batch, 500);
    assert_distinct_set_server(&lb, 500);
    assert_eq!(
        lb.servers_with_bits(8).await,
        500,
        "HAProxy shows 500 drained"
    );
    assert!(lb.spares_ready().await);
    assert_db_matches_haproxy(&sys, "lb-1", &lb.haproxy).await;
}

/// A reload (as `systemctl reload haproxy`: a new process takes the socket
/// over, the old one finishes) in the middle of a batch. The harness's
/// HAProxy has no `server-state-file`, like HAProxy's default: the new
/// process starts every server from the config (ready), so every drain
/// applied before the reload is gone from HAProxy. The module does not
/// re-apply them: DESIGN.md rule 6, "HAProxy wins" — the next sync records
/// what HAProxy shows, each difference as a history row with source `sync`
/// and a `server.state_changed` event. What must hold throughout: the batch
/// finishes, every action exactly once (actions in flight during the reload
/// go to one process or the other, never to both, and are not retried).
#[tokio::test]
async fn haproxy_reloaded_in_the_middle_of_a_batch_the_batch_finishes_once_and_the_next_sync_shows_the_lost_states()
 {
    let mut lb = SpiedLb::fleet(25, 20).await;
    let sys = TestSystem::start().await;
    let id = sys.register_agent("lb-1", &lb.agent).await;
    lb.spy.set_delay("set server", SET_SERVER_DELAY);
    let config = sys.config();
    let logs = tempfile::tempdir().expect("tempdir");
    let mut workers = vec![sys.spawn_worker_process(&config, &logs.path().join("worker.log"))];

    let (batch, txns) = publish_drain_batch(&sys).await;
    wait_successes(&sys, 150).await;
    // Everything counted here was applied to the old process.
    let applied_before = usize::try_from(sys.successes().await).expect("count");
    lb.haproxy.reload_graceful().await;
    let done_at_reload = sys.successes().await;
    eprintln!("reloaded with {applied_before}..{done_at_reload} of 500 done");
    assert!(done_at_reload < 500, "the reload came after the batch");

    eventually(SETTLE, "batch.completed", || async {
        sys.events_for("batch.completed", batch).pop()
    })
    .await;
    assert_batch_completed(&sys, batch, 500);
    // PostgreSQL holds what the actions did; HAProxy lost what came before
    // the reload.
    let lost = differences_from_haproxy(&sys, "lb-1", &lb.haproxy).await;
    let still_drained = lb.servers_with_bits(8).await;
    eprintln!(
        "after the batch: {} drains lost by the reload, {still_drained} kept",
        lost.len()
    );
    assert!(
        lost.len() >= applied_before,
        "every drain applied before the reload is lost: {} < {applied_before}",
        lost.len()
    );
    assert_eq!(lost.len() + still_drained, 500, "{lost:?}");
    assert!(still_drained > 0, "drains after the reload are kept");
    assert!(
        lost.iter()
            .all(|l| l.ends_with("haproxy ready, stored Some(\"drain\")")),
        "{lost:?}"
    );

    // The next sync shows HAProxy's truth.
    let sync = sys.publish_sync(Some(id)).await;
    let (status, counts) = sys.wait_sync(sync, SETTLE).await;
    assert_eq!(status, "success", "{counts}");
    assert_eq!(counts["state_changes"], lost.len(), "{counts}");
    assert_db_matches_haproxy(&sys, "lb-1", &lb.haproxy).await;
    let found = sys.history_from("sync").await;
    assert_eq!(
        found,
        vec![Change::by_sync("lb-1", "drain", "ready"); lost.len()],
        "one sync history row per lost drain"
    );
    eventually(SETTLE, "a server.state_changed per lost drain", || async {
        let found = sys
            .events()
            .into_iter()
            .filter(|e| {
                e["type"] == "server.state_changed"
                    && e["transaction_id"].is_null()
                    && e["current"]["admin_state"] == "ready"
            })
            .count();
        (found == lost.len()).then_some(())
    })
    .await;

    let settled = final_check(&sys, &txns, &[&lb.spy], &mut workers, SETTLE).await;
    assert_eq!((settled.status("success"), settled.changed), (500, 500));
    assert_distinct_set_server(&lb, 500);
    assert!(lb.spares_ready().await);
}

/// Two worker processes and two scheduler processes (ticking every second)
/// run throughout a batch over two instances. Besides the final check:
/// both workers took part, the duplicate ticks of the two schedulers gave
/// one sync per instance and tick, and the syncs running beside the
/// actions never overwrote what an action wrote (rule 6).
#[tokio::test]
async fn two_workers_and_two_schedulers_at_once_apply_a_batch_once_and_sync_once_per_tick() {
    let lb1 = SpiedLb::fleet(10, 25).await;
    let lb2 = SpiedLb::fleet(10, 25).await;
    let sys = TestSystem::start().await;
    sys.register_agent("lb-1", &lb1.agent).await;
    sys.register_agent("lb-2", &lb2.agent).await;
    for lb in [&lb1, &lb2] {
        lb.spy.set_delay("set server", SET_SERVER_DELAY);
    }
    let mut config = sys.config();
    config.sync.interval_secs = 1;
    let logs = tempfile::tempdir().expect("tempdir");
    let log = |name: &str| logs.path().join(name);
    let mut workers = vec![
        sys.spawn_worker_process(&config, &log("worker-1.log")),
        sys.spawn_worker_process(&config, &log("worker-2.log")),
    ];
    let mut schedulers = vec![
        sys.spawn_scheduler_process(&config, &log("scheduler-1.log")),
        sys.spawn_scheduler_process(&config, &log("scheduler-2.log")),
    ];
    let scheduled = || async { sys.sync_runs_by("schedule").await.len() };
    eventually(SETTLE, "the schedulers' first syncs", || async {
        (scheduled().await >= 2).then_some(())
    })
    .await;

    let (batch, txns) = publish_drain_batch(&sys).await;
    eventually(SETTLE, "batch.completed", || async {
        sys.events_for("batch.completed", batch).pop()
    })
    .await;
    // One more tick after the batch, then the schedulers stop.
    let runs = scheduled().await;
    eventually(SETTLE, "a tick after the batch", || async {
        (scheduled().await > runs).then_some(())
    })
    .await;
    for s in &mut schedulers {
        let _ = s.kill();
        let _ = s.wait();
    }

    let settled = final_check(&sys, &txns, &[&lb1.spy, &lb2.spy], &mut workers, SETTLE).await;
    assert_eq!((settled.status("success"), settled.changed), (500, 500));
    assert_batch_completed(&sys, batch, 500);
    for lb in [&lb1, &lb2] {
        assert_distinct_set_server(lb, 250);
    }
    assert_db_matches_haproxy(&sys, "lb-1", &lb1.haproxy).await;
    assert_db_matches_haproxy(&sys, "lb-2", &lb2.haproxy).await;

    let read = |name: &str| std::fs::read_to_string(log(name)).expect("log");
    for w in ["worker-1.log", "worker-2.log"] {
        let applied = read(w).matches("action applied").count();
        eprintln!("{w}: {applied} actions applied");
        assert!(applied > 0, "{w} applied no action");
    }
    // Each scheduler tick publishes a sync per instance; the two schedulers
    // tick in the same one-second buckets, so most syncs were sent twice.
    let ticks: usize = ["scheduler-1.log", "scheduler-2.log"]
        .iter()
        .map(|s| read(s).matches("scheduled syncs published").count())
        .sum();
    let scheduled_runs = sys.sync_runs_by("schedule").await;
    let runs = scheduled_runs.len();
    let sync_history = sys.history_from("sync").await.len();
    eprintln!(
        "{ticks} scheduler ticks (2 syncs each) gave {runs} scheduled sync runs; \
         {sync_history} sync history rows"
    );
    assert_eq!(
        sync_history, 0,
        "nothing changed behind the module's back: the syncs recorded no change of their own"
    );
    assert!(runs >= 4, "the schedulers kept ticking: {runs} runs");
    assert!(
        runs < ticks * 2,
        "duplicate ticks were deduped: {runs} runs of {} syncs sent",
        ticks * 2
    );
    let mut ticks_seen = std::collections::HashSet::new();
    let twice: Vec<_> = scheduled_runs
        .iter()
        .filter(|r| !ticks_seen.insert((r.instance_id, r.requested_at.timestamp())))
        .collect();
    assert!(
        twice.is_empty(),
        "one sync run per instance and tick: {twice:?}"
    );
    let failed: Vec<_> = sys
        .sync_runs()
        .await
        .into_iter()
        .filter(|r| r.status != "success" && r.status != "skipped")
        .collect();
    assert!(failed.is_empty(), "no sync failed: {failed:?}");
}
