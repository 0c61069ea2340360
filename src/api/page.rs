//! The operator's page (docs/page.md): `/` and its assets under `/ui/`,
//! embedded in the binary at build time. Plain HTML, CSS and JavaScript
//! modules; no third-party host. No token is needed to load them: every
//! call the page makes is authenticated with the bearer header.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::error::ApiError;

/// Only this origin's scripts, styles, images and connections; no inline
/// script, no framing, no plugins, forms post nowhere.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The assets: name, content type, body.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("page/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("page/api.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("page/app.css"),
    ),
];

const INDEX: &str = include_str!("page/index.html");
const FAVICON: &str = include_str!("page/favicon.svg");

/// `/`, `/index.html`, `/favicon.svg` and `/ui/{asset}`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/favicon.svg", get(favicon))
        .route("/ui/{asset}", get(asset))
}

fn respond(content_type: &'static str, cache: &'static str, body: &'static str) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

/// The page itself is always revalidated (a new binary serves new assets);
/// assets may be kept a short while (they change only with the binary).
const NO_CACHE: &str = "no-cache";
const ASSET_CACHE: &str = "public, max-age=300";

async fn index() -> Response {
    respond("text/html; charset=utf-8", NO_CACHE, INDEX)
}

async fn favicon() -> Response {
    respond("image/svg+xml", ASSET_CACHE, FAVICON)
}

async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, ty, body)| respond(ty, ASSET_CACHE, body))
        .ok_or_else(|| ApiError::not_found(format!("no such asset: /ui/{name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_no_inline_script_nor_foreign_host() {
        assert!(INDEX.contains(r#"<script type="module" src="/ui/app.js">"#));
        assert_eq!(INDEX.matches("<script").count(), 1, "only the module");
        for (name, _, body) in ASSETS
            .iter()
            .map(|a| (a.0, a.1, a.2))
            .chain([("index", "", INDEX)])
        {
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{name} names a host"
            );
            assert!(
                !body.contains(" onclick=") && !body.contains("javascript:"),
                "{name}"
            );
        }
    }
}
