//! `haproxy-control dead-letters list|replay` (issue 11 point 4): dead
//! letters are shown with their reason without being consumed, and a
//! replay re-drives a command exactly once.

use std::time::Duration;

use haproxy_control::dead_letters::{self, Selection};
use serde_json::json;
use uuid::Uuid;

use crate::harness::lb::{Registered, SpiedLb as Lb};
use crate::harness::{TestSystem, eventually};

const WAIT: Duration = Duration::from_secs(15);

async fn dead_depth(sys: &TestSystem) -> u32 {
    sys.depth(&sys.topology.dead_queue).await
}

#[tokio::test]
async fn list_shows_a_bad_message_with_its_reason_and_leaves_it_in_the_queue() {
    let mut sys = TestSystem::start().await;
    sys.start_worker(sys.config());
    sys.publish_raw("action", b"{\"transaction_id\": \"not json")
        .await;
    eventually(WAIT, "the worker dead-lettered it", || async {
        (dead_depth(&sys).await == 1).then_some(())
    })
    .await;

    for _ in 0..2 {
        let listed = dead_letters::list(&sys.config(), 10).await.expect("listed");
        assert_eq!(listed.len(), 1, "{listed:?}");
        let m = &listed[0];
        assert_eq!(m.routing_key, "action");
        let reason = m.x_error.as_deref().unwrap_or_default();
        assert!(
            reason.starts_with("not a valid action command") && reason.contains("EOF"),
            "{m:?}"
        );
        assert!(m.dead_lettered_at.is_some(), "{m:?}");
        assert!(
            m.transaction_id.is_some(),
            "the message id stands in: {m:?}"
        );
        // Given back (a quorum queue counts it again a moment later).
        eventually(WAIT, "the message back in the queue", || async {
            (dead_depth(&sys).await == 1).then_some(())
        })
        .await;
    }
    let none = dead_letters::list(&sys.config(), 0).await.expect("listed");
    assert!(none.is_empty());
}

#[tokio::test]
async fn replay_re_drives_one_command_once_and_a_replay_of_an_applied_one_changes_nothing() {
    let Registered { sys, lb, .. } = Lb::numbered(&[("web", 2)]).await.with_worker().await;
    let txn = Uuid::new_v4();
    let drain = json!({"transaction_id": txn, "action": "drain", "actor": "user:alice",
                       "target": {"instance": "lb-1", "backend": "web", "server": "s1"}});
    let drain = serde_json::to_vec(&drain).expect("json");
    sys.publish_dead("action", &drain, "instance lb-1 was not registered yet")
        .await;
    sys.publish_dead("action", b"garbage", "not JSON").await;
    eventually(WAIT, "two dead letters", || async {
        (dead_depth(&sys).await == 2).then_some(())
    })
    .await;

    let report = dead_letters::replay(&sys.config(), Selection::Transaction(txn))
        .await
        .expect("replayed");
    assert_eq!(report.replayed.len(), 1, "{report:?}");
    assert_eq!(report.kept, 1);
    let row = sys.wait_final(txn, WAIT).await;
    assert_eq!(row.status, "success", "{row:?}");
    assert_eq!(lb.web_bits("s1").await, 8, "drained at HAProxy");
    let left = dead_letters::list(&sys.config(), 10).await.expect("listed");
    assert_eq!(left.len(), 1, "only the garbage is left: {left:?}");
    assert_eq!(left[0].x_error.as_deref(), Some("not JSON"));

    // A later command makes s1 ready; the old drain replayed again must not
    // undo it.
    let ready = Uuid::new_v4();
    sys.publish_action(
        &json!({"transaction_id": ready, "action": "ready", "actor": "user:alice",
                               "target": {"instance": "lb-1", "backend": "web", "server": "s1"}}),
    )
    .await;
    assert_eq!(sys.wait_final(ready, WAIT).await.status, "success");
    sys.publish_dead("action", &drain, "replayed by mistake")
        .await;
    let report = dead_letters::replay(&sys.config(), Selection::Transaction(txn))
        .await
        .expect("replayed");
    assert_eq!(report.replayed.len(), 1);
    eventually(WAIT, "the duplicate re-announced", || async {
        (sys.events_for("action.succeeded", txn).len() == 2).then_some(())
    })
    .await;
    assert_eq!(lb.web_bits("s1").await, 0, "still ready at HAProxy");
    assert_eq!(lb.spy.count("set server"), 2, "drain and ready, once each");
    assert_eq!(sys.actions().await.len(), 2);
    assert_eq!(sys.action(txn).await.expect("row").attempts, 1);
    eventually(WAIT, "the garbage alone in the queue", || async {
        (dead_depth(&sys).await == 1).then_some(())
    })
    .await;
    let left = dead_letters::list(&sys.config(), 10).await.expect("listed");
    assert_eq!(left.len(), 1, "the garbage stays: {left:?}");
}
