//! HAProxy reloads (issue 11, point 1): with `server-state-file` and
//! `load-server-state-from-file global` in haproxy.cfg and the fagent
//! keeping that file (`--state-file`), a graceful reload (`haproxy -sf`)
//! keeps every drain and maint, and the next sync finds nothing to change.
//! The agent reports which HAProxy process answered, and a reload changes it.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{
    HttpBackends, TestAgent, TestHaproxy, TestSystem, assert_db_matches_haproxy, eventually,
};

const WAIT: Duration = Duration::from_secs(30);
/// Long enough that only the writes after changes (and the one at start)
/// happen during a test.
const NO_PERIODIC_WRITE: Duration = Duration::from_secs(3600);

/// `srv_admin_state` bits: ready, drain (FDRAIN), maint (FMAINT).
pub(crate) const READY: u32 = 0;
pub(crate) const DRAIN: u32 = 8;
pub(crate) const MAINT: u32 = 1;

/// Backend `web` of `w1..w4` and backend `api` of `a1..a3`.
pub(crate) async fn two_backends() -> (HttpBackends, String) {
    let app = HttpBackends::start(&["app"]).await;
    let addr = app.addr("app");
    let mut body = String::from("backend web\n");
    for s in ["w1", "w2", "w3", "w4"] {
        body.push_str(&format!("  server {s} {addr}\n"));
    }
    body.push_str("backend api\n");
    for s in ["a1", "a2", "a3"] {
        body.push_str(&format!("  server {s} {addr}\n"));
    }
    (app, body)
}

/// The HAProxy process as the agent reports it on `path`.
async fn process_of(agent: &TestAgent, path: &str) -> Value {
    let body = agent.get_json(path).await;
    let process = body["haproxy_process"].clone();
    assert!(process["pid"].as_u64().is_some_and(|p| p > 0), "{body}");
    assert!(
        process["started_at"]
            .as_str()
            .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()),
        "HAProxy 2.6 reports Start_time_sec: {body}"
    );
    process
}

/// A server's `srv_admin_state` in a server-state file's text.
pub(crate) fn file_bits(text: &str, backend: &str, server: &str) -> Option<u32> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 6 && f[1] == backend && f[3] == server)
        .and_then(|f| f[6].parse().ok())
}

pub(crate) fn bits_of(all: &[(String, u32)], name: &str) -> Option<u32> {
    all.iter().find(|(n, _)| n == name).map(|(_, b)| *b)
}

#[tokio::test]
async fn drains_and_maints_in_two_backends_survive_a_graceful_reload_and_the_sync_finds_no_change()
{
    let (_app, body) = two_backends().await;
    let mut haproxy = TestHaproxy::start_with_state_file(&body).await;
    let state_file = haproxy.state_file.clone().expect("a state file");
    let agent =
        TestAgent::start_with_state_file(&haproxy.socket, &state_file, NO_PERIODIC_WRITE).await;
    // The agent writes the file at start.
    eventually(WAIT, "the state file written at start", || async {
        std::fs::read_to_string(&state_file)
            .ok()
            .filter(|t| t.starts_with("1\n"))
    })
    .await;
    let mut sys = TestSystem::start().await;
    let id = sys.register_agent("lb-1", &agent).await;
    sys.start_worker(sys.config());

    // Through the normal path: commands on RabbitMQ, the worker, the agent.
    let wanted = [
        ("web", "w1", "drain", DRAIN),
        ("web", "w2", "maint", MAINT),
        ("web", "w3", "drain", DRAIN),
        ("api", "a1", "maint", MAINT),
        ("api", "a2", "drain", DRAIN),
    ];
    let mut txns = Vec::new();
    for (backend, server, action, _) in wanted {
        let txn = Uuid::new_v4();
        sys.publish_action(&json!({
            "transaction_id": txn, "action": action, "actor": "user:alice",
            "target": {"instance": "lb-1", "backend": backend, "server": server},
            "reason": "before a reload",
        }))
        .await;
        txns.push(txn);
    }
    for txn in &txns {
        let row = sys.wait_final(*txn, WAIT).await;
        assert_eq!(row.status, "success", "{row:?}");
    }
    let before = process_of(&agent, "/v1/health").await;
    assert_eq!(
        process_of(&agent, "/v1/backends").await["pid"],
        before["pid"]
    );
    // Every change is in the file once its action is recorded: the agent
    // writes it before it answers.
    let file = std::fs::read_to_string(&state_file).expect("state file");
    for (backend, server, _, expected) in wanted {
        assert_eq!(file_bits(&file, backend, server), Some(expected), "{file}");
    }

    haproxy.reload_graceful().await;

    // A new process answers on the socket, and the agent says so.
    let after = process_of(&agent, "/v1/health").await;
    assert_ne!(after["pid"], before["pid"], "{before} {after}");
    assert_eq!(
        process_of(&agent, "/v1/backends").await["pid"],
        after["pid"]
    );
    // Every state survived at the new process's socket.
    let bits = haproxy.admin_bits().await;
    for (backend, server, action, expected) in wanted {
        assert_eq!(
            bits_of(&bits, &format!("{backend}/{server}")),
            Some(expected),
            "{backend}/{server} {action} after the reload: {bits:?}\n{}",
            haproxy.log()
        );
    }
    for untouched in ["web/w4", "api/a3"] {
        assert_eq!(bits_of(&bits, untouched), Some(READY), "{bits:?}");
    }

    // A forced sync records no change.
    let sync = sys.publish_sync(Some(id)).await;
    let (status, counts) = sys.wait_sync(sync, WAIT).await;
    assert_eq!(status, "success", "{counts}");
    assert_eq!(counts["updated"], 0, "{counts}");
    assert_eq!(
        sys.history_from("sync").await,
        vec![],
        "no history row from the sync"
    );
    assert!(
        sys.events()
            .iter()
            .all(|e| !(e["type"] == "server.state_changed" && e["transaction_id"].is_null())),
        "no state change seen by sync: {:?}",
        sys.events()
    );
    assert_db_matches_haproxy(&sys, "lb-1", &haproxy).await;
}

/// Without a state file, the reload resets the server, and the process
/// identity still shows that a new process answers.
#[tokio::test]
async fn a_reload_without_a_state_file_changes_the_process_identity_and_loses_the_drain() {
    let (_app, body) = two_backends().await;
    let mut haproxy = TestHaproxy::start(&body).await;
    let agent = TestAgent::start(&haproxy.socket).await;
    agent.set("web", "w1", "drain").await;
    let before = process_of(&agent, "/v1/backends").await;
    haproxy.reload_graceful().await;
    let after = process_of(&agent, "/v1/backends").await;
    assert_ne!(before["pid"], after["pid"]);
    assert_eq!(agent.server("web", "w1").await["admin_state"], "ready");
}

/// Changes made on the socket behind the agent's back reach the file with
/// the periodic write.
#[tokio::test]
async fn the_periodic_write_picks_up_changes_made_behind_the_agents_back() {
    let (_app, body) = two_backends().await;
    let haproxy = TestHaproxy::start_with_state_file(&body).await;
    let state_file = haproxy.state_file.clone().expect("a state file");
    let _agent =
        TestAgent::start_with_state_file(&haproxy.socket, &state_file, Duration::from_secs(1))
            .await;
    haproxy.cmd("set server api/a3 state maint").await;
    eventually(WAIT, "the periodic write with api/a3 in maint", || async {
        let text = std::fs::read_to_string(&state_file).ok()?;
        (file_bits(&text, "api", "a3") == Some(MAINT)).then_some(())
    })
    .await;
}

/// A state file that cannot be written does not fail a change.
#[tokio::test]
async fn a_state_file_that_cannot_be_written_does_not_fail_the_change() {
    let (_app, body) = two_backends().await;
    let haproxy = TestHaproxy::start(&body).await;
    let unwritable = haproxy.dir().join("no-such-dir").join("server-state");
    let agent =
        TestAgent::start_with_state_file(&haproxy.socket, &unwritable, NO_PERIODIC_WRITE).await;
    let answer = agent.set("web", "w2", "maint").await;
    assert_eq!(answer["applied"], true, "{answer}");
    assert_eq!(answer["server"]["admin_state"], "maint", "{answer}");
    assert!(!unwritable.exists());
}
