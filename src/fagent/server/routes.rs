//! The agent's calls.

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use chrono::Utc;

use super::AgentState;
use super::changes::{Pending, not_settled, parse_names, settle_detached};
use super::error::AgentError;
use super::extract::{JsonBody, PathParams};
use super::runtime::Change;
use crate::domain::AdminState;
use crate::fagent::wire::{Backends, Health, StateChanged};

/// Bodies are tiny; anything larger is refused before it is read.
const BODY_LIMIT: usize = 16 * 1024;

pub(crate) fn router(state: AgentState) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/backends", get(backends))
        .route(
            "/v1/backends/{backend}/servers/{server}/state",
            put(set_state),
        )
        .route(
            "/v1/state",
            axum::routing::post(super::bulk::set_states)
                .layer(DefaultBodyLimit::max(super::bulk::BODY_LIMIT)),
        )
        .route(
            "/v1/backends/{backend}/servers/{server}/shutdown-sessions",
            axum::routing::post(shutdown_sessions),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            super::auth::require_token,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

async fn not_found() -> AgentError {
    AgentError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> AgentError {
    AgentError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint",
    )
}

async fn health(State(state): State<AgentState>) -> Result<Json<Health>, AgentError> {
    let (haproxy_version, haproxy_process) = state.haproxy.info().await?;
    Ok(Json(Health {
        status: "ok".into(),
        haproxy_version,
        haproxy_process,
    }))
}

async fn backends(State(state): State<AgentState>) -> Result<Json<Backends>, AgentError> {
    let fetched_at = Utc::now();
    let (backends, haproxy_process) = state.haproxy.backends().await?;
    Ok(Json(Backends {
        fetched_at,
        backends,
        haproxy_process,
    }))
}

/// The body as raw JSON values, so that a bad state or id gets a precise
/// message rather than serde's.
#[derive(serde::Deserialize)]
struct SetStateBody {
    state: serde_json::Value,
    transaction_id: serde_json::Value,
}

async fn set_state(
    State(state): State<AgentState>,
    PathParams((backend, server)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<SetStateBody>,
) -> Result<Json<StateChanged>, AgentError> {
    let (backend, server) = parse_names(&backend, &server)?;
    let target: AdminState = body
        .state
        .as_str()
        .ok_or_else(|| AgentError::bad_request("invalid_state", "state must be a string"))?
        .parse()
        .map_err(|e: crate::domain::StateParseError| {
            AgentError::bad_request("invalid_state", e.to_string())
        })?;
    let transaction_id = body
        .transaction_id
        .as_str()
        .and_then(|s| uuid::Uuid::parse_str(s).ok())
        .ok_or_else(|| {
            AgentError::bad_request("invalid_transaction_id", "transaction_id must be a UUID")
        })?;
    let change = Change {
        backend,
        server,
        state: target,
    };
    let item = Pending::new(&state, transaction_id, change)?;
    let answer = settle_detached(state, vec![item]).await?.pop();
    Ok(Json(answer.ok_or_else(not_settled)??))
}

/// Closes the server's sessions; answers the server as read afterwards.
async fn shutdown_sessions(
    State(state): State<AgentState>,
    PathParams((backend, server)): PathParams<(String, String)>,
) -> Result<Json<crate::domain::snapshot::ServerSnapshot>, AgentError> {
    let (backend, server) = parse_names(&backend, &server)?;
    state.haproxy.shutdown_sessions(&backend, &server).await?;
    let after = state.haproxy.server(&backend, &server).await?;
    tracing::info!(%backend, %server, sessions = after.snapshot.current_sessions, "sessions shut down");
    Ok(Json(after.snapshot))
}
