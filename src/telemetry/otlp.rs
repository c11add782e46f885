//! OTLP/HTTP export requests read from their protobuf or JSON encoding, with the maintained
//! `opentelemetry-proto` types (prost for protobuf, its serde support for the OTLP JSON
//! mapping: hex ids, 64-bit integers as strings), and the answers the OTLP specification
//! gives (<https://opentelemetry.io/docs/specs/otlp/#otlphttp>): an `Export…ServiceResponse`
//! on success, with `partialSuccess` naming spans that were not stored, and a
//! `google.rpc.Status` on failure, each in the request's encoding.

use std::io::Read;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use serde::de::DeserializeOwned;

/// How a request body is encoded, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    /// `application/x-protobuf` or `application/json` (parameters ignored); `None` otherwise.
    pub fn from_content_type(content_type: &str) -> Option<Encoding> {
        let media = content_type.split(';').next().unwrap_or("").trim();
        match media.to_ascii_lowercase().as_str() {
            "application/x-protobuf" | "application/protobuf" => Some(Encoding::Protobuf),
            "application/json" => Some(Encoding::Json),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body is larger than {limit} bytes once decompressed")]
    TooLarge { limit: usize },
    #[error("the body is not valid gzip: {0}")]
    Gzip(std::io::Error),
    #[error("the body is not a valid OTLP protobuf message: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("the body is not a valid OTLP JSON message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the body is not a valid OTLP JSON message: it must be a JSON object")]
    NotAnObject,
}

/// Inflates a gzip body, reading at most `limit` bytes of its content: a small body that
/// inflates to gigabytes is refused after `limit + 1` bytes, never held whole.
pub fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    flate2::read::MultiGzDecoder::new(body)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(BodyError::Gzip)?;
    if out.len() > limit {
        return Err(BodyError::TooLarge { limit });
    }
    Ok(out)
}

/// Reads an export request of any signal in `encoding`.
pub fn decode<T: Message + Default + DeserializeOwned>(
    body: &[u8],
    encoding: Encoding,
) -> Result<T, BodyError> {
    Ok(match encoding {
        Encoding::Protobuf => T::decode(body)?,
        Encoding::Json => from_json(body)?,
    })
}

/// Reads OTLP JSON. It goes through `Value` because this crate reads JSON with exact numbers
/// (serde_json's `arbitrary_precision`), which the OTLP types' own number readers do not
/// expect straight from text; from a `Value` they get numbers they read. An export request is
/// an object (serde would also take a struct from an array).
fn from_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, BodyError> {
    let value: serde_json::Value = serde_json::from_slice(body)?;
    if !value.is_object() {
        return Err(BodyError::NotAnObject);
    }
    Ok(serde_json::from_value(value)?)
}

/// The success answer to a traces export: `rejected` spans were not stored (over the span
/// budget), which `partialSuccess` says.
pub fn traces_response(encoding: Encoding, rejected: u64) -> Vec<u8> {
    if rejected == 0 {
        return empty_response(encoding);
    }
    let partial_success = (rejected > 0).then(|| ExportTracePartialSuccess {
        rejected_spans: i64::try_from(rejected).unwrap_or(i64::MAX),
        error_message:
            "the execution's span budget is exhausted; these spans were counted, not stored".into(),
    });
    encode(&ExportTraceServiceResponse { partial_success }, encoding)
}

/// The success answer to a metrics or logs export (an empty response message).
pub fn empty_response(encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Protobuf => Vec::new(),
        Encoding::Json => b"{}".to_vec(),
    }
}

fn encode<T: Message + serde::Serialize>(message: &T, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Protobuf => message.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(message).expect("OTLP messages serialize"),
    }
}

/// `google.rpc.Status`, the body of every OTLP/HTTP error answer. Its three fields are all
/// the specification asks for; `details` is left empty.
#[derive(Clone, PartialEq, Message, serde::Serialize)]
pub struct RpcStatus {
    /// A `google.rpc.Code` (3 invalid argument, 8 resource exhausted, 14 unavailable, 16
    /// unauthenticated).
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

impl RpcStatus {
    pub fn encode_as(&self, encoding: Encoding) -> Vec<u8> {
        encode(self, encoding)
    }
}

/// The three export request types, named for the routes.
pub type TracesRequest = ExportTraceServiceRequest;
pub type MetricsRequest = ExportMetricsServiceRequest;
pub type LogsRequest = ExportLogsServiceRequest;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const JSON_TRACE: &str = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"a"}}]},
        "scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
        "name":"chat gpt-4o","kind":3,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":1544712661000000000,
        "attributes":[{"key":"gen_ai.usage.input_tokens","value":{"intValue":"12"}},
                      {"key":"x","value":{"intValue":7}},{"key":"d","value":{"doubleValue":0.5}}]}]}]}]}"#;

    #[test]
    fn otlp_json_reads_with_strings_or_numbers_for_64_bit_integers() {
        let request: TracesRequest = decode(JSON_TRACE.as_bytes(), Encoding::Json).unwrap();
        let span = &request.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(
            hex::encode(&span.trace_id),
            "5b8efff798038103d269b633813fc60c"
        );
        assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
        assert_eq!(span.end_time_unix_nano, 1_544_712_661_000_000_000);
        assert_eq!(span.attributes.len(), 3);
        let proto = request.encode_to_vec();
        let again: TracesRequest = decode(&proto, Encoding::Protobuf).unwrap();
        assert_eq!(again, request);
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        for body in [&b"{"[..], b"[]", b"{\"resourceSpans\": 5}", b"\xff\xfe"] {
            assert!(decode::<TracesRequest>(body, Encoding::Json).is_err());
        }
        assert!(decode::<TracesRequest>(b"\x0a\xff\xff\xff\xff\x0f", Encoding::Protobuf).is_err());
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_limit() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![0u8; 64 * 1024 * 1024]).unwrap();
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 128 * 1024);
        assert!(matches!(
            gunzip(&bomb, 1024 * 1024),
            Err(BodyError::TooLarge { .. })
        ));
        assert!(matches!(gunzip(b"not gzip", 1024), Err(BodyError::Gzip(_))));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"hello").unwrap();
        assert_eq!(gunzip(&gz.finish().unwrap(), 5).unwrap(), b"hello");
    }
}
