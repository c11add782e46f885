//! `/metrics` (Prometheus text 0.0.4 by default, OpenMetrics when the scraper asks for it) and
//! `/metrics/json` (the same content in prom-client's JSON shape).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::response::IntoResponse;
use std::collections::BTreeMap;

use serde_json::Value;
use utoipa::ToSchema;

use super::AppState;
use super::error::Json;

const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric in the Prometheus text format, or OpenMetrics when the scraper accepts it.
#[utoipa::path(
    get, path = "/metrics", tag = "metrics", operation_id = "metrics", security(()),
    responses((status = 200, description = "The metrics", content(
        (String = "text/plain"),
        (String = "application/openmetrics-text"),
    ))),
)]
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

/// One metric family in prom-client's JSON shape, as `Metrics::render_json` builds it.
#[derive(ToSchema)]
#[schema(description = "One metric family in prom-client's JSON shape")]
#[allow(dead_code)]
struct MetricFamily {
    name: String,
    help: String,
    /// `counter`, `gauge`, `histogram`, `summary`, `untyped`, ...
    #[schema(rename = "type")]
    kind: String,
    values: Vec<MetricSample>,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct MetricSample {
    labels: BTreeMap<String, String>,
    /// A number, or `"+Inf"`, `"-Inf"`, `"NaN"`.
    #[schema(schema_with = sample_value)]
    value: Value,
    /// The sample's own name where it differs from the family's (`_bucket`, `_sum`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    metric_name: Option<String>,
}

fn sample_value() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Number))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["+Inf", "-Inf", "NaN"])),
        )
        .build()
        .into()
}

/// The same metrics as `/metrics`, in prom-client's JSON shape.
#[utoipa::path(
    get, path = "/metrics/json", tag = "metrics", operation_id = "metricsJson", security(()),
    responses((status = 200, description = "The metric families", body = Vec<MetricFamily>)),
)]
pub async fn json(State(state): State<AppState>) -> Json<Value> {
    Json(state.runtime.metrics().render_json())
}
