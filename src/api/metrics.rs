//! `/metrics`: this process's counters and histograms, and the database and
//! broker gauges read at most every `metrics.cache_secs`
//! ([`crate::metrics::database`]), in Prometheus' text format.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::ApiState;

/// Prometheus metrics.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String))
)]
pub async fn metrics(State(st): State<ApiState>) -> impl IntoResponse {
    let reading = st.gauges.current().await;
    let mut registry = crate::metrics::registry();
    registry.register_collector(Box::new(reading));
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::encode(&registry),
    )
}
