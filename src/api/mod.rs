//! The HTTP API (CONTRACT.md, "HTTP API"): reads PostgreSQL and publishes
//! commands; it never calls an agent. One file per resource family; auth,
//! errors, extractors, pagination, metrics and the OpenAPI document beside
//! them.

pub mod actions;
pub mod approvals;
pub mod auth;
pub mod batches;
pub mod error;
pub mod extract;
pub mod health;
pub mod instances;
pub mod metrics;
pub mod openapi;
pub mod page;
pub mod pagination;
pub mod rollouts;
pub mod servers;
pub mod settings;
pub mod stream;
pub mod webhooks;

use std::sync::Arc;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use tokio::sync::watch;

use crate::app::{App, Role};
use crate::config::Config;
use crate::db::PgPool;
use crate::queue::message::Command;
use crate::queue::{Publisher, Topology};
use auth::Tokens;
use error::ApiError;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What handlers need, passed in (no globals). Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    pub pool: PgPool,
    pub publisher: Publisher,
    pub topology: Arc<Topology>,
    pub tokens: Arc<Tokens>,
    pub amqp: Arc<lapin::Connection>,
    /// The OpenAPI document, serialised once.
    pub openapi: Bytes,
    /// `fagent.token_dir`, canonical: the only place `file:` token
    /// references given through the API may point into.
    pub token_dir: Option<Arc<std::path::Path>>,
    /// Where rollout update hooks may come from (`[rollout]`).
    pub rollout_policy: Arc<crate::domain::rollout_hook::HookPolicy>,
    /// Webhook and callback URL rules (`[webhooks]`).
    pub webhooks: Arc<webhooks::WebhookPolicy>,
    /// The database and broker gauges of `/metrics`, cached.
    pub gauges: Arc<crate::metrics::database::Gauges>,
    /// The `haproxy.events` relay's fan-out, for the event stream.
    pub events: stream::EventHub,
}

/// The API's HTTP application: every route, JSON 404 and 405 answers, and
/// a body limit of [`MAX_BODY_BYTES`].
pub fn router(state: ApiState) -> axum::Router {
    let (router, _) = openapi::routes().split_for_parts();
    router
        .merge(page::routes())
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Binds `config.api.listen` and serves until `shutdown` turns true.
///
/// # Errors
/// When the tokens are invalid, the address cannot be bound, or
/// PostgreSQL or RabbitMQ cannot be reached at start.
pub async fn run(config: &Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let tokens = Tokens::from_config(&config.api)?;
    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.api.listen))?;
    serve_with(listener, config, tokens, shutdown).await
}

/// Serves on an already bound listener (tests bind port 0 themselves).
///
/// # Errors
/// As [`run`].
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    config: &Config,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let tokens = Tokens::from_config(&config.api)?;
    serve_with(listener, config, tokens, shutdown).await
}

async fn serve_with(
    listener: tokio::net::TcpListener,
    config: &Config,
    tokens: Tokens,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    if tokens.is_empty() {
        tracing::warn!(
            "no API tokens configured ([api] tokens or API_TOKENS_FILE): every call but health, metrics and the OpenAPI document answers 401"
        );
    }
    let token_dir = config
        .fagent
        .token_dir
        .as_deref()
        .map(crate::fagent::token_ref::canonical_dir)
        .transpose()
        .map_err(|e| anyhow::anyhow!("fagent.token_dir: {e}"))?
        .map(Arc::from);
    let App {
        pool,
        conn,
        topology,
        publisher,
    } = App::connect(config, Role::API, config.api.pool_size.max(2)).await?;
    let amqp = Arc::new(conn);
    let gauges = Arc::new(crate::metrics::database::Gauges::new(
        pool.clone(),
        amqp.clone(),
        topology.clone(),
        std::time::Duration::from_secs(config.metrics.cache_secs),
    ));
    let events = stream::EventHub::new(stream::STREAM_BUFFER, shutdown.clone());
    let relay = stream::spawn_relay(
        amqp.clone(),
        topology.clone(),
        events.clone(),
        shutdown.clone(),
    );
    let state = ApiState {
        events,
        gauges,
        pool,
        publisher,
        topology,
        tokens: Arc::new(tokens),
        amqp: amqp.clone(),
        openapi: Bytes::from(openapi::pretty_json()?),
        token_dir,
        rollout_policy: Arc::new(config.rollout.policy()),
        webhooks: Arc::new(webhooks::WebhookPolicy::from_config(&config.webhooks)?),
    };
    tracing::info!(listen = %listener.local_addr()?, "api listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            while !*shutdown.borrow_and_update() {
                if shutdown.changed().await.is_err() {
                    break;
                }
            }
        })
        .await?;
    relay.abort();
    let _ = amqp.close(200, "api stopped".into()).await;
    Ok(())
}

/// A `reason` as commands take it, and storable (no NUL).
fn reason(raw: Option<String>) -> Result<Option<String>, ApiError> {
    crate::queue::message::parse_reason(raw)
        .map_err(|e| ApiError::unprocessable("invalid_reason", e.0))
}

/// The request's `transaction_id`, or a new one when it sent none.
fn transaction_id(raw: Option<&str>) -> Result<uuid::Uuid, ApiError> {
    match raw {
        Some(t) => crate::queue::message::parse_transaction_id(t)
            .map_err(|e| ApiError::unprocessable("invalid_transaction_id", e.0)),
        None => Ok(uuid::Uuid::new_v4()),
    }
}

/// How long a request waits for RabbitMQ to confirm its command.
const PUBLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Publishes a command on the commands exchange with confirms. Fails fast
/// with a 503 while the broker connection is down, and after
/// [`PUBLISH_TIMEOUT`]; the message tells how to retry.
async fn publish_command<C: Command>(st: &ApiState, command: &C) -> Result<(), ApiError> {
    let transaction_id = command.transaction_id();
    if !st.amqp.status().connected() {
        return Err(not_published(
            &"the RabbitMQ connection is down",
            transaction_id,
        ));
    }
    if !st.publisher.channel().status().connected() {
        return Err(not_published(
            &"the RabbitMQ channel is being recovered",
            transaction_id,
        ));
    }
    let published = tokio::time::timeout(
        PUBLISH_TIMEOUT,
        st.publisher.publish_command(&st.topology, command),
    )
    .await;
    match published {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(not_published(&e, transaction_id)),
        Err(_) => Err(not_published(
            &format!("no confirm within {} s", PUBLISH_TIMEOUT.as_secs()),
            transaction_id,
        )),
    }
}

/// Publishes `approval.requested` for a request the API has just held; a
/// 503 when the broker did not take it.
async fn publish_approval_requested(
    st: &ApiState,
    approval: &crate::db::approvals::ApprovalRow,
) -> Result<(), ApiError> {
    let event =
        crate::approvals::event(crate::domain::event::EventType::ApprovalRequested, approval);
    st.publisher
        .publish_event(&st.topology, &event)
        .await
        .map_err(|e| not_published(&e, &approval.transaction_id.to_string()))
}

/// A 503 for a command that could not be published: the same request with
/// the same transaction id publishes it again.
pub(crate) fn not_published(cause: &dyn std::fmt::Display, transaction_id: &str) -> ApiError {
    tracing::warn!(error = %cause, %transaction_id, "publishing a command failed");
    ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "broker_unavailable",
        format!(
            "transaction {transaction_id}: RabbitMQ did not take the command ({cause}); \
             send the same request with \"transaction_id\": \"{transaction_id}\" again"
        ),
    )
}

/// Records a request's callback URL under its transaction id, before its
/// command is published (so its final event finds it).
async fn record_callback(
    st: &ApiState,
    transaction_id: uuid::Uuid,
    kind: crate::domain::webhook::CallbackKind,
    url: Option<crate::domain::webhook::TargetUrl>,
) -> Result<(), ApiError> {
    let Some(url) = url else { return Ok(()) };
    let url = url.as_str().to_owned();
    crate::db::run(&st.pool, move |c| {
        crate::db::webhooks::record_callback(c, transaction_id, kind, &url)
    })
    .await?;
    Ok(())
}
