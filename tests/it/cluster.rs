//! RabbitMQ as a cluster (issue 14, parts 3 and 4), on a real three-node
//! cluster of the test's own (deploy/rabbitmq-cluster.sh):
//! - 1,000 actions across two worker processes connected to different
//!   nodes while the node of one worker and then the node leading the
//!   actions queue are stopped: every action applied once at HAProxy, every
//!   event published, nothing dead-lettered, both workers still consuming;
//! - 4 workers, 2 schedulers and 2 API processes against one database and
//!   the cluster: the final check holds and the sessions they open stay
//!   within the sizing rule of docs/operations.md, under PostgreSQL's
//!   default limit.
//!
//! Both run alone (see .config/nextest.toml). Where the machine cannot
//! start RabbitMQ nodes they fail saying so, never pass quietly; with
//! `SKIP_RABBITMQ_CLUSTER` set they skip instead, printing why.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use futures::future::join_all;
use haproxy_control::config::Config;
use serde_json::json;
use uuid::Uuid;

use crate::harness::fleet::SPARE;
use crate::harness::{RabbitCluster, SpiedLb, TestSystem, eventually, final_check, free_port};

const SETTLE: Duration = Duration::from_secs(90);

/// Children killed when dropped (a failing test leaves none behind).
#[derive(Default)]
struct Children(Vec<(String, PathBuf, Child)>);

impl Children {
    fn push(&mut self, name: &str, log: PathBuf, child: Child) {
        self.0.push((name.to_owned(), log, child));
    }

    /// The log of child `name`.
    fn log(&self, name: &str) -> String {
        self.0
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, log, _)| std::fs::read_to_string(log).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Panics with its log if a child has exited.
    fn assert_running(&mut self) {
        for (name, log, child) in &mut self.0 {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{name} exited ({status}): {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
    }

    /// The workers, handed to the final check (which SIGKILLs them).
    fn take(&mut self, prefix: &str) -> Vec<Child> {
        let (taken, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.0)
            .into_iter()
            .partition(|(n, _, _)| n.starts_with(prefix));
        self.0 = kept;
        taken.into_iter().map(|(_, _, c)| c).collect()
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, _, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The directory of a test's process logs, under target/ (not a temporary
/// directory): kept when the test fails (its path and each log's tail are
/// printed) or when `KEEP_CLUSTER_LOGS` is set, removed otherwise.
struct Logs(PathBuf);

impl Logs {
    fn new(test: &str) -> Logs {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("cluster-logs")
            .join(format!("{test}-{stamp}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("log directory");
        Logs(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        if !std::thread::panicking() && std::env::var_os("KEEP_CLUSTER_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
            return;
        }
        eprintln!(
            "cluster: the processes' logs are kept in {}",
            self.0.display()
        );
        if !std::thread::panicking() {
            return;
        }
        let mut logs: Vec<_> = std::fs::read_dir(&self.0)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = strip_colours(&std::fs::read_to_string(&log).unwrap_or_default());
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "---- last lines of {} ----\n{}",
                log.display(),
                lines[lines.len().saturating_sub(25)..].join("\n")
            );
        }
    }
}

/// `config` with the broker URLs in the order `order` (the first that
/// answers is used).
fn on_nodes(config: &Config, cluster: &RabbitCluster, order: &[usize]) -> Config {
    let mut c = config.clone();
    c.amqp.urls = Some(cluster.urls(order));
    c
}

/// A drain of server `id` as AC sends it.
fn drain(id: i64, txn: Uuid) -> serde_json::Value {
    json!({"transaction_id": txn, "action": "drain", "actor": "ac:cluster",
           "target": {"server_id": id}, "reason": "cluster"})
}

/// The servers `s*` of the test's load balancer, in a fixed spread order.
async fn drainable(sys: &TestSystem) -> Vec<i64> {
    let ids: Vec<i64> = sys
        .servers()
        .await
        .into_iter()
        .filter(|s| s.name != SPARE)
        .map(|s| s.id)
        .collect();
    let n = ids.len();
    // 7919 is prime to the counts used here: every moment has actions for
    // every backend.
    (0..n).map(|j| ids[(j * 7919) % n]).collect()
}

/// The `host:port`s a worker's log says it connected to, in order.
fn connected_to(log: &str) -> Vec<String> {
    strip_colours(log)
        .lines()
        .filter(|l| l.contains("connected to RabbitMQ"))
        .filter_map(|l| l.split("broker=").nth(1))
        .map(|rest| {
            rest.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_lose_their_node_and_the_actions_leader_and_apply_1000_actions_once() {
    let Some(cluster) = RabbitCluster::start(3) else {
        return;
    };
    let began = Instant::now();
    // 10 backends of 100 servers and a spare: 1,000 drains.
    let lb = SpiedLb::fleet(10, 100).await;
    lb.spy.set_delay("set server", Duration::from_millis(5));
    // The harness declares the topology on node 3: quorum queues are led
    // by the node they are declared on, so node 3 leads the actions queue.
    let sys = TestSystem::start_on_cluster(cluster.urls(&[3, 2, 1])).await;
    sys.register_agent("lb-1", &lb.agent).await;
    let actions_queue = sys.topology.actions_queue.clone();
    assert_eq!(
        cluster.members_of(&actions_queue, 1),
        vec![1, 2, 3],
        "the actions queue is replicated on every node"
    );
    // Every queue of the topology is a quorum queue: a classic one lives on
    // one node, and while that node is down no process that lost its
    // connection can re-declare the topology on another and recover.
    let queues = cluster.queue_types(&sys.prefix, 1);
    assert!(queues.len() >= 7, "the topology's queues: {queues:?}");
    let classic: Vec<_> = queues.iter().filter(|(_, kind)| kind != "quorum").collect();
    assert!(classic.is_empty(), "not quorum queues: {classic:?}");
    let leader = cluster.leader_of(&actions_queue, 1);
    let logs = Logs::new("failover");
    let config = sys.config();
    let mut children = Children::default();
    // Worker A on node 1, worker B on node 2 (each falls back to the others).
    for (name, order) in [("worker-a", [1, 2, 3]), ("worker-b", [2, 3, 1])] {
        let log = logs.path().join(format!("{name}.log"));
        let child = sys.spawn_worker_process(&on_nodes(&config, &cluster, &order), &log);
        children.push(name, log, child);
    }
    eventually(
        Duration::from_secs(30),
        "both workers consuming",
        || async { (sys.queue_state(&actions_queue).await.map(|s| s.1) == Some(2)).then_some(()) },
    )
    .await;
    let a_node = connected_to(&children.log("worker-a"));
    assert_eq!(a_node, [format!("127.0.0.1:{}", port_of(&cluster, 1))]);
    let servers = drainable(&sys).await;
    assert_eq!(servers.len(), 1000);
    let txns: Vec<Uuid> = servers.iter().map(|_| Uuid::new_v4()).collect();
    eprintln!(
        "cluster: set up in {:?}; actions queue led by node {leader}",
        began.elapsed()
    );

    // 1,000 drains from a task of their own, 25 every second: the first
    // 600 while node 1 goes and comes back (held there until the leader's
    // node is being stopped, however long a node takes to start on this
    // machine), the other 400 while the leader's node goes. Actions are in
    // flight through both losses.
    const HELD_AT: usize = 600;
    let run = Instant::now();
    let sys = Arc::new(sys);
    let (release, mut released) = tokio::sync::watch::channel(false);
    let publishing = {
        let (sys, servers, txns) = (sys.clone(), servers.clone(), txns.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let all: Vec<_> = servers.iter().zip(&txns).collect();
            for (k, chunk) in all.chunks(25).enumerate() {
                if k * 25 == HELD_AT {
                    let _ = released.wait_for(|r| *r).await;
                    eprintln!("cluster: publishing the last 400 from {:?}", run.elapsed());
                    tick.reset();
                }
                tick.tick().await;
                let bodies: Vec<_> = chunk.iter().map(|(id, txn)| drain(**id, **txn)).collect();
                join_all(bodies.iter().map(|b| sys.publish_action(b))).await;
            }
        })
    };

    // Progress every 2 s, for a run that stalls: done, in the queue.
    let progress = {
        let (sys, queue) = (sys.clone(), actions_queue.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                eprintln!(
                    "cluster: {:?}: {} done; actions queue (ready, consumers) {:?}",
                    run.elapsed(),
                    sys.successes().await,
                    sys.queue_state(&queue).await
                );
            }
        })
    };

    // At 3 s: stop node 1, worker A's. It must go on through another node.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let done = sys.successes().await;
    cluster.stop_node(1);
    eprintln!(
        "cluster: node 1 (worker A's) stopped at {:?}, {done} actions done",
        run.elapsed()
    );
    eventually(
        Duration::from_secs(30),
        "worker A on another node",
        || async { (connected_to(&children.log("worker-a")).len() >= 2).then_some(()) },
    )
    .await;
    let a_nodes = connected_to(&children.log("worker-a"));
    assert_ne!(a_nodes[1], a_nodes[0], "worker A reconnected to node 1");
    let before = sys.successes().await;
    eventually(SETTLE, "actions done after node 1 went", || async {
        (sys.successes().await > before + 50).then_some(())
    })
    .await;
    cluster.start_node(1);
    eprintln!("cluster: node 1 back at {:?}", run.elapsed());

    // Then the node leading the actions queue (asked again: it may have
    // moved), with node 1 back so two of three replicas stay.
    let leader = cluster.leader_of(&actions_queue, 1);
    let done = sys.successes().await;
    // The last 400 go while the leader's node is stopped.
    release.send_replace(true);
    cluster.stop_node(leader);
    eprintln!(
        "cluster: node {leader} (leading {actions_queue}) stopped at {:?}, {done} actions done",
        run.elapsed()
    );
    let survivor = (1..=3).find(|i| *i != leader).expect("a node");
    let new_leader = eventually(Duration::from_secs(30), "a new leader", || async {
        let l = cluster.leader_of(&actions_queue, survivor);
        (l != leader).then_some(l)
    })
    .await;
    publishing.await.expect("publishing");
    eprintln!(
        "cluster: all published at {:?}; node {new_leader} leads the actions queue now",
        run.elapsed()
    );

    // Both workers still consume (one consumer each on the actions queue),
    // alive, and A did reconnect.
    eventually(SETTLE, "every action done", || async {
        (sys.successes().await >= 1000).then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(30),
        "both workers consuming at the end",
        || async { (sys.queue_state(&actions_queue).await.map(|s| s.1) == Some(2)).then_some(()) },
    )
    .await;
    children.assert_running();
    progress.abort();
    eprintln!(
        "cluster: worker A connected to {:?}, worker B to {:?}",
        connected_to(&children.log("worker-a")),
        connected_to(&children.log("worker-b"))
    );
    let mut workers = children.take("worker");
    let spies = [&lb.spy];
    let settled = final_check(&sys, &txns, &spies, &mut workers, SETTLE).await;
    eprintln!(
        "cluster: settled {:?} after the start of the run; {settled:?}",
        run.elapsed()
    );
    assert_eq!((settled.status("success"), settled.changed), (1000, 1000));
    assert_eq!(lb.servers_with_bits(8).await, 1000, "every server drained");
    assert!(lb.spares_ready().await, "a spare was touched");
}

/// The log of process `name` in `logs`.
fn children_logs(logs: &Logs, name: &str) -> String {
    std::fs::read_to_string(logs.path().join(format!("{name}.log"))).unwrap_or_default()
}

/// The text of a log without its ANSI colour codes.
fn strip_colours(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The AMQP port of node `i`.
fn port_of(cluster: &RabbitCluster, i: usize) -> u16 {
    cluster
        .url(i)
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .and_then(|p| p.parse().ok())
        .expect("port")
}

/// The name the fleet's roles give PostgreSQL, followed by the process's
/// own (`haproxy-control-fleet-worker-0`), so their sessions are counted
/// apart from the harness's and per process.
const FLEET: &str = "haproxy-control-fleet";

/// `config` for the fleet's process `name`: its sessions carry its name.
fn named(config: &Config, name: &str) -> Config {
    let mut c = config.clone();
    c.database.url = format!("{}?application_name={FLEET}-{name}", c.database.url);
    c
}

/// Samples the fleet's sessions in the test's database every 20 ms; keeps
/// the peak of the total and of each process.
struct Sessions {
    peak: Arc<AtomicI64>,
    per_process: Arc<std::sync::Mutex<std::collections::BTreeMap<String, i64>>>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

impl Sessions {
    fn sample(url: &str) -> Sessions {
        let mut conn = PgConnection::establish(url).expect("connect the sampler");
        let (peak, stop) = (
            Arc::new(AtomicI64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let per_process = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
        let (p, s, pp) = (peak.clone(), stop.clone(), per_process.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok(counts) = diesel::sql_query(
                    "SELECT application_name AS name, count(*) AS n FROM pg_stat_activity \
                     WHERE datname = current_database() AND application_name LIKE $1 \
                     GROUP BY application_name",
                )
                .bind::<diesel::sql_types::Text, _>(format!("{FLEET}-%"))
                .load::<Count>(&mut conn)
                {
                    p.fetch_max(counts.iter().map(|c| c.n).sum(), Ordering::Relaxed);
                    let mut per = pp.lock().expect("peaks");
                    for c in counts {
                        let name = c.name.trim_start_matches(FLEET).trim_start_matches('-');
                        let e = per.entry(name.to_owned()).or_insert(0);
                        *e = (*e).max(c.n);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Sessions {
            peak,
            per_process,
            stop,
            thread,
        }
    }

    /// The peak of the total and of each process.
    fn stop(self) -> (i64, std::collections::BTreeMap<String, i64>) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        let per = self.per_process.lock().expect("peaks").clone();
        (self.peak.load(Ordering::Relaxed), per)
    }
}

/// An API process of the real binary on a free port, with one operator
/// token; its base URL.
fn spawn_api(config: &Config, dir: &Path, name: &str, children: &mut Children) -> String {
    let tokens = dir.join(format!("{name}.tokens"));
    std::fs::write(&tokens, "operator user:fleet fleet-operator-token\n").expect("tokens");
    let listen = format!("127.0.0.1:{}", free_port());
    let log = dir.join(format!("{name}.log"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_haproxy-control"));
    command
        .args(["--log-format", "text", "api"])
        .env("DATABASE_URL", &config.database.url)
        .env(
            "AMQP_URLS",
            config.amqp.urls.clone().unwrap_or_default().join(","),
        )
        .env("AMQP_PREFIX", &config.amqp.prefix)
        .env("API_LISTEN", &listen)
        .env("API_TOKENS_FILE", &tokens)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"));
    children.push(name, log, command.spawn().expect("api process"));
    format!("http://{listen}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_two_schedulers_and_two_apis_share_the_cluster_and_the_connection_budget() {
    let Some(cluster) = RabbitCluster::start(3) else {
        return;
    };
    let began = Instant::now();
    let lb = SpiedLb::fleet(10, 40).await;
    let sys = TestSystem::start_on_cluster(cluster.urls(&[1, 2, 3])).await;
    let instance = sys.register_agent("lb-1", &lb.agent).await;
    // The sizing rule (docs/operations.md, "Connections"): for 4 workers,
    // the least pool_size (one action at a time) each; the API's default 8;
    // the scheduler's 2.
    let worker_pool = haproxy_control::worker::RESERVED_CONNECTIONS + 1;
    let mut config = sys.config();
    config.database.url.clone_from(&sys.db.url);
    config.database.pool_size = worker_pool;
    config.worker.prefetch = Config::default().worker.prefetch;
    config.sync.interval_secs = 1;
    let budget =
        4 * i64::from(worker_pool) + 2 * i64::from(Config::default().api.pool_size) + 2 * 2;
    assert!(budget < 97, "the rule's budget for this fleet: {budget}");
    let sessions = Sessions::sample(&sys.db.url);
    let logs = Logs::new("fleet");
    let pool_file = logs.path().join("pool.toml");
    std::fs::write(
        &pool_file,
        format!("[database]\npool_size = {}\n", config.database.pool_size),
    )
    .expect("config file");
    let mut children = Children::default();
    for i in 0..4 {
        // Spread over the nodes: 1, 2, 3, 1.
        let first = i % 3 + 1;
        let order = [first, first % 3 + 1, (first + 1) % 3 + 1];
        let log = logs.path().join(format!("worker-{i}.log"));
        let name = format!("worker-{i}");
        let c = on_nodes(&named(&config, &name), &cluster, &order);
        // The pool size through the file (the harness's environment has
        // none for it): `[database] pool_size = …`.
        let child = sys.spawn_process_with_file("worker", &c, &log, &pool_file);
        children.push(&name, log, child);
    }
    for i in 0..2 {
        let log = logs.path().join(format!("scheduler-{i}.log"));
        let c = on_nodes(
            &named(&config, &format!("scheduler-{i}")),
            &cluster,
            &[i + 2, 1, 3],
        );
        children.push(
            &format!("scheduler-{i}"),
            log.clone(),
            sys.spawn_scheduler_process(&c, &log),
        );
    }
    let apis: Vec<String> = (0..2)
        .map(|i| {
            let c = on_nodes(
                &named(&config, &format!("api-{i}")),
                &cluster,
                &[3 - i, 1, 2],
            );
            spawn_api(&c, logs.path(), &format!("api-{i}"), &mut children)
        })
        .collect();
    let http = reqwest::Client::new();
    for api in &apis {
        eventually(Duration::from_secs(30), "the API ready", || async {
            let r = http.get(format!("{api}/readyz")).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
    }
    eprintln!("fleet: set up in {:?}", began.elapsed());

    // 400 drains: half on RabbitMQ as AC sends them, half through the two
    // APIs, alternately; a forced sync through each API as well.
    let run = Instant::now();
    let servers = drainable(&sys).await;
    assert_eq!(servers.len(), 400);
    let (by_amqp, by_api) = servers.split_at(200);
    let mut txns: Vec<Uuid> = by_amqp.iter().map(|_| Uuid::new_v4()).collect();
    let bodies: Vec<_> = by_amqp
        .iter()
        .zip(&txns)
        .map(|(id, txn)| drain(*id, *txn))
        .collect();
    let published = join_all(bodies.iter().map(|b| sys.publish_action(b)));
    let http = &http;
    let requested = join_all(by_api.iter().enumerate().map(|(k, id)| {
        let api = &apis[k % 2];
        async move {
            let r = http
                .post(format!("{api}/api/haproxy/servers/{id}/action"))
                .bearer_auth("fleet-operator-token")
                .json(&json!({"action": "drain", "reason": "fleet"}))
                .send()
                .await
                .expect("API request");
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.expect("JSON answer");
            assert_eq!(status, 202, "{body}");
            body["transaction_id"]
                .as_str()
                .and_then(|t| t.parse::<Uuid>().ok())
                .expect("transaction id")
        }
    }));
    let (_, api_txns) = tokio::join!(published, requested);
    txns.extend(api_txns);
    for api in &apis {
        let r = http
            .post(format!("{api}/api/haproxy/instances/{instance}/sync"))
            .bearer_auth("fleet-operator-token")
            .json(&json!({}))
            .send()
            .await
            .expect("sync request");
        assert_eq!(r.status().as_u16(), 202);
    }
    eventually(SETTLE, "every action done", || async {
        (sys.successes().await >= 400).then_some(())
    })
    .await;
    children.assert_running();
    // The schedulers tick every second: stopped first, so the sync queue
    // can drain for the final check.
    for mut scheduler in children.take("scheduler") {
        let _ = scheduler.kill();
        let _ = scheduler.wait();
    }
    let mut workers = children.take("worker");
    let settled = final_check(&sys, &txns, &[&lb.spy], &mut workers, SETTLE).await;
    let (peak, per_process) = sessions.stop();
    eprintln!(
        "fleet: settled {:?} after the start of the run; {settled:?}; peak {peak} sessions of the \
         fleet (budget {budget}); each process's peak: {per_process:?}",
        run.elapsed()
    );
    assert_eq!((settled.status("success"), settled.changed), (400, 400));
    assert!(peak > 0, "the fleet's sessions were sampled");
    assert!(
        peak <= budget,
        "{peak} sessions: over the sizing rule's {budget} for 4 workers, 2 schedulers, 2 APIs"
    );
    assert!(
        peak < 97,
        "{peak} sessions: over PostgreSQL's default limit for ordinary users"
    );
    // Each process within its kind's size (docs/operations.md).
    let api_pool = i64::from(Config::default().api.pool_size);
    for (name, n) in &per_process {
        let limit = match name.split('-').next() {
            Some("worker") => i64::from(worker_pool),
            Some("api") => api_pool,
            Some("scheduler") => 2,
            _ => panic!("a session of no process of the fleet: {name}"),
        };
        assert!(
            *n <= limit,
            "{name} had {n} sessions, more than its {limit}"
        );
    }
    for i in 0..4 {
        let log = strip_colours(&children_logs(&logs, &format!("worker-{i}")));
        assert!(
            log.contains(&format!("pool={worker_pool}")),
            "worker-{i} not on a pool of {worker_pool}: {log}"
        );
    }
    assert_eq!(per_process.len(), 8, "every process seen: {per_process:?}");
    for i in 0..2 {
        let log = logs.path().join(format!("scheduler-{i}.log"));
        let log = std::fs::read_to_string(log).unwrap_or_default();
        assert!(!log.to_lowercase().contains("too many clients"), "{log}");
    }
    let runs = sys.sync_runs().await;
    assert!(runs.iter().any(|r| r.status == "success"), "{runs:?}");
    assert!(runs.iter().all(|r| r.status != "failed"), "{runs:?}");
}
