//! Every process can be watched: the worker and the scheduler with
//! `--metrics-listen`, the API on its listener. `promtool check metrics`
//! accepts each scrape, and a real Prometheus server scrapes all three,
//! loads the alert rules and answers a query for the action counter.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::api::Api;
use crate::harness::{SpiedLb, eventually, free_port};

const WAIT: Duration = Duration::from_secs(30);

/// A child process killed (and reaped) when the test ends, passed or not.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

async fn get(http: &reqwest::Client, url: &str) -> Option<(u16, String)> {
    let r = http.get(url).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

/// `promtool check metrics` on a scrape: exit 0 and no lint finding.
fn promtool_check_metrics(what: &str, text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian package prometheus)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("scrape to promtool");
    let out = child.wait_with_output().expect("promtool ends");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics on the {what} scrape: {report}\n{text}"
    );
}

fn prometheus_config(dir: &Path, targets: &[(&str, SocketAddr)]) -> std::path::PathBuf {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml");
    let mut yaml = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n",
        rules.display()
    );
    for (job, addr) in targets {
        yaml.push_str(&format!(
            "  - job_name: {job}\n    static_configs:\n      - targets: [\"{addr}\"]\n"
        ));
    }
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, yaml).expect("prometheus.yml");
    path
}

/// `application/x-www-form-urlencoded` of one value.
fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The result vector of an instant query.
async fn query(http: &reqwest::Client, prometheus: SocketAddr, q: &str) -> Vec<Value> {
    let Ok(r) = http
        .post(format!("http://{prometheus}/api/v1/query"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("query={}", form_encode(q)))
        .send()
        .await
    else {
        return Vec::new();
    };
    let body: Value = r.json().await.unwrap_or(Value::Null);
    body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn worker_scheduler_and_api_are_scraped_clean_and_by_a_real_prometheus() {
    let registered = SpiedLb::web_of_two().await.registered().await;
    let (sys, lb) = (&registered.sys, &registered.lb);
    let dir = tempfile::tempdir().expect("tempdir");
    let (worker_addr, scheduler_addr) = (loopback(), loopback());

    let mut config = sys.config();
    config.metrics.listen = Some(worker_addr);
    let _worker = Killed(sys.spawn_worker_process(&config, &dir.path().join("worker.log")));
    config.metrics.listen = Some(scheduler_addr);
    config.sync.interval_secs = 1;
    let _scheduler =
        Killed(sys.spawn_scheduler_process(&config, &dir.path().join("scheduler.log")));
    let api = Api::start(sys).await;
    let api_addr: SocketAddr = api
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("the API's address");
    let http = reqwest::Client::new();

    // Ready, both: PostgreSQL answers and the broker is connected.
    for addr in [worker_addr, scheduler_addr] {
        let (status, body) = eventually(WAIT, "readyz of a role", || {
            let url = format!("http://{addr}/readyz");
            let http = http.clone();
            async move { get(&http, &url).await.filter(|(s, _)| *s == 200) }
        })
        .await;
        assert!(body.contains("\"ready\""), "{status} {body}");
        let (status, _) = get(&http, &format!("http://{addr}/healthz"))
            .await
            .expect("healthz");
        assert_eq!(status, 200);
    }

    // One drain through the worker process.
    let txn = Uuid::new_v4();
    sys.publish_action(&json!({
        "transaction_id": txn,
        "action": "drain",
        "target": {"instance": "lb-1", "backend": "web", "server": "web1_shop_1"},
        "actor": "user:alice",
    }))
    .await;
    let row = sys.wait_final(txn, WAIT).await;
    assert_eq!(row.status.to_string(), "success");
    assert_eq!(lb.web_bits("web1_shop_1").await, 8, "drained at HAProxy");

    let worker_text = eventually(WAIT, "the action counted by the worker", || {
        let url = format!("http://{worker_addr}/metrics");
        let http = http.clone();
        async move {
            get(&http, &url).await.map(|(_, t)| t).filter(|t| {
                t.lines().any(|l| {
                    l == "haproxy_control_actions_total{action=\"drain\",status=\"success\"} 1"
                })
            })
        }
    })
    .await;
    for name in [
        "haproxy_control_agent_calls_total{operation=\"set_state\",result=\"ok\"} 1",
        "haproxy_control_events_published_total{type=\"action.succeeded\"} 1",
        "haproxy_control_action_duration_seconds_count 1",
    ] {
        assert!(
            worker_text.lines().any(|l| l == name),
            "{name} missing:\n{worker_text}"
        );
    }
    let scheduler_text = eventually(WAIT, "the scheduler's metrics", || {
        let url = format!("http://{scheduler_addr}/metrics");
        let http = http.clone();
        async move { get(&http, &url).await.map(|(_, t)| t) }
    })
    .await;
    let (status, api_text) = api.text("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        api_text.contains("haproxy_control_breaker_open{instance=\"lb-1\"} 0"),
        "{api_text}"
    );
    for (what, text) in [
        ("worker", &worker_text),
        ("scheduler", &scheduler_text),
        ("api", &api_text),
    ] {
        promtool_check_metrics(what, text);
    }

    // A real Prometheus scrapes the three and evaluates the alert rules.
    let prometheus_addr = loopback();
    let config_file = prometheus_config(
        dir.path(),
        &[
            ("haproxy-control-worker", worker_addr),
            ("haproxy-control-scheduler", scheduler_addr),
            ("haproxy-control-api", api_addr),
        ],
    );
    let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prometheus_addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus runs (Debian package prometheus)"),
    );
    let up = eventually(Duration::from_secs(60), "all three targets up", || {
        let http = http.clone();
        async move {
            let up = query(&http, prometheus_addr, "up == 1").await;
            (up.len() == 3).then_some(up)
        }
    })
    .await;
    let mut jobs: Vec<&str> = up
        .iter()
        .filter_map(|s| s["metric"]["job"].as_str())
        .collect();
    jobs.sort_unstable();
    assert_eq!(
        jobs,
        [
            "haproxy-control-api",
            "haproxy-control-scheduler",
            "haproxy-control-worker"
        ]
    );
    let counted = eventually(WAIT, "Prometheus to answer for the action counter", || {
        let http = http.clone();
        async move {
            let r = query(
                &http,
                prometheus_addr,
                "sum(haproxy_control_actions_total{action=\"drain\",status=\"success\"})",
            )
            .await;
            r.first()
                .and_then(|s| s["value"][1].as_str().map(str::to_owned))
        }
    })
    .await;
    assert_eq!(counted, "1");

    // The rules loaded and evaluate without error against these targets.
    let rules: Value = http
        .get(format!("http://{prometheus_addr}/api/v1/rules"))
        .send()
        .await
        .expect("rules")
        .json()
        .await
        .expect("rules JSON");
    let loaded: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(loaded.len(), 8, "{rules}");
    for rule in loaded {
        assert_ne!(rule["health"], "err", "{rule}");
    }
    api.stop().await;
}
