//! Four-eyes approval (docs/approvals.md): the policy
//! (`GET`/`PUT /api/haproxy/settings/approval`), the approvals
//! (`GET /api/haproxy/approvals`, `GET …/{id}`) and their decisions
//! (`POST …/{id}/approve`, `…/reject`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::ApiState;
use super::auth::{Admin, Approver, Auth, Viewer};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::pagination::{self, Kind};
use crate::approvals::{Approvals, DecideError, Decision};
use crate::db::approvals::{self, ApprovalRow};
use crate::db::{self, actions, batches, rollouts};
use crate::domain::approval::{ApprovalPolicy, ApprovalStatus, PolicyDocument};

/// Longest comment kept.
const MAX_COMMENT: usize = 2048;

/// The approval policy: which requests wait for a second person.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    /// Any action or batch with `force: true`.
    #[serde(default)]
    pub force_actions: bool,
    /// A batch over this many servers (absent: no limit).
    pub batch_max_servers: Option<u32>,
    /// A rollout over this many servers (absent: no limit).
    pub rollout_max_servers: Option<u32>,
    /// `maint` of a server of an instance whose name matches one of these
    /// patterns (`*` any run of characters, `?` one; else `[A-Za-z0-9._:-]`).
    #[serde(default)]
    pub maint_instances: Vec<String>,
    /// `maint` of a server of a backend whose name matches one of these patterns.
    #[serde(default)]
    pub maint_backends: Vec<String>,
    /// Seconds an approval waits before it expires, 1 to 604800 (default 3600).
    pub ttl_secs: Option<u64>,
}

/// The policy as saved.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PolicyView {
    pub force_actions: bool,
    pub batch_max_servers: Option<u32>,
    pub rollout_max_servers: Option<u32>,
    pub maint_instances: Vec<String>,
    pub maint_backends: Vec<String>,
    pub ttl_secs: u64,
}

impl From<&ApprovalPolicy> for PolicyView {
    fn from(p: &ApprovalPolicy) -> Self {
        let doc = p.document();
        Self {
            force_actions: doc.force_actions,
            batch_max_servers: doc.batch_max_servers,
            rollout_max_servers: doc.rollout_max_servers,
            maint_instances: doc.maint_instances,
            maint_backends: doc.maint_backends,
            ttl_secs: p.ttl_secs,
        }
    }
}

/// The approval policy (the default, saved or not, needs no approval for anything).
#[utoipa::path(
    get, path = "/api/haproxy/settings/approval", tag = "approvals",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The policy", body = PolicyView),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 403, description = "Role below approver", body = ErrorBody),
    )
)]
pub async fn get_policy(
    State(st): State<ApiState>,
    _auth: Auth<Approver>,
) -> Result<Json<PolicyView>, ApiError> {
    let policy = db::run(&st.pool, approvals::policy).await?;
    Ok(Json(PolicyView::from(&policy)))
}

/// Replace the approval policy.
#[utoipa::path(
    put, path = "/api/haproxy/settings/approval", tag = "approvals",
    request_body = PolicyBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Saved; requests from now on are checked against it", body = PolicyView),
        (status = 400, description = "Malformed JSON or an unknown field", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 403, description = "Role below admin", body = ErrorBody),
        (status = 422, description = "A bad pattern or ttl_secs", body = ErrorBody),
    )
)]
pub async fn put_policy(
    State(st): State<ApiState>,
    Auth(caller, _): Auth<Admin>,
    ApiJson(body): ApiJson<PolicyBody>,
) -> Result<Json<PolicyView>, ApiError> {
    let doc = PolicyDocument {
        force_actions: body.force_actions,
        batch_max_servers: body.batch_max_servers,
        rollout_max_servers: body.rollout_max_servers,
        maint_instances: body.maint_instances,
        maint_backends: body.maint_backends,
        ttl_secs: body.ttl_secs,
    };
    let policy =
        ApprovalPolicy::parse(&doc).map_err(|e| ApiError::unprocessable("invalid_policy", e.0))?;
    let (saved, actor) = (policy.clone(), caller.actor.clone());
    db::run(&st.pool, move |c| approvals::put_policy(c, &saved, &actor)).await?;
    tracing::info!(actor = %caller.actor, policy = ?policy, "approval policy saved");
    Ok(Json(PolicyView::from(&policy)))
}

/// An approval and the request it holds.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApprovalView {
    pub id: i64,
    /// `action`, `batch` or `rollout`.
    pub kind: String,
    /// The held request's transaction id.
    pub transaction_id: Uuid,
    /// `pending`, `approved`, `rejected` or `expired`.
    pub status: String,
    pub requester: String,
    /// What was asked (action, server or targets, servers, force, reason).
    #[schema(value_type = Object)]
    pub summary: serde_json::Value,
    /// The policy rules it matched: `[{"rule", "detail"}]`.
    #[schema(value_type = Vec<Object>)]
    pub matched_rules: serde_json::Value,
    pub requested_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Who approved or rejected it (absent while pending and when it expired).
    pub decided_by: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
    pub comment: Option<String>,
    /// The request's own status now (`awaiting_approval`, `pending`, …,
    /// `rejected`), read from its action, batch or rollout row.
    pub request_status: Option<String>,
    /// The batch's or rollout's id.
    pub request_id: Option<i64>,
}

impl ApprovalView {
    fn of(r: ApprovalRow, request: Option<(String, Option<i64>)>) -> Self {
        let (request_status, request_id) = request.map_or((None, None), |(s, id)| (Some(s), id));
        Self {
            id: r.id,
            kind: r.kind.to_string(),
            transaction_id: r.transaction_id,
            status: r.status.to_string(),
            requester: r.requester,
            summary: r.summary,
            matched_rules: r.matched_rules,
            requested_at: r.requested_at,
            expires_at: r.expires_at,
            decided_by: r.decided_by,
            decided_at: r.decided_at,
            comment: r.comment,
            request_status,
            request_id,
        }
    }
}

/// The held request's status and id (batch or rollout).
fn request_of(
    c: &mut diesel::PgConnection,
    row: &ApprovalRow,
) -> Result<Option<(String, Option<i64>)>, db::DbError> {
    use crate::domain::approval::ApprovalKind;
    let txn = row.transaction_id;
    Ok(match row.kind {
        ApprovalKind::Action => {
            actions::get_by_transaction(c, txn)?.map(|a| (a.status.to_string(), None))
        }
        ApprovalKind::Batch => {
            batches::by_transaction(c, txn)?.map(|b| (b.status.to_string(), Some(b.id)))
        }
        ApprovalKind::Rollout => {
            rollouts::by_transaction(c, txn)?.map(|r| (r.status.to_string(), Some(r.id)))
        }
    })
}

/// A page of approvals, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApprovalPage {
    pub items: Vec<ApprovalView>,
    pub next_cursor: Option<String>,
}

/// `status`, `limit` and `cursor` of the approvals list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ApprovalQuery {
    /// Only approvals of this status: `pending`, `approved`, `rejected` or `expired`.
    pub status: Option<String>,
    /// Items per page, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// List approvals, newest first: the audit trail of held requests.
#[utoipa::path(
    get, path = "/api/haproxy/approvals", tag = "approvals",
    params(ApprovalQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of approvals", body = ApprovalPage),
        (status = 400, description = "Bad cursor or query", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 422, description = "Unknown status, or limit outside 1..=500", body = ErrorBody),
    )
)]
pub async fn list_approvals(
    State(st): State<ApiState>,
    _auth: Auth<Viewer>,
    ApiQuery(q): ApiQuery<ApprovalQuery>,
) -> Result<Json<ApprovalPage>, ApiError> {
    let limit = pagination::limit(q.limit.as_deref())?;
    let status = q
        .status
        .as_deref()
        .map(|s| s.parse::<ApprovalStatus>())
        .transpose()
        .map_err(|e| ApiError::unprocessable("invalid_status", e))?;
    let before = pagination::decode_id(Kind::Approvals, q.cursor.as_deref())?;
    let before = (before > 0).then_some(before);
    let rows = db::run(&st.pool, move |c| {
        let rows = approvals::list(c, status, before, limit + 1)?;
        rows.into_iter()
            .map(|r| Ok((request_of(c, &r)?, r)))
            .collect::<Result<Vec<_>, db::DbError>>()
    })
    .await?;
    let (rows, more) = pagination::split(rows, limit);
    let next_cursor = more
        .then(|| {
            rows.last()
                .map(|(_, r)| pagination::encode(Kind::Approvals, &r.id.to_string()))
        })
        .flatten();
    Ok(Json(ApprovalPage {
        items: rows
            .into_iter()
            .map(|(req, r)| ApprovalView::of(r, req))
            .collect(),
        next_cursor,
    }))
}

/// One approval: requester, approver, times, comment, matched rules and the request.
#[utoipa::path(
    get, path = "/api/haproxy/approvals/{id}", tag = "approvals",
    params(("id" = i64, Path, description = "Approval id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The approval", body = ApprovalView),
        (status = 400, description = "Bad id", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such approval", body = ErrorBody),
    )
)]
pub async fn get_approval(
    State(st): State<ApiState>,
    _auth: Auth<Viewer>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<ApprovalView>, ApiError> {
    let found = db::run(&st.pool, move |c| {
        let Some(r) = approvals::get(c, id)? else {
            return Ok(None);
        };
        Ok(Some((request_of(c, &r)?, r)))
    })
    .await?;
    let (req, row) =
        found.ok_or_else(|| ApiError::not_found(format!("no approval with id {id}")))?;
    Ok(Json(ApprovalView::of(row, req)))
}

/// A decision's comment.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    /// Why (recorded with the decision, at most 2048 bytes).
    pub comment: Option<String>,
}

fn comment(body: DecisionBody) -> Result<Option<String>, ApiError> {
    let Some(c) = body.comment else {
        return Ok(None);
    };
    if c.len() > MAX_COMMENT || c.contains('\0') {
        return Err(ApiError::unprocessable(
            "invalid_comment",
            format!("comment must be at most {MAX_COMMENT} bytes without NUL"),
        ));
    }
    Ok(Some(c))
}

impl From<DecideError> for ApiError {
    fn from(e: DecideError) -> Self {
        match e {
            DecideError::NotFound(_) => ApiError::not_found(e.to_string()),
            DecideError::OwnRequest { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "own_request", e.to_string())
            }
            DecideError::NotPending(row) => ApiError::conflict(
                "not_pending",
                format!(
                    "approval {} is {}{}; only a pending approval can be decided",
                    row.id,
                    row.status,
                    match (&row.decided_by, row.decided_at) {
                        (Some(by), Some(at)) => format!(" (by {by} at {})", at.to_rfc3339()),
                        (None, Some(at)) => format!(" (at {})", at.to_rfc3339()),
                        _ => String::new(),
                    }
                ),
            ),
            DecideError::Db(e) => e.into(),
            DecideError::Publish(e) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "broker_unavailable",
                format!(
                    "the decision is recorded, but RabbitMQ did not take its messages ({e}); \
                     the sweeper publishes the request's command again"
                ),
            ),
        }
    }
}

async fn decide(
    st: &ApiState,
    id: i64,
    decision: Decision,
    actor: &str,
    body: DecisionBody,
) -> Result<Json<ApprovalView>, ApiError> {
    let comment = comment(body)?;
    let service = Approvals {
        pool: &st.pool,
        publisher: &st.publisher,
        topology: &st.topology,
    };
    let row = service.decide(id, decision, actor, comment).await?;
    let req = {
        let r = row.clone();
        db::run(&st.pool, move |c| request_of(c, &r)).await?
    };
    Ok(Json(ApprovalView::of(row, req)))
}

/// Approve a held request: it runs now, under its original transaction id.
#[utoipa::path(
    post, path = "/api/haproxy/approvals/{id}/approve", tag = "approvals",
    params(("id" = i64, Path, description = "Approval id")),
    request_body(content = DecisionBody, description = "`{\"comment\": \"…\"}` (the comment may be left out: `{}`)"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Approved; the request's command is published", body = ApprovalView),
        (status = 400, description = "Malformed JSON or bad id", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 403, description = "Role below approver, or the caller asked for the request (`own_request`)", body = ErrorBody),
        (status = 404, description = "No such approval", body = ErrorBody),
        (status = 409, description = "Decided already or expired (`not_pending`, with its state)", body = ErrorBody),
        (status = 422, description = "Comment too long", body = ErrorBody),
    )
)]
pub async fn approve(
    State(st): State<ApiState>,
    Auth(caller, _): Auth<Approver>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<DecisionBody>,
) -> Result<Json<ApprovalView>, ApiError> {
    decide(&st, id, Decision::Approve, &caller.actor, body).await
}

/// Reject a held request: it ends `rejected` and nothing reaches HAProxy.
#[utoipa::path(
    post, path = "/api/haproxy/approvals/{id}/reject", tag = "approvals",
    params(("id" = i64, Path, description = "Approval id")),
    request_body(content = DecisionBody, description = "`{\"comment\": \"why\"}`"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Rejected; the request ended", body = ApprovalView),
        (status = 400, description = "Malformed JSON or bad id", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 403, description = "Role below approver, or the caller asked for the request (`own_request`)", body = ErrorBody),
        (status = 404, description = "No such approval", body = ErrorBody),
        (status = 409, description = "Decided already or expired (`not_pending`, with its state)", body = ErrorBody),
        (status = 422, description = "Comment too long", body = ErrorBody),
    )
)]
pub async fn reject(
    State(st): State<ApiState>,
    Auth(caller, _): Auth<Approver>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<DecisionBody>,
) -> Result<Json<ApprovalView>, ApiError> {
    decide(&st, id, Decision::Reject, &caller.actor, body).await
}
