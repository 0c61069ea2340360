//! Running an update hook on the worker's host: no shell, its own process
//! group, a time limit that kills the whole group, and output kept bounded
//! while it runs. Also the filesystem checks of an `ansible` hook's
//! playbook, which the pure `domain::rollout_hook::parse_update` cannot do.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::tail::{OUTPUT_LIMIT, Tail};
use crate::domain::rollout_hook::{HookPolicy, HookSpec, UpdateHook, parse_update};

/// The variables of the worker's environment a hook sees (besides those
/// given to [`run`]); the worker's own secrets (database, broker, tokens)
/// are not among them.
pub const INHERITED_ENV: [&str; 9] = [
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "SSH_AUTH_SOCK",
];

/// How long output is still read after the hook has exited, for processes
/// outside its group (a daemon it started with `setsid`) that kept the pipe.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// What one run of a hook did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRun {
    /// The exit code; `None` when a signal ended it.
    pub exit_code: Option<i32>,
    /// The signal that ended it (9 after a timeout).
    pub signal: Option<i32>,
    /// The time limit was reached and the process group killed.
    pub timed_out: bool,
    /// stdout and stderr interleaved as written, the last 64 KiB as lossy
    /// UTF-8, after a `[… N bytes cut]` line when longer.
    pub output: String,
    pub duration: Duration,
}

impl HookRun {
    /// Exit code 0 within the time limit.
    pub fn succeeded(&self) -> bool {
        !self.timed_out && self.exit_code == Some(0)
    }
}

/// Parses the request's `update` ([`parse_update`]) and, for an `ansible`
/// hook, checks its playbook on disk ([`check_playbook`]) and keeps the
/// canonical path. The error is a 422 message.
pub fn validate_update(v: &Value, policy: &HookPolicy) -> Result<HookSpec, String> {
    let mut spec = parse_update(v, policy)?;
    if let UpdateHook::Ansible { playbook, .. } = &mut spec.hook {
        *playbook = check_playbook(policy, playbook)?;
    }
    Ok(spec)
}

/// The canonical path of `playbook` if it is an existing file inside the
/// configured playbook directory once symlinks are resolved.
pub fn check_playbook(policy: &HookPolicy, playbook: &Path) -> Result<PathBuf, String> {
    let dir = policy
        .playbook_dir
        .as_ref()
        .ok_or("update.kind `ansible` is not enabled: no rollout.playbook_dir is configured")?;
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("rollout.playbook_dir {} cannot be read: {e}", dir.display()))?;
    let shown = playbook.display();
    let path = playbook
        .canonicalize()
        .map_err(|_| format!("update.playbook {shown} does not exist"))?;
    if !path.starts_with(&dir) {
        return Err(format!(
            "update.playbook {shown} leads outside the playbook directory {}",
            dir.display()
        ));
    }
    if !path.is_file() {
        return Err(format!("update.playbook {shown} is not a file"));
    }
    Ok(path)
}

/// Spawns argv (no shell) in its own process group, stdin null, with the
/// variables of [`INHERITED_ENV`] plus `env`. Output is collected bounded to
/// the last 64 KiB while it runs. On timeout the whole process group is
/// killed (SIGKILL) and reaped. When the hook exits, what it left in its
/// group is killed too; a hook that starts a daemon must detach it
/// (`setsid`). If this future is dropped, the group is killed.
///
/// # Errors
/// An empty argv, or a program that cannot be started.
pub async fn run(
    argv: &[String],
    timeout: Duration,
    env: &[(String, String)],
) -> io::Result<HookRun> {
    let started = Instant::now();
    let (reader, writer) = io::pipe()?;
    let mut child = spawn(argv, env, writer)?;
    let group = ProcessGroup::of(&child)?;
    let tail = Arc::new(Mutex::new(Tail::new(OUTPUT_LIMIT)));
    let mut reading = AbortOnDrop(tokio::spawn(read_into(reader, Arc::clone(&tail))));
    let (status, timed_out) = wait(&mut child, &group, timeout).await?;
    drop(group);
    let _ = tokio::time::timeout(OUTPUT_GRACE, &mut reading.0).await;
    drop(reading);
    let output = tail.lock().unwrap_or_else(PoisonError::into_inner).text();
    Ok(HookRun {
        exit_code: status.code(),
        signal: status.signal(),
        timed_out,
        output,
        duration: started.elapsed(),
    })
}

fn spawn(argv: &[String], env: &[(String, String)], out: io::PipeWriter) -> io::Result<Child> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a hook's argv is empty"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(
            INHERITED_ENV
                .iter()
                .filter_map(|k| Some((k, std::env::var_os(k)?))),
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .kill_on_drop(true);
    let worker = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only
    // makes the system calls of `die_with_worker`, which are
    // async-signal-safe; it neither allocates nor takes a lock.
    unsafe {
        cmd.pre_exec(move || die_with_worker(worker));
    }
    // `cmd` (and its copies of the pipe's write end) is dropped on return,
    // so the pipe closes when the hook's processes have exited.
    cmd.spawn()
}

/// Run in the hook's first process before exec: it gets SIGKILL when the
/// worker dies. A hook runs under its server's advisory lock, which dies
/// with the worker's connection; the redelivered hook message then runs the
/// hook again on another worker, so a hook that outlived a SIGKILLed worker
/// would run beside its own re-run (proved by
/// `rollout::crash::a_rollout_of_12_servers_survives_3_worker_sigkills_acting_once_per_step`).
/// Processes the hook started itself are reparented, not killed: a hook's
/// children should end with it (docs/reliability.md, issue 12).
///
/// The signal follows the thread that spawned the hook: an async task's
/// runtime thread, which lives as long as the worker.
fn die_with_worker(worker: u32) -> io::Result<()> {
    // SAFETY: prctl(2) with integer arguments touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // The worker may have died before prctl: then no signal would come.
    // SAFETY: getppid(2) has no arguments and cannot fail.
    let parent = unsafe { libc::getppid() };
    if u32::try_from(parent).ok() != Some(worker) {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// Waits for the hook's exit or its time limit; on the limit, kills its
/// group and reaps it.
async fn wait(
    child: &mut Child,
    group: &ProcessGroup,
    timeout: Duration,
) -> io::Result<(ExitStatus, bool)> {
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => Ok((status?, false)),
        Err(_) => {
            group.kill();
            Ok((child.wait().await?, true))
        }
    }
}

async fn read_into(reader: io::PipeReader, tail: Arc<Mutex<Tail>>) -> io::Result<()> {
    let mut rx = pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = rx.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        tail.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(&buf[..n]);
    }
}

/// The hook's process group; every process still in it is killed (SIGKILL)
/// when this is dropped.
struct ProcessGroup {
    pgid: libc::pid_t,
}

impl ProcessGroup {
    /// The group of a child spawned with `process_group(0)`: its own pid.
    fn of(child: &Child) -> io::Result<Self> {
        let pid = child
            .id()
            .ok_or_else(|| io::Error::other("the hook exited before it had a pid"))?;
        let pgid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
        Ok(Self { pgid })
    }

    fn kill(&self) {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours;
        // a negative pid addresses the process group.
        unsafe {
            libc::kill(-self.pgid, libc::SIGKILL);
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Aborts the output reader if `run` is dropped before it ends.
struct AbortOnDrop(JoinHandle<io::Result<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
