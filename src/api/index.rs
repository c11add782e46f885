//! `GET /`: where things are. A browser gets the console; an API client (`curl`, anything that
//! does not ask for HTML) gets the entry points as JSON. Like the probes it needs no key and
//! tells nothing about the server's state, only its fixed routes.

use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::console;
use super::error::Json;

/// The server's entry points.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always `agentnexus`.
    #[schema(pattern = "^agentnexus$")]
    service: &'static str,
    /// The REST API: every route under this prefix.
    #[schema(pattern = "^/api$")]
    api: &'static str,
    /// The OpenAPI document of the whole HTTP surface.
    #[schema(pattern = "^/api/openapi\\.json$")]
    openapi: &'static str,
    /// Liveness probe (also `/health/live`).
    #[schema(pattern = "^/health$")]
    health: &'static str,
    /// Readiness probe.
    #[schema(pattern = "^/health/ready$")]
    ready: &'static str,
    /// Prometheus metrics (also `/metrics/json`).
    #[schema(pattern = "^/metrics$")]
    metrics: &'static str,
    /// Live event streams over WebSocket.
    #[schema(pattern = "^/ws$")]
    websocket: &'static str,
}

const INDEX: Index = Index {
    service: "agentnexus",
    api: "/api",
    openapi: "/api/openapi.json",
    health: "/health",
    ready: "/health/ready",
    metrics: "/metrics",
    websocket: "/ws",
};

/// The server's entry points; the console for a browser.
#[utoipa::path(
    get, path = "/", tag = "meta", operation_id = "index", security(()),
    responses((status = 200, description = "Where the API, its document, the probes, the metrics and the WebSocket endpoint are; the console's page for a request that accepts `text/html`", content(
        (Index = "application/json"),
        (String = "text/html"),
    ))),
)]
pub async fn index(headers: HeaderMap) -> Response {
    if console::wants_page(&headers) {
        return console::page(&headers);
    }
    Json(INDEX).into_response()
}
