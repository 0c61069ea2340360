//! The update hook runner of rollouts (issue 12) on real processes: exit
//! codes, bounded output, time limits that kill the whole process group,
//! placeholders, and the Ansible hook against a demo application.

use std::path::PathBuf;
use std::time::Duration;

use haproxy_control::domain::rollout_hook::{
    HookPolicy, HookTarget, UpdateHook, ansible_argv, check_ansible_host, command_argv,
};
use haproxy_control::rollout::{HookRun, check_playbook, run, validate_update};
use serde_json::json;

use crate::harness::demo_apps::{DemoApps, ansible_playbook, fixture_dir};

const LIMIT: usize = 64 * 1024;

fn sh(script: &str) -> Vec<String> {
    ["/bin/sh", "-c", script].map(String::from).to_vec()
}

async fn run_sh(script: &str, timeout: Duration) -> HookRun {
    run(&sh(script), timeout, &[]).await.expect("hook starts")
}

/// Processes of group `pgid` that are still alive (zombies do not count:
/// this container's init may be slow to reap orphans).
fn live_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // "pid (comm) state ppid pgrp ...": fields after the last ')'.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map_or("", |(_, r)| r)
                .split_whitespace()
                .collect();
            fields.first() != Some(&"Z") && fields.get(2) == Some(&pgid.to_string().as_str())
        })
        .collect()
}

/// The group has no live member within 2 s: a SIGKILLed process may take a
/// moment to exit on a loaded machine (a dropped run's leader is reaped in
/// the background).
async fn assert_group_gone(pgid: i32, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !live_members(pgid).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(live_members(pgid), Vec::<i32>::new(), "{what}");
}

fn first_number(output: &str) -> i32 {
    output
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {output:?}"))
}

fn max_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test]
async fn exit_codes_and_signals_are_reported() {
    let ok = run_sh("exit 0", Duration::from_secs(10)).await;
    assert!(ok.succeeded(), "{ok:?}");
    let three = run_sh("echo failing; exit 3", Duration::from_secs(10)).await;
    assert_eq!(
        (three.exit_code, three.signal, three.timed_out),
        (Some(3), None, false)
    );
    assert!(!three.succeeded());
    assert_eq!(three.output, "failing\n");
    let term = run_sh("kill -TERM $$", Duration::from_secs(10)).await;
    assert_eq!((term.exit_code, term.signal), (None, Some(15)));
    assert!(!term.succeeded());
}

#[tokio::test]
async fn a_hook_that_cannot_start_is_an_error() {
    let missing = ["/nonexistent/hook".to_owned()];
    assert!(run(&missing, Duration::from_secs(1), &[]).await.is_err());
    let empty = run(&[], Duration::from_secs(1), &[])
        .await
        .expect_err("empty argv");
    assert_eq!(empty.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn stdout_and_stderr_are_interleaved_and_env_is_clean() {
    let r = run(
        &sh("echo a; echo b >&2; echo c; echo \"$HOOK_X|${CARGO_MANIFEST_DIR:-unset}\""),
        Duration::from_secs(10),
        &[("HOOK_X".into(), "given".into())],
    )
    .await
    .expect("runs");
    // The worker's own environment (here cargo's) is not passed on.
    assert_eq!(r.output, "a\nb\nc\ngiven|unset\n");
}

#[tokio::test]
async fn output_of_a_chatty_hook_stays_bounded() {
    let before = max_rss_kib();
    let r = run_sh(
        "head -c 50000000 /dev/zero | tr '\\0' x; echo; echo END",
        Duration::from_secs(60),
    )
    .await;
    let grown_kib = max_rss_kib() - before;
    assert!(r.succeeded(), "{:?}", &r.output[..80]);
    let total = 50_000_000 + "\nEND\n".len();
    let (marker, kept) = r.output.split_once('\n').expect("a marker line");
    assert_eq!(marker, format!("[… {} bytes cut]", total - LIMIT));
    assert_eq!(kept.len(), LIMIT);
    assert!(kept.ends_with("xxx\nEND\n"));
    assert!(
        grown_kib < 16 * 1024,
        "memory grew by {grown_kib} KiB for 50 MB of output"
    );
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    let r = run_sh("sleep 1000 & echo $$; wait", Duration::from_millis(500)).await;
    assert!(r.timed_out && !r.succeeded(), "{r:?}");
    assert_eq!((r.exit_code, r.signal), (None, Some(9)));
    assert!(r.duration < Duration::from_secs(5), "{:?}", r.duration);
    let pgid = first_number(&r.output);
    assert_group_gone(pgid, &format!("group {pgid} outlived its timeout")).await;
}

#[tokio::test]
async fn what_a_finished_hook_left_in_its_group_is_killed() {
    let r = run_sh("sleep 1000 & echo $$", Duration::from_secs(30)).await;
    assert!(r.succeeded(), "{r:?}");
    // The background sleep kept the output pipe open: it is not waited for.
    assert!(r.duration < Duration::from_secs(3), "{:?}", r.duration);
    let pgid = first_number(&r.output);
    assert_group_gone(pgid, "what the hook left").await;
}

#[tokio::test]
async fn dropping_a_run_kills_its_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("pgid");
    let script = format!("echo $$ > {}; sleep 1000 & wait", pid_file.display());
    let argv = sh(&script);
    let cut = tokio::time::timeout(
        Duration::from_millis(700),
        run(&argv, Duration::from_secs(600), &[]),
    );
    assert!(cut.await.is_err(), "the hook should still run");
    let pgid = first_number(&std::fs::read_to_string(&pid_file).expect("pgid written"));
    assert_group_gone(pgid, "the dropped run's group").await;
}

fn target(server: &str) -> HookTarget {
    HookTarget {
        hostname: "app1".into(),
        address: "127.0.0.1".into(),
        port: Some(8080),
        server: server.into(),
        backend: "web".into(),
        instance: "lb-1".into(),
        application: Some("shop".into()),
    }
}

#[tokio::test]
async fn placeholders_reach_the_program_as_single_arguments() {
    let policy = HookPolicy {
        playbook_dir: None,
        commands: vec![PathBuf::from("/usr/bin/printf")],
    };
    let update = json!({"kind": "command", "argv": ["/usr/bin/printf", "[%s]\\n", "{server}", "{address}:{port}", "{application}"]});
    let spec = validate_update(&update, &policy).expect("valid");
    let UpdateHook::Command { argv } = spec.hook else {
        panic!("not a command")
    };
    let argv = command_argv(&argv, &target("x; rm -rf / $(id) {hostname}"));
    let r = run(&argv, Duration::from_secs(10), &[])
        .await
        .expect("runs");
    assert!(r.succeeded(), "{r:?}");
    assert_eq!(
        r.output,
        "[x; rm -rf / $(id) {hostname}]\n[127.0.0.1:8080]\n[shop]\n"
    );
}

#[test]
fn playbooks_must_exist_inside_the_directory_on_disk() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("playbooks");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(root.path().join("outside.yml"), "[]").expect("write");
    std::fs::write(dir.join("ok.yml"), "[]").expect("write");
    std::os::unix::fs::symlink(root.path().join("outside.yml"), dir.join("link.yml"))
        .expect("symlink");
    let policy = HookPolicy {
        playbook_dir: Some(dir.clone()),
        commands: vec![],
    };
    let canonical = check_playbook(&policy, &dir.join("ok.yml")).expect("inside");
    assert!(canonical.is_absolute() && canonical.ends_with("playbooks/ok.yml"));
    let e = check_playbook(&policy, &dir.join("link.yml")).expect_err("symlink out");
    assert!(e.contains("leads outside the playbook directory"), "{e}");
    let e = validate_update(&json!({"kind": "ansible", "playbook": "nope.yml"}), &policy)
        .expect_err("missing");
    assert!(
        e.contains("update.playbook") && e.contains("does not exist"),
        "{e}"
    );
}

/// Runs the fixture playbook through `ansible_argv` + `run` for `app1`.
async fn ansible_update(apps: &DemoApps, version: &str) -> HookRun {
    let policy = HookPolicy {
        playbook_dir: Some(fixture_dir()),
        commands: vec![],
    };
    let update = json!({"kind": "ansible", "playbook": "update.yml", "timeout_secs": 120, "extra_vars": {
        "app_dir": apps.dir("app1"), "app_port": apps.addr("app1").port(), "version": version,
    }});
    let spec = validate_update(&update, &policy).expect("valid update");
    let UpdateHook::Ansible {
        playbook,
        extra_vars,
    } = spec.hook
    else {
        panic!("not ansible")
    };
    let t = target("app1_shop_1");
    check_ansible_host(&t.hostname).expect("host");
    let argv = ansible_argv(&ansible_playbook(), &playbook, &extra_vars, &t);
    let env = [("ANSIBLE_NOCOLOR".to_owned(), "1".to_owned())];
    run(&argv, Duration::from_secs(spec.timeout_secs), &env)
        .await
        .expect("ansible-playbook starts")
}

#[tokio::test]
async fn the_ansible_hook_updates_a_demo_app() {
    let apps = DemoApps::start(&["app1"]).await;
    let old_pid = apps.pid("app1").expect("pid");
    assert_eq!(apps.served_version("app1").await.as_deref(), Some("v1"));
    let r = ansible_update(&apps, "v2").await;
    assert!(r.succeeded(), "ansible failed: {}", r.output);
    assert_eq!(apps.served_version("app1").await.as_deref(), Some("v2"));
    assert_eq!(apps.version("app1"), "v2");
    assert_eq!(apps.runs("app1"), 1);
    assert_ne!(apps.pid("app1"), Some(old_pid), "the app was restarted");
}

#[tokio::test]
async fn a_failing_ansible_hook_exits_non_zero_with_its_reason() {
    let apps = DemoApps::start(&["app1"]).await;
    let old_pid = apps.pid("app1");
    std::fs::write(apps.dir("app1").join("fail"), "").expect("write fail");
    let r = ansible_update(&apps, "v2").await;
    assert!(
        !r.succeeded() && r.exit_code.is_some_and(|c| c != 0),
        "{r:?}"
    );
    assert!(
        r.output.contains("the fixture's fail file exists"),
        "{}",
        r.output
    );
    assert_eq!(apps.runs("app1"), 1);
    assert_eq!(apps.served_version("app1").await.as_deref(), Some("v1"));
    assert_eq!(apps.pid("app1"), old_pid, "the app was left running");
}

#[tokio::test]
async fn the_demo_app_finishes_a_download_before_it_stops() {
    let apps = DemoApps::start(&["app1"]).await;
    let url = format!("http://{}/big?mb=5", apps.addr("app1"));
    let download = tokio::spawn(async move {
        let client = haproxy_control::http::client::builder()
            .build()
            .expect("client");
        client.get(url).send().await?.bytes().await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let pid = apps.pid("app1").expect("pid");
    // SAFETY: kill(2) takes plain integers and touches no memory.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let body = download
        .await
        .expect("task")
        .expect("the download completes");
    assert_eq!(body.len(), 5 * 1024 * 1024);
    assert!(
        apps.served_version("app1").await.is_none(),
        "stopped after the download"
    );
}
