//! `--metrics-listen` of the worker and the scheduler: `/healthz`,
//! `/readyz` and `/metrics` (this process's counters and histograms) on an
//! address of their own. The API serves the same three on its listener.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::db::{self, PgPool, api_queries};

/// How long `/readyz` waits for PostgreSQL.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
struct Probe {
    pool: PgPool,
    amqp: Arc<lapin::Connection>,
    role: &'static str,
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// What `/readyz` reports: PostgreSQL (`SELECT 1` within 2 s) and the
/// RabbitMQ connection — and, when given, the channel the process publishes
/// on (after a broker outage the connection is back before lapin has
/// recovered its channels; a publish meanwhile waits) — each `ok` or what
/// is wrong.
pub async fn dependencies(
    pool: &PgPool,
    amqp: &lapin::Connection,
    publisher: Option<&lapin::Channel>,
) -> (String, String) {
    let postgres = match tokio::time::timeout(READY_TIMEOUT, db::run(pool, api_queries::ping)).await
    {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(e)) => format!("unavailable: {e}"),
        Err(_) => format!("no answer within {} s", READY_TIMEOUT.as_secs()),
    };
    let rabbitmq = if !amqp.status().connected() {
        "not connected".to_owned()
    } else if publisher.is_some_and(|c| !c.status().connected()) {
        "connected, the publishing channel not recovered yet".to_owned()
    } else {
        "ok".to_owned()
    };
    (postgres, rabbitmq)
}

async fn readyz(State(p): State<Probe>) -> (StatusCode, Json<Value>) {
    let (postgres, rabbitmq) = dependencies(&p.pool, &p.amqp, None).await;
    let ready = postgres == "ok" && rabbitmq == "ok";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if ready { "ready" } else { "not_ready" },
            "role": p.role,
            "postgres": postgres,
            "rabbitmq": rabbitmq,
        })),
    )
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, super::CONTENT_TYPE)],
        super::encode(&super::registry()),
    )
}

/// Binds `metrics.listen` when it is set (an error at once when the address
/// cannot be bound), and gives the future that serves the three endpoints
/// until `shutdown` (or does nothing).
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve_if_asked(
    config: &crate::config::Config,
    role: &'static str,
    pool: &PgPool,
    amqp: &Arc<lapin::Connection>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<()>> + use<>> {
    let listener = match config.metrics.listen {
        Some(listen) => Some(
            tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| anyhow::anyhow!("metrics.listen {listen}: {e}"))?,
        ),
        None => None,
    };
    let probe = Probe {
        pool: pool.clone(),
        amqp: amqp.clone(),
        role,
    };
    Ok(async move {
        let Some(listener) = listener else {
            return Ok(());
        };
        tracing::info!(listen = %listener.local_addr()?, role, "metrics listening");
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(probe);
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                while !*shutdown.borrow_and_update() {
                    if shutdown.changed().await.is_err() {
                        break;
                    }
                }
            })
            .await?;
        Ok(())
    })
}
