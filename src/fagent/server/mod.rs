//! The reference FAgent: CONTRACT.md's FAgent API over HAProxy's runtime API.

mod auth;
mod error;
mod extract;
mod idempotency;
mod routes;
pub mod runtime;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use auth::BearerToken;
pub use idempotency::Idempotency;
pub use runtime::{Haproxy, RuntimeError, SocketTarget};
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
}

#[derive(Clone)]
pub(crate) struct AgentState {
    pub haproxy: Haproxy,
    pub token: BearerToken,
    pub idempotency: Arc<Idempotency>,
}

/// The agent's HTTP application, ready to serve.
pub fn router(settings: AgentSettings) -> axum::Router {
    let state = AgentState {
        haproxy: Haproxy::new(
            settings.socket,
            settings.socket_timeout,
            settings.socket_concurrency,
        ),
        token: settings.token,
        idempotency: Arc::new(Idempotency::new(settings.idempotency_capacity)),
    };
    routes::router(state)
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
    axum::serve(TlsListener::new(listener, tls)?, router(settings))
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
    axum::serve(listener, router(settings))
        .with_graceful_shutdown(shutdown)
        .await
}
