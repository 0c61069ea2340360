//! Webhook endpoints (issue 13): create, list, read, change, delete, rotate
//! the secret, list an endpoint's deliveries, redeliver one. Admin only,
//! reads too: an endpoint's URL says where events go. The secret is
//! answered on create and rotate only. See docs/webhooks.md.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::ApiState;
use super::auth::{Admin, Auth};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::instances::PageQuery;
use super::pagination::{self, Kind};
use crate::config::WebhooksConfig;
use crate::db::webhooks::{self as store, AttemptRow, DeliveryRow, EndpointPatch, EndpointRow};
use crate::db::{self};
use crate::domain::webhook::EventPattern;
use crate::domain::webhook::target::{self, TargetError, TargetUrl};
use crate::webhooks::signing::generate_secret;

/// Most patterns per endpoint.
const MAX_PATTERNS: usize = 64;
/// Longest description.
const MAX_DESCRIPTION: usize = 1024;

/// What the API checks URLs against (`[webhooks]`).
#[derive(Debug, Clone)]
pub struct WebhookPolicy {
    pub allow_private_targets: bool,
    pub rotation_grace_secs: f64,
    pub callback_secret_configured: bool,
}

impl WebhookPolicy {
    /// # Errors
    /// When the callback secret cannot be read or is malformed.
    pub fn from_config(c: &WebhooksConfig) -> anyhow::Result<Self> {
        Ok(Self {
            allow_private_targets: c.allow_private_targets,
            rotation_grace_secs: (c.rotation_grace_hours * 3600.0).max(0.0),
            callback_secret_configured: c.callback_secret().map_err(anyhow::Error::msg)?.is_some(),
        })
    }

    /// A webhook or callback URL, checked: syntax, then every address its
    /// host resolves to now (deliveries check again on each connection).
    ///
    /// # Errors
    /// 422 naming `field` and what is wrong.
    pub async fn check_url(&self, field: &str, raw: &str) -> Result<TargetUrl, ApiError> {
        let bad = |e: TargetError| ApiError::unprocessable("invalid_url", format!("{field}: {e}"));
        let url = TargetUrl::parse(raw.trim(), self.allow_private_targets).map_err(bad)?;
        if self.allow_private_targets || url.literal_ip().is_some() {
            return Ok(url);
        }
        let host = url.host().unwrap_or_default();
        let resolved = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::net::lookup_host((host.as_str(), url.port())),
        )
        .await;
        let addrs: Vec<std::net::SocketAddr> = match resolved {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => {
                return Err(ApiError::unprocessable(
                    "invalid_url",
                    format!("{field}: {host} does not resolve: {e}"),
                ));
            }
            Err(_) => {
                return Err(ApiError::unprocessable(
                    "invalid_url",
                    format!("{field}: resolving {host} took more than 5 s"),
                ));
            }
        };
        for a in addrs {
            target::check(&host, a.ip(), false).map_err(bad)?;
        }
        Ok(url)
    }

    /// A request's `callback_url`, checked, when it has one.
    ///
    /// # Errors
    /// 422 when it is invalid or no callback secret is configured.
    pub async fn callback(&self, raw: Option<&str>) -> Result<Option<TargetUrl>, ApiError> {
        let Some(raw) = raw else { return Ok(None) };
        if !self.callback_secret_configured {
            return Err(ApiError::unprocessable(
                "callbacks_unavailable",
                "callback_url: this service has no webhooks.callback_secret to sign callbacks with",
            ));
        }
        self.check_url("callback_url", raw).await.map(Some)
    }
}

/// A new endpoint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookBody {
    /// `http://` or `https://`; its host must be public unless `webhooks.allow_private_targets`.
    pub url: String,
    /// Routing-key patterns of the events to send, `*` one word, `#` any number
    /// (`["action.*", "rollout.#"]`); at least one.
    pub events: Vec<String>,
    pub description: Option<String>,
    /// Default true.
    pub active: Option<bool>,
}

/// A change to an endpoint; absent fields stay. `active: true` re-enables a disabled
/// endpoint (its failure streak starts again); its pending deliveries go out.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookPatch {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    pub active: Option<bool>,
}

/// An endpoint (never its secret).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookView {
    pub id: i64,
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    pub active: bool,
    pub disabled_at: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
    /// Since when every attempt failed (null after a success).
    pub failing_since: Option<DateTime<Utc>>,
    /// Until when the secret before the last rotation still signs too.
    pub previous_secret_until: Option<DateTime<Utc>>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<EndpointRow> for WebhookView {
    fn from(r: EndpointRow) -> Self {
        Self {
            id: r.id,
            url: r.url,
            events: r.events,
            description: r.description,
            active: r.active,
            disabled_at: r.disabled_at,
            disabled_reason: r.disabled_reason,
            failing_since: r.failing_since,
            previous_secret_until: r.previous_secret_until,
            created_by: r.created_by,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// An endpoint with its signing secret: answered on create and rotate only.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookWithSecret {
    #[serde(flatten)]
    pub webhook: WebhookView,
    /// `whsec_` + base64 of 32 random bytes. Shown once: keep it.
    pub secret: String,
}

/// A page of endpoints, oldest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookPage {
    pub items: Vec<WebhookView>,
    pub next_cursor: Option<String>,
}

fn patterns(events: &[String]) -> Result<Vec<String>, ApiError> {
    if events.is_empty() || events.len() > MAX_PATTERNS {
        return Err(ApiError::unprocessable(
            "invalid_events",
            format!("events must hold 1 to {MAX_PATTERNS} patterns"),
        ));
    }
    events
        .iter()
        .map(|p| {
            EventPattern::parse(p)
                .map(|p| p.as_str().to_owned())
                .map_err(|e| ApiError::unprocessable("invalid_events", e.to_string()))
        })
        .collect()
}

fn description(raw: Option<String>) -> Result<Option<String>, ApiError> {
    match raw {
        Some(d) if d.len() > MAX_DESCRIPTION || d.contains('\0') => Err(ApiError::unprocessable(
            "invalid_description",
            format!("description must be at most {MAX_DESCRIPTION} bytes without NUL"),
        )),
        other => Ok(other),
    }
}

fn no_endpoint(id: i64) -> ApiError {
    ApiError::not_found(format!("no webhook endpoint with id {id}"))
}

fn new_secret() -> Result<String, ApiError> {
    generate_secret().map_err(|e| ApiError::internal(&e))
}

/// Create an endpoint; the answer holds its signing secret, shown this once.
#[utoipa::path(
    post, path = "/api/haproxy/webhooks", tag = "webhooks",
    request_body = WebhookBody,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created, with its secret", body = WebhookWithSecret),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 403, description = "Role below admin", body = ErrorBody),
        (status = 422, description = "Invalid URL (scheme, host, a private or local address), events or description", body = ErrorBody),
    )
)]
pub async fn create_webhook(
    State(st): State<ApiState>,
    Auth(caller, _): Auth<Admin>,
    ApiJson(body): ApiJson<WebhookBody>,
) -> Result<(StatusCode, Json<WebhookWithSecret>), ApiError> {
    let url = st.webhooks.check_url("url", &body.url).await?;
    let new = store::NewEndpoint {
        url: url.as_str().to_owned(),
        events: patterns(&body.events)?,
        description: description(body.description)?,
        active: body.active.unwrap_or(true),
        secret: new_secret()?,
        created_by: caller.actor.clone(),
    };
    let secret = new.secret.clone();
    let row = db::run(&st.pool, move |c| store::create_endpoint(c, &new)).await?;
    tracing::info!(webhook_id = row.id, actor = %caller.actor, "webhook endpoint created");
    Ok((
        StatusCode::CREATED,
        Json(WebhookWithSecret {
            webhook: row.into(),
            secret,
        }),
    ))
}

/// List endpoints, oldest first.
#[utoipa::path(
    get, path = "/api/haproxy/webhooks", tag = "webhooks",
    params(PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of endpoints", body = WebhookPage),
        (status = 400, description = "Bad cursor", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 403, description = "Role below admin", body = ErrorBody),
        (status = 422, description = "limit outside 1..=500", body = ErrorBody),
    )
)]
pub async fn list_webhooks(
    State(st): State<ApiState>,
    _auth: Auth<Admin>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<WebhookPage>, ApiError> {
    let limit = pagination::limit(q.limit.as_deref())?;
    let after = pagination::decode_id(Kind::Webhooks, q.cursor.as_deref())?;
    let rows = db::run(&st.pool, move |c| {
        store::list_endpoints(c, after, limit + 1)
    })
    .await?;
    let (rows, more) = pagination::split(rows, limit);
    let next_cursor = more
        .then(|| {
            rows.last()
                .map(|r| pagination::encode(Kind::Webhooks, &r.id.to_string()))
        })
        .flatten();
    Ok(Json(WebhookPage {
        items: rows.into_iter().map(WebhookView::from).collect(),
        next_cursor,
    }))
}

/// One endpoint.
#[utoipa::path(
    get, path = "/api/haproxy/webhooks/{id}", tag = "webhooks",
    params(("id" = i64, Path, description = "Endpoint id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The endpoint", body = WebhookView),
        (status = 400, description = "Bad id", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 403, description = "Role below admin", body = ErrorBody),
        (status = 404, description = "No such endpoint", body = ErrorBody),
    )
)]
pub async fn get_webhook(
    State(st): State<ApiState>,
    _auth: Auth<Admin>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<WebhookView>, ApiError> {
    db::run(&st.pool, move |c| store::endpoint(c, id))
        .await?
        .map(|r| Json(r.into()))
        .ok_or_else(|| no_endpoint(id))
}

/// Change an endpoint: URL, events, description, active.
#[utoipa::path(
    patch, path = "/api/haproxy/webhooks/{id}", tag = "webhooks",
    params(("id" = i64, Path, description = "Endpoint id")),
    request_body = WebhookPatch,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Changed", body = WebhookView),
        (status = 400, description = "Malformed JSON or bad id", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 403, description = "Role below admin", body = ErrorBody),
        (status = 404, description = "No such endpoint", body = ErrorBody),
        (status = 422, description = "Invalid URL, events or description", body = ErrorBody),
    )
)]
pub async fn patch_webhook(
    State(st): State<ApiState>,
    Auth(caller, _): Auth<Admin>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<WebhookPatch>,
) -> Result<Json<WebhookView>, ApiError> {
    let url = match body.url.as_deref() {
        Some(u) => Some(st.webhooks.check_url("url", u).await?.as_str().to_owned()),
        None => None,
    };
    let patch = EndpointPatch {
        url,
        events: body.events.as_deref().map(patterns).transpose()?,
        description: body.description.map(|d| description(Some(d))).transpose()?,
        active: body.active,
        actor: caller.actor.clone(),
    };
    let row = db::run(&st.pool, move |c| store::update_endpoint(c, id, &patch))
        .await?
        .ok_or_else(|| no_endpoint(id))?;
    tracing::info!(webhook_id = id, active = row.active, actor = %caller.actor, "webhook endpoint changed");
    Ok(Json(row.into()))
}

/// Delete an endpoint with its deliveries.
#[utoipa::path(
    delete, path = "/api/haproxy/webhooks/{id}", tag = "webhooks",
    params(("id" = i64, Path, description = "Endpoint id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Deleted", body = WebhookDeleted),
        (status = 400, description = "Bad id", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 403, description = "Role below admin", body = ErrorBody),
        (status = 404, description = "No such endpoint", body = ErrorBody),
    )
)]
pub async fn delete_webhook(
    State(st): State<ApiState>,
    Auth(caller, _): Auth<Admin>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<WebhookDeleted>, ApiError> {
    if !db::run(&st.pool, move |c| store::delete_endpoint(c, id)).await? {
        return Err(no_endpoint(id));
    }
    tracing::info!(webhook_id = id, actor = %caller.actor, "webhook endpoint deleted");
    Ok(Json(WebhookDeleted { id, deleted: true }))
}

/// The answer to a delete.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookDeleted {
    pub id: i64,
    pub deleted: bool,
}

/// Give an endpoint a new secret; the old one keeps signing for `webhooks.rotation_grace_hours`.
#[utoipa::path(
    post, path = "/api/haproxy/webhooks/{id}/rotate-secret", tag = "webhooks",
    params(("id" = i64, Path, description = "Endpoint id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Rotated, with the new secret", body = WebhookWithSecret),
        (status = 400, description = "Bad id", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 403, description = "Role below admin", body = ErrorBody),
        (status = 404, description = "No such endpoint", body = ErrorBody),
    )
)]
pub async fn rotate_secret(
    State(st): State<ApiState>,
    Auth(caller, _): Auth<Admin>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<WebhookWithSecret>, ApiError> {
    let secret = new_secret()?;
    let grace = st.webhooks.rotation_grace_secs;
    let stored = secret.clone();
    let row = db::run(&st.pool, move |c| {
        store::rotate_secret(c, id, &stored, grace)
    })
    .await?
    .ok_or_else(|| no_endpoint(id))?;
    tracing::info!(webhook_id = id, actor = %caller.actor, "webhook secret rotated");
    Ok(Json(WebhookWithSecret {
        webhook: row.into(),
        secret,
    }))
}

/// One attempt of a delivery.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AttemptView {
    /// From 1; a redelivery continues the count.
    pub attempt: i32,
    pub attempted_at: DateTime<Utc>,
    /// The receiver's HTTP status; null when none came (connect error, timeout, refused address).
    pub status_code: Option<i32>,
    pub duration_ms: i32,
    pub error: Option<String>,
    /// When the next attempt was due after this one (null: none).
    pub next_attempt_at: Option<DateTime<Utc>>,
}

impl From<AttemptRow> for AttemptView {
    fn from(a: AttemptRow) -> Self {
        Self {
            attempt: a.attempt,
            attempted_at: a.attempted_at,
            status_code: a.status_code,
            duration_ms: a.duration_ms,
            error: a.error,
            next_attempt_at: a.next_attempt_at,
        }
    }
}

/// One event's delivery to one endpoint (or callback URL).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeliveryView {
    pub id: i64,
    /// The event's `event_id`, sent as `webhook-id` on every attempt.
    pub event_id: Uuid,
    pub event_type: String,
    pub endpoint_id: Option<i64>,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: i32,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub attempt_log: Vec<AttemptView>,
}

impl DeliveryView {
    fn new(d: DeliveryRow, attempts: Vec<AttemptRow>) -> Self {
        let pending = d.status == "pending";
        Self {
            id: d.id,
            event_id: d.event_id,
            event_type: d.event_type,
            endpoint_id: d.endpoint_id,
            status: d.status,
            attempts: d.attempts,
            next_attempt_at: pending.then_some(d.next_attempt_at),
            last_status_code: d.last_status_code,
            last_error: d.last_error,
            created_at: d.created_at,
            delivered_at: d.delivered_at,
            attempt_log: attempts.into_iter().map(AttemptView::from).collect(),
        }
    }
}

/// A page of deliveries, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeliveryPage {
    pub items: Vec<DeliveryView>,
    pub next_cursor: Option<String>,
}

/// An endpoint's deliveries, newest first, each with its attempts.
#[utoipa::path(
    get, path = "/api/haproxy/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = i64, Path, description = "Endpoint id"), PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of deliveries", body = DeliveryPage),
        (status = 400, description = "Bad id or cursor", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 403, description = "Role below admin", body = ErrorBody),
        (status = 404, description = "No such endpoint", body = ErrorBody),
        (status = 422, description = "limit outside 1..=500", body = ErrorBody),
    )
)]
pub async fn list_deliveries(
    State(st): State<ApiState>,
    _auth: Auth<Admin>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<DeliveryPage>, ApiError> {
    let limit = pagination::limit(q.limit.as_deref())?;
    let before = pagination::decode_id(Kind::Deliveries, q.cursor.as_deref())?;
    let rows = db::run(&st.pool, move |c| {
        if store::endpoint(c, id)?.is_none() {
            return Ok(None);
        }
        store::deliveries(c, id, before, limit + 1).map(Some)
    })
    .await?
    .ok_or_else(|| no_endpoint(id))?;
    let (rows, more) = pagination::split(rows, limit);
    let next_cursor = more
        .then(|| {
            rows.last()
                .map(|(r, _)| pagination::encode(Kind::Deliveries, &r.id.to_string()))
        })
        .flatten();
    Ok(Json(DeliveryPage {
        items: rows
            .into_iter()
            .map(|(d, a)| DeliveryView::new(d, a))
            .collect(),
        next_cursor,
    }))
}

/// Send a delivery again now, with a fresh retry schedule (same `webhook-id`).
#[utoipa::path(
    post, path = "/api/haproxy/webhooks/deliveries/{id}/redeliver", tag = "webhooks",
    params(("id" = i64, Path, description = "Delivery id")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Due now", body = DeliveryView),
        (status = 400, description = "Bad id", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 403, description = "Role below admin", body = ErrorBody),
        (status = 404, description = "No such delivery", body = ErrorBody),
    )
)]
pub async fn redeliver(
    State(st): State<ApiState>,
    Auth(caller, _): Auth<Admin>,
    ApiPath(id): ApiPath<i64>,
) -> Result<(StatusCode, Json<DeliveryView>), ApiError> {
    let row = db::run(&st.pool, move |c| store::redeliver(c, id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no webhook delivery with id {id}")))?;
    tracing::info!(delivery_id = id, actor = %caller.actor, "webhook delivery redelivered");
    Ok((
        StatusCode::ACCEPTED,
        Json(DeliveryView::new(row, Vec::new())),
    ))
}
