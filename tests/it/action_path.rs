//! The action path end to end: command → worker → FAgent → HAProxy →
//! PostgreSQL → event, against real RabbitMQ, PostgreSQL and haproxy.

use std::time::Duration;

use chrono::{Duration as Age, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::proxy::Mode;
use crate::harness::{HttpBackends, SocketSpy, TcpProxy, TestAgent, TestHaproxy, TestSystem, eventually};

const WAIT: Duration = Duration::from_secs(20);

/// One HAProxy with backend `web` of `n` servers `s1..sn` (no checks), a
/// socket spy between it and its agent.
struct Lb {
    _backends: HttpBackends,
    haproxy: TestHaproxy,
    spy: SocketSpy,
    agent: TestAgent,
}

async fn lb(n: usize) -> Lb {
    let backends = HttpBackends::start(&["app"]).await;
    let addr = backends.addr("app");
    let servers: String = (1..=n).map(|i| format!("  server s{i} {addr}\n")).collect();
    let haproxy = TestHaproxy::start(&format!("backend web\n{servers}")).await;
    let spy = SocketSpy::start(&haproxy.socket).await;
    let agent = TestAgent::start(&spy.socket).await;
    Lb { _backends: backends, haproxy, spy, agent }
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

fn by_names(server: &str) -> Value {
    json!({"instance": "lb-1", "backend": "web", "server": server})
}

async fn bits(lb: &Lb, server: &str) -> u32 {
    lb.haproxy
        .admin_bits()
        .await
        .into_iter()
        .find(|(name, _)| name == &format!("web/{server}"))
        .map(|(_, b)| b)
        .unwrap_or_else(|| panic!("web/{server} missing"))
}

#[tokio::test]
async fn an_action_command_changes_haproxy_and_is_recorded_and_announced() {
    let lb = lb(2).await;
    let mut sys = TestSystem::start().await;
    sys.register_agent("lb-1", &lb.agent).await;
    sys.start_worker(sys.config());

    let txn = Uuid::new_v4();
    sys.publish_action(&action(txn, "drain", by_names("s1"))).await;
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
        sys.count(&format!(
            "SELECT count(*) AS n FROM haproxy_server_status_history WHERE server_id = {server_id} \
             AND source = 'action' AND actor = 'user:alice' AND previous_admin_state = 'ready' \
             AND new_admin_state = 'drain' AND action_id = {}",
            row.id
        ))
        .await,
        1
    );
    assert_eq!(
        sys.count(&format!("SELECT count(*) AS n FROM haproxy_servers WHERE id = {server_id} AND admin_state = 'drain'"))
            .await,
        1
    );

    // The same by server id, back to ready.
    let txn2 = Uuid::new_v4();
    sys.publish_action(&action(txn2, "ready", json!({"server_id": server_id}))).await;
    let ev = sys.wait_event("action.succeeded", txn2, WAIT).await;
    assert_eq!(ev["current"]["admin_state"], "ready");
    assert_eq!(bits(&lb, "s1").await, 0);
    assert_eq!(lb.spy.count("set server"), 2);
    sys.stop_workers().await;
}
