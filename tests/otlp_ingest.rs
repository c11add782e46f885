//! The OTLP/HTTP intake, end to end: a real server runs shell agents that hand the test the
//! telemetry environment they were given, and the test exports as their SDK would. Spans become
//! `span` events of the token's execution only; refused requests store nothing; the span and
//! attribute caps; budgets that stop a run; usage counted exactly.

mod common;

use std::io::Write;
use std::time::Duration;

use common::otlp::{
    JSON, PROTOBUF, Telemetry, budget_server, chat_span, gzip, json_traces, last_seq, metric, post,
    post_chunked, post_with, server_with, span, spans_of, string, traces,
};
use common::{log_lines, statuses};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use reqwest::StatusCode;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn spans_in_protobuf_json_and_gzip_become_span_events_in_order_under_the_root_span() {
    let (mut server, agents) = server_with(|_| {}).await;
    let (id, t) = agents.start(&server.client, None).await;
    assert_eq!(t.endpoint, server.url);
    assert!(
        t.resource
            .contains(&format!("agentnexus.execution.id={id}")),
        "{}",
        t.resource
    );
    assert!(
        t.resource.contains("agentnexus.agent.id=otel"),
        "{}",
        t.resource
    );
    assert_eq!((t.trace_id().len(), t.root_span_id().len()), (32, 16));
    let trace = t.trace_id().to_owned();

    // Protobuf: an orphan (hangs from the root span) and its child, with typed attributes.
    let mut first = span(&trace, 0xa1, None, "plan");
    first.kind = 3;
    first.attributes = vec![
        string("tool", "search"),
        common::otlp::int("n", 7),
        common::otlp::attribute(
            "ok",
            opentelemetry_proto::tonic::common::v1::any_value::Value::BoolValue(true),
        ),
    ];
    let mut second = span(&trace, 0xa2, Some(0xa1), "step");
    second.status = Some(opentelemetry_proto::tonic::trace::v1::Status {
        code: 2,
        message: "boom".into(),
    });
    let (status, body) = t.export(PROTOBUF, traces(vec![first, second])).await;
    assert_eq!(status, StatusCode::OK);
    let answer = ExportTraceServiceResponse::decode(&body[..]).unwrap();
    assert_eq!(answer.partial_success, None, "everything was stored");

    // OTLP JSON, then both gzipped.
    let json_span = json_traces(&trace, "00000000000000b1", "", "json");
    let (status, body) = t.export(JSON, json_span).await;
    assert_eq!(
        (status, serde_json::from_slice::<Value>(&body).unwrap()),
        (StatusCode::OK, json!({}))
    );
    let zipped = gzip(&traces(vec![span(
        &trace,
        0xc1,
        Some(0xa1),
        "zipped protobuf",
    )]));
    let headers = [("content-type", PROTOBUF), ("content-encoding", "gzip")];
    let (status, _) = post_with(&t.endpoint, "/v1/traces", Some(&t.token), &headers, zipped).await;
    assert_eq!(status, StatusCode::OK);
    let zipped = gzip(&json_traces(
        &trace,
        "00000000000000c2",
        "00000000000000b1",
        "zipped json",
    ));
    let headers = [
        ("content-type", "application/json; charset=utf-8"),
        ("content-encoding", "gzip"),
    ];
    let (status, _) = post_with(&t.endpoint, "/v1/traces", Some(&t.token), &headers, zipped).await;
    assert_eq!(status, StatusCode::OK);

    let spans = spans_of(&server.client.all_events(&id).await);
    let root = t.root_span_id();
    assert_eq!(
        spans[0],
        json!({
            "traceId": trace, "spanId": "00000000000000a1", "parentSpanId": root,
            "name": "plan", "kind": "client",
            "startTimeMs": 1_700_000_000_123u64, "endTimeMs": 1_700_000_001_123u64,
            "status": {"code": "UNSET"},
            "attributes": {"tool": "search", "n": 7, "ok": true},
        })
    );
    assert_eq!(spans[1]["parentSpanId"], "00000000000000a1");
    assert_eq!(spans[1]["kind"], "internal");
    assert_eq!(
        spans[1]["status"],
        json!({"code": "ERROR", "message": "boom"})
    );
    assert_eq!(
        spans[2],
        json!({
            "traceId": trace, "spanId": "00000000000000b1", "parentSpanId": root,
            "name": "json", "kind": "client",
            "startTimeMs": 1_700_000_002_000u64, "endTimeMs": 1_700_000_002_500u64,
            "status": {"code": "OK"},
            "attributes": {"http.request.method": "POST", "retries": 2},
        })
    );
    let names: Vec<&str> = spans.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["plan", "step", "json", "zipped protobuf", "zipped json"]
    );
    assert_eq!(spans[4]["parentSpanId"], "00000000000000b1");

    // At the end the runtime's root span is recorded, before the final status.
    t.finish();
    let done = server.client.wait_terminal(&id, WAIT).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let events = server.client.all_events(&id).await;
    let last_span = events.iter().rposition(|e| e["type"] == "span").unwrap();
    assert_eq!(events.last().unwrap()["type"], "status");
    assert!(last_span < events.len() - 1);
    let root_span = &events[last_span]["data"];
    assert_eq!(
        (&root_span["spanId"], &root_span["traceId"]),
        (&json!(root), &json!(trace))
    );
    assert_eq!(root_span["parentSpanId"], Value::Null);
    assert_eq!(
        root_span["attributes"]["agentnexus.execution.id"],
        json!(id)
    );
    server.stop().await;
}

#[tokio::test]
async fn a_token_opens_its_own_running_execution_and_no_other() {
    let (mut server, agents) = server_with(|_| {}).await;
    let client = server.client.clone();
    let (a, ta) = agents.start(&client, None).await;
    let (b, tb) = agents.start(&client, None).await;
    assert_ne!(ta.token, tb.token);
    assert_ne!(ta.trace_id(), tb.trace_id());
    let one = || traces(vec![span("0af7651916cd43dd8448eb211c80319c", 1, None, "s")]);
    let (a_before, b_before) = (last_seq(&client, &a).await, last_seq(&client, &b).await);

    for token in [None, Some("not-a-token"), Some("")] {
        let (status, body) = post(&server.url, "/v1/traces", token, PROTOBUF, one()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        let rpc = agentnexus::telemetry::otlp::RpcStatus::decode(&body[..]).unwrap();
        assert_eq!(rpc.code, 16, "UNAUTHENTICATED");
    }
    let (status, body) = post(
        &server.url,
        "/v1/traces",
        Some("nope"),
        JSON,
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (&body["code"], &body["error"]["code"]),
        (&json!(16), &json!("unauthorized"))
    );

    let (status, _) = ta.export(PROTOBUF, one()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(last_seq(&client, &a).await, a_before + 1);
    assert_eq!(
        last_seq(&client, &b).await,
        b_before,
        "B's stream is unchanged"
    );
    assert!(spans_of(&client.all_events(&b).await).is_empty());

    // Once A has ended its token opens nothing, and B's still works.
    ta.finish();
    client.wait_terminal(&a, WAIT).await;
    let a_ended = last_seq(&client, &a).await;
    let (status, _) = ta.export(PROTOBUF, one()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(last_seq(&client, &a).await, a_ended);
    let (status, _) = tb.export(PROTOBUF, one()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(spans_of(&client.all_events(&b).await).len(), 1);
    tb.finish();
    client.wait_terminal(&b, WAIT).await;
    server.stop().await;
}

#[tokio::test]
async fn refused_exports_store_nothing_and_the_server_stays_healthy() {
    const LIMIT: usize = 64 * 1024;
    let (mut server, agents) = server_with(|c| c.otlp.max_body_bytes = LIMIT).await;
    let client = server.client.clone();
    let (id, t) = agents.start(&client, None).await;
    let before = last_seq(&client, &id).await;

    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    bomb.write_all(&vec![0u8; 32 * 1024 * 1024]).unwrap();
    let bomb = bomb.finish().unwrap();
    assert!(bomb.len() < LIMIT, "the bomb itself is under the cap");
    let oversized = traces(vec![Default::default(); LIMIT / 2]);
    assert!(oversized.len() > LIMIT);
    let cases: Vec<(&str, Option<&str>, Vec<u8>, StatusCode)> = vec![
        (
            PROTOBUF,
            None,
            b"\x0a\xff\xff\xff\xff\x0f".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            JSON,
            None,
            b"{\"resourceSpans\": ".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            JSON,
            None,
            b"{\"resourceSpans\": 5}".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (JSON, None, b"[]".to_vec(), StatusCode::BAD_REQUEST),
        (
            PROTOBUF,
            Some("gzip"),
            b"not gzip".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "text/plain",
            None,
            traces(vec![]),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            PROTOBUF,
            Some("br"),
            traces(vec![]),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (PROTOBUF, None, oversized, StatusCode::PAYLOAD_TOO_LARGE),
        (PROTOBUF, Some("gzip"), bomb, StatusCode::PAYLOAD_TOO_LARGE),
    ];
    for (content_type, encoding, body, expected) in cases {
        let mut headers = vec![("content-type", content_type)];
        headers.extend(encoding.map(|e| ("content-encoding", e)));
        let (status, answer) =
            post_with(&t.endpoint, "/v1/traces", Some(&t.token), &headers, body).await;
        assert_eq!(status, expected, "{content_type} {encoding:?}");
        if content_type == JSON {
            let answer: Value = serde_json::from_slice(&answer).unwrap();
            assert_eq!(
                (&answer["code"], &answer["error"]["code"]),
                (&json!(3), &json!("invalid_request"))
            );
        }
        assert_eq!(
            last_seq(&client, &id).await,
            before,
            "{content_type} {encoding:?}"
        );
    }
    let (url, token) = (t.endpoint.clone(), t.token.clone());
    let line = tokio::task::spawn_blocking(move || post_chunked(&url, &token, 4 * LIMIT))
        .await
        .unwrap();
    assert!(line.starts_with("HTTP/1.1 413"), "{line}");
    assert_eq!(last_seq(&client, &id).await, before);

    let (status, _) = client.get("/health/ready").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = t
        .export(PROTOBUF, traces(vec![span(t.trace_id(), 9, None, "after")]))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(last_seq(&client, &id).await, before + 1);
    t.finish();
    assert_eq!(client.wait_terminal(&id, WAIT).await["status"], "COMPLETED");
    server.stop().await;
}

#[tokio::test]
async fn spans_past_the_budget_are_counted_rejected_and_marked_once() {
    let (mut server, agents) = server_with(|c| c.otlp.max_spans = 3).await;
    let (id, t) = agents.start(&server.client, None).await;
    let five = (1..=5)
        .map(|i| span(t.trace_id(), i, None, &format!("s{i}")))
        .collect();
    let (status, body) = t.export(PROTOBUF, traces(five)).await;
    assert_eq!(status, StatusCode::OK);
    let partial = ExportTraceServiceResponse::decode(&body[..])
        .unwrap()
        .partial_success
        .unwrap();
    assert_eq!(partial.rejected_spans, 2);
    assert!(!partial.error_message.is_empty());
    let events = server.client.all_events(&id).await;
    let names: Vec<Value> = spans_of(&events)
        .iter()
        .map(|s| s["name"].clone())
        .collect();
    assert_eq!(names, [json!("s1"), json!("s2"), json!("s3")]);
    let marker = |events: &[Value]| {
        log_lines(events)
            .iter()
            .filter(|l| l.contains("span budget"))
            .count()
    };
    assert_eq!(marker(&events), 1);
    let metrics = common::scrape(&server.url).await;
    assert_eq!(
        metric(&metrics, "agentnexus_spans_dropped_total"),
        Some(2.0)
    );
    assert_eq!(
        metric(&metrics, "agentnexus_spans_ingested_total"),
        Some(3.0)
    );

    // JSON is answered in JSON; the marker is not repeated.
    let (status, body) = t
        .export(
            JSON,
            json_traces(t.trace_id(), "00000000000000f1", "", "late"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let body: Value = serde_json::from_slice(&body).unwrap();
    // OTLP JSON writes 64-bit integers as strings; readers take numbers too.
    let rejected = &body["partialSuccess"]["rejectedSpans"];
    assert!(rejected == &json!(1) || rejected == &json!("1"), "{body}");
    assert_eq!(marker(&server.client.all_events(&id).await), 1);
    let metrics = common::scrape(&server.url).await;
    assert_eq!(
        metric(&metrics, "agentnexus_spans_dropped_total"),
        Some(3.0)
    );
    t.finish();
    server.client.wait_terminal(&id, WAIT).await;
    server.stop().await;
}

#[tokio::test]
async fn long_attribute_values_are_cut_marked_and_counted() {
    let (mut server, agents) = server_with(|c| c.otlp.max_attribute_bytes = 64).await;
    let (id, t) = agents.start(&server.client, None).await;
    let mut long = span(t.trace_id(), 1, None, "long");
    long.attributes = vec![string("prompt", &"a".repeat(1000)), string("short", "kept")];
    let (status, _) = t.export(PROTOBUF, traces(vec![long])).await;
    assert_eq!(status, StatusCode::OK);
    let spans = spans_of(&server.client.all_events(&id).await);
    let expected = format!("{} … [truncated: 936 more bytes]", "a".repeat(64));
    assert_eq!(
        spans[0]["attributes"],
        json!({"prompt": expected, "short": "kept"})
    );
    let metrics = common::scrape(&server.url).await;
    assert_eq!(
        metric(&metrics, "agentnexus_span_attributes_truncated_total"),
        Some(1.0)
    );
    t.finish();
    server.client.wait_terminal(&id, WAIT).await;
    server.stop().await;
}

#[tokio::test]
async fn an_exceeded_llm_call_budget_stops_the_run_after_saying_80_percent() {
    let (mut server, agents) = budget_server().await;
    let client = server.client.clone();
    let looser = json!({"agentId": "budgeted", "input": {}, "budget": {"maxLlmCalls": 5}});
    let (status, body) = client.post("/api/executions", looser).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request");

    let id = client.submit("budgeted", json!({})).await;
    let t = Telemetry::of(agents.files.path(), &id).await;
    for call in 1..=3 {
        let chat = chat_span(t.trace_id(), call, "gpt-4o", 100, 10);
        let (status, _) = t.export(PROTOBUF, traces(vec![chat])).await;
        assert_eq!(status, StatusCode::OK, "call {call}");
        if call == 2 {
            let running = client.execution(&id).await;
            assert_eq!(
                (&running["status"], &running["usage"]["llmCalls"]),
                (&json!("RUNNING"), &json!(2))
            );
        }
    }
    let failed = client.wait_terminal(&id, WAIT).await;
    assert_eq!(failed["status"], "FAILED", "{failed}");
    assert_eq!(failed["error"]["kind"], "budget_exceeded");
    assert_eq!(failed["error"]["budget"], "maxLlmCalls");
    assert!(
        common::process_is_gone(t.pid),
        "the agent's process is gone"
    );

    let events = client.all_events(&id).await;
    let near = events.iter().position(|e| {
        e["type"] == "log"
            && e["data"]["log"]
                .as_str()
                .unwrap()
                .contains("maxLlmCalls at 80 %")
    });
    let third_call = events
        .iter()
        .position(|e| e["data"]["spanId"] == "0000000000000003");
    assert!(
        near.unwrap() < third_call.unwrap(),
        "said before the limit was passed"
    );
    assert_eq!(statuses(&events).last(), Some(&"FAILED"));
    let last = events.last().unwrap();
    assert_eq!(last["data"]["usage"]["llmCalls"], 3);
    assert_eq!(last["data"]["usage"]["inputTokens"], 300);
    assert_eq!(last["data"]["usage"], failed["usage"]);
    let metrics = common::scrape(&server.url).await;
    let series = r#"agentnexus_budget_exceeded_total{agent_id="budgeted",budget="maxLlmCalls"}"#;
    assert_eq!(metric(&metrics, series), Some(1.0));
    server.stop().await;
}

#[tokio::test]
async fn a_wall_time_budget_stops_a_run_that_reports_nothing() {
    let (mut server, agents) = budget_server().await;
    let (id, t) = agents
        .start(&server.client, Some(json!({"maxWallSecs": 1})))
        .await;
    let failed = server.client.wait_terminal(&id, WAIT).await;
    assert_eq!(
        (&failed["status"], &failed["error"]["kind"]),
        (&json!("FAILED"), &json!("budget_exceeded"))
    );
    assert_eq!(failed["error"]["budget"], "maxWallSecs");
    assert!(common::process_is_gone(t.pid));
    let lines = log_lines(&server.client.all_events(&id).await);
    assert!(
        lines.iter().any(|l| l.contains("maxWallSecs at 80 %")),
        "{lines:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn usage_is_exact_for_priced_models_unknown_for_others_and_unreported_without_telemetry() {
    let (mut server, agents) = server_with(|_| {}).await;
    let client = server.client.clone();

    // gpt-4o at 2.50 input, 1.25 cache read, 10.00 output per million tokens:
    // (10000 × 2.50 + 2345 × 1.25 + 678 × 10) / 10⁶ + (1 × 2.50 + 1 × 10) / 10⁶.
    let (priced, t) = agents.start(&client, None).await;
    let mut cached = chat_span(t.trace_id(), 1, "gpt-4o", 12_345, 678);
    cached.attributes.push(common::otlp::int(
        "gen_ai.usage.cache_read.input_tokens",
        2345,
    ));
    let small = chat_span(t.trace_id(), 2, "gpt-4o", 1, 1);
    let (status, _) = t.export(PROTOBUF, traces(vec![cached, small])).await;
    assert_eq!(status, StatusCode::OK);
    let usage = client.execution(&priced).await["usage"].clone();
    assert_eq!(usage["costUsd"], "0.03472375", "{usage}");
    assert_eq!(
        (
            &usage["inputTokens"],
            &usage["outputTokens"],
            &usage["cacheReadTokens"]
        ),
        (&json!(12_346), &json!(679), &json!(2345))
    );
    assert_eq!(
        (&usage["llmCalls"], &usage["reported"]),
        (&json!(2), &json!(true))
    );
    assert_eq!(usage["byModel"]["gpt-4o"]["costUsd"], "0.03472375");
    t.finish();
    let done = client.wait_terminal(&priced, WAIT).await;
    assert_eq!(done["usage"], usage, "the final usage is the live one");

    let unpriced_calls = |text: &str| {
        metric(
            text,
            r#"agentnexus_genai_unpriced_calls_total{agent_id="otel"}"#,
        )
    };
    assert_eq!(unpriced_calls(&common::scrape(&server.url).await), None);
    let (unpriced, t) = agents.start(&client, None).await;
    let chat = chat_span(t.trace_id(), 1, "my-local-llama", 1000, 10);
    assert_eq!(
        t.export(PROTOBUF, traces(vec![chat])).await.0,
        StatusCode::OK
    );
    t.finish();
    let done = client.wait_terminal(&unpriced, WAIT).await;
    assert_eq!(
        (&done["usage"]["costUsd"], &done["usage"]["reported"]),
        (&Value::Null, &json!(true))
    );
    assert_eq!(
        done["usage"]["byModel"]["my-local-llama"]["costUsd"],
        Value::Null
    );
    assert_eq!(done["usage"]["inputTokens"], 1000);
    assert_eq!(
        unpriced_calls(&common::scrape(&server.url).await),
        Some(1.0)
    );

    let (silent, t) = agents.start(&client, None).await;
    t.finish();
    let done = client.wait_terminal(&silent, WAIT).await;
    assert_eq!(
        (&done["usage"]["reported"], &done["usage"]["costUsd"]),
        (&json!(false), &Value::Null)
    );
    assert_eq!(done["usage"]["llmCalls"], 0);
    let final_status = client.all_events(&silent).await.last().unwrap().clone();
    assert_eq!(
        final_status["data"]["usage"],
        Value::Null,
        "no usage where none was reported"
    );
    server.stop().await;
}

#[tokio::test]
async fn every_export_answered_ok_is_in_the_stream_and_the_final_usage() {
    let (mut server, agents) = server_with(|_| {}).await;
    let client = server.client.clone();
    let (id, t) = agents.start(&client, None).await;
    let t = std::sync::Arc::new(t);
    let exporter = t.clone();
    // Exports one LLM call after another until one is refused, as the run ends under them.
    let exports = tokio::spawn(async move {
        let mut accepted = 0;
        loop {
            let chat = chat_span(exporter.trace_id(), accepted + 1, "gpt-4o", 10, 1);
            let (status, _) = exporter.export(PROTOBUF, traces(vec![chat])).await;
            if status != StatusCode::OK {
                return (accepted, status);
            }
            accepted += 1;
        }
    });
    while client.execution(&id).await["usage"]["llmCalls"]
        .as_u64()
        .unwrap()
        < 20
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t.finish();
    let (accepted, refused) = exports.await.unwrap();
    assert_eq!(refused, StatusCode::UNAUTHORIZED);
    let done = client.wait_terminal(&id, WAIT).await;
    let spans = spans_of(&client.all_events(&id).await);
    assert_eq!(
        spans.len() as u64,
        accepted + 1,
        "each accepted span, and the root span"
    );
    assert_eq!(done["usage"]["llmCalls"], json!(accepted), "{done}");
    server.stop().await;
}

#[tokio::test]
async fn an_agent_may_name_itself_and_pace_its_exports_but_not_redirect_them() {
    let files = tempfile::tempdir().unwrap();
    let mut agent = common::otlp::otel_agent("otel", files.path());
    let agentnexus::domain::Runtime::Process { env, .. } = &mut agent.runtime else {
        unreachable!("a shell agent")
    };
    for (key, value) in [
        ("OTEL_SERVICE_NAME", "my-agent"),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://elsewhere.example:4318",
        ),
        ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20mine"),
        (
            "TRACEPARENT",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
    ] {
        env.insert(key.into(), value.into());
    }
    let mut server = common::TestServer::start(vec![agent]).await;
    let client = server.client.clone();
    let id = client.submit("otel", json!({})).await;
    let t = Telemetry::of(files.path(), &id).await;
    let given = std::fs::read_to_string(files.path().join(format!("{id}.env"))).unwrap();
    assert!(
        given.lines().any(|l| l == "OTEL_SERVICE_NAME=my-agent"),
        "{given}"
    );
    assert!(
        given.lines().any(|l| l == "OTEL_BSP_SCHEDULE_DELAY=200"),
        "{given}"
    );
    assert_eq!(
        t.endpoint, server.url,
        "the runtime's endpoint, not the agent's"
    );
    assert_ne!(t.token, "mine");
    assert!(
        !t.traceparent.contains("0af7651916cd43dd8448eb211c80319c"),
        "{}",
        t.traceparent
    );
    let (status, _) = t
        .export(PROTOBUF, traces(vec![span(t.trace_id(), 1, None, "step")]))
        .await;
    assert_eq!(status, StatusCode::OK);
    t.finish();
    client.wait_terminal(&id, WAIT).await;
    server.stop().await;
}
