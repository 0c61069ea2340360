//! A TCP proxy on loopback in front of one upstream, whose behaviour a test
//! switches at runtime to imitate a misbehaving peer (an agent, a broker, a
//! database).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// The longest request head `Http500` reads before answering anyway.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The largest request body `Http500` reads before answering anyway.
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How long `Http500` waits for a request before answering anyway.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

const HTTP_500_BODY: &str = r#"{"error":{"code":"internal","message":"injected"}}"#;

/// What the proxy does with each connection it accepts. Read when the
/// connection is accepted: a change applies to new connections only
/// (use [`TcpProxy::cut`] to end the open ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Copies both ways to the upstream.
    Forward,
    /// Closes at once with `SO_LINGER` 0, so the client sees a reset.
    Reset,
    /// Holds the connection open, reading and answering nothing, until
    /// [`TcpProxy::cut`] or drop.
    Hang,
    /// Reads the request head (and a `content-length` body) and answers
    /// `500` with a JSON error body, then closes.
    Http500,
}

struct Shared {
    mode: Mutex<Mode>,
    accepted: AtomicUsize,
    /// Bumped by `cut()`; every connection task watches it.
    cut: watch::Sender<u64>,
}

/// A TCP proxy on `127.0.0.1`. Stops everything when dropped.
pub struct TcpProxy {
    /// Where the proxy listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a new loopback port, in [`Mode::Forward`].
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Forward),
            accepted: AtomicUsize::new(0),
            cut: watch::Sender::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, upstream, Arc::clone(&shared)));
        TcpProxy { addr, shared, task }
    }

    /// What new connections get from now on.
    pub fn set_mode(&self, m: Mode) {
        *self
            .shared
            .mode
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = m;
    }

    /// Connections accepted since start or the last [`TcpProxy::reset_counter`],
    /// in every mode.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    pub fn reset_counter(&self) {
        self.shared.accepted.store(0, Ordering::SeqCst);
    }

    /// Closes every open connection (forwarded, hanging, or being answered)
    /// at once, both sides; the listener keeps running.
    pub fn cut(&self) {
        self.shared.cut.send_modify(|generation| *generation += 1);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        // Ends open connections now, and dropping the accept loop's JoinSet
        // aborts whatever is left.
        self.cut();
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let mode = *shared.mode.lock().unwrap_or_else(PoisonError::into_inner);
        // Subscribed before the task runs, so a cut() right after the
        // accept still reaches this connection.
        let mut cut = shared.cut.subscribe();
        while conns.try_join_next().is_some() {}
        conns.spawn(async move {
            tokio::select! {
                () = serve(client, upstream, mode) => {}
                _ = cut.changed() => {}
            }
        });
    }
}

async fn serve(client: TcpStream, upstream: SocketAddr, mode: Mode) {
    match mode {
        Mode::Forward => forward(client, upstream).await,
        Mode::Reset => {
            let _ = client.set_zero_linger();
            drop(client);
        }
        Mode::Hang => {
            let _client = client;
            std::future::pending::<()>().await;
        }
        Mode::Http500 => http_500(client).await,
    }
}

async fn forward(mut client: TcpStream, upstream: SocketAddr) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        let _ = client.set_zero_linger();
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

async fn http_500(mut client: TcpStream) {
    let _ = tokio::time::timeout(READ_TIMEOUT, read_request(&mut client)).await;
    let answer = format!(
        "HTTP/1.1 500 Internal Server Error\r\n\
         content-type: application/json\r\n\
         content-length: {}\r\n\
         connection: close\r\n\r\n{HTTP_500_BODY}",
        HTTP_500_BODY.len()
    );
    if client.write_all(answer.as_bytes()).await.is_err() {
        return;
    }
    let _ = client.shutdown().await;
    // Read whatever the client still sends until it closes, so unread bytes
    // do not turn our close into a reset that could eat the answer.
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(n) = client.read(&mut sink).await
            && n > 0
        {}
    })
    .await;
}

/// Reads a request head up to `\r\n\r\n` and a `content-length` body, both
/// bounded.
async fn read_request(client: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return;
        }
        match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let body_len = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_BODY_BYTES);
    let mut have = buf.len() - head_end;
    while have < body_len {
        match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => have += n,
        }
    }
}
