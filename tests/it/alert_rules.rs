//! The alert rules in `deploy/prometheus/`: valid and unit-tested with the
//! real `promtool`, naming only metrics that `/metrics` serves, and linking
//! to runbooks that exist.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::SpiedLb;
use crate::harness::api::Api;
use crate::harness::lb::Registered;

fn prometheus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `promtool` (Debian package `prometheus`) in `deploy/prometheus`.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(prometheus_dir())
        .output()
        .expect("promtool runs (deploy/ensure-deps.sh installs the Debian package prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    assert!(checked.contains("SUCCESS: 8 rules found"), "{checked}");
    promtool(&["test", "rules", "alerts.test.yml"]);
    promtool(&["check", "config", "prometheus.yml"]);
}

/// Every alert of alerts.yml has at least one test case in alerts.test.yml.
#[test]
fn every_alert_has_a_unit_test() {
    let rules = read(&prometheus_dir().join("alerts.yml"));
    let tests = read(&prometheus_dir().join("alerts.test.yml"));
    let alerts = values_of(&rules, "- alert:");
    assert_eq!(alerts.len(), 8, "{alerts:?}");
    let tested = values_of(&tests, "alertname:");
    for alert in &alerts {
        assert!(
            tested.contains(alert),
            "{alert} has no test in alerts.test.yml"
        );
    }
}

/// The values after `key` on each line that has it.
fn values_of(text: &str, key: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(key))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .collect()
}

/// The `haproxy_control_*` names in the rules and the other series they
/// select (only Prometheus' own `up`).
fn metric_names(rules: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in rules.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut rest = line;
        while let Some(at) = rest.find("haproxy_control_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    names
}

#[tokio::test]
async fn every_metric_the_rules_name_is_served_by_metrics() {
    // An in-process worker counts into this process's registry, which the
    // in-process API serves with its database gauges.
    // `lb` is bound: a `..` would drop the agent and HAProxy at once.
    let Registered { sys, lb: _lb, .. } = SpiedLb::web_of_two().await.with_worker().await;
    let txn = uuid::Uuid::new_v4();
    sys.publish_action(&serde_json::json!({
        "transaction_id": txn,
        "action": "drain",
        "target": {"instance": "lb-1", "backend": "web", "server": "web1_shop_1"},
        "actor": "user:alice",
    }))
    .await;
    let row = sys
        .wait_final(txn, std::time::Duration::from_secs(30))
        .await;
    assert_eq!(row.status, "success", "{row:?}");
    let api = Api::start(&sys).await;
    let (status, text) = api.text("/metrics").await;
    assert_eq!(status, 200);
    let served: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();

    let rules = read(&prometheus_dir().join("alerts.yml"));
    let names = metric_names(&rules);
    assert!(names.len() >= 7, "{names:?}");
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !served.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "alerts.yml names metrics /metrics does not serve: {missing:?}\n{text}"
    );
    // The label values the rules select on are served too.
    for series in [
        "haproxy_control_rollouts{status=\"halted\"}",
        "haproxy_control_webhook_endpoints{state=\"disabled\"}",
        "haproxy_control_actions_total{action=\"drain\",status=\"success\"}",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(series)),
            "{series} missing in:\n{text}"
        );
    }
    api.stop().await;
}

/// GitHub's anchor of a heading: lower case, spaces to `-`, other
/// punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_runbook_link_points_at_a_section_of_operations_md() {
    let rules = read(&prometheus_dir().join("alerts.yml"));
    let docs = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"));
    let anchors: BTreeSet<String> = docs
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| anchor(h.trim_start_matches('#')))
        .collect();
    let links = values_of(&rules, "runbook_url:");
    assert_eq!(links.len(), 8, "{links:?}");
    for link in links {
        let target = link
            .strip_prefix("docs/operations.md#")
            .unwrap_or_else(|| panic!("{link} is not a link into docs/operations.md"));
        assert!(
            anchors.contains(target),
            "no section #{target} in docs/operations.md"
        );
    }
    for key in ["summary:", "description:"] {
        let with_it = rules.lines().filter(|l| l.trim().starts_with(key)).count();
        assert_eq!(with_it, 8, "every alert needs a {key}");
    }
}
