//! The command line: one binary, one subcommand per role.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError};
use crate::fagent::server::{
    AgentSettings, BearerToken, SocketTarget, StateFileSettings, TlsAcceptor,
};
use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(name = "haproxy-control", version, about = "Controls the servers behind a fleet of HAProxy load balancers", long_about = None)]
pub struct Cli {
    /// Optional TOML file with settings; flags and environment variables win over it.
    #[arg(long, env = "HAPROXY_CONTROL_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// Log format on stderr.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "json",
        global = true
    )]
    pub log_format: LogFormat,

    /// PostgreSQL URL [default: postgres://postgres@127.0.0.1:5432/haproxy_control].
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// RabbitMQ URL [default: amqp://guest:guest@127.0.0.1:5672/%2f].
    #[arg(long, env = "AMQP_URL", global = true, hide_env_values = true)]
    pub amqp_url: Option<String>,

    /// The nodes of a RabbitMQ cluster, comma-separated URLs; wins over
    /// --amqp-url [default: none, --amqp-url].
    #[arg(long, env = "AMQP_URLS", global = true, hide_env_values = true)]
    pub amqp_urls: Option<String>,

    /// Prefix of every exchange and queue name (empty in production).
    #[arg(long, env = "AMQP_PREFIX", global = true)]
    pub amqp_prefix: Option<String>,

    /// Reconnection attempts after losing RabbitMQ before exiting non-zero [default: 12].
    #[arg(long, env = "AMQP_RECONNECT_ATTEMPTS", global = true)]
    pub amqp_reconnect_attempts: Option<usize>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the database migrations (also done by every worker at start).
    Migrate,
    /// Consume commands and apply them through the agents.
    Worker {
        #[command(flatten)]
        args: WorkerArgs,
        #[command(flatten)]
        metrics: MetricsArgs,
    },
    /// Publish a sync per active instance every interval, and prune old history.
    Scheduler {
        #[command(flatten)]
        args: SchedulerArgs,
        #[command(flatten)]
        metrics: MetricsArgs,
    },
    /// Run the webhook dispatcher alone (the worker runs it too unless
    /// `webhooks.dispatcher = false`; docs/webhooks.md).
    Webhooks,
    /// Every server-side role in one process: worker, scheduler and HTTP API.
    Serve(ServeArgs),
    /// Serve the HTTP API (reads PostgreSQL, publishes commands).
    Api(ApiArgs),
    /// Publish an `action` command (as AC does) and optionally wait for its outcome.
    Action(ActionArgs),
    /// Print status events from haproxy.events as JSON lines (a temporary queue bound with `#`).
    Events(EventsArgs),
    /// Register and list HAProxy instances.
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// Show and re-drive dead-lettered commands (haproxy.dead-letter).
    #[command(subcommand)]
    DeadLetters(DeadLettersCommand),
    /// Start, watch and steer rolling updates (docs/rollouts.md).
    #[command(subcommand)]
    Rollout(crate::rollout::cli::RolloutCommand),
    /// Run the reference FAgent next to one HAProxy: HTTP in front of its runtime API.
    Fagent(FagentArgs),
}

/// `--metrics-listen` of the processes that have no API listener.
#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Serve /healthz, /readyz and /metrics on this address [default: none].
    #[arg(long, env = "METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

impl MetricsArgs {
    pub fn apply(&self, c: &mut Config) {
        if let Some(v) = self.metrics_listen {
            c.metrics.listen = Some(v);
        }
    }
}

#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// Seconds between scheduled syncs of each instance [default: 60].
    #[arg(long, env = "SYNC_INTERVAL_SECS")]
    pub sync_interval_secs: Option<u64>,
    /// Days of status history kept [default: 30].
    #[arg(long, env = "HISTORY_RETENTION_DAYS")]
    pub history_retention_days: Option<u64>,
    /// Seconds between sweeps for stuck actions and batches; 0: none [default: 30].
    #[arg(long, env = "SWEEPER_INTERVAL_SECS")]
    pub sweeper_interval_secs: Option<u64>,
    /// Seconds before a `pending` action's command is published again [default: 120].
    #[arg(long, env = "SWEEPER_PENDING_GRACE_SECS")]
    pub sweeper_pending_grace_secs: Option<u64>,
    /// Seconds before a `running` action's command is published again [default: 600].
    #[arg(long, env = "SWEEPER_RUNNING_GRACE_SECS")]
    pub sweeper_running_grace_secs: Option<u64>,
    /// Seconds before an open batch with no action in flight is re-driven or
    /// completed [default: 900].
    #[arg(long, env = "SWEEPER_BATCH_GRACE_SECS")]
    pub sweeper_batch_grace_secs: Option<u64>,
    /// Re-publications of one action or batch before the sweeper leaves it [default: 5].
    #[arg(long, env = "SWEEPER_MAX_REPUBLISHES")]
    pub sweeper_max_republishes: Option<i32>,
}

impl SchedulerArgs {
    pub fn apply(&self, c: &mut Config) {
        if let Some(v) = self.sync_interval_secs {
            c.sync.interval_secs = v;
        }
        if let Some(v) = self.history_retention_days {
            c.sync.history_retention_days = v;
        }
        let w = &mut c.sweeper;
        for (flag, value) in [
            (self.sweeper_interval_secs, &mut w.interval_secs),
            (self.sweeper_pending_grace_secs, &mut w.pending_grace_secs),
            (self.sweeper_running_grace_secs, &mut w.running_grace_secs),
            (self.sweeper_batch_grace_secs, &mut w.batch_grace_secs),
        ] {
            if let Some(v) = flag {
                *value = v;
            }
        }
        if let Some(v) = self.sweeper_max_republishes {
            w.max_republishes = v;
        }
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub scheduler: SchedulerArgs,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Address the HTTP API listens on [default: 127.0.0.1:8088].
    #[arg(long, env = "API_LISTEN")]
    pub api_listen: Option<SocketAddr>,
    /// File of API tokens, one `role actor token` per line (role: viewer,
    /// operator or admin).
    #[arg(long, env = "API_TOKENS_FILE")]
    pub api_tokens_file: Option<PathBuf>,
    /// The only directory whose files an admin may name as an agent's token
    /// (`"fagent_token": "file:…"`) through the API [default: none, token
    /// values only].
    #[arg(long, env = "FAGENT_TOKEN_DIR")]
    pub fagent_token_dir: Option<PathBuf>,
}

impl ApiArgs {
    pub fn apply(&self, c: &mut Config) {
        if let Some(v) = self.api_listen {
            c.api.listen = v;
        }
        if let Some(v) = &self.api_tokens_file {
            c.api.tokens_file = Some(v.clone());
        }
        if let Some(v) = &self.fagent_token_dir {
            c.fagent.token_dir = Some(v.clone());
        }
    }
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// How server names are built from applications, for linking [default:
    /// {hostname}_{app_name}_{instance}].
    #[arg(long, env = "MAPPING_NAME_TEMPLATE")]
    pub name_template: Option<String>,
    /// Messages in flight per consumer [default: 1500].
    #[arg(long, env = "WORKER_PREFETCH")]
    pub prefetch: Option<u16>,
    /// The most action commands handled as one group; 1: one by one
    /// [default: 500].
    #[arg(long, env = "WORKER_GROUP_MAX")]
    pub group_max: Option<u16>,
    /// Groups of actions handled at once [default: 3].
    #[arg(long, env = "WORKER_GROUPS_IN_FLIGHT")]
    pub groups_in_flight: Option<u16>,
    /// Calls to an agent per action, the first included [default: 3].
    #[arg(long, env = "WORKER_MAX_ATTEMPTS")]
    pub max_attempts: Option<u32>,
    /// Waits before retries, comma-separated milliseconds [default: 1000,2000,4000].
    #[arg(long, env = "WORKER_RETRY_BACKOFF_MS", value_delimiter = ',')]
    pub retry_backoff_ms: Option<Vec<u64>>,
    /// Timeout of one agent call in milliseconds [default: 5000].
    #[arg(long, env = "WORKER_AGENT_TIMEOUT_MS")]
    pub agent_timeout_ms: Option<u64>,
    /// Consecutive failed calls that open an instance's breaker [default: 3].
    #[arg(long, env = "WORKER_BREAKER_FAILURES")]
    pub breaker_failures: Option<u32>,
    /// Seconds an open breaker fails fast before one probe [default: 60].
    #[arg(long, env = "WORKER_BREAKER_OPEN_SECS")]
    pub breaker_open_secs: Option<u64>,
    /// The worker's connections to PostgreSQL: 16 for syncs, batches,
    /// rollouts and the webhook dispatcher, the rest for actions at once (at
    /// most the prefetch); at least 17 [default: 22].
    #[arg(long, env = "DATABASE_POOL_SIZE")]
    pub pool_size: Option<u32>,
    /// PEM file of the CA certificates agents' HTTPS certificates must
    /// chain to [default: the system's roots].
    #[arg(long, env = "WORKER_AGENT_CA_FILE")]
    pub agent_ca_file: Option<PathBuf>,
    /// Seconds a command's `requested_at` may be ahead of the database's
    /// clock; a command further ahead is dead-lettered [default: 60].
    #[arg(long, env = "WORKER_CLOCK_TOLERANCE_SECS")]
    pub clock_tolerance_secs: Option<u64>,
    /// How long a statement waits for a lock (a server's included), in ms;
    /// 0: no limit [default: 10000].
    #[arg(long, env = "DATABASE_LOCK_TIMEOUT_MS")]
    pub lock_timeout_ms: Option<u64>,
    /// How long a statement may run, in ms; 0: no limit [default: 60000].
    #[arg(long, env = "DATABASE_STATEMENT_TIMEOUT_MS")]
    pub statement_timeout_ms: Option<u64>,
}

impl WorkerArgs {
    pub fn apply(&self, c: &mut Config) {
        if let Some(v) = &self.name_template {
            c.sync.name_template = v.clone();
        }
        let w = &mut c.worker;
        if let Some(v) = self.prefetch {
            w.prefetch = v;
        }
        if let Some(v) = self.group_max {
            w.group_max = v;
        }
        if let Some(v) = self.groups_in_flight {
            w.groups_in_flight = v;
        }
        if let Some(v) = self.max_attempts {
            w.max_attempts = v;
        }
        if let Some(v) = &self.retry_backoff_ms {
            w.retry_backoff_ms = v.clone();
        }
        if let Some(v) = self.agent_timeout_ms {
            w.agent_timeout_ms = v;
        }
        if let Some(v) = self.breaker_failures {
            w.breaker_failures = v;
        }
        if let Some(v) = self.breaker_open_secs {
            w.breaker_open_secs = v;
        }
        if let Some(v) = self.pool_size {
            c.database.pool_size = v;
        }
        if let Some(v) = &self.agent_ca_file {
            c.worker.agent_ca_file = Some(v.clone());
        }
        if let Some(v) = self.clock_tolerance_secs {
            c.worker.clock_tolerance_secs = v;
        }
        if let Some(v) = self.lock_timeout_ms {
            c.database.lock_timeout_ms = v;
        }
        if let Some(v) = self.statement_timeout_ms {
            c.database.statement_timeout_ms = v;
        }
    }
}

#[derive(Debug, Args)]
pub struct ActionArgs {
    /// `ready`, `drain` or `maint`.
    #[arg(long)]
    pub state: String,
    /// The server's id (`haproxy_servers.id`).
    #[arg(long, conflicts_with_all = ["instance", "backend", "server"])]
    pub server_id: Option<i64>,
    /// Instance name (with --backend and --server).
    #[arg(long, requires_all = ["backend", "server"])]
    pub instance: Option<String>,
    /// Backend name.
    #[arg(long)]
    pub backend: Option<String>,
    /// Server name.
    #[arg(long)]
    pub server: Option<String>,
    /// Who asks [default: cli:$USER].
    #[arg(long)]
    pub actor: Option<String>,
    /// Why.
    #[arg(long)]
    pub reason: Option<String>,
    /// Take the last ready server of a backend out anyway.
    #[arg(long)]
    pub force: bool,
    /// Seconds to wait for the outcome (read from PostgreSQL); 0 to return at once.
    #[arg(long, default_value_t = 30)]
    pub wait: u64,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Routing-key pattern, e.g. `action.*` or `server.#`.
    #[arg(long, default_value = "#")]
    pub pattern: String,
    /// Stop after this many events (0: run until interrupted).
    #[arg(long, default_value_t = 0)]
    pub count: usize,
}

#[derive(Debug, Subcommand)]
pub enum InstanceCommand {
    /// Register an HAProxy instance (or update the one with that name) and
    /// load its backends and servers from its agent.
    Add(InstanceAddArgs),
    /// List registered instances with their breaker and last sync.
    List,
}

#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// Print dead-lettered messages as JSON lines (routing key, transaction
    /// id, `x-error`, `x-death`); they stay in the queue.
    List(DeadLettersListArgs),
    /// Publish dead-lettered commands again on the commands exchange with
    /// their routing key; each leaves the dead-letter queue once the broker
    /// confirmed its publication.
    Replay(DeadLettersReplayArgs),
}

#[derive(Debug, Args)]
pub struct DeadLettersListArgs {
    /// At most this many messages, oldest first.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct DeadLettersReplayArgs {
    /// Every dead-lettered message.
    #[arg(long)]
    pub all: bool,
    /// Only the messages of this transaction id.
    #[arg(long)]
    pub transaction_id: Option<uuid::Uuid>,
}

#[derive(Debug, Args)]
pub struct InstanceAddArgs {
    /// Unique name, e.g. `lb-1` (letters, digits, `.`, `_`, `:`, `-`).
    #[arg(long)]
    pub name: String,
    /// Base URL of the instance's fagent, e.g. `http://10.0.0.5:9100`.
    #[arg(long)]
    pub fagent_url: String,
    /// The agent's token is in this file (read whenever it is used).
    #[arg(long, group = "token_source")]
    pub token_file: Option<PathBuf>,
    /// The agent's token is in this environment variable of the worker.
    #[arg(long, group = "token_source")]
    pub token_env: Option<String>,
    /// The agent's token itself (stored in the database).
    #[arg(long, group = "token_source", hide_env_values = true)]
    pub token: Option<String>,
    /// The AC server (`servers.id`) this instance runs on.
    #[arg(long)]
    pub server_id: Option<i64>,
    /// Register it inactive (no commands or syncs go to it).
    #[arg(long)]
    pub inactive: bool,
    /// Re-apply drains and maints the module applied when a reload of HAProxy reset them
    /// (`true` or `false`; default false for a new instance, unchanged when absent).
    #[arg(long, value_name = "BOOL")]
    pub restore_after_reload: Option<bool>,
}

impl InstanceAddArgs {
    /// The stored token reference.
    ///
    /// # Errors
    /// When no token source was given.
    pub fn token_ref(&self) -> Result<String, ConfigError> {
        match (&self.token_file, &self.token_env, &self.token) {
            (Some(p), _, _) => Ok(format!("file:{}", p.display())),
            (_, Some(v), _) => Ok(format!("env:{v}")),
            (_, _, Some(t)) => Ok(format!("token:{t}")),
            _ => Err(ConfigError::Invalid(
                "give the agent token with --token-file, --token-env or --token".into(),
            )),
        }
    }
}

impl Cli {
    /// Applies the global connection flags to `config`.
    pub fn apply(&self, config: &mut Config) {
        if let Some(v) = &self.database_url {
            config.database.url = v.clone();
        }
        // A stronger source wins; within one, the list wins over the URL.
        if let Some(v) = &self.amqp_urls {
            config.amqp.urls = Some(v.split(',').map(str::to_owned).collect());
        } else if let Some(v) = &self.amqp_url {
            config.amqp.url = v.clone();
            config.amqp.urls = None;
        }
        if let Some(v) = &self.amqp_prefix {
            config.amqp.prefix = v.clone();
        }
        if let Some(v) = self.amqp_reconnect_attempts {
            config.amqp.reconnect_attempts = v;
        }
    }
}

#[derive(Debug, Args)]
pub struct FagentArgs {
    /// Address to listen on [default: 127.0.0.1:9100].
    #[arg(long, env = "FAGENT_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// HAProxy's stats socket, `level admin`: a unix path (`/run/haproxy/admin.sock`,
    /// `unix:rel.sock`) or a TCP address (`127.0.0.1:9999`, `tcp:lb1:9999`)
    /// [default: /run/haproxy/admin.sock].
    #[arg(long, env = "FAGENT_HAPROXY_SOCKET")]
    pub haproxy_socket: Option<String>,

    /// File holding the bearer token clients must present.
    #[arg(long, env = "FAGENT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// The bearer token itself (prefer --token-file: the environment of a
    /// process is visible to its user).
    #[arg(
        long = "token",
        env = "FAGENT_TOKEN",
        hide_env_values = true,
        hide = true
    )]
    pub token: Option<String>,

    /// Timeout of one runtime-API command, in milliseconds [default: 5000].
    #[arg(long, env = "FAGENT_SOCKET_TIMEOUT_MS")]
    pub socket_timeout_ms: Option<u64>,

    /// Runtime-API connections open at once; keep it under HAProxy's
    /// `stats maxconn` (10 by default) [default: 8].
    #[arg(long, env = "FAGENT_SOCKET_CONCURRENCY")]
    pub socket_concurrency: Option<usize>,

    /// How many transaction ids are remembered so a repeat gets the first
    /// answer [default: 10000].
    #[arg(long, env = "FAGENT_IDEMPOTENCY_CAPACITY")]
    pub idempotency_capacity: Option<usize>,

    /// Keep HAProxy's server-state file at this path (the `server-state-file`
    /// of haproxy.cfg): `show servers state` written atomically at start,
    /// after every applied change and every --state-file-interval seconds,
    /// so a reload keeps drains and maints [default: none].
    #[arg(long, env = "FAGENT_STATE_FILE")]
    pub state_file: Option<PathBuf>,

    /// Seconds between writes of the state file besides those after each
    /// change [default: 30].
    #[arg(long, env = "FAGENT_STATE_FILE_INTERVAL")]
    pub state_file_interval: Option<u64>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key)
    /// [default: plain HTTP].
    #[arg(long, env = "FAGENT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, env = "FAGENT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl FagentArgs {
    /// Resolves flags, environment and config file into the agent's settings.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when the socket address or token is missing
    /// or malformed.
    pub fn settings(&self, config: &Config) -> Result<(SocketAddr, AgentSettings), ConfigError> {
        let c = &config.fagent;
        let listen = self.listen.unwrap_or(c.listen);
        let socket: SocketTarget = self
            .haproxy_socket
            .as_deref()
            .unwrap_or(&c.socket)
            .parse()
            .map_err(ConfigError::Invalid)?;
        let token = match (
            &self.token,
            self.token_file.as_ref().or(c.token_file.as_ref()),
        ) {
            (Some(token), _) => token.clone(),
            (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
                ConfigError::Invalid(format!("cannot read token file {}: {e}", path.display()))
            })?,
            (None, None) => {
                return Err(ConfigError::Invalid(
                    "no agent token: set FAGENT_TOKEN or --token-file".into(),
                ));
            }
        };
        let token = BearerToken::new(&token).map_err(ConfigError::Invalid)?;
        let state_file = self.state_file_settings(c)?;
        Ok((
            listen,
            AgentSettings {
                socket,
                socket_timeout: Duration::from_millis(
                    self.socket_timeout_ms.unwrap_or(c.socket_timeout_ms),
                ),
                socket_concurrency: self.socket_concurrency.unwrap_or(c.socket_concurrency),
                token,
                idempotency_capacity: self.idempotency_capacity.unwrap_or(c.idempotency_capacity),
                state_file,
            },
        ))
    }

    fn state_file_settings(
        &self,
        c: &crate::config::FagentConfig,
    ) -> Result<Option<StateFileSettings>, ConfigError> {
        let Some(path) = self.state_file.as_ref().or(c.state_file.as_ref()) else {
            return Ok(None);
        };
        if path.file_name().is_none() {
            return Err(ConfigError::Invalid(format!(
                "state file {} names no file",
                path.display()
            )));
        }
        let secs = self
            .state_file_interval
            .unwrap_or(c.state_file_interval_secs);
        if secs == 0 {
            return Err(ConfigError::Invalid(
                "the state file interval must be at least 1 second".into(),
            ));
        }
        Ok(Some(StateFileSettings {
            path: path.clone(),
            interval: Duration::from_secs(secs),
        }))
    }
}

impl FagentArgs {
    /// The TLS the agent serves with, from flags, environment or config
    /// file; None for plain HTTP.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when only one of certificate and key is
    /// given, or they cannot be read or do not match.
    pub fn tls(&self, config: &Config) -> Result<Option<TlsAcceptor>, ConfigError> {
        let c = &config.fagent;
        match (
            self.tls_cert.as_ref().or(c.tls_cert.as_ref()),
            self.tls_key.as_ref().or(c.tls_key.as_ref()),
        ) {
            (Some(cert), Some(key)) => TlsAcceptor::from_pem_files(cert, key)
                .map(Some)
                .map_err(ConfigError::Invalid),
            (None, None) => Ok(None),
            _ => Err(ConfigError::Invalid(
                "the agent's TLS needs both a certificate and a key (--tls-cert, --tls-key)".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn broker_urls_the_list_wins_and_a_stronger_source_wins() {
        let file = |c: &mut Config| {
            c.amqp.urls = Some(vec![
                "amqp://g:g@file1:1/%2f".into(),
                "amqp://g:g@file2:2/%2f".into(),
            ]);
        };
        let addresses = |args: &[&str]| {
            let mut argv = vec!["haproxy-control"];
            argv.extend_from_slice(args);
            argv.push("migrate");
            let mut c = Config::default();
            file(&mut c);
            Cli::parse_from(argv).apply(&mut c);
            c.amqp
                .brokers()
                .map(|b| b.addresses())
                .map_err(|e| e.to_string())
        };
        // The file's list, when nothing stronger is given.
        assert_eq!(addresses(&[]), Ok(vec!["file1:1".into(), "file2:2".into()]));
        // The single URL of the environment or a flag beats the file's list.
        assert_eq!(
            addresses(&["--amqp-url", "amqp://g:g@one:3/%2f"]),
            Ok(vec!["one:3".into()])
        );
        // Both given at once: the list.
        assert_eq!(
            addresses(&[
                "--amqp-url",
                "amqp://g:g@one:3/%2f",
                "--amqp-urls",
                "amqp://g:g@a:4/%2f,amqp://g:g@b:5/%2f"
            ]),
            Ok(vec!["a:4".into(), "b:5".into()])
        );
        let e = addresses(&["--amqp-urls", "amqp://g:pw@a:4/%2f,,amqp://g:pw@b:5/%2f"])
            .expect_err("empty entry");
        assert_eq!(e, "amqp.urls (AMQP_URLS) entry 2 is empty");
        let e = addresses(&["--amqp-urls", "amqp://g:pw@a:4/%2f,amqp://g:pw@b:port/%2f"])
            .expect_err("malformed");
        assert!(
            e.starts_with(
                "amqp.urls (AMQP_URLS) entry 2 (amqp://g:***@b:port/%2f) is not an AMQP URL"
            ),
            "{e}"
        );
        assert!(!e.contains("pw"), "{e}");
        let mut c = Config::default();
        c.amqp.urls = Some(Vec::new());
        let e = c.amqp.brokers().expect_err("empty list").to_string();
        assert!(e.contains("amqp.urls (AMQP_URLS) is empty"), "{e}");
        // Nothing given: the default single node.
        assert_eq!(
            Config::default().amqp.brokers().map(|b| b.addresses()).ok(),
            Some(vec!["127.0.0.1:5672".to_owned()])
        );
    }

    #[test]
    fn worker_flags_override_the_config() {
        let cli = Cli::parse_from([
            "haproxy-control",
            "--amqp-prefix",
            "t.",
            "worker",
            "--prefetch",
            "8",
            "--retry-backoff-ms",
            "10,20",
            "--breaker-open-secs",
            "2",
        ]);
        let mut c = Config::default();
        cli.apply(&mut c);
        let Command::Worker { args: w, metrics } = &cli.command else {
            panic!("parsed as worker");
        };
        w.apply(&mut c);
        metrics.apply(&mut c);
        assert_eq!((c.amqp.prefix.as_str(), c.worker.prefetch), ("t.", 8));
        assert_eq!(c.worker.retry_backoff_ms, vec![10, 20]);
        assert_eq!(c.worker.breaker_open_secs, 2);
        assert_eq!(c.worker.max_attempts, 3);
    }

    #[test]
    fn sweeper_flags_override_the_config_and_replay_needs_a_choice() {
        let cli = Cli::parse_from([
            "haproxy-control",
            "scheduler",
            "--sweeper-pending-grace-secs",
            "7",
            "--sweeper-max-republishes",
            "2",
        ]);
        let mut c = Config::default();
        let Command::Scheduler { args, .. } = &cli.command else {
            panic!("parsed as scheduler");
        };
        args.apply(&mut c);
        assert_eq!(c.sweeper.pending_grace_secs, 7);
        assert_eq!(c.sweeper.max_republishes, 2);
        assert_eq!(c.sweeper.running_grace_secs, 600);
        let replay = |extra: &[&str]| {
            let mut argv = vec!["haproxy-control", "dead-letters", "replay"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv)
        };
        assert!(replay(&[]).is_err());
        assert!(
            replay(&[
                "--all",
                "--transaction-id",
                "5f0c6f4e-1b7e-4a52-9d0e-2f4f2a8f3c11"
            ])
            .is_err()
        );
        assert!(replay(&["--transaction-id", "not-a-uuid"]).is_err());
        assert!(replay(&["--all"]).is_ok());
    }

    #[test]
    fn api_flags_override_the_config() {
        let cli = Cli::parse_from([
            "haproxy-control",
            "serve",
            "--api-listen",
            "127.0.0.1:9000",
            "--api-tokens-file",
            "/etc/t",
        ]);
        let mut c = Config::default();
        let Command::Serve(args) = &cli.command else {
            panic!("parsed as serve");
        };
        args.api.apply(&mut c);
        assert_eq!(c.api.listen.port(), 9000);
        assert_eq!(c.api.tokens_file, Some(PathBuf::from("/etc/t")));
    }

    #[test]
    fn fagent_needs_a_token() {
        let cli = Cli::parse_from([
            "haproxy-control",
            "fagent",
            "--haproxy-socket",
            "/tmp/x.sock",
        ]);
        let Command::Fagent(args) = cli.command else {
            panic!("parsed as fagent");
        };
        if args.token.is_none() {
            let err = args
                .settings(&Config::default())
                .err()
                .map(|e| e.to_string());
            assert!(err.is_some_and(|e| e.contains("token")));
        }
    }

    #[test]
    fn fagent_state_file_flags_override_the_config() {
        let parse = |extra: &[&str]| {
            let mut argv = vec![
                "haproxy-control",
                "fagent",
                "--haproxy-socket",
                "/tmp/x.sock",
                "--token",
                "secret-token-123",
            ];
            argv.extend_from_slice(extra);
            let Command::Fagent(args) = Cli::parse_from(argv).command else {
                panic!("parsed as fagent");
            };
            args
        };
        let mut c = Config::default();
        let none = parse(&[]).settings(&c).expect("settings");
        assert_eq!(none.1.state_file, None);
        c.fagent.state_file = Some(PathBuf::from("/var/lib/haproxy/state"));
        let from_config = parse(&[]).settings(&c).expect("settings").1.state_file;
        assert_eq!(
            from_config,
            Some(StateFileSettings {
                path: "/var/lib/haproxy/state".into(),
                interval: Duration::from_secs(30)
            })
        );
        let flags = parse(&["--state-file", "/tmp/s", "--state-file-interval", "5"])
            .settings(&c)
            .expect("settings")
            .1
            .state_file;
        assert_eq!(
            flags,
            Some(StateFileSettings {
                path: "/tmp/s".into(),
                interval: Duration::from_secs(5)
            })
        );
        assert!(parse(&["--state-file-interval", "0"]).settings(&c).is_err());
        assert!(parse(&["--state-file", "/"]).settings(&c).is_err());
    }
}
