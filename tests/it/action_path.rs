//! The action path end to end: command → worker → FAgent → HAProxy →
//! PostgreSQL → event, against real RabbitMQ, PostgreSQL and haproxy.

use std::time::Duration;

use chrono::{Duration as Age, Utc};
use futures::future::join_all;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::lb::{Registered, SpiedLb as Lb};
use crate::harness::proxy::Mode;
use crate::harness::rows::Change;
use crate::harness::{TcpProxy, TestSystem, eventually};

const WAIT: Duration = Duration::from_secs(20);

/// One HAProxy with backend `web` of `n` servers `s1..sn` and `spare` (no checks), a
/// socket spy between it and its agent.
async fn lb(n: usize) -> Lb {
    // A spare server that no test touches keeps the guard of rule 10 (never
    // the last ready server) out of these tests; it has tests of its own.
    Lb::with_spares([("web", n)]).await
}

fn action(txn: Uuid, action: &str, target: Value) -> Value {
    json!({
        "transaction_id": txn,
        "action": action,
        "target": target,
        "actor": "user:alice",
        "reason": "deploy 1.4.2",
    })
}

/// Publishes a drain of s1..sn, all at once; returns their transaction ids.
async fn publish_drains(sys: &TestSystem, n: usize) -> Vec<Uuid> {
    let txns: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    let bodies: Vec<Value> = txns
        .iter()
        .enumerate()
        .map(|(i, t)| action(*t, "drain", by_names(&format!("s{}", i + 1))))
        .collect();
    join_all(bodies.iter().map(|b| sys.publish_action(b))).await;
    txns
}

/// Waits until at least `n` actions succeeded.
async fn wait_successes(sys: &TestSystem, n: i64) {
    eventually(WAIT, &format!("{n} actions done"), || async {
        (sys.successes().await >= n).then_some(())
    })
    .await;
}

/// Every action succeeded exactly once: its row, its event, one history row
/// and one `set server` on the socket each, nothing left in the queue.
async fn assert_each_applied_once(sys: &TestSystem, lb: &Lb, txns: &[Uuid]) {
    for txn in txns {
        let row = sys.wait_final(*txn, Duration::from_secs(60)).await;
        assert_eq!(
            row.status, "success",
            "{txn}: {:?} {:?}",
            row.error, row.error_detail
        );
        sys.wait_event("action.succeeded", *txn, Duration::from_secs(60))
            .await;
    }
    assert_eq!(sys.actions().await.len(), txns.len());
    let history = sys.history_per_server().await;
    assert_eq!(
        history
            .values()
            .filter(|changes| changes.len() == 1)
            .count(),
        txns.len(),
        "one history row per server: {history:?}"
    );
    assert_eq!(
        lb.spy.count("set server"),
        txns.len(),
        "each reached HAProxy once"
    );
    eventually(WAIT, "the actions queue drained", || async {
        (sys.depth(&sys.topology.actions_queue).await == 0).then_some(())
    })
    .await;
}

fn by_names(server: &str) -> Value {
    json!({"instance": "lb-1", "backend": "web", "server": server})
}

async fn bits(lb: &Lb, server: &str) -> u32 {
    lb.web_bits(server).await
}

#[tokio::test]
async fn an_action_command_changes_haproxy_and_is_recorded_and_announced() {
    let Registered { mut sys, lb, .. } = lb(2).await.with_worker().await;

    let txn = Uuid::new_v4();
    sys.publish_action(&action(txn, "drain", by_names("s1")))
        .await;
    let succeeded = sys.wait_event("action.succeeded", txn, WAIT).await;
    assert_eq!(bits(&lb, "s1").await, 8, "HAProxy shows FDRAIN");
    assert_eq!(succeeded["current"]["admin_state"], "drain");
    assert_eq!(succeeded["previous"]["admin_state"], "ready");
    assert_eq!(succeeded["server"]["name"], "s1");
    assert_eq!(succeeded["instance"]["name"], "lb-1");
    assert_eq!(succeeded["backend"]["name"], "web");
    assert_eq!(succeeded["actor"], "user:alice");
    let changed = sys.wait_event("server.state_changed", txn, WAIT).await;
    assert_eq!(changed["current"]["admin_state"], "drain");

    let row = sys.wait_final(txn, WAIT).await;
    assert_eq!((row.status.as_str(), row.attempts), ("success", 1));
    let server_id = sys.server_id("lb-1", "web", "s1").await;
    assert_eq!(row.server_id, Some(server_id));
    assert_eq!(
        sys.history(server_id).await,
        [Change::by_action(row.id, "user:alice", "ready", "drain")]
    );
    assert_eq!(sys.server("lb-1", "web", "s1").await.admin_state, "drain");

    // The same by server id, back to ready.
    let txn2 = Uuid::new_v4();
    sys.publish_action(&action(txn2, "ready", json!({"server_id": server_id})))
        .await;
    let ev = sys.wait_event("action.succeeded", txn2, WAIT).await;
    assert_eq!(ev["current"]["admin_state"], "ready");
    assert_eq!(bits(&lb, "s1").await, 0);
    assert_eq!(lb.spy.count("set server"), 2);
    sys.stop_workers().await;
}

#[tokio::test]
async fn the_same_transaction_five_times_at_once_reaches_haproxy_once() {
    let lb = lb(1).await;
    let mut sys = TestSystem::start().await;
    sys.register_agent("lb-1", &lb.agent).await;
    // Slow HAProxy down so the five copies really are in flight together.
    lb.spy.set_delay("set server", Duration::from_millis(200));
    let mut config = sys.config();
    config.worker.prefetch = 8;
    sys.start_worker(config.clone());
    sys.start_worker(config);

    let txn = Uuid::new_v4();
    let body = action(txn, "maint", by_names("s1"));
    join_all((0..5).map(|_| sys.publish_action(&body))).await;

    let ids = eventually(WAIT, "five action.succeeded events", || async {
        let evs = sys.events_for("action.succeeded", txn);
        (evs.len() >= 5).then_some(evs)
    })
    .await;
    assert!(
        ids.iter().all(|e| e["event_id"] == ids[0]["event_id"]),
        "one stable event_id: {ids:?}"
    );
    assert_eq!(
        lb.spy.count("set server"),
        1,
        "{:?}",
        lb.spy.lines("set server")
    );
    assert!(
        sys.action(txn).await.is_some(),
        "one row (the transaction id is unique)"
    );
    assert_eq!(sys.history_from("action").await.len(), 1);
    assert_eq!(sys.history_from("sync").await, []);
    assert_eq!(bits(&lb, "s1").await, 1);
    assert_eq!(sys.depth(&sys.topology.actions_queue).await, 0);
}

#[tokio::test]
async fn an_older_command_after_a_newer_one_is_superseded_and_never_sent() {
    let Registered { sys, lb, .. } = &lb(1).await.with_worker().await;

    let now = Utc::now();
    let newer = Uuid::new_v4();
    let mut body = action(newer, "drain", by_names("s1"));
    body["requested_at"] = json!(now.to_rfc3339());
    sys.publish_action(&body).await;
    sys.wait_event("action.succeeded", newer, WAIT).await;

    let older = Uuid::new_v4();
    let mut body = action(older, "ready", by_names("s1"));
    body["requested_at"] = json!((now - Age::seconds(5)).to_rfc3339());
    sys.publish_action(&body).await;
    let ev = sys.wait_event("action.superseded", older, WAIT).await;
    assert_eq!(ev["server"]["name"], "s1");
    let row = sys.wait_final(older, WAIT).await;
    assert_eq!((row.status.as_str(), row.attempts), ("superseded", 0));
    assert_eq!(
        lb.spy.count("set server"),
        1,
        "the older command must not reach HAProxy"
    );
    assert_eq!(bits(lb, "s1").await, 8, "still drained");
}

#[tokio::test]
async fn commands_for_one_server_are_serialised_and_for_different_servers_run_in_parallel() {
    let lb = lb(4).await;
    let mut sys = TestSystem::start().await;
    sys.register_agent("lb-1", &lb.agent).await;
    lb.spy.set_delay("set server", Duration::from_millis(300));
    sys.start_worker(sys.config());

    // Four commands for s1 and one each for s2..s4, all at once. The same
    // requested_at for all, so none supersedes another: all four for s1
    // must be applied, one after the other.
    let at = Utc::now().to_rfc3339();
    let mut txns = Vec::new();
    let mut bodies = Vec::new();
    for (i, server) in ["s1", "s1", "s1", "s1", "s2", "s3", "s4"]
        .iter()
        .enumerate()
    {
        let txn = Uuid::new_v4();
        let state = if i % 2 == 0 { "drain" } else { "ready" };
        let mut body = action(txn, state, by_names(server));
        body["requested_at"] = json!(at);
        bodies.push(body);
        txns.push(txn);
    }
    join_all(bodies.iter().map(|b| sys.publish_action(b))).await;
    for txn in &txns {
        let row = sys.wait_final(*txn, WAIT).await;
        assert_eq!(row.status, "success");
    }
    let on_s1 = lb
        .spy
        .max_concurrency(|l| l.starts_with("set server web/s1 "));
    let overall = lb.spy.max_concurrency(|l| l.starts_with("set server"));
    assert_eq!(on_s1, 1, "commands for one server overlapped");
    assert!(
        overall >= 2,
        "commands for different servers never overlapped ({overall})"
    );
    assert_eq!(lb.spy.count("set server web/s1 "), 4);
}

#[tokio::test]
async fn an_unreachable_agent_is_retried_then_the_breaker_opens_and_later_closes() {
    let lb1 = lb(1).await;
    let lb2 = lb(1).await;
    let mut sys = TestSystem::start().await;
    let (lb1_id, proxy) = sys.register_behind_proxy("lb-1", &lb1.agent).await;
    sys.register("lb-2", &lb2.agent.url, &lb2.agent.token).await;
    let mut config = sys.config();
    config.worker.breaker_open_secs = 2;
    sys.start_worker(config);

    proxy.set_mode(Mode::Reset);
    proxy.reset_counter();
    let first = Uuid::new_v4();
    let started = std::time::Instant::now();
    sys.publish_action(&action(first, "drain", by_names("s1")))
        .await;
    let failed = sys.wait_event("action.failed", first, WAIT).await;
    assert_eq!(failed["error"], "agent_unreachable");
    let row = sys.wait_final(first, WAIT).await;
    assert_eq!(row.attempts, 3);
    assert_eq!(proxy.accepted(), 3, "three calls");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "retries wait 100 + 200 ms"
    );
    assert_eq!(
        sys.instance(lb1_id).await.breaker_state,
        "open",
        "three failed calls open the breaker"
    );
    let opened = sys
        .events()
        .into_iter()
        .filter(|e| e["type"] == "instance.circuit_opened")
        .count();
    assert_eq!(opened, 1);

    // Open: fails at once, without a connection.
    let second = Uuid::new_v4();
    sys.publish_action(&action(second, "drain", by_names("s1")))
        .await;
    let failed = sys.wait_event("action.failed", second, WAIT).await;
    assert_eq!(failed["error"], "circuit_open");
    assert_eq!(sys.wait_final(second, WAIT).await.attempts, 0);
    assert_eq!(proxy.accepted(), 3, "no connection while open");

    // Another instance is unaffected.
    let other = Uuid::new_v4();
    sys.publish_action(&action(
        other,
        "drain",
        json!({"instance": "lb-2", "backend": "web", "server": "s1"}),
    ))
    .await;
    sys.wait_event("action.succeeded", other, WAIT).await;

    // After the window one probe goes through; its success closes the breaker.
    proxy.set_mode(Mode::Forward);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let third = Uuid::new_v4();
    sys.publish_action(&action(third, "drain", by_names("s1")))
        .await;
    let ok = sys.wait_event("action.succeeded", third, WAIT).await;
    assert_eq!(ok["current"]["admin_state"], "drain");
    assert_eq!(sys.instance(lb1_id).await.breaker_state, "closed");
    eventually(WAIT, "instance.circuit_closed", || async {
        sys.events()
            .into_iter()
            .find(|e| e["type"] == "instance.circuit_closed")
    })
    .await;
    assert_eq!(bits(&lb1, "s1").await, 8);
}

#[tokio::test]
async fn an_agent_answering_4xx_fails_at_once_without_retry() {
    let Registered { sys, lb, .. } = &lb(1).await.with_worker().await;
    // The server vanishes from HAProxy behind the module's back.
    assert_eq!(
        lb.haproxy.cmd("set server web/s1 state maint").await.trim(),
        ""
    );
    assert!(
        lb.haproxy
            .cmd("del server web/s1")
            .await
            .contains("Server deleted")
    );
    let txn = Uuid::new_v4();
    sys.publish_action(&action(txn, "ready", by_names("s1")))
        .await;
    let failed = sys.wait_event("action.failed", txn, WAIT).await;
    assert_eq!(failed["error"], "not_found");
    assert_eq!(sys.wait_final(txn, WAIT).await.attempts, 1);
}

#[tokio::test]
async fn bad_messages_are_dead_lettered_with_a_reason_and_the_worker_keeps_going() {
    let Registered { sys, lb, .. } = &lb(1).await.with_worker().await;

    let txn = Uuid::new_v4();
    sys.publish_raw("action", b"{this is not json").await;
    sys.publish_action(&action(txn, "explode", by_names("s1")))
        .await;
    sys.publish_action(&action(
        Uuid::new_v4(),
        "drain",
        json!({"instance": "lb-1", "backend": "web", "server": "s1;show info"}),
    ))
    .await;
    sys.publish_action(&action(
        Uuid::new_v4(),
        "drain",
        json!({"instance": "lb-1", "backend": "web\nshow info", "server": "s1"}),
    ))
    .await;
    sys.publish_action(&action(Uuid::new_v4(), "drain", json!({"instance": "lb-1", "backend": "web", "server": "s1\nset server web/s1 state maint"}))).await;

    let dead = eventually(WAIT, "five dead letters", || async {
        let mut all = Vec::new();
        all.extend(sys.dead_letters().await);
        (all.len() == 5).then_some(all)
    })
    .await;
    let reasons: Vec<&str> = dead.iter().map(|d| d.error.as_str()).collect();
    assert!(
        reasons[0].contains("not a valid action command"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("\"explode\""), "{reasons:?}");
    assert!(
        reasons[2].contains("target.server") && reasons[2].contains("';'"),
        "{reasons:?}"
    );
    assert!(reasons[3].contains("target.backend"), "{reasons:?}");
    assert!(reasons[4].contains("target.server"), "{reasons:?}");
    assert_eq!(dead[0].body, b"{this is not json");
    assert!(dead.iter().all(|d| d.routing_key == "action"));
    assert_eq!(lb.spy.count("set server"), 0, "nothing reached HAProxy");
    assert_eq!(sys.actions().await.len(), 0, "nothing recorded");

    let good = Uuid::new_v4();
    sys.publish_action(&action(good, "drain", by_names("s1")))
        .await;
    sys.wait_event("action.succeeded", good, WAIT).await;
    assert_eq!(sys.depth(&sys.topology.actions_queue).await, 0);
}

#[tokio::test]
async fn a_worker_killed_with_100_actions_in_flight_is_finished_by_its_successor_exactly_once() {
    let lb = lb(100).await;
    let sys = TestSystem::start().await;
    sys.register_agent("lb-1", &lb.agent).await;
    lb.spy.set_delay("set server", Duration::from_millis(40));
    let mut config = sys.config();
    config.worker.prefetch = 32;
    let log_dir = tempfile::tempdir().expect("tempdir");
    let mut first = sys.spawn_worker_process(&config, &log_dir.path().join("first.log"));

    let txns = publish_drains(&sys, 100).await;

    // Kill it while some are done and many are in flight.
    wait_successes(&sys, 10).await;
    first.kill().expect("SIGKILL");
    let _ = first.wait();
    let done_at_kill = sys.successes().await;
    assert!(
        done_at_kill < 100,
        "the kill came too late to prove anything"
    );

    let mut second = sys.spawn_worker_process(&config, &log_dir.path().join("second.log"));
    assert_each_applied_once(&sys, &lb, &txns).await;
    let _ = second.kill();
    let _ = second.wait();
    let drained = lb
        .haproxy
        .admin_bits()
        .await
        .into_iter()
        .filter(|(_, b)| *b == 8)
        .count();
    assert_eq!(drained, 100);
}

#[tokio::test]
async fn a_worker_that_loses_the_broker_for_good_exits_non_zero() {
    let lb = lb(1).await;
    let sys = TestSystem::start().await;
    sys.register_agent("lb-1", &lb.agent).await;
    let broker = TcpProxy::start("127.0.0.1:5672".parse().expect("addr")).await;
    let mut config = sys.config();
    config.amqp.url = format!("amqp://guest:guest@{}/%2f", broker.addr);
    config.amqp.reconnect_attempts = 2;
    let log_dir = tempfile::tempdir().expect("tempdir");
    let mut worker = sys.spawn_worker_process(&config, &log_dir.path().join("worker.log"));

    let txn = Uuid::new_v4();
    sys.publish_action(&action(txn, "drain", by_names("s1")))
        .await;
    sys.wait_event("action.succeeded", txn, WAIT).await;

    drop(broker); // the broker is gone for good: connections cut, port closed
    let status = eventually(Duration::from_secs(60), "the worker to exit", || {
        let exited = worker.try_wait().ok().flatten();
        async move { exited }
    })
    .await;
    assert!(
        !status.success(),
        "a worker that lost the broker must fail, got {status}"
    );
}

#[tokio::test]
async fn a_message_that_keeps_failing_is_dead_lettered_after_the_delivery_limit() {
    use lapin::options::{BasicGetOptions, BasicNackOptions};
    // No worker: this test plays one that crashes on every delivery.
    let sys = TestSystem::start().await;
    let txn = Uuid::new_v4();
    sys.publish_action(&action(txn, "drain", by_names("s1")))
        .await;
    let conn = haproxy_control::queue::connect(crate::harness::system::AMQP_URL, "crasher")
        .await
        .expect("broker");
    let ch = conn.create_channel().await.expect("channel");
    let mut deliveries = 0;
    while let Some(m) = ch
        .basic_get(
            sys.topology.actions_queue.as_str().into(),
            BasicGetOptions::default(),
        )
        .await
        .expect("basic_get")
    {
        deliveries += 1;
        m.delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
            .expect("nack");
        assert!(deliveries <= 10, "never dead-lettered");
    }
    // RabbitMQ 3.10 delivers up to the limit (5) and then dead-letters.
    assert!((5..=6).contains(&deliveries), "{deliveries} deliveries");
    let dead = eventually(WAIT, "the dead letter", || async {
        let mut d = sys.dead_letters().await;
        (d.len() == 1).then(|| d.remove(0))
    })
    .await;
    let body: Value = serde_json::from_slice(&dead.body).expect("json");
    assert_eq!(body["transaction_id"], txn.to_string());
    assert!(dead.x_death, "RabbitMQ's x-death header is on it");
}

#[tokio::test]
async fn an_agent_answering_500_or_hanging_is_retried_and_counted_for_the_breaker() {
    let lb = lb(1).await;
    let mut sys = TestSystem::start().await;
    let (id, proxy) = sys.register_behind_proxy("lb-1", &lb.agent).await;
    let mut config = sys.config();
    config.worker.agent_timeout_ms = 300;
    config.worker.breaker_failures = 10; // this test looks at retries, not at opening
    sys.start_worker(config);

    proxy.set_mode(Mode::Http500);
    proxy.reset_counter();
    let txn = Uuid::new_v4();
    sys.publish_action(&action(txn, "drain", by_names("s1")))
        .await;
    let failed = sys.wait_event("action.failed", txn, WAIT).await;
    assert_eq!(failed["error"], "agent_error");
    assert_eq!(sys.wait_final(txn, WAIT).await.attempts, 3);
    assert_eq!(proxy.accepted(), 3, "a 5xx is retried");

    proxy.set_mode(Mode::Hang);
    proxy.reset_counter();
    let txn = Uuid::new_v4();
    let started = std::time::Instant::now();
    sys.publish_action(&action(txn, "drain", by_names("s1")))
        .await;
    let failed = sys.wait_event("action.failed", txn, WAIT).await;
    assert_eq!(failed["error"], "agent_unreachable");
    assert_eq!(sys.wait_final(txn, WAIT).await.attempts, 3);
    assert_eq!(proxy.accepted(), 3, "a timeout is retried");
    assert!(
        started.elapsed() >= Duration::from_millis(900 + 300),
        "3 timeouts of 300 ms and the backoff"
    );
    assert_eq!(
        sys.instance(id).await.consecutive_failures,
        6,
        "every failed call counted"
    );
    assert_eq!(bits(&lb, "s1").await, 0, "HAProxy untouched");
}

#[tokio::test]
async fn a_worker_whose_broker_connection_is_cut_recovers_and_loses_nothing() {
    let lb = lb(20).await;
    let mut sys = TestSystem::start().await;
    sys.register_agent("lb-1", &lb.agent).await;
    lb.spy.set_delay("set server", Duration::from_millis(30));
    let broker = TcpProxy::start("127.0.0.1:5672".parse().expect("addr")).await;
    let mut config = sys.config();
    config.amqp.url = format!("amqp://guest:guest@{}/%2f", broker.addr);
    sys.start_worker(config);

    let txns = publish_drains(&sys, 20).await;
    wait_successes(&sys, 3).await;
    broker.cut(); // mid-stream: deliveries in flight cannot be acked and come back
    // Committed before the cut, an action's event is re-published when its
    // redelivered command finds it finished.
    assert_each_applied_once(&sys, &lb, &txns).await;
}

#[tokio::test]
async fn a_worker_whose_database_connections_are_cut_acks_nothing_uncommitted_and_finishes_all() {
    let lb = lb(20).await;
    let mut sys = TestSystem::start().await;
    sys.register_agent("lb-1", &lb.agent).await;
    lb.spy.set_delay("set server", Duration::from_millis(30));
    let pg = TcpProxy::start("127.0.0.1:5432".parse().expect("addr")).await;
    let mut config = sys.config();
    config.database.url = sys
        .db
        .url
        .replacen("127.0.0.1:5432", &pg.addr.to_string(), 1);
    assert_ne!(
        config.database.url, sys.db.url,
        "the worker goes through the proxy"
    );
    sys.start_worker(config);

    let txns = publish_drains(&sys, 20).await;
    wait_successes(&sys, 3).await;
    pg.cut(); // every open connection of the worker to PostgreSQL, mid-stream
    assert_each_applied_once(&sys, &lb, &txns).await;
}

#[tokio::test]
async fn the_events_command_prints_the_events_its_pattern_selects() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let Registered { sys, .. } = &lb(1).await.with_worker().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_haproxy-control"))
        .args(["events", "--pattern", "server.*", "--count", "1"])
        .env("AMQP_URL", crate::harness::system::AMQP_URL)
        .env("AMQP_PREFIX", &sys.prefix)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("events command");
    // It says so (among its logs) once its queue is bound.
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let listening = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("listening on") {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(listening, Ok(true)), "the command never listened");
    let txn = Uuid::new_v4();
    sys.publish_action(&action(txn, "drain", by_names("s1")))
        .await;
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("the command ends after one event")
        .expect("its output");
    assert!(out.status.success());
    let printed: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    // Only the event the pattern selects: server.state_changed, not
    // action.succeeded (published first).
    assert_eq!(printed.len(), 1, "{printed:?}");
    assert_eq!(printed[0]["type"], "server.state_changed");
    assert_eq!(printed[0]["transaction_id"], txn.to_string());
}
