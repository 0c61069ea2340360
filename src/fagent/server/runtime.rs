//! HAProxy's runtime API over its stats socket (unix path or TCP address).
//! One connection per command: HAProxy's non-interactive mode answers one
//! line and closes, which keeps a restarted HAProxy transparent to callers.

mod group;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::domain::servers_state::{self, ServerStateRow};
use crate::domain::show_stat::{self, StatKind};
use crate::domain::snapshot::{self, BackendSnapshot, ServerSnapshot};
use crate::domain::{AdminState, BackendName, ServerName};
use crate::fagent::server::show_info::{self, ShowInfo};
use crate::fagent::wire::HaproxyProcess;
pub use group::{Change, MAX_LINE_BYTES, Outcome};

/// The largest reply read from the socket; `show stat` of 50,000 servers is
/// well under this.
const MAX_REPLY_BYTES: u64 = 256 * 1024 * 1024;

/// Where the stats socket is: `unix:/path`, `tcp:host:port`, a path with a
/// `/`, or a `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketTarget {
    Unix(PathBuf),
    Tcp(String),
}

impl FromStr for SocketTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            return Ok(SocketTarget::Unix(path.into()));
        }
        if let Some(addr) = s.strip_prefix("tcp:") {
            return Ok(SocketTarget::Tcp(addr.to_owned()));
        }
        if s.contains('/') {
            return Ok(SocketTarget::Unix(s.into()));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(SocketTarget::Tcp(s.to_owned()))
            }
            _ => Err(format!(
                "{s:?} is neither a socket path (contains '/') nor a host:port address"
            )),
        }
    }
}

impl fmt::Display for SocketTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketTarget::Unix(p) => write!(f, "unix:{}", p.display()),
            SocketTarget::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error("HAProxy runtime socket {target} is unreachable: {source}")]
    Unreachable {
        target: String,
        source: Arc<std::io::Error>,
    },
    #[error("HAProxy runtime socket {target} did not answer within {timeout:?}")]
    Timeout { target: String, timeout: Duration },
    #[error("HAProxy has no backend {0:?}")]
    NoSuchBackend(String),
    #[error("HAProxy has no server {1:?} in backend {0:?}")]
    NoSuchServer(String, String),
    #[error("HAProxy refused the command: {0}")]
    Refused(String),
    #[error("HAProxy's reply could not be read: {0}")]
    Unreadable(String),
}

/// One server's state as read from HAProxy, with the raw admin bits that say
/// whether a command changed anything.
#[derive(Debug, Clone)]
pub struct ServerReading {
    pub snapshot: ServerSnapshot,
    pub admin_bits: u32,
}

/// HAProxy serves at most `stats maxconn` (10 by default) CLI connections
/// at once and refuses or drops the rest; the agent stays below that.
pub const DEFAULT_SOCKET_CONCURRENCY: usize = 8;

/// A handle on one HAProxy's runtime API.
#[derive(Debug, Clone)]
pub struct Haproxy {
    target: SocketTarget,
    timeout: Duration,
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    /// (backend, server) → (proxy id, server id), learned from replies, so a
    /// read-back asks `show stat` for one row. Checked on use: a stale entry
    /// (after a reload) only costs a second read.
    ids: std::sync::Arc<std::sync::Mutex<IdCache>>,
}

/// (backend, server) → (proxy id, server id).
type IdCache = std::collections::HashMap<(String, String), (u32, u32)>;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Haproxy {
    pub fn new(target: SocketTarget, timeout: Duration, concurrency: usize) -> Self {
        Self {
            target,
            timeout,
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency.max(1))),
            ids: std::sync::Arc::default(),
        }
    }

    pub fn target(&self) -> &SocketTarget {
        &self.target
    }

    async fn connect(&self) -> std::io::Result<Box<dyn Stream>> {
        Ok(match &self.target {
            SocketTarget::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
            SocketTarget::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr.as_str()).await?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
        })
    }

    /// Sends one command line and returns HAProxy's whole reply.
    ///
    /// The line is built by this module from parsed names and states only;
    /// it never carries a newline, and a `;` only where [`Haproxy::commands`]
    /// joins commands.
    async fn command(&self, line: &str) -> Result<String, RuntimeError> {
        debug_assert!(!line.contains('\n'));
        let exchange = async {
            let _permit = self.permits.acquire().await.map_err(|_| {
                RuntimeError::Unreadable("the socket connection limit was closed".into())
            })?;
            let mut stream = self
                .connect()
                .await
                .map_err(|source| RuntimeError::Unreachable {
                    target: self.target.to_string(),
                    source: Arc::new(source),
                })?;
            let io = |e: std::io::Error| RuntimeError::Unreadable(e.to_string());
            stream
                .write_all(format!("{line}\n").as_bytes())
                .await
                .map_err(io)?;
            stream.flush().await.map_err(io)?;
            let mut reply = Vec::new();
            stream
                .take(MAX_REPLY_BYTES)
                .read_to_end(&mut reply)
                .await
                .map_err(io)?;
            String::from_utf8(reply).map_err(|e| RuntimeError::Unreadable(e.to_string()))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| RuntimeError::Timeout {
                target: self.target.to_string(),
                timeout: self.timeout,
            })?
    }

    /// Runs several commands on one connection (HAProxy's `;`-separated
    /// form) and returns each reply. Each reply ends with an empty line and
    /// none of the commands used here prints one inside its reply.
    async fn commands(&self, lines: &[String]) -> Result<Vec<String>, RuntimeError> {
        let reply = self.command(&lines.join("; ")).await?;
        Ok(split_replies(&reply, lines.len()))
    }

    /// `show info`: the version and the identity of the process.
    ///
    /// # Errors
    /// [`RuntimeError`] when the socket does not answer as HAProxy does.
    pub async fn info(&self) -> Result<(String, Option<HaproxyProcess>), RuntimeError> {
        let ShowInfo { version, process } = show_info::parse(&self.command("show info").await?);
        let version = version
            .ok_or_else(|| RuntimeError::Unreadable("show info has no Version line".into()))?;
        Ok((version, process))
    }

    /// `show servers state` as HAProxy prints it: the text of a
    /// server-state file.
    ///
    /// # Errors
    /// [`RuntimeError`] when the socket does not answer.
    pub async fn servers_state(&self) -> Result<String, RuntimeError> {
        self.command("show servers state").await
    }

    /// Every backend and its servers, and the process whose states they are
    /// (`show info` and `show servers state` on one connection, so both
    /// come from the same process even during a reload).
    ///
    /// # Errors
    /// [`RuntimeError`] when the socket does not answer or the output does
    /// not parse.
    pub async fn backends(
        &self,
    ) -> Result<(Vec<BackendSnapshot>, Option<HaproxyProcess>), RuntimeError> {
        let info_and_state = ["show info".to_owned(), "show servers state".to_owned()];
        let (stat, info_and_state) = tokio::try_join!(
            self.command("show stat -1 6 -1"),
            self.commands(&info_and_state)
        )?;
        let reply = |i: usize| info_and_state.get(i).map(String::as_str).unwrap_or("");
        let process = show_info::parse(reply(0)).process;
        let stats = show_stat::parse(&stat).map_err(|e| RuntimeError::Unreadable(e.to_string()))?;
        let states =
            servers_state::parse(reply(1)).map_err(|e| RuntimeError::Unreadable(e.to_string()))?;
        Ok((snapshot::join(&stats, &states), process))
    }

    async fn state_row(
        &self,
        backend: &BackendName,
        server: &ServerName,
    ) -> Result<ServerStateRow, RuntimeError> {
        let reply = self
            .command(&format!("show servers state {backend}"))
            .await?;
        rows_of(&reply, backend, &HashSet::from([server.as_str()]))?
            .remove(server.as_str())
            .ok_or_else(|| no_such_server(backend, server))
    }

    /// Reads one server.
    ///
    /// # Errors
    /// [`RuntimeError::NoSuchBackend`] / [`RuntimeError::NoSuchServer`] when
    /// it does not exist; other variants when HAProxy cannot be read.
    pub async fn server(
        &self,
        backend: &BackendName,
        server: &ServerName,
    ) -> Result<ServerReading, RuntimeError> {
        let state = self.state_row(backend, server).await?;
        let reply = self
            .command(&format!(
                "show stat {} 4 {}",
                state.backend_id, state.server_id
            ))
            .await?;
        let stat = show_stat::parse(&reply)
            .map_err(|e| RuntimeError::Unreadable(e.to_string()))?
            .into_iter()
            .find(|r| r.kind == StatKind::Server && r.name == server.as_str())
            .ok_or_else(|| RuntimeError::NoSuchServer(backend.to_string(), server.to_string()))?;
        Ok(ServerReading {
            snapshot: snapshot::server_snapshot(&stat, Some(&state)),
            admin_bits: state.admin_bits,
        })
    }

    /// `set server <backend>/<server> state <state>`.
    ///
    /// # Errors
    /// [`RuntimeError::NoSuchBackend`] / [`RuntimeError::NoSuchServer`] from
    /// HAProxy's own replies, [`RuntimeError::Refused`] for any other reply.
    pub async fn set_state(
        &self,
        backend: &BackendName,
        server: &ServerName,
        state: AdminState,
    ) -> Result<(), RuntimeError> {
        let reply = self
            .command(&format!("set server {backend}/{server} state {state}"))
            .await?;
        check_set_reply(&reply, backend, server)
    }
}

impl Haproxy {
    /// `shutdown sessions server <backend>/<server>`: closes every session
    /// the server still has (a rollout whose drain outlasted its timeout).
    ///
    /// # Errors
    /// As [`Haproxy::set_state`].
    pub async fn shutdown_sessions(
        &self,
        backend: &BackendName,
        server: &ServerName,
    ) -> Result<(), RuntimeError> {
        let reply = self
            .command(&format!("shutdown sessions server {backend}/{server}"))
            .await?;
        check_set_reply(&reply, backend, server)
    }
}

/// The rows of `servers` in the reply of `show servers state <backend>`,
/// by server name.
fn rows_of(
    reply: &str,
    backend: &BackendName,
    servers: &HashSet<&str>,
) -> Result<HashMap<String, ServerStateRow>, RuntimeError> {
    if reply.starts_with("Can't find backend") {
        return Err(RuntimeError::NoSuchBackend(backend.to_string()));
    }
    Ok(servers_state::find_all(reply, servers)
        .map_err(|e| RuntimeError::Unreadable(e.to_string()))?
        .into_iter()
        .map(|row| (row.server.clone(), row))
        .collect())
}

fn no_such_server(backend: &BackendName, server: &ServerName) -> RuntimeError {
    RuntimeError::NoSuchServer(backend.to_string(), server.to_string())
}

/// Maps the reply of `set server … state` (empty on success).
fn check_set_reply(
    reply: &str,
    backend: &BackendName,
    server: &ServerName,
) -> Result<(), RuntimeError> {
    match reply.trim() {
        "" => Ok(()),
        "No such server." => Err(no_such_server(backend, server)),
        "No such backend." => Err(RuntimeError::NoSuchBackend(backend.to_string())),
        other => Err(RuntimeError::Refused(other.chars().take(500).collect())),
    }
}

/// Splits the output of `;`-joined commands into one reply per command:
/// each reply runs up to an empty line.
pub fn split_replies(text: &str, expected: usize) -> Vec<String> {
    let mut replies = Vec::with_capacity(expected);
    let mut current = String::new();
    for line in text.split('\n') {
        if line.is_empty() {
            replies.push(std::mem::take(&mut current));
            if replies.len() == expected {
                break;
            }
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    if !current.is_empty() && replies.len() < expected {
        replies.push(current);
    }
    replies
}

#[cfg(test)]
mod tests {
    use super::{SocketTarget, split_replies};

    #[test]
    fn joined_replies_split_at_empty_lines() {
        // Captured from HAProxy 2.6: show servers state; set server; show stat.
        let text =
            "1\n# be_id be_name\n4 tracking 1\n\n\nNo such server.\n\n# pxname,svname\nt,x\n\n";
        assert_eq!(
            split_replies(text, 4),
            [
                "1\n# be_id be_name\n4 tracking 1\n",
                "",
                "No such server.\n",
                "# pxname,svname\nt,x\n"
            ]
        );
        assert_eq!(split_replies("", 2), [""]);
    }

    #[test]
    fn socket_targets_parse() {
        assert_eq!(
            "/run/haproxy/admin.sock".parse(),
            Ok(SocketTarget::Unix("/run/haproxy/admin.sock".into()))
        );
        assert_eq!(
            "unix:rel.sock".parse(),
            Ok(SocketTarget::Unix("rel.sock".into()))
        );
        assert_eq!(
            "127.0.0.1:9999".parse(),
            Ok(SocketTarget::Tcp("127.0.0.1:9999".into()))
        );
        assert_eq!(
            "tcp:lb:9999".parse(),
            Ok(SocketTarget::Tcp("lb:9999".into()))
        );
        assert!("nonsense".parse::<SocketTarget>().is_err());
        assert!(":80".parse::<SocketTarget>().is_err());
    }
}
