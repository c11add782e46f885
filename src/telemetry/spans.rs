//! OTLP spans made into `span` events: ids as lowercase hex, times in milliseconds since the
//! epoch, attributes keyed by their OpenTelemetry names with string values past the cap cut at
//! a character boundary and marked. A span without a parent is attached to the execution's
//! root span, so every span of an execution hangs from one tree.

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::{Span, span, status};
use serde_json::{Map, Value};

use super::otlp::{LogsRequest, TracesRequest};
use crate::domain::{EpochMs, SpanData, SpanKind, SpanStatus, SpanStatusCode};

/// The spans of one export request, and how many attribute values were cut.
#[derive(Debug, Default)]
pub struct Converted {
    pub spans: Vec<SpanData>,
    pub truncated_attributes: u64,
}

/// The spans of `request` as `span` event data, in the order they came. Spans without a parent
/// get `root_span_id` as theirs.
pub fn spans(request: TracesRequest, root_span_id: &str, max_attribute_bytes: usize) -> Converted {
    let mut out = Converted::default();
    let mut cut = Cutter {
        max: max_attribute_bytes,
        truncated: 0,
    };
    for resource in request.resource_spans {
        for scope in resource.scope_spans {
            for span in scope.spans {
                out.spans.push(span_data(span, root_span_id, &mut cut));
            }
        }
    }
    out.truncated_attributes = cut.truncated;
    out
}

fn span_data(span: Span, root_span_id: &str, cut: &mut Cutter) -> SpanData {
    let parent = if span.parent_span_id.iter().all(|&b| b == 0) {
        root_span_id.to_owned()
    } else {
        hex::encode(&span.parent_span_id)
    };
    let status = span.status.unwrap_or_default();
    SpanData {
        trace_id: hex::encode(&span.trace_id),
        span_id: hex::encode(&span.span_id),
        parent_span_id: Some(parent),
        name: cut.text(span.name),
        kind: kind(span.kind),
        start_time_ms: nanos_to_ms(span.start_time_unix_nano),
        end_time_ms: nanos_to_ms(span.end_time_unix_nano),
        status: SpanStatus {
            code: match status::StatusCode::try_from(status.code) {
                Ok(status::StatusCode::Ok) => SpanStatusCode::Ok,
                Ok(status::StatusCode::Error) => SpanStatusCode::Error,
                _ => SpanStatusCode::Unset,
            },
            message: (!status.message.is_empty()).then(|| cut.text(status.message)),
        },
        attributes: cut.attributes(span.attributes),
    }
}

fn kind(kind: i32) -> SpanKind {
    match span::SpanKind::try_from(kind) {
        Ok(span::SpanKind::Internal) => SpanKind::Internal,
        Ok(span::SpanKind::Server) => SpanKind::Server,
        Ok(span::SpanKind::Client) => SpanKind::Client,
        Ok(span::SpanKind::Producer) => SpanKind::Producer,
        Ok(span::SpanKind::Consumer) => SpanKind::Consumer,
        _ => SpanKind::Unspecified,
    }
}

fn nanos_to_ms(nanos: u64) -> EpochMs {
    EpochMs::try_from(nanos / 1_000_000).unwrap_or(EpochMs::MAX)
}

/// The text of each log record of `request` (its body, with its severity when it has one), for
/// the execution's log. Attribute values are not kept.
pub fn log_lines(request: LogsRequest, max_bytes: usize) -> Vec<String> {
    let mut cut = Cutter {
        max: max_bytes,
        truncated: 0,
    };
    let mut lines = Vec::new();
    for resource in request.resource_logs {
        for scope in resource.scope_logs {
            for record in scope.log_records {
                lines.push(cut.text(log_line(record)));
            }
        }
    }
    lines
}

fn log_line(record: LogRecord) -> String {
    let body = match record.body.and_then(|b| b.value) {
        Some(any_value::Value::StringValue(s)) => s,
        Some(other) => value(other, &mut Cutter::unbounded()).to_string(),
        None => String::new(),
    };
    if record.severity_text.is_empty() {
        body
    } else {
        format!("{} {body}", record.severity_text)
    }
}

/// Cuts strings at the cap, counting what it cut.
struct Cutter {
    max: usize,
    truncated: u64,
}

impl Cutter {
    fn unbounded() -> Cutter {
        Cutter {
            max: usize::MAX,
            truncated: 0,
        }
    }

    fn text(&mut self, mut s: String) -> String {
        if s.len() <= self.max {
            return s;
        }
        let mut end = self.max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let cut = s.len() - end;
        s.truncate(end);
        s.push_str(&format!(" … [truncated: {cut} more bytes]"));
        self.truncated += 1;
        s
    }

    fn attributes(&mut self, attributes: Vec<KeyValue>) -> Map<String, Value> {
        attributes
            .into_iter()
            .map(|kv| {
                let v = kv
                    .value
                    .and_then(|v| v.value)
                    .map_or(Value::Null, |v| value(v, self));
                (kv.key, v)
            })
            .collect()
    }
}

/// An attribute value as JSON: strings, booleans, integers and finite doubles as themselves,
/// arrays and key-value lists as arrays and objects, bytes as hex, NaN and infinities as text.
fn value(v: any_value::Value, cut: &mut Cutter) -> Value {
    use any_value::Value as V;
    match v {
        V::StringValue(s) => Value::String(cut.text(s)),
        V::BoolValue(b) => Value::Bool(b),
        V::IntValue(i) => Value::from(i),
        V::DoubleValue(d) => serde_json::Number::from_f64(d)
            .map_or_else(|| Value::String(d.to_string()), Value::Number),
        V::ArrayValue(a) => Value::Array(a.values.into_iter().map(|v| any(v, cut)).collect()),
        V::KvlistValue(kv) => Value::Object(cut.attributes(kv.values)),
        V::BytesValue(b) => Value::String(cut.text(hex::encode(b))),
        _ => Value::Null,
    }
}

fn any(v: AnyValue, cut: &mut Cutter) -> Value {
    v.value.map_or(Value::Null, |v| value(v, cut))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::otlp::{Encoding, decode};

    #[test]
    fn spans_keep_ids_times_and_attributes_and_orphans_hang_from_the_root() {
        let json = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[
            {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
             "parentSpanId":"","name":"chat gpt-4o","kind":3,
             "startTimeUnixNano":"1700000000123456789","endTimeUnixNano":"1700000001999000000",
             "status":{"code":2,"message":"boom"},
             "attributes":[{"key":"gen_ai.usage.input_tokens","value":{"intValue":"12"}},
                           {"key":"gen_ai.request.model","value":{"stringValue":"gpt-4o"}},
                           {"key":"big","value":{"stringValue":"ééééé"}},
                           {"key":"list","value":{"arrayValue":{"values":[{"boolValue":true}]}}}]},
            {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"0000000000000002",
             "parentSpanId":"eee19b7ec3c1b174","name":"tool","kind":1}]}]}]}"#;
        let request: TracesRequest = decode(json.as_bytes(), Encoding::Json).unwrap();
        let out = spans(request, "00000000000000aa", 64);
        let first = &out.spans[0];
        assert_eq!(first.parent_span_id.as_deref(), Some("00000000000000aa"));
        assert_eq!(
            (first.start_time_ms, first.end_time_ms),
            (1_700_000_000_123, 1_700_000_001_999)
        );
        assert_eq!(first.kind, SpanKind::Client);
        assert_eq!(first.status.code, SpanStatusCode::Error);
        assert_eq!(
            first.attributes["gen_ai.usage.input_tokens"],
            serde_json::json!(12)
        );
        assert_eq!(first.attributes["list"], serde_json::json!([true]));
        assert_eq!(
            out.spans[1].parent_span_id.as_deref(),
            Some("eee19b7ec3c1b174")
        );
        assert_eq!(out.truncated_attributes, 0);
    }

    #[test]
    fn long_strings_are_cut_at_a_character_boundary_and_marked() {
        let mut cut = Cutter {
            max: 5,
            truncated: 0,
        };
        let text = cut.text("ééééé".to_owned());
        assert_eq!(text, "éé … [truncated: 6 more bytes]");
        assert_eq!(cut.truncated, 1);
        assert_eq!(cut.text("short".to_owned()), "short");
        assert_eq!(cut.truncated, 1);
    }
}
