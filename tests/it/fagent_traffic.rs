//! Real traffic through a real HAProxy: a drained or maintained server gets
//! no new request; a readied one gets traffic again.

use std::collections::HashMap;

use crate::harness::{HttpBackends, TestAgent, TestHaproxy, free_port, fresh_connection_client};

struct Stack {
    _backends: HttpBackends,
    _haproxy: TestHaproxy,
    agent: TestAgent,
    frontend: String,
}

async fn stack() -> Stack {
    let backends = HttpBackends::start(&["app1", "app2", "app3"]).await;
    let port = free_port();
    let servers: String = backends
        .servers
        .iter()
        .map(|b| format!("  server {} {}\n", b.name, b.addr))
        .collect();
    let haproxy = TestHaproxy::start(&format!(
        "frontend fe\n  bind 127.0.0.1:{port}\n  default_backend web\n\
         backend web\n  balance roundrobin\n{servers}"
    ))
    .await;
    let agent = TestAgent::start(&haproxy.socket).await;
    Stack {
        _backends: backends,
        _haproxy: haproxy,
        agent,
        frontend: format!("http://127.0.0.1:{port}/"),
    }
}

/// Sends `n` requests, each on a new connection, and counts who answered.
async fn hits(frontend: &str, n: usize) -> HashMap<String, usize> {
    let client = fresh_connection_client();
    let mut seen = HashMap::new();
    for _ in 0..n {
        let r = client.get(frontend).send().await.expect("haproxy answers");
        assert_eq!(r.status(), 200);
        let who = r.text().await.expect("body");
        *seen.entry(who).or_insert(0) += 1;
    }
    seen
}

async fn out_of_balancing_then_back(state: &str) {
    let s = stack().await;
    let before = hits(&s.frontend, 30).await;
    assert!(
        before.get("app2").copied().unwrap_or(0) > 0,
        "app2 must serve first: {before:?}"
    );

    let answer = s.agent.set("web", "app2", state).await;
    assert_eq!(answer["server"]["admin_state"], state);
    assert_eq!(answer["applied"], true);
    let during = hits(&s.frontend, 200).await;
    assert_eq!(
        during.get("app2"),
        None,
        "{state}: app2 got traffic: {during:?}"
    );
    assert_eq!(during.values().sum::<usize>(), 200);

    let answer = s.agent.set("web", "app2", "ready").await;
    assert_eq!(answer["server"]["admin_state"], "ready");
    let after = hits(&s.frontend, 30).await;
    assert!(
        after.get("app2").copied().unwrap_or(0) > 0,
        "app2 must serve again: {after:?}"
    );
}

#[tokio::test]
async fn drained_server_gets_no_new_requests_until_ready() {
    out_of_balancing_then_back("drain").await;
}

#[tokio::test]
async fn server_in_maintenance_gets_no_requests_until_ready() {
    out_of_balancing_then_back("maint").await;
}
