//! The module notices a reload of HAProxy (issue 11, point 1): a sync that
//! sees a new HAProxy process records it on the instance and publishes
//! `instance.reloaded`. HAProxy wins by default; an instance with
//! `restore_after_reload` gets back the states the module had applied, as
//! audited actions of `system:reload-restore`, and nothing else.
//! Both with a real `haproxy -sf` reload *without* a server-state file, so
//! the reload does reset every server.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::api::{ADMIN, Api};
use crate::harness::rows::Change;
use crate::harness::{TestAgent, TestHaproxy, TestSystem, assert_db_matches_haproxy, eventually};
use crate::reload::{DRAIN, MAINT, READY, bits_of, two_backends};

const WAIT: Duration = Duration::from_secs(30);
const RESTORE_ACTOR: &str = "system:reload-restore";

/// Applies `action` to `backend/server` of `lb-1` through RabbitMQ and the
/// worker, and waits for its success.
async fn apply(sys: &TestSystem, backend: &str, server: &str, action: &str) {
    let txn = Uuid::new_v4();
    sys.publish_action(&json!({
        "transaction_id": txn, "action": action, "actor": "user:alice",
        "target": {"instance": "lb-1", "backend": backend, "server": server},
    }))
    .await;
    let row = sys.wait_final(txn, WAIT).await;
    assert_eq!(row.status, "success", "{row:?}");
}

/// A forced sync of `id` that succeeded; its counts.
async fn sync(sys: &TestSystem, id: i64) -> Value {
    let txn = sys.publish_sync(Some(id)).await;
    let (status, counts) = sys.wait_sync(txn, WAIT).await;
    assert_eq!(status, "success", "{counts}");
    counts
}

fn reloaded_events(sys: &TestSystem) -> Vec<Value> {
    sys.events()
        .into_iter()
        .filter(|e| e["type"] == "instance.reloaded")
        .collect()
}

#[tokio::test]
async fn a_reload_is_noticed_recorded_and_published_and_by_default_haproxy_wins() {
    let (_app, body) = two_backends().await;
    let mut haproxy = TestHaproxy::start(&body).await;
    let agent = TestAgent::start(&haproxy.socket).await;
    let mut sys = TestSystem::start().await;
    let id = sys.register_agent("lb-1", &agent).await;
    sys.start_worker(sys.config());
    let first = sys.instance(id).await;
    let first_pid = first
        .haproxy_pid
        .expect("the registration's sync stored the process");
    assert!(!first.restore_after_reload, "off by default");
    assert_eq!(first.last_reload_at, None);
    apply(&sys, "web", "w1", "drain").await;
    assert_eq!(sync(&sys, id).await.get("reloaded"), None);
    assert!(reloaded_events(&sys).is_empty(), "no reload yet");

    haproxy.reload_graceful().await;
    let counts = sync(&sys, id).await;
    assert_eq!(counts["reloaded"], true, "{counts}");

    let row = sys.instance(id).await;
    let new_pid = row.haproxy_pid.expect("pid");
    assert_ne!(new_pid, first_pid);
    assert!(row.last_reload_at.is_some(), "the reload is recorded");
    let events = reloaded_events(&sys);
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e["instance"]["id"], id, "{e}");
    assert_eq!(e["previous_haproxy_process"]["pid"], first_pid, "{e}");
    assert_eq!(e["haproxy_process"]["pid"], new_pid, "{e}");
    assert!(e.get("restored").is_none(), "nothing restored: {e}");

    // HAProxy wins: the drain the reload lost is recorded as a sync change.
    assert_eq!(bits_of(&haproxy.admin_bits().await, "web/w1"), Some(READY));
    assert_eq!(
        sys.history_from("sync").await,
        vec![Change::by_sync("lb-1", "drain", "ready")]
    );
    assert!(
        sys.actions().await.iter().all(|a| a.actor != RESTORE_ACTOR),
        "no restore without restore_after_reload"
    );
    assert_db_matches_haproxy(&sys, "lb-1", &haproxy).await;

    // The same process at the next sync is no reload.
    let counts = sync(&sys, id).await;
    assert_eq!(counts.get("reloaded"), None, "{counts}");
    assert_eq!(reloaded_events(&sys).len(), 1);
}

#[tokio::test]
async fn with_restore_after_reload_the_states_the_module_applied_come_back_and_only_those() {
    let (_app, body) = two_backends().await;
    let mut haproxy = TestHaproxy::start(&body).await;
    let agent = TestAgent::start(&haproxy.socket).await;
    let mut sys = TestSystem::start().await;
    sys.start_worker(sys.config());
    let api = Api::start(&sys).await;
    sys.exec("INSERT INTO servers (id, hostname, ip) VALUES (501, 'lbnode', '127.0.0.1')")
        .await;
    // Through the settings API, as an admin would.
    let settings = json!({
        "is_haproxy_node": true, "name": "lb-1", "fagent_url": agent.url,
        "fagent_token": agent.token, "restore_after_reload": true,
    });
    let (status, saved) = api.put("/api/servers/501/haproxy", ADMIN, &settings).await;
    assert_eq!(status, 201, "{saved}");
    assert_eq!(saved["instance"]["restore_after_reload"], true, "{saved}");
    let id = saved["instance"]["id"].as_i64().expect("id");
    sync(&sys, id).await;

    apply(&sys, "web", "w1", "drain").await;
    apply(&sys, "api", "a1", "maint").await;
    // A change made at HAProxy, behind the module's back: HAProxy's own.
    haproxy.cmd("set server web/w3 state maint").await;
    sync(&sys, id).await;
    let w1 = sys.server("lb-1", "web", "w1").await.id;
    let a1 = sys.server("lb-1", "api", "a1").await.id;
    let view = api.ok("/api/haproxy/instances").await;
    let pid = view["items"][0]["haproxy_process"]["pid"].clone();
    assert!(pid.as_i64().is_some_and(|p| p > 0), "{view}");

    haproxy.reload_graceful().await;
    let counts = sync(&sys, id).await;
    assert_eq!(counts["reloaded"], true, "{counts}");

    // Two restores, as ordinary actions, both applied.
    let restores = eventually(WAIT, "both restores finished", || async {
        let rows: Vec<_> = sys
            .actions()
            .await
            .into_iter()
            .filter(|a| a.actor == RESTORE_ACTOR)
            .collect();
        (rows.len() == 2 && rows.iter().all(|a| a.is_final())).then_some(rows)
    })
    .await;
    for r in &restores {
        assert_eq!(r.status, "success", "{r:?}");
        assert!(
            r.reason.as_deref().is_some_and(|t| t.contains("reloaded")),
            "{r:?}"
        );
    }
    let mut restored: Vec<i64> = restores.iter().filter_map(|r| r.server_id).collect();
    restored.sort_unstable();
    let mut expected = vec![w1, a1];
    expected.sort_unstable();
    assert_eq!(restored, expected, "w1 and a1, not w3");

    let bits = haproxy.admin_bits().await;
    assert_eq!(bits_of(&bits, "web/w1"), Some(DRAIN), "{bits:?}");
    assert_eq!(bits_of(&bits, "api/a1"), Some(MAINT), "{bits:?}");
    assert_eq!(
        bits_of(&bits, "web/w3"),
        Some(READY),
        "HAProxy's own maint is not the module's to restore: {bits:?}"
    );
    // The audit trail: the reload's reset found by the sync, then the restore.
    let w1_restore = restores
        .iter()
        .find(|r| r.server_id == Some(w1))
        .expect("w1's restore");
    let history = sys.history(w1).await;
    assert_eq!(
        history[history.len() - 2..],
        [
            Change::by_sync("lb-1", "drain", "ready"),
            Change::by_action(w1_restore.id, RESTORE_ACTOR, "ready", "drain"),
        ],
        "{history:?}"
    );
    let events = reloaded_events(&sys);
    assert_eq!(events.len(), 1, "{events:?}");
    let listed = events[0]["restored"].as_array().expect("restored").len();
    assert_eq!(listed, 2, "{}", events[0]);
    let view = api.ok("/api/haproxy/instances").await;
    assert!(view["items"][0]["last_reload_at"].is_string(), "{view}");
    assert_ne!(view["items"][0]["haproxy_process"]["pid"], pid, "{view}");

    // Nothing more on the next sync: the same process, states as applied.
    let counts = sync(&sys, id).await;
    assert_eq!(counts.get("reloaded"), None, "{counts}");
    let n = sys
        .actions()
        .await
        .iter()
        .filter(|a| a.actor == RESTORE_ACTOR)
        .count();
    assert_eq!(n, 2);
    assert_db_matches_haproxy(&sys, "lb-1", &haproxy).await;
}
