//! Bad input gets a 4xx JSON error with a stable code, and changes nothing.

mod common;

use common::{Client, TestServer, sh_agent};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// What a bad request must not change: the agents and the executions.
async fn snapshot(client: &Client) -> (Value, Value) {
    let (_, agents) = client.get("/api/agents").await;
    let (_, executions) = client.get("/api/executions?limit=1000").await;
    (agents, executions)
}

fn assert_error(status: StatusCode, body: &Value, want_status: StatusCode, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(
        !body["error"]["message"].as_str().unwrap().is_empty(),
        "{body}"
    );
}

async fn server() -> TestServer {
    let mut agent = sh_agent("strict", "10", "echo '{}'");
    agent.input_schema = Some(json!({
        "type": "object",
        "properties": { "n": { "type": "integer" } },
        "required": ["n"],
        "additionalProperties": false
    }));
    let server = TestServer::start_with(vec![agent], |c| c.max_body_bytes = 64 * 1024).await;
    // One real execution, so "nothing changed" is checked against a non-empty state.
    let id = server.client.submit("strict", json!({"n": 1})).await;
    server
        .client
        .wait_terminal(&id, std::time::Duration::from_secs(20))
        .await;
    server
}

/// A request (what it tests, path, content type, body) and the status and code it must get.
type Case<'a> = (&'a str, &'a str, &'a str, Vec<u8>, StatusCode, &'a str);

#[tokio::test]
async fn every_bad_request_is_refused_without_changing_anything() {
    let server = server().await;
    let client = &server.client;
    let before = snapshot(client).await;
    let big = "x".repeat(100 * 1024);
    let cases: Vec<Case> = vec![
        // (what, path, content type, body, status, code)
        ("malformed JSON", "/api/executions", "application/json", b"{\"agentId\": ".to_vec(), StatusCode::BAD_REQUEST, "invalid_json"),
        ("not JSON at all", "/api/executions", "application/json", b"hello".to_vec(), StatusCode::BAD_REQUEST, "invalid_json"),
        ("unknown field", "/api/executions", "application/json", br#"{"agentId": "strict", "input": {"n": 1}, "priority": 9}"#.to_vec(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("wrong type", "/api/executions", "application/json", br#"{"agentId": 42, "input": {"n": 1}}"#.to_vec(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("missing agentId", "/api/executions", "application/json", br#"{"input": {"n": 1}}"#.to_vec(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("unknown agent", "/api/executions", "application/json", br#"{"agentId": "ghost", "input": {}}"#.to_vec(), StatusCode::NOT_FOUND, "agent_not_found"),
        ("invalid agent id", "/api/executions", "application/json", br#"{"agentId": "../etc", "input": {}}"#.to_vec(), StatusCode::BAD_REQUEST, "invalid_id"),
        ("schema violation", "/api/executions", "application/json", br#"{"agentId": "strict", "input": {"n": "one"}}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY, "input_rejected"),
        ("schema: missing required", "/api/executions", "application/json", br#"{"agentId": "strict", "input": {}}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY, "input_rejected"),
        ("both input names", "/api/executions", "application/json", br#"{"agentId": "strict", "input": {"n": 1}, "inputData": {"n": 1}}"#.to_vec(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("oversized body", "/api/executions", "application/json", format!(r#"{{"agentId": "strict", "input": {{"n": 1, "pad": "{big}"}}}}"#).into_bytes(), StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        ("no JSON content type", "/api/executions", "text/plain", br#"{"agentId": "strict", "input": {"n": 1}}"#.to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        ("agent: price as a number", "/api/agents", "application/json", br#"{"id": "a1", "name": "A", "priceWei": 5, "runtime": {"type": "process", "command": "true"}}"#.to_vec(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("agent: fractional price", "/api/agents", "application/json", br#"{"id": "a1", "name": "A", "priceWei": "1.5", "runtime": {"type": "process", "command": "true"}}"#.to_vec(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("agent: negative price", "/api/agents", "application/json", br#"{"id": "a1", "name": "A", "priceWei": "-1", "runtime": {"type": "process", "command": "true"}}"#.to_vec(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("agent: bad id", "/api/agents", "application/json", br#"{"id": "a b/c", "name": "A", "priceWei": "1", "runtime": {"type": "process", "command": "true"}}"#.to_vec(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("agent: unknown runtime", "/api/agents", "application/json", br#"{"id": "a1", "name": "A", "priceWei": "1", "runtime": {"type": "vm", "command": "true"}}"#.to_vec(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("agent: invalid schema", "/api/agents", "application/json", br#"{"id": "a1", "name": "A", "priceWei": "1", "inputSchema": {"type": 12}, "runtime": {"type": "process", "command": "true"}}"#.to_vec(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("agent: zero timeout", "/api/agents", "application/json", br#"{"id": "a1", "name": "A", "priceWei": "1", "timeoutSecs": 0, "runtime": {"type": "process", "command": "true"}}"#.to_vec(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("agent: duplicate id", "/api/agents", "application/json", br#"{"id": "strict", "name": "A", "priceWei": "1", "runtime": {"type": "process", "command": "true"}}"#.to_vec(), StatusCode::CONFLICT, "conflict"),
    ];
    for (what, path, content_type, body, status, code) in cases {
        let (got_status, got) = client.post_raw(path, content_type, body).await;
        assert_eq!(got_status, status, "{what}: {got}");
        assert_error(got_status, &got, status, code);
        assert_eq!(snapshot(client).await, before, "{what} changed the state");
    }
}

#[tokio::test]
async fn bad_ids_and_queries_in_urls_are_refused() {
    let server = server().await;
    let client = &server.client;
    let before = snapshot(client).await;
    let cases = [
        (
            "GET",
            "/api/executions/not-an-id",
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "GET",
            "/api/executions/exec_01m8f7zyfx1pgmq6mcqh9jyvq8",
            StatusCode::NOT_FOUND,
            "execution_not_found",
        ),
        (
            "POST",
            "/api/executions/exec_01m8f7zyfx1pgmq6mcqh9jyvq8/cancel",
            StatusCode::NOT_FOUND,
            "execution_not_found",
        ),
        (
            "GET",
            "/api/executions/exec_01m8f7zyfx1pgmq6mcqh9jyvq8/events",
            StatusCode::NOT_FOUND,
            "execution_not_found",
        ),
        (
            "GET",
            "/api/agents/ghost",
            StatusCode::NOT_FOUND,
            "agent_not_found",
        ),
        (
            "GET",
            "/api/agents/bad%20id",
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "GET",
            "/api/agents/ghost/revenue",
            StatusCode::NOT_FOUND,
            "agent_not_found",
        ),
        (
            "DELETE",
            "/api/agents/ghost",
            StatusCode::NOT_FOUND,
            "agent_not_found",
        ),
        (
            "DELETE",
            "/api/agents/strict",
            StatusCode::CONFLICT,
            "conflict",
        ),
        (
            "GET",
            "/api/executions?status=DONE",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "GET",
            "/api/executions?limit=0",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "GET",
            "/api/executions?limit=many",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "GET",
            "/api/executions?cursor=-4",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "GET",
            "/api/executions?colour=red",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "GET",
            "/api/nothing-here",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "PUT",
            "/api/agents",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    let http = reqwest::Client::new();
    for (method, path, status, code) in cases {
        let response = http
            .request(method.parse().unwrap(), format!("{}{path}", client.url))
            .send()
            .await
            .unwrap();
        let got_status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_error(got_status, &body, status, code);
        assert_eq!(
            snapshot(client).await,
            before,
            "{method} {path} changed the state"
        );
    }
    // The events endpoint checks its query too.
    let (_, page) = client.get("/api/executions?limit=1").await;
    let id = page["executions"][0]["executionId"].as_str().unwrap();
    for query in ["since=-1", "since=abc", "limit=0", "limit=100000"] {
        let (status, body) = client
            .get(&format!("/api/executions/{id}/events?{query}"))
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_query");
    }
}

/// Found by the fuzzer: extractors that answer before a handler runs (a path segment that is not
/// UTF-8, a request to `/ws` that is not a WebSocket upgrade) answered in plain text.
#[tokio::test]
async fn requests_refused_before_the_handler_get_the_json_error_shape() {
    let server = server().await;
    let client = &server.client;
    let before = snapshot(client).await;
    let cases = [
        ("GET", "/api/agents/%FF", "invalid_id"),
        ("GET", "/api/agents/%C3%28/revenue", "invalid_id"),
        ("DELETE", "/api/agents/%FF", "invalid_id"),
        ("GET", "/api/executions/%FF", "invalid_id"),
        ("POST", "/api/executions/%FF/cancel", "invalid_id"),
        ("GET", "/api/executions/%E2%82/events", "invalid_id"),
        ("GET", "/ws", "invalid_request"),
    ];
    let http = reqwest::Client::new();
    for (method, path, code) in cases {
        let response = http
            .request(method.parse().unwrap(), format!("{}{path}", client.url))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(content_type, "application/json", "{method} {path}");
        let body: Value = response.json().await.unwrap();
        assert_error(status, &body, StatusCode::BAD_REQUEST, code);
        assert_eq!(
            snapshot(client).await,
            before,
            "{method} {path} changed the state"
        );
    }
    // An upgrade missing only its key is refused the same way.
    let response = http
        .get(format!("{}/ws", client.url))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
}
