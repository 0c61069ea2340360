//! Batches (one action for many servers) and the guard of DESIGN.md rule 10
//! (never take the last ready server of a backend out without `force`).

use std::time::Duration;

use futures::future::join_all;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::lb::{Registered, SpiedLb as Lb};
use crate::harness::{TestSystem, eventually};

const WAIT: Duration = Duration::from_secs(20);

/// One HAProxy with the given backends and server counts, registered as
/// `lb-1`, and a worker.
async fn lb_with_worker(backends: &[(&str, usize)]) -> Registered {
    Lb::numbered(backends).await.with_worker().await
}

fn action(txn: Uuid, state: &str, backend: &str, server: &str, force: bool) -> Value {
    json!({"transaction_id": txn, "action": state, "actor": "user:alice", "force": force,
           "target": {"instance": "lb-1", "backend": backend, "server": server}})
}

async fn ready_in(lb: &Lb, backend: &str) -> usize {
    lb.haproxy
        .admin_bits()
        .await
        .into_iter()
        .filter(|(name, bits)| name.starts_with(&format!("{backend}/")) && *bits == 0)
        .count()
}

#[tokio::test]
async fn the_last_ready_server_of_a_backend_is_only_taken_out_with_force() {
    let Registered { sys, lb, .. } = &lb_with_worker(&[("web", 2)]).await;

    let first = Uuid::new_v4();
    sys.publish_action(&action(first, "drain", "web", "s1", false))
        .await;
    sys.wait_event("action.succeeded", first, WAIT).await;

    let second = Uuid::new_v4();
    sys.publish_action(&action(second, "maint", "web", "s2", false))
        .await;
    let rejected = sys.wait_event("action.rejected", second, WAIT).await;
    assert!(
        rejected["error_detail"]
            .as_str()
            .is_some_and(|d| d.contains("no ready server")),
        "{rejected}"
    );
    let row = sys.wait_final(second, WAIT).await;
    assert_eq!((row.status.as_str(), row.attempts), ("rejected", 0));
    assert_eq!(ready_in(lb, "web").await, 1, "HAProxy untouched");

    let forced = Uuid::new_v4();
    sys.publish_action(&action(forced, "maint", "web", "s2", true))
        .await;
    sys.wait_event("action.succeeded", forced, WAIT).await;
    assert_eq!(ready_in(lb, "web").await, 0);
}

#[tokio::test]
async fn concurrent_drains_cannot_empty_a_backend_together() {
    let Registered { sys, lb, .. } = &lb_with_worker(&[("web", 3)]).await;
    let txns: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let bodies: Vec<Value> = txns
        .iter()
        .enumerate()
        .map(|(i, t)| action(*t, "drain", "web", &format!("s{}", i + 1), false))
        .collect();
    join_all(bodies.iter().map(|b| sys.publish_action(b))).await;
    let mut statuses = Vec::new();
    for t in &txns {
        statuses.push(sys.wait_final(*t, WAIT).await.status);
    }
    statuses.sort();
    assert_eq!(statuses, ["rejected", "success", "success"]);
    assert_eq!(ready_in(lb, "web").await, 1);
}

#[tokio::test]
async fn a_batch_acts_once_per_server_guards_each_backend_and_reports_completion() {
    let Registered { sys, lb, .. } = &lb_with_worker(&[("web", 3), ("api", 2)]).await;
    let mut ids = Vec::new();
    for s in ["s1", "s2", "s3"] {
        ids.push(sys.server_id("lb-1", "web", s).await);
    }
    ids.push(sys.server_id("lb-1", "api", "s1").await);

    let txn = Uuid::new_v4();
    let batch = json!({"transaction_id": txn, "action": "drain", "actor": "ac:deploy-job-77",
                       "targets": {"server_ids": ids}, "reason": "deploy"});
    sys.publish_raw("batch", &serde_json::to_vec(&batch).expect("json"))
        .await;
    let done = sys.wait_event("batch.completed", txn, WAIT).await;
    assert_eq!(done["counts"]["success"], 3, "{done}");
    assert_eq!(
        done["counts"]["rejected"], 1,
        "the guard kept web's last ready server: {done}"
    );
    assert_eq!(done["actor"], "ac:deploy-job-77");
    assert_eq!(ready_in(lb, "web").await, 1);
    assert_eq!(ready_in(lb, "api").await, 1);
    let actions = sys.actions().await;
    assert_eq!(actions.len(), 4);
    assert!(actions.iter().all(|a| a.batch_id.is_some()), "{actions:?}");

    // The same batch again: no new action; the completion is announced again
    // with the same event id.
    sys.publish_raw("batch", &serde_json::to_vec(&batch).expect("json"))
        .await;
    eventually(WAIT, "batch.completed again", || async {
        let evs = sys.events_for("batch.completed", txn);
        (evs.len() >= 2).then_some(evs)
    })
    .await
    .windows(2)
    .for_each(|w| assert_eq!(w[0]["event_id"], w[1]["event_id"]));
    assert_eq!(sys.actions().await.len(), 4, "no new action");
    let recorded = sys.batch(txn).await.expect("the batch's row");
    assert_eq!((recorded.total, recorded.completed), (4, true));
}

#[tokio::test]
async fn a_batch_over_an_application_group_spans_instances() {
    let lb1 = Lb::numbered(&[("web", 2)]).await;
    let lb2 = Lb::numbered(&[("web", 2)]).await;
    let mut sys = TestSystem::start().await;
    sys.register_agent("lb-1", &lb1.agent).await;
    sys.register_agent("lb-2", &lb2.agent).await;
    let s1a = sys.server_id("lb-1", "web", "s1").await;
    let s1b = sys.server_id("lb-2", "web", "s1").await;
    sys.exec(&format!(
        "INSERT INTO applications (id, name) VALUES (1, 'shop'); \
         INSERT INTO application_groups (id, name) VALUES (5, 'shop-all'); \
         INSERT INTO application_group_members (group_id, application_id) VALUES (5, 1); \
         UPDATE haproxy_servers SET application_id = 1 WHERE id IN ({s1a}, {s1b})"
    ))
    .await;
    sys.start_worker(sys.config());
    let txn = Uuid::new_v4();
    let batch = json!({"transaction_id": txn, "action": "maint", "actor": "ac:group-job",
                       "targets": {"application_group_id": 5}});
    sys.publish_raw("batch", &serde_json::to_vec(&batch).expect("json"))
        .await;
    let done = sys.wait_event("batch.completed", txn, WAIT).await;
    assert_eq!(done["counts"]["success"], 2, "{done}");
    assert_eq!(ready_in(&lb1, "web").await, 1);
    assert_eq!(ready_in(&lb2, "web").await, 1);
}
