//! OTLP intake: client tasks post protobuf `ExportTraceServiceRequest`s of 512 GenAI-like
//! spans each to one running execution until 512,000 spans are sent. Reports spans per second
//! from the first request to the last answer; every answer comes after the spans it carried
//! are committed, so at the end the stored span events must number exactly the spans sent.
//! Run twice: forwarding off, then on (to a receiver in this process that answers at once).
//! Run: `cargo bench --bench otlp`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentnexus::telemetry::otlp::TracesRequest;
use common::{TestServer, sh_agent};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use serde_json::json;

const SPANS_PER_REQUEST: u64 = 512;
const REQUESTS: u64 = 1_000;
const CLIENTS: u64 = 8;

fn attribute(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// One request's spans: LLM calls with token counts, model and operation, as GenAI
/// instrumentations report them.
fn request(n: u64) -> Vec<u8> {
    use any_value::Value::{IntValue, StringValue};
    let spans = (0..SPANS_PER_REQUEST)
        .map(|i| {
            let id = n * SPANS_PER_REQUEST + i + 1;
            Span {
                trace_id: [n.to_be_bytes(), 7u64.to_be_bytes()].concat(),
                span_id: id.to_be_bytes().to_vec(),
                name: "chat gpt-4o".into(),
                kind: 3,
                start_time_unix_nano: 1_700_000_000_000_000_000 + id * 1_000_000,
                end_time_unix_nano: 1_700_000_000_500_000_000 + id * 1_000_000,
                attributes: vec![
                    attribute("gen_ai.operation.name", StringValue("chat".into())),
                    attribute("gen_ai.system", StringValue("openai".into())),
                    attribute("gen_ai.request.model", StringValue("gpt-4o".into())),
                    attribute(
                        "gen_ai.response.model",
                        StringValue("gpt-4o-2024-08-06".into()),
                    ),
                    attribute("gen_ai.usage.input_tokens", IntValue(1200)),
                    attribute("gen_ai.usage.output_tokens", IntValue(300)),
                    attribute("gen_ai.response.finish_reasons", StringValue("stop".into())),
                ],
                ..Default::default()
            }
        })
        .collect();
    TracesRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![attribute(
                    "service.name",
                    any_value::Value::StringValue("bench".into()),
                )],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// Whether the server forwards what it stores, here to a receiver in this process that
/// answers 200 at once.
#[derive(Clone, Copy, Debug)]
enum Forwarding {
    Off,
    On,
}

#[tokio::main]
async fn main() {
    // Bodies are made before the clock starts: the figure is the server's, not the encoder's.
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new((0..REQUESTS).map(request).collect());
    for forwarding in [Forwarding::Off, Forwarding::On] {
        run(forwarding, bodies.clone()).await;
    }
}

async fn run(forwarding: Forwarding, bodies: Arc<Vec<Vec<u8>>>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("otlp-headers");
    let agent = sh_agent(
        "traced",
        "0",
        &format!(
            "printf '%s' \"$OTEL_EXPORTER_OTLP_HEADERS\" > {f}.tmp && mv {f}.tmp {f}; sleep 600",
            f = file.display()
        ),
    );
    let receiver = match forwarding {
        Forwarding::Off => None,
        Forwarding::On => Some(receiver().await),
    };
    let server = TestServer::start_with(vec![agent], |c| {
        c.otlp.max_spans = SPANS_PER_REQUEST * REQUESTS + 1;
        c.otlp.forward_endpoint = receiver.clone();
    })
    .await;
    let id = server.client.submit("traced", json!({})).await;
    let token = loop {
        if let Ok(headers) = std::fs::read_to_string(&file) {
            break headers["authorization=Bearer%20".len()..].to_owned();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let start = Instant::now();
    send_all(&format!("{}/v1/traces", server.url), &token, &bodies).await;
    let elapsed = start.elapsed();
    let sent = SPANS_PER_REQUEST * REQUESTS;
    let body_bytes: usize = bodies.iter().map(Vec::len).sum();
    println!(
        "otlp forwarding={forwarding:?}: {sent} spans in {REQUESTS} requests of {SPANS_PER_REQUEST} ({:.1} MB protobuf) from {CLIENTS} clients in {:.3} s = {:.0} spans/s",
        body_bytes as f64 / 1e6,
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64()
    );
    // Read right after the last answer, with no wait: what was answered is stored.
    let stored = server
        .client
        .all_events(&id)
        .await
        .iter()
        .filter(|e| e["type"] == "span")
        .count() as u64;
    assert_eq!(stored, sent, "span events stored vs. spans sent");
    println!("otlp forwarding={forwarding:?}: {stored} span events stored = spans sent");
    if receiver.is_some() {
        let metrics = common::scrape(&server.url).await;
        let counted = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}{{signal=\"traces\"}} ")))
                .unwrap_or("0")
                .to_owned()
        };
        println!(
            "otlp forwarding=On: requests forwarded by the end {}, dropped (queue full) {}, failed {}",
            counted("agentnexus_otlp_forwarded_total"),
            counted("agentnexus_otlp_forward_dropped_total"),
            counted("agentnexus_otlp_forward_failed_total")
        );
    }
    server
        .client
        .post(&format!("/api/executions/{id}/cancel"), json!({}))
        .await;
}

/// Posts every body, `CLIENTS` requests at a time; each must be answered 200.
async fn send_all(url: &str, token: &str, bodies: &Arc<Vec<Vec<u8>>>) {
    let next = Arc::new(AtomicU64::new(0));
    let http = reqwest::Client::new();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (bodies, next, http) = (bodies.clone(), next.clone(), http.clone());
            let (url, token) = (url.to_owned(), token.to_owned());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= REQUESTS {
                        return;
                    }
                    let response = http
                        .post(&url)
                        .bearer_auth(&token)
                        .header("content-type", "application/x-protobuf")
                        .body(bodies[n as usize].clone())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200, "{:?}", response.text().await);
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
}

/// An OTLP receiver that answers every request 200 at once; returns its base URL.
async fn receiver() -> String {
    let app = axum::Router::new().route(
        "/v1/{signal}",
        axum::routing::post(|_: axum::body::Bytes| async { "" }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}
