//! Proofs 3 and 6 of issue 12: a failing update halts the rollout and
//! `resume` finishes it; bad input is a 422 and nothing starts; a second
//! rollout over the same server is a 409 naming the first; pause, resume
//! and abort.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Fleet, WEB};
use crate::harness::api::{OPERATOR, VIEWER, assert_error};

fn body(fleet: &Fleet, ids: &[i64], update: Value) -> Value {
    let _ = fleet;
    json!({
        "targets": {"server_ids": ids},
        "wave": {"size": 1},
        "drain": {"timeout_secs": 30},
        "update": update,
        "health": {"healthy_for_secs": 0, "timeout_secs": 60},
    })
}

#[tokio::test]
async fn bad_requests_are_422_and_a_second_rollout_over_a_server_is_409() {
    let fleet = Fleet::start(&WEB).await;
    let ids = fleet.ids(&WEB).await;
    let ok_update = json!({"kind": "command", "argv": ["/usr/bin/true"]});
    let mut cases: Vec<(Value, &str)> = Vec::new();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = body(&fleet, &ids, ok_update.clone());
        f(&mut b);
        b
    };
    cases.push((
        with(&|b| b["update"] = json!({"kind": "ansible", "playbook": "/etc/passwd"})),
        "playbook",
    ));
    cases.push((
        with(&|b| b["update"] = json!({"kind": "ansible", "playbook": "nope.yml"})),
        "playbook",
    ));
    cases.push((
        with(&|b| b["update"] = json!({"kind": "command", "argv": "true; rm -rf /"})),
        "argv",
    ));
    cases.push((
        with(&|b| b["update"] = json!({"kind": "command", "argv": ["/bin/sh", "-c", "x"]})),
        "argv",
    ));
    cases.push((with(&|b| b["wave"]["size"] = json!(0)), "wave.size"));
    cases.push((with(&|b| b["wave"]["size"] = json!("150%")), "wave.size"));
    cases.push((
        with(&|b| b["targets"] = json!({"server_ids": [987654]})),
        "no live server",
    ));
    cases.push((
        with(&|b| b["drain"]["on_timeout"] = json!("pray")),
        "on_timeout",
    ));
    for (b, needle) in &cases {
        let answer = fleet.api.post("/api/haproxy/rollouts", OPERATOR, b).await;
        assert_eq!(answer.0, 422, "{b}: {}", answer.1);
        let message = answer.1["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{needle} in {message}");
    }
    assert_eq!(
        fleet.sys.rows_in("haproxy_rollouts").await,
        0,
        "nothing started"
    );
    assert_error(
        &fleet
            .api
            .post(
                "/api/haproxy/rollouts",
                VIEWER,
                &body(&fleet, &ids, ok_update.clone()),
            )
            .await,
        403,
        "forbidden",
    );

    // A manual update holds its first server; a second rollout over any of
    // its servers is refused, naming it.
    let first = fleet
        .start_rollout(&body(&fleet, &ids, json!({"kind": "manual"})))
        .await;
    let answer = fleet
        .api
        .post(
            "/api/haproxy/rollouts",
            OPERATOR,
            &body(&fleet, &ids[2..], ok_update.clone()),
        )
        .await;
    assert_error(&answer, 409, "rollout_overlap");
    assert!(
        answer.1.to_string().contains(&format!("rollout {first}")),
        "{}",
        answer.1
    );
    // The same transaction id with the same body answers the same; another body is a 409.
    let mut again = body(&fleet, &ids, json!({"kind": "manual"}));
    let first_tx = fleet.rollout(first).await["transaction_id"].clone();
    again["transaction_id"] = first_tx.clone();
    let (status, same) = fleet
        .api
        .post("/api/haproxy/rollouts", OPERATOR, &again)
        .await;
    assert_eq!((status, same["id"].as_i64()), (202, Some(first)), "{same}");
    again["reason"] = json!("another");
    assert_error(
        &fleet
            .api
            .post("/api/haproxy/rollouts", OPERATOR, &again)
            .await,
        409,
        "transaction_conflict",
    );

    // Manual: the first server waits in `updating` until `continue`.
    let waiting = fleet
        .wait_until(first, Duration::from_secs(30), |r| {
            r["servers"][0]["step"] == "updating"
        })
        .await;
    assert_eq!(waiting["servers"][1]["step"], "pending", "{waiting}");
    let path = format!("/api/haproxy/rollouts/{first}");
    let (status, paused) = fleet
        .api
        .post(&format!("{path}/pause"), OPERATOR, &json!({}))
        .await;
    assert_eq!(
        (status, paused["status"].as_str()),
        (200, Some("paused")),
        "{paused}"
    );
    assert_error(
        &fleet
            .api
            .post(&format!("{path}/pause"), OPERATOR, &json!({}))
            .await,
        409,
        "invalid_state",
    );
    let (status, _) = fleet
        .api
        .post(
            &format!("{path}/servers/{}/continue", ids[0]),
            OPERATOR,
            &json!({}),
        )
        .await;
    assert_eq!(status, 200);
    // Paused: the first server finishes, the second does not start.
    let r = fleet
        .wait_until(first, Duration::from_secs(30), |r| {
            r["servers"][0]["step"] == "ready"
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        fleet.rollout(first).await["servers"][1]["step"],
        "pending",
        "{r}"
    );
    // Abort: nothing else starts, and it ends.
    let (status, _) = fleet
        .api
        .post(&format!("{path}/abort"), OPERATOR, &json!({}))
        .await;
    assert_eq!(status, 200);
    let ended = fleet
        .wait_status(first, "aborted", Duration::from_secs(30))
        .await;
    assert_eq!(ended["servers"][1]["step"], "pending", "{ended}");
    let bits = fleet.haproxy.admin_bits().await;
    assert!(
        bits.iter().all(|(_, b)| *b == 0),
        "all ready after the abort: {bits:?}"
    );
}

#[tokio::test]
async fn a_failing_update_halts_the_rollout_and_resume_finishes_it() {
    let fleet = Fleet::start(&WEB).await;
    let ids = fleet.ids(&WEB).await;
    std::fs::write(fleet.apps.dir("w3").join("fail"), "").expect("fail file");
    let id = fleet
        .start_rollout(&json!({
            "targets": {"server_ids": ids},
            "wave": {"size": 1},
            "update": fleet.ansible("v2"),
            "health": {"healthy_for_secs": 0, "timeout_secs": 60},
        }))
        .await;
    let halted = fleet
        .wait_status(id, "halted", Duration::from_secs(120))
        .await;
    let steps: Vec<&str> = halted["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| s["step"].as_str().unwrap_or_default())
        .collect();
    // Plan order interleaves backends; one backend here, so w1, w2, w3.
    assert_eq!(steps, ["ready", "ready", "failed"], "{halted}");
    let failed = &halted["servers"][2];
    assert!(
        failed["hook_exit_code"].as_i64().is_some_and(|c| c != 0),
        "{failed}"
    );
    assert!(
        failed["hook_output_tail"]
            .as_str()
            .is_some_and(|o| o.contains("fail file exists")),
        "{failed}"
    );
    let event = fleet
        .sys
        .events()
        .into_iter()
        .find(|e| e["type"] == "rollout.halted")
        .expect("rollout.halted");
    assert!(
        event["exit_code"].as_i64().is_some_and(|c| c != 0),
        "{event}"
    );
    assert!(
        event["output_tail"]
            .as_str()
            .is_some_and(|o| o.contains("fail file")),
        "{event}"
    );
    // The third server is not back in traffic.
    let bits = fleet.haproxy.admin_bits().await;
    assert!(
        bits.iter().any(|(n, b)| n == "web/w3" && *b != 0),
        "{bits:?}"
    );
    assert_eq!(fleet.apps.served_version("w3").await.as_deref(), Some("v1"));

    std::fs::remove_file(fleet.apps.dir("w3").join("fail")).expect("fixed");
    let (status, resumed) = fleet
        .api
        .post(
            &format!("/api/haproxy/rollouts/{id}/resume"),
            OPERATOR,
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{resumed}");
    let done = fleet
        .wait_status(id, "completed", Duration::from_secs(120))
        .await;
    assert_eq!(done["servers"][2]["attempt"], 1, "{done}");
    for n in WEB {
        assert_eq!(
            fleet.apps.served_version(n).await.as_deref(),
            Some("v2"),
            "{n}"
        );
    }
    assert_eq!(fleet.apps.runs("w3"), 2, "the failed run and the retry");
    let bits = fleet.haproxy.admin_bits().await;
    assert!(bits.iter().all(|(_, b)| *b == 0), "{bits:?}");
}
