//! The agent's three calls.

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use chrono::Utc;

use super::AgentState;
use super::error::AgentError;
use super::extract::{JsonBody, PathParams};
use super::idempotency::{Conflict, Request};
use crate::domain::{AdminState, BackendName, ServerName};
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
    let backend = BackendName::parse(&backend)
        .map_err(|e| AgentError::bad_request("invalid_name", e.to_string()))?;
    let server = ServerName::parse(&server)
        .map_err(|e| AgentError::bad_request("invalid_name", e.to_string()))?;
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

    let request = Request {
        backend: backend.to_string(),
        server: server.to_string(),
        state: target,
    };
    let slot = state
        .idempotency
        .slot(transaction_id, request)
        .map_err(|Conflict(first)| {
            AgentError::new(
                StatusCode::CONFLICT,
                "transaction_conflict",
                format!(
                    "transaction_id {transaction_id} was already used to set {}/{} to {}",
                    first.backend, first.server, first.state
                ),
            )
        })?;
    // The change runs in a task of its own: a caller that goes away (a
    // worker killed mid-call) does not cancel it half-way, and its retry then
    // gets this first answer instead of a second command to HAProxy.
    let task = tokio::spawn(async move {
        let mut replay = true;
        let answer = slot
            .get_or_try_init(|| async {
                replay = false;
                apply(&state, &backend, &server, target, transaction_id).await
            })
            .await?;
        if replay {
            tracing::info!(%transaction_id, %backend, %server, state = %target, "replayed first answer");
        }
        Ok::<_, AgentError>(answer.clone())
    });
    let answer = task.await.map_err(|e| {
        AgentError::new(
            StatusCode::BAD_GATEWAY,
            "agent_task_failed",
            format!("the state change task failed: {e}"),
        )
    })??;
    Ok(Json(answer))
}

/// Closes the server's sessions; answers the server as read afterwards.
async fn shutdown_sessions(
    State(state): State<AgentState>,
    PathParams((backend, server)): PathParams<(String, String)>,
) -> Result<Json<crate::domain::snapshot::ServerSnapshot>, AgentError> {
    let backend = BackendName::parse(&backend)
        .map_err(|e| AgentError::bad_request("invalid_name", e.to_string()))?;
    let server = ServerName::parse(&server)
        .map_err(|e| AgentError::bad_request("invalid_name", e.to_string()))?;
    state.haproxy.shutdown_sessions(&backend, &server).await?;
    let after = state.haproxy.server(&backend, &server).await?;
    tracing::info!(%backend, %server, sessions = after.snapshot.current_sessions, "sessions shut down");
    Ok(Json(after.snapshot))
}

async fn apply(
    state: &AgentState,
    backend: &BackendName,
    server: &ServerName,
    target: AdminState,
    transaction_id: uuid::Uuid,
) -> Result<StateChanged, AgentError> {
    let (before_bits, after) = state.haproxy.set_and_read(backend, server, target).await?;
    let applied = before_bits != after.admin_bits;
    if applied && let Some(file) = &state.state_file {
        file.after_change().await;
    }
    tracing::info!(
        %transaction_id, %backend, %server, state = %target, applied,
        admin_state = %after.snapshot.admin_state, op_state = %after.snapshot.op_state,
        "server state set"
    );
    Ok(StateChanged {
        transaction_id,
        applied,
        server: after.snapshot,
    })
}
