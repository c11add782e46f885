//! OTLP exports as an agent's OpenTelemetry SDK sends them: an agent that writes the telemetry
//! environment the runtime gave it to a file and waits, so that the test exports in its place
//! (protobuf built with `opentelemetry-proto`, or OTLP JSON written out), and the readings of
//! what the server made of them (`span` events, `/metrics` series).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentnexus::config::ConfigAgent;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{Client, TestServer};

pub const PROTOBUF: &str = "application/x-protobuf";
pub const JSON: &str = "application/json";

/// An agent that writes its environment (and its pid) to `<dir>/<execution id>.env`, then runs
/// until `<dir>/<execution id>.stop` exists.
pub fn otel_agent(id: &str, dir: &Path) -> ConfigAgent {
    let script = format!(
        r#"d='{dir}'
{{ env; echo "AGENT_PID=$$"; }} > "$d/$EXECUTION_ID.tmp" && mv "$d/$EXECUTION_ID.tmp" "$d/$EXECUTION_ID.env"
while [ ! -e "$d/$EXECUTION_ID.stop" ]; do sleep 0.05; done
echo '{{"done": true}}'"#,
        dir = dir.display()
    );
    super::sh_agent(id, "1", &script)
}

/// What a running `otel_agent` was given.
pub struct Telemetry {
    pub endpoint: String,
    pub token: String,
    pub traceparent: String,
    pub resource: String,
    pub pid: i32,
    stop: PathBuf,
}

impl Telemetry {
    /// Waits until execution `id` of an `otel_agent` writing to `dir` has started.
    pub async fn of(dir: &Path, id: &str) -> Telemetry {
        let file = dir.join(format!("{id}.env"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !file.exists() {
            assert!(Instant::now() < deadline, "{id} never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let env: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
        let header = env["OTEL_EXPORTER_OTLP_HEADERS"];
        Telemetry {
            endpoint: env["OTEL_EXPORTER_OTLP_ENDPOINT"].to_owned(),
            token: header
                .strip_prefix("authorization=Bearer%20")
                .unwrap_or_else(|| panic!("OTEL_EXPORTER_OTLP_HEADERS={header}"))
                .to_owned(),
            traceparent: env["TRACEPARENT"].to_owned(),
            resource: env["OTEL_RESOURCE_ATTRIBUTES"].to_owned(),
            pid: env["AGENT_PID"].parse().unwrap(),
            stop: dir.join(format!("{id}.stop")),
        }
    }

    /// The trace id of the execution's root span, from `TRACEPARENT`.
    pub fn trace_id(&self) -> &str {
        self.traceparent.split('-').nth(1).unwrap()
    }

    /// The execution's root span id, from `TRACEPARENT`.
    pub fn root_span_id(&self) -> &str {
        self.traceparent.split('-').nth(2).unwrap()
    }

    /// Lets the agent end (it exits 0).
    pub fn finish(&self) {
        std::fs::write(&self.stop, b"").unwrap();
    }

    /// Exports `body` to `/v1/traces` with this execution's token.
    pub async fn export(&self, content_type: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        post(
            &self.endpoint,
            "/v1/traces",
            Some(&self.token),
            content_type,
            body,
        )
        .await
    }
}

/// `POST <url><path>` with an optional bearer token; the answer's status and raw body.
pub async fn post(
    url: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    post_with(url, path, token, &[("content-type", content_type)], body).await
}

/// `post` with any headers.
pub async fn post_with(
    url: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    let mut request = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.bytes().await.unwrap().to_vec())
}

pub fn gzip(body: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body).unwrap();
    gz.finish().unwrap()
}

/// A span of trace `trace_id` (hex) with span id `id`, under `parent` (none: a root of the
/// agent's own), from 1700000000.123456789 s to one second later.
pub fn span(trace_id: &str, id: u64, parent: Option<u64>, name: &str) -> Span {
    Span {
        trace_id: hex::decode(trace_id).unwrap(),
        span_id: id.to_be_bytes().to_vec(),
        parent_span_id: parent.map_or_else(Vec::new, |p| p.to_be_bytes().to_vec()),
        name: name.into(),
        kind: 1,
        start_time_unix_nano: 1_700_000_000_123_456_789,
        end_time_unix_nano: 1_700_000_001_123_456_789,
        status: Some(Status::default()),
        ..Span::default()
    }
}

/// An LLM call as the GenAI conventions describe it: operation `chat` on `model`.
pub fn chat_span(trace_id: &str, id: u64, model: &str, input: i64, output: i64) -> Span {
    Span {
        kind: 3,
        attributes: vec![
            string("gen_ai.operation.name", "chat"),
            string("gen_ai.provider.name", "openai"),
            string("gen_ai.request.model", model),
            int("gen_ai.usage.input_tokens", input),
            int("gen_ai.usage.output_tokens", output),
        ],
        ..span(trace_id, id, None, &format!("chat {model}"))
    }
}

pub fn string(key: &str, value: &str) -> KeyValue {
    attribute(key, any_value::Value::StringValue(value.into()))
}

pub fn int(key: &str, value: i64) -> KeyValue {
    attribute(key, any_value::Value::IntValue(value))
}

pub fn attribute(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

/// An export request holding `spans` in one resource and scope, as protobuf.
pub fn traces(spans: Vec<Span>) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
    .encode_to_vec()
}

/// The data of the `span` events among `events`, in order.
pub fn spans_of(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["type"] == "span")
        .map(|e| e["data"].clone())
        .collect()
}

/// The value of the series `series` (its name, with its labels as written) in a scrape.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

/// A server with one `otel_agent` named `otel`, its files in a directory of its own. Resource
/// samples are rare, so that an execution's `lastSeq` moves only with what the test sends.
pub async fn server_with(
    tweak: impl FnOnce(&mut agentnexus::config::Config),
) -> (TestServer, Agents) {
    let files = tempfile::tempdir().unwrap();
    let agent = otel_agent("otel", files.path());
    let server = TestServer::start_with(vec![agent], |c| {
        c.sample_interval_ms = 600_000;
        tweak(c);
    })
    .await;
    (server, Agents { files })
}

/// Where the agents of a `server_with` write what they were given.
pub struct Agents {
    pub files: tempfile::TempDir,
}

impl Agents {
    /// Submits a run of `otel` (with `budget`, if any) and waits until it has started.
    pub async fn start(&self, client: &Client, budget: Option<Value>) -> (String, Telemetry) {
        let mut body = json!({"agentId": "otel", "input": {}});
        if let Some(budget) = budget {
            body["budget"] = budget;
        }
        let (status, answer) = client.post("/api/executions", body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        let id = answer["executionId"].as_str().unwrap().to_owned();
        let telemetry = Telemetry::of(self.files.path(), &id).await;
        (id, telemetry)
    }
}

/// The execution's `lastSeq`: moves with every event stored.
pub async fn last_seq(client: &Client, id: &str) -> u64 {
    client.execution(id).await["lastSeq"].as_u64().unwrap()
}

/// An export request in OTLP JSON: one client span of trace `trace_id` (ids in hex, `parent`
/// empty for none), status OK, half a second from 1700000002 s, with two attributes.
pub fn json_traces(trace_id: &str, span_id: &str, parent: &str, name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": trace_id, "spanId": span_id, "parentSpanId": parent, "name": name,
        "kind": 3, "startTimeUnixNano": "1700000002000000000", "endTimeUnixNano": 1700000002500000000u64,
        "status": {"code": 1},
        "attributes": [{"key": "http.request.method", "value": {"stringValue": "POST"}},
                       {"key": "retries", "value": {"intValue": "2"}}]
    }]}]}]}))
    .unwrap()
}

/// Sends `total` bytes to `/v1/traces` in chunks, without a `Content-Length`, over a bare
/// connection; returns the answer's status line.
pub fn post_chunked(url: &str, token: &str, total: usize) -> String {
    let addr = url.strip_prefix("http://").unwrap();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {PROTOBUF}\r\n\
         Authorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let chunk = vec![0x0au8; 8192];
    let mut sent = 0;
    while sent < total {
        let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        // The server may answer and close before reading it all.
        if stream.write_all(&frame).is_err() {
            break;
        }
        sent += chunk.len();
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    text.lines().next().unwrap_or("").to_owned()
}

/// An `otel_agent` named `budgeted` with at most two LLM calls, beside `otel`.
pub async fn budget_server() -> (TestServer, Agents) {
    let files = tempfile::tempdir().unwrap();
    let mut budgeted = otel_agent("budgeted", files.path());
    budgeted.budget.max_llm_calls = Some(2);
    let agents = vec![otel_agent("otel", files.path()), budgeted];
    (TestServer::start(agents).await, Agents { files })
}
