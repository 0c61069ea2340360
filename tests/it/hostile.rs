//! Hostile input (issue 6): every malformed or adversarial message of the
//! corpus in `tests/fixtures/messages/{action,batch,sync}/invalid/` against
//! a running worker, and the same corpus and hostile values against the
//! HTTP API. Nothing may reach HAProxy, nothing may be written, every
//! refusal must say why, and the API never answers a 5xx.

use std::collections::HashMap;
use std::time::Duration;

use haproxy_control::queue::message::MAX_MESSAGE_BYTES;
use serde_json::json;
use uuid::Uuid;

use crate::harness::corpus::{examples, fixtures, read};
use crate::harness::lb::SpiedLb;
use crate::harness::{HttpBackends, TestSystem};

const WAIT: Duration = Duration::from_secs(30);

/// The transaction id every corpus message carries.
const CORPUS_TXN: &str = "5f0c6f4e-1b7e-4a52-9d0e-2f4f2a8f3c11";

/// Backend `web` of `web1_shop_1` and `web2_shop_1`: the names the corpus
/// aims at, so a message that slipped through would reach a real server.
/// The socket spy counts what reaches HAProxy.
async fn lb() -> SpiedLb {
    let backends = HttpBackends::start(&["a", "b"]).await;
    let config = format!(
        "backend web\n  server web1_shop_1 {}\n  server web2_shop_1 {}\n",
        backends.addr("a"),
        backends.addr("b")
    );
    SpiedLb::start(backends, &config).await
}

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
    let lb = lb().await;
    let mut sys = TestSystem::start().await;
    sys.register_agent("lb-1", &lb.agent).await;
    let servers_before = sys.count("SELECT count(*) AS n FROM haproxy_servers").await;
    let syncs_before = sys
        .count("SELECT count(*) AS n FROM haproxy_sync_runs")
        .await;
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
        assert_eq!(
            sys.count(&format!("SELECT count(*) AS n FROM {table}"))
                .await,
            0,
            "{table}"
        );
    }
    assert_eq!(
        sys.count("SELECT count(*) AS n FROM haproxy_sync_runs")
            .await,
        syncs_before
    );
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
    assert_eq!(
        sys.count("SELECT count(*) AS n FROM haproxy_servers").await,
        servers_before
    );
    let bits = lb.haproxy.admin_bits().await;
    assert!(
        bits.contains(&("web/web1_shop_1".to_owned(), 8)),
        "{bits:?}"
    );
    for queue in [
        &sys.topology.actions_queue,
        &sys.topology.batches_queue,
        &sys.topology.sync_queue,
    ] {
        assert_eq!(sys.depth(queue).await, 0, "{queue}");
    }
}
