//! OTLP/HTTP on the main port: `POST /v1/traces`, `/v1/metrics` and `/v1/logs`, as the
//! OpenTelemetry SDKs' exporters send them (protobuf or JSON, optionally gzip), authenticated by
//! the bearer token the runtime gave the execution. A request is read whole (within the size
//! cap, also once inflated), decoded, and answered only once what it carries is stored.
//! Errors follow the OTLP specification: a `google.rpc.Status` in the request's encoding (for
//! JSON with this API's `error` object beside it), `Retry-After` on 429 and 503. Once stored,
//! a request is offered to the `Forwarder` when forwarding is on.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{
    AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER,
};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use prost::Message;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use super::AppState;
use super::error::{ErrorBody, ErrorCode};
use crate::config::OtlpConfig;
use crate::runtime::{ExportError, Sink};
use crate::store::StoreError;
use crate::telemetry::forward::{Export, Forwarder};
use crate::telemetry::otlp::{
    self, BodyError, Encoding, LogsRequest, MetricsRequest, RpcStatus, TracesRequest,
};

/// The error answers of every OTLP route (`api::openapi` adds them to each), each a
/// `google.rpc.Status` in the request's encoding.
pub const ERROR_RESPONSES: [(&str, &str); 7] = [
    (
        "400",
        "`invalid_request`: not a valid message, or not valid gzip",
    ),
    ("401", "`unauthorized`: no token of a running execution"),
    (
        "409",
        "`conflict`: the execution's stream takes no more events (it was cut short)",
    ),
    (
        "413",
        "`payload_too_large`: over `otlp.max_body_bytes`, compressed or inflated",
    ),
    (
        "415",
        "`unsupported_media_type`: neither protobuf nor JSON, or an encoding other than gzip",
    ),
    ("429", "`too_many_requests`: retry after `Retry-After`"),
    ("503", "`store_unavailable`: retry after `Retry-After`"),
];

/// Requests being read or stored at once; more are told to retry (429). Each holds at most
/// `max_body_bytes` twice (compressed and inflated), so this bounds the intake's memory.
const CONCURRENT_REQUESTS: usize = 16;

/// The intake's bounds, and where what it stores is forwarded.
pub struct OtlpIngest {
    max_body_bytes: usize,
    slots: Semaphore,
    forwarder: Option<Forwarder>,
}

impl OtlpIngest {
    pub fn new(config: &OtlpConfig) -> OtlpIngest {
        OtlpIngest {
            max_body_bytes: config.max_body_bytes,
            slots: Semaphore::new(CONCURRENT_REQUESTS),
            forwarder: None,
        }
    }

    /// Forwards what is stored through `forwarder` (`None`: forwarding is off).
    pub fn forwarding(self, forwarder: Option<Forwarder>) -> OtlpIngest {
        OtlpIngest { forwarder, ..self }
    }

    /// A copy of `request` to forward once it is stored, when forwarding is on.
    fn copy_to_forward<T: Clone>(&self, request: &T) -> Option<T> {
        self.forwarder.as_ref().map(|_| request.clone())
    }

    /// Offers a stored request of `sink`'s execution to the forwarder.
    fn forward(&self, export: Option<Export>, sink: &Sink) {
        if let (Some(forwarder), Some(export)) = (&self.forwarder, export) {
            forwarder.offer(export, sink.execution_id(), sink.agent_id());
        }
    }

    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }
}

/// An OTLP error answer.
#[derive(Debug)]
pub struct OtlpError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    encoding: Encoding,
}

impl OtlpError {
    fn new(
        status: StatusCode,
        code: ErrorCode,
        message: impl Into<String>,
        encoding: Encoding,
    ) -> Self {
        OtlpError {
            status,
            code,
            message: message.into(),
            encoding,
        }
    }

    /// The `google.rpc.Code` matching the HTTP status, per the OTLP/HTTP specification.
    fn rpc_code(&self) -> i32 {
        match self.status {
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => 3,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => 3,
            StatusCode::UNAUTHORIZED => 16,
            StatusCode::TOO_MANY_REQUESTS => 8,
            StatusCode::SERVICE_UNAVAILABLE => 14,
            _ => 13,
        }
    }
}

impl IntoResponse for OtlpError {
    fn into_response(self) -> Response {
        let status = RpcStatus {
            code: self.rpc_code(),
            message: format!(
                "{}: {}",
                serde_json::to_value(self.code)
                    .unwrap()
                    .as_str()
                    .unwrap_or(""),
                self.message
            ),
        };
        let body = match self.encoding {
            Encoding::Protobuf => status.encode_to_vec(),
            Encoding::Json => {
                let mut json = serde_json::to_value(&status).expect("status serializes");
                let api = serde_json::to_value(ErrorBody::of(self.code, self.message)).unwrap();
                json["error"] = api["error"].clone();
                serde_json::to_vec(&json).expect("json serializes")
            }
        };
        let mut response = (
            self.status,
            [(CONTENT_TYPE, self.encoding.content_type())],
            body,
        )
            .into_response();
        if matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            response
                .headers_mut()
                .insert(RETRY_AFTER, "1".parse().unwrap());
        }
        response
    }
}

/// Export spans: they become `span` events of the token's execution.
#[utoipa::path(
    post, path = "/v1/traces", tag = "telemetry", operation_id = "exportTraces",
    request_body(
        description = "An OTLP ExportTraceServiceRequest, protobuf or JSON, optionally gzip (`Content-Encoding`)",
        content(
            (Vec<u8> = "application/x-protobuf"),
            (serde_json::Value = "application/json"),
        ),
    ),
    security(("telemetry" = [])),
    responses(
        (status = 200, description = "Stored; `partialSuccess.rejectedSpans` counts spans over the execution's span budget", content(
            (Vec<u8> = "application/x-protobuf"),
            (serde_json::Value = "application/json"),
        )),
    ),
)]
pub async fn traces(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, OtlpError> {
    let (sink, request, encoding, _slot) = accept::<TracesRequest>(&state, &headers, body).await?;
    let copy = state.otlp.copy_to_forward(&request);
    let exported = sink
        .traces(request, &state.runtime)
        .await
        .map_err(|e| export_error(e, encoding))?;
    state.otlp.forward(copy.map(Export::Traces), &sink);
    Ok(success(
        encoding,
        otlp::traces_response(encoding, exported.rejected),
    ))
}

/// Export log records: they become `otlp` lines of the token's execution's log.
#[utoipa::path(
    post, path = "/v1/logs", tag = "telemetry", operation_id = "exportLogs",
    request_body(
        description = "An OTLP ExportLogsServiceRequest, protobuf or JSON, optionally gzip (`Content-Encoding`)",
        content(
            (Vec<u8> = "application/x-protobuf"),
            (serde_json::Value = "application/json"),
        ),
    ),
    security(("telemetry" = [])),
    responses(
        (status = 200, description = "Stored as `otlp` log lines", content(
            (Vec<u8> = "application/x-protobuf"),
            (serde_json::Value = "application/json"),
        )),
    ),
)]
pub async fn logs(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, OtlpError> {
    let (sink, request, encoding, _slot) = accept::<LogsRequest>(&state, &headers, body).await?;
    let copy = state.otlp.copy_to_forward(&request);
    sink.logs(request, &state.runtime)
        .await
        .map_err(|e| export_error(e, encoding))?;
    state.otlp.forward(copy.map(Export::Logs), &sink);
    Ok(success(encoding, otlp::empty_response(encoding)))
}

/// Export metrics: accepted (and forwarded when forwarding is on); usage is counted from spans.
#[utoipa::path(
    post, path = "/v1/metrics", tag = "telemetry", operation_id = "exportMetrics",
    request_body(
        description = "An OTLP ExportMetricsServiceRequest, protobuf or JSON, optionally gzip (`Content-Encoding`)",
        content(
            (Vec<u8> = "application/x-protobuf"),
            (serde_json::Value = "application/json"),
        ),
    ),
    security(("telemetry" = [])),
    responses(
        (status = 200, description = "Accepted", content(
            (Vec<u8> = "application/x-protobuf"),
            (serde_json::Value = "application/json"),
        )),
    ),
)]
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, OtlpError> {
    let (sink, request, encoding, _slot) = accept::<MetricsRequest>(&state, &headers, body).await?;
    // Its data points are not kept in the stream (the ledger counts usage from spans).
    state.otlp.forward(Some(Export::Metrics(request)), &sink);
    Ok(success(encoding, otlp::empty_response(encoding)))
}

fn success(encoding: Encoding, body: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response()
}

/// Checks a request in the order that costs least when refused: its encoding, its token, a
/// free slot, its size, then reads and decodes it.
async fn accept<'a, T: Message + Default + DeserializeOwned>(
    state: &'a AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Arc<Sink>, T, Encoding, tokio::sync::SemaphorePermit<'a>), OtlpError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(encoding) = Encoding::from_content_type(content_type) else {
        return Err(OtlpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            "the body must be application/x-protobuf or application/json",
            Encoding::Protobuf,
        ));
    };
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(sink) = token.and_then(|t| state.runtime.telemetry_sink(t.trim())) else {
        return Err(OtlpError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "a running execution's telemetry token is required (Authorization: Bearer <token>, as OTEL_EXPORTER_OTLP_HEADERS gives it)",
            encoding,
        ));
    };
    let Ok(slot) = state.otlp.slots.try_acquire() else {
        return Err(OtlpError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyRequests,
            "too many telemetry exports at once; retry after the time given",
            encoding,
        ));
    };
    let bytes = read_body(state.otlp.max_body_bytes, headers, body, encoding).await?;
    let request = otlp::decode::<T>(&bytes, encoding).map_err(|e| body_error(e, encoding))?;
    Ok((sink, request, encoding, slot))
}

async fn read_body(
    limit: usize,
    headers: &HeaderMap,
    body: Body,
    encoding: Encoding,
) -> Result<Bytes, OtlpError> {
    let too_large = || body_error(BodyError::TooLarge { limit }, encoding);
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())?;
    match headers.get(CONTENT_ENCODING).and_then(|v| v.to_str().ok()) {
        None | Some("identity") => Ok(bytes),
        Some("gzip") => otlp::gunzip(&bytes, limit)
            .map(Bytes::from)
            .map_err(|e| body_error(e, encoding)),
        Some(other) => Err(OtlpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            format!("Content-Encoding {other:?} is not supported (gzip is)"),
            encoding,
        )),
    }
}

fn body_error(e: BodyError, encoding: Encoding) -> OtlpError {
    let (status, code) = match e {
        BodyError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge),
        _ => (StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest),
    };
    OtlpError::new(status, code, e.to_string(), encoding)
}

/// An export that met the end of its run is told as one that came after it (401).
fn export_error(e: ExportError, encoding: Encoding) -> OtlpError {
    match e {
        ExportError::Ended => OtlpError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "the execution of this telemetry token has ended",
            encoding,
        ),
        ExportError::Store(e) => store_error(e, encoding),
    }
}

/// A store that cannot take the spans now is worth a retry (503); an execution whose stream
/// is closed is not (it ended while the export was on its way).
fn store_error(e: StoreError, encoding: Encoding) -> OtlpError {
    if matches!(e, StoreError::Closed | StoreError::Unavailable(_)) || e.is_transient() {
        return OtlpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::StoreUnavailable,
            "the store cannot take the telemetry now; retry after the time given",
            encoding,
        );
    }
    tracing::warn!(error = %e, "telemetry export not stored");
    OtlpError::new(
        StatusCode::CONFLICT,
        ErrorCode::Conflict,
        "the execution's stream takes no more events (it has ended)",
        encoding,
    )
}
