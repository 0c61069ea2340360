//! A PostgreSQL server of a test's own: `initdb` in a temporary directory
//! with the default settings (`max_connections` = 100), on a free loopback
//! port with its unix socket in that directory, so the test counts only its
//! own sessions, never those of tests running beside it on the shared
//! server. PostgreSQL refuses to run as root: when the test runs as root,
//! the server runs as user `postgres` (`runuser`). Stopped with
//! `pg_ctl stop -m immediate` when dropped.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::free_port;

/// Where Debian's `postgresql-15` package puts `initdb` and `pg_ctl`.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct OwnPostgres {
    /// `postgres://postgres@127.0.0.1:PORT/postgres`
    pub admin_url: String,
    data: PathBuf,
    dir: tempfile::TempDir,
}

impl OwnPostgres {
    /// Initialises and starts the server; panics with the server's log when
    /// it does not come up.
    pub fn start() -> OwnPostgres {
        let dir = tempfile::tempdir().expect("tempdir");
        if running_as_root() {
            run(Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path()));
        }
        let data = dir.path().join("data");
        run(pg_command(dir.path(), "initdb")
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions", "-D"])
            .arg(&data));
        let port = free_port();
        let log = dir.path().join("server.log");
        // Durability does not matter here; connection limits are left alone.
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            dir.path().display()
        );
        let started = pg_command(dir.path(), "pg_ctl")
            .args(["-w", "-t", "30", "-o", &options, "-l"])
            .arg(&log)
            .arg("-D")
            .arg(&data)
            .arg("start")
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl start");
        assert!(
            started.success(),
            "PostgreSQL did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        OwnPostgres {
            admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            data,
            dir,
        }
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = pg_command(self.dir.path(), "pg_ctl")
            .args(["stop", "-m", "immediate", "-D"])
            .arg(&self.data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `/proc/self` belongs to the process's effective user.
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A PostgreSQL program, as user `postgres` when running as root, in `dir`
/// (`postgres` may not enter the caller's working directory).
fn pg_command(dir: &Path, program: &str) -> Command {
    let program = Path::new(PG_BIN).join(program);
    let mut command = if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    command.current_dir(dir);
    command
}

fn run(command: &mut Command) {
    let out = command.output().expect("start a PostgreSQL tool");
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
