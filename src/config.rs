//! One `Config` for every role. Values come, strongest first, from command
//! line flags, environment variables (clap reads both), an optional TOML file
//! (`--config`), and built-in defaults that work on a local machine.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub database: DatabaseConfig,
    pub amqp: AmqpConfig,
    pub worker: WorkerConfig,
    pub sync: SyncConfig,
    pub sweeper: SweeperConfig,
    pub rollout: RolloutConfig,
    pub fagent: FagentConfig,
    pub api: ApiConfig,
    pub webhooks: WebhooksConfig,
    pub metrics: MetricsConfig,
}

/// PostgreSQL.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: String,
    /// The worker's pool: 16 connections for its syncs, batches, rollouts
    /// and webhook dispatcher, the rest for actions processed at once (at
    /// most the prefetch); a worker refuses to start with fewer than 17.
    /// Three workers (3 × 22), the API (`api.pool_size`, 8) and the
    /// scheduler (2) use at most 76 connections ("Connections" in
    /// docs/operations.md).
    pub pool_size: u32,
    /// The worker's sessions: how long one statement waits for a lock (a
    /// server's advisory lock included) before it fails and the message is
    /// retried, in ms; 0: no limit.
    pub lock_timeout_ms: u64,
    /// The worker's sessions: how long one statement may run, in ms; 0: no
    /// limit.
    pub statement_timeout_ms: u64,
}

impl DatabaseConfig {
    /// The session settings of the worker's connections.
    pub fn worker_session(&self) -> crate::db::SessionSettings {
        let limit = |ms: u64| (ms > 0).then(|| std::time::Duration::from_millis(ms));
        crate::db::SessionSettings {
            async_commit: true,
            lock_timeout: limit(self.lock_timeout_ms),
            statement_timeout: limit(self.statement_timeout_ms),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/haproxy_control".into(),
            pool_size: 22,
            lock_timeout_ms: 10_000,
            statement_timeout_ms: 60_000,
        }
    }
}

/// RabbitMQ.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    /// One broker node. Ignored when `urls` is given.
    pub url: String,
    /// The nodes of a RabbitMQ cluster: every role connects to the first
    /// that answers and, when it loses it, to another (round-robin). All
    /// with the same scheme, user, password and virtual host; given, it
    /// wins over `url` (an empty list is an error).
    pub urls: Option<Vec<String>>,
    /// Put in front of every exchange and queue name (tests use it to get
    /// their own topology; production leaves it empty).
    pub prefix: String,
    /// Deliveries of one message before RabbitMQ dead-letters it.
    pub delivery_limit: u32,
    /// Reconnection attempts after the broker connection is lost (backoff
    /// 0.5 s doubling to 5 s); when they are used up the role exits non-zero.
    pub reconnect_attempts: usize,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            urls: None,
            prefix: String::new(),
            delivery_limit: 5,
            reconnect_attempts: 12,
        }
    }
}

impl AmqpConfig {
    /// The broker addresses roles connect to: `urls` when given, else `url`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the bad entry (without credentials).
    pub fn brokers(&self) -> Result<crate::queue::Brokers, ConfigError> {
        let parsed = match &self.urls {
            Some(urls) => crate::queue::Brokers::parse("amqp.urls (AMQP_URLS)", urls),
            None => crate::queue::Brokers::parse("amqp.url (AMQP_URL)", &[&self.url]),
        };
        parsed.map_err(|e| ConfigError::Invalid(e.0))
    }
}

/// The worker: consuming, calling agents, retries, the breaker.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Unacknowledged messages per consumer. Of the actions among them, as
    /// many run at once as `database.pool_size` allows; the others wait.
    pub prefetch: u16,
    /// Calls to an agent per action, the first included.
    pub max_attempts: u32,
    /// Delay before retry n is the n-th entry (the last repeats), in ms.
    pub retry_backoff_ms: Vec<u64>,
    /// Timeout of one call to an agent (ms).
    pub agent_timeout_ms: u64,
    /// Consecutive failed calls that open an instance's breaker.
    pub breaker_failures: u32,
    /// How long an open breaker fails calls fast before one probe (s).
    pub breaker_open_secs: u64,
    /// PEM file of the CA certificates that agents' HTTPS certificates are
    /// verified against; none: the system's roots.
    pub agent_ca_file: Option<PathBuf>,
    /// How far in the future (by the database's clock) a command's
    /// `requested_at` may be before the command is refused as bad input (s).
    pub clock_tolerance_secs: u64,
    /// The most action commands handled as one group (one agent call per
    /// instance, one statement per phase); 1 handles each alone.
    pub group_max: u16,
    /// Groups of actions handled at once; a delivery waits for a group
    /// only while this many run, so a light load makes groups of one.
    pub groups_in_flight: u16,
}

impl WorkerConfig {
    /// An upper bound of one action's time in a worker, in seconds: every
    /// call timing out, every backoff waited, and a lock wait per call.
    pub fn longest_action_secs(&self, lock_timeout_ms: u64) -> u64 {
        let attempts = u64::from(self.max_attempts.max(1));
        let waits: u64 = (0..attempts.saturating_sub(1))
            .map(|i| {
                let i = usize::try_from(i).unwrap_or(usize::MAX);
                let last = self.retry_backoff_ms.last().copied().unwrap_or(0);
                self.retry_backoff_ms.get(i).copied().unwrap_or(last)
            })
            .sum();
        let calls = attempts.saturating_mul(self.agent_timeout_ms.saturating_add(lock_timeout_ms));
        calls.saturating_add(waits).div_ceil(1000)
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            prefetch: 1500,
            max_attempts: 3,
            retry_backoff_ms: vec![1_000, 2_000, 4_000],
            agent_timeout_ms: 5_000,
            breaker_failures: 3,
            breaker_open_secs: 60,
            agent_ca_file: None,
            clock_tolerance_secs: 60,
            group_max: 500,
            groups_in_flight: 3,
        }
    }
}

/// Sync, scheduler, history retention and application mapping.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncConfig {
    /// Seconds between scheduled syncs of each active instance.
    pub interval_secs: u64,
    /// Days of status history kept; older rows are deleted by the scheduler.
    pub history_retention_days: u64,
    /// Rows deleted per statement when pruning history.
    pub retention_batch: i64,
    /// How a server's name is built from its application, for linking:
    /// placeholders `{hostname}`, `{app_name}`, `{instance}`.
    pub name_template: String,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            interval_secs: 60,
            history_retention_days: 30,
            retention_batch: 1_000,
            name_template: "{hostname}_{app_name}_{instance}".into(),
        }
    }
}

/// Rolling updates: where update hooks may come from, and how Ansible is run.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutConfig {
    /// Playbooks of `kind: ansible` hooks must be inside this directory;
    /// none: `ansible` hooks are refused.
    pub playbook_dir: Option<PathBuf>,
    /// Programs `kind: command` hooks may run (absolute paths); empty:
    /// `command` hooks are refused.
    pub commands: Vec<PathBuf>,
    /// The `ansible-playbook` program.
    pub ansible_playbook: PathBuf,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            playbook_dir: None,
            commands: Vec::new(),
            ansible_playbook: PathBuf::from("ansible-playbook"),
        }
    }
}

impl RolloutConfig {
    /// The hook allow-list.
    pub fn policy(&self) -> crate::domain::rollout_hook::HookPolicy {
        crate::domain::rollout_hook::HookPolicy {
            playbook_dir: self.playbook_dir.clone(),
            commands: self.commands.clone(),
        }
    }
}

/// The scheduler's sweeper: unfinished actions and batches are re-published
/// or finished after a grace period (times from PostgreSQL's clock).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SweeperConfig {
    /// Seconds between sweeps (0: no sweeping).
    pub interval_secs: u64,
    /// Seconds an action may stay `pending` (recorded by the API, its
    /// command not handled yet) before its command is published again.
    pub pending_grace_secs: u64,
    /// Seconds an action may stay `running` (its worker gone) before its
    /// command is published again; keep it well above a worker's longest
    /// action (see [`WorkerConfig::longest_action_secs`]).
    pub running_grace_secs: u64,
    /// Seconds a batch may stay open with none of its actions in flight
    /// before it is re-driven or completed.
    pub batch_grace_secs: u64,
    /// Re-publications of one action or batch before the sweeper leaves it
    /// (logged as an error, counted as `given_up`).
    pub max_republishes: i32,
    /// Rows taken up per kind and sweep.
    pub batch_size: i64,
}

impl Default for SweeperConfig {
    fn default() -> Self {
        Self {
            interval_secs: 30,
            pending_grace_secs: 120,
            running_grace_secs: 600,
            batch_grace_secs: 900,
            max_republishes: 5,
            batch_size: 500,
        }
    }
}

/// Webhooks and callback URLs (docs/webhooks.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Whether `worker` runs the webhook dispatcher (`haproxy-control
    /// webhooks` runs it alone).
    pub dispatcher: bool,
    /// Let deliveries go to loopback, private, link-local and other
    /// non-public addresses (tests; a private network of receivers).
    pub allow_private_targets: bool,
    /// Timeout of one delivery attempt, connecting included (ms).
    pub timeout_ms: u64,
    /// Waits before each attempt (ms): the first attempt's, then after each
    /// failure; when they run out the delivery has failed.
    pub retry_schedule_ms: Vec<u64>,
    /// Each wait moves by up to ± this fraction of itself.
    pub retry_jitter: f64,
    /// The longest `Retry-After` (429, 503) honoured (s).
    pub retry_after_cap_secs: u64,
    /// An endpoint whose every attempt failed for this long is disabled
    /// and `webhook.disabled` is published (hours).
    pub disable_after_hours: f64,
    /// How long the secret before a rotation keeps signing (hours).
    pub rotation_grace_hours: f64,
    /// The secret callback URLs are signed with: `whsec_…`, or a reference
    /// `file:/path` or `env:NAME` to it. None: requests with a
    /// `callback_url` are refused.
    pub callback_secret: Option<String>,
    /// Deliveries attempted at once per dispatcher.
    pub concurrency: usize,
    /// How often the dispatcher looks for due deliveries when nothing wakes
    /// it (ms).
    pub poll_interval_ms: u64,
    /// Days finished deliveries are kept.
    pub retention_days: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            dispatcher: true,
            allow_private_targets: false,
            timeout_ms: 15_000,
            retry_schedule_ms: vec![
                0, 5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000,
            ],
            retry_jitter: 0.1,
            retry_after_cap_secs: 3_600,
            disable_after_hours: 72.0,
            rotation_grace_hours: 24.0,
            callback_secret: None,
            concurrency: 16,
            poll_interval_ms: 1_000,
            retention_days: 30,
        }
    }
}

impl WebhooksConfig {
    /// The retry schedule.
    pub fn schedule(&self) -> crate::domain::webhook::RetrySchedule {
        crate::domain::webhook::RetrySchedule {
            delays: self
                .retry_schedule_ms
                .iter()
                .map(|ms| std::time::Duration::from_millis(*ms))
                .collect(),
            jitter: self.retry_jitter,
            retry_after_cap: std::time::Duration::from_secs(self.retry_after_cap_secs),
        }
    }

    /// The callback secret, read from its reference when it is one.
    ///
    /// # Errors
    /// A message naming the reference (never the secret) when it cannot
    /// be read; a value that is not `whsec_` + base64 of 24 to 64 bytes.
    pub fn callback_secret(&self) -> Result<Option<String>, String> {
        let Some(raw) = self.callback_secret.as_deref() else {
            return Ok(None);
        };
        let secret = if raw.starts_with("file:") || raw.starts_with("env:") {
            crate::fagent::token_ref::resolve(raw)
                .map_err(|e| format!("webhooks.callback_secret: {e}"))?
        } else {
            raw.trim().to_owned()
        };
        crate::webhooks::signing::SigningKey::parse(&secret)
            .map_err(|e| format!("webhooks.callback_secret: {e}"))?;
        Ok(Some(secret))
    }
}

/// The reference agent (`haproxy-control fagent`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FagentConfig {
    /// Address the agent listens on.
    pub listen: SocketAddr,
    /// HAProxy's stats socket: a unix path or `host:port`.
    pub socket: String,
    /// File holding the bearer token (the `FAGENT_TOKEN` variable wins).
    pub token_file: Option<PathBuf>,
    /// How long one runtime-API command may take.
    pub socket_timeout_ms: u64,
    /// Runtime-API connections open at once; keep it under HAProxy's
    /// `stats maxconn` (10 by default).
    pub socket_concurrency: usize,
    /// How many transaction ids are remembered for replays.
    pub idempotency_capacity: usize,
    /// HAProxy's server-state file, kept by the agent so a reload keeps
    /// runtime states (HAProxy's `server-state-file`); none by default.
    pub state_file: Option<PathBuf>,
    /// Seconds between writes of the state file besides those after each
    /// change.
    pub state_file_interval_secs: u64,
    /// The only directory whose files `PUT /api/servers/{id}/haproxy` may
    /// name as `file:` token references (read by the API; none: the API
    /// takes token values only).
    pub token_dir: Option<PathBuf>,
    /// PEM certificate chain the agent serves HTTPS with (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

impl Default for FagentConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9100)),
            socket: "/run/haproxy/admin.sock".into(),
            token_file: None,
            socket_timeout_ms: 5_000,
            socket_concurrency: 8,
            idempotency_capacity: 10_000,
            state_file: None,
            state_file_interval_secs: 30,
            token_dir: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// Metrics (docs/operations.md, "Health, metrics and errors").
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `worker` and `scheduler` serve `/healthz`, `/readyz` and
    /// `/metrics` (none when absent). `serve` and `api` serve them on the
    /// API's listener instead.
    pub listen: Option<SocketAddr>,
    /// The API's `/metrics` reads its database and broker gauges at most
    /// this often, in seconds, and serves them cached in between.
    pub cache_secs: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: None,
            cache_secs: 5,
        }
    }
}

/// The HTTP API (`haproxy-control api`, also run by `serve`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Address the API listens on.
    pub listen: SocketAddr,
    /// Bearer tokens, each with the actor it acts as and its role.
    pub tokens: Vec<ApiTokenConfig>,
    /// A file of more tokens, one `role actor token` per line (`#` starts a
    /// comment); read at start.
    pub tokens_file: Option<PathBuf>,
    /// Connections to PostgreSQL.
    pub pool_size: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8088)),
            tokens: Vec::new(),
            tokens_file: None,
            pool_size: 8,
        }
    }
}

/// One API token: the secret (inline or in a file), who it is, what it may do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTokenConfig {
    /// The token itself (prefer `token_file`).
    #[serde(default)]
    pub token: Option<String>,
    /// A file holding the token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Recorded as the `actor` of what the token asks for, e.g. `user:alice`.
    pub actor: String,
    pub role: ApiRole,
}

/// What an API token may do; each role includes the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ApiRole {
    /// Reads.
    Viewer,
    /// Reads, actions, batches and syncs.
    Operator,
    /// An operator who may also approve or reject others' held requests.
    Approver,
    /// Everything, settings included.
    Admin,
}

impl ApiRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiRole::Viewer => "viewer",
            ApiRole::Operator => "operator",
            ApiRole::Approver => "approver",
            ApiRole::Admin => "admin",
        }
    }
}

impl std::str::FromStr for ApiRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(ApiRole::Viewer),
            "operator" => Ok(ApiRole::Operator),
            "approver" => Ok(ApiRole::Approver),
            "admin" => Ok(ApiRole::Admin),
            other => Err(format!(
                "role {other:?} is not one of viewer, operator, approver, admin"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Defaults, overlaid with the TOML file when one is given.
    ///
    /// # Errors
    /// [`ConfigError`] when the file cannot be read or has unknown or
    /// ill-typed keys.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_locally_and_the_file_overrides_them() {
        let c = Config::default();
        assert_eq!(c.fagent.listen.port(), 9100);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[fagent]\nsocket = \"127.0.0.1:9999\"\n").expect("write");
        let c = Config::load(Some(&path)).expect("load");
        assert_eq!(c.fagent.socket, "127.0.0.1:9999");
        assert_eq!(c.fagent.idempotency_capacity, 10_000);
    }

    #[test]
    fn api_tokens_are_read_from_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[api]\nlisten = \"127.0.0.1:9999\"\ntokens = [{ token = \"t\", actor = \"user:alice\", role = \"operator\" }, \
             { token_file = \"/x\", actor = \"user:bob\", role = \"admin\" }]\n",
        )
        .expect("write");
        let c = Config::load(Some(&path)).expect("load");
        assert_eq!(c.api.listen.port(), 9999);
        assert_eq!(c.api.tokens.len(), 2);
        assert_eq!(c.api.tokens[1].role, ApiRole::Admin);
        assert!(ApiRole::Viewer < ApiRole::Operator && ApiRole::Operator < ApiRole::Admin);
        std::fs::write(
            &path,
            "[api]\ntokens = [{ token = \"t\", actor = \"a\", role = \"root\" }]\n",
        )
        .expect("write");
        assert!(Config::load(Some(&path)).is_err());
    }

    #[test]
    fn the_longest_action_bounds_calls_waits_and_locks() {
        let w = WorkerConfig::default();
        // 3 × (5 s + 10 s) + 1 s + 2 s
        assert_eq!(w.longest_action_secs(10_000), 48);
        assert!(SweeperConfig::default().running_grace_secs > w.longest_action_secs(10_000));
    }

    /// The names of the fields of struct `T`, as serde's derive gives them
    /// to a deserializer (which this one is, just long enough to ask).
    fn field_names<T: Deserialize<'static>>() -> Vec<&'static str> {
        struct FieldNames<'a>(&'a mut &'static [&'static str]);
        impl<'de> serde::Deserializer<'de> for FieldNames<'_> {
            type Error = serde::de::value::Error;
            fn deserialize_any<V: serde::de::Visitor<'de>>(
                self,
                _: V,
            ) -> Result<V::Value, Self::Error> {
                Err(serde::de::Error::custom("not a struct"))
            }
            fn deserialize_struct<V: serde::de::Visitor<'de>>(
                self,
                _name: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Self::Error> {
                *self.0 = fields;
                Err(serde::de::Error::custom("only the field names were wanted"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
                bytes byte_buf option unit unit_struct newtype_struct seq tuple
                tuple_struct map enum identifier ignored_any
            }
        }
        let mut fields: &'static [&'static str] = &[];
        let _ = T::deserialize(FieldNames(&mut fields));
        let mut fields = fields.to_vec();
        fields.sort_unstable();
        fields
    }

    /// The package's /etc/haproxy-control/config.toml (docs/install.md).
    const SHIPPED: &str = include_str!("../deploy/debian/config.toml");

    /// `#key = value` lines without their `#` (prose is `# …`), and active
    /// lines and section headers as they are; `examples` says whether the
    /// lines ending in `# example` (keys without a default) are kept.
    fn shipped_uncommented(examples: bool, active: bool) -> String {
        SHIPPED
            .lines()
            .filter_map(|line| match line.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase()) => {
                    (examples || !rest.trim_end().ends_with("# example")).then_some(rest)
                }
                Some(_) => None,
                None if line.starts_with(|c: char| c.is_ascii_lowercase()) => {
                    active.then_some(line)
                }
                None => Some(line),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_shipped_config_lists_every_key_and_only_real_ones() {
        let sections: Vec<(&str, Vec<&str>)> = vec![
            ("database", field_names::<DatabaseConfig>()),
            ("amqp", field_names::<AmqpConfig>()),
            ("worker", field_names::<WorkerConfig>()),
            ("sync", field_names::<SyncConfig>()),
            ("sweeper", field_names::<SweeperConfig>()),
            ("rollout", field_names::<RolloutConfig>()),
            ("fagent", field_names::<FagentConfig>()),
            ("api", field_names::<ApiConfig>()),
            ("metrics", field_names::<MetricsConfig>()),
            ("webhooks", field_names::<WebhooksConfig>()),
        ];
        let mut names: Vec<&str> = sections.iter().map(|(name, _)| *name).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            field_names::<Config>(),
            "a section of Config has no entry here: add it, and its keys to deploy/debian/config.toml"
        );
        let text = shipped_uncommented(true, true);
        // Every key is a real key of the right type (unknown keys are refused)…
        toml::from_str::<Config>(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        // …and every real key is there.
        let table: toml::Table = toml::from_str(&text).expect("TOML");
        for (section, keys) in sections {
            let mut shipped: Vec<&str> = table
                .get(section)
                .and_then(toml::Value::as_table)
                .map(|t| t.keys().map(String::as_str).collect())
                .unwrap_or_default();
            shipped.sort_unstable();
            assert_eq!(
                shipped, keys,
                "keys of [{section}] in deploy/debian/config.toml"
            );
        }
    }

    #[test]
    fn the_shipped_config_shows_the_real_defaults() {
        let defaults = shipped_uncommented(false, false);
        let parsed: Config = toml::from_str(&defaults).expect("the documented defaults parse");
        assert_eq!(format!("{parsed:?}"), format!("{:?}", Config::default()));
        // What the package sets, besides defaults: the token files it creates.
        let shipped: Config = toml::from_str(SHIPPED).expect("the shipped file parses");
        assert_eq!(
            shipped.fagent.token_file.as_deref(),
            Some(Path::new("/etc/haproxy-control/fagent.token"))
        );
        assert_eq!(
            shipped.api.tokens_file.as_deref(),
            Some(Path::new("/etc/haproxy-control/api.tokens"))
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_the_file_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[fagent]\nsockett = \"x\"\n").expect("write");
        let err = Config::load(Some(&path))
            .expect_err("typo must fail")
            .to_string();
        assert!(err.contains("c.toml") && err.contains("sockett"), "{err}");
    }
}
