//! The scheduler's sweeper (issue 11 point 4): an action whose publish was
//! lost, an action left `running` by a dead worker and a batch that never
//! completed are re-driven or finished after their grace period.

use std::time::Duration;

use chrono::Utc;
use haproxy_control::config::Config;
use haproxy_control::db::{self, actions, sweeps};
use haproxy_control::domain::AdminState;
use haproxy_control::domain::action::ActionStatus;
use uuid::Uuid;

use crate::harness::lb::{Registered, SpiedLb as Lb};
use crate::harness::{TestSystem, eventually};

const WAIT: Duration = Duration::from_secs(15);

/// A scheduler configuration that sweeps every second with these graces
/// (seconds) and no scheduled sync in the test's time.
fn sweeping(sys: &TestSystem, pending: u64, running: u64, batch: u64) -> Config {
    let mut c = sys.config();
    c.sync.interval_secs = 3_600;
    c.sweeper.interval_secs = 1;
    c.sweeper.pending_grace_secs = pending;
    c.sweeper.running_grace_secs = running;
    c.sweeper.batch_grace_secs = batch;
    c
}

/// `haproxy_sweeps`' counter of `kind`.
async fn swept(sys: &TestSystem, kind: &str) -> i64 {
    let counters = db::run(&sys.pool, sweeps::counters)
        .await
        .expect("counters");
    counters
        .into_iter()
        .find(|(k, _)| k == kind)
        .map_or(0, |(_, n)| n)
}

#[tokio::test]
async fn a_pending_action_whose_publish_was_lost_is_published_again_and_applied_once() {
    let Registered { mut sys, lb, .. } = Lb::numbered(&[("web", 2)]).await.with_worker().await;
    let server = sys.server_id("lb-1", "web", "s1").await;
    let txn = Uuid::new_v4();
    // Recorded as the API records it; its publish never happened.
    let new = actions::NewAction {
        transaction_id: txn,
        server_id: Some(server),
        batch_id: None,
        action: AdminState::Drain,
        status: ActionStatus::Pending,
        actor: "user:alice".into(),
        reason: Some("publish lost".into()),
        force: false,
        requested_at: Utc::now(),
    };
    db::run(&sys.pool, move |c| actions::claim(c, &new))
        .await
        .expect("recorded");
    sys.start_scheduler(sweeping(&sys, 3, 600, 900));

    tokio::time::sleep(Duration::from_secs(1)).await;
    let early = sys.action(txn).await.expect("row");
    assert_eq!(early.status, "pending", "left alone within its grace");
    assert_eq!(lb.web_bits("s1").await, 0);

    let row = sys.wait_final(txn, WAIT).await;
    assert_eq!(
        (row.status.as_str(), row.attempts),
        ("success", 1),
        "{row:?}"
    );
    assert_eq!(lb.web_bits("s1").await, 8, "HAProxy shows FDRAIN");
    assert_eq!(sys.actions().await.len(), 1, "one action row");
    assert_eq!(row.reason.as_deref(), Some("publish lost"));
    sys.wait_event("action.succeeded", txn, WAIT).await;
    assert_eq!(swept(&sys, "pending").await, 1);
    assert_eq!(lb.spy.count("set server"), 1, "HAProxy changed once");
}

#[tokio::test]
async fn a_running_action_of_a_dead_worker_is_resumed_and_finished() {
    let Registered { mut sys, lb, .. } = Lb::numbered(&[("web", 2)]).await.with_worker().await;
    let server = sys.server_id("lb-1", "web", "s2").await;
    let txn = Uuid::new_v4();
    // A worker recorded it running an hour ago, then died; its message is gone.
    sys.exec(&format!(
        "INSERT INTO haproxy_actions (transaction_id, server_id, action, status, actor, \
         requested_at, attempts, created_at, started_at) VALUES ('{txn}', {server}, 'maint', \
         'running', 'user:bob', now() - interval '1 hour', 1, now() - interval '1 hour', \
         now() - interval '1 hour')"
    ))
    .await;
    sys.start_scheduler(sweeping(&sys, 600, 5, 900));

    let row = sys.wait_final(txn, WAIT).await;
    assert_eq!(
        (row.status.as_str(), row.attempts),
        ("success", 2),
        "the same row resumed: {row:?}"
    );
    assert_eq!(lb.web_bits("s2").await & 1, 1, "HAProxy shows FMAINT");
    assert_eq!(sys.actions().await.len(), 1, "one action row");
    let event = sys.wait_event("action.succeeded", txn, WAIT).await;
    assert_eq!(event["actor"], "user:bob");
    assert_eq!(swept(&sys, "running").await, 1);
}

/// A batch of two servers, both actions final, never completed; created
/// `age` ago.
async fn batch_left_open(sys: &TestSystem, age: &str) -> Uuid {
    let txn = Uuid::new_v4();
    sys.exec(&format!(
        "WITH b AS (INSERT INTO haproxy_batches (transaction_id, action, actor, targets, total, \
         requested_at, created_at) VALUES ('{txn}', 'drain', 'ac:deploy-job-77', \
         '{{\"server_ids\": [1, 2]}}', 2, now() - interval '{age}', now() - interval '{age}') \
         RETURNING id) \
         INSERT INTO haproxy_actions (transaction_id, batch_id, action, status, actor, \
         requested_at, error, finished_at) \
         SELECT gen_random_uuid(), b.id, 'drain', s.status, 'ac:deploy-job-77', now(), s.error, now() \
         FROM b, (VALUES ('success', NULL), ('failed', 'agent_unreachable')) AS s(status, error)"
    ))
    .await;
    txn
}

#[tokio::test]
async fn a_batch_that_never_completed_is_completed_with_its_event() {
    let mut sys = TestSystem::start().await;
    let stuck = batch_left_open(&sys, "1 hour").await;
    let recent = batch_left_open(&sys, "1 second").await;
    sys.start_scheduler(sweeping(&sys, 600, 600, 30));

    let event = sys.wait_event("batch.completed", stuck, WAIT).await;
    assert_eq!(event["counts"]["success"], 1, "{event}");
    assert_eq!(event["counts"]["failed"], 1, "{event}");
    assert_eq!(event["actor"], "ac:deploy-job-77");
    assert!(sys.batch(stuck).await.expect("batch").completed);
    assert_eq!(swept(&sys, "batch_completed").await, 1);

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !sys.batch(recent).await.expect("batch").completed,
        "a batch within its grace is left alone"
    );
    assert!(sys.events_for("batch.completed", recent).is_empty());
    assert_eq!(
        sys.events_for("batch.completed", stuck).len(),
        1,
        "completed once, not at every sweep"
    );
}

#[tokio::test]
async fn a_batch_whose_publish_was_lost_is_published_again_and_expanded() {
    let Registered { mut sys, lb, .. } = Lb::numbered(&[("web", 3)]).await.with_worker().await;
    let s1 = sys.server_id("lb-1", "web", "s1").await;
    let s2 = sys.server_id("lb-1", "web", "s2").await;
    let txn = Uuid::new_v4();
    // Recorded as the API records it (total: the live servers named); no
    // command was published.
    sys.exec(&format!(
        "INSERT INTO haproxy_batches (transaction_id, action, actor, targets, total, requested_at, \
         created_at) VALUES ('{txn}', 'drain', 'user:alice', '{{\"server_ids\": [{s1}, {s2}]}}', 2, \
         now() - interval '1 hour', now() - interval '1 hour')"
    ))
    .await;
    sys.start_scheduler(sweeping(&sys, 600, 600, 2));

    let event = sys.wait_event("batch.completed", txn, WAIT).await;
    assert_eq!(event["counts"]["success"], 2, "{event}");
    assert_eq!(lb.web_bits("s1").await, 8);
    assert_eq!(lb.web_bits("s2").await, 8);
    assert_eq!(lb.web_bits("s3").await, 0);
    assert_eq!(swept(&sys, "batch_republished").await, 1);
    eventually(WAIT, "the worker completed it", || async {
        sys.batch(txn).await.filter(|b| b.completed).map(|_| ())
    })
    .await;
    assert_eq!(swept(&sys, "batch_completed").await, 0, "the worker did");
}
