//! Four-eyes approval (issue 13, part 2) on real parts: the API, a worker,
//! the sweeper, RabbitMQ, PostgreSQL and a real HAProxy behind its agent
//! (the socket spy records every runtime command that reached it).

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::TestSystem;
use crate::harness::api::{ADMIN, APPROVER, Api, OPERATOR, VIEWER, assert_error};
use crate::harness::eventually;
use crate::harness::lb::{Registered, SpiedLb as Lb};

const WAIT: Duration = Duration::from_secs(20);

/// One HAProxy (`lb-1`) with backend `web` of `s1..sN`, a worker and the API.
async fn setup(servers: usize) -> (Registered, Api) {
    let registered = Lb::numbered(&[("web", servers)]).await.with_worker().await;
    let api = Api::start(&registered.sys).await;
    (registered, api)
}

async fn set_policy(api: &Api, policy: Value) {
    let (status, saved) = api
        .put("/api/haproxy/settings/approval", ADMIN, &policy)
        .await;
    assert_eq!(status, 200, "{saved}");
}

async fn post_action(api: &Api, token: &str, server_id: i64, body: &Value) -> (u16, Value) {
    api.post(
        &format!("/api/haproxy/servers/{server_id}/action"),
        token,
        body,
    )
    .await
}

async fn approvals_of(sys: &TestSystem, txn: Uuid) -> i64 {
    sys.count(&format!(
        "SELECT count(*) AS n FROM haproxy_approvals WHERE transaction_id = '{txn}'"
    ))
    .await
}

/// Runtime commands that changed `web/{server}` at HAProxy.
fn sets(lb: &Lb, server: &str) -> usize {
    lb.spy.count(&format!("set server web/{server} "))
}

async fn history_of(sys: &TestSystem, txn: Uuid) -> i64 {
    sys.count(&format!(
        "SELECT count(*) AS n FROM haproxy_server_status_history h \
         JOIN haproxy_actions a ON a.id = h.action_id WHERE a.transaction_id = '{txn}'"
    ))
    .await
}

async fn decide(api: &Api, token: &str, id: i64, verb: &str, comment: &str) -> (u16, Value) {
    api.post(
        &format!("/api/haproxy/approvals/{id}/{verb}"),
        token,
        &json!({ "comment": comment }),
    )
    .await
}

#[tokio::test]
async fn approval_policy_is_validated_and_only_an_admin_sets_it() {
    let sys = TestSystem::start().await;
    let api = Api::start(&sys).await;
    let (status, default) = api.get("/api/haproxy/settings/approval", APPROVER).await;
    assert_eq!(status, 200, "{default}");
    assert_eq!(
        default,
        json!({"force_actions": false, "batch_max_servers": null, "rollout_max_servers": null,
               "maint_instances": [], "maint_backends": [], "ttl_secs": 3600})
    );
    assert_error(
        &api.get("/api/haproxy/settings/approval", OPERATOR).await,
        403,
        "forbidden",
    );
    let policy = json!({"force_actions": true, "maint_backends": ["pay*"]});
    assert_error(
        &api.put("/api/haproxy/settings/approval", APPROVER, &policy)
            .await,
        403,
        "forbidden",
    );
    let bad = api
        .put(
            "/api/haproxy/settings/approval",
            ADMIN,
            &json!({"maint_instances": ["lb 1"]}),
        )
        .await;
    assert_error(&bad, 422, "invalid_policy");
    assert!(bad.1.to_string().contains("maint_instances"), "{}", bad.1);
    assert_error(
        &api.put(
            "/api/haproxy/settings/approval",
            ADMIN,
            &json!({"forse_actions": true}),
        )
        .await,
        422,
        "invalid_body",
    );
    set_policy(&api, policy).await;
    let (_, saved) = api.get("/api/haproxy/settings/approval", ADMIN).await;
    assert_eq!(saved["force_actions"], true);
    assert_eq!(saved["maint_backends"], json!(["pay*"]));
    assert_eq!(saved["ttl_secs"], 3600);
}

#[tokio::test]
async fn a_forced_action_waits_and_runs_once_after_another_person_approves_it() {
    let (Registered { sys, lb, .. }, api) = setup(2).await;
    set_policy(&api, json!({"force_actions": true})).await;
    let s1 = sys.server_id("lb-1", "web", "s1").await;
    let s2 = sys.server_id("lb-1", "web", "s2").await;

    // Not matching the policy: it runs at once.
    let plain = Uuid::new_v4();
    let (status, answer) = post_action(
        &api,
        OPERATOR,
        s1,
        &json!({"action": "drain", "transaction_id": plain}),
    )
    .await;
    assert_eq!((status, answer["status"].as_str()), (202, Some("pending")));
    assert!(answer.get("approval_id").is_none(), "{answer}");
    assert_eq!(sys.wait_final(plain, WAIT).await.status, "success");
    assert_eq!(approvals_of(&sys, plain).await, 0);

    // Forced: held. Sent twice (an API retry): one approval.
    let forced = Uuid::new_v4();
    let body =
        json!({"action": "maint", "transaction_id": forced, "force": true, "reason": "disk"});
    let (status, held) = post_action(&api, ADMIN, s2, &body).await;
    assert_eq!(status, 202, "{held}");
    assert_eq!(held["status"], "awaiting_approval");
    let id = held["approval_id"].as_i64().expect("approval_id");
    let (_, again) = post_action(&api, ADMIN, s2, &body).await;
    assert_eq!(again, held);
    assert_eq!(approvals_of(&sys, forced).await, 1);
    sys.wait_event("approval.requested", forced, WAIT).await;

    let view = api.ok(&format!("/api/haproxy/approvals/{id}")).await;
    assert_eq!(view["status"], "pending");
    assert_eq!(view["requester"], "user:adam");
    assert_eq!(view["kind"], "action");
    assert_eq!(view["request_status"], "awaiting_approval");
    assert_eq!(view["matched_rules"][0]["rule"], "force_actions");
    assert_eq!(view["summary"]["server"], "s2");

    // Nobody but another approver: the requester (an admin) gets a clear 403.
    let own = decide(&api, ADMIN, id, "approve", "mine").await;
    assert_error(&own, 403, "own_request");
    assert!(
        own.1.to_string().contains("needs a second person"),
        "{}",
        own.1
    );
    assert_error(
        &decide(&api, OPERATOR, id, "approve", "").await,
        403,
        "forbidden",
    );
    assert_error(
        &decide(&api, VIEWER, id, "reject", "").await,
        403,
        "forbidden",
    );
    assert_eq!(
        sets(&lb, "s2"),
        0,
        "nothing reached HAProxy while it waited"
    );
    assert_eq!(lb.web_bits("s2").await, 0);

    let (status, approved) = decide(&api, APPROVER, id, "approve", "change 4711").await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["status"], "approved");
    assert_eq!(approved["decided_by"], "user:petra");
    assert_eq!(approved["comment"], "change 4711");
    let row = sys.wait_final(forced, WAIT).await;
    assert_eq!(
        (row.status.as_str(), row.actor.as_str()),
        ("success", "user:adam")
    );
    assert_eq!(lb.web_bits("s2").await & 1, 1, "s2 in maint at HAProxy");
    assert_eq!(sets(&lb, "s2"), 1, "applied exactly once");
    assert_eq!(history_of(&sys, forced).await, 1);
    sys.wait_event("approval.approved", forced, WAIT).await;
    let (status, again) = decide(&api, APPROVER, id, "approve", "twice").await;
    assert_eq!(status, 409, "{again}");
    assert!(again.to_string().contains("approved"), "{again}");

    let page = api.ok("/api/haproxy/approvals?status=approved").await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(page["items"][0]["request_status"], "success");
    let pending = api.ok("/api/haproxy/approvals?status=pending").await;
    assert_eq!(pending["items"], json!([]));
    assert_error(
        &api.get("/api/haproxy/approvals?status=maybe", VIEWER).await,
        422,
        "invalid_status",
    );
}

#[tokio::test]
async fn a_rejected_action_ends_rejected_and_never_reaches_haproxy() {
    let (Registered { sys, lb, .. }, api) = setup(2).await;
    set_policy(&api, json!({"maint_backends": ["we?"]})).await;
    let s1 = sys.server_id("lb-1", "web", "s1").await;
    let txn = Uuid::new_v4();
    let (_, held) = post_action(
        &api,
        OPERATOR,
        s1,
        &json!({"action": "maint", "transaction_id": txn}),
    )
    .await;
    assert_eq!(held["status"], "awaiting_approval", "{held}");
    let id = held["approval_id"].as_i64().expect("approval_id");
    let view = api.ok(&format!("/api/haproxy/approvals/{id}")).await;
    assert_eq!(view["matched_rules"][0]["rule"], "maint_backends");

    let (status, rejected) = decide(&api, APPROVER, id, "reject", "not during the sale").await;
    assert_eq!(status, 200, "{rejected}");
    let row = sys.wait_final(txn, WAIT).await;
    assert_eq!(row.status, "rejected");
    let action = api.ok(&format!("/api/haproxy/actions/{txn}")).await;
    let detail = action["error_detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&format!("approval {id} was rejected by user:petra"))
            && detail.contains("not during the sale"),
        "{action}"
    );
    let event = sys.wait_event("action.rejected", txn, WAIT).await;
    assert!(
        event["error_detail"]
            .as_str()
            .is_some_and(|d| d.contains("approval"))
    );
    sys.wait_event("approval.rejected", txn, WAIT).await;
    // A duplicate of the command now ends as the rejection did.
    let again = post_action(
        &api,
        OPERATOR,
        s1,
        &json!({"action": "maint", "transaction_id": txn}),
    )
    .await;
    assert_eq!(again.1["status"], "rejected");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sets(&lb, "s1"), 0);
    assert_eq!(lb.web_bits("s1").await, 0);
    assert_eq!(history_of(&sys, txn).await, 0);
}

#[tokio::test]
async fn an_approval_that_nobody_decides_expires_and_its_action_ends() {
    let (Registered { mut sys, lb, .. }, api) = setup(2).await;
    let mut config = sys.config();
    config.sync.interval_secs = 3_600;
    config.sweeper.interval_secs = 1;
    sys.start_scheduler(config);
    set_policy(&api, json!({"maint_instances": ["lb-*"], "ttl_secs": 1})).await;
    let s1 = sys.server_id("lb-1", "web", "s1").await;
    let txn = Uuid::new_v4();
    let (_, held) = post_action(
        &api,
        OPERATOR,
        s1,
        &json!({"action": "maint", "transaction_id": txn}),
    )
    .await;
    let id = held["approval_id"].as_i64().expect("approval_id");
    let expired = eventually(WAIT, "the approval to expire", || async {
        let v = api.ok(&format!("/api/haproxy/approvals/{id}")).await;
        (v["status"] == "expired").then_some(v)
    })
    .await;
    assert_eq!(expired["request_status"], "rejected");
    assert!(expired["decided_by"].is_null(), "{expired}");
    let row = sys.wait_final(txn, WAIT).await;
    assert_eq!(row.status, "rejected");
    sys.wait_event("approval.expired", txn, WAIT).await;
    let late = decide(&api, APPROVER, id, "approve", "too late").await;
    assert_error(&late, 409, "not_pending");
    assert!(late.1.to_string().contains("expired"), "{}", late.1);
    assert_eq!(sets(&lb, "s1"), 0);
    assert_eq!(lb.web_bits("s1").await, 0);
}

#[tokio::test]
async fn a_rabbitmq_command_matching_the_policy_is_held_once_then_approved_and_applied() {
    let (Registered { sys, lb, .. }, api) = setup(2).await;
    set_policy(&api, json!({"force_actions": true})).await;
    let txn = Uuid::new_v4();
    let command = json!({"transaction_id": txn, "action": "maint", "actor": "ac:deploy-job-7",
                         "force": true,
                         "target": {"instance": "lb-1", "backend": "web", "server": "s1"}});
    sys.publish_action(&command).await;
    sys.publish_action(&command).await;
    sys.wait_event("approval.requested", txn, WAIT).await;
    // Both deliveries handled (acked): no command left, one approval.
    eventually(WAIT, "both deliveries acked", || async {
        (sys.depth(&sys.topology.actions_queue).await == 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(approvals_of(&sys, txn).await, 1);
    let row = sys.action(txn).await.expect("recorded");
    assert_eq!(row.status, "awaiting_approval");
    assert_eq!(sets(&lb, "s1"), 0);

    let page = api.ok("/api/haproxy/approvals?status=pending").await;
    let item = &page["items"][0];
    assert_eq!(item["requester"], "ac:deploy-job-7");
    let id = item["id"].as_i64().expect("id");
    let (status, _) = decide(&api, APPROVER, id, "approve", "ok").await;
    assert_eq!(status, 200);
    let row = sys.wait_final(txn, WAIT).await;
    assert_eq!(row.status, "success");
    assert_eq!(lb.web_bits("s1").await & 1, 1);
    assert_eq!(sets(&lb, "s1"), 1);
    assert_eq!(history_of(&sys, txn).await, 1);
}

#[tokio::test]
async fn a_batch_over_n_servers_waits_as_a_whole_and_runs_after_approval() {
    let (Registered { sys, lb, .. }, api) = setup(5).await;
    set_policy(&api, json!({"batch_max_servers": 2})).await;
    let mut ids = Vec::new();
    for s in ["s1", "s2", "s3", "s4"] {
        ids.push(sys.server_id("lb-1", "web", s).await);
    }
    // Two servers: not over the limit, runs at once.
    let small = Uuid::new_v4();
    let (status, answer) = api
        .post(
            "/api/haproxy/batch/action",
            OPERATOR,
            &json!({"action": "drain", "transaction_id": small,
                    "targets": {"server_ids": [ids[0]]}}),
        )
        .await;
    assert_eq!((status, answer["status"].as_str()), (202, Some("accepted")));
    let batch = answer["batch_id"].as_i64().expect("batch id");
    eventually(WAIT, "the small batch to complete", || async {
        let b = api.ok(&format!("/api/haproxy/batches/{batch}")).await;
        b["completed_at"].is_string().then_some(())
    })
    .await;

    let big = Uuid::new_v4();
    let body = json!({"action": "drain", "transaction_id": big,
                      "targets": {"server_ids": [ids[1], ids[2], ids[3]]}});
    let (status, held) = api.post("/api/haproxy/batch/action", OPERATOR, &body).await;
    assert_eq!(status, 202, "{held}");
    assert_eq!(held["status"], "awaiting_approval");
    let (_, again) = api.post("/api/haproxy/batch/action", OPERATOR, &body).await;
    assert_eq!(again, held);
    let id = held["approval_id"].as_i64().expect("approval_id");
    let batch = held["batch_id"].as_i64().expect("batch id");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let view = api.ok(&format!("/api/haproxy/batches/{batch}")).await;
    assert_eq!(view["status"], "awaiting_approval");
    assert_eq!(view["counts"]["awaiting_approval"], 3, "{view}");
    assert_eq!(
        sys.count(&format!(
            "SELECT count(*) AS n FROM haproxy_actions WHERE batch_id = {batch}"
        ))
        .await,
        0
    );
    assert_eq!(sets(&lb, "s2") + sets(&lb, "s3") + sets(&lb, "s4"), 0);

    let (status, _) = decide(&api, APPROVER, id, "approve", "go").await;
    assert_eq!(status, 200);
    let done = eventually(WAIT, "the approved batch to complete", || async {
        let b = api.ok(&format!("/api/haproxy/batches/{batch}")).await;
        b["completed_at"].is_string().then_some(b)
    })
    .await;
    assert_eq!(done["counts"]["success"], 3, "{done}");
    assert_eq!(done["status"], "accepted");
    for s in ["s2", "s3", "s4"] {
        assert_eq!(lb.web_bits(s).await, 8, "{s} drained");
        assert_eq!(sets(&lb, s), 1, "{s} once");
    }
    // The batch's actions did not ask again.
    assert_eq!(
        sys.count("SELECT count(*) AS n FROM haproxy_approvals")
            .await,
        1
    );
}

#[tokio::test]
async fn a_rollout_over_n_servers_waits_as_a_whole_and_runs_after_approval() {
    use crate::rollout::{Fleet, WEB};
    let fleet = Fleet::start(&WEB).await;
    set_policy(&fleet.api, json!({"rollout_max_servers": 2})).await;
    let ids = fleet.ids(&WEB).await;
    let body = json!({
        "targets": {"server_ids": ids},
        "wave": {"size": 1},
        "drain": {"timeout_secs": 30},
        "update": {"kind": "command", "argv": ["/usr/bin/true"]},
        "health": {"healthy_for_secs": 0, "timeout_secs": 30},
    });
    let (status, held) = fleet
        .api
        .post("/api/haproxy/rollouts", OPERATOR, &body)
        .await;
    assert_eq!(status, 202, "{held}");
    assert_eq!(held["status"], "awaiting_approval");
    let id = held["id"].as_i64().expect("rollout id");
    let approval = held["approval_id"].as_i64().expect("approval_id");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let waiting = fleet.rollout(id).await;
    assert_eq!(waiting["status"], "awaiting_approval");
    assert!(
        waiting["servers"]
            .as_array()
            .is_some_and(|s| s.iter().all(|s| s["step"] == "pending")),
        "{waiting}"
    );
    assert_eq!(fleet.spy.count("set server"), 0, "nothing reached HAProxy");
    let view = fleet
        .api
        .ok(&format!("/api/haproxy/approvals/{approval}"))
        .await;
    assert_eq!(view["matched_rules"][0]["rule"], "rollout_max_servers");
    assert_eq!(view["request_id"], id);

    let (status, _) = decide(&fleet.api, APPROVER, approval, "approve", "window open").await;
    assert_eq!(status, 200);
    let done = fleet
        .wait_status(id, "completed", Duration::from_secs(50))
        .await;
    assert!(
        done["servers"]
            .as_array()
            .is_some_and(|s| s.iter().all(|s| s["step"] == "ready")),
        "{done}"
    );
    for (name, server_id) in WEB.iter().zip(&ids) {
        assert!(
            fleet
                .spy
                .count(&format!("set server web/{name} state drain"))
                >= 1,
            "{name} drained at HAProxy"
        );
        let changes: Vec<String> = fleet
            .action_changes(*server_id)
            .await
            .into_iter()
            .map(|c| c.state)
            .collect();
        assert_eq!(
            (
                changes.first().map(String::as_str),
                changes.last().map(String::as_str)
            ),
            (Some("drain"), Some("ready")),
            "{name}: {changes:?}"
        );
        assert_eq!(fleet.bits(name).await, 0, "{name} back to ready");
    }
    // The rollout's own actions did not ask again.
    assert_eq!(
        fleet
            .sys
            .count("SELECT count(*) AS n FROM haproxy_approvals")
            .await,
        1
    );
}
