//! What the database holds, as typed rows a test can assert on: a server,
//! its state history, an action, a batch, an instance, the sync runs. The
//! SQL lives here so a test reads as what it checks.
//!
//! The rows are read with the harness's own queries, not the crate's: a test
//! states what the schema holds, whatever types `src/db` maps it to.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Bool, Integer, Nullable, Text, Timestamptz};
use haproxy_control::db;
use uuid::Uuid;

use super::TestSystem;

/// A row of `haproxy_servers`.
#[derive(Debug, Clone, diesel::QueryableByName)]
pub struct ServerRow {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = Text)]
    pub admin_state: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub application_id: Option<i64>,
    /// Soft-deleted: gone from HAProxy, the row kept with its history.
    #[diesel(sql_type = Bool)]
    pub removed: bool,
}

const SERVERS: &str = "SELECT s.id, s.server_name AS name, s.admin_state, s.application_id, \
     s.removed_at IS NOT NULL AS removed \
     FROM haproxy_servers s JOIN haproxy_backends b ON b.id = s.backend_id \
     JOIN haproxy_instances i ON i.id = b.haproxy_id";

/// One row of a server's state history: who changed it, from what to what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `action` or `sync`.
    pub source: String,
    pub actor: String,
    pub from: Option<String>,
    pub to: String,
    /// The action that made the change (none for a sync).
    pub action_id: Option<i64>,
}

impl Change {
    /// A change made behind the module's back, found by a sync of `instance`.
    pub fn by_sync(instance: &str, from: &str, to: &str) -> Change {
        Change {
            source: "sync".into(),
            actor: format!("haproxy:{instance}"),
            from: Some(from.into()),
            to: to.into(),
            action_id: None,
        }
    }

    /// A change made by the action `action_id` on behalf of `actor`.
    pub fn by_action(action_id: i64, actor: &str, from: &str, to: &str) -> Change {
        Change {
            source: "action".into(),
            actor: actor.into(),
            from: Some(from.into()),
            to: to.into(),
            action_id: Some(action_id),
        }
    }
}

#[derive(diesel::QueryableByName)]
struct HistoryRow {
    #[diesel(sql_type = BigInt)]
    server_id: i64,
    #[diesel(sql_type = Text)]
    source: String,
    #[diesel(sql_type = Text)]
    actor: String,
    #[diesel(sql_type = Nullable<Text>)]
    previous_admin_state: Option<String>,
    #[diesel(sql_type = Text)]
    new_admin_state: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    action_id: Option<i64>,
}

impl From<HistoryRow> for Change {
    fn from(h: HistoryRow) -> Change {
        Change {
            source: h.source,
            actor: h.actor,
            from: h.previous_admin_state,
            to: h.new_admin_state,
            action_id: h.action_id,
        }
    }
}

/// A row of `haproxy_actions`.
#[derive(Debug, Clone, diesel::QueryableByName)]
pub struct ActionRow {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub server_id: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub batch_id: Option<i64>,
    #[diesel(sql_type = Text)]
    pub status: String,
    #[diesel(sql_type = Text)]
    pub actor: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub reason: Option<String>,
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    #[diesel(sql_type = Nullable<Text>)]
    pub error: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub error_detail: Option<String>,
}

/// The statuses an action ends in.
pub const FINAL_STATUSES: [&str; 4] = ["success", "failed", "superseded", "rejected"];

impl ActionRow {
    pub fn is_final(&self) -> bool {
        FINAL_STATUSES.contains(&self.status.as_str())
    }
}

const ACTIONS: &str = "SELECT id, server_id, batch_id, status, actor, reason, \
     attempts, error, error_detail FROM haproxy_actions";

/// A row of `haproxy_batches`.
#[derive(Debug, Clone, diesel::QueryableByName)]
pub struct BatchRow {
    #[diesel(sql_type = Integer)]
    pub total: i32,
    #[diesel(sql_type = Bool)]
    pub completed: bool,
}

/// A row of `haproxy_instances`.
#[derive(Debug, Clone, diesel::QueryableByName)]
pub struct InstanceRow {
    /// The AC server this instance runs on.
    #[diesel(sql_type = Nullable<BigInt>)]
    pub server_id: Option<i64>,
    #[diesel(sql_type = Bool)]
    pub is_active: bool,
    #[diesel(sql_type = Text)]
    pub fagent_url: String,
    #[diesel(sql_type = Text)]
    pub fagent_token_ref: String,
    #[diesel(sql_type = Text)]
    pub breaker_state: String,
    #[diesel(sql_type = Integer)]
    pub consecutive_failures: i32,
    #[diesel(sql_type = Nullable<Text>)]
    pub last_sync_result: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub last_sync_error: Option<String>,
    /// `Pid` of the HAProxy process the last sync saw.
    #[diesel(sql_type = Nullable<Integer>)]
    pub haproxy_pid: Option<i32>,
    /// When a sync last saw a new HAProxy process.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub last_reload_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Bool)]
    pub restore_after_reload: bool,
}

const INSTANCES: &str = "SELECT server_id, is_active, fagent_url, fagent_token_ref, breaker_state, \
     consecutive_failures, last_sync_result, last_sync_error, haproxy_pid, last_reload_at, \
     restore_after_reload FROM haproxy_instances";

/// A row of `haproxy_sync_runs`.
#[derive(Debug, Clone, diesel::QueryableByName)]
pub struct SyncRunRow {
    #[diesel(sql_type = BigInt)]
    pub instance_id: i64,
    /// `schedule` or `force`.
    #[diesel(sql_type = Text)]
    pub reason: String,
    #[diesel(sql_type = Text)]
    pub status: String,
    #[diesel(sql_type = Timestamptz)]
    pub requested_at: DateTime<Utc>,
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = Text)]
    key: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// A SQL text literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

impl TestSystem {
    /// Loads the rows of `sql`.
    async fn rows<R>(&self, sql: String) -> Vec<R>
    where
        R: diesel::QueryableByName<diesel::pg::Pg> + Send + 'static,
    {
        db::run(&self.pool, move |c| {
            use diesel::RunQueryDsl;
            Ok(diesel::sql_query(sql).load::<R>(c)?)
        })
        .await
        .expect("rows query")
    }

    /// The server `instance`/`backend`/`server`, removed or not.
    pub async fn server(&self, instance: &str, backend: &str, server: &str) -> ServerRow {
        let sql = format!(
            "{SERVERS} WHERE i.name = {} AND b.backend_name = {} AND s.server_name = {}",
            literal(instance),
            literal(backend),
            literal(server)
        );
        self.rows(sql)
            .await
            .pop()
            .unwrap_or_else(|| panic!("{instance}/{backend}/{server} not in the database"))
    }

    /// Every server row of every instance, removed ones too, by id.
    pub async fn servers(&self) -> Vec<ServerRow> {
        self.rows(format!("{SERVERS} ORDER BY s.id")).await
    }

    /// The servers HAProxy still has (not removed), by id.
    pub async fn live_servers(&self) -> Vec<ServerRow> {
        let mut all = self.servers().await;
        all.retain(|s| !s.removed);
        all
    }

    async fn history_where(&self, condition: &str) -> Vec<HistoryRow> {
        self.rows(format!(
            "SELECT server_id, source, actor, previous_admin_state, new_admin_state, action_id \
             FROM haproxy_server_status_history WHERE {condition} ORDER BY changed_at, id"
        ))
        .await
    }

    /// The state history of one server, oldest first.
    pub async fn history(&self, server_id: i64) -> Vec<Change> {
        let rows = self
            .history_where(&format!("server_id = {server_id}"))
            .await;
        rows.into_iter().map(Change::from).collect()
    }

    /// Every history row written by `source` (`action` or `sync`).
    pub async fn history_from(&self, source: &str) -> Vec<Change> {
        let rows = self
            .history_where(&format!("source = {}", literal(source)))
            .await;
        rows.into_iter().map(Change::from).collect()
    }

    /// Every history row, per server.
    pub async fn history_per_server(&self) -> BTreeMap<i64, Vec<Change>> {
        let mut out: BTreeMap<i64, Vec<Change>> = BTreeMap::new();
        for row in self.history_where("true").await {
            out.entry(row.server_id).or_default().push(row.into());
        }
        out
    }

    /// The action of `transaction_id`, if it was recorded.
    pub async fn action(&self, transaction_id: Uuid) -> Option<ActionRow> {
        let sql = format!("{ACTIONS} WHERE transaction_id = '{transaction_id}'");
        self.rows(sql).await.pop()
    }

    /// Every action row, oldest first.
    pub async fn actions(&self) -> Vec<ActionRow> {
        self.rows(format!("{ACTIONS} ORDER BY id")).await
    }

    /// How many actions are in each status.
    pub async fn actions_by_status(&self) -> BTreeMap<String, i64> {
        let sql = "SELECT status AS key, count(*) AS n FROM haproxy_actions GROUP BY status";
        let counts: Vec<Count> = self.rows(sql.to_owned()).await;
        counts.into_iter().map(|c| (c.key, c.n)).collect()
    }

    /// How many actions succeeded.
    pub async fn successes(&self) -> i64 {
        self.actions_by_status()
            .await
            .get("success")
            .copied()
            .unwrap_or(0)
    }

    /// The batch of `transaction_id`, if it was recorded.
    pub async fn batch(&self, transaction_id: Uuid) -> Option<BatchRow> {
        let sql = format!(
            "SELECT total, completed_at IS NOT NULL AS completed FROM haproxy_batches \
             WHERE transaction_id = '{transaction_id}'"
        );
        self.rows(sql).await.pop()
    }

    /// The instance `id`.
    pub async fn instance(&self, id: i64) -> InstanceRow {
        self.rows(format!("{INSTANCES} WHERE id = {id}"))
            .await
            .pop()
            .unwrap_or_else(|| panic!("instance {id} not in the database"))
    }

    /// Every instance, by id.
    pub async fn instances(&self) -> Vec<InstanceRow> {
        self.rows(format!("{INSTANCES} ORDER BY id")).await
    }

    /// Every sync run, oldest first.
    pub async fn sync_runs(&self) -> Vec<SyncRunRow> {
        let sql = "SELECT instance_id, reason, status, requested_at FROM haproxy_sync_runs \
                   ORDER BY id";
        self.rows(sql.to_owned()).await
    }

    /// The sync runs asked for by `reason` (`schedule` or `force`), oldest
    /// first.
    pub async fn sync_runs_by(&self, reason: &str) -> Vec<SyncRunRow> {
        let mut runs = self.sync_runs().await;
        runs.retain(|r| r.reason == reason);
        runs
    }

    /// Whether the AC server `id` is marked as an HAProxy node.
    pub async fn is_haproxy_node(&self, id: i64) -> bool {
        #[derive(diesel::QueryableByName)]
        struct Node {
            #[diesel(sql_type = Bool)]
            is_haproxy_node: bool,
        }
        let rows: Vec<Node> = self
            .rows(format!(
                "SELECT is_haproxy_node FROM servers WHERE id = {id}"
            ))
            .await;
        rows.first().is_some_and(|n| n.is_haproxy_node)
    }

    /// How many rows `table` holds (to see that nothing was written).
    pub async fn rows_in(&self, table: &str) -> i64 {
        self.count(&format!("SELECT count(*) AS n FROM {table}"))
            .await
    }
}
