//! Sync: discovery, reconciliation, application mapping, scheduler, against
//! real HAProxy, PostgreSQL and RabbitMQ.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::lb::{Registered, SpiedLb};
use crate::harness::proxy::Mode;
use crate::harness::rows::Change;
use crate::harness::{HttpBackends, TestSystem, eventually};

const WAIT: Duration = Duration::from_secs(20);

fn events_of(sys: &TestSystem, kind: &str, server: &str) -> Vec<Value> {
    sys.events()
        .into_iter()
        .filter(|e| e["type"] == kind && e["server"]["name"] == server)
        .collect()
}

#[tokio::test]
async fn servers_added_and_deleted_at_runtime_are_discovered_removed_and_come_back_on_the_same_row()
{
    let Registered { sys, lb, id } = &SpiedLb::numbered(&[("web", 2)]).await.with_worker().await;
    let (haproxy, id) = (&lb.haproxy, *id);
    let addr = lb.backends.addr("app");

    assert!(
        haproxy
            .cmd(&format!("add server web/s3 {addr}"))
            .await
            .contains("New server registered")
    );
    assert_eq!(haproxy.cmd("enable server web/s3").await.trim(), "");
    let txn = sys.publish_sync(Some(id)).await;
    let (status, counts) = sys.wait_sync(txn, WAIT).await;
    assert_eq!(status, "success", "{counts}");
    assert_eq!(counts["new"], 1, "{counts}");
    let s3 = sys.server("lb-1", "web", "s3").await;
    assert!(!s3.removed);
    eventually(WAIT, "server.discovered for s3", || async {
        events_of(sys, "server.discovered", "s3").pop()
    })
    .await;

    assert_eq!(
        haproxy.cmd("set server web/s3 state maint").await.trim(),
        ""
    );
    assert!(
        haproxy
            .cmd("del server web/s3")
            .await
            .contains("Server deleted")
    );
    let txn = sys.publish_sync(Some(id)).await;
    let (_, counts) = sys.wait_sync(txn, WAIT).await;
    assert_eq!(counts["removed"], 1, "{counts}");
    assert!(
        sys.server("lb-1", "web", "s3").await.removed,
        "soft-deleted, the row kept"
    );
    let gone = eventually(WAIT, "server.removed for s3", || async {
        events_of(sys, "server.removed", "s3").pop()
    })
    .await;
    assert_eq!(gone["actor"], "haproxy:lb-1");
    assert!(gone["transaction_id"].is_null());

    assert!(
        haproxy
            .cmd(&format!("add server web/s3 {addr}"))
            .await
            .contains("New server registered")
    );
    let txn = sys.publish_sync(Some(id)).await;
    sys.wait_sync(txn, WAIT).await;
    let again = sys.server("lb-1", "web", "s3").await;
    assert_eq!(again.id, s3.id, "the same row comes back");
    assert!(!again.removed);
    eventually(WAIT, "server.discovered twice", || async {
        (events_of(sys, "server.discovered", "s3").len() == 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn changes_made_behind_the_modules_back_are_recorded_with_the_instance_as_actor() {
    let app = HttpBackends::start(&["a"]).await;
    let addr = app.addr("a");
    let lb = SpiedLb::start(
        app,
        &format!(
            "backend web\n  server s1 {addr} check inter 200\n  server s2 {addr}\n\
             backend tracking\n  server t1 {addr} track web/s1\n"
        ),
    )
    .await;
    let Registered { sys, lb, id } = &lb.with_worker().await;
    let id = *id;

    assert_eq!(
        lb.haproxy.cmd("set server web/s1 state drain").await.trim(),
        ""
    );
    let txn = sys.publish_sync(Some(id)).await;
    let (_, counts) = sys.wait_sync(txn, WAIT).await;
    assert_eq!(
        counts["state_changes"], 2,
        "s1 and t1 (inherited drain): {counts}"
    );

    let s1 = sys.server("lb-1", "web", "s1").await;
    assert_eq!(s1.admin_state, "drain");
    let t1 = sys.server("lb-1", "tracking", "t1").await;
    assert_eq!(t1.admin_state, "drain", "IDRAIN is stored as drain");
    for server in [s1.id, t1.id] {
        assert_eq!(
            sys.history(server).await,
            [Change::by_sync("lb-1", "ready", "drain")]
        );
    }
    let changed = eventually(WAIT, "server.state_changed for s1", || async {
        events_of(sys, "server.state_changed", "s1").pop()
    })
    .await;
    assert_eq!(changed["actor"], "haproxy:lb-1");
    assert_eq!(changed["previous"]["admin_state"], "ready");
    assert_eq!(changed["current"]["admin_state"], "drain");

    // Nothing changed: the next sync writes no history.
    let txn = sys.publish_sync(Some(id)).await;
    let (_, counts) = sys.wait_sync(txn, WAIT).await;
    assert_eq!(counts["state_changes"], 0, "{counts}");
    assert_eq!(counts["unchanged"], 3, "{counts}");
}

#[tokio::test]
async fn servers_are_linked_by_address_and_port_by_name_template_or_left_unlinked() {
    let a = HttpBackends::start(&["a", "b", "c", "d"]).await;
    let (pa, pc) = (a.addr("a").port(), a.addr("c").port());
    let sys = TestSystem::start().await;
    sys.exec(&format!(
        "INSERT INTO servers (id, hostname, ip) VALUES (1, 'hosta', '127.0.0.1'); \
         INSERT INTO applications (id, name, server_id, port, instance) VALUES \
           (10, 'shop', 1, {pa}, '1'), (11, 'api', 1, NULL, '2'), (12, 'twin', 1, {pc}, '1'), (13, 'twin', 1, {pc}, '2')"
    ))
    .await;
    let config = format!(
        "backend web\n  server by_port {}\n  server hosta_api_2 {}\n  server ambiguous {}\n  server nobody {}\n",
        a.addr("a"),
        a.addr("b"),
        a.addr("c"),
        a.addr("d")
    );
    let Registered { sys, .. } = &SpiedLb::start(a, &config).await.registered_in(sys).await;

    let app =
        |name: &'static str| async move { sys.server("lb-1", "web", name).await.application_id };
    assert_eq!(app("by_port").await, Some(10), "IP:port");
    assert_eq!(app("hosta_api_2").await, Some(11), "name template");
    assert_eq!(
        app("ambiguous").await,
        None,
        "two applications on that IP:port"
    );
    assert_eq!(app("nobody").await, None);
    let unlinked = sys
        .live_servers()
        .await
        .into_iter()
        .filter(|s| s.application_id.is_none())
        .count();
    assert_eq!(unlinked, 2, "unlinked servers are visible as such");
}

#[tokio::test]
async fn a_renamed_backend_keeps_its_servers_application_links() {
    let a = HttpBackends::start(&["a"]).await;
    let addr = a.addr("a");
    let sys = TestSystem::start().await;
    sys.exec(
        "INSERT INTO servers (id, hostname, ip) VALUES (1, 'web1', '10.9.9.9'); \
         INSERT INTO applications (id, name, server_id, port, instance) VALUES (20, 'shop', 1, NULL, '1')",
    )
    .await;
    let lb = SpiedLb::start(a, &format!("backend shop\n  server web1_shop_1 {addr}\n")).await;
    let Registered {
        mut sys,
        mut lb,
        id,
    } = lb.registered_in(sys).await;
    assert_eq!(
        sys.server("lb-1", "shop", "web1_shop_1")
            .await
            .application_id,
        Some(20)
    );

    // The application is renamed in AC, so the template alone could no
    // longer find it: only the link cache can.
    sys.exec("UPDATE applications SET name = 'shop-legacy' WHERE id = 20")
        .await;
    lb.haproxy
        .reload(&format!("backend shop-v2\n  server web1_shop_1 {addr}\n"))
        .await;
    sys.start_worker(sys.config());
    let txn = sys.publish_sync(Some(id)).await;
    let (_, counts) = sys.wait_sync(txn, WAIT).await;
    assert_eq!(
        (counts["new"].clone(), counts["removed"].clone()),
        (json!(1), json!(1)),
        "{counts}"
    );
    let renamed = sys.server("lb-1", "shop-v2", "web1_shop_1").await;
    assert!(!renamed.removed);
    assert_eq!(
        renamed.application_id,
        Some(20),
        "the link survived the rename"
    );
    assert!(
        sys.server("lb-1", "shop", "web1_shop_1").await.removed,
        "the old backend's row stays, soft-deleted, with its history"
    );
}

/// Backend `web` with `s1` and `s2` behind a socket spy, registered as
/// `lb-1`, and a worker.
async fn web_of_s1_s2_with_worker() -> Registered {
    SpiedLb::numbered(&[("web", 2)]).await.with_worker().await
}

#[tokio::test]
async fn an_action_applied_while_a_slow_sync_is_in_flight_is_not_overwritten() {
    let Registered { sys, lb, id } = &web_of_s1_s2_with_worker().await;
    let (spy, id) = (&lb.spy, *id);

    // The sync's reading of HAProxy reaches it 1.5 s late: it shows s1 ready.
    spy.set_reply_delay("show stat -1 6 -1$", Duration::from_millis(1500));
    spy.set_reply_delay("show servers state$", Duration::from_millis(1500));
    let sync = sys.publish_sync(Some(id)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let txn = Uuid::new_v4();
    sys.publish_action(
        &json!({"transaction_id": txn, "action": "drain", "actor": "user:alice",
        "target": {"instance": "lb-1", "backend": "web", "server": "s1"}}),
    )
    .await;
    sys.wait_event("action.succeeded", txn, WAIT).await;
    let (status, counts) = sys.wait_sync(sync, WAIT).await;
    assert_eq!(status, "success");
    assert_eq!(
        counts["kept_states"], 1,
        "the stale reading was not applied: {counts}"
    );
    assert_eq!(sys.server("lb-1", "web", "s1").await.admin_state, "drain");
    assert_eq!(sys.history_from("sync").await, []);
}

#[tokio::test]
async fn a_sync_that_sees_an_action_applied_but_not_yet_committed_does_not_record_it_again() {
    let Registered { sys, lb, id } = &web_of_s1_s2_with_worker().await;
    let (spy, id) = (&lb.spy, *id);

    // HAProxy applies the drain at once, but the answer reaches the worker
    // 1.5 s later: meanwhile the change is at HAProxy and not in PostgreSQL.
    spy.set_reply_delay("set server", Duration::from_millis(1500));
    let txn = Uuid::new_v4();
    sys.publish_action(
        &json!({"transaction_id": txn, "action": "drain", "actor": "user:alice",
        "target": {"instance": "lb-1", "backend": "web", "server": "s1"}}),
    )
    .await;
    eventually(WAIT, "the drain to reach HAProxy", || async {
        (spy.count("set server web/s1 state drain") == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sync = sys.publish_sync(Some(id)).await;
    let (status, counts) = sys.wait_sync(sync, WAIT).await;
    assert_eq!(status, "success", "{counts}");
    sys.wait_event("action.succeeded", txn, WAIT).await;
    assert_eq!(
        counts["state_changes"], 0,
        "the action's own change, in flight, is not a change behind the module's back: {counts}"
    );
    assert_eq!(sys.server("lb-1", "web", "s1").await.admin_state, "drain");
    assert_eq!(
        sys.history_from("sync").await,
        [],
        "one change, one history row: the action's"
    );
    assert_eq!(sys.history_from("action").await.len(), 1);
    assert!(
        events_of(sys, "server.state_changed", "s1")
            .iter()
            .all(|e| e["transaction_id"] == txn.to_string())
    );
}

/// Publishes a sync of instance `id`, expects it to fail, and returns its
/// `instance.sync_failed` event.
async fn failed_sync(sys: &TestSystem, id: i64) -> serde_json::Value {
    let txn = sys.publish_sync(Some(id)).await;
    let (status, _) = sys.wait_sync(txn, WAIT).await;
    assert_eq!(status, "failed");
    eventually(WAIT, "instance.sync_failed", || async {
        sys.events()
            .into_iter()
            .find(|e| e["type"] == "instance.sync_failed")
    })
    .await
}

#[tokio::test]
async fn an_agent_down_during_sync_fails_it_counts_for_the_breaker_and_leaves_the_data() {
    let lb = SpiedLb::numbered(&[("web", 2)]).await;
    let mut sys = TestSystem::start().await;
    let (id, proxy) = sys.register_behind_proxy("lb-1", &lb.agent).await;
    sys.start_worker(sys.config());

    proxy.set_mode(Mode::Reset);
    let failed = failed_sync(&sys, id).await;
    assert_eq!(failed["instance"]["name"], "lb-1");
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("agent_unreachable")),
        "{failed}"
    );
    let instance = sys.instance(id).await;
    assert_eq!(instance.consecutive_failures, 1);
    assert_eq!(instance.last_sync_result.as_deref(), Some("failed"));
    assert!(instance.last_sync_error.is_some());
    assert_eq!(sys.live_servers().await.len(), 2, "untouched");
}

#[tokio::test]
async fn an_agent_refusing_the_sync_with_4xx_is_alive_for_the_breaker() {
    let Registered {
        mut sys,
        id,
        lb: _lb,
    } = SpiedLb::numbered(&[("web", 1)]).await.registered().await;
    // Two failures counted already, and now the agent refuses our token.
    sys.exec(&format!(
        "UPDATE haproxy_instances SET consecutive_failures = 2, \
         fagent_token_ref = 'token:not-the-agents-token' WHERE id = {id}"
    ))
    .await;
    sys.start_worker(sys.config());

    let failed = failed_sync(&sys, id).await;
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("agent_error") && e.contains("401")),
        "{failed}"
    );
    // The agent answered: the count starts over and the breaker stays
    // closed (as an action answered 401 does), instead of a third failure.
    let instance = sys.instance(id).await;
    assert_eq!(
        (
            instance.consecutive_failures,
            instance.breaker_state.as_str()
        ),
        (0, "closed")
    );
    assert!(
        !sys.events()
            .iter()
            .any(|e| e["type"] == "instance.circuit_opened"),
        "no breaker transition"
    );
}

#[tokio::test]
async fn a_sync_of_every_instance_and_duplicate_scheduler_ticks() {
    let Registered { sys, .. } = &SpiedLb::numbered(&[("web", 1)]).await.with_worker().await;
    let lb2 = SpiedLb::numbered(&[("web", 1)]).await;
    sys.register_agent("lb-2", &lb2.agent).await;

    // Force, no instance: one run per active instance.
    sys.publish_sync(None).await;
    eventually(WAIT, "two forced runs", || async {
        let succeeded = sys
            .sync_runs_by("force")
            .await
            .iter()
            .filter(|r| r.status == "success")
            .count();
        (succeeded == 2).then_some(())
    })
    .await;

    // Two schedulers tick in the same interval: each instance is synced once.
    let conn = haproxy_control::queue::connect(crate::harness::system::AMQP_URL, "scheduler-test")
        .await
        .expect("broker");
    let publisher = haproxy_control::queue::Publisher::new(&conn)
        .await
        .expect("publisher");
    for _ in 0..2 {
        let n = haproxy_control::scheduler::publish_ticks(
            &sys.pool,
            &publisher,
            &sys.topology,
            Duration::from_secs(3600),
        )
        .await
        .expect("tick");
        assert_eq!(n, 2);
    }
    eventually(WAIT, "both ticks handled", || async {
        (sys.depth(&sys.topology.sync_queue).await == 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sys.sync_runs_by("schedule").await.len(),
        2,
        "one scheduled run per instance"
    );
}

#[tokio::test]
async fn a_sync_while_another_runs_for_the_same_instance_is_skipped() {
    let Registered { sys, id, .. } = &SpiedLb::numbered(&[("web", 1)]).await.with_worker().await;
    let id = *id;
    let held = haproxy_control::db::locks::AdvisoryLocks::try_instance(&sys.pool, id)
        .await
        .expect("lock query")
        .expect("free");
    let txn = sys.publish_sync(Some(id)).await;
    let (status, _) = sys.wait_sync(txn, WAIT).await;
    assert_eq!(status, "skipped");
    held.release().await;
    let txn = sys.publish_sync(Some(id)).await;
    assert_eq!(sys.wait_sync(txn, WAIT).await.0, "success");
}

#[tokio::test]
async fn history_older_than_the_retention_is_deleted_in_batches() {
    let Registered { sys, .. } = &SpiedLb::numbered(&[("web", 1)]).await.registered().await;
    sys.exec(
        "INSERT INTO haproxy_server_status_history (server_id, new_admin_state, new_op_state, source, actor, changed_at) \
         SELECT (SELECT min(id) FROM haproxy_servers), 'drain', 'up', 'sync', 'haproxy:lb-1', now() - interval '40 days' \
         FROM generate_series(1, 2500); \
         INSERT INTO haproxy_server_status_history (server_id, new_admin_state, new_op_state, source, actor, changed_at) \
         SELECT (SELECT min(id) FROM haproxy_servers), 'ready', 'up', 'sync', 'haproxy:lb-1', now() - interval '29 days' \
         FROM generate_series(1, 10)",
    )
    .await;
    let deleted =
        haproxy_control::scheduler::prune(&sys.pool, Duration::from_secs(30 * 86_400), 1000)
            .await
            .expect("prune");
    assert_eq!(deleted, 2500);
    let kept = sys.history(sys.server_id("lb-1", "web", "s1").await).await;
    assert_eq!(kept.len(), 10);
    assert!(kept.iter().all(|c| c.to == "ready"), "the newer rows stay");
}
