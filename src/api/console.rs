//! The live web console: one HTML page for every console location (`/` for a browser,
//! `/executions/{id}`, `/agents`, `/status`) and its assets under `/assets/`, all embedded in the
//! binary (no build step, nothing fetched from anywhere else). The page is a thin view over the
//! REST API and `/ws`; everything it knows, it learns from them with the user's key.
//!
//! The page is served with a strict Content-Security-Policy: scripts and styles from this server
//! only, no inline script, connections to this server only, and Trusted Types required, so the
//! browser itself refuses any attempt to turn a string into HTML.

use std::sync::OnceLock;

use axum::Router;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, HeaderName, IF_NONE_MATCH,
    REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::{ApiError, ErrorBody, ErrorCode, Path};

/// The policy of the page: nothing but this server's own scripts, styles and connections
/// (`'self'` covers `ws:` to the same host, CSP Level 3), no plugins, no frames, no `<base>`,
/// and Trusted Types with no policy: `innerHTML = string` throws.
const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'; require-trusted-types-for 'script'; \
     trusted-types 'none'";

/// One embedded file.
struct Asset {
    /// Its name under `/assets/`.
    name: &'static str,
    body: &'static [u8],
}

/// Every file under `/assets/`: the page's modules and its stylesheet (all our own: nothing
/// third-party is embedded). A test checks that this list and the `console` directory agree.
macro_rules! assets {
    ($($name:literal),* $(,)?) => {
        &[$(Asset { name: $name, body: include_bytes!(concat!("console/", $name)) }),*]
    };
}

const ASSETS: &[Asset] = assets![
    "console.css",
    "app.js",
    "api.js",
    "dom.js",
    "stream.js",
    "ansi.js",
    "log-view.js",
    "chart.js",
    "spans.js",
    "pages-executions.js",
    "pages-execution.js",
    "pages-agents.js",
    "pages-status.js",
];

const PAGE: &[u8] = include_bytes!("console/index.html");

/// The names of the embedded assets (under `/assets/`), for the tests that compare them with
/// the directory and weigh them.
pub fn asset_names() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|a| a.name)
}

/// The console's routes (the negotiated `/` is in `index`).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/executions/{id}", get(execution_page))
        .route("/agents", get(agents_page))
        .route("/status", get(status_page))
        .route("/assets/{name}", get(asset))
}

/// The console page itself, whatever location it shows (its script reads the location).
pub fn page(headers: &HeaderMap) -> Response {
    static TAG: OnceLock<HeaderValue> = OnceLock::new();
    let tag = TAG.get_or_init(|| entity_tag(PAGE));
    let mut response = cached(headers, tag, "text/html; charset=utf-8", PAGE);
    let h = response.headers_mut();
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY_VALUE),
    );
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// The console's page of one execution.
#[utoipa::path(
    get, path = "/executions/{id}", tag = "console", operation_id = "consoleExecution", security(()),
    params(("id" = String, Path, description = "The execution's id (the page says if there is none)")),
    responses((status = 200, description = "The console page, which shows this execution", content_type = "text/html", body = String)),
)]
pub async fn execution_page(Path(_id): Path<String>, headers: HeaderMap) -> Response {
    page(&headers)
}

/// The console's list of agents, with a form to run one.
#[utoipa::path(
    get, path = "/agents", tag = "console", operation_id = "consoleAgents", security(()),
    responses((status = 200, description = "The console page, which lists the agents", content_type = "text/html", body = String)),
)]
pub async fn agents_page(headers: HeaderMap) -> Response {
    page(&headers)
}

/// The console's view of readiness and its checks.
#[utoipa::path(
    get, path = "/status", tag = "console", operation_id = "consoleStatus", security(()),
    responses((status = 200, description = "The console page, which shows readiness and its checks", content_type = "text/html", body = String)),
)]
pub async fn status_page(headers: HeaderMap) -> Response {
    page(&headers)
}

/// One of the console's embedded files: its modules and stylesheet.
#[utoipa::path(
    get, path = "/assets/{name}", tag = "console", operation_id = "consoleAsset", security(()),
    params(("name" = String, Path, description = "The file's name", example = "app.js")),
    responses(
        (status = 200, description = "The file: a JavaScript module, the stylesheet (any other file would be plain text)", content(
            (String = "text/javascript"),
            (String = "text/css"),
            (String = "text/plain"),
        )),
        (status = 304, description = "Unchanged since the `ETag` given in `If-None-Match`"),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ),
)]
pub async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    static TAGS: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| ASSETS.iter().map(|a| entity_tag(a.body)).collect());
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such console asset",
        )
        .into_response();
    };
    let mut response = cached(
        &headers,
        &tags[i],
        media_type(ASSETS[i].name),
        ASSETS[i].body,
    );
    response
        .headers_mut()
        .insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// `body` with its entity tag; `304` when the browser already has it. `no-cache` means "check
/// first": an upgraded server never serves a page with a stale module.
fn cached(
    headers: &HeaderMap,
    tag: &HeaderValue,
    media: &'static str,
    body: &'static [u8],
) -> Response {
    let fresh = headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == tag.to_str().unwrap_or_default() || t.trim() == "*");
    let common: [(HeaderName, HeaderValue); 2] = [
        (ETAG, tag.clone()),
        (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        StatusCode::OK,
        common,
        [(CONTENT_TYPE, HeaderValue::from_static(media))],
        body,
    )
        .into_response()
}

/// A strong entity tag: the first 16 bytes of the body's SHA-256, in hex.
fn entity_tag(body: &[u8]) -> HeaderValue {
    let digest = Sha256::digest(body);
    HeaderValue::from_str(&format!("\"{}\"", hex::encode(&digest[..16])))
        .expect("hex is a valid header value")
}

fn media_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        _ => "text/plain; charset=utf-8",
    }
}

/// Whether a request for `/` comes from a browser navigating to it (which asks for HTML first)
/// rather than from an API client (which asks for JSON, or for anything).
pub fn wants_page(headers: &HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| {
            media
                .split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/html"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_in_the_console_directory_is_served_and_nothing_else() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api/console");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name != "index.html")
            .collect();
        on_disk.sort();
        let mut served: Vec<String> = asset_names().map(str::to_owned).collect();
        served.sort();
        assert_eq!(on_disk, served);
    }

    #[test]
    fn the_page_has_no_inline_script_or_style_and_preloads_only_served_modules() {
        let page = std::str::from_utf8(PAGE).unwrap();
        assert!(
            !page.contains("<style"),
            "inline <style> is refused by the CSP"
        );
        assert!(
            !page.contains(" style="),
            "inline style attributes are refused by the CSP"
        );
        for tag in page.split("<script").skip(1) {
            let open = &tag[..tag.find('>').unwrap()];
            assert!(
                open.contains("src=\"/assets/"),
                "inline script: <script{open}>"
            );
        }
        for href in page.split("href=\"/assets/").skip(1) {
            let name = &href[..href.find('"').unwrap()];
            assert!(
                asset_names().any(|a| a == name),
                "{name} is linked but not served"
            );
        }
    }

    #[test]
    fn modules_build_no_markup_from_strings_and_import_only_served_modules() {
        for asset in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            let text = std::str::from_utf8(asset.body).unwrap();
            for sink in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
            ] {
                assert!(!text.contains(sink), "{} uses {sink}", asset.name);
            }
            for import in text.split(" from '").skip(1) {
                let target = &import[..import.find('\'').unwrap()];
                let name = target.strip_prefix("/assets/").unwrap_or_else(|| {
                    panic!("{} imports {target}, not an /assets/ module", asset.name)
                });
                assert!(
                    asset_names().any(|a| a == name),
                    "{} imports unserved {name}",
                    asset.name
                );
            }
        }
    }

    #[test]
    fn browsers_get_the_page_and_api_clients_the_json() {
        let accept = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                axum::http::header::ACCEPT,
                HeaderValue::from_str(v).unwrap(),
            );
            wants_page(&h)
        };
        assert!(accept(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        ));
        assert!(accept("TEXT/HTML"));
        assert!(!accept("*/*"));
        assert!(!accept("application/json"));
        assert!(!wants_page(&HeaderMap::new()));
    }
}
