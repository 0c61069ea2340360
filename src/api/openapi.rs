//! The OpenAPI 3 document, generated from the handlers' annotations and
//! committed as `schemas/api.openapi.json` (a test keeps the two equal).

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::{
    ApiState, actions, approvals, batches, health, instances, metrics, rollouts, servers, settings,
    stream, webhooks,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "haproxy-control API",
        description = "HAProxy fleet control for AC: instances, backends and servers with live state, \
                       actions on one server or many, their progress and history, node settings. \
                       Authenticate with `Authorization: Bearer <token>`; roles viewer < operator < approver < admin. \
                       Errors answer `{\"error\": {\"code\", \"message\"}}`.",
        license(name = "MIT")
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth),
    tags(
        (name = "instances", description = "HAProxy instances, their backends, forced syncs"),
        (name = "servers", description = "Servers of a backend and their history"),
        (name = "actions", description = "Changing one server's state"),
        (name = "batches", description = "One action for many servers"),
        (name = "settings", description = "Making an AC server an HAProxy node"),
        (name = "rollouts", description = "Rolling updates: drain, update, health gate, ready, in waves"),
        (name = "approvals", description = "Four eyes: the policy of which requests wait for a second person, and deciding them"),
        (name = "events", description = "Live events of haproxy.events as Server-Sent Events, filtered by role"),
        (name = "webhooks", description = "Signed event deliveries to configured endpoints (Standard Webhooks), their deliveries and redelivery; admin only"),
        (name = "operations", description = "Health, readiness, metrics, this document")
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Every route with its OpenAPI description.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(instances::list_instances))
        .routes(routes!(instances::list_backends))
        .routes(routes!(instances::sync_instance))
        .routes(routes!(servers::list_servers))
        .routes(routes!(servers::history))
        .routes(routes!(actions::post_action))
        .routes(routes!(actions::get_action))
        .routes(routes!(batches::post_batch))
        .routes(routes!(batches::get_batch))
        .routes(routes!(settings::put_settings))
        .routes(routes!(rollouts::post_rollout, rollouts::list_rollouts))
        .routes(routes!(rollouts::get_rollout))
        .routes(routes!(rollouts::pause_rollout))
        .routes(routes!(rollouts::resume_rollout))
        .routes(routes!(rollouts::abort_rollout))
        .routes(routes!(rollouts::continue_server))
        .routes(routes!(rollouts::skip_server))
        .routes(routes!(approvals::get_policy, approvals::put_policy))
        .routes(routes!(approvals::list_approvals))
        .routes(routes!(approvals::get_approval))
        .routes(routes!(approvals::approve))
        .routes(routes!(approvals::reject))
        .routes(routes!(stream::events_stream))
        .routes(routes!(super::auth::me))
        .routes(routes!(webhooks::create_webhook, webhooks::list_webhooks))
        .routes(routes!(
            webhooks::get_webhook,
            webhooks::patch_webhook,
            webhooks::delete_webhook
        ))
        .routes(routes!(webhooks::rotate_secret))
        .routes(routes!(webhooks::list_deliveries))
        .routes(routes!(webhooks::redeliver))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(metrics::metrics))
        .routes(routes!(health::openapi_json))
}

/// The OpenAPI document.
pub fn document() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

/// The document as the API serves it and as `schemas/api.openapi.json` holds it.
///
/// # Errors
/// When it cannot be serialised (it always can).
pub fn pretty_json() -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(&document()).map(|mut s| {
        s.push('\n');
        s
    })
}
