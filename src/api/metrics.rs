//! `/metrics` (Prometheus text 0.0.4 by default, OpenMetrics when the scraper asks for it) and
//! `/metrics/json` (the same content in prom-client's JSON shape).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::response::IntoResponse;
use serde_json::Value;

use super::AppState;
use super::error::Json;

const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn text(State(state): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let wants_openmetrics = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let metrics = state.runtime.metrics();
    if wants_openmetrics {
        ([(CONTENT_TYPE, OPENMETRICS)], metrics.render_openmetrics())
    } else {
        ([(CONTENT_TYPE, TEXT)], metrics.render_text())
    }
}

pub async fn json(State(state): State<AppState>) -> Json<Value> {
    Json(state.runtime.metrics().render_json())
}
