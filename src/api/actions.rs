//! `POST /api/haproxy/servers/{id}/action` and `GET /api/haproxy/actions/{transaction_id}`.
//!
//! Idempotency: the action row is claimed first (`INSERT … ON CONFLICT DO
//! NOTHING` on the transaction id), then the command is published. The same
//! transaction id with the same body answers what the first did (and
//! publishes the command again while the action is still `pending`, so a
//! publish that failed is retried); with another body it is a 409.

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
use crate::db::actions::{self, ActionRow, Claim, NewAction};
use crate::db::approvals::ApprovalRow;
use crate::db::{self, inventory};
use crate::domain::AdminState;
use crate::domain::action::ActionStatus;
use crate::domain::approval::{ApprovalKind, Place, Subject, evaluate};
use crate::domain::webhook::CallbackKind;
use crate::queue::message::{ActionMessage, parse_action_kind};

/// What to do with one server.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequestBody {
    /// `ready`, `drain` or `maint`.
    pub action: String,
    /// A UUID; sending the same one again never applies the action twice.
    /// A new one is made when absent.
    #[schema(value_type = Option<Uuid>)]
    pub transaction_id: Option<String>,
    /// Why (recorded, at most 2048 bytes).
    pub reason: Option<String>,
    /// Take the last `ready` server of a backend out anyway.
    pub force: Option<bool>,
    /// Optional (issue 13): an http(s) URL that receives this request's final event, signed
    /// with the service's callback secret and retried like a webhook (docs/webhooks.md). Its
    /// host must be public unless `webhooks.allow_private_targets`; 422 otherwise, and when
    /// no `webhooks.callback_secret` is configured. The first URL given for a transaction_id stays.
    pub callback_url: Option<String>,
}

/// The action was recorded and its command published.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ActionAccepted {
    pub transaction_id: Uuid,
    /// `awaiting_approval`, `pending`, `running`, `success`, `failed`,
    /// `superseded` or `rejected`.
    pub status: String,
    /// The approval it waits for (`awaiting_approval`): see docs/approvals.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<i64>,
}

/// The validated request.
struct ValidActionBody {
    transaction_id: Uuid,
    action: AdminState,
    reason: Option<String>,
    force: bool,
}

fn validate(body: ActionRequestBody) -> Result<ValidActionBody, ApiError> {
    let action = parse_action_kind(&body.action)
        .map_err(|e| ApiError::unprocessable("invalid_action", e.0))?;
    let transaction_id = super::transaction_id(body.transaction_id.as_deref())?;
    let reason = super::reason(body.reason)?;
    Ok(ValidActionBody {
        transaction_id,
        action,
        reason,
        force: body.force.unwrap_or(false),
    })
}

enum ActionRecording {
    NoServer,
    /// The server's instance is not active (its name).
    Inactive(String),
    New(ActionRow),
    Existing(ActionRow),
    /// Recorded now, held for this approval (published after the commit).
    Held(ActionRow, Box<ApprovalRow>),
}

/// Change one server's state.
#[utoipa::path(
    post, path = "/api/haproxy/servers/{id}/action", tag = "actions",
    params(("id" = i64, Path, description = "Server id")),
    request_body = ActionRequestBody,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Recorded and published, or held for approval (`awaiting_approval` with `approval_id`); the same transaction_id again gives the same answer", body = ActionAccepted),
        (status = 400, description = "Malformed JSON or bad id", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 403, description = "Role below operator", body = ErrorBody),
        (status = 404, description = "No such live server", body = ErrorBody),
        (status = 409, description = "transaction_id already used for another request", body = ErrorBody),
        (status = 422, description = "Invalid action, transaction_id, reason or field, or the server's instance is not active", body = ErrorBody),
        (status = 503, description = "RabbitMQ or PostgreSQL unavailable; send the same request again", body = ErrorBody),
    )
)]
pub async fn post_action(
    State(st): State<ApiState>,
    Auth(caller, _): Auth<Operator>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<ActionRequestBody>,
) -> Result<(StatusCode, Json<ActionAccepted>), ApiError> {
    let callback = st.webhooks.callback(body.callback_url.as_deref()).await?;
    let asked = validate(body)?;
    let new = NewAction {
        transaction_id: asked.transaction_id,
        server_id: Some(id),
        batch_id: None,
        action: asked.action,
        status: ActionStatus::Pending,
        actor: caller.actor.clone(),
        reason: asked.reason.clone(),
        force: asked.force,
        requested_at: Utc::now(),
    };
    let recorded = record(&st, new, id).await?;
    if let ActionRecording::Held(_, approval) = &recorded {
        super::publish_approval_requested(&st, approval).await?;
    }
    let row = accepted_row(recorded, &asked, id)?;
    super::record_callback(&st, row.transaction_id, CallbackKind::Action, callback).await?;
    if row.status == ActionStatus::Pending {
        publish(&st, &row).await?;
    }
    let approval_id = approval_id(&st, &row).await?;
    tracing::info!(
        transaction_id = %row.transaction_id, server_id = id, action = %row.action,
        actor = %caller.actor, status = %row.status, "action accepted"
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(ActionAccepted {
            transaction_id: row.transaction_id,
            status: row.status.to_string(),
            approval_id,
        }),
    ))
}

/// The approval an action waits for (or waited for).
async fn approval_id(st: &ApiState, row: &ActionRow) -> Result<Option<i64>, ApiError> {
    if row.status != ActionStatus::AwaitingApproval {
        return Ok(None);
    }
    let txn = row.transaction_id;
    Ok(db::run(&st.pool, move |c| {
        crate::db::approvals::by_request(c, ApprovalKind::Action, txn)
    })
    .await?
    .map(|a| a.id))
}

/// Records the action as `pending` under its transaction id, or finds the
/// row a first request with that id left.
async fn record(st: &ApiState, new: NewAction, id: i64) -> Result<ActionRecording, ApiError> {
    Ok(db::run(&st.pool, move |c| {
        if let Some(row) = actions::get_by_transaction(c, new.transaction_id)? {
            return Ok(ActionRecording::Existing(row));
        }
        let target = match inventory::find_server(c, id)? {
            None => return Ok(ActionRecording::NoServer),
            Some(t) if !t.instance.is_active => {
                return Ok(ActionRecording::Inactive(t.instance.name));
            }
            Some(t) => t,
        };
        // One clock: the database's, like the workers' checks of it.
        let new = NewAction {
            requested_at: db::database_now(c)?,
            ..new
        };
        let policy = crate::db::approvals::policy(c)?;
        let place = Place {
            instance: target.instance.name.clone(),
            backend: target.backend_name.clone(),
        };
        let rules = evaluate(
            &policy,
            &Subject::Action {
                action: new.action,
                force: new.force,
                place: &place,
            },
        );
        if !rules.is_empty() {
            let summary = crate::approvals::action_summary(&new, &target);
            return Ok(
                match crate::approvals::hold_action(c, &new, summary, rules, policy.ttl_secs)? {
                    Held::New(row, approval) => ActionRecording::Held(row, Box::new(approval)),
                    Held::Existing(row) => ActionRecording::Existing(row),
                },
            );
        }
        Ok(match actions::claim(c, &new)? {
            Claim::New(row) => ActionRecording::New(row),
            Claim::Existing(row) => ActionRecording::Existing(row),
        })
    })
    .await?)
}

/// The row to answer with, or the error the recording means: no live
/// server, an inactive instance, or a transaction id used for another
/// request.
fn accepted_row(
    recorded: ActionRecording,
    asked: &ValidActionBody,
    id: i64,
) -> Result<ActionRow, ApiError> {
    Ok(match recorded {
        ActionRecording::NoServer => {
            return Err(ApiError::not_found(format!("no live server with id {id}")));
        }
        ActionRecording::Inactive(instance) => {
            return Err(ApiError::unprocessable(
                "instance_inactive",
                format!("server {id} belongs to instance {instance}, which is not active"),
            ));
        }
        ActionRecording::New(row) | ActionRecording::Held(row, _) => row,
        ActionRecording::Existing(row) => {
            let same = row.action == asked.action
                && row.server_id == Some(id)
                && row.batch_id.is_none()
                && row.force == asked.force
                && row.reason == asked.reason;
            if !same {
                return Err(ApiError::conflict(
                    "transaction_conflict",
                    format!(
                        "transaction_id {} was already used for another request ({} of server {}{})",
                        row.transaction_id,
                        row.action,
                        row.server_id.map_or_else(|| "?".into(), |s| s.to_string()),
                        if row.batch_id.is_some() {
                            " in a batch"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            row
        }
    })
}

/// Publishes the contract's `action` command for a recorded action (the
/// row of this server, whose action is the request's: checked by
/// [`accepted_row`]).
async fn publish(st: &ApiState, row: &ActionRow) -> Result<(), ApiError> {
    let request = row
        .request()
        .ok_or_else(|| ApiError::not_found("the action names no server"))?;
    super::publish_command(st, &ActionMessage::from(&request)).await
}

/// An action and where it stands.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ActionView {
    pub transaction_id: Uuid,
    /// `ready`, `drain` or `maint`.
    pub action: String,
    /// `awaiting_approval`, `pending`, `running`, `success`, `failed`,
    /// `superseded` or `rejected`.
    pub status: String,
    pub server_id: Option<i64>,
    pub batch_id: Option<i64>,
    pub actor: String,
    pub reason: Option<String>,
    pub force: bool,
    /// Calls made to the agent.
    pub attempts: i32,
    /// `circuit_open`, `agent_unreachable`, `agent_error`, `not_found` or `invalid` when it failed.
    pub error: Option<String>,
    pub error_detail: Option<String>,
    pub requested_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<ActionRow> for ActionView {
    fn from(r: ActionRow) -> Self {
        Self {
            transaction_id: r.transaction_id,
            action: r.action.to_string(),
            status: r.status.to_string(),
            server_id: r.server_id,
            batch_id: r.batch_id,
            actor: r.actor,
            reason: r.reason,
            force: r.force,
            attempts: r.attempts,
            error: r.error,
            error_detail: r.error_detail,
            requested_at: r.requested_at,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
        }
    }
}

/// An action's status, attempts and error.
#[utoipa::path(
    get, path = "/api/haproxy/actions/{transaction_id}", tag = "actions",
    params(("transaction_id" = Uuid, Path, description = "The action's transaction id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The action", body = ActionView),
        (status = 400, description = "Not a UUID", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No action with that transaction id", body = ErrorBody),
    )
)]
pub async fn get_action(
    State(st): State<ApiState>,
    _auth: Auth<Viewer>,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<ActionView>, ApiError> {
    let transaction_id = Uuid::parse_str(&raw).map_err(|_| {
        ApiError::bad_request(
            "invalid_path",
            format!("{raw:?} is not a transaction id (a UUID)"),
        )
    })?;
    db::run(&st.pool, move |c| {
        actions::get_by_transaction(c, transaction_id)
    })
    .await?
    .map(|r| Json(ActionView::from(r)))
    .ok_or_else(|| ApiError::not_found(format!("no action with transaction_id {transaction_id}")))
}
