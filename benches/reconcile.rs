//! Benchmark of the sync's reconcile against PostgreSQL: load an instance's
//! rows, diff in pure code, apply in one transaction — for 1,000, 10,000 and
//! 50,000 servers, all new / no change / 1 % changed; and the worker's CPU
//! for a fleet of 100 instances × 1,000 servers synced once a minute.
//!
//! Run: `cargo bench --bench reconcile` (BENCH_SIZES=1000,10000,50000). It
//! ends with markdown rows for `docs/benchmarks.md` (date, commit, machine,
//! figures).

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use haproxy_control::db::{self, testing::TestDatabase};
use haproxy_control::domain::mapping::NameTemplate;
use haproxy_control::domain::snapshot::{BackendSnapshot, ServerSnapshot};
use haproxy_control::domain::{AdminState, OpState};
use haproxy_control::fagent::wire::Backends;
use haproxy_control::worker::agent_listing::{Reconciled, reconcile_listing};

const SERVERS_PER_BACKEND: usize = 100;

fn listing(n: usize, changed_every: Option<usize>) -> Backends {
    let backends = (0..n.div_ceil(SERVERS_PER_BACKEND))
        .map(|b| BackendSnapshot {
            name: format!("b{b}"),
            servers: (0..SERVERS_PER_BACKEND.min(n - b * SERVERS_PER_BACKEND))
                .map(|s| {
                    let i = b * SERVERS_PER_BACKEND + s;
                    let changed = changed_every.is_some_and(|k| i.is_multiple_of(k));
                    ServerSnapshot {
                        name: format!("web{i}_app_{s}"),
                        address: format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
                        port: Some(8080),
                        admin_state: if changed {
                            AdminState::Drain
                        } else {
                            AdminState::Ready
                        },
                        op_state: OpState::Up,
                        weight: 1,
                        current_sessions: 0,
                        check_status: Some("L7OK".into()),
                    }
                })
                .collect(),
        })
        .collect();
    Backends {
        fetched_at: Utc::now(),
        backends,
        haproxy_process: None,
    }
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(") ")
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

async fn instance(pool: &db::PgPool, name: &str) -> db::instances::InstanceRow {
    let new = db::instances::NewInstance {
        server_id: None,
        name: name.into(),
        fagent_url: "http://127.0.0.1:1".into(),
        fagent_token_ref: "token:x".into(),
        is_active: true,
    };
    db::run(pool, move |c| db::instances::upsert(c, &new))
        .await
        .expect("instance")
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "1000,10000,50000".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let template = NameTemplate::parse("{hostname}_{app_name}_{instance}").expect("template");
    let database = TestDatabase::create().expect("database");
    let pool = database.pool(4).expect("pool");

    // Taken before the run: the commit is the code that was built.
    let run = common::RunInfo::collect();
    println!("servers | all new | no change | 1 % changed (state changes)");
    let mut rows = Vec::new();
    for &n in &sizes {
        let inst = instance(&pool, &format!("lb-{n}")).await;
        let t = Instant::now();
        reconcile(&pool, &inst, listing(n, None), &template)
            .await
            .expect("all new");
        let new = t.elapsed();
        // Warm: one no-change pass, then the measured one.
        reconcile(&pool, &inst, listing(n, None), &template)
            .await
            .expect("warm");
        let t = Instant::now();
        let r = reconcile(&pool, &inst, listing(n, None), &template)
            .await
            .expect("no change");
        let unchanged = t.elapsed();
        assert_eq!(r.counts["unchanged"], serde_json::json!(n));
        let t = Instant::now();
        let r = reconcile(&pool, &inst, listing(n, Some(100)), &template)
            .await
            .expect("1 %");
        let one_pct = t.elapsed();
        println!(
            "{n:>7} | {} | {} | {} ({})",
            ms(new),
            ms(unchanged),
            ms(one_pct),
            r.counts["state_changes"]
        );
        rows.push(run.row(&[
            n.to_string(),
            ms(new),
            ms(unchanged),
            format!("{} ({})", ms(one_pct), r.counts["state_changes"]),
        ]));
    }

    // Fleet cost: one 1,000-server no-change sync as the worker does it —
    // JSON from the agent deserialised, then reconciled — repeated, CPU measured.
    let inst = instance(&pool, "fleet").await;
    let body = serde_json::to_vec(&listing(1000, None)).expect("json");
    reconcile(&pool, &inst, listing(1000, None), &template)
        .await
        .expect("seed");
    let rounds = 200;
    let (cpu0, t) = (cpu_seconds(), Instant::now());
    for _ in 0..rounds {
        let parsed: Backends = serde_json::from_slice(&body).expect("parse");
        reconcile(&pool, &inst, parsed, &template)
            .await
            .expect("sync");
    }
    let wall = t.elapsed();
    let cpu = cpu_seconds() - cpu0;
    let per_sync = cpu / f64::from(rounds);
    println!(
        "fleet: {rounds} no-change syncs of 1,000 servers took {} wall, {:.2} s worker CPU => {:.1} ms CPU per sync; \
         100 instances once a minute => {:.2} % of one core",
        ms(wall),
        cpu,
        per_sync * 1000.0,
        per_sync * 100.0 / 60.0 * 100.0
    );
    common::print_rows("Reconcile: runs", &rows);
    common::print_rows(
        "Reconcile: fleet cost",
        &[run.row(&[
            format!("{rounds} no-change syncs of 1,000 servers"),
            format!("{cpu:.2} s ({:.1} ms per sync)", per_sync * 1000.0),
            ms(wall / rounds),
            format!("{:.2} % of one core", per_sync * 100.0 / 60.0 * 100.0),
        ])],
    );
}

/// One reconcile of `listing`, the snapshot taken now (the bench's own
/// machine is the database's, so its clock serves as the database's).
async fn reconcile(
    pool: &db::PgPool,
    inst: &db::instances::InstanceRow,
    listing: Backends,
    template: &NameTemplate,
) -> Result<Reconciled, db::DbError> {
    reconcile_listing(pool, inst, listing, Utc::now(), template).await
}
