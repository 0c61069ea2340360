//! The fault and ordering tools of the harness, proven against real peers:
//! `SocketSpy` in front of a real HAProxy, `TcpProxy` in front of a real
//! HTTP backend.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::proxy::Mode;
use crate::harness::{
    HttpBackends, SocketSpy, TcpProxy, TestAgent, TestHaproxy, fresh_connection_client,
};

fn is_set_server(line: &str) -> bool {
    line.starts_with("set server")
}

#[tokio::test]
async fn harness_selftest_spy_counts_and_times_commands_to_real_haproxy() {
    let up = HttpBackends::start(&["b1"]).await;
    let b1 = up.addr("b1");
    let haproxy = TestHaproxy::start(&format!(
        "backend web\n\
         \x20 server web1 {b1}\n\
         \x20 server web2 {b1}\n"
    ))
    .await;
    let spy = SocketSpy::start(&haproxy.socket).await;
    let agent = TestAgent::start(&spy.socket).await;

    agent.set("web", "web1", "drain").await;
    assert_eq!(spy.count("set server"), 1, "{:?}", spy.lines(""));
    assert_eq!(spy.lines("set server"), ["set server web/web1 state drain"]);
    assert!(
        haproxy
            .admin_bits()
            .await
            .iter()
            .any(|(s, bits)| s == "web/web1" && bits & 0x8 != 0),
        "web1 drained through the spy: {:?}",
        haproxy.admin_bits().await
    );
    let records = spy.records();
    assert!(!records.is_empty());
    assert!(records.iter().all(|r| r.started <= r.finished));
    assert!(
        records
            .iter()
            .any(|r| r.line.starts_with("show servers state"))
    );
    // One after the other, so never two at once.
    assert_eq!(spy.max_concurrency(is_set_server), 1);

    spy.set_delay("set server", Duration::from_millis(200));
    let (r1, r2) = tokio::join!(
        agent.set("web", "web1", "ready"),
        agent.set("web", "web2", "maint")
    );
    assert_eq!(r1["server"]["admin_state"], "ready", "{r1}");
    assert_eq!(r2["server"]["admin_state"], "maint", "{r2}");
    assert_eq!(spy.count("set server"), 3);
    assert_eq!(
        spy.max_concurrency(is_set_server),
        2,
        "both held commands overlap: {:?}",
        spy.records()
    );
    let held: Vec<_> = spy
        .records()
        .into_iter()
        .filter(|r| is_set_server(&r.line))
        .skip(1)
        .collect();
    assert!(
        held.iter()
            .all(|r| r.finished - r.started >= Duration::from_millis(200)),
        "the delay holds each command: {held:?}"
    );

    spy.set_delay("set server", Duration::ZERO);
    agent.set("web", "web2", "ready").await;
    assert_eq!(spy.count("set server"), 4);
    let last = spy
        .records()
        .into_iter()
        .rfind(|r| is_set_server(&r.line))
        .expect("the last set server is recorded");
    assert!(
        last.finished - last.started < Duration::from_millis(200),
        "delay removed: {last:?}"
    );
}

#[tokio::test]
async fn harness_selftest_spy_closes_client_when_upstream_is_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spy = SocketSpy::start(&dir.path().join("nobody-here.sock")).await;
    let mut s = tokio::net::UnixStream::connect(&spy.socket)
        .await
        .expect("the spy listens");
    s.write_all(b"show info\n")
        .await
        .expect("write the command");
    let mut reply = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut reply))
        .await
        .expect("the spy closes the connection");
    assert!(read.is_err() || reply.is_empty(), "{read:?} {reply:?}");
    assert_eq!(spy.lines(""), ["show info"]);
    // Still serving afterwards.
    let mut s = tokio::net::UnixStream::connect(&spy.socket)
        .await
        .expect("the spy still listens");
    s.write_all(b"show stat\n")
        .await
        .expect("write the command");
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut reply))
        .await
        .expect("the spy closes the connection");
    assert_eq!(spy.count("show"), 2);
}

#[tokio::test]
async fn harness_selftest_proxy_modes_against_real_backend() {
    let up = HttpBackends::start(&["b1"]).await;
    let proxy = TcpProxy::start(up.addr("b1")).await;
    let url = format!("http://{}/anything", proxy.addr);
    let client = fresh_connection_client();

    // Forward
    let r = client.get(&url).send().await.expect("forwarded");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("body"), "b1");
    assert_eq!(proxy.accepted(), 1);

    // Http500, for a GET and for a PUT with a body.
    proxy.set_mode(Mode::Http500);
    let r = client.get(&url).send().await.expect("an answer");
    assert_eq!(r.status(), 500);
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let body: serde_json::Value = r.json().await.expect("json body");
    assert_eq!(
        body,
        serde_json::json!({"error": {"code": "internal", "message": "injected"}})
    );
    let r = client
        .put(&url)
        .json(&serde_json::json!({"state": "drain", "pad": "x".repeat(20_000)}))
        .send()
        .await
        .expect("an answer to a request with a body");
    assert_eq!(r.status(), 500);
    assert_eq!(proxy.accepted(), 3);

    // Reset
    proxy.set_mode(Mode::Reset);
    let err = client
        .get(&url)
        .send()
        .await
        .expect_err("a reset is an error, not a response");
    assert!(!err.is_timeout(), "{err:?}");
    assert_eq!(proxy.accepted(), 4);

    // Hang
    proxy.reset_counter();
    proxy.set_mode(Mode::Hang);
    let short = haproxy_control::http::client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_millis(300))
        .build()
        .expect("http client");
    let err = short
        .get(&url)
        .send()
        .await
        .expect_err("a hanging peer never answers");
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(proxy.accepted(), 1);

    // Back to forwarding.
    proxy.cut();
    proxy.set_mode(Mode::Forward);
    let r = client.get(&url).send().await.expect("forwarded again");
    assert_eq!(r.text().await.expect("body"), "b1");
    assert_eq!(proxy.accepted(), 2);
}

/// Sends one keep-alive request on `s` and reads until the body `b1` came.
async fn round_trip(s: &mut tokio::net::TcpStream) {
    s.write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .expect("write the request");
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(2), async {
        while !got.ends_with(b"\r\n\r\nb1") {
            let n = s.read(&mut chunk).await.expect("read the answer");
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("the answer comes");
}

/// Asserts the peer closed `s`: a read gives 0 bytes or an error.
async fn assert_closed(s: &mut tokio::net::TcpStream) {
    let mut chunk = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(2), s.read(&mut chunk))
        .await
        .expect("the connection ends");
    assert!(matches!(read, Ok(0) | Err(_)), "still open: {read:?}");
}

#[tokio::test]
async fn harness_selftest_proxy_cut_breaks_open_connections() {
    let up = HttpBackends::start(&["b1"]).await;
    let proxy = TcpProxy::start(up.addr("b1")).await;

    let mut forwarded = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect through the proxy");
    round_trip(&mut forwarded).await;
    round_trip(&mut forwarded).await;

    proxy.set_mode(Mode::Hang);
    let mut hanging = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect to the hanging proxy");
    hanging
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .expect("write the request");
    let mut chunk = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(200), hanging.read(&mut chunk))
            .await
            .is_err(),
        "a hanging connection answers nothing"
    );
    assert_eq!(proxy.accepted(), 2);

    proxy.cut();
    assert_closed(&mut forwarded).await;
    assert_closed(&mut hanging).await;

    // The listener keeps running.
    proxy.set_mode(Mode::Forward);
    let mut again = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect after the cut");
    round_trip(&mut again).await;
    assert_eq!(proxy.accepted(), 3);

    // Dropping the proxy ends its connections too.
    drop(proxy);
    assert_closed(&mut again).await;
}
