//! A RabbitMQ cluster of a test's own: three `rabbitmq-server` nodes on
//! this machine, started and joined by `deploy/rabbitmq-cluster.sh` on free
//! ports with a temporary data directory, and stopped (processes and
//! directories) when dropped, also when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The script, from the package's root.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/rabbitmq-cluster.sh")
}

/// Where Debian's `rabbitmq-server` package puts the real scripts.
const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

pub struct RabbitCluster {
    pub nodes: usize,
    base_port: u16,
    dir: tempfile::TempDir,
}

impl RabbitCluster {
    /// Starts and joins `nodes` nodes; panics with the script's output
    /// when they do not start. Where this machine has no RabbitMQ server
    /// to start nodes of, the test fails saying so (deploy/ensure-deps.sh
    /// installs it) — nextest hides a passing test's output, so a skip
    /// would be silent — unless `SKIP_RABBITMQ_CLUSTER` is set: then None,
    /// with the reason printed.
    pub fn start(nodes: usize) -> Option<RabbitCluster> {
        if !Path::new(RABBITMQ_BIN).exists() {
            let why = format!(
                "{RABBITMQ_BIN} is missing, so this machine cannot start extra RabbitMQ nodes \
                 (install rabbitmq-server: deploy/ensure-deps.sh)"
            );
            assert!(
                std::env::var_os("SKIP_RABBITMQ_CLUSTER").is_some(),
                "{why}; set SKIP_RABBITMQ_CLUSTER=1 to skip the cluster tests instead"
            );
            eprintln!("SKIPPED (SKIP_RABBITMQ_CLUSTER): {why}");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let base_port = free_port_range(nodes);
        let cluster = RabbitCluster {
            nodes,
            base_port,
            dir,
        };
        let started = std::time::Instant::now();
        let out = cluster.run("start", &[]);
        assert!(
            out.status.success(),
            "the RabbitMQ cluster did not start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "cluster: {nodes} RabbitMQ nodes from port {base_port} started and joined in {:?}",
            started.elapsed()
        );
        Some(cluster)
    }

    fn run(&self, action: &str, extra: &[&str]) -> Output {
        self.run_node(action, None, extra)
    }

    fn run_node(&self, action: &str, node: Option<usize>, extra: &[&str]) -> Output {
        let mut command = Command::new(script());
        command.arg(action);
        if let Some(i) = node {
            command.arg(i.to_string());
        }
        command
            .arg(self.nodes.to_string())
            .arg(self.base_port.to_string())
            .arg(self.dir.path().join("cluster"))
            .args(extra)
            .output()
            .expect("run deploy/rabbitmq-cluster.sh")
    }

    /// The AMQP URL of node `i` (from 1).
    pub fn url(&self, i: usize) -> String {
        format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f",
            usize::from(self.base_port) + i - 1
        )
    }

    /// The URLs of the nodes in the order `order` (node numbers from 1).
    pub fn urls(&self, order: &[usize]) -> Vec<String> {
        order.iter().map(|i| self.url(*i)).collect()
    }

    /// Node `i`'s Erlang node name.
    pub fn node_name(&self, i: usize) -> String {
        format!("hc{}n{i}@localhost", self.base_port)
    }

    /// Stops node `i` (`rabbitmqctl stop`, SIGKILL after 30 s).
    pub fn stop_node(&self, i: usize) {
        let began = std::time::Instant::now();
        let out = self.run_node("node-stop", Some(i), &[]);
        assert!(out.status.success(), "stop node {i}: {out:?}");
        eprintln!("cluster: stopping node {i} took {:?}", began.elapsed());
    }

    /// Starts node `i` again; it rejoins the cluster.
    pub fn start_node(&self, i: usize) {
        let began = std::time::Instant::now();
        let out = self.run_node("node-start", Some(i), &[]);
        assert!(out.status.success(), "start node {i}: {out:?}");
        eprintln!("cluster: starting node {i} took {:?}", began.elapsed());
    }

    /// `rabbitmqctl` against node `via`; its standard output.
    pub fn ctl(&self, via: usize, args: &[&str]) -> String {
        let out = self.run_node("ctl", Some(via), args);
        assert!(out.status.success(), "rabbitmqctl {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The node number (from 1) leading the quorum queue `queue`, asked of
    /// node `via`.
    pub fn leader_of(&self, queue: &str, via: usize) -> usize {
        let listing = self.ctl(
            via,
            &[
                "list_queues",
                "name",
                "leader",
                "--no-table-headers",
                "--quiet",
            ],
        );
        let leader = listing
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .find(|(name, _)| *name == queue)
            .map(|(_, leader)| leader.trim().to_owned())
            .unwrap_or_else(|| panic!("{queue} is not listed: {listing}"));
        (1..=self.nodes)
            .find(|i| self.node_name(*i) == leader)
            .unwrap_or_else(|| panic!("{queue}'s leader {leader} is not a node of the cluster"))
    }

    /// The queues whose names start with `prefix` and their types, asked of
    /// node `via`.
    pub fn queue_types(&self, prefix: &str, via: usize) -> Vec<(String, String)> {
        let listing = self.ctl(
            via,
            &[
                "list_queues",
                "name",
                "type",
                "--no-table-headers",
                "--quiet",
            ],
        );
        listing
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, kind)| (name.to_owned(), kind.trim().to_owned()))
            .collect()
    }

    /// The nodes (from 1) hosting a member of the quorum queue `queue`.
    pub fn members_of(&self, queue: &str, via: usize) -> Vec<usize> {
        let listing = self.ctl(
            via,
            &[
                "list_queues",
                "name",
                "type",
                "members",
                "--no-table-headers",
                "--quiet",
            ],
        );
        let line = listing
            .lines()
            .find(|l| l.split('\t').next() == Some(queue))
            .unwrap_or_else(|| panic!("{queue} is not listed: {listing}"));
        assert!(
            line.contains("quorum"),
            "{queue} is not a quorum queue: {line}"
        );
        (1..=self.nodes)
            .filter(|i| line.contains(&self.node_name(*i)))
            .collect()
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("KEEP_CLUSTER_LOGS").is_some() {
            // The nodes' logs outlive the data directory, under target/.
            let kept = Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join("cluster-logs")
                .join(format!(
                    "rabbitmq-{}-{}",
                    self.base_port,
                    std::process::id()
                ));
            let copied = (1..=self.nodes).all(|i| {
                let to = kept.join(format!("node{i}"));
                std::fs::create_dir_all(&to).is_ok()
                    && Command::new("cp")
                        .arg("-r")
                        .arg(self.dir.path().join(format!("cluster/node{i}/log")))
                        .arg(&to)
                        .status()
                        .is_ok_and(|s| s.success())
            });
            eprintln!(
                "cluster: the RabbitMQ nodes' logs {} {}",
                if copied {
                    "are kept in"
                } else {
                    "could not all be copied to"
                },
                kept.display()
            );
        }
        let out = self.run("stop", &[]);
        if !out.status.success() {
            eprintln!("stopping the RabbitMQ cluster: {out:?}");
        }
    }
}

/// A base port whose `nodes` AMQP ports and `nodes` distribution ports
/// (base + 100 …) are free now.
fn free_port_range(nodes: usize) -> u16 {
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let seed = u16::try_from(std::process::id() % 1000).expect("small");
    for k in 0..200u16 {
        let base = 30_000 + (seed + k * 7) % 1000 * 20;
        let ports = (0..nodes).map(|i| base + u16::try_from(i).expect("few nodes"));
        if ports.clone().all(|p| free(p) && free(p + 100)) {
            return base;
        }
    }
    panic!("no free range of ports for the RabbitMQ nodes");
}
