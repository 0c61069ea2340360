//! What one burst of the action path costs per action, read around it:
//! statements (`pg_stat_statements`, when PostgreSQL preloads it), the CPU
//! time of PostgreSQL's processes and of the worker (from `/proc`, so the
//! machine should run nothing else), and the worker's agent calls (its own
//! `haproxy_control_agent_calls_total` of `set_state` and `set_states`).

use std::net::SocketAddr;

use diesel::prelude::*;

/// Where the readings come from.
pub struct Probe {
    db_url: String,
    worker_pid: u32,
    metrics: SocketAddr,
    /// `pg_stat_statements` can be read in the bench's database.
    statements: bool,
    ticks_per_sec: f64,
    http: reqwest::Client,
}

/// One reading.
pub struct Reading {
    /// Milliseconds per clock tick.
    tick_ms: f64,
    statements: Option<i64>,
    postgres_ticks: u64,
    worker_ticks: u64,
    /// The rest of the machine, for "where the time goes": HAProxy,
    /// RabbitMQ (`beam.smp`), and this process (the fagent, the publisher
    /// and the event capture).
    haproxy_ticks: u64,
    rabbitmq_ticks: u64,
    bench_ticks: u64,
    agent_calls: f64,
}

/// Per action, between two readings.
pub struct Cost {
    statements: Option<f64>,
    postgres_cpu_ms: f64,
    worker_cpu_ms: f64,
    haproxy_cpu_ms: f64,
    rabbitmq_cpu_ms: f64,
    bench_cpu_ms: f64,
    agent_calls: f64,
}

#[derive(QueryableByName)]
struct Calls {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

const STATEMENTS: &str = "SELECT coalesce(sum(calls), 0)::bigint AS n FROM pg_stat_statements \
     WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())";

impl Probe {
    pub async fn new(db_url: &str, worker_pid: u32, metrics: SocketAddr) -> Self {
        let url = db_url.to_owned();
        let statements = tokio::task::spawn_blocking(move || {
            let mut conn = PgConnection::establish(&url).ok()?;
            diesel::sql_query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .execute(&mut conn)
                .ok()?;
            diesel::sql_query(STATEMENTS)
                .get_result::<Calls>(&mut conn)
                .ok()
        })
        .await
        .ok()
        .flatten()
        .is_some();
        if !statements {
            eprintln!(
                "pg_stat_statements cannot be read (not in shared_preload_libraries): no statement counts"
            );
        }
        let ticks_per_sec = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0);
        Self {
            db_url: db_url.to_owned(),
            worker_pid,
            metrics,
            statements,
            ticks_per_sec,
            http: reqwest::Client::new(),
        }
    }

    pub async fn read(&self) -> Reading {
        let statements = if self.statements {
            let url = self.db_url.clone();
            tokio::task::spawn_blocking(move || {
                let mut conn = PgConnection::establish(&url).ok()?;
                Some(
                    diesel::sql_query(STATEMENTS)
                        .get_result::<Calls>(&mut conn)
                        .ok()?
                        .n,
                )
            })
            .await
            .ok()
            .flatten()
        } else {
            None
        };
        Reading {
            tick_ms: 1000.0 / self.ticks_per_sec,
            statements,
            postgres_ticks: ticks_of("postgres"),
            worker_ticks: process_ticks(self.worker_pid).unwrap_or(0),
            haproxy_ticks: ticks_of("haproxy"),
            rabbitmq_ticks: ticks_of("beam.smp"),
            bench_ticks: process_ticks(std::process::id()).unwrap_or(0),
            agent_calls: self.agent_calls().await,
        }
    }

    async fn agent_calls(&self) -> f64 {
        let url = format!("http://{}/metrics", self.metrics);
        let Ok(text) = self
            .http
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
        else {
            return f64::NAN;
        };
        let text = text.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with("haproxy_control_agent_calls_total{"))
            .filter(|l| {
                l.contains("operation=\"set_state\"") || l.contains("operation=\"set_states\"")
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }
}

impl Reading {
    /// The cost of each of `actions` actions between `before` and this reading.
    pub fn since(&self, before: &Reading, actions: usize) -> Cost {
        let n = actions.max(1) as f64;
        let ms = |after: u64, before: u64| after.saturating_sub(before) as f64 * self.tick_ms / n;
        Cost {
            statements: self
                .statements
                .zip(before.statements)
                .map(|(a, b)| (a - b) as f64 / n),
            postgres_cpu_ms: ms(self.postgres_ticks, before.postgres_ticks),
            worker_cpu_ms: ms(self.worker_ticks, before.worker_ticks),
            haproxy_cpu_ms: ms(self.haproxy_ticks, before.haproxy_ticks),
            rabbitmq_cpu_ms: ms(self.rabbitmq_ticks, before.rabbitmq_ticks),
            bench_cpu_ms: ms(self.bench_ticks, before.bench_ticks),
            agent_calls: (self.agent_calls - before.agent_calls) / n,
        }
    }
}

impl Cost {
    /// Table cells: statements, PostgreSQL CPU, worker CPU, agent calls.
    pub fn cells(&self) -> Vec<String> {
        vec![
            self.statements
                .map_or_else(|| "n/a".into(), |s| format!("{s:.2}")),
            format!("{:.3} ms", self.postgres_cpu_ms),
            format!("{:.3} ms", self.worker_cpu_ms),
            format!("{:.3}", self.agent_calls),
        ]
    }
}

impl std::fmt::Display for Cost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [statements, postgres, worker, calls] = <[String; 4]>::try_from(self.cells())
            .unwrap_or_else(|_| std::array::from_fn(|_| String::new()));
        write!(
            f,
            "{statements} statements, PostgreSQL CPU {postgres}, worker CPU {worker}, {calls} agent calls; \
             CPU elsewhere: HAProxy {:.3} ms, RabbitMQ {:.3} ms, bench process (fagent, publisher, capture) {:.3} ms",
            self.haproxy_cpu_ms, self.rabbitmq_cpu_ms, self.bench_cpu_ms
        )
    }
}

/// CPU time (user + system, in clock ticks) of every process named `comm`
/// (for `postgres`: the server and its backends).
fn ticks_of(name: &str) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == name)
        })
        .filter_map(process_ticks)
        .sum()
}

/// A process's CPU time (user + system) in clock ticks.
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}
