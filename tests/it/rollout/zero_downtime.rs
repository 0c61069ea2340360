//! Proof 1 of issue 12: six application servers in two backends are
//! updated v1 → v2 by the Ansible hook, wave size 1, while a load generator
//! sends requests through HAProxy's frontend the whole time: not one fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;

use super::{API, Fleet, WEB};
use crate::harness::rows::Change;

/// Sends requests through the frontend at about 80 per second until
/// `stop`: alternately on fresh connections and on a keep-alive client, to
/// both backends. Counts successes and failures (connection error or a
/// status other than 2xx), keeping the first failures' descriptions.
async fn load(
    frontend: String,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
) {
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let kept = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut tick = tokio::time::interval(Duration::from_millis(12));
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        n += 1;
        let client = if n.is_multiple_of(2) { &fresh } else { &kept };
        let path = if n % 4 < 2 { "/" } else { "/?be=api" };
        match client.get(format!("{frontend}{path}")).send().await {
            Ok(r) if r.status().is_success() => {
                ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => failed
                .lock()
                .expect("lock")
                .push(format!("{path}: status {}", r.status())),
            Err(e) => failed.lock().expect("lock").push(format!("{path}: {e}")),
        }
    }
}

/// Samples HAProxy's socket every 100 ms: the most servers of one backend
/// out of `ready` at once.
async fn sample_out(fleet: &Fleet, stop: Arc<AtomicBool>) -> usize {
    let mut worst = 0;
    while !stop.load(Ordering::Relaxed) {
        let bits = fleet.haproxy.admin_bits().await;
        for backend in ["web/", "api/"] {
            let out = bits
                .iter()
                .filter(|(n, b)| n.starts_with(backend) && *b != 0)
                .count();
            worst = worst.max(out);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worst
}

#[tokio::test]
async fn six_servers_are_updated_in_waves_of_one_and_no_request_fails() {
    let names: Vec<&str> = WEB.iter().chain(API.iter()).copied().collect();
    let fleet = Fleet::start(&names).await;
    let ids = fleet.ids(&names).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let generator = tokio::spawn(load(
        fleet.frontend.clone(),
        stop.clone(),
        ok.clone(),
        failed.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let id = fleet
        .start_rollout(&json!({
            "targets": {"server_ids": ids},
            "wave": {"size": 1, "max_unavailable_per_backend": 1},
            "drain": {"timeout_secs": 30},
            "update": fleet.ansible("v2"),
            "health": {"healthy_for_secs": 1, "timeout_secs": 60},
            "reason": "v2",
        }))
        .await;
    let sampling = async {
        let done = fleet.wait_status(id, "completed", Duration::from_secs(240));
        let sample = sample_out(&fleet, stop.clone());
        tokio::pin!(sample);
        tokio::select! {
            r = done => { stop.store(true, Ordering::Relaxed); (r, sample.await) }
            worst = &mut sample => panic!("sampling ended first ({worst})"),
        }
    };
    let (rollout, worst_out) = sampling.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    generator.await.expect("load generator");

    let failures = failed.lock().expect("lock").clone();
    let served = ok.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, the first: {:?}",
        failures.len(),
        served + failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(served > 500, "the load ran: {served} requests");
    assert_eq!(worst_out, 1, "at most one server of a backend out at once");
    for s in rollout["servers"].as_array().expect("servers") {
        assert_eq!(s["step"], "ready", "{s}");
        assert_eq!(s["hook_exit_code"], 0, "{s}");
    }
    for n in &names {
        assert_eq!(
            fleet.apps.served_version(n).await.as_deref(),
            Some("v2"),
            "{n}"
        );
        assert_eq!(fleet.apps.runs(n), 1, "{n}: one hook run");
    }
    let bits = fleet.haproxy.admin_bits().await;
    assert!(bits.iter().all(|(_, b)| *b == 0), "all ready: {bits:?}");
    // Each server's history: drain, maint, drain (checks back on for the
    // health gate), ready, all by the rollout's actor.
    for (n, server) in names.iter().zip(&ids) {
        let steps: Vec<(String, String)> = fleet
            .sys
            .history(*server)
            .await
            .into_iter()
            .filter(|c: &Change| c.source == "action")
            .map(|c| (c.actor, c.to))
            .collect();
        let tos: Vec<&str> = steps.iter().map(|(_, to)| to.as_str()).collect();
        assert_eq!(tos, ["drain", "maint", "drain", "ready"], "{n}: {steps:?}");
        let actors: std::collections::BTreeSet<&str> =
            steps.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(actors.len(), 1, "{n}: one actor, the rollout's: {steps:?}");
        assert_eq!(
            actors.iter().next().copied(),
            rollout["actor"].as_str(),
            "{n}"
        );
    }
    let kinds: Vec<String> = fleet
        .sys
        .events()
        .iter()
        .filter_map(|e| e["type"].as_str().map(str::to_owned))
        .filter(|t| t.starts_with("rollout."))
        .collect();
    for k in [
        "rollout.started",
        "rollout.server_drained",
        "rollout.server_updated",
        "rollout.server_ready",
        "rollout.wave_completed",
        "rollout.completed",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} in {kinds:?}");
    }
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "rollout.server_ready")
            .count(),
        6
    );
}
