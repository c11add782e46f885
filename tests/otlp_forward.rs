//! Forwarding of OTLP exports: what an agent exports is stored, then sent on to
//! `otlp.forward_endpoint` with the execution's resource attributes, without ever holding the
//! agent's export back.

mod common;

use std::path::Path;
use std::time::Duration;

use agentnexus::telemetry::forward::CONCURRENT_SENDS;
use agentnexus::telemetry::otlp::{LogsRequest, MetricsRequest, TracesRequest};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::HeaderMap;
use axum::routing::post;
use common::{TestServer, scrape, sh_agent};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{Metric, ResourceMetrics, ScopeMetrics};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use reqwest::StatusCode;
use serde_json::json;
use tokio::sync::mpsc;

/// An agent that hands its telemetry token to the test (through a file) and waits to be
/// cancelled, so that its token stays valid.
fn token_agent(dir: &Path) -> agentnexus::config::ConfigAgent {
    let file = dir.join("otlp-headers");
    sh_agent(
        "exporter",
        "0",
        &format!(
            "printf '%s' \"$OTEL_EXPORTER_OTLP_HEADERS\" > {f}.tmp && mv {f}.tmp {f}; sleep 60",
            f = file.display()
        ),
    )
}

/// Starts the agent and reads its token from the file it writes.
async fn running_token(server: &TestServer, dir: &Path) -> (String, String) {
    let id = server.client.submit("exporter", json!({})).await;
    let file = dir.join("otlp-headers");
    for _ in 0..500 {
        if let Ok(headers) = std::fs::read_to_string(&file) {
            let token = headers
                .strip_prefix("authorization=Bearer%20")
                .expect("the header as OTEL_EXPORTER_OTLP_HEADERS gives it");
            return (id, token.to_owned());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the agent never wrote its token");
}

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn agent_resource() -> Option<Resource> {
    Some(Resource {
        attributes: vec![text("service.name", "exporter")],
        ..Default::default()
    })
}

fn traces(names: &[&str]) -> TracesRequest {
    let spans = names
        .iter()
        .enumerate()
        .map(|(i, name)| Span {
            trace_id: vec![7; 16],
            span_id: vec![i as u8 + 1; 8],
            name: (*name).into(),
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_001_000_000_000,
            attributes: vec![text("gen_ai.request.model", "gpt-4o")],
            ..Default::default()
        })
        .collect();
    TracesRequest {
        resource_spans: vec![ResourceSpans {
            resource: agent_resource(),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn export(url: &str, signal: &str, token: &str, body: Vec<u8>) -> StatusCode {
    reqwest::Client::new()
        .post(format!("{url}/v1/{signal}"))
        .bearer_auth(token)
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
}

/// A counter's value for one signal in the `/metrics` text (0 when the series is absent).
fn counter(metrics: &str, name: &str, signal: &str) -> u64 {
    let prefix = format!("{name}{{signal=\"{signal}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

type Received = (String, HeaderMap, Bytes);

/// An OTLP receiver on port 0 that hands each request (signal, headers, body) to the test.
async fn receiver() -> (String, mpsc::UnboundedReceiver<Received>) {
    let (tx, rx) = mpsc::unbounded_channel::<Received>();
    let app = Router::new()
        .route(
            "/v1/{signal}",
            post(
                |State(tx): State<mpsc::UnboundedSender<Received>>,
                 UrlPath(signal): UrlPath<String>,
                 headers: HeaderMap,
                 body: Bytes| async move {
                    tx.send((signal, headers, body)).unwrap();
                    ""
                },
            ),
        )
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("a forwarded request arrives")
        .unwrap()
}

fn resource_attribute(resource: &Option<Resource>, key: &str) -> Option<String> {
    resource.as_ref()?.attributes.iter().find_map(|kv| {
        (kv.key == key).then(|| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })?
    })
}

#[tokio::test]
async fn stored_exports_are_forwarded_with_the_executions_attributes() {
    let (forward_url, mut received) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(vec![token_agent(dir.path())], |c| {
        c.otlp.forward_endpoint = Some(format!("{forward_url}/"));
        c.otlp
            .forward_headers
            .insert("x-collector-key".into(), "secret".into());
    })
    .await;
    let (id, token) = running_token(&server, dir.path()).await;
    let body = traces(&["chat gpt-4o", "execute_tool search"]).encode_to_vec();
    assert_eq!(
        export(&server.url, "traces", &token, body).await,
        StatusCode::OK
    );

    let (signal, headers, body) = next(&mut received).await;
    assert_eq!(signal, "traces");
    assert_eq!(headers["x-collector-key"], "secret");
    assert_eq!(headers["content-type"], "application/x-protobuf");
    let forwarded = TracesRequest::decode(body).unwrap();
    let resource = &forwarded.resource_spans[0].resource;
    assert_eq!(
        resource_attribute(resource, "agentnexus.execution.id").as_deref(),
        Some(id.as_str())
    );
    assert_eq!(
        resource_attribute(resource, "agentnexus.agent.id").as_deref(),
        Some("exporter")
    );
    assert_eq!(
        resource_attribute(resource, "service.name").as_deref(),
        Some("exporter")
    );
    let names: Vec<_> = forwarded.resource_spans[0].scope_spans[0]
        .spans
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["chat gpt-4o", "execute_tool search"]);
    // Forwarded after it was stored: the spans are already in the stream.
    let events = server.client.all_events(&id).await;
    let stored: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "span")
        .map(|e| e["data"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(stored, ["chat gpt-4o", "execute_tool search"]);

    let logs = LogsRequest {
        resource_logs: vec![ResourceLogs {
            resource: None,
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("hello".into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let status = export(&server.url, "logs", &token, logs.encode_to_vec()).await;
    assert_eq!(status, StatusCode::OK);
    let (signal, _, body) = next(&mut received).await;
    assert_eq!(signal, "logs");
    let forwarded = LogsRequest::decode(body).unwrap();
    assert_eq!(
        resource_attribute(&forwarded.resource_logs[0].resource, "agentnexus.agent.id").as_deref(),
        Some("exporter"),
        "a resource the agent left out is added"
    );

    let metrics = MetricsRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: agent_resource(),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "queue.size".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let status = export(&server.url, "metrics", &token, metrics.encode_to_vec()).await;
    assert_eq!(status, StatusCode::OK);
    let (signal, _, body) = next(&mut received).await;
    assert_eq!(signal, "metrics");
    let forwarded = MetricsRequest::decode(body).unwrap();
    assert_eq!(
        forwarded.resource_metrics[0].scope_metrics[0].metrics[0].name,
        "queue.size"
    );

    // The counter follows the answer the receiver gave; poll until it has.
    let mut text = String::new();
    for _ in 0..100 {
        text = scrape(&server.url).await;
        if counter(&text, "agentnexus_otlp_forwarded_total", "metrics") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for signal in ["traces", "logs", "metrics"] {
        assert_eq!(
            counter(&text, "agentnexus_otlp_forwarded_total", signal),
            1,
            "{text}"
        );
        assert_eq!(
            counter(&text, "agentnexus_otlp_forward_dropped_total", signal),
            0
        );
        assert_eq!(
            counter(&text, "agentnexus_otlp_forward_failed_total", signal),
            0
        );
    }
}

/// A receiver that accepts connections and never answers: forwarding stalls on it, and the
/// agent's exports must go on being answered, the excess dropped and counted.
#[tokio::test]
async fn a_receiver_that_never_answers_does_not_hold_exports_back() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let forward_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(vec![token_agent(dir.path())], |c| {
        c.otlp.forward_endpoint = Some(forward_url);
        c.otlp.forward_queue = 2;
    })
    .await;
    let (id, token) = running_token(&server, dir.path()).await;
    const EXPORTS: u64 = 20;
    for i in 0..EXPORTS {
        let body = traces(&[&format!("span {i}")]).encode_to_vec();
        assert_eq!(
            export(&server.url, "traces", &token, body).await,
            StatusCode::OK
        );
    }
    let events = server.client.all_events(&id).await;
    let spans = events.iter().filter(|e| e["type"] == "span").count();
    assert_eq!(spans as u64, EXPORTS, "every export was stored: {events:?}");
    let text = scrape(&server.url).await;
    let dropped = counter(&text, "agentnexus_otlp_forward_dropped_total", "traces");
    // At most CONCURRENT_SENDS requests in flight and two queued; every other one was dropped.
    let kept = CONCURRENT_SENDS as u64 + 2;
    assert!(dropped >= EXPORTS - kept, "dropped {dropped}: {text}");
    assert_eq!(
        counter(&text, "agentnexus_otlp_forwarded_total", "traces"),
        0
    );
}

#[tokio::test]
async fn an_endpoint_that_refuses_is_counted_as_failed() {
    let refused = format!("http://127.0.0.1:{}", common::free_port());
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(vec![token_agent(dir.path())], |c| {
        c.otlp.forward_endpoint = Some(refused);
    })
    .await;
    let (_, token) = running_token(&server, dir.path()).await;
    let body = traces(&["chat"]).encode_to_vec();
    assert_eq!(
        export(&server.url, "traces", &token, body).await,
        StatusCode::OK
    );
    let mut text = String::new();
    for _ in 0..250 {
        text = scrape(&server.url).await;
        if counter(&text, "agentnexus_otlp_forward_failed_total", "traces") > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        counter(&text, "agentnexus_otlp_forward_failed_total", "traces"),
        1,
        "{text}"
    );
    assert_eq!(
        counter(&text, "agentnexus_otlp_forwarded_total", "traces"),
        0
    );
}
