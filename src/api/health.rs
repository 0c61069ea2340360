//! `/healthz`, `/readyz` and `/api/openapi.json`: no token needed.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ApiState;
use super::error::ErrorDetail;

/// The process is up.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

/// The process is up.
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up", body = Health))
)]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Whether the API can serve: PostgreSQL answers and RabbitMQ is connected.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: String,
    /// `ok` or what is wrong.
    pub postgres: String,
    /// `ok` or what is wrong.
    pub rabbitmq: String,
    /// Present when not ready.
    pub error: Option<ErrorDetail>,
}

/// Ready when PostgreSQL answers `SELECT 1` and the RabbitMQ connection and
/// the channel commands are published on are up.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "PostgreSQL or RabbitMQ unavailable", body = Readiness),
    )
)]
pub async fn readyz(State(st): State<ApiState>) -> (StatusCode, Json<Readiness>) {
    let (postgres, rabbitmq) =
        crate::metrics::server::dependencies(&st.pool, &st.amqp, Some(st.publisher.channel()))
            .await;
    let ready = postgres == "ok" && rabbitmq == "ok";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let error = (!ready).then(|| ErrorDetail {
        code: "not_ready".into(),
        message: format!("postgres: {postgres}; rabbitmq: {rabbitmq}"),
    });
    (
        status,
        Json(Readiness {
            status: if ready { "ready" } else { "not_ready" }.into(),
            postgres,
            rabbitmq,
            error,
        }),
    )
}

/// This API's OpenAPI 3 document.
#[utoipa::path(
    get, path = "/api/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document of this API", body = Object))
)]
pub async fn openapi_json(State(st): State<ApiState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        st.openapi.clone(),
    )
}
