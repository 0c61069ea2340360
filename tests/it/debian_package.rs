//! The Debian package (docs/install.md) on this machine, as an operator
//! would use it: `cargo deb` packs the binary this test run was built with,
//! `dpkg -i` installs it into the system, and the test checks files, modes,
//! owners and the system user, runs `systemd-analyze` on the installed units,
//! then runs every unit's `ExecStart` as the unit's user and groups with the
//! installed config (plus this test's database, queue names and ports) for
//! one action end to end against a real HAProxy; `dpkg -r` removes it with
//! its configuration kept, and a purge leaves the machine as it was found.
//!
//! It installs into the system, so it takes a machine-wide lock (two test
//! runs on one machine wait for each other) and runs in its own nextest test
//! group. A run that died half-way leaves a marker file; the next run purges
//! what it left. A `haproxy-control` package installed by anyone else is
//! never touched: the test refuses to run.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::system::AMQP_URL;
use crate::harness::{HttpBackends, SocketSpy, TestHaproxy, TestSystem, eventually, free_port};

const PACKAGE: &str = "haproxy-control";
/// The system user and group the package creates.
const SVC: &str = "haproxy-control";
const ETC: &str = "/etc/haproxy-control";
const STATE_DIR: &str = "/var/lib/haproxy-control";
const UNIT_DIR: &str = "/usr/lib/systemd/system";
const CONFIG: &str = "/etc/haproxy-control/config.toml";
const SERVICES: [&str; 4] = [
    "haproxy-control-worker.service",
    "haproxy-control-scheduler.service",
    "haproxy-control-api.service",
    "haproxy-control-fagent.service",
];
const TEMPLATE: &str = "haproxy-control-worker@.service";
/// Written before the first `dpkg -i`, removed after the purge: while it
/// exists the installed package is this test's. It says whether the
/// system user existed before (then the test leaves it).
const MARKER: &str = "/var/lib/haproxy-control-package-test.marker";
const LOCK: &str = "/run/lock/haproxy-control-package-test.lock";
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn installs_runs_an_action_end_to_end_and_purges_cleanly() {
    let _lock = MachineLock::take();
    clean_up_after_a_dead_run();
    let started = std::time::Instant::now();
    let out = tempfile::tempdir().expect("tempdir");
    let deb = build_package(out.path());
    let built = started.elapsed();
    let user_existed = passwd_entry(SVC).is_some();
    std::fs::write(MARKER, if user_existed { "user-existed\n" } else { "" }).expect("marker");
    let _purge = PurgeWhenDone;
    install(&deb);

    assert_files_modes_and_owners();
    assert_system_user();
    let token = std::fs::read_to_string(format!("{ETC}/fagent.token")).expect("fagent.token");
    // Installing again (an upgrade's path) keeps the tokens as they are.
    install(&deb);
    assert_eq!(
        std::fs::read_to_string(format!("{ETC}/fagent.token")).expect("fagent.token"),
        token
    );
    assert_files_modes_and_owners();
    assert_unit_settings();
    verify_units();

    one_action_end_to_end().await;

    remove_keeps_the_configuration();
    purge_leaves_nothing(user_existed);
    eprintln!(
        "package built in {:.1} s; whole test {:.1} s",
        built.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// An exclusive `flock` on a file in /run/lock, held until dropped.
struct MachineLock {
    _held: File,
}

impl MachineLock {
    fn take() -> MachineLock {
        let file = File::create(LOCK).expect("lock file");
        // SAFETY: flock on a descriptor this File owns; no memory is shared.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock {LOCK}: {}", std::io::Error::last_os_error());
        MachineLock { _held: file }
    }
}

/// Purges the package (and the user this test created) when the test ends,
/// passed or failed, so the machine is left as found.
struct PurgeWhenDone;

impl Drop for PurgeWhenDone {
    fn drop(&mut self) {
        if std::thread::panicking() {
            clean_up_after_a_dead_run();
        }
    }
}

/// The state a dead run left: its package purged, its user removed, its
/// marker gone. Refuses to run where the package is someone else's.
fn clean_up_after_a_dead_run() {
    let marker = std::fs::read_to_string(MARKER).ok();
    if installed_status().is_some() && marker.is_none() {
        panic!(
            "{PACKAGE} is installed on this machine and not by this test; \
             it would purge it, so it refuses to run"
        );
    }
    let Some(marker) = marker else { return };
    // Nothing here may panic: it also runs while a failed test unwinds.
    let _ = Command::new("dpkg").args(["--purge", PACKAGE]).output();
    if !marker.contains("user-existed") {
        remove_system_user();
    }
    let _ = std::fs::remove_file(MARKER);
}

/// `deluser`/`delgroup` the package's account; their failure shows later
/// as the account still being there.
fn remove_system_user() {
    if passwd_entry(SVC).is_some() {
        let _ = Command::new("deluser")
            .args(["--system", "--quiet", SVC])
            .output();
    }
    if group_entry(SVC).is_some() {
        let _ = Command::new("delgroup")
            .args(["--system", "--quiet", SVC])
            .output();
    }
}

/// `cargo deb` without building: it packs the binary cargo built for these
/// tests (target/debug, the `dev` profile), so CI pays no release build;
/// what is tested is the package, not the optimiser. (`cargo deb` alone
/// builds the release binary: docs/install.md.)
fn build_package(out: &Path) -> PathBuf {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_haproxy-control"));
    let output = Command::new("cargo")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "deb",
            "--no-build",
            "--profile",
            "dev",
            "--fast",
            "--output",
        ])
        .arg(out)
        .output()
        .expect("cargo deb (deploy/ensure-deps.sh installs it)");
    assert_succeeded("cargo deb", &output);
    let deb = std::fs::read_dir(out)
        .expect("output dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .unwrap_or_else(|| panic!("no .deb in {}", out.display()));
    let name = deb.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(name, format!("{PACKAGE}_{version}-1_amd64.deb"));
    // The package holds the binary of this build (stripped).
    let listing = run("dpkg-deb", &["--contents", &deb.to_string_lossy()]);
    assert!(listing.contains("./usr/bin/haproxy-control"), "{listing}");
    assert!(binary.exists());
    deb
}

fn install(deb: &Path) {
    run("dpkg", &["-i", &deb.to_string_lossy()]);
    assert_eq!(installed_status().as_deref(), Some("ii"));
}

/// `dpkg-query`'s two-letter status (`ii` installed, `rc` removed with its
/// configuration kept), None when dpkg knows nothing of the package.
fn installed_status() -> Option<String> {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", PACKAGE])
        .output()
        .expect("dpkg-query");
    let status = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (output.status.success() && !status.is_empty() && status != "un").then_some(status)
}

fn assert_files_modes_and_owners() {
    let svc_uid = id("-u");
    let svc_gid = id("-g");
    let expect = |path: &str, mode: u32, uid: u32, gid: u32| {
        let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(
            (meta.permissions().mode() & 0o7777, meta.uid(), meta.gid()),
            (mode, uid, gid),
            "mode, owner and group of {path}"
        );
    };
    expect("/usr/bin/haproxy-control", 0o755, 0, 0);
    // The config may hold a database password: root writes, the group reads.
    expect(CONFIG, 0o640, 0, svc_gid);
    expect(&format!("{ETC}/fagent.token"), 0o600, svc_uid, svc_gid);
    expect(&format!("{ETC}/api.tokens"), 0o600, svc_uid, svc_gid);
    expect(&format!("{ETC}/agents"), 0o750, 0, svc_gid);
    expect(STATE_DIR, 0o750, svc_uid, svc_gid);
    for unit in SERVICES.iter().chain([&TEMPLATE]) {
        expect(&format!("{UNIT_DIR}/{unit}"), 0o644, 0, 0);
    }
    let token = std::fs::read_to_string(format!("{ETC}/fagent.token")).expect("token");
    assert!(
        token.len() == 64 && token.chars().all(|c| c.is_ascii_hexdigit()),
        "a random token of 64 hex digits, got {} characters",
        token.len()
    );
    let api_tokens = std::fs::read_to_string(format!("{ETC}/api.tokens")).expect("api.tokens");
    assert!(
        api_tokens.lines().all(|l| l.starts_with('#')),
        "no API token until an operator adds one: {api_tokens}"
    );
    let conffiles = run("dpkg-query", &["-W", "-f=${Conffiles}", PACKAGE]);
    assert!(conffiles.contains(CONFIG), "conffiles: {conffiles}");
    assert_eq!(
        std::fs::read_to_string(CONFIG).expect("config"),
        include_str!("../../deploy/debian/config.toml")
    );
    let version = run("/usr/bin/haproxy-control", &["--version"]);
    assert_eq!(
        version.trim(),
        format!("haproxy-control {}", env!("CARGO_PKG_VERSION"))
    );
}

fn assert_system_user() {
    let entry = passwd_entry(SVC).expect("the haproxy-control user");
    let fields: Vec<&str> = entry.trim().split(':').collect();
    let uid: u32 = fields[2].parse().expect("uid");
    assert!(uid < 1000, "a system user: {entry}");
    assert_eq!(fields[3].parse::<u32>().ok(), Some(id("-g")));
    assert_eq!(fields[5], STATE_DIR, "{entry}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{entry}");
    assert!(group_entry(SVC).is_some(), "the haproxy-control group");
}

/// The settings each unit must have, read from the installed files.
fn assert_unit_settings() {
    for unit in SERVICES.iter().chain([&TEMPLATE]) {
        let u = Unit::read(unit);
        for (key, value) in [
            ("Restart", "on-failure"),
            ("User", SVC),
            ("Group", SVC),
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("LimitNOFILE", "65536"),
        ] {
            assert_eq!(u.get(key).as_deref(), Some(value), "{unit}: {key}");
        }
        let fagent = unit.contains("fagent");
        assert_eq!(
            u.get("ReadWritePaths").as_deref(),
            fagent.then_some(STATE_DIR),
            "{unit}: only the fagent writes, and only its state directory"
        );
        assert_eq!(
            u.get("SupplementaryGroups").as_deref(),
            fagent.then_some("haproxy"),
            "{unit}: only the fagent is in HAProxy's group"
        );
        let exec = u.get("ExecStart").expect("ExecStart");
        assert!(
            exec.starts_with(&format!("/usr/bin/haproxy-control --config {CONFIG} ")),
            "{unit}: {exec}"
        );
    }
    assert_eq!(
        Unit::read(TEMPLATE).get("ExecStart"),
        Unit::read("haproxy-control-worker.service").get("ExecStart")
    );
}

/// `systemd-analyze verify` on every installed unit (the template through
/// an instance). PID 1 is not systemd here, so it cannot start anything: it
/// loads each unit as systemd would and reports unknown keys, values that
/// do not parse, and an `ExecStart` program that does not exist or is not
/// executable. It does not check that `User=`/`Group=` exist (resolved
/// when starting), that units in `After=`/`Wants=` exist (not an error for
/// systemd either), nor apply the sandbox (the end-to-end part runs each
/// `ExecStart` as its user instead). `systemd-analyze security --offline`
/// then rates each unit's sandbox.
fn verify_units() {
    let mut units: Vec<String> = SERVICES.iter().map(|u| format!("{UNIT_DIR}/{u}")).collect();
    units.push("haproxy-control-worker@1.service".into());
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "systemd-analyze verify: {stderr}");
    let about_ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("haproxy-control"))
        .collect();
    assert!(about_ours.is_empty(), "systemd-analyze verify: {stderr}");
    for unit in SERVICES {
        let path = format!("{UNIT_DIR}/{unit}");
        let report = run("systemd-analyze", &["security", "--offline=true", &path]);
        let exposure: f64 = report
            .lines()
            .find_map(|l| l.strip_prefix("→ Overall exposure level for "))
            .and_then(|l| l.split_once(": "))
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level in: {report}"));
        assert!(exposure <= 2.0, "{unit}: exposure {exposure}\n{report}");
    }
}

/// HAProxy (its socket in group `haproxy`, mode 660, as Debian's config
/// has it), the fagent, worker, scheduler and API run from the installed
/// units' command lines as their user; an operator's drain through the API
/// reaches HAProxy exactly once.
async fn one_action_end_to_end() {
    let apps = HttpBackends::start(&["a", "b"]).await;
    let haproxy = TestHaproxy::start(&format!(
        "backend web\n  server web1_shop_1 {}\n  server web2_shop_1 {}\n",
        apps.addr("a"),
        apps.addr("b")
    ))
    .await;
    let spy = SocketSpy::start(&haproxy.socket).await;
    share_with_haproxy_group(&spy.socket);
    // Without HAProxy's group the service user cannot reach the socket:
    // the fagent's SupplementaryGroups is what lets it.
    let denied = Command::new("setpriv")
        .args(["--reuid", SVC, "--regid", SVC, "--clear-groups", "--"])
        .args([
            "socat",
            "-",
            &format!("UNIX-CONNECT:{}", spy.socket.display()),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("setpriv socat");
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("Permission denied"),
        "{denied:?}"
    );

    let sys = TestSystem::start().await;
    let logs = tempfile::tempdir().expect("logs");
    let ours = [
        ("DATABASE_URL", sys.db.url.clone()),
        ("AMQP_URL", AMQP_URL.to_owned()),
        ("AMQP_PREFIX", sys.prefix.clone()),
    ];
    let fagent_addr = format!("127.0.0.1:{}", free_port());
    let fagent = Unit::read("haproxy-control-fagent.service").start(
        logs.path(),
        &[
            ("FAGENT_LISTEN", fagent_addr.clone()),
            ("FAGENT_HAPROXY_SOCKET", spy.socket.display().to_string()),
        ],
    );
    let token = std::fs::read_to_string(format!("{ETC}/fagent.token")).expect("token");
    let http = haproxy_control::http::client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let health = eventually(WAIT, "the fagent's /v1/health", || async {
        let r = http
            .get(format!("http://{fagent_addr}/v1/health"))
            .bearer_auth(token.trim())
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(r.json::<Value>().await.ok()?)
    })
    .await;
    assert_eq!(health["status"], "ok", "{health} {}", fagent.log());

    // The operator registers the load balancer with the installed binary and
    // config, as root; the worker reads the token file when it calls. (An
    // async child: the socket spy runs on this test's runtime meanwhile.)
    let mut add = tokio::process::Command::new("/usr/bin/haproxy-control");
    add.args([
        "--config",
        CONFIG,
        "--log-format",
        "text",
        "instance",
        "add",
    ])
    .args([
        "--name",
        "lb-pkg",
        "--fagent-url",
        &format!("http://{fagent_addr}"),
    ])
    .args(["--token-file", &format!("{ETC}/fagent.token")])
    .envs(ours.iter().map(|(k, v)| (*k, v)));
    let said = add.output().await.expect("instance add");
    assert_succeeded("instance add", &said);
    let said = String::from_utf8_lossy(&said.stdout);
    assert!(
        said.contains("synced from its agent"),
        "{said}\n{}",
        fagent.log()
    );
    let server_id = sys.server_id("lb-pkg", "web", "web1_shop_1").await;

    // An operator's token for the API, added to the installed tokens file.
    let operator = format!("pkg-operator-{}", uuid::Uuid::new_v4().simple());
    let mut tokens = std::fs::OpenOptions::new()
        .append(true)
        .open(format!("{ETC}/api.tokens"))
        .expect("api.tokens");
    writeln!(tokens, "operator user:package-test {operator}").expect("append a token");
    drop(tokens);

    let with = |extra: &[(&'static str, String)]| {
        let mut env = ours.to_vec();
        env.extend_from_slice(extra);
        env
    };
    let worker = Unit::read("haproxy-control-worker.service").start(logs.path(), &ours);
    let scheduler = Unit::read("haproxy-control-scheduler.service")
        .start(logs.path(), &with(&[("SYNC_INTERVAL_SECS", "1".into())]));
    let api_addr = format!("127.0.0.1:{}", free_port());
    let api = Unit::read("haproxy-control-api.service")
        .start(logs.path(), &with(&[("API_LISTEN", api_addr.clone())]));
    let base = format!("http://{api_addr}");
    eventually(WAIT, "the API's /readyz", || async {
        let r = http.get(format!("{base}/readyz")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let anonymous = http
        .get(format!("{base}/api/haproxy/instances"))
        .send()
        .await
        .expect("API");
    assert_eq!(anonymous.status(), 401);

    let accepted: Value = http
        .post(format!("{base}/api/haproxy/servers/{server_id}/action"))
        .bearer_auth(&operator)
        .json(&json!({"action": "drain", "reason": "installed package"}))
        .send()
        .await
        .expect("POST action")
        .json()
        .await
        .expect("JSON");
    let txn = accepted["transaction_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{accepted} {}", api.log()))
        .to_owned();
    let action = eventually(WAIT, "the action to finish", || async {
        let body: Value = http
            .get(format!("{base}/api/haproxy/actions/{txn}"))
            .bearer_auth(&operator)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (!matches!(body["status"].as_str(), Some("pending" | "running"))).then_some(body)
    })
    .await;
    assert_eq!(action["status"], "success", "{action}\n{}", worker.log());
    assert_eq!(action["actor"], "user:package-test");
    assert_eq!(spy.count("set server"), 1, "{:?}", spy.lines("set server"));
    let bits = haproxy.admin_bits().await;
    assert!(
        bits.contains(&("web/web1_shop_1".to_owned(), 8)),
        "web1_shop_1 drained at HAProxy: {bits:?}"
    );
    let txn_id: uuid::Uuid = txn.parse().expect("uuid");
    sys.wait_event("action.succeeded", txn_id, WAIT).await;
    // The scheduler, as its unit runs it, syncs the instance on schedule.
    eventually(WAIT, "a scheduled sync", || async {
        let runs = sys.sync_runs_by("schedule").await;
        runs.iter().any(|r| r.status == "success").then_some(())
    })
    .await;
    for unit in [&fagent, &worker, &scheduler, &api] {
        unit.assert_running();
    }
}

/// Gives HAProxy's group access to `socket` (and its directory), as
/// Debian's haproxy.cfg does for /run/haproxy/admin.sock.
fn share_with_haproxy_group(socket: &Path) {
    let dir = socket.parent().expect("socket dir");
    run(
        "chgrp",
        &["haproxy", &dir.to_string_lossy(), &socket.to_string_lossy()],
    );
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750)).expect("chmod dir");
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660)).expect("chmod socket");
}

fn remove_keeps_the_configuration() {
    run("dpkg", &["-r", PACKAGE]);
    assert_eq!(installed_status().as_deref(), Some("rc"));
    for gone in [
        "/usr/bin/haproxy-control",
        &format!("{UNIT_DIR}/{TEMPLATE}"),
    ] {
        assert!(!Path::new(gone).exists(), "{gone} removed");
    }
    for unit in SERVICES {
        assert!(
            !Path::new(&format!("{UNIT_DIR}/{unit}")).exists(),
            "{unit} removed"
        );
    }
    for kept in [
        CONFIG,
        &format!("{ETC}/fagent.token"),
        &format!("{ETC}/api.tokens"),
    ] {
        assert!(Path::new(kept).exists(), "{kept} kept by dpkg -r");
    }
    assert!(
        std::fs::read_to_string(format!("{ETC}/api.tokens"))
            .expect("api.tokens")
            .contains("user:package-test"),
        "the operator's tokens survive a removal"
    );
}

fn purge_leaves_nothing(user_existed: bool) {
    run("dpkg", &["--purge", PACKAGE]);
    assert_eq!(installed_status(), None);
    for gone in [ETC, STATE_DIR] {
        assert!(!Path::new(gone).exists(), "{gone} removed by the purge");
    }
    let overrides = run("dpkg-statoverride", &["--list"]);
    assert!(!overrides.contains(ETC), "{overrides}");
    for unit in SERVICES {
        let masked = format!("/etc/systemd/system/{unit}");
        assert!(
            std::fs::symlink_metadata(&masked).is_err(),
            "{masked} left behind"
        );
    }
    // Debian keeps system accounts on purge; this test removes the one it
    // made, so the machine is as it was.
    assert!(
        passwd_entry(SVC).is_some(),
        "the purge keeps the system user"
    );
    if !user_existed {
        remove_system_user();
        assert!(passwd_entry(SVC).is_none() && group_entry(SVC).is_none());
    }
    std::fs::remove_file(MARKER).expect("marker");
}

/// One installed unit file's `[Service]` settings.
struct Unit {
    name: String,
    settings: Vec<(String, String)>,
}

/// A unit's `ExecStart` running as its user, killed when dropped (and
/// when this test's process dies: `--pdeathsig`).
struct UnitProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Unit {
    fn read(name: &str) -> Unit {
        let text = std::fs::read_to_string(format!("{UNIT_DIR}/{name}"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let settings = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with('['))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Unit {
            name: name.to_owned(),
            settings,
        }
    }

    /// The last value of `key`.
    fn get(&self, key: &str) -> Option<String> {
        self.settings
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    /// Runs `ExecStart` as systemd would start it, minus the namespaces:
    /// as `User=`/`Group=` with exactly `SupplementaryGroups=`, no new
    /// privileges, the unit's `Environment=` and a clean environment
    /// besides, plus `overrides` (this test's database, queues, ports) and
    /// text logs to a file.
    fn start(&self, logs: &Path, overrides: &[(&'static str, String)]) -> UnitProcess {
        let user = self.get("User").expect("User=");
        let group = self.get("Group").expect("Group=");
        let exec = self.get("ExecStart").expect("ExecStart=");
        let log = logs.join(format!("{}.log", self.name));
        let mut command = Command::new("setpriv");
        command.args(["--reuid", &user, "--regid", &group, "--no-new-privs"]);
        command.arg("--pdeathsig=KILL");
        match self.get("SupplementaryGroups") {
            Some(groups) => command.args(["--groups", &groups.replace(' ', ",")]),
            None => command.arg("--clear-groups"),
        };
        command
            .arg("--")
            .args(exec.split_whitespace())
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LOG_FORMAT", "text")
            .env("RUST_LOG", "info");
        for (key, value) in &self.settings {
            if key == "Environment" {
                let (k, v) = value.split_once('=').expect("Environment=K=V");
                command.env(k, v);
            }
        }
        command.envs(overrides.iter().map(|(k, v)| (*k, v)));
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log"))
            .spawn()
            .expect("setpriv");
        UnitProcess {
            name: self.name.clone(),
            child,
            log,
        }
    }
}

impl UnitProcess {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&self) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: signal 0 only asks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ");
        assert!(alive, "{} exited:\n{}", self.name, self.log());
    }
}

impl Drop for UnitProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn passwd_entry(name: &str) -> Option<String> {
    getent("passwd", name)
}

fn group_entry(name: &str) -> Option<String> {
    getent("group", name)
}

fn getent(db: &str, name: &str) -> Option<String> {
    let output = Command::new("getent").args([db, name]).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The service user's uid (`-u`) or gid (`-g`).
fn id(which: &str) -> u32 {
    run("id", &[which, SVC]).trim().parse().expect("a number")
}

/// Runs a program that must succeed; its stdout.
fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert_succeeded(&format!("{program} {}", args.join(" ")), &output);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[track_caller]
fn assert_succeeded(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
