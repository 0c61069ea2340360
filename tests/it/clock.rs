//! One clock (issue 11, point 2): rule 6 compares times from the database's
//! clock only, so an agent whose machine's clock is minutes off neither
//! hides a change made at HAProxy nor lets a stale snapshot overwrite a
//! newer action. The agent runs as its own process under libfaketime
//! (Debian package `faketime`), 5 minutes behind or ahead.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use crate::harness::lb::SpiedLb;
use crate::harness::{TestSystem, eventually};

const WAIT: Duration = Duration::from_secs(20);
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The reference fagent as a child process whose clock is `offset_secs`
/// off (libfaketime's relative `FAKETIME`), killed on drop.
struct SkewedAgent {
    url: String,
    token: String,
    child: Child,
}

impl SkewedAgent {
    async fn start(socket: &std::path::Path, offset_secs: i64) -> SkewedAgent {
        assert!(
            std::path::Path::new(LIBFAKETIME).exists(),
            "libfaketime is missing: deploy/ensure-deps.sh installs Debian's faketime"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let token = format!("token-{}", Uuid::new_v4());
        let child = Command::new(env!("CARGO_BIN_EXE_haproxy-control"))
            .args(["fagent", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--haproxy-socket")
            .arg(socket)
            .env("FAGENT_TOKEN", &token)
            .env("LD_PRELOAD", LIBFAKETIME)
            .env("FAKETIME", format!("{offset_secs:+}"))
            .env("FAKETIME_DONT_RESET", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the fagent under libfaketime");
        let agent = SkewedAgent {
            url: format!("http://127.0.0.1:{port}"),
            token,
            child,
        };
        eventually(WAIT, "the skewed fagent answers", || async {
            agent.fetched_at().await
        })
        .await;
        agent
    }

    /// The `fetched_at` of the agent's listing: its machine's clock.
    async fn fetched_at(&self) -> Option<DateTime<Utc>> {
        let body: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/v1/backends", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        body["fetched_at"].as_str()?.parse().ok()
    }

    /// Checks that the agent's clock really is off by about `offset_secs`.
    async fn assert_skewed(&self, offset_secs: i64) {
        let theirs = self.fetched_at().await.expect("listing");
        let skew = (theirs - Utc::now()).num_seconds();
        assert!(
            (skew - offset_secs).abs() < 30,
            "the agent's clock is {skew} s off, expected about {offset_secs} s"
        );
    }
}

impl Drop for SkewedAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Backend `web` of `s1`, `s2`, with its agent `offset_secs` off, registered
/// as `lb-1` with a worker.
async fn skewed_lb(offset_secs: i64) -> (TestSystem, SpiedLb, SkewedAgent, i64) {
    let lb = SpiedLb::numbered(&[("web", 2)]).await;
    let agent = SkewedAgent::start(&lb.spy.socket, offset_secs).await;
    agent.assert_skewed(offset_secs).await;
    let mut sys = TestSystem::start().await;
    let id = sys.register("lb-1", &agent.url, &agent.token).await;
    sys.start_worker(sys.config());
    (sys, lb, agent, id)
}

async fn drain_s1(sys: &TestSystem) {
    let txn = Uuid::new_v4();
    sys.publish_action(&json!({
        "transaction_id": txn, "action": "drain", "actor": "user:alice",
        "target": {"instance": "lb-1", "backend": "web", "server": "s1"}
    }))
    .await;
    sys.wait_event("action.succeeded", txn, WAIT).await;
}

/// Agent 5 minutes behind: its snapshot looks older than the action's write,
/// and with its clock the change made at HAProxy afterwards was kept out of
/// the database. On the database's clock it is recorded.
#[tokio::test]
async fn an_agent_5_minutes_behind_does_not_hide_a_change_made_at_haproxy() {
    let (sys, lb, _agent, id) = skewed_lb(-300).await;
    drain_s1(&sys).await;
    assert_eq!(
        lb.haproxy.cmd("set server web/s1 state ready").await.trim(),
        ""
    );
    let sync = sys.publish_sync(Some(id)).await;
    let (status, counts) = sys.wait_sync(sync, WAIT).await;
    assert_eq!(status, "success", "{counts}");
    assert_eq!(counts["kept_states"], 0, "{counts}");
    assert_eq!(counts["state_changes"], 1, "{counts}");
    assert_eq!(sys.server("lb-1", "web", "s1").await.admin_state, "ready");
    let s1 = sys.server("lb-1", "web", "s1").await.id;
    let seen = eventually(WAIT, "the sync's history row", || async {
        let h = sys.history_from("sync").await;
        (!h.is_empty()).then_some(h)
    })
    .await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        sys.history(s1).await.len(),
        2,
        "drain by action, ready by sync"
    );
}

/// Agent 5 minutes ahead: a snapshot read before an action looks newer than
/// the action's write, and with its clock it overwrote the action. On the
/// database's clock the action wins (rule 6).
#[tokio::test]
async fn an_agent_5_minutes_ahead_cannot_overwrite_a_newer_action_with_a_stale_snapshot() {
    let (sys, lb, _agent, id) = skewed_lb(300).await;
    // The sync's reading of HAProxy reaches it 1.5 s late: it shows s1 ready.
    lb.spy
        .set_reply_delay("show servers state$", Duration::from_millis(1500));
    let sync = sys.publish_sync(Some(id)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    drain_s1(&sys).await;
    let (status, counts) = sys.wait_sync(sync, WAIT).await;
    assert_eq!(status, "success", "{counts}");
    assert_eq!(
        counts["kept_states"], 1,
        "the stale reading was not applied: {counts}"
    );
    assert_eq!(sys.server("lb-1", "web", "s1").await.admin_state, "drain");
    assert_eq!(sys.history_from("sync").await, []);
}

/// A command's `requested_at` more than `worker.clock_tolerance_secs` ahead
/// of the database's clock is refused as bad input: dead-lettered with the
/// reason, nothing recorded or sent. Accepted, it would have superseded
/// every later command for its server (rule 3).
#[tokio::test]
async fn a_command_from_the_future_is_dead_lettered_and_cannot_supersede_later_ones() {
    let lb = SpiedLb::numbered(&[("web", 2)]).await;
    let registered = lb.registered().await;
    let (mut sys, lb) = (registered.sys, registered.lb);
    let mut config = sys.config();
    config.worker.clock_tolerance_secs = 60;
    sys.start_worker(config);
    let target = json!({"instance": "lb-1", "backend": "web", "server": "s1"});
    let in_a_day = (Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let future_action = Uuid::new_v4();
    sys.publish_action(&json!({
        "transaction_id": future_action, "action": "maint", "actor": "user:mallory",
        "target": target, "requested_at": in_a_day,
    }))
    .await;
    let future_batch = Uuid::new_v4();
    let s1 = sys.server_id("lb-1", "web", "s1").await;
    let batch = json!({
        "transaction_id": future_batch, "action": "maint", "actor": "user:mallory",
        "targets": {"server_ids": [s1]}, "requested_at": in_a_day,
    });
    sys.publish_raw("batch", batch.to_string().as_bytes()).await;
    let dead = sys.wait_dead_letters(2, WAIT).await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    for d in &dead {
        assert!(
            d.error.contains("ahead of the database's clock")
                && d.error.contains("clock_tolerance_secs = 60"),
            "{d:?}"
        );
    }
    assert!(
        sys.action(future_action).await.is_none(),
        "nothing recorded"
    );
    assert!(sys.batch(future_batch).await.is_none(), "nothing recorded");
    assert_eq!(lb.spy.count("set server"), 0, "nothing sent to HAProxy");

    // A later command for that server is applied, not superseded; one
    // within the tolerance (a client a little ahead) is accepted.
    drain_s1(&sys).await;
    let slightly_ahead = Uuid::new_v4();
    sys.publish_action(&json!({
        "transaction_id": slightly_ahead, "action": "ready", "actor": "user:alice",
        "target": target,
        "requested_at": (Utc::now() + chrono::Duration::seconds(20)).to_rfc3339(),
    }))
    .await;
    assert_eq!(sys.wait_final(slightly_ahead, WAIT).await.status, "success");
    assert_eq!(sys.server("lb-1", "web", "s1").await.admin_state, "ready");
}
