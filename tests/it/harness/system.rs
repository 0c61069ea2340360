//! The server side of the system for one test: its own PostgreSQL database,
//! its own RabbitMQ exchanges and queues (a unique name prefix), a capture of
//! every event, and workers in-process or as child processes.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use haproxy_control::config::Config;
use haproxy_control::db::testing::TestDatabase;
use haproxy_control::db::{self, PgPool};
use haproxy_control::queue::Topology;
use haproxy_control::queue::publisher::{Outgoing, Publisher};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::rows::ActionRow;
use super::{TcpProxy, TestAgent, eventually};

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub struct TestSystem {
    pub db: TestDatabase,
    pub pool: PgPool,
    pub prefix: String,
    pub topology: Topology,
    conn: lapin::Connection,
    pub publisher: Publisher,
    events: Arc<Mutex<Vec<(std::time::Instant, Value)>>>,
    capture: JoinHandle<()>,
    workers: Vec<(watch::Sender<bool>, JoinHandle<anyhow::Result<()>>)>,
    /// The nodes of a RabbitMQ cluster of the test's own (the harness
    /// connects to the first that answers, roles get them as `AMQP_URLS`);
    /// none: the machine's RabbitMQ.
    brokers: Option<Vec<String>>,
}

/// A dead-lettered message.
#[derive(Debug)]
pub struct DeadLetter {
    pub body: Vec<u8>,
    pub error: String,
    pub routing_key: String,
    /// Set by RabbitMQ when it dead-lettered the message itself.
    pub x_death: bool,
}

impl TestSystem {
    pub async fn start() -> Self {
        Self::on(TestDatabase::create().expect("test database"), None).await
    }

    /// A system whose database is on the PostgreSQL server of `admin_url`.
    pub async fn start_on(admin_url: &str) -> Self {
        Self::on(
            TestDatabase::create_on(admin_url.to_owned()).expect("test database"),
            None,
        )
        .await
    }

    /// A system on the RabbitMQ cluster of `brokers` (the harness connects
    /// to the first that answers and follows the cluster when it loses its
    /// node). Its capture of events is a quorum queue, so it keeps every
    /// event across a node's loss.
    pub async fn start_on_cluster(brokers: Vec<String>) -> Self {
        Self::on(
            TestDatabase::create().expect("test database"),
            Some(brokers),
        )
        .await
    }

    async fn on(db: TestDatabase, brokers: Option<Vec<String>>) -> Self {
        let pool = db.pool(24).expect("pool");
        let prefix = format!("t{}.", &Uuid::new_v4().simple().to_string()[..12]);
        let topology = Topology::with_prefix(&prefix, 5);
        let conn = match &brokers {
            None => haproxy_control::queue::connect(AMQP_URL, "test")
                .await
                .expect("RabbitMQ at 127.0.0.1:5672"),
            Some(urls) => {
                let nodes = haproxy_control::queue::Brokers::parse("the cluster", urls)
                    .expect("cluster URLs");
                haproxy_control::queue::connect_with(&nodes, "test", 30)
                    .await
                    .expect("the RabbitMQ cluster")
            }
        };
        let ch = conn.create_channel().await.expect("channel");
        topology.declare(&ch).await.expect("topology");
        let capture_queue = format!("{prefix}events-capture");
        let (capture_options, capture_arguments) = if brokers.is_some() {
            let mut args = FieldTable::default();
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
            (
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
        } else {
            (
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
        };
        ch.queue_declare(
            capture_queue.as_str().into(),
            capture_options,
            capture_arguments,
        )
        .await
        .expect("capture queue");
        ch.queue_bind(
            capture_queue.as_str().into(),
            topology.events_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind capture");
        let mut consumer = ch
            .basic_consume(
                capture_queue.as_str().into(),
                "capture".into(),
                BasicConsumeOptions {
                    // On a cluster an event is acked once captured, so one
                    // in flight when a node goes is delivered again.
                    no_ack: brokers.is_none(),
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume capture");
        let events: Arc<Mutex<Vec<(std::time::Instant, Value)>>> = Arc::default();
        let sink = events.clone();
        let acks = brokers.is_some();
        let capture = tokio::spawn(async move {
            loop {
                match consumer.next().await {
                    Some(Ok(d)) => {
                        if let Ok(v) = serde_json::from_slice::<Value>(&d.data) {
                            sink.lock()
                                .expect("events")
                                .push((std::time::Instant::now(), v));
                        }
                        if acks {
                            let _ = d.ack(BasicAckOptions::default()).await;
                        }
                    }
                    // A lost node: lapin's recovery resumes the consumer on
                    // another.
                    Some(Err(e)) if acks => {
                        if let Err(e) = ch.wait_for_recovery(e).await {
                            eprintln!("harness: the capture of events stopped: {e}");
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        eprintln!("harness: the capture of events stopped: {e}");
                        return;
                    }
                    None => return,
                }
            }
        });
        let publisher = Publisher::new(&conn).await.expect("publisher");
        Self {
            db,
            pool,
            prefix,
            topology,
            conn,
            publisher,
            events,
            capture,
            workers: Vec::new(),
            brokers,
        }
    }

    /// A worker configuration for this system, with fast retries.
    pub fn config(&self) -> Config {
        let mut c = Config::default();
        c.database.url = self.db.url.clone();
        // A slot for every prefetched action, as before pools were sized.
        c.database.pool_size = 16 + haproxy_control::worker::RESERVED_CONNECTIONS;
        c.amqp.url = AMQP_URL.into();
        c.amqp.urls.clone_from(&self.brokers);
        c.amqp.prefix = self.prefix.clone();
        c.worker.prefetch = 16;
        c.worker.retry_backoff_ms = vec![100, 200, 400];
        c.worker.agent_timeout_ms = 2_000;
        c
    }

    /// Starts a worker in this process.
    pub fn start_worker(&mut self, config: Config) {
        self.start_role("worker", |rx| async move {
            haproxy_control::worker::run(&config, rx).await
        });
    }

    /// Starts a scheduler (syncs, pruning, sweeper) in this process; it
    /// stops with the workers.
    pub fn start_scheduler(&mut self, config: Config) {
        self.start_role("scheduler", |rx| async move {
            haproxy_control::scheduler::run(&config, rx).await
        });
    }

    fn start_role<F, Fut>(&mut self, role: &'static str, run: F)
    where
        F: FnOnce(watch::Receiver<bool>) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (tx, rx) = watch::channel(false);
        let role_run = run(rx);
        let handle = tokio::spawn(async move {
            let result = role_run.await;
            if let Err(e) = &result {
                eprintln!("in-process {role} stopped: {e:#}");
            }
            result
        });
        self.workers.push((tx, handle));
    }

    /// The real binary running `role`, with the connection settings of
    /// `config`, logging (text) to `log`.
    fn role_command(config: &Config, role: &str, log: &std::path::Path) -> Command {
        let log = std::fs::File::create(log).expect("role log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_haproxy-control"));
        command
            .args(["--log-format", "text", role])
            .env("DATABASE_URL", &config.database.url)
            .env("AMQP_URL", &config.amqp.url)
            .env("AMQP_PREFIX", &config.amqp.prefix)
            .env(
                "AMQP_RECONNECT_ATTEMPTS",
                config.amqp.reconnect_attempts.to_string(),
            )
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(listen) = config.metrics.listen {
            command.env("METRICS_LISTEN", listen.to_string());
        }
        if let Some(urls) = &config.amqp.urls {
            command.env("AMQP_URLS", urls.join(","));
        }
        command
    }

    /// Starts a scheduler as a child process of the real binary, ticking
    /// every `config.sync.interval_secs`.
    pub fn spawn_scheduler_process(&self, config: &Config, log: &std::path::Path) -> Child {
        Self::scheduler_command(config, log)
            .spawn()
            .expect("scheduler process")
    }

    /// Starts a worker as a child process of the real binary.
    pub fn spawn_worker_process(&self, config: &Config, log: &std::path::Path) -> Child {
        Self::worker_command(config, log)
            .spawn()
            .expect("worker process")
    }

    /// Starts `role` (`worker` or `scheduler`) as [`Self::spawn_worker_process`]
    /// or [`Self::spawn_scheduler_process`] do, reading the TOML `file` too
    /// (for the sections without variables: `[rollout]`, `[sweeper]`).
    pub fn spawn_process_with_file(
        &self,
        role: &str,
        config: &Config,
        log: &std::path::Path,
        file: &std::path::Path,
    ) -> Child {
        let mut command = match role {
            "worker" => Self::worker_command(config, log),
            "webhooks" => Self::role_command(config, "webhooks", log),
            _ => Self::scheduler_command(config, log),
        };
        command
            .env("HAPROXY_CONTROL_CONFIG", file)
            .spawn()
            .expect("role process")
    }

    fn scheduler_command(config: &Config, log: &std::path::Path) -> Command {
        let mut command = Self::role_command(config, "scheduler", log);
        command.env("SYNC_INTERVAL_SECS", config.sync.interval_secs.to_string());
        command
    }

    fn worker_command(config: &Config, log: &std::path::Path) -> Command {
        let mut command = Self::role_command(config, "worker", log);
        command
            .env("WORKER_PREFETCH", config.worker.prefetch.to_string())
            .env("WORKER_GROUP_MAX", config.worker.group_max.to_string())
            .env(
                "WORKER_GROUPS_IN_FLIGHT",
                config.worker.groups_in_flight.to_string(),
            )
            .env(
                "DATABASE_LOCK_TIMEOUT_MS",
                config.database.lock_timeout_ms.to_string(),
            )
            .env(
                "WORKER_RETRY_BACKOFF_MS",
                config
                    .worker
                    .retry_backoff_ms
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            );
        command
    }

    /// Registers an instance whose agent is `agent` (or any URL) and loads
    /// its servers. Returns its id.
    pub async fn register(&self, name: &str, url: &str, token: &str) -> i64 {
        let args = haproxy_control::cli::InstanceAddArgs {
            name: name.into(),
            fagent_url: url.into(),
            token_file: None,
            token_env: None,
            token: Some(token.into()),
            server_id: None,
            inactive: false,
            restore_after_reload: None,
        };
        let said = haproxy_control::admin::add_instance(&self.config(), &args)
            .await
            .expect("instance registered");
        assert!(said.contains("registered"), "{said}");
        let n = name.to_owned();
        db::run(&self.pool, move |c| db::instances::find_by_name(c, &n))
            .await
            .expect("query")
            .expect("instance row")
            .id
    }

    pub async fn register_agent(&self, name: &str, agent: &TestAgent) -> i64 {
        self.register(name, &agent.url, &agent.token).await
    }

    /// Registers `agent` as instance `name` behind a [`TcpProxy`] the test
    /// controls (to refuse, reset, hang or answer 500); returns the
    /// instance's id and the proxy.
    pub async fn register_behind_proxy(&self, name: &str, agent: &TestAgent) -> (i64, TcpProxy) {
        let agent_addr = agent
            .url
            .trim_start_matches("http://")
            .parse()
            .expect("agent address");
        let proxy = TcpProxy::start(agent_addr).await;
        let id = self
            .register(name, &format!("http://{}", proxy.addr), &agent.token)
            .await;
        (id, proxy)
    }

    /// The id of a server by instance, backend and server name.
    pub async fn server_id(&self, instance: &str, backend: &str, server: &str) -> i64 {
        self.server(instance, backend, server).await.id
    }

    /// Publishes raw bytes as an `action` command.
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) {
        self.publisher
            .publish(Outgoing {
                exchange: &self.topology.commands_exchange,
                routing_key,
                body,
                message_id: &Uuid::new_v4().to_string(),
                headers: FieldTable::default(),
            })
            .await
            .expect("published");
    }

    /// Puts a message straight into the dead-letter queue, as the worker
    /// dead-letters one: original routing key and an `x-error` reason.
    pub async fn publish_dead(&self, routing_key: &str, body: &[u8], reason: &str) {
        let headers =
            haproxy_control::queue::publisher::string_headers(&[("x-error", reason.to_owned())]);
        self.publisher
            .publish(Outgoing {
                exchange: &self.topology.dead_exchange,
                routing_key,
                body,
                message_id: &Uuid::new_v4().to_string(),
                headers,
            })
            .await
            .expect("dead-lettered");
    }

    pub async fn publish_action(&self, body: &Value) {
        self.publish_raw("action", &serde_json::to_vec(body).expect("json"))
            .await;
    }

    /// Publishes a `sync` command; returns its transaction id.
    pub async fn publish_sync(&self, instance_id: Option<i64>) -> Uuid {
        let txn = Uuid::new_v4();
        let mut body =
            serde_json::json!({"transaction_id": txn, "reason": "force", "actor": "user:alice"});
        if let Some(id) = instance_id {
            body["instance_id"] = serde_json::json!(id);
        }
        self.publish_raw("sync", &serde_json::to_vec(&body).expect("json"))
            .await;
        txn
    }

    /// Waits until the sync run `transaction_id` has finished; returns its
    /// status and counts.
    pub async fn wait_sync(&self, transaction_id: Uuid, within: Duration) -> (String, Value) {
        #[derive(diesel::QueryableByName)]
        struct Run {
            #[diesel(sql_type = diesel::sql_types::Text)]
            status: String,
            #[diesel(sql_type = diesel::sql_types::Jsonb)]
            counts: Value,
        }
        eventually(within, &format!("sync {transaction_id} to finish"), || async {
            db::run(&self.pool, move |c| {
                use diesel::RunQueryDsl;
                Ok(diesel::sql_query(
                    "SELECT status, counts FROM haproxy_sync_runs WHERE transaction_id = $1 AND status <> 'running'",
                )
                .bind::<diesel::sql_types::Uuid, _>(transaction_id)
                .get_result::<Run>(c)
                .ok())
            })
            .await
            .expect("query")
            .map(|r| (r.status, r.counts))
        })
        .await
    }

    /// Runs SQL statements (test setup).
    pub async fn exec(&self, sql: &str) {
        let sql = sql.to_owned();
        db::run(&self.pool, move |c| {
            use diesel::connection::SimpleConnection;
            c.batch_execute(&sql)?;
            Ok(())
        })
        .await
        .expect("sql");
    }

    /// Every event seen so far.
    pub fn events(&self) -> Vec<Value> {
        self.events
            .lock()
            .expect("events")
            .iter()
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Events from index `from` on, with the instant each arrived (for
    /// callers that follow the stream).
    #[allow(dead_code)] // used by benches/action_path.rs, not by the tests
    pub fn timed_events_since(&self, from: usize) -> Vec<(std::time::Instant, Value)> {
        let all = self.events.lock().expect("events");
        all.get(from..).map(<[_]>::to_vec).unwrap_or_default()
    }

    /// Events of one type for one transaction id.
    pub fn events_for(&self, kind: &str, transaction_id: Uuid) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["type"] == kind && e["transaction_id"] == transaction_id.to_string())
            .collect()
    }

    /// Waits for an event of `kind` for `transaction_id`.
    pub async fn wait_event(&self, kind: &str, transaction_id: Uuid, within: Duration) -> Value {
        eventually(within, &format!("{kind} for {transaction_id}"), || async {
            self.events_for(kind, transaction_id).into_iter().next()
        })
        .await
    }

    /// Waits until the action is final and returns its row.
    pub async fn wait_final(&self, transaction_id: Uuid, within: Duration) -> ActionRow {
        eventually(
            within,
            &format!("action {transaction_id} to finish"),
            || async {
                self.action(transaction_id)
                    .await
                    .filter(ActionRow::is_final)
            },
        )
        .await
    }

    /// A SQL count (for the harness; tests use the typed rows).
    pub async fn count(&self, sql: &str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let sql = sql.to_owned();
        db::run(&self.pool, move |c| {
            use diesel::RunQueryDsl;
            Ok(diesel::sql_query(sql).get_result::<N>(c)?.n)
        })
        .await
        .expect("count query")
    }

    /// Takes every message from the dead-letter queue.
    pub async fn dead_letters(&self) -> Vec<DeadLetter> {
        let ch = self.conn.create_channel().await.expect("channel");
        let mut out = Vec::new();
        while let Some(m) = ch
            .basic_get(
                self.topology.dead_queue.as_str().into(),
                BasicGetOptions::default(),
            )
            .await
            .expect("basic_get")
        {
            let headers = m.delivery.properties.headers().clone().unwrap_or_default();
            let error = match headers.inner().get("x-error") {
                Some(AMQPValue::LongString(s)) => s.to_string(),
                other => format!("{other:?}"),
            };
            out.push(DeadLetter {
                x_death: headers.inner().contains_key("x-death"),
                body: m.delivery.data.clone(),
                error,
                routing_key: m.delivery.routing_key.to_string(),
            });
            m.delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
        }
        out
    }

    /// Takes dead letters until at least `n` have arrived or `within`
    /// passes, and returns all it took (fewer than `n` on a timeout, so the
    /// caller can say which are missing).
    pub async fn wait_dead_letters(&self, n: usize, within: Duration) -> Vec<DeadLetter> {
        let deadline = tokio::time::Instant::now() + within;
        let mut all = Vec::new();
        loop {
            all.extend(self.dead_letters().await);
            if all.len() >= n || tokio::time::Instant::now() > deadline {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// No command waits in the action, batch or sync queue.
    pub async fn assert_no_commands_waiting(&self) {
        for queue in [
            &self.topology.actions_queue,
            &self.topology.batches_queue,
            &self.topology.sync_queue,
        ] {
            assert_eq!(self.depth(queue).await, 0, "commands waiting in {queue}");
        }
    }

    /// Messages waiting in a queue.
    pub async fn depth(&self, queue: &str) -> u32 {
        self.queue_state(queue)
            .await
            .map_or(0, |(messages, _)| messages)
    }

    /// Messages waiting in a queue (ready ones: a message delivered and not
    /// acked yet is counted again once its consumer is gone) and its
    /// consumers; None when the queue does not exist.
    pub async fn queue_state(&self, queue: &str) -> Option<(u32, u32)> {
        // None while the connection is down (a cluster losing a node).
        let ch = self.conn.create_channel().await.ok()?;
        let state = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map(|q| (q.message_count(), q.consumer_count()))
            .ok();
        // A channel a call: closed, not left open until the connection goes.
        let _ = ch.close(200, "done".into()).await;
        state
    }

    /// Stops the in-process workers and waits for them.
    pub async fn stop_workers(&mut self) {
        for (tx, handle) in self.workers.drain(..) {
            let _ = tx.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(15), handle).await;
        }
    }
}

impl Drop for TestSystem {
    fn drop(&mut self) {
        for (tx, handle) in self.workers.drain(..) {
            let _ = tx.send(true);
            handle.abort();
        }
        self.capture.abort();
        if self.brokers.is_some() {
            // The cluster is the test's own and goes with it.
            return;
        }
        let topology = self.topology.clone();
        // Delete this test's exchanges and queues from a thread of its own
        // (Drop cannot await).
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(conn) = haproxy_control::queue::connect(AMQP_URL, "test-cleanup").await
                    && let Ok(ch) = conn.create_channel().await
                {
                    let _ = topology.delete(&ch).await;
                    let _ = conn.close(200, "".into()).await;
                }
            });
        })
        .join();
    }
}
