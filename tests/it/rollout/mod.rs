//! Rolling updates (issue 12) on real parts: demo applications updated by
//! the Ansible fixture playbook, behind a real HAProxy with health checks,
//! driven by the API and the worker through RabbitMQ.

mod control;
mod crash;
mod health_gate;
mod sessions;
mod zero_downtime;

use std::time::Duration;

use haproxy_control::config::Config;
use serde_json::{Value, json};

use crate::harness::api::{Api, OPERATOR};
use crate::harness::demo_apps::{DemoApps, ansible_playbook, fixture_dir};
use crate::harness::{SocketSpy, TestAgent, TestHaproxy, TestSystem, eventually, free_port};

/// Web servers `w1..w3` and api servers `a1..a3`, each a demo app.
pub const WEB: [&str; 3] = ["w1", "w2", "w3"];
pub const API: [&str; 3] = ["a1", "a2", "a3"];

/// A fleet: demo apps, HAProxy in front (frontend `/` → web, `/?be=api`
/// → api, `&srv=NAME` → that server; HTTP checks every 100 ms), a socket spy
/// between HAProxy and its agent, the system with a worker and the API, both
/// allowed the fixture playbook and the commands of [`allowed_commands`].
pub struct Fleet {
    pub apps: DemoApps,
    pub haproxy: TestHaproxy,
    /// Every runtime-API command the agent sent to HAProxy.
    pub spy: SocketSpy,
    pub _agent: TestAgent,
    pub sys: TestSystem,
    pub api: Api,
    pub frontend: String,
    /// The worker's and the API's configuration.
    pub config: Config,
}

/// The programs a fleet's `command` hooks may run.
pub fn allowed_commands() -> Vec<std::path::PathBuf> {
    vec![
        "/usr/bin/true".into(),
        "/usr/bin/false".into(),
        fixture_dir().join("count-run.sh"),
    ]
}

/// HAProxy's config: the frontend and the two backends of `names`.
fn haproxy_config(apps: &DemoApps, names: &[&str], port: u16) -> String {
    let mut body = format!(
        "frontend fe\n  bind 127.0.0.1:{port}\n  acl is_api url_param(be) -m str api\n  \
         use_backend api if is_api\n  default_backend web\n"
    );
    for (backend, servers) in [("web", "w"), ("api", "a")] {
        body.push_str(&format!(
            "backend {backend}\n  option httpchk GET /health\n  \
             default-server check inter 100ms fall 2 rise 2\n"
        ));
        let mine: Vec<&&str> = names.iter().filter(|n| n.starts_with(servers)).collect();
        for n in &mine {
            body.push_str(&format!(
                "  use-server {n} if {{ url_param(srv) -m str {n} }}\n"
            ));
        }
        for n in &mine {
            body.push_str(&format!("  server {n} {}\n", apps.addr(n)));
        }
    }
    body
}

impl Fleet {
    /// A fleet of `names` with an in-process worker.
    pub async fn start(names: &[&str]) -> Fleet {
        Self::launch(names, true).await
    }

    /// A fleet of `names` without a worker: the test starts its own.
    pub async fn without_worker(names: &[&str]) -> Fleet {
        Self::launch(names, false).await
    }

    async fn launch(names: &[&str], with_worker: bool) -> Fleet {
        let apps = DemoApps::start(names).await;
        let port = free_port();
        let haproxy = TestHaproxy::start(&haproxy_config(&apps, names, port)).await;
        let spy = SocketSpy::start(&haproxy.socket).await;
        let agent = TestAgent::start(&spy.socket).await;
        let mut sys = TestSystem::start().await;
        sys.register_agent("lb-1", &agent).await;
        let mut config = sys.config();
        config.rollout.playbook_dir = Some(fixture_dir());
        config.rollout.ansible_playbook = ansible_playbook();
        config.rollout.commands = allowed_commands();
        if with_worker {
            sys.start_worker(config.clone());
        }
        let api = Api::start_with(config.clone()).await;
        let fleet = Fleet {
            apps,
            haproxy,
            spy,
            _agent: agent,
            sys,
            api,
            frontend: format!("http://127.0.0.1:{port}"),
            config,
        };
        // Every server is up for HAProxy before a test starts.
        eventually(Duration::from_secs(20), "every server up", || async {
            let bits = fleet.haproxy.cmd("show servers state").await;
            let up = bits
                .lines()
                .filter(|l| l.split_whitespace().nth(5) == Some("2"))
                .count();
            (up == names.len()).then_some(())
        })
        .await;
        fleet
    }

    /// The server ids of `names` (backend by prefix).
    pub async fn ids(&self, names: &[&str]) -> Vec<i64> {
        let mut ids = Vec::new();
        for n in names {
            let backend = if n.starts_with('w') { "web" } else { "api" };
            ids.push(self.sys.server_id("lb-1", backend, n).await);
        }
        ids
    }

    /// The fixture playbook's hook, updating to `version`.
    pub fn ansible(&self, version: &str) -> Value {
        json!({
            "kind": "ansible",
            "playbook": fixture_dir().join("update.yml"),
            "extra_vars": {"apps_root": self.apps.root(), "version": version},
            "timeout_secs": 120,
        })
    }

    /// Starts a rollout; its id.
    pub async fn start_rollout(&self, body: &Value) -> i64 {
        let (status, answer) = self.api.post("/api/haproxy/rollouts", OPERATOR, body).await;
        assert_eq!(status, 202, "{answer}");
        answer["id"].as_i64().expect("rollout id")
    }

    pub async fn rollout(&self, id: i64) -> Value {
        self.api.ok(&format!("/api/haproxy/rollouts/{id}")).await
    }

    /// Waits until `check` holds for the rollout.
    pub async fn wait_until(
        &self,
        id: i64,
        within: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let what = format!("rollout {id} to reach the expected state");
        eventually(within, &what, || async {
            let r = self.rollout(id).await;
            check(&r).then_some(r)
        })
        .await
    }

    /// Waits until the rollout stopped running (halted, completed, …).
    pub async fn wait_ended(&self, id: i64, within: Duration) -> Value {
        self.wait_until(id, within, |r| r["status"] != "running")
            .await
    }

    /// Waits until the rollout's status is `status`.
    pub async fn wait_status(&self, id: i64, status: &str, within: Duration) -> Value {
        let what = format!("rollout {id} {status}");
        eventually(within, &what, || async {
            let r = self.rollout(id).await;
            (r["status"] == status).then_some(r)
        })
        .await
    }
}

/// One change of a server's admin state made by an action, with when.
#[derive(Debug, Clone, diesel::QueryableByName)]
pub struct TimedChange {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub state: String,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    pub at: chrono::DateTime<chrono::Utc>,
}

impl Fleet {
    /// HAProxy's `srv_admin_state` bits of `backend/server` (0 ready, 8
    /// drain, 1 maint).
    pub async fn bits(&self, name: &str) -> u32 {
        let backend = if name.starts_with('w') { "web" } else { "api" };
        let key = format!("{backend}/{name}");
        let bits = self.haproxy.admin_bits().await;
        bits.iter()
            .find(|(n, _)| *n == key)
            .map(|(_, b)| *b)
            .unwrap_or_else(|| panic!("{key} not in {bits:?}"))
    }

    /// The admin states actions gave `server_id`, oldest first, with the
    /// database's time of each change.
    pub async fn action_changes(&self, server_id: i64) -> Vec<TimedChange> {
        haproxy_control::db::run(&self.sys.pool, move |c| {
            use diesel::RunQueryDsl;
            Ok(diesel::sql_query(
                "SELECT new_admin_state AS state, changed_at AS at \
                 FROM haproxy_server_status_history \
                 WHERE server_id = $1 AND source = 'action' ORDER BY changed_at, id",
            )
            .bind::<diesel::sql_types::BigInt, _>(server_id)
            .load::<TimedChange>(c)?)
        })
        .await
        .expect("history query")
    }

    /// `halted` halted because `server_id` failed in `step` with
    /// `reason` at least `after_secs` after the step began. Returns the
    /// server's row.
    pub fn assert_halted_by(
        halted: &Value,
        server_id: i64,
        step: &str,
        reason: &str,
        after_secs: i64,
    ) -> Value {
        let s = Self::server_of(halted, server_id);
        assert_eq!(
            (s["step"].as_str(), s["failed_step"].as_str()),
            (Some("failed"), Some(step)),
            "{s}"
        );
        let says = |v: &Value| v.as_str().is_some_and(|e| e.contains(reason));
        assert!(says(&s["error"]), "{s}");
        assert!(says(&halted["halted_reason"]), "{halted}");
        let waited = time(&halted["updated_at"]) - time(&s["step_started_at"]);
        assert!(
            waited >= chrono::TimeDelta::seconds(after_secs),
            "halted {waited} after the step began"
        );
        s
    }

    /// Waits for `rollout.server_failed` of `name` with `reason` and for
    /// `rollout.halted` (published after the rollout's state is committed).
    pub async fn wait_halt_events(&self, name: &str, reason: &str) {
        let what = format!("rollout.server_failed of {name} and rollout.halted");
        let failed = eventually(Duration::from_secs(5), &what, || async {
            let events = self.sys.events();
            let halted = events.iter().any(|e| e["type"] == "rollout.halted");
            let failed = events
                .into_iter()
                .find(|e| e["type"] == "rollout.server_failed");
            failed.filter(|_| halted)
        })
        .await;
        assert_eq!(failed["server"]["name"], name, "{failed}");
        assert!(
            failed["error"].as_str().is_some_and(|e| e.contains(reason)),
            "{failed}"
        );
    }

    /// The rollout's server row of `server_id` (from [`Fleet::rollout`]).
    pub fn server_of(rollout: &Value, server_id: i64) -> Value {
        rollout["servers"]
            .as_array()
            .and_then(|ss| ss.iter().find(|s| s["server_id"] == server_id))
            .cloned()
            .unwrap_or_else(|| panic!("server {server_id} not in {rollout}"))
    }
}

/// A time of the API's JSON.
pub fn time(v: &Value) -> chrono::DateTime<chrono::Utc> {
    v.as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(|| panic!("a time, not {v}"))
}
