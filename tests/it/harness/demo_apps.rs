//! The rollout tests' demo applications: one `tests/fixtures/rollout/app.py`
//! process per name, each on a free loopback port with its own directory
//! (its `version`, `pid`, `runs` and `fail` files), which the fixture
//! playbook `update.yml` updates and restarts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{eventually, free_port};

/// The fixtures' directory: `app.py` and `update.yml`.
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rollout")
}

/// `ansible-playbook` of the project's venv (`deploy/ensure-deps.sh`).
pub fn ansible_playbook() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/ansible/bin/ansible-playbook");
    assert!(
        path.is_file(),
        "{} is missing: run deploy/ensure-deps.sh",
        path.display()
    );
    path
}

struct DemoApp {
    name: String,
    port: u16,
    dir: PathBuf,
    first: Child,
}

/// Running demo applications; all are killed on drop, the restarted ones
/// too (found by their pid file).
pub struct DemoApps {
    apps: Vec<DemoApp>,
    root: tempfile::TempDir,
}

impl DemoApps {
    /// Starts one app per name with version `v1` and waits until each
    /// answers `/health`.
    pub async fn start(names: &[&str]) -> Self {
        let root = tempfile::tempdir().expect("tempdir for demo apps");
        let apps = names.iter().map(|n| start_one(root.path(), n)).collect();
        let apps = Self { apps, root };
        for app in &apps.apps {
            wait_healthy(app).await;
        }
        apps
    }

    fn app(&self, name: &str) -> &DemoApp {
        self.apps
            .iter()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("no demo app {name}"))
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.app(name).port))
    }

    /// The directory of every app's directory (`apps_root` of `update.yml`).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Its directory; its base name is the app's name.
    pub fn dir(&self, name: &str) -> &Path {
        &self.app(name).dir
    }

    /// The version file's contents (what the next start serves).
    pub fn version(&self, name: &str) -> String {
        read(&self.dir(name).join("version")).trim().to_owned()
    }

    /// The version the running process serves on `GET /`, if it answers.
    pub async fn served_version(&self, name: &str) -> Option<String> {
        let url = format!("http://{}/", self.addr(name));
        let body = http().get(url).send().await.ok()?.text().await.ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix("version="))
            .map(str::to_owned)
    }

    /// How often the playbook ran for this app (lines of its `runs` file).
    pub fn runs(&self, name: &str) -> usize {
        std::fs::read_to_string(self.dir(name).join("runs")).map_or(0, |s| s.lines().count())
    }

    /// The pid in its pid file.
    pub fn pid(&self, name: &str) -> Option<i32> {
        pid_in(self.dir(name))
    }
}

impl Drop for DemoApps {
    fn drop(&mut self) {
        for app in &mut self.apps {
            let _ = app.first.kill();
            let _ = app.first.wait();
            if let Some(pid) = pid_in(&app.dir).filter(|&p| is_demo_app(p, &app.dir)) {
                // SAFETY: kill(2) takes plain integers and touches no memory.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

fn start_one(root: &Path, name: &str) -> DemoApp {
    let dir = root.join(name);
    std::fs::create_dir(&dir).expect("demo app dir");
    std::fs::write(dir.join("version"), "v1\n").expect("write version");
    let log = std::fs::File::create(dir.join("app.log")).expect("app.log");
    let port = free_port();
    // For a rollout's hook, which knows the server's name only.
    std::fs::write(dir.join("port"), port.to_string()).expect("write port");
    let first = Command::new("python3")
        .arg(fixture_dir().join("app.py"))
        .args(["--port", &port.to_string(), "--dir"])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log)
        .spawn()
        .expect("start python3 app.py");
    DemoApp {
        name: name.to_owned(),
        port,
        dir,
        first,
    }
}

async fn wait_healthy(app: &DemoApp) {
    let url = format!("http://127.0.0.1:{}/health", app.port);
    let what = format!("demo app {} to answer", app.name);
    eventually(Duration::from_secs(10), &what, || {
        let url = url.clone();
        async move { http().get(url).send().await.ok().map(|_| ()) }
    })
    .await;
}

fn http() -> reqwest::Client {
    haproxy_control::http::client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn pid_in(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` is still an app.py serving `dir` (not a reused pid).
fn is_demo_app(pid: i32, dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let cmdline = String::from_utf8_lossy(&cmdline);
    cmdline.contains("app.py") && cmdline.contains(&*dir.to_string_lossy())
}
