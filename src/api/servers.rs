//! `/api/haproxy/backends/{id}/servers` and `/api/haproxy/servers/{id}/history`:
//! servers with their live state and application, and who changed what when.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::ApiState;
use super::auth::{Auth, Viewer};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiPath, ApiQuery};
use super::pagination::{self, Kind};
use crate::db::api_queries::{self, HistoryListRow, HistoryPage, ServerFilter, ServerListRow};
use crate::db::{self};
use crate::domain::{AdminState, OpState};

/// An id and a name.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Named {
    pub id: i64,
    pub name: String,
}

/// A live server with HAProxy's view of it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ServerView {
    pub id: i64,
    pub name: String,
    pub backend_id: i64,
    pub address: String,
    pub port: Option<i32>,
    /// `ready`, `drain` or `maint`.
    pub admin_state: String,
    /// `up`, `down`, `no_check`, `stopping` or `starting`.
    pub op_state: String,
    pub weight: i32,
    pub current_sessions: i64,
    pub check_status: Option<String>,
    /// The AC application it is linked to.
    pub application: Option<Named>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub state_changed_at: Option<DateTime<Utc>>,
}

fn server_view(backend_id: i64, r: ServerListRow) -> ServerView {
    ServerView {
        id: r.id,
        name: r.server_name,
        backend_id,
        address: r.address,
        port: r.port,
        admin_state: r.admin_state.to_string(),
        op_state: r.op_state.to_string(),
        weight: r.weight,
        current_sessions: r.current_sessions,
        check_status: r.check_status,
        application: r
            .application_id
            .zip(r.application_name)
            .map(|(id, name)| Named { id, name }),
        last_seen_at: r.last_seen_at,
        state_changed_at: r.state_changed_at,
    }
}

/// Filters and page of the servers listing.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ServersQuery {
    /// Items per page, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only servers in this admin state: `ready`, `drain` or `maint`.
    pub admin_state: Option<String>,
    /// Only servers in this operational state: `up`, `down`, `no_check`, `stopping`, `starting`.
    pub op_state: Option<String>,
    /// Only servers linked to this AC application.
    #[param(value_type = Option<i64>)]
    pub application_id: Option<String>,
    /// `false`: only servers linked to no application; `true`: only linked ones.
    #[param(value_type = Option<bool>)]
    pub linked: Option<String>,
    /// Only servers whose name or address contains this text, in any case
    /// (at most 200 characters).
    pub q: Option<String>,
}

/// Longest `q` of the servers listing.
const MAX_SEARCH: usize = 200;

impl ServersQuery {
    fn filter(&self) -> Result<ServerFilter, ApiError> {
        let admin_state = self
            .admin_state
            .as_deref()
            .map(|s| {
                s.parse::<AdminState>().map_err(|_| {
                    ApiError::unprocessable(
                        "invalid_filter",
                        format!("admin_state {s:?} is not one of ready, drain, maint"),
                    )
                })
            })
            .transpose()?;
        let op_state = self
            .op_state
            .as_deref()
            .map(|s| {
                s.parse::<OpState>().map_err(|_| {
                    ApiError::unprocessable(
                        "invalid_filter",
                        format!(
                            "op_state {s:?} is not one of up, down, no_check, stopping, starting"
                        ),
                    )
                })
            })
            .transpose()?;
        let application_id = self
            .application_id
            .as_deref()
            .map(|s| {
                s.parse::<i64>().map_err(|_| {
                    ApiError::unprocessable(
                        "invalid_filter",
                        format!("application_id {s:?} is not an integer"),
                    )
                })
            })
            .transpose()?;
        let linked = self
            .linked
            .as_deref()
            .map(|s| match s {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(ApiError::unprocessable(
                    "invalid_filter",
                    format!("linked {s:?} is not true or false"),
                )),
            })
            .transpose()?;
        let search = match self.q.as_deref().map(str::trim) {
            Some(q) if q.chars().count() > MAX_SEARCH || q.contains('\0') => {
                return Err(ApiError::unprocessable(
                    "invalid_filter",
                    format!("q must be at most {MAX_SEARCH} characters, without NUL"),
                ));
            }
            Some("") | None => None,
            Some(q) => Some(q.to_owned()),
        };
        Ok(ServerFilter {
            admin_state,
            op_state,
            application_id,
            linked,
            search,
        })
    }
}

/// A page of servers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ServerPage {
    pub items: Vec<ServerView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// List a backend's live servers, by id.
#[utoipa::path(
    get, path = "/api/haproxy/backends/{id}/servers", tag = "servers",
    params(("id" = i64, Path, description = "Backend id"), ServersQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of servers with state, weight, sessions and application", body = ServerPage),
        (status = 400, description = "Bad id, cursor or query", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such backend", body = ErrorBody),
        (status = 422, description = "Bad limit or filter value (`q` over 200 characters)", body = ErrorBody),
    )
)]
pub async fn list_servers(
    State(st): State<ApiState>,
    _auth: Auth<Viewer>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<ServersQuery>,
) -> Result<Json<ServerPage>, ApiError> {
    let limit = pagination::limit(q.limit.as_deref())?;
    let after = pagination::decode_id(Kind::Servers, q.cursor.as_deref())?;
    let filter = q.filter()?;
    let rows = db::run(&st.pool, move |c| {
        if api_queries::backend(c, id)?.is_none() {
            return Ok(None);
        }
        api_queries::servers_page(c, id, &filter, after, limit + 1).map(Some)
    })
    .await?
    .ok_or_else(|| ApiError::not_found(format!("no backend with id {id}")))?;
    let (rows, more) = pagination::split(rows, limit);
    let next_cursor = more
        .then(|| {
            rows.last()
                .map(|r| pagination::encode(Kind::Servers, &r.id.to_string()))
        })
        .flatten();
    Ok(Json(ServerPage {
        items: rows.into_iter().map(|r| server_view(id, r)).collect(),
        next_cursor,
    }))
}

/// Admin and operational state; either may be null for the first record of a server.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StateView {
    pub admin_state: Option<String>,
    pub op_state: Option<String>,
}

/// One change of a server's state.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HistoryView {
    pub id: i64,
    pub server_id: i64,
    pub previous: StateView,
    pub current: StateView,
    /// `action` (asked through a command) or `sync` (seen in HAProxy).
    pub source: String,
    /// Who: the actor of the action, or `haproxy:<instance>` for changes seen by a sync.
    pub actor: String,
    pub action_id: Option<i64>,
    /// The transaction id of the action that made the change.
    pub transaction_id: Option<Uuid>,
    /// The reason given with that action.
    pub reason: Option<String>,
    pub changed_at: DateTime<Utc>,
}

fn history_view(server_id: i64, r: HistoryListRow) -> HistoryView {
    HistoryView {
        id: r.id,
        server_id,
        previous: StateView {
            admin_state: r.previous_admin_state.map(|s| s.to_string()),
            op_state: r.previous_op_state.map(|s| s.to_string()),
        },
        current: StateView {
            admin_state: Some(r.new_admin_state.to_string()),
            op_state: Some(r.new_op_state.to_string()),
        },
        source: r.source.as_str().to_owned(),
        actor: r.actor,
        action_id: r.action_id,
        transaction_id: r.transaction_id,
        reason: r.reason,
        changed_at: r.changed_at,
    }
}

/// Time range and page of a server's history.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Items per page, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only changes at or after this time (RFC 3339).
    #[param(value_type = Option<DateTime<Utc>>)]
    pub since: Option<String>,
    /// Only changes at or before this time (RFC 3339).
    #[param(value_type = Option<DateTime<Utc>>)]
    pub until: Option<String>,
}

fn time(name: &str, raw: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    raw.map(|s| {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                ApiError::unprocessable(
                    "invalid_filter",
                    format!("{name} {s:?} is not an RFC 3339 time (e.g. 2026-11-28T05:00:00Z)"),
                )
            })
    })
    .transpose()
}

/// A page of history.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HistoryPageView {
    pub items: Vec<HistoryView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A server's state changes, newest first.
#[utoipa::path(
    get, path = "/api/haproxy/servers/{id}/history", tag = "servers",
    params(("id" = i64, Path, description = "Server id"), HistoryQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of state changes, newest first", body = HistoryPageView),
        (status = 400, description = "Bad id, cursor or query", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such server", body = ErrorBody),
        (status = 422, description = "Bad limit, since or until", body = ErrorBody),
    )
)]
pub async fn history(
    State(st): State<ApiState>,
    _auth: Auth<Viewer>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<HistoryPageView>, ApiError> {
    let page = HistoryPage {
        limit: pagination::limit(q.limit.as_deref())?,
        before: pagination::decode_time_id(q.cursor.as_deref())?,
        since: time("since", q.since.as_deref())?,
        until: time("until", q.until.as_deref())?,
    };
    let limit = page.limit;
    let rows = db::run(&st.pool, move |c| {
        if !api_queries::server_exists(c, id)? {
            return Ok(None);
        }
        let page = HistoryPage {
            limit: limit + 1,
            ..page
        };
        api_queries::history_page(c, id, &page).map(Some)
    })
    .await?
    .ok_or_else(|| ApiError::not_found(format!("no server with id {id}")))?;
    let (rows, more) = pagination::split(rows, limit);
    let next_cursor = more
        .then(|| {
            rows.last()
                .map(|r| pagination::encode_time_id(r.changed_at, r.id))
        })
        .flatten();
    Ok(Json(HistoryPageView {
        items: rows.into_iter().map(|r| history_view(id, r)).collect(),
        next_cursor,
    }))
}
