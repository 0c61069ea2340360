//! Rolling updates (issue 12): start one, list them, look at one with its
//! servers' steps, and steer it (pause, resume, abort; continue a manual
//! update, skip a failed server). The worker does the work; see
//! docs/rollouts.md.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::ApiState;
use super::auth::{Auth, Operator, Viewer};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::instances::PageQuery;
use super::pagination::{self, Kind};
use crate::db::rollouts::{self, RolloutRow, RolloutServerRow};
use crate::db::{self};
use crate::rollout::request::{RolloutBody, validate};
use crate::rollout::service::{RolloutError, Rollouts};
use crate::worker::rollout::events::output_tail;

impl From<RolloutError> for ApiError {
    fn from(e: RolloutError) -> Self {
        match e {
            RolloutError::Invalid(m) => ApiError::unprocessable("invalid_rollout", m),
            RolloutError::NotFound(m) => ApiError::not_found(m),
            RolloutError::Conflict(code, m) => ApiError::conflict(code, m),
            RolloutError::Db(e) => e.into(),
            RolloutError::Publish(e) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "broker_unavailable",
                format!(
                    "RabbitMQ did not take the rollout's message ({e}); send the same request again"
                ),
            ),
        }
    }
}

fn service(st: &ApiState) -> Rollouts<'_> {
    Rollouts {
        pool: &st.pool,
        publisher: &st.publisher,
        topology: &st.topology,
    }
}

/// A rollout, without its servers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RolloutView {
    pub id: i64,
    pub transaction_id: Uuid,
    /// `awaiting_approval`, `running`, `paused`, `halted`, `aborting`,
    /// `aborted`, `completed` or `rejected` (its approval was rejected or expired).
    pub status: String,
    pub actor: String,
    pub reason: Option<String>,
    pub total: i32,
    pub waves: i32,
    /// The wave in progress (from 0).
    pub current_wave: i32,
    /// Why it halted (the failed server's error).
    pub halted_reason: Option<String>,
    /// The request as validated, with defaults filled in.
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The approval it waits for (status `awaiting_approval`), on the
    /// answer to the request that started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<i64>,
}

impl From<RolloutRow> for RolloutView {
    fn from(r: RolloutRow) -> Self {
        Self {
            id: r.id,
            transaction_id: r.transaction_id,
            status: r.status.to_string(),
            actor: r.actor,
            reason: r.reason,
            total: r.total,
            waves: r.waves,
            current_wave: r.current_wave,
            halted_reason: r.halted_reason,
            spec: r.spec,
            created_at: r.created_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
            approval_id: None,
        }
    }
}

/// One server of a rollout.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RolloutServerView {
    pub server_id: i64,
    pub backend_id: i64,
    pub wave: i32,
    /// `pending`, `draining`, `drained`, `updating`, `updated`, `healthy`,
    /// `ready`, `failed` or `skipped`.
    pub step: String,
    /// The step it failed in (resume retries it).
    pub failed_step: Option<String>,
    /// Retries by `resume` (0 for the first try).
    pub attempt: i32,
    pub error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub step_started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Times the update hook was started (a re-run after a worker died counts).
    pub hook_runs: i32,
    pub hook_exit_code: Option<i32>,
    pub hook_started_at: Option<DateTime<Utc>>,
    pub hook_finished_at: Option<DateTime<Utc>>,
    /// The last 4 KiB of the hook's output (64 KiB are kept).
    pub hook_output_tail: Option<String>,
}

impl From<RolloutServerRow> for RolloutServerView {
    fn from(s: RolloutServerRow) -> Self {
        Self {
            server_id: s.server_id,
            backend_id: s.backend_id,
            wave: s.wave,
            step: s.step.to_string(),
            failed_step: s.failed_step.map(|f| f.to_string()),
            attempt: s.attempt,
            error: s.error,
            started_at: s.started_at,
            step_started_at: s.step_started_at,
            finished_at: s.finished_at,
            hook_runs: s.hook_runs,
            hook_exit_code: s.hook_exit_code,
            hook_started_at: s.hook_started_at,
            hook_finished_at: s.hook_finished_at,
            hook_output_tail: s.hook_output.as_deref().map(output_tail),
        }
    }
}

/// A rollout with its servers, in plan order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RolloutDetail {
    #[serde(flatten)]
    pub rollout: RolloutView,
    pub servers: Vec<RolloutServerView>,
}

/// A page of rollouts, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RolloutPage {
    pub items: Vec<RolloutView>,
    pub next_cursor: Option<String>,
}

/// Start a rolling update: drain → wait for sessions → update → health gate → ready, in waves.
#[utoipa::path(
    post, path = "/api/haproxy/rollouts", tag = "rollouts",
    request_body = RolloutBody,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Recorded and started; the same transaction_id and body again answers the same", body = RolloutView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 403, description = "Role below operator", body = ErrorBody),
        (status = 409, description = "transaction_id used for another rollout, or a target is in another active rollout (named)", body = ErrorBody),
        (status = 422, description = "Invalid field (targets, wave, drain, update, health), or targets naming no live server", body = ErrorBody),
        (status = 503, description = "RabbitMQ or PostgreSQL unavailable; send the same request again", body = ErrorBody),
    )
)]
pub async fn post_rollout(
    State(st): State<ApiState>,
    Auth(caller, _): Auth<Operator>,
    ApiJson(body): ApiJson<RolloutBody>,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
    let callback = st.webhooks.callback(body.callback_url.as_deref()).await?;
    let valid = validate(&body, &st.rollout_policy)
        .map_err(|m| ApiError::unprocessable("invalid_rollout", m))?;
    super::record_callback(
        &st,
        valid.transaction_id,
        crate::domain::webhook::CallbackKind::Rollout,
        callback,
    )
    .await?;
    let started = service(&st).start(&caller.actor, &valid).await?;
    tracing::info!(
        rollout_id = started.rollout.id, transaction_id = %started.rollout.transaction_id,
        total = started.rollout.total, created = started.created, actor = %caller.actor,
        "rollout accepted"
    );
    let mut view = RolloutView::from(started.rollout);
    view.approval_id = started.approval_id;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

/// List rollouts, newest first.
#[utoipa::path(
    get, path = "/api/haproxy/rollouts", tag = "rollouts",
    params(PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of rollouts", body = RolloutPage),
        (status = 400, description = "Bad cursor or query", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 422, description = "limit outside 1..=500", body = ErrorBody),
    )
)]
pub async fn list_rollouts(
    State(st): State<ApiState>,
    _auth: Auth<Viewer>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<RolloutPage>, ApiError> {
    let limit = pagination::limit(q.limit.as_deref())?;
    let before = pagination::decode_id(Kind::Rollouts, q.cursor.as_deref())?;
    let before = (before > 0).then_some(before);
    let rows = db::run(&st.pool, move |c| rollouts::list(c, before, limit + 1)).await?;
    let (rows, more) = pagination::split(rows, limit);
    let next_cursor = more
        .then(|| {
            rows.last()
                .map(|r| pagination::encode(Kind::Rollouts, &r.id.to_string()))
        })
        .flatten();
    Ok(Json(RolloutPage {
        items: rows.into_iter().map(RolloutView::from).collect(),
        next_cursor,
    }))
}

/// One rollout with every server's step, timings, hook exit code and output tail.
#[utoipa::path(
    get, path = "/api/haproxy/rollouts/{id}", tag = "rollouts",
    params(("id" = i64, Path, description = "Rollout id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The rollout", body = RolloutDetail),
        (status = 400, description = "Bad id", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such rollout", body = ErrorBody),
    )
)]
pub async fn get_rollout(
    State(st): State<ApiState>,
    _auth: Auth<Viewer>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<RolloutDetail>, ApiError> {
    let found = db::run(&st.pool, move |c| {
        let Some(r) = rollouts::get(c, id)? else {
            return Ok(None);
        };
        Ok(Some((r, rollouts::servers(c, id)?)))
    })
    .await?;
    let (rollout, servers) =
        found.ok_or_else(|| ApiError::not_found(format!("no rollout with id {id}")))?;
    Ok(Json(RolloutDetail {
        rollout: rollout.into(),
        servers: servers.into_iter().map(RolloutServerView::from).collect(),
    }))
}

macro_rules! steer {
    ($name:ident, $path:literal, $what:literal, $call:ident, $states:literal) => {
        #[doc = $what]
        #[utoipa::path(
            post, path = $path, tag = "rollouts",
            params(("id" = i64, Path, description = "Rollout id")),
            security(("bearer" = [])),
            responses(
                (status = 200, description = "Done; the rollout as it is now", body = RolloutView),
                (status = 401, description = "Missing or wrong token", body = ErrorBody),
                (status = 403, description = "Role below operator", body = ErrorBody),
                (status = 404, description = "No such rollout", body = ErrorBody),
                (status = 409, description = $states, body = ErrorBody),
                (status = 503, description = "RabbitMQ or PostgreSQL unavailable; send it again", body = ErrorBody),
            )
        )]
        pub async fn $name(
            State(st): State<ApiState>,
            Auth(caller, _): Auth<Operator>,
            ApiPath(id): ApiPath<i64>,
        ) -> Result<Json<RolloutView>, ApiError> {
            let row = service(&st).$call(id).await?;
            tracing::info!(rollout_id = id, actor = %caller.actor, status = %row.status, concat!("rollout ", stringify!($call)));
            Ok(Json(row.into()))
        }
    };
}

steer!(
    pause_rollout,
    "/api/haproxy/rollouts/{id}/pause",
    "Pause: no server starts; servers in a step finish it.",
    pause,
    "The rollout is not running"
);
steer!(
    resume_rollout,
    "/api/haproxy/rollouts/{id}/resume",
    "Resume a paused or halted rollout; failed servers are retried from the step they failed in.",
    resume,
    "The rollout is not paused or halted"
);
steer!(
    abort_rollout,
    "/api/haproxy/rollouts/{id}/abort",
    "Abort: no server starts; servers in a step end in a safe state (ready when healthy, else out of traffic and listed).",
    abort,
    "The rollout has ended already"
);

/// Path of a rollout's server.
#[derive(Debug, Deserialize)]
pub struct RolloutServerPath {
    pub id: i64,
    pub server_id: i64,
}

/// A manual update of this server is done: the rollout goes on with it.
#[utoipa::path(
    post, path = "/api/haproxy/rollouts/{id}/servers/{server_id}/continue", tag = "rollouts",
    params(("id" = i64, Path, description = "Rollout id"), ("server_id" = i64, Path, description = "Server id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Recorded; the rollout goes on", body = RolloutView),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 403, description = "Role below operator", body = ErrorBody),
        (status = 404, description = "No such rollout", body = ErrorBody),
        (status = 409, description = "That server does not wait for its update", body = ErrorBody),
    )
)]
pub async fn continue_server(
    State(st): State<ApiState>,
    _auth: Auth<Operator>,
    ApiPath(p): ApiPath<RolloutServerPath>,
) -> Result<Json<RolloutView>, ApiError> {
    service(&st).continue_server(p.id, p.server_id).await?;
    let row = db::run(&st.pool, move |c| rollouts::get(c, p.id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no rollout with id {}", p.id)))?;
    Ok(Json(row.into()))
}

/// Leave a failed server out (it stays out of traffic) and go on.
#[utoipa::path(
    post, path = "/api/haproxy/rollouts/{id}/servers/{server_id}/skip", tag = "rollouts",
    params(("id" = i64, Path, description = "Rollout id"), ("server_id" = i64, Path, description = "Server id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Skipped; a halted rollout with no other failed server goes on", body = RolloutView),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 403, description = "Role below operator", body = ErrorBody),
        (status = 404, description = "No such rollout", body = ErrorBody),
        (status = 409, description = "That server has not failed", body = ErrorBody),
    )
)]
pub async fn skip_server(
    State(st): State<ApiState>,
    _auth: Auth<Operator>,
    ApiPath(p): ApiPath<RolloutServerPath>,
) -> Result<Json<RolloutView>, ApiError> {
    service(&st).skip_server(p.id, p.server_id).await?;
    let row = db::run(&st.pool, move |c| rollouts::get(c, p.id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no rollout with id {}", p.id)))?;
    Ok(Json(row.into()))
}
