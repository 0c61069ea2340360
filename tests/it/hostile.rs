//! Hostile input (issue 6): every malformed or adversarial message of the
//! corpus in `tests/fixtures/messages/{action,batch,sync}/invalid/` against
//! a running worker, and the same corpus and hostile values against the
//! HTTP API. Nothing may reach HAProxy, nothing may be written, every
//! refusal must say why, and the API never answers a 5xx.

use std::collections::HashMap;
use std::time::Duration;

use haproxy_control::queue::message::MAX_MESSAGE_BYTES;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::harness::TestSystem;
use crate::harness::api::{ADMIN, Api, LiveApi, OPERATOR, VIEWER};
use crate::harness::corpus::{examples, fixtures, read};
use crate::harness::lb::SpiedLb;

const WAIT: Duration = Duration::from_secs(30);

/// The transaction id every corpus message carries.
const CORPUS_TXN: &str = "5f0c6f4e-1b7e-4a52-9d0e-2f4f2a8f3c11";

/// A message of the hostile corpus: where it goes, what it is, its body.
struct Hostile {
    routing_key: &'static str,
    name: String,
    body: Vec<u8>,
}

/// Every file of `{action,batch,sync}/invalid/`, plus what a file cannot
/// hold well: bodies one byte over each parser's size limit (otherwise
/// valid commands padded with spaces) and a body that is not UTF-8.
fn hostile_messages() -> Vec<Hostile> {
    let mut all = Vec::new();
    for routing_key in ["action", "batch", "sync"] {
        for (name, body) in examples(routing_key, "invalid") {
            all.push(Hostile {
                routing_key,
                name,
                body,
            });
        }
    }
    // The batch parser allows four times the action limit (10,000 ids).
    for (routing_key, limit) in [
        ("action", MAX_MESSAGE_BYTES),
        ("batch", MAX_MESSAGE_BYTES * 4),
        ("sync", MAX_MESSAGE_BYTES),
    ] {
        let mut body = read(&fixtures(routing_key, "valid").join("contract-example.json"));
        body.resize(limit + 1, b' ');
        all.push(Hostile {
            routing_key,
            name: format!(
                "(generated) {routing_key} contract example padded to {} bytes",
                limit + 1
            ),
            body,
        });
    }
    all.push(Hostile {
        routing_key: "action",
        name: "(generated) not UTF-8".to_owned(),
        body: b"{\"transaction_id\": \"\xff\xfe\", \"action\": \"drain\"}".to_vec(),
    });
    all
}

#[tokio::test]
async fn every_hostile_message_is_dead_lettered_with_a_reason_and_nothing_reaches_haproxy() {
    // Backend `web` of `web1_shop_1` and `web2_shop_1`: the names the corpus
    // aims at, so a message that slipped through would reach a real server.
    let lb = SpiedLb::web_of_two().await;
    let mut sys = TestSystem::start().await;
    sys.register_agent("lb-1", &lb.agent).await;
    let servers_before = sys.servers().await.len();
    let syncs_before = sys.sync_runs().await.len();
    let socket_before = lb.spy.records().len();
    sys.start_worker(sys.config());

    let corpus = hostile_messages();
    let per_kind = |key: &str| corpus.iter().filter(|m| m.routing_key == key).count();
    assert!(
        per_kind("action") >= 80 && per_kind("batch") >= 20 && per_kind("sync") >= 15,
        "the corpus shrank: {} action, {} batch, {} sync",
        per_kind("action"),
        per_kind("batch"),
        per_kind("sync")
    );
    for m in &corpus {
        sys.publish_raw(m.routing_key, &m.body).await;
    }

    let dead = sys.wait_dead_letters(corpus.len(), WAIT).await;
    let missing: Vec<&str> = corpus
        .iter()
        .filter(|m| {
            !dead
                .iter()
                .any(|d| d.routing_key == m.routing_key && d.body == m.body)
        })
        .map(|m| m.name.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "not dead-lettered within {WAIT:?}: {missing:?}"
    );
    assert_eq!(dead.len(), corpus.len(), "one dead letter per message");

    // Each message comes back exactly once, as it was sent, with its reason.
    let mut by_body: HashMap<(&str, &[u8]), &Hostile> = HashMap::new();
    for m in &corpus {
        by_body.insert((m.routing_key, m.body.as_slice()), m);
    }
    let mut seen: HashMap<&str, String> = HashMap::new();
    for d in &dead {
        let m = by_body
            .get(&(d.routing_key.as_str(), d.body.as_slice()))
            .unwrap_or_else(|| {
                panic!(
                    "a dead letter that was not sent ({}): {}",
                    d.routing_key,
                    String::from_utf8_lossy(&d.body)
                )
            });
        assert!(
            !d.error.trim().is_empty() && !d.error.starts_with("None"),
            "{}: no x-error reason",
            m.name
        );
        assert!(
            !d.x_death,
            "{}: dead-lettered by the delivery limit, not refused at once: {}",
            m.name, d.error
        );
        assert!(
            seen.insert(m.name.as_str(), d.error.clone()).is_none(),
            "{} dead-lettered twice",
            m.name
        );
    }
    // The reasons name what is wrong.
    for (file, expected) in [
        (
            "action/invalid/server-semicolon.json",
            "target.server: server name contains ';'",
        ),
        (
            "action/invalid/backend-newline-command.json",
            "target.backend: backend name contains '\\n'",
        ),
        (
            "action/invalid/server-space.json",
            "target.server: server name contains ' '",
        ),
        (
            "action/invalid/unicode-server-name.json",
            "target.server: server name contains 'é'",
        ),
        (
            "action/invalid/server-10kb.json",
            "longer than 128 bytes (10240)",
        ),
        (
            "action/invalid/backend-sql-drop-table.json",
            "target.backend: backend name contains '\\''",
        ),
        (
            "action/invalid/instance-path-traversal.json",
            "target.instance: instance name contains '/'",
        ),
        (
            "action/invalid/server-percent-encoded-traversal.json",
            "server name contains '%'",
        ),
        ("action/invalid/transaction-id-sql.json", "is not a UUID"),
        (
            "action/invalid/action-sql.json",
            "is not one of ready, drain, maint",
        ),
        (
            "action/invalid/unknown-top-level-field.json",
            "unknown field `priority`",
        ),
        (
            "action/invalid/actor-number.json",
            "invalid type: integer `7`",
        ),
        ("action/invalid/reason-with-nul.json", "NUL"),
        ("batch/invalid/reason-with-nul.json", "NUL"),
        ("batch/invalid/server-ids-negative.json", "ids are positive"),
        (
            "batch/invalid/actor-10kb.json",
            "actor must be at most 256 bytes",
        ),
        (
            "sync/invalid/reason-sql.json",
            "is not one of schedule, force",
        ),
        (
            "sync/invalid/instance-id-sql-string.json",
            "invalid type: string",
        ),
    ] {
        let reason = seen
            .iter()
            .find(|(name, _)| name.ends_with(file))
            .map(|(_, r)| r.as_str())
            .unwrap_or_else(|| panic!("{file} is not in the corpus"));
        assert!(
            reason.contains(expected),
            "{file}: {reason:?} lacks {expected:?}"
        );
    }
    for m in corpus.iter().filter(|m| m.name.contains("padded")) {
        assert!(seen[m.name.as_str()].contains("the limit is"), "{}", m.name);
    }

    // Nothing reached HAProxy, nothing was recorded or announced.
    assert_eq!(
        lb.spy.records().len(),
        socket_before,
        "a command reached the stats socket: {:?}",
        lb.spy.lines("")
    );
    for table in ["haproxy_actions", "haproxy_batches"] {
        assert_eq!(sys.rows_in(table).await, 0, "{table}");
    }
    assert_eq!(sys.sync_runs().await.len(), syncs_before);
    assert!(
        sys.events()
            .iter()
            .all(|e| e["transaction_id"] != CORPUS_TXN),
        "an event for a refused message: {:?}",
        sys.events()
    );

    // The worker keeps consuming, and SQL-looking free text is stored as data.
    let good = Uuid::new_v4();
    let reason = "'; DROP TABLE haproxy_servers;-- ../../etc/passwd %2e%2e%2f";
    let actor = "user:o'brien\"; DELETE FROM haproxy_actions;--";
    sys.publish_action(&json!({
        "transaction_id": good,
        "action": "drain",
        "target": {"instance": "lb-1", "backend": "web", "server": "web1_shop_1"},
        "actor": actor,
        "reason": reason,
    }))
    .await;
    sys.wait_event("action.succeeded", good, WAIT).await;
    let row = sys.action(good).await.expect("the action's row");
    assert_eq!(
        (
            row.status.as_str(),
            row.actor.as_str(),
            row.reason.as_deref()
        ),
        ("success", actor, Some(reason))
    );
    assert_eq!(lb.spy.count("set server"), 1);
    assert_eq!(sys.servers().await.len(), servers_before);
    let bits = lb.haproxy.admin_bits().await;
    assert!(
        bits.contains(&("web/web1_shop_1".to_owned(), 8)),
        "{bits:?}"
    );
    sys.assert_no_commands_waiting().await;
}

/// `raw` as one percent-encoded URL path segment or query value.
fn pct(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A refusal: a 4xx whose body is `{"error": {"code", "message"}}`.
/// (`Api` already fails the test on a 5xx or a body that is not JSON.)
#[track_caller]
fn assert_refused(answer: &(u16, Value), what: &str) {
    let (status, body) = answer;
    assert!((400..500).contains(status), "{what}: {status} {body}");
    for member in ["code", "message"] {
        assert!(
            body["error"][member]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{what}: {status} {body}"
        );
    }
}

/// A cursor as the API makes them (hex of `<list>:<key>`), around any key.
fn cursor(list: char, key: &str) -> String {
    format!("{list}:{key}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What goes where a path segment is expected: traversal (plain, encoded,
/// double-encoded), SQL, socket commands, unicode, 10 KB, out of range.
fn hostile_segments() -> Vec<String> {
    let mut segments: Vec<String> = [
        "../../etc/passwd",
        "1;show info",
        "1\nset server web/web1_shop_1 state maint",
        "1 OR 1=1",
        "1' OR '1'='1",
        "1; DROP TABLE haproxy_servers;--",
        "wéb1",
        "99999999999999999999",
        "0x1",
        "",
    ]
    .iter()
    .map(|s| pct(s))
    .collect();
    segments.push("..%2F..%2Fetc%2Fpasswd".to_owned());
    segments.push("%2e%2e%2f%2e%2e%2fetc%2fpasswd".to_owned());
    segments.push("%252e%252e%252fetc".to_owned());
    segments.push(pct(&"s".repeat(10 * 1024)));
    segments
}

/// Sends a request line as written, on a raw connection, so that no client
/// library normalises `..` away; returns the status and the body.
async fn raw_get(api: &Api, target: &str) -> (u16, String) {
    let addr = api.url.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the API");
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {VIEWER}\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.expect("read");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

#[tokio::test]
async fn the_api_answers_hostile_input_with_json_4xx_never_5xx_and_sends_nothing() {
    let live = LiveApi::start().await;
    let (lb, sys, api) = (&live.lb, &live.sys, &live.api);
    let (instance, server) = (live.instance, live.server);
    let backends = api
        .ok(&format!("/api/haproxy/instances/{instance}/backends"))
        .await;
    let backend = backends["items"][0]["id"].as_i64().expect("backend id");
    let socket_before = lb.spy.records().len();
    let rows = || async {
        (
            sys.rows_in("haproxy_servers").await,
            sys.rows_in("haproxy_backends").await,
            sys.rows_in("haproxy_instances").await,
        )
    };
    let rows_before = rows().await;
    let action_path = format!("/api/haproxy/servers/{server}/action");
    let json = Some("application/json");

    // 1. Every corpus message as the body of both command endpoints.
    let corpus = hostile_messages();
    for m in &corpus {
        for path in [action_path.as_str(), "/api/haproxy/batch/action"] {
            let answer = api
                .send_raw(Method::POST, path, OPERATOR, json, &m.body)
                .await;
            assert_refused(&answer, &format!("POST {path} {}", m.name));
        }
    }

    // 2. Bodies of the API's own shape, with wrong types, hostile values and
    //    members a caller must not set (actor, target).
    for body in [
        json!({"action": ["drain"]}),
        json!({"action": {"$ne": null}}),
        json!({"action": null}),
        json!({"action": "drain'; DROP TABLE haproxy_actions;--"}),
        json!({"action": "drаin"}),
        json!({"action": "drain", "transaction_id": "' OR 1=1 --"}),
        json!({"action": "drain", "transaction_id": "../../etc/passwd"}),
        json!({"action": "drain", "transaction_id": 42}),
        json!({"action": "drain", "reason": "r".repeat(10 * 1024)}),
        json!({"action": "drain", "reason": "ok\u{0}; DROP TABLE haproxy_actions;--"}),
        json!({"action": "drain", "force": "true"}),
        json!({"action": "drain", "force": 1}),
        json!({"action": "drain", "actor": "user:admin"}),
        json!({"action": "drain", "target": {"server": "web1_shop_1;show info"}}),
    ] {
        let answer = api.post(&action_path, OPERATOR, &body).await;
        assert_refused(&answer, &format!("POST action {body}"));
    }
    for targets in [
        json!({"server_ids": ["1 OR 1=1"]}),
        json!({"server_ids": [9_223_372_036_854_775_807_u64 + 1]}),
        json!({"server_ids": (1..=10_001).collect::<Vec<i64>>()}),
        json!({"application_group_id": "../../etc/passwd"}),
        json!({"application_ids": [1.5]}),
        json!({"server_ids": [server], "instance": "lb-1"}),
    ] {
        let body = json!({"action": "drain", "targets": targets});
        let answer = api.post("/api/haproxy/batch/action", OPERATOR, &body).await;
        assert_refused(&answer, &format!("POST batch {targets}"));
    }
    let answer = api
        .post(
            "/api/haproxy/batch/action",
            OPERATOR,
            &json!({"action": "drain", "targets": {"server_ids": [server]}, "actor": "user:admin"}),
        )
        .await;
    assert_refused(&answer, "a batch naming its own actor");
    let over_a_mebibyte = format!(
        "{{\"action\": \"drain\", \"reason\": \"{}\"}}",
        "r".repeat(1 << 20)
    );
    let answer = api
        .send_raw(Method::POST, &action_path, OPERATOR, json, over_a_mebibyte)
        .await;
    assert_eq!(answer.0, 413, "{}", answer.1);

    // 3. Hostile path segments on every route that takes an id.
    for x in hostile_segments() {
        for (method, path, token) in [
            (
                Method::GET,
                format!("/api/haproxy/instances/{x}/backends"),
                VIEWER,
            ),
            (
                Method::GET,
                format!("/api/haproxy/backends/{x}/servers"),
                VIEWER,
            ),
            (
                Method::GET,
                format!("/api/haproxy/servers/{x}/history"),
                VIEWER,
            ),
            (Method::GET, format!("/api/haproxy/actions/{x}"), VIEWER),
            (Method::GET, format!("/api/haproxy/batches/{x}"), VIEWER),
            (
                Method::POST,
                format!("/api/haproxy/servers/{x}/action"),
                OPERATOR,
            ),
            (
                Method::POST,
                format!("/api/haproxy/instances/{x}/sync"),
                OPERATOR,
            ),
            (Method::PUT, format!("/api/servers/{x}/haproxy"), ADMIN),
        ] {
            let body = match method {
                Method::POST => Some(json!({"action": "drain"})),
                Method::PUT => Some(json!({"is_haproxy_node": true, "name": "lb-x",
                    "fagent_url": "http://127.0.0.1:9", "fagent_token": "t0k3n"})),
                _ => None,
            };
            let answer = api
                .send(method.clone(), &path, Some(token), body.as_ref())
                .await;
            let shown: String = path.chars().take(80).collect();
            assert_refused(&answer, &format!("{method} {shown}"));
        }
    }
    // `..` as written in the request line, where no client tidies it up.
    for target in [
        "/api/haproxy/../../../etc/passwd",
        "/api/haproxy/instances/1/backends/../../../../etc/passwd",
        "/../../../../etc/passwd",
    ] {
        let (status, body) = raw_get(api, target).await;
        assert_eq!(status, 404, "{target}: {body}");
        let value: Value = serde_json::from_str(&body).expect("a JSON error");
        assert_eq!(value["error"]["code"], "not_found", "{target}: {body}");
        assert!(!body.contains("root:"), "{target}: {body}");
    }

    // 4. Hostile query strings: refused, never run.
    let servers = format!("/api/haproxy/backends/{backend}/servers");
    let history = format!("/api/haproxy/servers/{server}/history");
    for (path, key, value) in [
        (servers.as_str(), "backend", "' OR 1=1 --"),
        (servers.as_str(), "application_id", "1 OR 1=1"),
        (servers.as_str(), "admin_state", "ready' OR '1'='1"),
        (
            servers.as_str(),
            "op_state",
            "up; DROP TABLE haproxy_servers;--",
        ),
        (servers.as_str(), "linked", "false' --"),
        (servers.as_str(), "limit", "1; DROP TABLE haproxy_servers"),
        (servers.as_str(), "cursor", "' OR 1=1 --"),
        (servers.as_str(), "cursor", &cursor('s', "1 OR 1=1")),
        (history.as_str(), "since", "2026-01-01T00:00:00Z' OR '1'='1"),
        (history.as_str(), "until", "../../etc/passwd"),
        (
            history.as_str(),
            "cursor",
            &cursor('h', "0.1; DROP TABLE haproxy_server_status_history"),
        ),
        ("/api/haproxy/instances", "cursor", "..%2F..%2Fetc%2Fpasswd"),
        ("/api/haproxy/instances", "name", "lb-1' OR '1'='1"),
    ] {
        let answer = api
            .get(&format!("{path}?{key}={}", pct(value)), VIEWER)
            .await;
        assert_refused(&answer, &format!("GET {path}?{key}={value}"));
    }

    // 5. Where a quote-laden value is well-formed it is data: the backends
    //    after `zzz' OR '1'='1` are none (as an injected OR would not
    //    be), the servers of application 0 are none, and nothing was dropped.
    let listing = format!("/api/haproxy/instances/{instance}/backends");
    assert_eq!(
        api.ok(&listing).await["items"].as_array().map(Vec::len),
        Some(1)
    );
    for key in ["zzz' OR '1'='1", "zzz'; DROP TABLE haproxy_backends;--"] {
        let page = api
            .ok(&format!("{listing}?cursor={}", cursor('b', key)))
            .await;
        assert_eq!(page["items"], json!([]), "after {key:?}: {page}");
        assert_eq!(page["next_cursor"], Value::Null);
    }
    let page = api.ok(&format!("{servers}?application_id=0")).await;
    assert_eq!(page["items"], json!([]), "{page}");

    // Nothing was published, written or sent to HAProxy ...
    sys.assert_no_commands_waiting().await;
    assert_eq!(sys.rows_in("haproxy_actions").await, 0);
    assert_eq!(sys.rows_in("haproxy_batches").await, 0);
    assert_eq!(rows().await, rows_before);
    assert_eq!(
        lb.spy.records().len(),
        socket_before,
        "{:?}",
        lb.spy.lines("")
    );
    // ... while the same API, worker and HAProxy do act on a good request.
    live.assert_an_operator_action_succeeds(&json!({"action": "drain"}))
        .await;
    live.stop().await;
}
