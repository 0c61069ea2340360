//! The agent's contract: auth, errors, injection, replays, HAProxy outages,
//! and every answer checked against `schemas/fagent.openapi.yaml`.

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{HttpBackends, TestAgent, TestHaproxy};

struct Stack {
    _backends: HttpBackends,
    haproxy: TestHaproxy,
    agent: TestAgent,
}

async fn stack() -> Stack {
    let backends = HttpBackends::start(&["s1", "s2"]).await;
    let haproxy = TestHaproxy::start(&format!(
        "backend web\n  server s1 {}\n  server s2 {}\n",
        backends.addr("s1"),
        backends.addr("s2")
    ))
    .await;
    let agent = TestAgent::start(&haproxy.socket).await;
    Stack {
        _backends: backends,
        haproxy,
        agent,
    }
}

/// Validates `body` against a schema of the committed OpenAPI document.
pub(crate) fn assert_matches_schema(schema_name: &str, body: &Value) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schemas/fagent.openapi.yaml"
    ))
    .expect("schemas/fagent.openapi.yaml");
    let mut doc: Value = serde_norway::from_str(&text).expect("valid YAML");
    doc["$ref"] = json!(format!("#/components/schemas/{schema_name}"));
    doc["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&doc)
        .expect("schema compiles");
    let errors: Vec<String> = validator.iter_errors(body).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{schema_name} does not match {body}: {errors:?}"
    );
}

pub(crate) async fn error_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.expect("every error is JSON");
    assert_matches_schema("Error", &body);
    (status, body)
}

#[tokio::test]
async fn answers_match_the_committed_openapi_document() {
    let s = stack().await;
    let health: Value = s
        .agent
        .get("/v1/health")
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("json");
    assert_matches_schema("Health", &health);
    assert!(
        health["haproxy_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("2.")),
        "{health}"
    );

    let listing: Value = s
        .agent
        .get("/v1/backends")
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_matches_schema("Backends", &listing);

    let changed = s.agent.set("web", "s1", "drain").await;
    assert_matches_schema("StateChanged", &changed);
    let (status, _) = error_of(
        s.agent
            .put_state("web", "nosuch", "drain")
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_401_and_touches_nothing() {
    let s = stack().await;
    let url = format!("{}/v1/backends/web/servers/s1/state", s.agent.url);
    let body = json!({"state": "maint", "transaction_id": uuid::Uuid::new_v4()});
    let none = s
        .agent
        .client
        .put(&url)
        .json(&body)
        .send()
        .await
        .expect("answer");
    assert_eq!(
        none.headers().get("www-authenticate").map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
    assert_eq!(error_of(none).await.0, 401);
    let wrong = s
        .agent
        .client
        .put(&url)
        .bearer_auth("nope")
        .json(&body)
        .send()
        .await
        .expect("answer");
    assert_eq!(error_of(wrong).await.0, 401);
    let listing = s
        .agent
        .client
        .get(format!("{}/v1/backends", s.agent.url))
        .send()
        .await
        .expect("answer");
    assert_eq!(error_of(listing).await.0, 401);
    assert!(
        s.haproxy
            .admin_bits()
            .await
            .iter()
            .all(|(_, bits)| *bits == 0)
    );
}

#[tokio::test]
async fn unknown_backend_or_server_is_404() {
    let s = stack().await;
    let (status, body) = error_of(
        s.agent
            .put_state("web", "ghost", "drain")
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("no_such_server"))
    );
    let (status, body) = error_of(
        s.agent
            .put_state("ghost", "s1", "drain")
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("no_such_backend"))
    );
    let (status, _) = error_of(s.agent.get("/v1/nothing").send().await.expect("answer")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn hostile_names_and_states_are_400_and_haproxy_is_unchanged() {
    let s = stack().await;
    let long = "a".repeat(10 * 1024);
    let hostile_segments = [
        "s1%3Bshow%20info", // ;
        "s1%0Ashow%20info", // newline
        "s1%0D",            // carriage return
        "s1%20x",           // space
        "s1%2Fx",           // /
        "s1%23x",           // #
        "s%C3%A91",         // unicode
        "s1%00",            // NUL
        long.as_str(),      // 10 KB
    ];
    for bad in hostile_segments {
        for (backend, server) in [("web", bad), (bad, "s1")] {
            let url = format!(
                "{}/v1/backends/{backend}/servers/{server}/state",
                s.agent.url
            );
            let r = s
                .agent
                .client
                .put(&url)
                .bearer_auth(&s.agent.token)
                .json(&json!({"state": "maint", "transaction_id": uuid::Uuid::new_v4()}))
                .send()
                .await
                .expect("answer");
            let (status, body) = error_of(r).await;
            assert_eq!(status, 400, "{backend}/{server}: {body}");
            assert_eq!(body["error"]["code"], "invalid_name");
        }
    }
    for bad_body in [
        json!({"state": "maint\nshow info", "transaction_id": uuid::Uuid::new_v4()}),
        json!({"state": "sleepy", "transaction_id": uuid::Uuid::new_v4()}),
        json!({"state": 3, "transaction_id": uuid::Uuid::new_v4()}),
        json!({"state": "maint", "transaction_id": "not-a-uuid"}),
        json!({"state": "maint"}),
        json!("maint"),
    ] {
        let r = s
            .agent
            .client
            .put(format!("{}/v1/backends/web/servers/s1/state", s.agent.url))
            .bearer_auth(&s.agent.token)
            .json(&bad_body)
            .send()
            .await
            .expect("answer");
        let (status, body) = error_of(r).await;
        assert_eq!(status, 400, "{bad_body}: {body}");
    }
    let path = "/v1/backends/web/servers/s1/state";
    let not_json = s.agent.raw_json(Method::PUT, path, "{\"state\": ");
    assert_eq!(
        error_of(not_json.send().await.expect("answer")).await.0,
        400
    );
    let pad = "x".repeat(100_000);
    let huge = format!("{{\"state\": \"maint\", \"pad\": \"{pad}\"}}");
    let huge = s.agent.raw_json(Method::PUT, path, huge);
    assert_eq!(error_of(huge.send().await.expect("answer")).await.0, 413);

    let bits = s.haproxy.admin_bits().await;
    assert_eq!(bits.len(), 2);
    assert!(
        bits.iter().all(|(_, b)| *b == 0),
        "HAProxy was changed: {bits:?}"
    );
}

#[tokio::test]
async fn a_repeated_transaction_id_gets_the_first_answer() {
    let s = stack().await;
    let id = uuid::Uuid::new_v4();
    let url = format!("{}/v1/backends/web/servers/s1/state", s.agent.url);
    let send = |state: &'static str| {
        s.agent
            .client
            .put(&url)
            .bearer_auth(&s.agent.token)
            .json(&json!({"state": state, "transaction_id": id}))
            .send()
    };
    let first: Value = send("drain")
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert_eq!(first["applied"], true);
    // Changed behind the agent's back: a real second call would now apply
    // again; a replay must not touch HAProxy and must answer as the first time.
    assert_eq!(
        s.haproxy.cmd("set server web/s1 state ready").await.trim(),
        ""
    );
    let again: Value = send("drain")
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert_eq!(again, first);
    assert!(s.haproxy.admin_bits().await.iter().all(|(_, b)| *b == 0));
    // The same id for another request is a conflict.
    let (status, body) = error_of(send("maint").await.expect("answer")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("transaction_conflict"))
    );

    // A state the server already has is reported as not applied.
    let second = s.agent.set("web", "s2", "ready").await;
    assert_eq!(second["applied"], false);
}

#[tokio::test]
async fn haproxy_down_is_503_and_the_agent_recovers_when_it_returns() {
    let mut s = stack().await;
    s.haproxy.stop();
    for path in ["/v1/health", "/v1/backends"] {
        let (status, body) = error_of(s.agent.get(path).send().await.expect("answer")).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (503, Some("haproxy_unreachable")),
            "{path}"
        );
    }
    let (status, _) = error_of(
        s.agent
            .put_state("web", "s1", "drain")
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, 503);

    s.haproxy.restart().await;
    let health = s.agent.get("/v1/health").send().await.expect("answer");
    assert_eq!(health.status(), 200);
    let answer = s.agent.set("web", "s1", "drain").await;
    assert_eq!(answer["server"]["admin_state"], "drain");
}

#[tokio::test]
async fn many_concurrent_calls_stay_within_haproxys_socket_connection_limit() {
    // HAProxy's stats socket takes 10 connections at once by default; 60
    // calls at once must all succeed, not fail on refused connections.
    let backends = HttpBackends::start(&["app"]).await;
    let addr = backends.addr("app");
    let servers: String = (1..=60)
        .map(|i| format!("  server s{i} {addr}\n"))
        .collect();
    let haproxy = TestHaproxy::start(&format!("backend web\n{servers}")).await;
    let agent = TestAgent::start(&haproxy.socket).await;
    let calls = (1..=60).map(|i| {
        let agent = &agent;
        async move {
            agent
                .put_state("web", &format!("s{i}"), "drain")
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    });
    let statuses = futures::future::join_all(calls).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let drained = haproxy
        .admin_bits()
        .await
        .into_iter()
        .filter(|(_, b)| *b == 8)
        .count();
    assert_eq!(drained, 60);
}
