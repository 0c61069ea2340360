//! Proof 4 of issue 12: the health gate. The Ansible hook updates `w1` to
//! a version whose `/health` answers 500, so HAProxy's check never goes up:
//! the server never returns to `ready`, the rollout halts with
//! `health_timeout` after `health.timeout_secs` and announces
//! `rollout.server_failed`.

use std::time::Duration;

use serde_json::json;

use super::{Fleet, WEB};

/// HAProxy's `srv_op_state` of `web/{server}` (0 down, 2 up).
async fn op_state(fleet: &Fleet, server: &str) -> Option<u32> {
    let state = fleet.haproxy.cmd("show servers state web").await;
    state
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(3) == Some(&server))
        .and_then(|f| f.get(5)?.parse().ok())
}

#[tokio::test]
async fn an_update_failing_its_health_check_never_returns_the_server_to_ready() {
    let fleet = Fleet::start(&WEB).await;
    let w1 = fleet.ids(&["w1"]).await[0];
    let id = fleet
        .start_rollout(&json!({
            "targets": {"server_ids": [w1]},
            "wave": {"size": 1},
            "drain": {"timeout_secs": 30},
            "update": fleet.ansible("v2-broken"),
            "health": {"healthy_for_secs": 1, "timeout_secs": 5},
        }))
        .await;
    let halted = fleet.wait_ended(id, Duration::from_secs(90)).await;
    assert_eq!(halted["status"], "halted", "{halted}");

    let s = Fleet::assert_halted_by(&halted, w1, "updated", "health_timeout", 5);
    fleet.wait_halt_events("w1", "health_timeout").await;
    assert_eq!(s["hook_exit_code"], 0, "the update itself worked: {s}");
    assert_eq!(
        fleet.apps.served_version("w1").await.as_deref(),
        Some("v2-broken")
    );

    // Out of traffic: drained (checks on), its check down; never `ready`.
    assert_eq!(fleet.bits("w1").await, 8);
    assert_eq!(op_state(&fleet, "w1").await, Some(0), "the check says down");
    let states: Vec<String> = fleet
        .action_changes(w1)
        .await
        .into_iter()
        .map(|c| c.state)
        .collect();
    assert_eq!(states, ["drain", "maint", "drain"]);
    assert_eq!(fleet.spy.count("set server web/w1 state ready"), 0);
    let events = fleet.sys.events();
    assert!(!events.iter().any(|e| e["type"] == "rollout.server_ready"));

    // Nothing brings it back later either.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fleet.bits("w1").await, 8);
    assert_eq!(fleet.spy.count("set server web/w1 state ready"), 0);
    assert_eq!(fleet.rollout(id).await["status"], "halted");
}
