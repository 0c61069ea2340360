//! Connections sized for a fleet (issue 11, point 6): three worker
//! processes, a scheduler process and the API, each with its default pool,
//! against a PostgreSQL server of the test's own with the default
//! `max_connections` (100), under real work on a real HAProxy: hundreds of
//! actions for hundreds of servers at once, through RabbitMQ and through the
//! API (one by one and as a batch), with syncs every second. Every action
//! succeeds, no role meets a connection error, and the peak of sessions
//! stays under what PostgreSQL lets ordinary users open.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::BigInt;
use futures::future::join_all;
use haproxy_control::config::Config;
use serde_json::json;
use uuid::Uuid;

use crate::harness::api::{Api, OPERATOR};
use crate::harness::{OwnPostgres, SpiedLb, TestSystem, eventually};

const BACKENDS: usize = 10;
const PER_BACKEND: usize = 30;
const SERVERS: usize = BACKENDS * PER_BACKEND;
const WAIT: Duration = Duration::from_secs(60);
/// What a role logs when it could not have a connection.
const CONNECTION_ERRORS: [&str; 5] = [
    "too many clients",
    "connection slots are reserved",
    "database connection pool",
    "cannot connect to postgresql",
    "infrastructure trouble",
];

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn count(conn: &mut PgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<Count>(conn)
        .expect("count")
        .n
}

/// The sessions ordinary users may open: `max_connections` −
/// `superuser_reserved_connections`.
fn connection_limit(url: &str) -> i64 {
    let mut conn = PgConnection::establish(url).expect("connect");
    count(
        &mut conn,
        "SELECT current_setting('max_connections')::bigint \
         - current_setting('superuser_reserved_connections')::bigint AS n",
    )
}

/// Samples `SELECT count(*) FROM pg_stat_activity` every 10 ms on a
/// connection of its own (counted too) and keeps the peak.
struct Sessions {
    peak: Arc<AtomicI64>,
    samples: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Sessions {
    fn sample(url: &str) -> Sessions {
        let mut conn = PgConnection::establish(url).expect("connect the sampler");
        let (peak, samples, stop) = (
            Arc::new(AtomicI64::new(0)),
            Arc::new(AtomicI64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (p, n, s) = (peak.clone(), samples.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(
                    count(&mut conn, "SELECT count(*) AS n FROM pg_stat_activity"),
                    Ordering::Relaxed,
                );
                n.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Sessions {
            peak,
            samples,
            stop,
            thread,
        }
    }

    /// Stops sampling; the peak and the number of samples.
    fn stop(self) -> (i64, i64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        (
            self.peak.load(Ordering::Relaxed),
            self.samples.load(Ordering::Relaxed),
        )
    }
}

/// The worker and scheduler processes, with their logs.
struct Roles {
    children: Vec<(PathBuf, Child)>,
}

impl Roles {
    /// Three workers and a scheduler (syncs every second), with the
    /// defaults of `config`'s pool sizes and prefetch.
    fn start(sys: &TestSystem, config: &Config, logs: &Path) -> Roles {
        let mut children = Vec::new();
        for i in 1..=3 {
            let log = logs.join(format!("worker-{i}.log"));
            children.push((log.clone(), sys.spawn_worker_process(config, &log)));
        }
        let log = logs.join("scheduler.log");
        children.push((log.clone(), sys.spawn_scheduler_process(config, &log)));
        Roles { children }
    }

    /// Stops every process; panics if one had stopped by itself or
    /// logged a connection error.
    fn stop(self) {
        for (log, mut child) in self.children {
            let exited = child.try_wait().expect("try_wait");
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(exited.is_none(), "{} exited early: {text}", log.display());
            let lower = text.to_lowercase();
            for error in CONNECTION_ERRORS {
                assert!(
                    !lower.contains(error),
                    "{}: {error}:\n{text}",
                    log.display()
                );
            }
        }
    }
}

/// The defaults of every pool and of the prefetch, on `sys`.
fn default_sizes(sys: &TestSystem) -> Config {
    let defaults = Config::default();
    let mut config = sys.config();
    config.database.pool_size = defaults.database.pool_size;
    config.worker.prefetch = defaults.worker.prefetch;
    config.api.pool_size = defaults.api.pool_size;
    config.sync.interval_secs = 1;
    config
}

/// Publishes a `drain` of every server `s*` on RabbitMQ, 100 at a time.
async fn drain_all(sys: &TestSystem) {
    let bodies: Vec<serde_json::Value> = (1..=BACKENDS)
        .flat_map(|b| (1..=PER_BACKEND).map(move |s| (b, s)))
        .map(|(b, s)| {
            json!({"transaction_id": Uuid::new_v4(), "action": "drain", "actor": "ac:deploy",
                   "target": {"instance": "lb-1", "backend": format!("b{b}"), "server": format!("s{s}")}})
        })
        .collect();
    for chunk in bodies.chunks(100) {
        join_all(chunk.iter().map(|body| sys.publish_action(body))).await;
    }
}

/// Puts every server `s*` back to `ready` through the API: the first half
/// one request each, the rest as one batch.
async fn ready_all(sys: &TestSystem, api: &Api) {
    let ids: Vec<i64> = sys
        .live_servers()
        .await
        .into_iter()
        .filter(|s| s.name != "spare")
        .map(|s| s.id)
        .collect();
    assert_eq!(ids.len(), SERVERS);
    let (one_by_one, batched) = ids.split_at(SERVERS / 2);
    let batch_body = json!({"action": "ready", "targets": {"server_ids": batched}});
    let ready = json!({"action": "ready"});
    let batch = api.post("/api/haproxy/batch/action", OPERATOR, &batch_body);
    let ready = &ready;
    let singles = join_all(one_by_one.iter().map(|id| async move {
        let path = format!("/api/haproxy/servers/{id}/action");
        api.post(&path, OPERATOR, ready).await
    }));
    let (batch, singles) = tokio::join!(batch, singles);
    assert_eq!(batch.0, 202, "{}", batch.1);
    for (status, body) in singles {
        assert_eq!(status, 202, "{body}");
    }
}

/// Reads through the API (inventory pages) until `stop`, four at a time.
async fn read_until(api: Arc<Api>, instance: i64, stop: Arc<AtomicBool>) -> usize {
    let reader = |api: Arc<Api>, stop: Arc<AtomicBool>| async move {
        let mut reads = 0;
        while !stop.load(Ordering::Relaxed) {
            let backends = api
                .ok(&format!("/api/haproxy/instances/{instance}/backends"))
                .await;
            if let Some(id) = backends["items"][0]["id"].as_i64() {
                api.ok(&format!("/api/haproxy/backends/{id}/servers?limit=500"))
                    .await;
            }
            reads += 1;
        }
        reads
    };
    let readers = (0..4).map(|_| reader(api.clone(), stop.clone()));
    join_all(readers).await.into_iter().sum()
}

/// Waits until `n` actions are recorded and every one is final.
async fn wait_all_final(sys: &TestSystem, n: i64) {
    eventually(WAIT, &format!("{n} actions to finish"), || async {
        let by_status = sys.actions_by_status().await;
        let total: i64 = by_status.values().sum();
        let open = ["pending", "running"]
            .iter()
            .filter_map(|s| by_status.get(*s))
            .sum::<i64>();
        (total >= n && open == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_the_scheduler_and_the_api_fit_under_the_default_max_connections() {
    let pg = OwnPostgres::start();
    let lb = SpiedLb::fleet(BACKENDS, PER_BACKEND).await;
    let sys = TestSystem::start_on(&pg.admin_url).await;
    let instance = sys.register_agent("lb-1", &lb.agent).await;
    let limit = connection_limit(&sys.db.url);
    let sessions = Sessions::sample(&sys.db.url);
    let config = default_sizes(&sys);
    let logs = tempfile::tempdir().expect("tempdir");
    let roles = Roles::start(&sys, &config, logs.path());
    let api = Arc::new(Api::start_configured(config).await);
    let stop_reads = Arc::new(AtomicBool::new(false));
    let reads = tokio::spawn(read_until(api.clone(), instance, stop_reads.clone()));

    let started = Instant::now();
    drain_all(&sys).await;
    let sync = format!("/api/haproxy/instances/{instance}/sync");
    let (status, body) = api.post(&sync, OPERATOR, &json!({})).await;
    assert_eq!(status, 202, "{body}");
    wait_all_final(&sys, SERVERS as i64).await;
    let drained = started.elapsed();
    ready_all(&sys, &api).await;
    wait_all_final(&sys, 2 * SERVERS as i64).await;
    let total = started.elapsed();

    stop_reads.store(true, Ordering::Relaxed);
    let reads = reads.await.expect("readers");
    let (peak, samples) = sessions.stop();
    eprintln!(
        "{} actions in {total:?} ({drained:?} for the drains), {reads} API reads; \
         peak sessions {peak} of {limit} ({samples} samples)",
        2 * SERVERS
    );
    assert!(
        peak < limit,
        "{peak} sessions at the peak: at or over max_connections − superuser_reserved_connections = {limit}"
    );
    roles.stop();
    let by_status = sys.actions_by_status().await;
    assert_eq!(
        by_status.get("success"),
        Some(&(2 * SERVERS as i64)),
        "{by_status:?}"
    );
    assert_eq!(by_status.len(), 1, "{by_status:?}");
    assert_eq!(
        lb.servers_with_bits(0).await,
        SERVERS,
        "every server ready again"
    );
    let runs = sys.sync_runs().await;
    assert!(runs.iter().any(|r| r.status == "success"), "{runs:?}");
    assert!(runs.iter().all(|r| r.status != "failed"), "{runs:?}");
}

#[test]
fn a_worker_refuses_a_pool_too_small_for_it_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_haproxy-control"))
        .args(["worker", "--pool-size", "16"])
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .expect("run the worker");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("database.pool_size (--pool-size, DATABASE_POOL_SIZE) is 16, too small")
            && stderr.contains("so at least 17"),
        "{stderr}"
    );
}
