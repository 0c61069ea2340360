//! `POST /api/haproxy/batch/action` and `GET /api/haproxy/batches/{id}`.
//!
//! A batch is recorded (with the number of live servers its targets name)
//! before its `batch` command is published; the worker expands it into one
//! action per server with transaction id UUIDv5(batch transaction id,
//! "server:{id}"), so sending it again never doubles an action. The same
//! transaction id with the same body answers the same; with another, 409.

use std::collections::BTreeMap;

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
use super::extract::{ApiJson, ApiPath};
use crate::approvals::Held;
use crate::db::approvals::ApprovalRow;
use crate::db::batches::{self, BatchRow, NewBatch};
use crate::db::{self, api_queries};
use crate::domain::AdminState;
use crate::domain::action::{BatchRequest, BatchStatus, BatchTargets};
use crate::domain::approval::{ApprovalKind, Subject, evaluate};
use crate::queue::message::{
    BatchMessage, BatchTargetsMessage, parse_action_kind, parse_batch_targets_json,
};

/// One action for many servers.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequestBody {
    /// `ready`, `drain` or `maint`.
    pub action: String,
    /// Exactly one of `{"server_ids": [..]}`, `{"application_ids": [..]}`,
    /// `{"application_group_id": N}`.
    #[schema(value_type = TargetsSchema)]
    pub targets: serde_json::Value,
    /// A UUID; sending the same one again never applies anything twice.
    #[schema(value_type = Option<Uuid>)]
    pub transaction_id: Option<String>,
    pub reason: Option<String>,
    /// Skip the last-ready-server guard.
    pub force: Option<bool>,
    /// Optional (issue 13): an http(s) URL that receives this request's final event, signed
    /// with the service's callback secret and retried like a webhook (docs/webhooks.md). Its
    /// host must be public unless `webhooks.allow_private_targets`; 422 otherwise, and when
    /// no `webhooks.callback_secret` is configured. The first URL given for a transaction_id stays.
    pub callback_url: Option<String>,
}

/// What a batch acts on: exactly one of the three.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TargetsSchema {
    pub server_ids: Option<Vec<i64>>,
    /// Every live server linked to these applications, on every instance.
    pub application_ids: Option<Vec<i64>>,
    /// Every live server linked to an application of this ApplicationGroup.
    pub application_group_id: Option<i64>,
}

/// The batch was recorded and its command published.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchAccepted {
    pub batch_id: i64,
    pub transaction_id: Uuid,
    /// Live servers the targets named when the batch was recorded.
    pub total: i32,
    /// `accepted` (expanded by the worker), `awaiting_approval` (held: see
    /// `approval_id`) or `rejected` (its approval was rejected or expired).
    pub status: String,
    /// The approval it waits for (or waited for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<i64>,
}

struct ValidBatchBody {
    transaction_id: Uuid,
    action: AdminState,
    targets: BatchTargets,
    reason: Option<String>,
    force: bool,
}

fn validate(body: BatchRequestBody) -> Result<ValidBatchBody, ApiError> {
    let action = parse_action_kind(&body.action)
        .map_err(|e| ApiError::unprocessable("invalid_action", e.0))?;
    let targets = parse_batch_targets_json(&body.targets)
        .map_err(|e| ApiError::unprocessable("invalid_targets", e.0))?;
    let transaction_id = super::transaction_id(body.transaction_id.as_deref())?;
    let reason = super::reason(body.reason)?;
    Ok(ValidBatchBody {
        transaction_id,
        action,
        targets,
        reason,
        force: body.force.unwrap_or(false),
    })
}

/// The contract's `batch` command for a recorded batch (whose action and
/// targets are the request's, which a reused row matches).
fn command(row: &BatchRow, asked: &ValidBatchBody) -> BatchMessage {
    BatchMessage::from(&BatchRequest {
        action: asked.action,
        ..row.request(asked.targets.clone())
    })
}

enum BatchRecording {
    NoServers,
    New(BatchRow),
    /// Recorded now, held for this approval.
    Held(BatchRow, Box<ApprovalRow>),
    /// With how many of its actions are recorded.
    Existing(BatchRow, i64),
}

/// Change the state of many servers: by ids, by applications or by an ApplicationGroup.
#[utoipa::path(
    post, path = "/api/haproxy/batch/action", tag = "batches",
    request_body = BatchRequestBody,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Recorded and published, or held for approval (`awaiting_approval` with `approval_id`); the same transaction_id again gives the same answer", body = BatchAccepted),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 403, description = "Role below operator", body = ErrorBody),
        (status = 409, description = "transaction_id already used for another batch", body = ErrorBody),
        (status = 422, description = "Invalid action, targets or field, or targets naming no live server", body = ErrorBody),
        (status = 503, description = "RabbitMQ or PostgreSQL unavailable; send the same request again", body = ErrorBody),
    )
)]
pub async fn post_batch(
    State(st): State<ApiState>,
    Auth(caller, _): Auth<Operator>,
    ApiJson(body): ApiJson<BatchRequestBody>,
) -> Result<(StatusCode, Json<BatchAccepted>), ApiError> {
    let callback = st.webhooks.callback(body.callback_url.as_deref()).await?;
    let asked = validate(body)?;
    let new = NewBatch {
        transaction_id: asked.transaction_id,
        action: asked.action,
        actor: caller.actor.clone(),
        reason: asked.reason.clone(),
        force: asked.force,
        targets: BatchTargetsMessage::from(&asked.targets)
            .to_value()
            .map_err(|e| ApiError::internal(&e))?,
        total: 0,
        requested_at: Utc::now(),
    };
    let recorded = record(&st, new, asked.targets.clone()).await?;
    if let BatchRecording::Held(_, approval) = &recorded {
        super::publish_approval_requested(&st, approval).await?;
    }
    let (row, publish) = accepted_row(recorded, &asked)?;
    super::record_callback(
        &st,
        row.transaction_id,
        crate::domain::webhook::CallbackKind::Batch,
        callback,
    )
    .await?;
    if publish {
        super::publish_command(&st, &command(&row, &asked)).await?;
    }
    let approval_id = if row.status == BatchStatus::Accepted {
        None
    } else {
        let txn = row.transaction_id;
        db::run(&st.pool, move |c| {
            crate::db::approvals::by_request(c, ApprovalKind::Batch, txn)
        })
        .await?
        .map(|a| a.id)
    };
    tracing::info!(
        transaction_id = %row.transaction_id, batch_id = row.id, total = row.total,
        action = %row.action, actor = %caller.actor, "batch accepted"
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(BatchAccepted {
            batch_id: row.id,
            transaction_id: row.transaction_id,
            total: row.total,
            status: row.status.to_string(),
            approval_id,
        }),
    ))
}

/// Records the batch with its expanded total under its transaction id, or
/// finds the row a first request with that id left (with how many of its
/// actions are recorded).
async fn record(
    st: &ApiState,
    new: NewBatch,
    targets: BatchTargets,
) -> Result<BatchRecording, ApiError> {
    Ok(db::run(&st.pool, move |c| {
        if let Some(row) = batches::by_transaction(c, new.transaction_id)? {
            let n = api_queries::batch_recorded(c, row.id)?;
            return Ok(BatchRecording::Existing(row, n));
        }
        let ids = batches::expand(c, &targets)?;
        if ids.is_empty() {
            return Ok(BatchRecording::NoServers);
        }
        // One clock: the database's, like the workers' checks of it.
        let new = NewBatch {
            total: i32::try_from(ids.len()).unwrap_or(i32::MAX),
            requested_at: db::database_now(c)?,
            ..new
        };
        let policy = crate::db::approvals::policy(c)?;
        let places = crate::approvals::places_of(c, &policy, new.action, &ids)?;
        let rules = evaluate(
            &policy,
            &Subject::Batch {
                action: new.action,
                force: new.force,
                places: &places,
            },
        );
        if !rules.is_empty() {
            let summary = crate::approvals::batch_summary(&new);
            match crate::approvals::hold_batch(c, &new, summary, rules, policy.ttl_secs)? {
                Held::New(row, approval) => {
                    return Ok(BatchRecording::Held(row, Box::new(approval)));
                }
                Held::Existing(row) => {
                    let n = api_queries::batch_recorded(c, row.id)?;
                    return Ok(BatchRecording::Existing(row, n));
                }
            }
        }
        let (row, created) = batches::create(c, &new)?;
        if created {
            return Ok(BatchRecording::New(row));
        }
        let n = api_queries::batch_recorded(c, row.id)?;
        Ok(BatchRecording::Existing(row, n))
    })
    .await?)
}

/// The batch row to answer with and whether its command is to be
/// published, or the error the recording means.
fn accepted_row(
    recorded: BatchRecording,
    asked: &ValidBatchBody,
) -> Result<(BatchRow, bool), ApiError> {
    Ok(match recorded {
        BatchRecording::NoServers => {
            return Err(ApiError::unprocessable(
                "no_servers",
                "the targets name no live server of an active instance",
            ));
        }
        BatchRecording::New(row) => (row, true),
        BatchRecording::Held(row, _) => (row, false),
        BatchRecording::Existing(row, recorded) => {
            let same = row.action == asked.action
                && parse_batch_targets_json(&row.targets).ok().as_ref() == Some(&asked.targets)
                && row.reason == asked.reason
                && row.force == asked.force;
            if !same {
                return Err(ApiError::conflict(
                    "transaction_conflict",
                    format!(
                        "transaction_id {} was already used for another batch ({} of {})",
                        row.transaction_id, row.action, row.targets
                    ),
                ));
            }
            // Published again only while the worker has not expanded it all,
            // so a publish that failed earlier is retried.
            // A held or rejected batch is not published.
            let unfinished = row.completed_at.is_none()
                && row.status == BatchStatus::Accepted
                && recorded < i64::from(row.total);
            (row, unfinished)
        }
    })
}

/// A batch and its progress.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchView {
    pub id: i64,
    pub transaction_id: Uuid,
    pub action: String,
    pub actor: String,
    pub reason: Option<String>,
    pub force: bool,
    #[schema(value_type = TargetsSchema)]
    pub targets: serde_json::Value,
    pub total: i32,
    /// `accepted`, `awaiting_approval` or `rejected` (see docs/approvals.md).
    pub status: String,
    /// Why it was rejected (names the approval).
    pub status_detail: Option<String>,
    /// Actions by status (`pending` includes servers whose action is not recorded
    /// yet; for a held batch they count as `awaiting_approval`, for a rejected one as `rejected`).
    pub counts: BTreeMap<String, i64>,
    pub requested_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// When every action had finished.
    pub completed_at: Option<DateTime<Utc>>,
}

/// A batch's progress: counts by status.
#[utoipa::path(
    get, path = "/api/haproxy/batches/{id}", tag = "batches",
    params(("id" = i64, Path, description = "Batch id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The batch with counts of its actions by status", body = BatchView),
        (status = 400, description = "Bad id", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such batch", body = ErrorBody),
    )
)]
pub async fn get_batch(
    State(st): State<ApiState>,
    _auth: Auth<Viewer>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<BatchView>, ApiError> {
    let found = db::run(&st.pool, move |c| {
        let Some(row) = batches::get(c, id)? else {
            return Ok(None);
        };
        let counts = batches::counts(c, &row)?;
        Ok(Some((row, counts)))
    })
    .await?;
    let (r, counts) = found.ok_or_else(|| ApiError::not_found(format!("no batch with id {id}")))?;
    Ok(Json(BatchView {
        id: r.id,
        transaction_id: r.transaction_id,
        action: r.action.to_string(),
        actor: r.actor,
        reason: r.reason,
        force: r.force,
        targets: r.targets,
        total: r.total,
        status: r.status.to_string(),
        status_detail: r.status_detail,
        counts,
        requested_at: r.requested_at,
        created_at: r.created_at,
        completed_at: r.completed_at,
    }))
}
