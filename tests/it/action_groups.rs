//! Actions in groups (docs/architecture.md, "Actions in groups"): commands a
//! worker has ready together go through the path together — one agent call
//! per instance, one statement per phase — with every guarantee of the
//! one-by-one path: exactly once at HAProxy, order per server, the guard,
//! dedupe, retries. The commands are published before the worker starts
//! (and one group runs at a time), so the worker finds them waiting and
//! groups them.

use std::time::Duration;

use chrono::{Duration as Age, Utc};
use futures::future::join_all;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::lb::SpiedLb as Lb;
use crate::harness::{TestSystem, eventually};

const WAIT: Duration = Duration::from_secs(30);

fn action(txn: Uuid, state: &str, backend: &str, server: &str) -> Value {
    json!({
        "transaction_id": txn,
        "action": state,
        "target": {"instance": "lb-1", "backend": backend, "server": server},
        "actor": "user:alice",
    })
}

/// A worker configuration that runs one group at a time.
fn one_group_at_a_time(sys: &TestSystem) -> haproxy_control::config::Config {
    let mut config = sys.config();
    config.worker.prefetch = 64;
    config.database.pool_size = 64 + haproxy_control::worker::RESERVED_CONNECTIONS;
    config.worker.groups_in_flight = 1;
    config
}

/// This process's metric `name` (the in-process worker's), summed over its
/// labels when `labels` is empty, else the series whose labels contain it.
fn metric(name: &str, labels: &str) -> f64 {
    let text = haproxy_control::metrics::encode(&haproxy_control::metrics::registry());
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && rest.contains(labels)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

async fn publish_all(sys: &TestSystem, bodies: &[Value]) {
    for body in bodies {
        sys.publish_action(body).await;
    }
}

#[tokio::test]
async fn a_burst_goes_in_groups_and_each_action_reaches_haproxy_once() {
    let lb = Lb::with_spares([("web", 40), ("api", 40)]).await;
    let mut sys = TestSystem::start().await;
    sys.register_agent("lb-1", &lb.agent).await;
    let mut bodies = Vec::new();
    let mut txns = Vec::new();
    for backend in ["web", "api"] {
        for i in 1..=40 {
            let txn = Uuid::new_v4();
            bodies.push(action(txn, "drain", backend, &format!("s{i}")));
            txns.push(txn);
        }
    }
    publish_all(&sys, &bodies).await;
    sys.start_worker(one_group_at_a_time(&sys));

    for txn in &txns {
        let row = sys.wait_final(*txn, WAIT).await;
        assert_eq!(row.status, "success", "{:?}", row.error_detail);
        sys.wait_event("action.succeeded", *txn, WAIT).await;
        sys.wait_event("server.state_changed", *txn, WAIT).await;
    }
    assert_eq!(lb.servers_with_bits(8).await, 80, "all drained");
    assert_eq!(lb.spy.count("set server"), 80, "each reached HAProxy once");
    let history = sys.history_per_server().await;
    assert_eq!(history.len(), 80);
    assert!(history.values().all(|changes| changes.len() == 1));
    eventually(WAIT, "the actions queue drained", || async {
        (sys.depth(&sys.topology.actions_queue).await == 0).then_some(())
    })
    .await;

    // They went in groups: most commands went with one, and one agent call
    // served many actions.
    let grouped = metric("haproxy_control_action_group_size_sum", "");
    assert!(grouped >= 40.0, "only {grouped} of 80 went in groups");
    let bulk = metric(
        "haproxy_control_agent_calls_total",
        "operation=\"set_states\"",
    );
    let single = metric(
        "haproxy_control_agent_calls_total",
        "operation=\"set_state\"",
    );
    assert!(bulk >= 1.0, "no bulk call");
    assert!(
        bulk + single < 40.0,
        "{bulk} bulk and {single} single calls for 80 actions"
    );
}

#[tokio::test]
async fn a_group_decides_every_rule_as_one_command_alone_would() {
    // `web` has three servers and no spare: the guard lets two drains go.
    let app = crate::harness::HttpBackends::start(&["app"]).await;
    let addr = app.addr("app");
    let config = format!(
        "backend web\n  server s1 {addr}\n  server s2 {addr}\n  server s3 {addr}\n\
         backend api\n  server s1 {addr}\n  server s2 {addr}\n  server spare {addr}\n"
    );
    let lb = Lb::start(app, &config).await;
    let mut sys = TestSystem::start().await;
    sys.register_agent("lb-1", &lb.agent).await;

    let drains: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let duplicate = Uuid::new_v4();
    let (newer, older) = (Uuid::new_v4(), Uuid::new_v4());
    let (unknown, future) = (Uuid::new_v4(), Uuid::new_v4());
    let now = Utc::now();
    let mut bodies: Vec<Value> = drains
        .iter()
        .enumerate()
        .map(|(i, t)| action(*t, "drain", "web", &format!("s{}", i + 1)))
        .collect();
    bodies.push(action(duplicate, "drain", "api", "s1"));
    bodies.push(action(duplicate, "drain", "api", "s1"));
    let mut body = action(newer, "maint", "api", "s2");
    body["requested_at"] = json!(now.to_rfc3339());
    bodies.push(body);
    let mut body = action(older, "drain", "api", "s2");
    body["requested_at"] = json!((now - Age::minutes(1)).to_rfc3339());
    bodies.push(body);
    bodies.push(action(unknown, "drain", "api", "nope"));
    let mut body = action(future, "drain", "api", "spare");
    body["requested_at"] = json!((now + Age::hours(1)).to_rfc3339());
    bodies.push(body);
    publish_all(&sys, &bodies).await;
    sys.start_worker(one_group_at_a_time(&sys));

    // Guard: two of the three drains of `web` go, the last is rejected.
    let statuses = join_all(drains.iter().map(|t| sys.wait_final(*t, WAIT))).await;
    let mut statuses: Vec<String> = statuses.into_iter().map(|r| r.status).collect();
    statuses.sort();
    assert_eq!(statuses, ["rejected", "success", "success"]);
    assert_eq!(lb.web_bits("s3").await, 0, "the last ready server stays");
    // Dedupe: one row, one command to HAProxy.
    assert_eq!(sys.wait_final(duplicate, WAIT).await.status, "success");
    assert_eq!(lb.spy.count("set server api/s1 "), 1);
    // Order: the older command is superseded and never sent.
    assert_eq!(sys.wait_final(newer, WAIT).await.status, "success");
    assert_eq!(sys.wait_final(older, WAIT).await.status, "superseded");
    assert_eq!(lb.spy.count("set server api/s2 "), 1);
    // Unknown server: failed, not_found.
    let row = sys.wait_final(unknown, WAIT).await;
    assert_eq!(
        (row.status.as_str(), row.error.as_deref()),
        ("failed", Some("not_found"))
    );
    // Too far in the future: dead-lettered with the reason, never recorded.
    let dead = sys.wait_dead_letters(1, WAIT).await;
    assert!(dead[0].error.contains("requested_at"), "{}", dead[0].error);
    assert_eq!(lb.spy.count("set server api/spare "), 0);
    assert_eq!(sys.actions().await.len(), 7);
    eventually(WAIT, "the actions queue drained", || async {
        (sys.depth(&sys.topology.actions_queue).await == 0).then_some(())
    })
    .await;

    assert!(
        metric("haproxy_control_action_group_size_count", "") >= 1.0,
        "no group formed"
    );
    assert!(
        metric("haproxy_control_action_group_left_total", "") >= 3.0,
        "the commands a check ends were not left to the one-by-one path"
    );
}

#[tokio::test]
async fn a_call_that_fails_in_a_group_is_retried_per_action_and_applied_once() {
    let lb = Lb::with_spares([("web", 6)]).await;
    let mut sys = TestSystem::start().await;
    let id = sys.register_agent("lb-1", &lb.agent).await;
    // HAProxy answers after the worker stopped waiting: the first call
    // times out; the agent finishes the change and answers the retry with
    // its first answer (its idempotency), so HAProxy sees each once.
    lb.spy.set_delay("set server", Duration::from_millis(1_200));
    let txns: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    let bodies: Vec<Value> = txns
        .iter()
        .enumerate()
        .map(|(i, t)| action(*t, "drain", "web", &format!("s{}", i + 1)))
        .collect();
    publish_all(&sys, &bodies).await;
    let mut config = one_group_at_a_time(&sys);
    config.worker.agent_timeout_ms = 500;
    config.worker.retry_backoff_ms = vec![1_000, 1_000];
    config.worker.breaker_failures = 10;
    sys.start_worker(config);

    for txn in &txns {
        let row = sys.wait_final(*txn, WAIT).await;
        assert_eq!(row.status, "success", "{:?}", row.error_detail);
        assert_eq!(row.attempts, 2, "one failed call, one retry");
    }
    assert_eq!(lb.spy.count("set server"), 6, "each reached HAProxy once");
    assert_eq!(sys.instance(id).await.breaker_state, "closed");
    assert!(metric("haproxy_control_action_group_size_count", "") >= 1.0);
    assert!(metric("haproxy_control_action_retries_total", "") >= 6.0);
}

#[tokio::test]
async fn a_batch_goes_through_in_groups_under_its_guard() {
    // Two backends of 20 servers, no spare: the guard keeps one of each.
    let lb = Lb::numbered(&[("web", 20), ("api", 20)]).await;
    let mut sys = TestSystem::start().await;
    sys.register_agent("lb-1", &lb.agent).await;
    sys.start_worker(one_group_at_a_time(&sys));
    let mut ids = Vec::new();
    for backend in ["web", "api"] {
        for i in 1..=20 {
            ids.push(sys.server_id("lb-1", backend, &format!("s{i}")).await);
        }
    }
    let txn = Uuid::new_v4();
    let batch = json!({"transaction_id": txn, "action": "drain", "actor": "ac:deploy-job-78",
                       "targets": {"server_ids": ids}});
    sys.publish_raw("batch", &serde_json::to_vec(&batch).expect("json"))
        .await;
    let done = sys.wait_event("batch.completed", txn, WAIT).await;
    assert_eq!(done["counts"]["success"], 38, "{done}");
    assert_eq!(done["counts"]["rejected"], 2, "{done}");
    assert_eq!(
        lb.servers_with_bits(0).await,
        2,
        "one ready server per backend"
    );
    assert_eq!(
        lb.spy.count("set server"),
        38,
        "each drain reached HAProxy once"
    );
    let actions = sys.actions().await;
    assert_eq!(actions.len(), 40);
    assert!(actions.iter().all(|a| a.batch_id.is_some()));
    assert!(
        metric("haproxy_control_action_group_size_sum", "") >= 20.0,
        "the batch's actions (pending rows) did not go in groups"
    );
}
