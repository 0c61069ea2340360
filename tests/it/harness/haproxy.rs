//! A real `haproxy` process with a temporary config and its own stats socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct TestHaproxy {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub socket: PathBuf,
    config: PathBuf,
    /// HAProxy's `server-state-file`, when started with one.
    pub state_file: Option<PathBuf>,
}

fn haproxy_bin() -> String {
    std::env::var("HAPROXY_BIN").unwrap_or_else(|_| "haproxy".into())
}

impl TestHaproxy {
    /// Replaces the config's body and restarts HAProxy with it (the socket
    /// path stays), as an operator's reload after editing the config.
    pub async fn reload(&mut self, body: &str) {
        let text = Self::config_text(&self.socket, self.state_file.as_deref(), body);
        std::fs::write(&self.config, text).expect("write haproxy.cfg");
        self.restart().await;
    }

    /// With `state_file`, the two lines that make a reload start every
    /// server from that file (docs/haproxy-reloads.md).
    fn config_text(socket: &Path, state_file: Option<&Path>, body: &str) -> String {
        let (global, defaults) = match state_file {
            Some(path) => (
                format!("  server-state-file {}\n", path.display()),
                "  load-server-state-from-file global\n",
            ),
            None => (String::new(), ""),
        };
        format!(
            "global\n  stats socket {} mode 600 level admin\n  stats timeout 30s\n{global}\
             defaults\n  mode http\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n{defaults}\n{body}\n",
            socket.display()
        )
    }

    /// Starts HAProxy like [`TestHaproxy::start`], configured to load its
    /// servers' states at start from `server-state` in its directory.
    pub async fn start_with_state_file(body: &str) -> Self {
        Self::start_in(body, true).await
    }

    /// Starts HAProxy with `body` (frontends, backends) after a generated
    /// `global` (admin stats socket in a temp dir) and `defaults` section,
    /// and waits until its socket answers.
    pub async fn start(body: &str) -> Self {
        Self::start_in(body, false).await
    }

    async fn start_in(body: &str, with_state_file: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("admin.sock");
        let config = dir.path().join("haproxy.cfg");
        let state_file = with_state_file.then(|| dir.path().join("server-state"));
        let text = Self::config_text(&socket, state_file.as_deref(), body);
        std::fs::write(&config, text).expect("write haproxy.cfg");
        let mut h = Self {
            dir,
            child: None,
            socket,
            config,
            state_file,
        };
        h.spawn().await;
        h
    }

    /// Reloads HAProxy the way `systemctl reload` does, with the same
    /// config: a new process takes the stats socket over (HAProxy swaps the
    /// socket file atomically, so the socket never stops answering) and the
    /// old one is told to finish (`-sf`) and exits. Like any reload without
    /// a `server-state-file`, the new process starts from the config: every
    /// runtime change (`set server … state`) is lost.
    pub async fn reload_graceful(&mut self) {
        let old = self.child.take().expect("haproxy is running");
        self.launch(&["-sf".to_owned(), old.id().to_string()]).await;
        let mut old = old;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while old.try_wait().ok().flatten().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the old haproxy did not exit after the reload: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        self.launch(&[]).await;
    }

    /// Starts a haproxy process with the config (and `extra` arguments) and
    /// waits until that process answers on the socket.
    async fn launch(&mut self, extra: &[String]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("haproxy.log"))
            .expect("log file");
        let child = Command::new(haproxy_bin())
            .arg("-db")
            .arg("-f")
            .arg(&self.config)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("haproxy must be installed (apt-get install haproxy)");
        let pid_line = format!("Pid: {}\n", child.id());
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(info) = self.try_cmd("show info").await
                && info.contains("Name: HAProxy")
                && info.contains(&pid_line)
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("haproxy exited with {status}: {}", self.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "haproxy did not open its socket: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The temporary directory holding this HAProxy's config, socket and log.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    /// Stops the process (SIGKILL) and removes the socket.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Starts it again with the same config and socket.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    async fn try_cmd(&self, line: &str) -> std::io::Result<String> {
        let mut s = tokio::net::UnixStream::connect(&self.socket).await?;
        s.write_all(format!("{line}\n").as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    /// Runs one runtime-API command straight on the socket.
    pub async fn cmd(&self, line: &str) -> String {
        self.try_cmd(line).await.expect("haproxy socket answers")
    }

    /// `srv_admin_state` bits of every server, by `backend/server`.
    pub async fn admin_bits(&self) -> Vec<(String, u32)> {
        let out = self.cmd("show servers state").await;
        out.lines()
            .filter(|l| !l.starts_with('#') && l.split_whitespace().count() > 6)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((format!("{}/{}", f[1], f[3]), f[6].parse().ok()?))
            })
            .collect()
    }
}

impl Drop for TestHaproxy {
    fn drop(&mut self) {
        self.stop();
    }
}
