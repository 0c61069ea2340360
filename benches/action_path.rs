//! Benchmark of the action path: publish → worker → fagent → HAProxy →
//! PostgreSQL → `action.succeeded`, against real services, beside the floor
//! of sending the same `set server` commands straight to the stats socket.
//!
//! Run: `cargo bench --bench action_path` (env: BENCH_ACTIONS=5000,
//! BENCH_RATE=50, BENCH_PACED_ACTIONS=500; BENCH_PREFETCH, BENCH_GROUP_MAX
//! and BENCH_GROUPS_IN_FLIGHT: the worker's defaults when unset). It ends with markdown rows for `docs/benchmarks.md` (date, commit,
//! machine, figures): the runs, and the burst's cost per action — statements
//! (from `pg_stat_statements` when PostgreSQL preloads it), PostgreSQL's
//! CPU time (its processes in `/proc`), the worker's, and agent calls (the
//! worker's own metrics).

// The tests' harness; the bench uses a part of it.
#[path = "../tests/it/harness/mod.rs"]
#[allow(dead_code, unused_imports)]
mod harness;

mod common;
#[path = "common/cost.rs"]
mod cost;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::future::join_all;
use harness::{HttpBackends, TestAgent, TestHaproxy, TestSystem};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

const BACKENDS: usize = 50;
const SERVERS_PER_BACKEND: usize = 100;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn server_name(i: usize) -> (String, String) {
    (format!("b{}", i % BACKENDS), format!("s{}", i / BACKENDS))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let actions = env_usize("BENCH_ACTIONS", 5000).min(BACKENDS * SERVERS_PER_BACKEND);
    let rate = env_usize("BENCH_RATE", 50);
    let paced = env_usize("BENCH_PACED_ACTIONS", 500).min(BACKENDS * SERVERS_PER_BACKEND);
    let defaults = haproxy_control::config::WorkerConfig::default();
    let prefetch = env_usize("BENCH_PREFETCH", usize::from(defaults.prefetch));
    let group_max = env_usize("BENCH_GROUP_MAX", usize::from(defaults.group_max));
    let groups_in_flight = env_usize(
        "BENCH_GROUPS_IN_FLIGHT",
        usize::from(defaults.groups_in_flight),
    );
    // Taken before the run: the commit is the code that was built.
    let run = common::RunInfo::collect();

    let app = HttpBackends::start(&["app"]).await;
    let addr = app.addr("app");
    let mut cfg = String::new();
    for b in 0..BACKENDS {
        cfg.push_str(&format!("backend b{b}\n"));
        for s in 0..SERVERS_PER_BACKEND {
            cfg.push_str(&format!("  server s{s} {addr}\n"));
        }
        // Never drained: rule 10's guard lets every drain of the burst
        // through (without it the last drain of each backend is rejected).
        cfg.push_str(&format!("  server spare {addr}\n"));
    }
    let haproxy = TestHaproxy::start(&cfg).await;

    // Floor: the same number of set server commands straight to the socket,
    // 8 connections at a time like the agent.
    let floor_started = Instant::now();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(8));
    join_all((0..actions).map(|i| {
        let sem = sem.clone();
        let socket = haproxy.socket.clone();
        async move {
            let _p = sem.acquire().await.expect("semaphore");
            let (b, s) = server_name(i);
            let mut c = tokio::net::UnixStream::connect(&socket)
                .await
                .expect("socket");
            c.write_all(format!("set server {b}/{s} state maint\n").as_bytes())
                .await
                .expect("write");
            let mut out = String::new();
            c.read_to_string(&mut out).await.expect("read");
        }
    }))
    .await;
    let floor = floor_started.elapsed();
    for i in 0..actions {
        let (b, s) = server_name(i);
        haproxy
            .cmd(&format!("set server {b}/{s} state ready"))
            .await;
    }

    let agent = TestAgent::start(&haproxy.socket).await;
    let sys = TestSystem::start().await;
    sys.register_agent("bench", &agent).await;
    let mut config = sys.config();
    config.worker.prefetch = u16::try_from(prefetch).unwrap_or(64);
    config.database.pool_size = u32::try_from(prefetch + 8).unwrap_or(72);
    config.worker.group_max = u16::try_from(group_max).unwrap_or(u16::MAX);
    config.worker.groups_in_flight = u16::try_from(groups_in_flight).unwrap_or(u16::MAX);
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    config.metrics.listen = Some(metrics_port);
    let log = tempfile::tempdir().expect("tempdir");
    let mut worker = sys.spawn_worker_process(&config, &log.path().join("worker.log"));
    let probe = cost::Probe::new(&sys.db.url, worker.id(), metrics_port).await;
    // Warm up: one action, so connections and caches are in place.
    let warm = Uuid::new_v4();
    sys.publish_action(
        &json!({"transaction_id": warm, "action": "ready", "actor": "bench",
        "target": {"instance": "bench", "backend": "b0", "server": "s0"}}),
    )
    .await;
    sys.wait_event("action.succeeded", warm, Duration::from_secs(60))
        .await;

    // Throughput: publish everything as fast as possible, each to its own server.
    let before = probe.read().await;
    let txns: Vec<Uuid> = (0..actions).map(|_| Uuid::new_v4()).collect();
    let mut published: HashMap<Uuid, Instant> = HashMap::new();
    let started = Instant::now();
    // Published 100 at a time (each waits for its confirm).
    let bodies: Vec<(Uuid, serde_json::Value)> = txns
        .iter()
        .enumerate()
        .map(|(i, txn)| {
            let (b, s) = server_name(i);
            (
                *txn,
                json!({"transaction_id": txn, "action": "drain", "actor": "bench",
                "target": {"instance": "bench", "backend": b, "server": s}}),
            )
        })
        .collect();
    for chunk in bodies.chunks(100) {
        for (txn, _) in chunk {
            published.insert(*txn, Instant::now());
        }
        join_all(chunk.iter().map(|(_, body)| sys.publish_action(body))).await;
    }
    let publish_time = started.elapsed();
    let done = wait_all(&sys, &txns, Duration::from_secs(600)).await;
    let total = done
        .values()
        .max()
        .map(|t| t.duration_since(started))
        .unwrap_or_default();
    let mut lat: Vec<Duration> = txns
        .iter()
        .filter_map(|t| Some(done.get(t)?.duration_since(*published.get(t)?)))
        .collect();
    lat.sort();
    let burst_cost = probe.read().await.since(&before, done.len());

    // Latency at a steady rate: servers go back to ready, one every 1/rate s.
    let paced_txns: Vec<Uuid> = (0..paced).map(|_| Uuid::new_v4()).collect();
    let mut paced_published: HashMap<Uuid, Instant> = HashMap::new();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut tick = tokio::time::interval(interval);
    for (i, txn) in paced_txns.iter().enumerate() {
        tick.tick().await;
        let (b, s) = server_name(i);
        paced_published.insert(*txn, Instant::now());
        sys.publish_action(
            &json!({"transaction_id": txn, "action": "ready", "actor": "bench",
            "target": {"instance": "bench", "backend": b, "server": s}}),
        )
        .await;
    }
    let paced_done = wait_all(&sys, &paced_txns, Duration::from_secs(120)).await;
    let mut paced_lat: Vec<Duration> = paced_txns
        .iter()
        .filter_map(|t| Some(paced_done.get(t)?.duration_since(*paced_published.get(t)?)))
        .collect();
    paced_lat.sort();
    let _ = worker.kill();
    let _ = worker.wait();
    let ratio = (actions as f64 / total.as_secs_f64()) / (actions as f64 / floor.as_secs_f64());

    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    println!(
        "servers: {} ({} backends x {}), worker prefetch {prefetch}",
        BACKENDS * SERVERS_PER_BACKEND,
        BACKENDS,
        SERVERS_PER_BACKEND
    );
    // Each figure formatted once, for the log lines and the markdown row.
    let floor_figure = format!(
        "{} ({:.0}/s)",
        ms(floor),
        actions as f64 / floor.as_secs_f64()
    );
    let throughput = format!("{:.0} actions/s", actions as f64 / total.as_secs_f64());
    let burst_latency = format!(
        "p50 {}, p99 {}",
        ms(percentile(&lat, 50.0)),
        ms(percentile(&lat, 99.0))
    );
    let paced_latency = format!(
        "p50 {}, p99 {}, max {}",
        ms(percentile(&paced_lat, 50.0)),
        ms(percentile(&paced_lat, 99.0)),
        ms(paced_lat.last().copied().unwrap_or_default())
    );
    println!("floor: {actions} set server commands straight to the socket in {floor_figure}");
    println!(
        "burst: {actions} actions published in {}, all succeeded after {} => {throughput}; publish->action.succeeded {burst_latency}",
        ms(publish_time),
        ms(total),
    );
    println!("paced: {paced} actions at {rate}/s: publish->action.succeeded {paced_latency}");
    println!("burst / floor: {ratio:.3}; burst cost per action: {burst_cost}");

    let succeeded = |n: usize, of: usize| {
        if n < of {
            format!(" (only {n} of {of} succeeded)")
        } else {
            String::new()
        }
    };
    let knobs = format!(
        "`BENCH_ACTIONS={actions} BENCH_RATE={rate} BENCH_PACED_ACTIONS={paced} BENCH_PREFETCH={prefetch} BENCH_GROUP_MAX={group_max} BENCH_GROUPS_IN_FLIGHT={groups_in_flight}`, sslmode {}",
        sslmode()
    );
    let row = run.row(&[
        knobs.clone(),
        floor_figure,
        format!("{throughput}{}", succeeded(done.len(), actions)),
        format!("{ratio:.3}"),
        burst_latency,
        format!("{paced_latency}{}", succeeded(paced_done.len(), paced)),
    ]);
    common::print_rows("Action path: runs with the ratio", &[row]);
    common::print_rows(
        "Action path: cost per action",
        &[run.row(&[vec![knobs], burst_cost.cells()].concat())],
    );
}

/// The `sslmode` the bench's database connections ask for: the one in
/// `TEST_DATABASE_ADMIN_URL`, else libpq's default `prefer` (TLS on loopback
/// too). The URL itself is not printed: it may hold a password.
fn sslmode() -> String {
    std::env::var("TEST_DATABASE_ADMIN_URL")
        .ok()
        .and_then(|url| {
            let (_, query) = url.split_once('?')?;
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix("sslmode=").map(str::to_owned))
        })
        .unwrap_or_else(|| "prefer".into())
}

/// Waits for the final event of every transaction; returns when each
/// `action.succeeded` arrived (another final event is reported, not timed).
async fn wait_all(sys: &TestSystem, txns: &[Uuid], within: Duration) -> HashMap<Uuid, Instant> {
    let wanted: std::collections::HashSet<Uuid> = txns.iter().copied().collect();
    let deadline = Instant::now() + within;
    let mut seen = HashMap::new();
    let mut other: HashMap<Uuid, String> = HashMap::new();
    let mut read = 0;
    loop {
        let fresh = sys.timed_events_since(read);
        read += fresh.len();
        for (at, e) in fresh {
            let Some(Ok(id)) = e["transaction_id"].as_str().map(Uuid::parse_str) else {
                continue;
            };
            if !wanted.contains(&id) {
                continue;
            }
            match e["type"].as_str() {
                Some("action.succeeded") => {
                    seen.entry(id).or_insert(at);
                }
                Some(kind @ ("action.failed" | "action.rejected" | "action.superseded")) => {
                    other.entry(id).or_insert_with(|| kind.to_owned());
                }
                _ => {}
            }
        }
        if seen.len() + other.len() >= txns.len() || Instant::now() > deadline {
            if seen.len() < txns.len() {
                let mut kinds: HashMap<&str, usize> = HashMap::new();
                for kind in other.values() {
                    *kinds.entry(kind).or_default() += 1;
                }
                eprintln!(
                    "only {} of {} actions succeeded (others: {kinds:?}; the rest had no final event in time)",
                    seen.len(),
                    txns.len()
                );
            }
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
