//! `haproxy-control rollout …` (issue 12) as an operator runs it: the real
//! binary with a config file (connections and the `[rollout]` allow-list),
//! against a real HAProxy, agent, in-process worker, PostgreSQL and
//! RabbitMQ.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::lb::Registered;
use crate::harness::{SpiedLb, TestSystem};

/// Programs the command hooks may run, for the worker and the CLI alike.
const COMMANDS: [&str; 2] = ["/usr/bin/true", "/usr/bin/false"];

/// The binary with a config file for one test system.
struct Cli {
    dir: tempfile::TempDir,
    config: PathBuf,
}

/// What one run printed and how it ended.
struct Ran {
    code: Option<i32>,
    signal: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}, signal {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.signal, self.stdout, self.stderr
        )
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

impl Cli {
    fn new(sys: &TestSystem) -> Cli {
        let c = sys.config();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("haproxy-control.toml");
        let commands: Vec<String> = COMMANDS.iter().map(|p| toml_string(p)).collect();
        let text = format!(
            "[database]\nurl = {}\n[amqp]\nurl = {}\nprefix = {}\n[rollout]\ncommands = [{}]\n",
            toml_string(&c.database.url),
            toml_string(&c.amqp.url),
            toml_string(&c.amqp.prefix),
            commands.join(", ")
        );
        std::fs::write(&config, text).expect("write the config");
        Cli { dir, config }
    }

    /// Writes `body` to a file of this test; its path.
    fn body(&self, name: &str, body: &Value) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, body.to_string()).expect("write the body");
        path
    }

    /// Runs `haproxy-control rollout ARGS` (stdout a pipe, not a terminal).
    async fn rollout(&self, args: &[&str]) -> Ran {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_haproxy-control"));
        command
            .arg("--config")
            .arg(&self.config)
            .args(["--log-format", "text", "rollout"])
            .args(args)
            .kill_on_drop(true);
        for var in [
            "HAPROXY_CONTROL_CONFIG",
            "DATABASE_URL",
            "AMQP_URL",
            "AMQP_PREFIX",
        ] {
            command.env_remove(var);
        }
        let out = tokio::time::timeout(Duration::from_secs(90), command.output())
            .await
            .unwrap_or_else(|_| panic!("rollout {args:?} did not end within 90 s"))
            .expect("run the binary");
        Ran {
            code: out.status.code(),
            signal: std::os::unix::process::ExitStatusExt::signal(&out.status),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    async fn start(&self, body: &Path) -> i64 {
        let path = body.to_str().expect("utf-8 path");
        let ran = self
            .rollout(&["start", "--file", path, "--actor", "cli:test"])
            .await;
        assert_eq!(ran.code, Some(0), "{ran}");
        ran.stdout
            .strip_prefix("rollout ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("no rollout id in {ran}"))
    }
}

fn command_body(server_ids: &[i64], program: &str) -> Value {
    json!({
        "targets": {"server_ids": server_ids},
        "wave": {"size": 2},
        "drain": {"timeout_secs": 30, "poll_ms": 100},
        "update": {"kind": "command", "argv": [program, "{server}", "{backend}"], "timeout_secs": 30},
        "health": {"healthy_for_secs": 0, "timeout_secs": 30},
        "reason": "cli test",
    })
}

/// The lines of `text` that name `server` (`lb-1/web/s1`) as a whole word.
fn lines_naming<'a>(text: &'a str, server: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| l.split_whitespace().any(|w| w == server))
        .collect()
}

/// HAProxy with backends of `layout` (servers without checks), registered
/// as `lb-1`, a worker allowed [`COMMANDS`], and the CLI for that system.
async fn fleet(layout: &[(&str, usize)]) -> (Registered, Cli) {
    let mut registered = SpiedLb::numbered(layout).await.registered().await;
    let mut config = registered.sys.config();
    config.rollout.commands = COMMANDS.iter().map(PathBuf::from).collect();
    registered.sys.start_worker(config);
    let cli = Cli::new(&registered.sys);
    (registered, cli)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_started_from_the_cli_is_followed_until_it_completes() {
    let (registered, cli) = fleet(&[("web", 2), ("api", 2)]).await;
    let sys = &registered.sys;
    let names = ["web/s1", "web/s2", "api/s1", "api/s2"];
    let mut ids = Vec::new();
    for n in names {
        let (backend, server) = n.split_once('/').expect("backend/server");
        ids.push(sys.server_id("lb-1", backend, server).await);
    }

    let id = cli
        .start(&cli.body("all.json", &command_body(&ids, COMMANDS[0])))
        .await;
    let followed = cli.rollout(&["status", &id.to_string(), "--follow"]).await;
    assert_eq!(followed.code, Some(0), "{followed}");
    for n in names {
        let name = format!("lb-1/{n}");
        let lines = lines_naming(&followed.stdout, &name);
        assert!(
            lines.iter().any(|l| l.ends_with(": ready")),
            "a live line says {name} is ready: {followed}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.split_whitespace().nth(3) == Some("ready")),
            "the final table says {name} is ready: {followed}"
        );
    }
    assert!(
        followed.stdout.contains(&format!("rollout {id} completed")),
        "{followed}"
    );
    let bits = registered.lb.haproxy.admin_bits().await;
    assert!(bits.iter().all(|(_, b)| *b == 0), "all ready: {bits:?}");

    let paused = cli.rollout(&["pause", &id.to_string()]).await;
    assert_ne!(paused.code, Some(0), "{paused}");
    assert!(
        paused.stderr.contains(&format!(
            "rollout {id} is completed; this needs it to be running"
        )),
        "{paused}"
    );
    let listed = cli.rollout(&["list"]).await;
    assert_eq!(listed.code, Some(0), "{listed}");
    let row: Vec<&str> = listed
        .stdout
        .lines()
        .nth(1)
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(
        row.get(..5),
        Some(&[id.to_string().as_str(), "completed", "2/2", "4", "cli:test"][..]),
        "{listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_halted_rollout_ends_the_follow_with_2_and_skip_lets_it_complete() {
    let (registered, cli) = fleet(&[("web", 2)]).await;
    let sys = &registered.sys;
    let s1 = sys.server_id("lb-1", "web", "s1").await;

    let id = cli
        .start(&cli.body("fail.json", &command_body(&[s1], COMMANDS[1])))
        .await;
    let followed = cli.rollout(&["status", &id.to_string(), "--follow"]).await;
    assert_eq!(followed.code, Some(2), "{followed}");
    assert!(
        followed
            .stdout
            .contains("halted: update_failed: the hook exited with 1"),
        "{followed}"
    );
    let table = cli.rollout(&["status", &id.to_string()]).await;
    assert_eq!(table.code, Some(0), "{table}");
    let row = lines_naming(&table.stdout, "lb-1/web/s1");
    let cells: Vec<&str> = row
        .last()
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(
        cells.get(3..6),
        Some(&["failed(updating)", "0", "1"][..]),
        "step, attempt and the hook's exit code: {table}"
    );

    let s1 = s1.to_string();
    let skipped = cli
        .rollout(&["skip", &id.to_string(), "--server-id", &s1])
        .await;
    assert_eq!(skipped.code, Some(0), "{skipped}");
    let again = cli.rollout(&["status", &id.to_string(), "--follow"]).await;
    assert_eq!(again.code, Some(0), "{again}");
    assert!(
        again.stdout.contains(&format!(
            "rollout {id} completed; out of traffic: lb-1/web/s1 skipped"
        )),
        "{again}"
    );
    assert_eq!(
        registered.lb.web_bits("s1").await & 1,
        1,
        "the failed server stays in maint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_refuses_bad_requests_with_the_apis_reasons_and_starts_nothing() {
    let sys = TestSystem::start().await;
    let cli = Cli::new(&sys);
    let refused = |ran: &Ran, what: &str| {
        assert_eq!(ran.code, Some(1), "{ran}");
        assert!(ran.stderr.contains(what), "expected {what:?}: {ran}");
    };
    let good = command_body(&[1], COMMANDS[0]);
    let with = |pointer: &str, value: Value| {
        let mut body = good.clone();
        if let Some(v) = body.pointer_mut(pointer) {
            *v = value;
        }
        body
    };
    for (name, body, reason) in [
        (
            "zero.json",
            with("/wave/size", json!(0)),
            "error: invalid rollout: wave.size must be a number of servers (>= 1)",
        ),
        (
            "shell.json",
            with("/update/argv", json!(["/bin/sh", "-c", "reboot"])),
            "error: invalid rollout: update.argv[0] `/bin/sh` is not an allowed command",
        ),
        (
            "nothing.json",
            good.clone(),
            "error: invalid rollout: targets name no live server of an active instance",
        ),
        (
            "not-json.json",
            json!("drain everything"),
            "is not a rollout request",
        ),
    ] {
        let path = cli.body(name, &body);
        let ran = cli
            .rollout(&["start", "--file", path.to_str().expect("utf-8")])
            .await;
        refused(&ran, reason);
    }
    // Again and again: a one-shot command exits with its code, never by a
    // signal (a spare pool connection opening at exit crashed it).
    for _ in 0..20 {
        refused(
            &cli.rollout(&["status", "999"]).await,
            "error: no rollout with id 999",
        );
    }
    refused(
        &cli.rollout(&["resume", "999"]).await,
        "error: no rollout with id 999",
    );
    let listed = cli.rollout(&["list"]).await;
    assert_eq!(
        listed.stdout.lines().count(),
        1,
        "only the header: {listed}"
    );
}
