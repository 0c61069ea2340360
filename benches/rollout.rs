//! Benchmark of a rollout's own overhead (issue 12): 100 servers in 10
//! backends of a real HAProxy, a `command` hook of `/usr/bin/true`, no
//! sessions, no checks, `healthy_for_secs: 0`, wave 100 % with 9 of 10
//! servers of a backend out at once: wall time ÷ servers. Beside it, on the
//! same HAProxy in the same run, Ansible's `community.general.haproxy`
//! doing the same drain and ready of every server one by one.
//!
//! Run: `cargo bench --bench rollout` (env: BENCH_ROLLOUT_SERVERS=100, a
//! multiple of 10). Needs `deploy/ensure-deps.sh` (the project's Ansible
//! venv with community.general). It ends with a markdown row for
//! `docs/benchmarks.md` (date, commit, machine, figures).

#[path = "../tests/it/harness/mod.rs"]
#[allow(dead_code, unused_imports)]
mod harness;

mod common;

use std::time::{Duration, Instant};

use haproxy_control::db;
use haproxy_control::rollout::request::{RolloutBody, validate};
use haproxy_control::rollout::service::Rollouts;
use harness::{HttpBackends, TestAgent, TestHaproxy, TestSystem};
use serde_json::json;

const BACKENDS: usize = 10;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let servers = env_usize("BENCH_ROLLOUT_SERVERS", 100).max(BACKENDS) / BACKENDS * BACKENDS;
    let per_backend = servers / BACKENDS;
    let run = common::RunInfo::collect();

    let app = HttpBackends::start(&["app"]).await;
    let addr = app.addr("app");
    let mut cfg = String::new();
    for b in 0..BACKENDS {
        cfg.push_str(&format!("backend b{b}\n"));
        for s in 0..per_backend {
            cfg.push_str(&format!("  server s{s} {addr}\n"));
        }
    }
    let haproxy = TestHaproxy::start(&cfg).await;
    let agent = TestAgent::start(&haproxy.socket).await;
    let mut sys = TestSystem::start().await;
    sys.register_agent("bench", &agent).await;
    let mut config = sys.config();
    config.rollout.commands = vec!["/usr/bin/true".into()];
    sys.start_worker(config.clone());

    let ids: Vec<i64> = {
        let mut ids = Vec::new();
        for b in 0..BACKENDS {
            for s in 0..per_backend {
                ids.push(
                    sys.server_id("bench", &format!("b{b}"), &format!("s{s}"))
                        .await,
                );
            }
        }
        ids
    };
    let body: RolloutBody = serde_json::from_value(json!({
        "targets": {"server_ids": ids},
        "wave": {"size": "100%", "max_unavailable_per_backend": per_backend - 1},
        "drain": {"timeout_secs": 60},
        "update": {"kind": "command", "argv": ["/usr/bin/true"]},
        "health": {"healthy_for_secs": 0, "timeout_secs": 60},
    }))
    .expect("body");
    let valid = validate(&body, &config.rollout.policy()).expect("valid");
    let rollouts = Rollouts {
        pool: &sys.pool,
        publisher: &sys.publisher,
        topology: &sys.topology,
    };
    let t = Instant::now();
    let started = rollouts.start("bench", &valid).await.expect("started");
    let id = started.rollout.id;
    let status = loop {
        let row = db::run(&sys.pool, move |c| db::rollouts::get(c, id))
            .await
            .expect("read")
            .expect("row");
        if !row.status.is_active() || row.status.as_str() == "halted" {
            break row.status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let wall = t.elapsed();
    assert_eq!(status.as_str(), "completed", "the rollout ended {status}");
    let per_server = wall / u32::try_from(servers).unwrap_or(1);
    println!(
        "rollout of {servers} servers ({BACKENDS} backends, {} out at once per backend): {} ms wall, {} ms per server",
        per_backend - 1,
        wall.as_millis(),
        per_server.as_millis()
    );

    let ansible = ansible_cost(&haproxy, per_backend).await;
    let (ansible_cell, ratio_cell) = match ansible {
        Some(a) => {
            let per = a / u32::try_from(servers).unwrap_or(1);
            println!(
                "ansible community.general.haproxy, drain + ready of {servers} servers one by one: {} ms, {} ms per server",
                a.as_millis(),
                per.as_millis()
            );
            (
                format!("{} ms ({} ms per server)", a.as_millis(), per.as_millis()),
                format!(
                    "{:.1}×",
                    per.as_secs_f64() / per_server.as_secs_f64().max(1e-9)
                ),
            )
        }
        None => ("not measured (no community.general)".into(), "—".into()),
    };
    common::print_rows(
        "Rollout: overhead per server",
        &[run.row(&[
            format!(
                "{servers} servers, hook `true`, wave 100 %, {} per backend at once",
                per_backend - 1
            ),
            format!("{} ms", wall.as_millis()),
            format!("{} ms", per_server.as_millis()),
            ansible_cell,
            ratio_cell,
        ])],
    );
}

/// Runs a playbook that drains and readies every server one by one with
/// `community.general.haproxy` on the same socket; its wall time.
async fn ansible_cost(haproxy: &TestHaproxy, per_backend: usize) -> Option<Duration> {
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/ansible/bin");
    let playbook_bin = venv.join("ansible-playbook");
    if !playbook_bin.is_file() {
        return None;
    }
    let dir = tempfile::tempdir().ok()?;
    let mut items = Vec::new();
    for b in 0..BACKENDS {
        for s in 0..per_backend {
            items.push(json!({"b": format!("b{b}"), "s": format!("s{s}")}));
        }
    }
    let playbook = format!(
        "- hosts: all\n  connection: local\n  gather_facts: false\n  vars:\n    \
         ansible_python_interpreter: \"{{{{ ansible_playbook_python }}}}\"\n    servers: {items}\n  tasks:\n    \
         - name: drain and ready, one server at a time\n      \
         ansible.builtin.include_tasks: one.yml\n      loop: \"{{{{ servers }}}}\"\n",
        items = serde_json::Value::Array(items)
    );
    let one = format!(
        "- community.general.haproxy:\n    state: drain\n    host: \"{{{{ item.s }}}}\"\n    \
         backend: \"{{{{ item.b }}}}\"\n    socket: {sock}\n    wait: false\n\
         - community.general.haproxy:\n    state: enabled\n    host: \"{{{{ item.s }}}}\"\n    \
         backend: \"{{{{ item.b }}}}\"\n    socket: {sock}\n    wait: false\n",
        sock = haproxy.socket.display()
    );
    std::fs::write(dir.path().join("main.yml"), playbook).ok()?;
    std::fs::write(dir.path().join("one.yml"), one).ok()?;
    let t = Instant::now();
    let out = tokio::process::Command::new(&playbook_bin)
        .args(["-i", "localhost,", "main.yml"])
        .current_dir(dir.path())
        .output()
        .await
        .ok()?;
    let took = t.elapsed();
    if !out.status.success() {
        eprintln!(
            "the Ansible comparison failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    Some(took)
}
