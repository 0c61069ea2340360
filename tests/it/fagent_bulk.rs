//! `POST /v1/state`: several changes in one call to the agent, against a
//! real HAProxy (docs/fagent-api.md). Each result is what `PUT …/state`
//! would have answered for that change.

use std::collections::HashMap;
use std::time::Duration;

use haproxy_control::domain::AdminState;
use haproxy_control::fagent::client::{AgentClient, AgentEndpoint, CallError};
use haproxy_control::fagent::wire::StateChange;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::fagent_api::{assert_matches_schema, error_of};
use crate::harness::{HttpBackends, SpiedLb, TestAgent, TestHaproxy};
use crate::reload::file_bits;

/// `web` s1..s3, `api` s1..s2, `static` s1, behind a socket spy.
async fn lb() -> SpiedLb {
    SpiedLb::numbered(&[("web", 3), ("api", 2), ("static", 1)]).await
}

fn change(backend: &str, server: &str, state: &str) -> Value {
    json!({"backend": backend, "server": server, "state": state, "transaction_id": Uuid::new_v4()})
}

/// Posts `changes` and returns the results, asserting a 200 that matches
/// the committed OpenAPI document.
async fn post(agent: &TestAgent, changes: &[Value]) -> Vec<Value> {
    let r = agent
        .post_states(&json!({ "changes": changes }))
        .send()
        .await
        .expect("agent answers");
    let status = r.status();
    let body: Value = r.json().await.expect("json");
    assert_eq!(status, 200, "{body}");
    assert_matches_schema("StatesChanged", &body);
    let results = body["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), changes.len(), "{body}");
    for (result, change) in results.iter().zip(changes) {
        assert_eq!(result["transaction_id"], change["transaction_id"], "{body}");
    }
    results
}

/// HAProxy's admin bits by `backend/server` (0 ready, 8 drain, 1 maint).
async fn bits(haproxy: &TestHaproxy) -> HashMap<String, u32> {
    haproxy.admin_bits().await.into_iter().collect()
}

fn statuses(results: &[Value]) -> Vec<(u64, &str)> {
    results
        .iter()
        .map(|r| {
            let code = r["error"]["code"].as_str().unwrap_or("");
            (r["status"].as_u64().unwrap_or(0), code)
        })
        .collect()
}

#[tokio::test]
async fn a_bulk_over_several_backends_reaches_haproxy_and_answers_in_order() {
    let lb = lb().await;
    let changes = [
        change("web", "s1", "drain"),
        change("api", "s1", "maint"),
        change("web", "s2", "maint"),
        change("static", "s1", "drain"),
        change("web", "s3", "ready"),
    ];
    let results = post(&lb.agent, &changes).await;

    let expected = [
        ("s1", "drain", true),
        ("s1", "maint", true),
        ("s2", "maint", true),
        ("s1", "drain", true),
        ("s3", "ready", false),
    ];
    for (result, (server, state, applied)) in results.iter().zip(expected) {
        assert_eq!(result["status"], 200, "{result}");
        assert!(result.get("error").is_none(), "{result}");
        let changed = &result["changed"];
        assert_eq!(changed["transaction_id"], result["transaction_id"]);
        assert_eq!(changed["applied"], applied, "{result}");
        assert_eq!(changed["server"]["name"], server, "{result}");
        assert_eq!(changed["server"]["admin_state"], state, "{result}");
    }
    let bits = bits(&lb.haproxy).await;
    let want = [
        ("web/s1", 8),
        ("web/s2", 1),
        ("web/s3", 0),
        ("api/s1", 1),
        ("api/s2", 0),
        ("static/s1", 8),
    ];
    for (server, b) in want {
        assert_eq!(bits.get(server), Some(&b), "{server}: {bits:?}");
    }
    // One connection: each backend read once before and once after, one
    // `set server` per change, one `show stat` per backend.
    assert_eq!(lb.spy.count("set server"), 5);
    assert_eq!(lb.spy.count("show servers state"), 6);
    assert_eq!(lb.spy.count("show stat"), 3);
}

#[tokio::test]
async fn an_item_for_a_missing_server_is_404_and_the_others_apply() {
    let lb = lb().await;
    let changes = [
        change("web", "s1", "drain"),
        change("web", "ghost", "drain"),
        change("nosuch", "s1", "drain"),
        change("web", "s2", "maint"),
        change("web", "s2;show info", "drain"),
        change("api", "", "maint"),
    ];
    let results = post(&lb.agent, &changes).await;
    assert_eq!(
        statuses(&results),
        [
            (200, ""),
            (404, "no_such_server"),
            (404, "no_such_backend"),
            (200, ""),
            (400, "invalid_name"),
            (400, "invalid_name"),
        ]
    );
    for failed in &results[1..3] {
        assert!(failed.get("changed").is_none(), "{failed}");
        assert!(
            failed["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let bits = bits(&lb.haproxy).await;
    assert_eq!((bits["web/s1"], bits["web/s2"], bits["api/s1"]), (8, 1, 0));
    assert!(
        lb.spy.lines("").iter().all(|l| !l.contains("show info")),
        "a bad name reached the socket"
    );
}

#[tokio::test]
async fn a_replayed_bulk_gets_the_first_answers_without_changing_haproxy_again() {
    let lb = lb().await;
    let changes = [change("web", "s1", "drain"), change("api", "s1", "maint")];
    let first = post(&lb.agent, &changes).await;
    assert!(first.iter().all(|r| r["changed"]["applied"] == true));
    // Changed behind the agent's back: a real second call would drain
    // again; a replay must not touch HAProxy and must answer as the first.
    assert_eq!(
        lb.haproxy.cmd("set server web/s1 state ready").await.trim(),
        ""
    );
    let sets = lb.spy.count("set server");
    let again = post(&lb.agent, &changes).await;
    assert_eq!(again, first);
    assert_eq!(
        lb.spy.count("set server"),
        sets,
        "the replay reached HAProxy"
    );
    assert_eq!(bits(&lb.haproxy).await["web/s1"], 0);

    // A replay mixed with a new change: only the new one is sent.
    let mixed = [changes[1].clone(), change("web", "s2", "drain")];
    let results = post(&lb.agent, &mixed).await;
    assert_eq!(results[0], first[1]);
    assert_eq!(results[1]["changed"]["applied"], true);
    assert_eq!(lb.spy.count("set server"), sets + 1);
}

#[tokio::test]
async fn one_transaction_id_twice_in_a_bulk_is_one_change_or_a_conflict() {
    let lb = lb().await;
    let same = change("web", "s1", "drain");
    let mut other = change("web", "s2", "maint");
    other["transaction_id"] = same["transaction_id"].clone();
    let results = post(&lb.agent, &[same.clone(), same.clone(), other]).await;
    assert_eq!(results[0], results[1]);
    assert_eq!(results[0]["changed"]["applied"], true);
    assert_eq!(statuses(&results)[2], (409, "transaction_conflict"));
    assert_eq!(lb.spy.count("set server"), 1);
    let bits = bits(&lb.haproxy).await;
    assert_eq!((bits["web/s1"], bits["web/s2"]), (8, 0));
}

#[tokio::test]
async fn transaction_ids_are_shared_with_the_single_server_endpoint() {
    let lb = lb().await;
    let id = Uuid::new_v4();
    let put = lb.agent.put_state_as("web", "s2", "drain", id);
    let put = put.send().await.expect("answer");
    assert_eq!(put.status(), 200);
    let single: Value = put.json().await.expect("json");

    let replay = json!({"backend": "web", "server": "s2", "state": "drain", "transaction_id": id});
    let conflict =
        json!({"backend": "api", "server": "s2", "state": "maint", "transaction_id": id});
    let results = post(&lb.agent, &[replay, conflict]).await;
    assert_eq!(results[0]["status"], 200);
    assert_eq!(results[0]["changed"], single);
    assert_eq!(statuses(&results)[1], (409, "transaction_conflict"));
    assert_eq!(
        results[1]["error"]["message"],
        format!("transaction_id {id} was already used to set web/s2 to drain")
    );
    assert_eq!(lb.spy.count("set server"), 1);
    assert_eq!(bits(&lb.haproxy).await["api/s2"], 0);

    // And the other way round: an id first used in a bulk is replayed by PUT.
    let bulk = change("static", "s1", "maint");
    let first = post(&lb.agent, std::slice::from_ref(&bulk)).await;
    let id = Uuid::parse_str(bulk["transaction_id"].as_str().unwrap_or_default()).expect("id");
    let put = lb.agent.put_state_as("static", "s1", "maint", id);
    let put: Value = put
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert_eq!(put, first[0]["changed"]);
    assert_eq!(lb.spy.count("set server"), 2);
}

#[tokio::test]
async fn a_concurrent_duplicate_waits_for_the_first_call_and_shares_its_answer() {
    let lb = lb().await;
    lb.spy
        .set_delay("set server web/s1", Duration::from_millis(300));
    let id = Uuid::new_v4();
    let put = lb.agent.put_state_as("web", "s1", "drain", id).send();
    let same = json!({"backend": "web", "server": "s1", "state": "drain", "transaction_id": id});
    let bulk = async {
        // The PUT holds the id while HAProxy holds its line.
        tokio::time::sleep(Duration::from_millis(100)).await;
        post(&lb.agent, &[same, change("web", "s2", "maint")]).await
    };
    let (put, results) = tokio::join!(put, bulk);
    let single: Value = put.expect("answer").json().await.expect("json");
    assert_eq!(results[0]["changed"], single);
    assert_eq!(results[1]["changed"]["applied"], true);
    assert_eq!(lb.spy.count("set server web/s1"), 1);
    assert_eq!(lb.spy.count("set server web/s2"), 1);
}

#[tokio::test]
async fn bad_bulk_requests_are_400_json_and_need_a_token() {
    let lb = lb().await;
    let agent = &lb.agent;
    let url = format!("{}/v1/state", agent.url);
    let too_many: Vec<Value> = (0..501).map(|_| change("web", "s1", "drain")).collect();
    let cases = [
        (json!({"changes": []}), "invalid_request"),
        (json!({"changes": too_many}), "too_many_changes"),
        (json!({}), "invalid_body"),
        (json!({"changes": {"backend": "web"}}), "invalid_body"),
        (
            json!({"changes": [{"backend": "web", "server": "s1", "state": "sleepy",
                              "transaction_id": Uuid::new_v4()}]}),
            "invalid_body",
        ),
        (
            json!({"changes": [{"backend": "web", "server": "s1", "state": "drain",
                              "transaction_id": "nope"}]}),
            "invalid_body",
        ),
        (
            json!({"changes": [{"backend": "web", "server": "s1", "state": "drain"}]}),
            "invalid_body",
        ),
    ];
    for (body, code) in cases {
        let (status, error) =
            error_of(agent.post_states(&body).send().await.expect("answer")).await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (400, Some(code)),
            "{error}"
        );
        if code == "too_many_changes" {
            let message = error["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("at most 500"), "{error}");
        }
    }

    let not_json = agent.raw_json(Method::POST, "/v1/state", "{\"changes\": [");
    assert_eq!(
        error_of(not_json.send().await.expect("answer")).await.0,
        400
    );
    let pad = "x".repeat(300 * 1024);
    let huge = format!("{{\"changes\": [], \"pad\": \"{pad}\"}}");
    let huge = agent.raw_json(Method::POST, "/v1/state", huge);
    assert_eq!(error_of(huge.send().await.expect("answer")).await.0, 413);

    let body = json!({"changes": [change("web", "s1", "maint")]});
    for token in [None, Some("nope")] {
        let mut request = agent.client.post(&url).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let (status, _) = error_of(request.send().await.expect("answer")).await;
        assert_eq!(status, 401, "token {token:?}");
    }

    assert!(bits(&lb.haproxy).await.values().all(|b| *b == 0));
    assert_eq!(lb.spy.count(""), 0, "a refused request reached HAProxy");
}

#[tokio::test]
async fn the_limit_of_changes_with_the_longest_names_fits_the_body_limit() {
    let lb = lb().await;
    let backend = "b".repeat(128);
    let changes: Vec<Value> = (0..500)
        .map(|i| change(&backend, &format!("{i:0>128}"), "maint"))
        .collect();
    let results = post(&lb.agent, &changes).await;
    assert!(
        statuses(&results)
            .iter()
            .all(|s| *s == (404, "no_such_backend")),
        "{:?}",
        &results[..2]
    );
}

#[tokio::test]
async fn haproxy_down_is_503_for_the_whole_bulk_and_a_retry_applies() {
    let backends = HttpBackends::start(&["app"]).await;
    let addr = backends.addr("app");
    let mut haproxy = TestHaproxy::start(&format!(
        "backend web\n  server s1 {addr}\n  server s2 {addr}\n"
    ))
    .await;
    let agent = TestAgent::start(&haproxy.socket).await;
    let body = json!({"changes": [change("web", "s1", "drain"), change("web", "s2", "maint")]});
    haproxy.stop();
    let (status, error) = error_of(agent.post_states(&body).send().await.expect("answer")).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (503, Some("haproxy_unreachable"))
    );

    haproxy.restart().await;
    let r = agent.post_states(&body).send().await.expect("answer");
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.expect("json");
    assert!(
        answer["results"]
            .as_array()
            .is_some_and(|rs| rs.iter().all(|r| r["changed"]["applied"] == true)),
        "{answer}"
    );
    let bits = bits(&haproxy).await;
    assert_eq!((bits["web/s1"], bits["web/s2"]), (8, 1));
}

#[tokio::test]
async fn a_bulk_is_in_the_state_file_when_answered_and_survives_a_reload() {
    let (_app, body) = crate::reload::two_backends().await;
    let mut haproxy = TestHaproxy::start_with_state_file(&body).await;
    let state_file = haproxy.state_file.clone().expect("a state file");
    let hour = Duration::from_secs(3600);
    let agent = TestAgent::start_with_state_file(&haproxy.socket, &state_file, hour).await;
    let changes = [change("web", "w1", "drain"), change("api", "a2", "maint")];
    post(&agent, &changes).await;
    let text = std::fs::read_to_string(&state_file).expect("the state file");
    assert_eq!(file_bits(&text, "web", "w1"), Some(8), "{text}");
    assert_eq!(file_bits(&text, "api", "a2"), Some(1), "{text}");

    haproxy.reload_graceful().await;
    let bits = bits(&haproxy).await;
    assert_eq!((bits["web/w1"], bits["api/a2"], bits["web/w2"]), (8, 1, 0));
}

#[tokio::test]
async fn three_hundred_changes_go_on_several_lines_and_all_apply() {
    let lb = SpiedLb::numbered(&[("web", 300)]).await;
    let drain: Vec<Value> = (1..=300)
        .map(|i| change("web", &format!("s{i}"), "drain"))
        .collect();
    let results = post(&lb.agent, &drain).await;
    assert!(
        results.iter().all(|r| r["changed"]["applied"] == true),
        "{:?}",
        statuses(&results)
    );
    assert!(bits(&lb.haproxy).await.values().all(|b| *b == 8));
    // `set server web/sN state drain; ` is ~33 bytes: 300 of them are more
    // than one 8 KiB line, and each line reads the backend before and after.
    let lines = lb.spy.count("show servers state web") / 2;
    assert_eq!(lines, 2);
    assert_eq!(lb.spy.count("set server"), 300);
    assert_eq!(lb.spy.count("show stat web 4 -1"), lines);

    // Now every server's ids are known: one `show stat` row per change.
    let ready: Vec<Value> = (1..=300)
        .map(|i| change("web", &format!("s{i}"), "ready"))
        .collect();
    let results = post(&lb.agent, &ready).await;
    assert!(
        results
            .iter()
            .all(|r| r["changed"]["server"]["admin_state"] == "ready")
    );
    assert!(bits(&lb.haproxy).await.values().all(|b| *b == 0));
    assert_eq!(lb.spy.count("show stat web 4 -1"), lines);
    assert_eq!(lb.spy.count("show stat "), lines + 300);
}

#[tokio::test]
async fn the_client_classifies_each_result_as_its_single_call() {
    let backends = HttpBackends::start(&["app"]).await;
    let mut haproxy = TestHaproxy::start(&format!(
        "backend web\n  server s1 {}\n",
        backends.addr("app")
    ))
    .await;
    let agent = TestAgent::start(&haproxy.socket).await;
    let client = AgentClient::new(Duration::from_secs(10), None).expect("client");
    let endpoint = AgentEndpoint {
        base_url: agent.url.clone(),
        token: agent.token.clone(),
    };
    let change = |server: &str| StateChange {
        backend: "web".into(),
        server: server.into(),
        state: AdminState::Drain,
        transaction_id: Uuid::new_v4(),
    };
    let changes = [change("s1"), change("ghost")];
    let results = client.set_states(&endpoint, &changes).await.expect("call");
    assert!(matches!(&results[0], Ok(c) if c.applied && c.server.admin_state == AdminState::Drain));
    assert!(matches!(
        &results[1],
        Err(CallError::Client { status: 404, code, .. }) if code == "no_such_server"
    ));

    haproxy.stop();
    let down = client.set_states(&endpoint, &[change("s1")]).await;
    assert!(
        matches!(down, Err(CallError::Server { status: 503, .. })),
        "{down:?}"
    );
    let wrong = AgentEndpoint {
        token: "nope".into(),
        ..endpoint
    };
    let refused = client.set_states(&wrong, &[change("s1")]).await;
    assert!(
        matches!(refused, Err(CallError::Client { status: 401, .. })),
        "{refused:?}"
    );
}
