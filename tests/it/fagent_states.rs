//! Every state HAProxy can show, read from a live HAProxy through the agent.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::Value;

use crate::harness::{HttpBackends, TestAgent, TestHaproxy, eventually, free_port};

#[tokio::test]
async fn every_state_haproxy_shows_is_read_correctly() {
    let up = HttpBackends::start(&["a1", "a2", "a3"]).await;
    let not_found = HttpBackends::start_with_status("n1", StatusCode::NOT_FOUND).await;
    let closed = free_port();
    let (a1, a2, a3) = (up.addr("a1"), up.addr("a2"), up.addr("a3"));
    let haproxy = TestHaproxy::start(&format!(
        "backend web\n  option httpchk GET /\n\
         \x20 server web1 {a1} check inter 100 fall 2 rise 1\n\
         \x20 server web2 {a2} check inter 100 fall 2 rise 1\n\
         \x20 server web3 {a3} check inter 100 fall 2 rise 1\n\
         \x20 server web4 127.0.0.1:{closed} check inter 100 fall 2 rise 1\n\
         \x20 server web5 {a1}\n\
         \x20 server web6 [::1]:{closed} check inter 100 fall 2 rise 1 weight 50\n\
         backend tracking\n\
         \x20 server t1 {a1} track web/web1\n\
         \x20 server t2 {a2} track web/web2\n\
         backend nolb\n  option httpchk GET /\n  http-check disable-on-404\n\
         \x20 server n1 {} check inter 100 fall 2 rise 1\n\
         backend empty\n",
        not_found.addr
    ))
    .await;
    let agent = TestAgent::start(&haproxy.socket).await;

    agent.set("web", "web1", "drain").await;
    agent.set("web", "web2", "maint").await;
    assert_eq!(haproxy.cmd("set weight web/web3 0").await.trim(), "");

    let expected: [(&str, &str, &str, &str, u64); 9] = [
        ("web", "web1", "drain", "up", 1),
        ("web", "web2", "maint", "down", 1),
        ("web", "web3", "ready", "up", 0),
        ("web", "web4", "ready", "down", 1),
        ("web", "web5", "ready", "no_check", 1),
        ("web", "web6", "ready", "down", 50),
        ("tracking", "t1", "drain", "up", 1),
        ("tracking", "t2", "maint", "down", 1),
        ("nolb", "n1", "ready", "stopping", 1),
    ];
    // Health checks need a few rounds to settle.
    let listing: Value = eventually(Duration::from_secs(10), "checks to settle", || async {
        let body: Value = agent
            .get("/v1/backends")
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let settled = expected
            .iter()
            .all(|(b, s, _, op, _)| find(&body, b, s).is_some_and(|srv| srv["op_state"] == *op));
        settled.then_some(body)
    })
    .await;

    for (backend, server, admin, op, weight) in expected {
        let srv = find(&listing, backend, server).unwrap_or_else(|| panic!("{backend}/{server}"));
        assert_eq!(srv["admin_state"], admin, "{backend}/{server}: {srv}");
        assert_eq!(srv["op_state"], op, "{backend}/{server}: {srv}");
        assert_eq!(srv["weight"], weight, "{backend}/{server}: {srv}");
    }
    let web6 = find(&listing, "web", "web6").unwrap_or_default();
    assert_eq!(web6["address"], "::1");
    assert_eq!(web6["port"], closed);
    let web1 = find(&listing, "web", "web1").unwrap_or_default();
    assert_eq!(web1["address"], "127.0.0.1");
    assert_eq!(web1["port"], a1.port());
    assert_eq!(web1["check_status"], "L7OK");
    assert_eq!(
        find(&listing, "web", "web4").unwrap_or_default()["check_status"],
        "L4CON"
    );
    let empty = listing["backends"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["name"] == "empty"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(empty["servers"], serde_json::json!([]));

    // A drained server that then fails its check stays `drain` (the bit mask,
    // not the `DOWN` status, decides).
    let answer = agent.set("web", "web4", "drain").await;
    assert_eq!(answer["server"]["admin_state"], "drain");
    assert_eq!(answer["server"]["op_state"], "down");
}

fn find<'a>(listing: &'a Value, backend: &str, server: &str) -> Option<&'a Value> {
    listing["backends"]
        .as_array()?
        .iter()
        .find(|b| b["name"] == backend)?["servers"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == server)
}
