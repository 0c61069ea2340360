//! `PUT /api/servers/{id}/haproxy`: makes an AC server an HAProxy node (or
//! not) and creates or updates its instance. The agent token is stored as a
//! reference (`token:<value>`, or a `file:` inside the configured token
//! directory; see [`token_ref::from_api`]) and never answered.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ApiState;
use super::auth::{Admin, Auth};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath};
use super::instances::InstanceView;
use crate::db::api_queries::{self, InstanceSettings, SettingsOutcome};
use crate::db::{self};
use crate::fagent::token_ref;
use crate::queue::message::parse_instance_name;

/// Longest agent token or token reference accepted.
const MAX_TOKEN_LEN: usize = 4096;

/// HAProxy settings of an AC server.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsBody {
    /// `false` marks the server as no HAProxy node and deactivates its instance.
    pub is_haproxy_node: bool,
    /// The instance's unique name (`[A-Za-z0-9._:-]`, at most 128). Required for a node.
    pub name: Option<String>,
    /// Base URL of the node's FAgent, `http://` or `https://`. Required to create.
    pub fagent_url: Option<String>,
    /// The FAgent's bearer token, or `file:/path` of a file inside the configured token
    /// directory (`fagent.token_dir`), read by the workers. `env:` references and other
    /// files are refused (422); they can be set only from the CLI on the host.
    /// Required to create, and to change `fagent_url` (the stored token is never sent to a
    /// new address); kept when absent. Never shown again.
    pub fagent_token: Option<String>,
    /// Whether commands and syncs go to it (default: true for a new instance, unchanged otherwise).
    pub is_active: Option<bool>,
    /// Whether drains and maints the module applied are re-applied when a reload of HAProxy
    /// reset them (actor `system:reload-restore`). Default false (HAProxy wins), unchanged
    /// when absent. See docs/haproxy-reloads.md.
    pub restore_after_reload: Option<bool>,
}

/// An AC server's HAProxy settings as saved.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SettingsView {
    pub server_id: i64,
    pub is_haproxy_node: bool,
    /// Its instance (null when it never was a node).
    pub instance: Option<InstanceView>,
}

fn invalid(field: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::unprocessable("invalid_field", format!("{field}: {message}"))
}

fn validate(
    body: SettingsBody,
    token_dir: Option<&std::path::Path>,
) -> Result<InstanceSettings, ApiError> {
    let name = body
        .name
        .as_deref()
        .map(|n| {
            parse_instance_name(n).map_err(|e| {
                ApiError::unprocessable("invalid_name", e.0.replace("target.instance", "name"))
            })
        })
        .transpose()?;
    let fagent_url = body.fagent_url.as_deref().map(url).transpose()?;
    let fagent_token_ref = body
        .fagent_token
        .as_deref()
        .map(|t| stored_token_ref(t, token_dir))
        .transpose()?;
    Ok(InstanceSettings {
        is_haproxy_node: body.is_haproxy_node,
        name,
        fagent_url,
        fagent_token_ref,
        is_active: body.is_active,
        restore_after_reload: body.restore_after_reload,
    })
}

fn url(raw: &str) -> Result<String, ApiError> {
    let parsed = reqwest::Url::parse(raw.trim()).map_err(|e| invalid("fagent_url", e))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(invalid(
            "fagent_url",
            "must be an http:// or https:// URL with a host",
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            "fagent_url",
            "must not carry credentials; give the token as fagent_token",
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid("fagent_url", "must not have a query or fragment"));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
}

fn stored_token_ref(raw: &str, token_dir: Option<&std::path::Path>) -> Result<String, ApiError> {
    let raw = raw.trim();
    if raw.is_empty()
        || raw.len() > MAX_TOKEN_LEN
        || raw.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid(
            "fagent_token",
            format!("must be 1 to {MAX_TOKEN_LEN} characters without spaces"),
        ));
    }
    token_ref::from_api(raw, token_dir).map_err(|e| invalid("fagent_token", e))
}

/// Create or update an AC server's HAProxy instance.
#[utoipa::path(
    put, path = "/api/servers/{id}/haproxy", tag = "settings",
    params(("id" = i64, Path, description = "AC server id (servers.id)")),
    request_body = SettingsBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Updated", body = SettingsView),
        (status = 201, description = "Instance created", body = SettingsView),
        (status = 400, description = "Malformed JSON or bad id", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 403, description = "Role below admin", body = ErrorBody),
        (status = 404, description = "No such AC server", body = ErrorBody),
        (status = 409, description = "Another server's instance has that name", body = ErrorBody),
        (status = 422, description = "Invalid or missing field, or fagent_url changed without fagent_token", body = ErrorBody),
    )
)]
pub async fn put_settings(
    State(st): State<ApiState>,
    Auth(caller, _): Auth<Admin>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<SettingsBody>,
) -> Result<(StatusCode, Json<SettingsView>), ApiError> {
    let settings = validate(body, st.token_dir.as_deref())?;
    let node = settings.is_haproxy_node;
    let outcome = db::run(&st.pool, move |c| {
        api_queries::put_instance_settings(c, id, &settings)
    })
    .await?;
    match outcome {
        SettingsOutcome::NoServer => Err(ApiError::not_found(format!("no server with id {id}"))),
        SettingsOutcome::NameTaken => Err(ApiError::conflict(
            "name_taken",
            "another server's HAProxy instance has that name",
        )),
        SettingsOutcome::UrlWithoutToken => Err(ApiError::unprocessable(
            "token_required",
            "fagent_token is required to change fagent_url: the stored token is never sent to \
             a new address",
        )),
        SettingsOutcome::Missing(field) => Err(ApiError::unprocessable(
            "missing_field",
            format!("{field} is required to make server {id} an HAProxy node"),
        )),
        SettingsOutcome::Saved { instance, created } => {
            tracing::info!(
                server_id = id, is_haproxy_node = node, created,
                instance = instance.as_ref().map(|i| i.name.as_str()).unwrap_or(""),
                actor = %caller.actor, "HAProxy settings saved"
            );
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((
                status,
                Json(SettingsView {
                    server_id: id,
                    is_haproxy_node: node,
                    instance: instance.map(|i| InstanceView::from(*i)),
                }),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_become_references_and_urls_are_checked() {
        assert_eq!(
            stored_token_ref("s3cret", None).ok().as_deref(),
            Some("token:s3cret")
        );
        for bad in ["", "a b", "env:", "x\ny", "env:LB_TOKEN", "file:/etc/t"] {
            assert!(stored_token_ref(bad, None).is_err(), "{bad:?}");
        }
        assert_eq!(
            url("http://10.0.0.5:9100/").ok().as_deref(),
            Some("http://10.0.0.5:9100")
        );
        for bad in [
            "ftp://x",
            "http://u:p@x",
            "x",
            "http://x/?a=1",
            "unix:/tmp/s",
        ] {
            assert!(url(bad).is_err(), "{bad}");
        }
    }
}
