//! Proof 2 of issue 12: a rollout waits for a server's sessions after the
//! drain. A long download through HAProxy's frontend holds a session on
//! `w1` (HAProxy's `use-server` by the `srv` URL parameter): `maint` comes
//! only after it ended with all its bytes; a session outlasting
//! `drain.timeout_secs` halts the rollout (`halt`) or is cut
//! (`shutdown_sessions`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::{Fleet, WEB};
use crate::harness::eventually;

const MB: u64 = 1024 * 1024;

/// How a download through the frontend ended.
#[derive(Debug)]
struct Downloaded {
    bytes: u64,
    /// The length HAProxy announced.
    expected: u64,
    /// Why the body stopped early, if it did.
    error: Option<String>,
    ended: DateTime<Utc>,
}

/// Starts `GET /big?mb=…` on `server` through the frontend and reads its
/// body in a task of its own; returns once the answer's headers arrived and
/// HAProxy counts the session on the server.
async fn start_download(
    fleet: &Fleet,
    server: &str,
    mb: u64,
    ms_per_mb: u64,
) -> JoinHandle<Downloaded> {
    let url = format!(
        "{}/big?mb={mb}&ms_per_mb={ms_per_mb}&srv={server}",
        fleet.frontend
    );
    let client = haproxy_control::http::client::builder()
        .build()
        .expect("client");
    let mut response = client.get(url).send().await.expect("download answers");
    assert_eq!(response.status(), 200, "download of {server}");
    let expected = response.content_length().expect("a Content-Length");
    let task = tokio::spawn(async move {
        let mut bytes = 0u64;
        let error = loop {
            match response.chunk().await {
                Ok(Some(chunk)) => bytes += chunk.len() as u64,
                Ok(None) => break None,
                Err(e) => break Some(e.to_string()),
            }
        };
        Downloaded {
            bytes,
            expected,
            error,
            ended: Utc::now(),
        }
    });
    eventually(
        Duration::from_secs(5),
        "the download's session on its server",
        || async { (sessions(fleet, server).await >= 1).then_some(()) },
    )
    .await;
    task
}

/// HAProxy's current sessions (`scur`) of `web/{server}`.
async fn sessions(fleet: &Fleet, server: &str) -> u64 {
    let stat = fleet.haproxy.cmd("show stat").await;
    stat.lines()
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"web") && f.get(1) == Some(&server))
        .and_then(|f| f.get(4)?.parse().ok())
        .unwrap_or(0)
}

/// A rollout of `ids` with a no-op update and the given drain settings.
fn rollout_body(ids: &[i64], drain: Value) -> Value {
    json!({
        "targets": {"server_ids": ids},
        "wave": {"size": 1},
        "drain": drain,
        "update": {"kind": "command", "argv": ["/usr/bin/true"]},
        "health": {"healthy_for_secs": 0, "timeout_secs": 30},
    })
}

fn states(changes: &[super::TimedChange]) -> Vec<&str> {
    changes.iter().map(|c| c.state.as_str()).collect()
}

#[tokio::test]
async fn maint_waits_until_a_long_download_has_finished_with_all_its_bytes() {
    let fleet = Fleet::start(&WEB).await;
    let w1 = fleet.ids(&["w1"]).await[0];
    // 24 MB at 8 MB/s: 3 s.
    let download = start_download(&fleet, "w1", 24, 125).await;
    let id = fleet
        .start_rollout(&rollout_body(
            &[w1],
            json!({"timeout_secs": 60, "poll_ms": 200}),
        ))
        .await;

    // While it runs, the server is drained in HAProxy and the rollout waits.
    eventually(Duration::from_secs(5), "w1 drained", || async {
        (fleet.bits("w1").await == 8).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!download.is_finished(), "the download still runs");
    let r = fleet.rollout(id).await;
    assert_eq!(Fleet::server_of(&r, w1)["step"], "draining", "{r}");
    assert_eq!(
        fleet.bits("w1").await,
        8,
        "drain, not maint, while a session is open"
    );

    let done = download.await.expect("download task");
    assert_eq!(done.error, None, "{done:?}");
    assert_eq!((done.bytes, done.expected), (24 * MB, 24 * MB), "{done:?}");
    fleet
        .wait_status(id, "completed", Duration::from_secs(30))
        .await;

    let changes = fleet.action_changes(w1).await;
    assert_eq!(
        states(&changes),
        ["drain", "maint", "drain", "ready"],
        "{changes:?}"
    );
    assert!(
        changes[0].at < done.ended,
        "drained while the download ran: {changes:?} {done:?}"
    );
    assert!(
        changes[1].at > done.ended,
        "maint only after the download ended: {changes:?} {done:?}"
    );
}

#[tokio::test]
async fn a_session_outlasting_the_drain_timeout_halts_the_rollout_with_the_server_drained() {
    let fleet = Fleet::start(&WEB).await;
    let ids = fleet.ids(&WEB).await;
    // 200 MB at 1 MB/s: far longer than the drain timeout.
    let download = start_download(&fleet, "w1", 200, 1000).await;
    let id = fleet
        .start_rollout(&rollout_body(
            &ids,
            json!({"timeout_secs": 3, "on_timeout": "halt"}),
        ))
        .await;
    let halted = fleet.wait_ended(id, Duration::from_secs(30)).await;
    assert_eq!(halted["status"], "halted", "{halted}");

    Fleet::assert_halted_by(&halted, ids[0], "draining", "drain_timeout", 3);
    fleet.wait_halt_events("w1", "drain_timeout").await;
    assert!(!download.is_finished(), "the session is still open");
    // That server drained, never maint; the others untouched.
    assert_eq!(fleet.bits("w1").await, 8);
    assert_eq!(states(&fleet.action_changes(ids[0]).await), ["drain"]);
    for (name, other) in WEB.iter().zip(&ids).skip(1) {
        let o = Fleet::server_of(&halted, *other);
        assert_eq!(
            (o["step"].as_str(), &o["started_at"]),
            (Some("pending"), &Value::Null),
            "{o}"
        );
        assert_eq!(fleet.bits(name).await, 0, "{name} ready");
        assert!(fleet.action_changes(*other).await.is_empty(), "{name}");
        assert_eq!(fleet.apps.served_version(name).await.as_deref(), Some("v1"));
    }
    // It stays so: nothing more happens to that server.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fleet.bits("w1").await, 8);
    assert_eq!(fleet.rollout(id).await["status"], "halted");
    download.abort();
}

#[tokio::test]
async fn with_shutdown_sessions_a_session_outlasting_the_drain_timeout_is_cut_and_the_rollout_completes()
 {
    let fleet = Fleet::start(&WEB).await;
    let ids = fleet.ids(&WEB).await;
    let started = Utc::now();
    let download = start_download(&fleet, "w1", 200, 1000).await;
    let id = fleet
        .start_rollout(&rollout_body(
            &ids,
            json!({"timeout_secs": 3, "on_timeout": "shutdown_sessions"}),
        ))
        .await;
    let cut = tokio::time::timeout(Duration::from_secs(20), download)
        .await
        .expect("the session is cut")
        .expect("download task");
    assert!(cut.bytes < cut.expected, "cut short: {cut:?}");
    assert!(
        cut.ended - started >= chrono::TimeDelta::seconds(3),
        "only after the drain timeout: {cut:?}"
    );
    let done = fleet
        .wait_status(id, "completed", Duration::from_secs(60))
        .await;
    for s in done["servers"].as_array().expect("servers") {
        assert_eq!(s["step"], "ready", "{s}");
    }
    let changes = fleet.action_changes(ids[0]).await;
    assert_eq!(
        states(&changes),
        ["drain", "maint", "drain", "ready"],
        "{changes:?}"
    );
    assert!(
        changes[1].at - changes[0].at >= chrono::TimeDelta::seconds(3),
        "maint after the drain timeout: {changes:?}"
    );
    assert!(fleet.spy.count("shutdown sessions server web/w1") >= 1);
    let bits = fleet.haproxy.admin_bits().await;
    assert!(bits.iter().all(|(_, b)| *b == 0), "{bits:?}");
}
