//! The reference FAgent: CONTRACT.md's FAgent API over HAProxy's runtime API.

mod auth;
mod bulk;
mod changes;
mod error;
mod extract;
mod idempotency;
mod routes;
pub mod runtime;
mod show_info;
pub mod state_file;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use auth::BearerToken;
pub use idempotency::Idempotency;
pub use runtime::{Haproxy, RuntimeError, SocketTarget};
pub use state_file::StateFileSettings;
pub use tls::{TlsAcceptor, TlsListener};

/// What the agent needs to run.
#[derive(Clone)]
pub struct AgentSettings {
    pub socket: SocketTarget,
    pub socket_timeout: Duration,
    /// Runtime-API connections open at once (HAProxy's `stats maxconn` is
    /// 10 by default).
    pub socket_concurrency: usize,
    pub token: BearerToken,
    /// How many finished transaction ids are remembered for replays.
    pub idempotency_capacity: usize,
    /// HAProxy's server-state file, kept by the agent (`--state-file`).
    pub state_file: Option<StateFileSettings>,
}

#[derive(Clone)]
pub(crate) struct AgentState {
    pub haproxy: Haproxy,
    pub token: BearerToken,
    pub idempotency: Arc<Idempotency>,
    pub state_file: Option<Arc<state_file::StateFile>>,
}

impl AgentState {
    fn new(settings: AgentSettings) -> Self {
        Self {
            haproxy: Haproxy::new(
                settings.socket,
                settings.socket_timeout,
                settings.socket_concurrency,
            ),
            token: settings.token,
            idempotency: Arc::new(Idempotency::new(settings.idempotency_capacity)),
            state_file: settings
                .state_file
                .map(|f| state_file::StateFile::new(f, settings.socket_timeout)),
        }
    }

    /// Starts the state file's writer, if there is a state file; it stops
    /// when the returned guard is dropped.
    fn start_state_file(&self) -> Option<state_file::WriterTask> {
        self.state_file
            .as_ref()
            .map(|f| f.spawn(self.haproxy.clone()))
    }
}

/// The agent's HTTP application, ready to serve. The state file (if any)
/// is only written while [`serve`] or [`serve_on`] runs.
pub fn router(settings: AgentSettings) -> axum::Router {
    routes::router(AgentState::new(settings))
}

/// Binds `listen` and serves, over HTTPS when `tls` is given, until
/// `shutdown` resolves.
///
/// # Errors
/// When the address cannot be bound or the server fails.
pub async fn serve(
    listen: SocketAddr,
    settings: AgentSettings,
    tls: Option<TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(
        listen = %listener.local_addr()?,
        tls = tls.is_some(),
        haproxy.socket = %settings.socket,
        "fagent listening"
    );
    match tls {
        Some(tls) => serve_tls_on(listener, settings, tls, shutdown).await,
        None => serve_on(listener, settings, shutdown).await,
    }
}

/// Serves HTTPS on an already bound listener.
///
/// # Errors
/// When the server fails.
pub async fn serve_tls_on(
    listener: tokio::net::TcpListener,
    settings: AgentSettings,
    tls: TlsAcceptor,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = AgentState::new(settings);
    let _state_file_writer = state.start_state_file();
    axum::serve(TlsListener::new(listener, tls)?, routes::router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves on an already bound listener (tests bind port 0 themselves).
///
/// # Errors
/// When the server fails.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    settings: AgentSettings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = AgentState::new(settings);
    let _state_file_writer = state.start_state_file();
    axum::serve(listener, routes::router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
