//! Webhooks (issue 13) end to end: a real dispatcher (in a worker), real
//! RabbitMQ and PostgreSQL, and a receiver that verifies every delivery with
//! the `standardwebhooks` package from PyPI (tests/fixtures/webhooks/receiver.py).

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use haproxy_control::config::Config;
use haproxy_control::domain::event::{Event, EventType};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::TestSystem;
use crate::harness::api::{ADMIN, Api, OPERATOR, assert_error, seed_inventory};
use crate::harness::eventually;

const WAIT: Duration = Duration::from_secs(30);

/// The Python receiver, killed when dropped.
struct Receiver {
    child: Child,
    base: String,
    http: reqwest::Client,
}

#[derive(Debug, serde::Deserialize)]
struct Record {
    webhook_id: Option<String>,
    signature: Option<String>,
    verified_with: Vec<usize>,
    body: String,
    received_at: f64,
}

impl Receiver {
    fn start() -> Receiver {
        let root = env!("CARGO_MANIFEST_DIR");
        let python = format!("{root}/.venv/webhooks/bin/python");
        assert!(
            std::path::Path::new(&python).exists(),
            "{python} is missing: run deploy/ensure-deps.sh"
        );
        let mut child = Command::new(python)
            .arg(format!("{root}/tests/fixtures/webhooks/receiver.py"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("receiver port");
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .expect("PORT line")
            .to_owned();
        Receiver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: haproxy_control::http::client::builder()
                .build()
                .expect("client"),
        }
    }

    fn url(&self, name: &str) -> String {
        format!("{}/hook/{name}", self.base)
    }

    async fn script(&self, name: &str, secrets: &[&str], responses: Value) {
        self.http
            .post(format!("{}/_control/{name}", self.base))
            .json(&json!({"secrets": secrets, "responses": responses}))
            .send()
            .await
            .expect("control");
    }

    async fn records(&self, name: &str) -> Vec<Record> {
        self.http
            .get(format!("{}/_records/{name}", self.base))
            .send()
            .await
            .expect("records")
            .json()
            .await
            .expect("records JSON")
    }

    async fn wait_records(&self, name: &str, n: usize) -> Vec<Record> {
        eventually(WAIT, &format!("{n} requests at {name}"), || async {
            let r = self.records(name).await;
            (r.len() >= n).then_some(r)
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A callback secret the tests sign callbacks with.
const CALLBACK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Fast retries, loopback receivers allowed.
fn config(sys: &TestSystem) -> Config {
    fast(sys.config())
}

/// `c` with fast retries, loopback receivers allowed and a callback secret.
fn fast(mut c: Config) -> Config {
    c.webhooks.allow_private_targets = true;
    c.webhooks.retry_schedule_ms = vec![0, 100, 200, 300, 400, 500, 500, 500];
    c.webhooks.retry_jitter = 0.0;
    c.webhooks.timeout_ms = 2_000;
    c.webhooks.poll_interval_ms = 100;
    c.webhooks.callback_secret = Some(CALLBACK_SECRET.into());
    c
}

fn event(kind: EventType) -> Event {
    Event::new(
        kind,
        &Uuid::new_v4().to_string(),
        chrono::Utc::now(),
        "user:test",
        Some(Uuid::new_v4()),
    )
}

async fn publish(sys: &TestSystem, e: &Event) {
    sys.publisher
        .publish_event(&sys.topology, e)
        .await
        .expect("event published");
}

async fn create(api: &Api, url: &str, events: &[&str]) -> (i64, String) {
    let (status, body) = api
        .post(
            "/api/haproxy/webhooks",
            ADMIN,
            &json!({"url": url, "events": events, "description": "test"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let secret = body["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("whsec_"));
    (body["id"].as_i64().expect("id"), secret)
}

async fn running(sys: &mut TestSystem) -> (Receiver, Api) {
    let receiver = Receiver::start();
    let c = config(sys);
    sys.start_worker(c.clone());
    dispatcher_listening(sys).await;
    let api = Api::start_with(c).await;
    (receiver, api)
}

/// Waits until a dispatcher consumes its queue: the queue is declared by
/// the dispatcher, so an event published before it exists reaches no one.
async fn dispatcher_listening(sys: &TestSystem) {
    eventually(WAIT, "the dispatcher's queue and consumer", || async {
        sys.queue_state(&sys.topology.webhooks_queue)
            .await
            .and_then(|(_, consumers)| (consumers > 0).then_some(()))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_fail_three_times_then_deliver_with_one_id_and_redeliver() {
    let mut sys = TestSystem::start().await;
    let (receiver, api) = running(&mut sys).await;
    let (id, secret) = create(&api, &receiver.url("a"), &["action.*"]).await;
    let (_other, _) = create(&api, &receiver.url("b"), &["batch.*"]).await;
    let wrong = haproxy_control::webhooks::signing::generate_secret().expect("secret");
    receiver
        .script(
            "a",
            &[&secret, &wrong],
            json!([{"status": 500}, {"status": 502}, {"status": 302, "location": "http://example.com/"}]),
        )
        .await;
    let e = event(EventType::ActionSucceeded);
    publish(&sys, &e).await;

    let records = receiver.wait_records("a", 4).await;
    let published = serde_json::to_string(&e).expect("json");
    for r in &records {
        assert_eq!(
            r.webhook_id.as_deref(),
            Some(e.event_id.to_string().as_str())
        );
        assert_eq!(
            r.verified_with,
            vec![0],
            "the right secret verifies, a wrong one does not"
        );
        assert_eq!(r.body, published, "the body is the event as published");
    }
    let (status, page) = api
        .get(&format!("/api/haproxy/webhooks/{id}/deliveries"), ADMIN)
        .await;
    assert_eq!(status, 200, "{page}");
    let delivery = eventually(WAIT, "the delivery to be marked delivered", || async {
        let (_, page) = api
            .get(&format!("/api/haproxy/webhooks/{id}/deliveries"), ADMIN)
            .await;
        let d = page["items"][0].clone();
        (d["status"] == "delivered").then_some(d)
    })
    .await;
    assert_eq!(delivery["attempts"], 4);
    let codes: Vec<Value> = delivery["attempt_log"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| a["status_code"].clone())
        .collect();
    assert_eq!(codes, vec![json!(500), json!(502), json!(302), json!(204)]);
    assert!(
        receiver.records("b").await.is_empty(),
        "nothing to a non-matching endpoint"
    );

    let path = format!(
        "/api/haproxy/webhooks/deliveries/{}/redeliver",
        delivery["id"]
    );
    let (status, _) = api.post(&path, ADMIN, &json!({})).await;
    assert_eq!(status, 202);
    let records = receiver.wait_records("a", 5).await;
    assert_eq!(records[4].webhook_id, records[0].webhook_id);
    assert_eq!(records[4].verified_with, vec![0]);

    assert_error(
        &api.get("/api/haproxy/webhooks", OPERATOR).await,
        403,
        "forbidden",
    );
    let (status, listed) = api.get("/api/haproxy/webhooks", ADMIN).await;
    assert_eq!(
        (status, listed["items"].as_array().map(Vec::len)),
        (200, Some(2))
    );
    api.assert_never_shown(&secret);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_410_disables_the_endpoint_and_publishes_webhook_disabled() {
    let mut sys = TestSystem::start().await;
    let (receiver, api) = running(&mut sys).await;
    let (id, secret) = create(&api, &receiver.url("gone"), &["#"]).await;
    receiver
        .script("gone", &[&secret], json!([{"status": 410}]))
        .await;
    publish(&sys, &event(EventType::ServerStateChanged)).await;
    let disabled = eventually(WAIT, "webhook.disabled", || async {
        sys.events()
            .into_iter()
            .find(|e| e["type"] == "webhook.disabled" && e["webhook_id"] == id)
    })
    .await;
    assert!(
        disabled["error"]
            .as_str()
            .is_some_and(|e| e.contains("410")),
        "{disabled}"
    );
    let (_, endpoint) = api.get(&format!("/api/haproxy/webhooks/{id}"), ADMIN).await;
    assert_eq!(endpoint["active"], false, "{endpoint}");
    // An admin's pause is not a failure: no webhook.disabled, and its own
    // state on the gauge the disabled-endpoint alert watches.
    let (paused, _) = create(&api, &receiver.url("paused"), &["#"]).await;
    let (status, body) = api
        .send(
            reqwest::Method::PATCH,
            &format!("/api/haproxy/webhooks/{paused}"),
            Some(ADMIN),
            Some(&json!({"active": false})),
        )
        .await;
    assert_eq!((status, &body["active"]), (200, &json!(false)), "{body}");
    assert!(body["disabled_at"].is_null(), "{body}");
    let (_, metrics) = api.text("/metrics").await;
    for line in [
        "haproxy_control_webhook_endpoints{state=\"disabled\"} 1",
        "haproxy_control_webhook_endpoints{state=\"paused\"} 1",
        "haproxy_control_webhook_endpoints{state=\"active\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    // Nothing more goes to it, its own webhook.disabled included.
    publish(&sys, &event(EventType::ServerStateChanged)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.records("gone").await.len(), 1);
    assert!(receiver.records("paused").await.is_empty());
    assert!(
        !sys.events()
            .iter()
            .any(|e| e["type"] == "webhook.disabled" && e["webhook_id"] == paused),
        "a pause publishes no webhook.disabled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_after_is_honoured_and_a_rotated_secret_signs_beside_the_old_one() {
    let mut sys = TestSystem::start().await;
    let (receiver, api) = running(&mut sys).await;
    let (id, old) = create(&api, &receiver.url("slow"), &["action.*"]).await;
    let (status, rotated) = api
        .post(
            &format!("/api/haproxy/webhooks/{id}/rotate-secret"),
            ADMIN,
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().expect("new secret").to_owned();
    assert_ne!(new, old);
    receiver
        .script(
            "slow",
            &[&old, &new],
            json!([{"status": 429, "retry_after": "2"}]),
        )
        .await;
    publish(&sys, &event(EventType::ActionFailed)).await;
    let records = receiver.wait_records("slow", 2).await;
    let waited = records[1].received_at - records[0].received_at;
    assert!(waited >= 1.9, "Retry-After: 2 honoured (waited {waited} s)");
    for r in &records {
        assert_eq!(
            r.verified_with,
            vec![0, 1],
            "both secrets verify during the grace"
        );
        assert_eq!(
            r.signature.as_deref().map(|s| s.split(' ').count()),
            Some(2)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn private_and_non_http_targets_are_refused() {
    let sys = TestSystem::start().await;
    let mut c = config(&sys);
    c.webhooks.allow_private_targets = false;
    let api = Api::start_with(c).await;
    seed_inventory(&sys).await;
    for url in [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://10.1.2.3/",
        "http://[::ffff:169.254.169.254]/",
        "ftp://example.com/",
        "file:///etc/passwd",
    ] {
        let answer = api
            .post(
                "/api/haproxy/webhooks",
                ADMIN,
                &json!({"url": url, "events": ["#"]}),
            )
            .await;
        assert_error(&answer, 422, "invalid_url");
    }
    let answer = api
        .post(
            "/api/haproxy/servers/90001/action",
            OPERATOR,
            &json!({"action": "drain", "callback_url": "http://192.168.1.1/cb"}),
        )
        .await;
    assert_error(&answer, 422, "invalid_url");
    let answer = api
        .post(
            "/api/haproxy/webhooks",
            ADMIN,
            &json!({"url": "https://93.184.215.14/", "events": ["action.**"]}),
        )
        .await;
    assert_error(&answer, 422, "invalid_events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callback_urls_receive_the_final_event_of_actions_and_batches() {
    let mut sys = TestSystem::start().await;
    seed_inventory(&sys).await;
    let (receiver, api) = running(&mut sys).await;
    receiver.script("cb", &[CALLBACK_SECRET], json!([])).await;
    // Over the API: the agent of the seeded instance is unreachable, so
    // the action fails; action.failed is its final event.
    let (status, accepted) = api
        .post(
            "/api/haproxy/servers/90001/action",
            OPERATOR,
            &json!({"action": "drain", "callback_url": receiver.url("cb")}),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let by_api = accepted["transaction_id"].as_str().expect("txn").to_owned();
    // Over RabbitMQ.
    let by_queue = Uuid::new_v4();
    sys.publish_action(&json!({
        "transaction_id": by_queue, "action": "maint", "target": {"server_id": 90002},
        "actor": "ac:test", "callback_url": receiver.url("cb")
    }))
    .await;
    // A batch.
    let (status, batch) = api
        .post(
            "/api/haproxy/batch/action",
            OPERATOR,
            &json!({"action": "drain", "targets": {"server_ids": [90003, 90004]},
                    "callback_url": receiver.url("cb")}),
        )
        .await;
    assert_eq!(status, 202, "{batch}");
    let batch_txn = batch["transaction_id"].as_str().expect("txn").to_owned();

    let records = receiver.wait_records("cb", 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let records = if records.len() < 3 {
        receiver.records("cb").await
    } else {
        records
    };
    let bodies: Vec<Value> = records
        .iter()
        .map(|r| {
            assert_eq!(r.verified_with, vec![0], "signed with the callback secret");
            serde_json::from_str(&r.body).expect("event JSON")
        })
        .collect();
    let find = |txn: &str, kind: &str| {
        bodies
            .iter()
            .any(|b| b["transaction_id"] == txn && b["type"] == kind)
    };
    assert!(find(&by_api, "action.failed"), "{bodies:?}");
    assert!(find(&by_queue.to_string(), "action.failed"), "{bodies:?}");
    assert!(find(&batch_txn, "batch.completed"), "{bodies:?}");
    assert_eq!(bodies.len(), 3, "only final events: {bodies:?}");

    // A command whose callback URL is not http(s) is dead-lettered with the reason.
    sys.publish_action(&json!({
        "transaction_id": Uuid::new_v4(), "action": "maint", "target": {"server_id": 90005},
        "actor": "ac:test", "callback_url": "ftp://example.com/"
    }))
    .await;
    let dead = sys.wait_dead_letters(1, WAIT).await;
    assert!(
        dead.iter().any(|d| d.error.contains("callback_url")),
        "{dead:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dispatcher_killed_during_a_burst_of_500_events_loses_none() {
    let sys = TestSystem::start().await;
    let receiver = Receiver::start();
    let c = config(&sys);
    let api = Api::start_with(c.clone()).await;
    let (_, secret_a) = create(&api, &receiver.url("actions"), &["action.*"]).await;
    let (_, secret_s) = create(&api, &receiver.url("servers"), &["server.#"]).await;
    let (_, _) = create(&api, &receiver.url("never"), &["batch.*"]).await;
    receiver.script("actions", &[&secret_a], json!([])).await;
    receiver.script("servers", &[&secret_s], json!([])).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("worker.toml");
    std::fs::write(
        &file,
        "[webhooks]\nallow_private_targets = true\nretry_schedule_ms = [0, 100, 200, 400, 800, 1000, 1000, 1000]\n\
         timeout_ms = 2000\npoll_interval_ms = 100\n",
    )
    .expect("config file");
    let log = dir.path().join("worker.log");
    let mut worker = sys.spawn_process_with_file("worker", &c, &log, &file);
    dispatcher_listening(&sys).await;

    let events: Vec<Event> = (0..500)
        .map(|i| {
            event(if i % 2 == 0 {
                EventType::ActionSucceeded
            } else {
                EventType::ServerStateChanged
            })
        })
        .collect();
    for e in &events[..250] {
        publish(&sys, e).await;
    }
    // Kill it while deliveries are under way.
    eventually(WAIT, "the first deliveries", || async {
        (receiver.records("actions").await.len() >= 20).then_some(())
    })
    .await;
    worker.kill().expect("SIGKILL");
    let _ = worker.wait();
    for e in &events[250..] {
        publish(&sys, e).await;
    }
    // The pending retries and the queued events are taken up by the
    // dispatcher's own subcommand this time (the same queue and tables).
    let mut worker = sys.spawn_process_with_file("webhooks", &c, &log, &file);

    let expect = |kind: &str| -> std::collections::BTreeSet<String> {
        events
            .iter()
            .filter(|e| e.kind.routing_key().starts_with(kind))
            .map(|e| e.event_id.to_string())
            .collect()
    };
    for (name, prefix) in [("actions", "action."), ("servers", "server.")] {
        let wanted = expect(prefix);
        let records = eventually(
            Duration::from_secs(50),
            &format!("every event at {name}"),
            || async {
                let r = receiver.records(name).await;
                let got: std::collections::BTreeSet<String> =
                    r.iter().filter_map(|r| r.webhook_id.clone()).collect();
                (got.is_superset(&wanted)).then_some(r)
            },
        )
        .await;
        for r in &records {
            let id = r.webhook_id.clone().unwrap_or_default();
            assert!(
                wanted.contains(&id),
                "{name} got an event it does not match: {id}"
            );
            assert_eq!(r.verified_with, vec![0]);
        }
        eprintln!(
            "{name}: {} requests for {} events",
            records.len(),
            wanted.len()
        );
    }
    assert!(receiver.records("never").await.is_empty());
    let _ = worker.kill();
    let _ = worker.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_callback_url_receives_its_final_event() {
    // Two servers: a rollout never takes a backend's last one out.
    let mut fleet = crate::rollout::Fleet::without_worker(&["w1", "w2"]).await;
    let receiver = Receiver::start();
    receiver
        .script("rollout", &[CALLBACK_SECRET], json!([]))
        .await;
    let c = fast(fleet.config.clone());
    fleet.sys.start_worker(c.clone());
    dispatcher_listening(&fleet.sys).await;
    let api = Api::start_with(c).await;
    let ids = fleet.ids(&["w1"]).await;
    let (status, answer) = api
        .post(
            "/api/haproxy/rollouts",
            OPERATOR,
            &json!({
                "targets": {"server_ids": ids},
                "wave": {"size": 1},
                "drain": {"timeout_secs": 10, "poll_ms": 100},
                "update": {"kind": "command", "argv": ["/usr/bin/true"], "timeout_secs": 10},
                "health": {"healthy_for_secs": 0, "timeout_secs": 30},
                "callback_url": receiver.url("rollout"),
            }),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["id"].as_i64().expect("rollout id");
    let records = receiver.wait_records("rollout", 1).await;
    let body: Value = serde_json::from_str(&records[0].body).expect("event JSON");
    assert_eq!(
        (&body["type"], &body["rollout_id"]),
        (&json!("rollout.completed"), &json!(id)),
        "{body}"
    );
    assert_eq!(
        records[0].verified_with,
        vec![0],
        "signed with the callback secret"
    );
    // Only the final event: no rollout.server_* progress goes there.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.records("rollout").await.len(), 1);
    api.stop().await;
}
