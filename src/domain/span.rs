//! The `span` event: one finished OpenTelemetry span an agent exported, as its execution's
//! stream carries it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::EpochMs;

/// The data of a `span` event. Ids are lowercase hex as in W3C trace context (32 digits for
/// a trace, 16 for a span); attributes keep their OpenTelemetry names (`gen_ai.request.model`),
/// with string values longer than the configured cap cut and marked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpanData {
    pub trace_id: String,
    pub span_id: String,
    /// The parent span; a span without one is attached to the execution's root span.
    pub parent_span_id: Option<String>,
    pub name: String,
    pub kind: SpanKind,
    /// Milliseconds since the Unix epoch.
    pub start_time_ms: EpochMs,
    pub end_time_ms: EpochMs,
    pub status: SpanStatus,
    #[schema(value_type = Object)]
    pub attributes: Map<String, Value>,
}

/// OpenTelemetry's span kinds, lowercase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SpanKind {
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

/// A span's status as OpenTelemetry sets it: `UNSET`, `OK` or `ERROR`, with a message for errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SpanStatus {
    pub code: SpanStatusCode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum SpanStatusCode {
    Unset,
    Ok,
    Error,
}
