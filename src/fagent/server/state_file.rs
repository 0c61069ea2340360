//! HAProxy's server-state file, kept by the agent so that a reload keeps
//! every drain and maint: HAProxy reads the file at start when its config
//! says `server-state-file <path>` (in `global`) and
//! `load-server-state-from-file global` (in `defaults`). The file is the
//! output of `show servers state` (version line `1`, a header, one line per
//! server), written atomically: a temp file in the same directory, fsync,
//! rename, fsync of the directory. A new HAProxy process therefore sees the
//! previous file or the new one, never half of one.
//!
//! It is written at start, every `interval`, and after every applied change
//! (before the change is answered, so a change the worker recorded is in
//! the file). Concurrent changes share one write. A failed write is logged
//! and never fails a change: HAProxy's state is what the agent answers for,
//! the file is a copy of it for the next reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::runtime::{Haproxy, RuntimeError};

/// Where the agent keeps the file and how often it rewrites it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFileSettings {
    pub path: PathBuf,
    /// Between writes that no change asked for (HAProxy may change a
    /// server's state itself, or be changed by someone else).
    pub interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("`show servers state` did not answer with its version line 1: {0:?}")]
    Unexpected(String),
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// The writer shared by the request handlers (which ask for a write after
/// a change) and the background task (which writes).
#[derive(Debug)]
pub(crate) struct StateFile {
    settings: StateFileSettings,
    /// How long a change waits for its write before it is answered anyway.
    wait: Duration,
    /// Writes asked for so far; a write that starts after a request has
    /// been counted includes that request's change.
    requested: AtomicU64,
    wake: Notify,
    /// The `requested` count read by the last finished write attempt.
    written: watch::Sender<u64>,
}

impl StateFile {
    pub(crate) fn new(settings: StateFileSettings, socket_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            settings,
            wait: socket_timeout * 2 + Duration::from_secs(5),
            requested: AtomicU64::new(0),
            wake: Notify::new(),
            written: watch::Sender::new(0),
        })
    }

    /// Asks for a write after a change was applied and waits (boundedly)
    /// until a write that started after the change has finished.
    pub(crate) async fn after_change(&self) {
        let wanted = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.wake.notify_one();
        let mut written = self.written.subscribe();
        let done = tokio::time::timeout(self.wait, written.wait_for(|n| *n >= wanted)).await;
        if !matches!(done, Ok(Ok(_))) {
            tracing::warn!(
                state_file = %self.settings.path.display(),
                wait = ?self.wait,
                "the state file was not written in time after a change; answering anyway"
            );
        }
    }

    /// Starts the background writer; it stops when the returned guard is
    /// dropped.
    pub(crate) fn spawn(self: &Arc<Self>, haproxy: Haproxy) -> WriterTask {
        WriterTask(tokio::spawn(self.clone().run(haproxy)))
    }

    /// Writes at once (the interval's first tick), then whenever a change
    /// asks or the interval passes.
    async fn run(self: Arc<Self>, haproxy: Haproxy) {
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.wake.notified() => {}
            }
            let asked = self.requested.load(Ordering::SeqCst);
            match self.write_once(&haproxy).await {
                Ok(bytes) => tracing::debug!(
                    state_file = %self.settings.path.display(), bytes, "state file written"
                ),
                Err(e) => tracing::warn!(
                    state_file = %self.settings.path.display(), error = %e,
                    "cannot write the state file; the next reload may lose runtime states"
                ),
            }
            self.written.send_replace(asked);
        }
    }

    async fn write_once(&self, haproxy: &Haproxy) -> Result<usize, StateFileError> {
        let text = haproxy.servers_state().await?;
        if text.lines().next() != Some("1") {
            return Err(StateFileError::Unexpected(text.chars().take(200).collect()));
        }
        let path = self.settings.path.clone();
        let bytes = text.len();
        tokio::task::spawn_blocking(move || write_atomically(&path, text.as_bytes()))
            .await
            .map_err(|e| StateFileError::Io {
                path: self.settings.path.display().to_string(),
                source: std::io::Error::other(e.to_string()),
            })??;
        Ok(bytes)
    }
}

/// Aborts the background writer when dropped.
#[derive(Debug)]
pub(crate) struct WriterTask(tokio::task::JoinHandle<()>);

impl Drop for WriterTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Replaces `path` with `contents`: temp file in the same directory, fsync,
/// rename over `path`, fsync of the directory (so the rename survives a
/// crash).
///
/// # Errors
/// [`StateFileError::Io`]; the temp file is removed on failure.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), StateFileError> {
    use std::io::Write;
    let io = |source: std::io::Error| StateFileError::Io {
        path: path.display().to_string(),
        source,
    };
    let name = path.file_name().ok_or_else(|| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the state file path names no file",
        ))
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = dir.join(temp_name);
    let written = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_replaces_the_file_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state");
        std::fs::write(&path, "old").expect("write");
        write_atomically(&path, b"1\n# header\n").expect("written");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "1\n# header\n"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("state")]);
    }

    #[test]
    fn a_failed_write_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("no-such-dir").join("state");
        let err = write_atomically(&path, b"1\n").expect_err("no directory");
        assert!(err.to_string().contains("no-such-dir"), "{err}");
        assert!(write_atomically(Path::new("/"), b"1\n").is_err());
    }
}
