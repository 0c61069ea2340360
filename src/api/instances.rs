//! `/api/haproxy/instances`: instances with breaker and last sync, their
//! backends, and forced syncs.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::ApiState;
use super::auth::{Auth, Operator, Viewer};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiPath, ApiQuery};
use super::pagination::{self, Kind};
use crate::db::api_queries::{self, BackendListRow};
use crate::db::instances::{self, InstanceRow};
use crate::db::{self};
use crate::domain::action::{SyncReason, SyncRequest};
use crate::queue::message::SyncMessage;

/// An HAProxy instance. Its agent token is never shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceView {
    pub id: i64,
    pub name: String,
    /// The AC server (`servers.id`) it runs on.
    pub server_id: Option<i64>,
    /// Base URL of its FAgent (any user info removed).
    pub fagent_url: String,
    pub is_active: bool,
    pub breaker: BreakerView,
    pub last_sync: LastSyncView,
    /// The HAProxy process the last sync saw (null before the agent reported one).
    pub haproxy_process: Option<HaproxyProcessView>,
    /// When a sync last saw a new HAProxy process (a reload or restart).
    pub last_reload_at: Option<DateTime<Utc>>,
    /// Whether states the module applied are re-applied after a reload reset them.
    pub restore_after_reload: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An HAProxy process: `Pid` and `Start_time_sec` of `show info`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HaproxyProcessView {
    pub pid: i32,
    /// On the HAProxy host's clock.
    pub started_at: Option<DateTime<Utc>>,
}

/// The instance's circuit breaker, shared by every worker.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BreakerView {
    /// `closed`, `open` or `half_open`.
    pub state: String,
    pub consecutive_failures: i32,
    pub opened_at: Option<DateTime<Utc>>,
}

/// The instance's last sync.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LastSyncView {
    pub at: Option<DateTime<Utc>>,
    /// `success` or `failed`; null before the first sync.
    pub result: Option<String>,
    pub error: Option<String>,
}

impl From<InstanceRow> for InstanceView {
    fn from(r: InstanceRow) -> Self {
        Self {
            id: r.id,
            name: r.name,
            server_id: r.server_id,
            fagent_url: public_url(&r.fagent_url),
            is_active: r.is_active,
            breaker: BreakerView {
                state: r.breaker_state.to_string(),
                consecutive_failures: r.consecutive_failures,
                opened_at: r.opened_at,
            },
            last_sync: LastSyncView {
                at: r.last_sync_at,
                result: r.last_sync_result.map(|r| r.to_string()),
                error: r.last_sync_error,
            },
            haproxy_process: r.haproxy_pid.map(|pid| HaproxyProcessView {
                pid,
                started_at: r.haproxy_started_at,
            }),
            last_reload_at: r.last_reload_at,
            restore_after_reload: r.restore_after_reload,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// The URL without user name or password.
fn public_url(raw: &str) -> String {
    match reqwest::Url::parse(raw) {
        Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string().trim_end_matches('/').to_owned()
        }
        _ => raw.to_owned(),
    }
}

/// `limit` and `cursor`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of instances.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InstancePage {
    pub items: Vec<InstanceView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// List instances, by id.
#[utoipa::path(
    get, path = "/api/haproxy/instances", tag = "instances",
    params(PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of instances, with breaker state and last sync", body = InstancePage),
        (status = 400, description = "Bad cursor or query", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 422, description = "limit outside 1..=500", body = ErrorBody),
    )
)]
pub async fn list_instances(
    State(st): State<ApiState>,
    _auth: Auth<Viewer>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<InstancePage>, ApiError> {
    let limit = pagination::limit(q.limit.as_deref())?;
    let after = pagination::decode_id(Kind::Instances, q.cursor.as_deref())?;
    let rows = db::run(&st.pool, move |c| instances::list(c, after, limit + 1)).await?;
    let (rows, more) = pagination::split(rows, limit);
    let next_cursor = more
        .then(|| {
            rows.last()
                .map(|r| pagination::encode(Kind::Instances, &r.id.to_string()))
        })
        .flatten();
    Ok(Json(InstancePage {
        items: rows.into_iter().map(InstanceView::from).collect(),
        next_cursor,
    }))
}

/// A live backend with counts of its live servers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BackendView {
    pub id: i64,
    pub name: String,
    pub instance_id: i64,
    pub servers: ServerCounts,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: Option<DateTime<Utc>>,
}

/// Live servers of a backend by state.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ServerCounts {
    pub total: i64,
    pub ready: i64,
    pub drain: i64,
    pub maint: i64,
    /// Servers HAProxy sees `up`.
    pub up: i64,
    /// Servers HAProxy sees `down`.
    pub down: i64,
}

/// A page of backends.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BackendPage {
    pub items: Vec<BackendView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

fn backend_view(instance_id: i64, r: BackendListRow) -> BackendView {
    BackendView {
        id: r.id,
        name: r.backend_name,
        instance_id,
        servers: ServerCounts {
            total: r.servers,
            ready: r.ready,
            drain: r.drain,
            maint: r.maint,
            up: r.up,
            down: r.down,
        },
        created_at: r.created_at,
        last_seen_at: r.last_seen_at,
    }
}

/// List an instance's live backends, by name, with live server counts.
#[utoipa::path(
    get, path = "/api/haproxy/instances/{id}/backends", tag = "instances",
    params(("id" = i64, Path, description = "Instance id"), PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of backends", body = BackendPage),
        (status = 400, description = "Bad id, cursor or query", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 422, description = "limit outside 1..=500", body = ErrorBody),
    )
)]
pub async fn list_backends(
    State(st): State<ApiState>,
    _auth: Auth<Viewer>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<BackendPage>, ApiError> {
    let limit = pagination::limit(q.limit.as_deref())?;
    let after = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => pagination::decode(Kind::Backends, c)?,
        None => String::new(),
    };
    let rows = db::run(&st.pool, move |c| {
        if instances::get(c, id)?.is_none() {
            return Ok(None);
        }
        api_queries::backends_page(c, id, &after, limit + 1).map(Some)
    })
    .await?
    .ok_or_else(|| ApiError::not_found(format!("no instance with id {id}")))?;
    let (rows, more) = pagination::split(rows, limit);
    let next_cursor = more
        .then(|| {
            rows.last()
                .map(|r| pagination::encode(Kind::Backends, &r.backend_name))
        })
        .flatten();
    Ok(Json(BackendPage {
        items: rows.into_iter().map(|r| backend_view(id, r)).collect(),
        next_cursor,
    }))
}

/// A sync was asked for.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SyncAccepted {
    /// The sync's transaction id (its run is recorded under it).
    pub transaction_id: Uuid,
}

/// Sync an instance now: publishes a `sync` command with reason `force`.
#[utoipa::path(
    post, path = "/api/haproxy/instances/{id}/sync", tag = "instances",
    params(("id" = i64, Path, description = "Instance id")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "The sync command was published", body = SyncAccepted),
        (status = 400, description = "Bad id", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 403, description = "Role below operator", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 422, description = "The instance is not active", body = ErrorBody),
        (status = 503, description = "RabbitMQ or PostgreSQL unavailable", body = ErrorBody),
    )
)]
pub async fn sync_instance(
    State(st): State<ApiState>,
    Auth(caller, _): Auth<Operator>,
    ApiPath(id): ApiPath<i64>,
) -> Result<(StatusCode, Json<SyncAccepted>), ApiError> {
    let instance = db::run(&st.pool, move |c| instances::get(c, id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no instance with id {id}")))?;
    if !instance.is_active {
        return Err(ApiError::unprocessable(
            "instance_inactive",
            format!(
                "instance {} is not active; activate it first",
                instance.name
            ),
        ));
    }
    let transaction_id = Uuid::new_v4();
    let request = SyncRequest {
        transaction_id,
        instance_id: Some(id),
        reason: SyncReason::Force,
        actor: caller.actor.clone(),
        requested_at: Some(Utc::now()),
    };
    super::publish_command(&st, &SyncMessage::from(&request)).await?;
    tracing::info!(%transaction_id, instance = %instance.name, actor = %caller.actor, "sync requested");
    Ok((StatusCode::ACCEPTED, Json(SyncAccepted { transaction_id })))
}
