//! The events of an execution's stream: their kinds, the `data` of each in the spec's JSON
//! shapes, and the `Event` as stored and delivered.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::{EpochMs, ExecError, SpanData, Status, Usage};

/// Which output stream of the agent a log line came from. `System` lines are the runtime's own
/// remarks inside the stream (e.g. the log budget marker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
    System,
    /// Log records the agent exported over OTLP.
    Otlp,
}

/// The kinds of event in an execution's stream. The set is open: new kinds are added here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Log,
    Status,
    Metrics,
    Span,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Log => "log",
            EventKind::Status => "status",
            EventKind::Metrics => "metrics",
            EventKind::Span => "span",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        match s {
            "log" => Some(EventKind::Log),
            "status" => Some(EventKind::Status),
            "metrics" => Some(EventKind::Metrics),
            "span" => Some(EventKind::Span),
            _ => None,
        }
    }
}

/// The `data` of each event kind, in the spec's JSON shapes (extended additively).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum EventData {
    Log(LogData),
    Status(StatusData),
    Metrics(MetricsData),
    Span(SpanData),
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogData {
    pub log: String,
    pub stream: LogStream,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusData {
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Value)]
    pub output: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ExecError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// On the final status: the execution's usage totals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsData {
    /// Resident memory of the whole process tree (or container), bytes.
    pub memory_usage: u64,
    /// CPU use since the previous sample, percent of one core.
    pub cpu_usage: f64,
    /// Milliseconds since the execution started.
    pub duration: u64,
}

impl EventData {
    pub fn kind(&self) -> EventKind {
        match self {
            EventData::Log(_) => EventKind::Log,
            EventData::Status(_) => EventKind::Status,
            EventData::Metrics(_) => EventKind::Metrics,
            EventData::Span(_) => EventKind::Span,
        }
    }
}

/// One event of an execution's stream, as stored and delivered. `data` is kept as JSON text so
/// that it is encoded once when written and copied verbatim to every reader.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(
    description = "One event of an execution's stream; `seq` counts 1, 2, 3, ... without gaps"
)]
pub struct Event {
    #[schema(minimum = 1)]
    pub seq: u64,
    #[serde(rename = "type")]
    pub kind: EventKind,
    #[schema(value_type = EventData)]
    pub data: Box<RawValue>,
    /// Milliseconds since the Unix epoch.
    #[schema(value_type = i64)]
    pub timestamp: EpochMs,
}

impl Event {
    /// The status this event announces, if it is a status event.
    pub fn status(&self) -> Option<Status> {
        if self.kind != EventKind::Status {
            return None;
        }
        serde_json::from_str::<StatusData>(self.data.get())
            .ok()
            .map(|d| d.status)
    }
}
