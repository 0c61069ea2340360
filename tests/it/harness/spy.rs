//! A unix-socket proxy between a fagent and HAProxy's stats socket that
//! records every runtime-API command, when it started and when its reply
//! was fully sent back, and can hold chosen commands for a while.
//!
//! HAProxy's non-interactive mode is assumed: the client sends one line (one
//! command, or several joined with `;`, each recorded on its own), the
//! server answers and closes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::{JoinHandle, JoinSet};

/// The longest command line the spy reads before forwarding anyway.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// One command that went through the spy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The command line, without its line ending.
    pub line: String,
    /// When the line had been read from the client.
    pub started: Instant,
    /// When the reply had been fully sent back (or the client connection was
    /// closed because HAProxy could not be reached).
    pub finished: Instant,
}

#[derive(Debug)]
struct Entry {
    line: String,
    started: Instant,
    finished: Option<Instant>,
}

#[derive(Debug, Default)]
struct Shared {
    /// Every command received, in the order the lines were read.
    entries: Mutex<Vec<Entry>>,
    /// Command prefixes to hold, and for how long.
    delays: Mutex<Vec<(String, Duration)>>,
    /// Command patterns whose reply is held back after HAProxy answered.
    reply_delays: Mutex<Vec<(String, Duration)>>,
}

/// A pattern ending in `$` matches the whole command; otherwise a prefix.
fn matches(pattern: &str, command: &str) -> bool {
    match pattern.strip_suffix('$') {
        Some(exact) => command == exact,
        None => command.starts_with(pattern),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn delay_for(&self, line: &str) -> Duration {
        lock(&self.delays)
            .iter()
            .filter(|(pattern, _)| matches(pattern, line))
            .map(|(_, d)| *d)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    fn reply_delay_for(&self, line: &str) -> Duration {
        lock(&self.reply_delays)
            .iter()
            .filter(|(pattern, _)| matches(pattern, line))
            .map(|(_, d)| *d)
            .max()
            .unwrap_or(Duration::ZERO)
    }
}

/// A unix-socket proxy in front of HAProxy's stats socket. Point a fagent at
/// [`SocketSpy::socket`]. Stops when dropped.
pub struct SocketSpy {
    /// Where the spy listens.
    pub socket: PathBuf,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl SocketSpy {
    /// Listens on a new socket in its own temp dir and forwards every
    /// connection's command to `upstream`.
    pub async fn start(upstream: &Path) -> SocketSpy {
        let dir = tempfile::tempdir().expect("tempdir for the spy socket");
        let socket = dir.path().join("spy.sock");
        let listener = UnixListener::bind(&socket).expect("bind the spy socket");
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(accept_loop(
            listener,
            upstream.to_owned(),
            Arc::clone(&shared),
        ));
        SocketSpy {
            socket,
            shared,
            task,
            _dir: dir,
        }
    }

    /// Holds commands starting with `prefix` for `d` before forwarding them.
    /// `Duration::ZERO` removes the delay. Takes effect for lines read from
    /// now on; when several prefixes match, the longest delay applies.
    pub fn set_delay(&self, prefix: &str, d: Duration) {
        let mut delays = lock(&self.shared.delays);
        delays.retain(|(p, _)| p != prefix);
        if !d.is_zero() {
            delays.push((prefix.to_owned(), d));
        }
    }

    /// Holds the reply to commands matching `pattern` (a prefix, or a whole
    /// command when it ends in `$`) for `d` after HAProxy answered: the
    /// client gets a reading older than HAProxy's state.
    pub fn set_reply_delay(&self, pattern: &str, d: Duration) {
        let mut delays = lock(&self.shared.reply_delays);
        delays.retain(|(p, _)| p != pattern);
        if !d.is_zero() {
            delays.push((pattern.to_owned(), d));
        }
    }

    /// Every finished command, in the order the lines were read. Commands
    /// still in flight are left out (see [`SocketSpy::count`]).
    pub fn records(&self) -> Vec<Record> {
        lock(&self.shared.entries)
            .iter()
            .filter_map(|e| {
                Some(Record {
                    line: e.line.clone(),
                    started: e.started,
                    finished: e.finished?,
                })
            })
            .collect()
    }

    /// How many commands starting with `prefix` were received, including
    /// those still in flight.
    pub fn count(&self, prefix: &str) -> usize {
        lock(&self.shared.entries)
            .iter()
            .filter(|e| e.line.starts_with(prefix))
            .count()
    }

    /// The received command lines starting with `prefix`, in order,
    /// including those still in flight.
    pub fn lines(&self, prefix: &str) -> Vec<String> {
        lock(&self.shared.entries)
            .iter()
            .filter(|e| e.line.starts_with(prefix))
            .map(|e| e.line.clone())
            .collect()
    }

    /// The largest number of finished commands matching `filter` whose
    /// `[started, finished]` intervals overlap at one instant.
    pub fn max_concurrency(&self, filter: impl Fn(&str) -> bool) -> usize {
        max_overlap(
            self.records()
                .iter()
                .filter(|r| filter(&r.line))
                .map(|r| (r.started, r.finished)),
        )
    }
}

impl Drop for SocketSpy {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which aborts every
        // connection task.
        self.task.abort();
    }
}

/// The most closed intervals covering one instant.
fn max_overlap(intervals: impl Iterator<Item = (Instant, Instant)>) -> usize {
    // (instant, 0 = start, 1 = end): at equal instants starts sort first, so
    // touching closed intervals count as overlapping.
    let mut events: Vec<(Instant, u8)> = intervals
        .flat_map(|(s, f)| [(s, 0), (f.max(s), 1)])
        .collect();
    events.sort();
    let (mut now, mut max) = (0usize, 0usize);
    for (_, kind) in events {
        if kind == 0 {
            now += 1;
            max = max.max(now);
        } else {
            now = now.saturating_sub(1);
        }
    }
    max
}

async fn accept_loop(listener: UnixListener, upstream: PathBuf, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        while conns.try_join_next().is_some() {}
        conns.spawn(relay(client, upstream.clone(), Arc::clone(&shared)));
    }
}

/// Reads the client's line, records it, forwards it and copies the reply back.
async fn relay(mut client: UnixStream, upstream: PathBuf, shared: Arc<Shared>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut client_eof = false;
    while !buf.contains(&b'\n') && buf.len() < MAX_LINE_BYTES {
        match client.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                client_eof = true;
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    if buf.is_empty() {
        return;
    }
    let started = Instant::now();
    let end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = String::from_utf8_lossy(&buf[..end])
        .trim_end_matches('\r')
        .to_owned();
    // One line may carry several `;`-separated commands: each is recorded
    // as a command of its own, with the exchange's timing.
    let commands: Vec<String> = line.split(';').map(|c| c.trim().to_owned()).collect();
    let indices: Vec<usize> = {
        let mut entries = lock(&shared.entries);
        commands
            .iter()
            .map(|c| {
                entries.push(Entry {
                    line: c.clone(),
                    started,
                    finished: None,
                });
                entries.len() - 1
            })
            .collect()
    };

    let delay = commands
        .iter()
        .map(|c| shared.delay_for(c))
        .max()
        .unwrap_or(Duration::ZERO);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let reply_delay = commands
        .iter()
        .map(|c| shared.reply_delay_for(c))
        .max()
        .unwrap_or(Duration::ZERO);
    forward(&mut client, &upstream, &buf, client_eof, reply_delay).await;
    let _ = client.shutdown().await;
    drop(client);
    let finished = Instant::now();
    let mut entries = lock(&shared.entries);
    for index in indices {
        if let Some(e) = entries.get_mut(index) {
            e.finished = Some(finished);
        }
    }
}

/// Sends `request` upstream and copies the whole reply to `client`. Any
/// failure (HAProxy down, reset) just ends the exchange.
async fn forward(
    client: &mut UnixStream,
    upstream: &Path,
    request: &[u8],
    client_eof: bool,
    reply_delay: Duration,
) {
    let Ok(mut server) = UnixStream::connect(upstream).await else {
        return;
    };
    if server.write_all(request).await.is_err() {
        return;
    }
    if client_eof {
        // No line ending came: let HAProxy see the end of input.
        let _ = server.shutdown().await;
    }
    if reply_delay.is_zero() {
        let _ = tokio::io::copy(&mut server, client).await;
        return;
    }
    // HAProxy has answered (its state was read now); the client gets the
    // reply only later, as from a slow agent or network.
    let mut reply = Vec::new();
    let _ = server.read_to_end(&mut reply).await;
    tokio::time::sleep(reply_delay).await;
    let _ = client.write_all(&reply).await;
}
