//! Who may do what (issue 6, security): the API's tokens and roles on every
//! call that changes something, one agent's token presented to another
//! agent, and a worker holding the wrong token for an instance. In every
//! refused case nothing is published, written or sent to HAProxy.
//!
//! Already elsewhere: `api::every_bad_request_is_a_json_4xx_and_roles_are_enforced`
//! (401 on a GET and an action, a Basic scheme, 403 for a viewer's action,
//! batch and sync and an operator's settings change) and
//! `fagent_api::a_missing_or_wrong_token_is_401_and_touches_nothing`.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::TestSystem;
use crate::harness::api::{ADMIN, LiveApi, OPERATOR, VIEWER, assert_error};
use crate::harness::lb::SpiedLb;

const WAIT: Duration = Duration::from_secs(20);

/// The active instances no AC server claims.
async fn unclaimed_instances(sys: &TestSystem) -> usize {
    let instances = sys.instances().await;
    instances
        .iter()
        .filter(|i| i.server_id.is_none() && i.is_active)
        .count()
}

#[tokio::test]
async fn without_the_right_role_no_call_changes_anything() {
    let live = LiveApi::start().await;
    let (lb, sys, api) = (&live.lb, &live.sys, &live.api);
    let (instance, server) = (live.instance, live.server);
    sys.exec("INSERT INTO servers (id, hostname) VALUES (502, 'lb-node')")
        .await;
    let socket_before = lb.spy.records().len();
    let instances_before = unclaimed_instances(sys).await;

    let changes: Vec<(Method, String, Value)> = vec![
        (
            Method::POST,
            format!("/api/haproxy/servers/{server}/action"),
            json!({"action": "maint", "force": true}),
        ),
        (
            Method::POST,
            "/api/haproxy/batch/action".to_owned(),
            json!({"action": "maint", "targets": {"server_ids": [server]}, "force": true}),
        ),
        (
            Method::POST,
            format!("/api/haproxy/instances/{instance}/sync"),
            json!({}),
        ),
        (
            Method::PUT,
            "/api/servers/502/haproxy".to_owned(),
            json!({"is_haproxy_node": true, "name": "lb-1", "fagent_url": "http://127.0.0.1:9",
                   "fagent_token": "stolen-token"}),
        ),
    ];
    // Tokens that are no API token: none, a wrong one, a valid one with
    // something appended or in other case, the instance's agent token, an
    // empty bearer.
    let not_tokens = [
        None,
        Some("not-a-token-at-all".to_owned()),
        Some(format!("{OPERATOR}x")),
        Some(ADMIN.to_uppercase()),
        Some(lb.agent.token.clone()),
        Some(String::new()),
    ];
    for (method, path, body) in &changes {
        for token in &not_tokens {
            let answer = api
                .send(method.clone(), path, token.as_deref(), Some(body))
                .await;
            assert_eq!(
                answer.0, 401,
                "{method} {path} with {token:?}: {}",
                answer.1
            );
            assert_eq!(answer.1["error"]["code"], "unauthorized", "{}", answer.1);
        }
        let answer = api
            .send(method.clone(), path, Some(VIEWER), Some(body))
            .await;
        assert_error(&answer, 403, "forbidden");
    }
    // The settings change needs an admin; an operator is refused too.
    let (method, path, body) = &changes[3];
    assert_error(
        &api.send(method.clone(), path, Some(OPERATOR), Some(body))
            .await,
        403,
        "forbidden",
    );

    sys.assert_no_commands_waiting().await;
    assert_eq!(sys.rows_in("haproxy_actions").await, 0);
    assert_eq!(sys.rows_in("haproxy_batches").await, 0);
    assert_eq!(
        unclaimed_instances(sys).await,
        instances_before,
        "the instance was not taken over by server 502"
    );
    let instances = sys.instances().await;
    assert!(
        instances
            .iter()
            .all(|i| !i.fagent_token_ref.contains("stolen")),
        "{instances:?}"
    );
    assert_eq!(
        lb.spy.records().len(),
        socket_before,
        "{:?}",
        lb.spy.lines("")
    );

    // The same call with an operator's token does act.
    live.assert_an_operator_action_succeeds(&changes[0].2).await;
    live.stop().await;
}

#[tokio::test]
async fn one_agents_token_opens_no_other_agent() {
    let (a, b) = (SpiedLb::web_of_two().await, SpiedLb::web_of_two().await);
    assert_ne!(a.agent.token, b.agent.token);
    let bits_before = b.haproxy.admin_bits().await;

    let put = |agent_url: &str, token: &str| {
        b.agent
            .client
            .put(format!(
                "{agent_url}/v1/backends/web/servers/web1_shop_1/state"
            ))
            .bearer_auth(token.to_owned())
            .json(&json!({"state": "maint", "transaction_id": Uuid::new_v4()}))
    };
    let client = &b.agent.client;
    let mut answers = vec![put(&b.agent.url, &a.agent.token).send().await];
    for path in ["/v1/backends", "/v1/health"] {
        let request = client.get(format!("{}{path}", b.agent.url));
        answers.push(request.bearer_auth(&a.agent.token).send().await);
    }
    for answer in answers {
        let answer = answer.expect("agent B answers");
        assert_eq!(answer.status(), 401);
        let body: Value = answer.json().await.expect("a JSON error");
        assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    }
    assert!(
        b.spy.records().is_empty(),
        "A's token reached B's HAProxy: {:?}",
        b.spy.lines("")
    );
    assert_eq!(b.haproxy.admin_bits().await, bits_before);

    // Each token does open its own agent.
    let own = put(&a.agent.url, &a.agent.token)
        .send()
        .await
        .expect("A answers");
    assert_eq!(own.status(), 200);
    assert_eq!(a.spy.count("set server"), 1);
    assert!(b.spy.records().is_empty());
}

/// What the code does with a 401 from an agent (`fagent::client`): a 4xx is
/// not retried, its `action.failed` error is `agent_error` (CONTRACT.md has
/// no code for authentication), and the call counts as an answer from a
/// healthy agent, so the breaker stays closed however often it happens.
#[tokio::test]
async fn a_worker_holding_the_wrong_agent_token_fails_actions_as_agent_error_without_opening_the_breaker()
 {
    let (a, b) = (SpiedLb::web_of_two().await, SpiedLb::web_of_two().await);
    let mut sys = TestSystem::start().await;
    let id = sys.register_agent("lb-b", &b.agent).await;
    sys.exec(&format!(
        "UPDATE haproxy_instances SET fagent_token_ref = 'token:{}' WHERE id = {id}",
        a.agent.token
    ))
    .await;
    let socket_before = b.spy.records().len();
    sys.start_worker(sys.config());

    // One more than the failures that open a breaker (3), one at a time.
    for server in ["web1_shop_1", "web2_shop_1", "web1_shop_1", "web2_shop_1"] {
        let txn = Uuid::new_v4();
        sys.publish_action(&json!({
            "transaction_id": txn,
            "action": "drain",
            "target": {"instance": "lb-b", "backend": "web", "server": server},
            "actor": "user:alice",
            "force": true,
        }))
        .await;
        let event = sys.wait_event("action.failed", txn, WAIT).await;
        assert_eq!(event["error"], "agent_error", "{event}");
        let row = sys.action(txn).await.expect("the action's row");
        assert_eq!(
            (row.status.as_str(), row.error.as_deref(), row.attempts),
            ("failed", Some("agent_error"), 1),
            "{row:?}"
        );
        let detail = row.error_detail.unwrap_or_default();
        assert!(detail.contains("401"), "{detail}");
    }
    let instance = sys.instance(id).await;
    assert_eq!(
        (
            instance.breaker_state.as_str(),
            instance.consecutive_failures
        ),
        ("closed", 0),
        "a 401 counted as an agent failure"
    );
    assert!(
        !sys.events()
            .iter()
            .any(|e| e["type"] == "instance.circuit_opened"),
        "{:?}",
        sys.events()
    );
    assert_eq!(
        b.spy.records().len(),
        socket_before,
        "{:?}",
        b.spy.lines("")
    );
    assert!(a.spy.records().is_empty(), "A was never the target");

    // With the right token the same worker acts at once.
    sys.exec(&format!(
        "UPDATE haproxy_instances SET fagent_token_ref = 'token:{}' WHERE id = {id}",
        b.agent.token
    ))
    .await;
    let txn = Uuid::new_v4();
    sys.publish_action(&json!({
        "transaction_id": txn,
        "action": "drain",
        "target": {"instance": "lb-b", "backend": "web", "server": "web1_shop_1"},
        "actor": "user:alice",
    }))
    .await;
    sys.wait_event("action.succeeded", txn, WAIT).await;
    assert_eq!(b.spy.count("set server"), 1);
}
