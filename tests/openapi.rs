//! The API is described: `/api/openapi.json` lists exactly the routes the router serves, and
//! every answer of the real server — successes and errors alike — matches what the document says
//! for its operation and status (content type and JSON Schema). Fixes for what the fuzzer
//! (`scripts/schemathesis.sh`) found are pinned here too.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentnexus::api::{self, AppState, Auth, Mode, SitePolicy};
use agentnexus::config::ApiKey;
use agentnexus::runtime::Runtime;
use common::{TestServer, sh_agent, test_config};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "openapi-admin-key-0123456789";
const USER: &str = "openapi-user-key-0123456789";

/// The operation methods of OpenAPI, but HEAD (axum answers it wherever GET is served).
const METHODS: [&str; 7] = ["GET", "PUT", "POST", "DELETE", "OPTIONS", "PATCH", "TRACE"];

async fn document(url: &str) -> Value {
    let response = reqwest::get(format!("{url}/api/openapi.json"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    response.json().await.unwrap()
}

/// The route templates of the real router. axum has no route list; its `Debug` shows the
/// templates (its own nesting and fallback helpers aside).
async fn router_paths() -> BTreeSet<String> {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let backends = agentnexus::server::open_backends(&config).await.unwrap();
    let runtime = Runtime::start(&config, backends).await.unwrap();
    let state = AppState {
        runtime: runtime.clone(),
        auth: Arc::new(Auth::from_config(&config).unwrap()),
        health: Arc::new(config.health.clone()),
        started: Instant::now(),
        draining: CancellationToken::new(),
        closing: CancellationToken::new(),
        websocket: Arc::new(config.websocket.clone()),
        connections: Arc::default(),
        sites: Arc::new(SitePolicy::new(&config, Mode::Open, 0).unwrap()),
        otlp: Arc::new(agentnexus::api::otlp::OtlpIngest::new(&config.otlp)),
    };
    let debug = format!("{:?}", api::router(state, config.max_body_bytes));
    runtime.shutdown(Duration::from_secs(1)).await;
    // Only the routes proper, not the fallback router's.
    let routes = debug.split("fallback_router").next().unwrap();
    routes
        .split("RouteId(")
        .skip(1)
        .filter_map(|part| part.split_once("): \"").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_once('"').map(|(path, _)| path.to_owned()))
        .filter(|path| !path.contains("__private__axum"))
        .collect()
}

/// `template` with every `{param}` replaced by a harmless value (for a console asset, one that
/// exists).
fn concrete(template: &str) -> String {
    template
        .replace("{id}", "probe")
        .replace("{name}", "app.js")
}

/// Whether the server serves `method` on `path`: anything but the router's own 404 and 405.
async fn served(url: &str, method: &str, path: &str) -> bool {
    let response = reqwest::Client::new()
        .request(
            Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{url}{path}"),
        )
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    !matches!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "not_found")
            | (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    )
}

#[tokio::test]
async fn the_document_lists_exactly_the_routes_and_methods_the_router_serves() {
    let server = TestServer::start(vec![]).await;
    let doc = document(&server.url).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    let documented: BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    let routed = router_paths().await;
    assert!(
        routed.len() >= 14,
        "too few routes read from the router: {routed:?}"
    );
    assert_eq!(
        routed, documented,
        "routes (left) and documented paths (right) differ"
    );
    for (template, item) in doc["paths"].as_object().unwrap() {
        let path = concrete(template);
        for method in METHODS {
            let is_documented = item.get(method.to_lowercase()).is_some();
            assert_eq!(
                served(&server.url, method, &path).await,
                is_documented,
                "{method} {template}: served by the router vs. documented"
            );
        }
    }
}

/// A response of the real server, checked against the document.
struct Answer {
    status: StatusCode,
    content_type: Option<String>,
    body: String,
}

struct Api {
    url: String,
    doc: Value,
    http: reqwest::Client,
}

impl Api {
    /// Sends a request with an API key and a JSON body, and checks the answer.
    async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut request = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.url));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.check(request).await
    }

    /// Sends `request` and checks the answer against the document's operation for it.
    async fn check(&self, request: reqwest::RequestBuilder) -> Answer {
        let request = request.build().unwrap();
        let (method, path) = (
            request.method().to_string(),
            request.url().path().to_owned(),
        );
        let response = self.http.execute(request).await.unwrap();
        let answer = Answer {
            status: response.status(),
            content_type: response
                .headers()
                .get(CONTENT_TYPE)
                .map(|v| v.to_str().unwrap().into()),
            body: response.text().await.unwrap(),
        };
        self.conforms(&method, &self.template(&path), &answer);
        answer
    }

    /// The document's path template that `path` is an instance of.
    fn template(&self, path: &str) -> String {
        let segments: Vec<&str> = path.split('/').collect();
        let fits = |template: &&String| {
            let parts: Vec<&str> = template.split('/').collect();
            parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| t.starts_with('{') || t == s)
        };
        let paths = self.doc["paths"].as_object().unwrap();
        // A literal segment beats a parameter (`/api/openapi.json` is no agent).
        let mut candidates: Vec<&String> = paths.keys().filter(fits).collect();
        candidates.sort_by_key(|t| t.matches('{').count());
        let template = candidates
            .first()
            .unwrap_or_else(|| panic!("{path}: no documented path"));
        (*template).clone()
    }

    fn conforms(&self, method: &str, template: &str, answer: &Answer) {
        let what = format!("{method} {template} → {} {}", answer.status, answer.body);
        let operation = &self.doc["paths"][template][method.to_lowercase()];
        assert!(
            operation.is_object(),
            "{what}: no such operation in the document"
        );
        let response = &operation["responses"][answer.status.as_str()];
        assert!(response.is_object(), "{what}: status not documented");
        let Some(content) = response.get("content") else {
            assert!(
                answer.body.is_empty(),
                "{what}: a body where none is documented"
            );
            return;
        };
        let media_type = answer.content_type.as_deref().unwrap_or_default();
        let media_type = media_type.split(';').next().unwrap().trim();
        let Some(schema) = content.get(media_type).map(|c| &c["schema"]) else {
            panic!("{what}: content type {media_type:?} not documented");
        };
        if media_type != "application/json" {
            return;
        }
        let body: Value = serde_json::from_str(&answer.body).expect("a JSON body");
        // The response's schema, with the document's components for its `$ref`s to resolve.
        let mut root = schema.clone();
        root["components"] = self.doc["components"].clone();
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&root)
            .unwrap();
        let problems: Vec<String> = validator
            .iter_errors(&body)
            .map(|e| e.to_string())
            .collect();
        assert!(problems.is_empty(), "{what}: {problems:?}");
    }

    /// Runs `(method, path, API key, status)` cases without a body.
    async fn expect(&self, cases: &[(&str, String, Option<&str>, u16)]) {
        for (method, path, key, status) in cases {
            let answer = self.call(method, path, *key, None).await;
            assert_eq!(
                answer.status.as_u16(),
                *status,
                "{method} {path}: {}",
                answer.body
            );
        }
    }

    /// Posts each JSON body to `path` with `key` and expects its status.
    async fn post_each(&self, path: &str, key: &str, cases: Vec<(Value, u16)>) {
        for (body, status) in cases {
            let answer = self.call("POST", path, Some(key), Some(body.clone())).await;
            assert_eq!(answer.status.as_u16(), status, "{body}: {}", answer.body);
        }
    }
}

async fn keyed_server() -> (TestServer, Api) {
    let mut strict = sh_agent(
        "strict",
        "340282366920938463463374607431768211455",
        "exit 3",
    );
    strict.input_schema = Some(json!({"type": "object", "required": ["n"]}));
    let agents = vec![
        sh_agent("quick", "10", "echo '{\"ok\": true}'"),
        sh_agent("sleepy", "0", "sleep 30"),
        strict,
    ];
    let key = |key: &str, user: &str, admin| ApiKey {
        key: key.into(),
        user: user.into(),
        admin,
    };
    let server = TestServer::start_with(agents, |c| {
        c.max_body_bytes = 4096;
        c.api_keys = vec![key(ADMIN, "operator", true), key(USER, "alice", false)];
    })
    .await;
    let api = Api {
        url: server.url.clone(),
        doc: document(&server.url).await,
        http: reqwest::Client::new(),
    };
    (server, api)
}

fn docker_agent(id: &str) -> Value {
    json!({"id": id, "name": "Döcker ✓", "priceWei": "7", "timeoutSecs": 60,
           "inputSchema": {"type": "object"},
           "runtime": {"type": "docker", "image": "agentnexus-test-busybox:1", "cmd": ["true"],
                       "env": {"A": "1"}, "memoryBytes": 67108864, "cpuQuota": 0.5,
                       "pidsLimit": 10, "network": "none", "tmpBytes": 1048576}})
}

#[tokio::test]
async fn agent_operations_answer_as_documented() {
    let (_server, api) = keyed_server().await;
    let big = json!({"pad": "x".repeat(5000)});
    api.post_each(
        "/api/agents",
        ADMIN,
        vec![
            (docker_agent("d1"), 201),
            (docker_agent("d1"), 409),
            (json!({"name": "x"}), 400),
            (big, 413),
        ],
    )
    .await;
    api.post_each("/api/agents", USER, vec![(docker_agent("d2"), 403)])
        .await;
    let (a, u) = (Some(ADMIN), Some(USER));
    let p = str::to_owned;
    api.expect(&[
        ("GET", p("/api/agents"), u, 200),
        ("GET", p("/api/agents"), None, 401),
        ("POST", p("/api/agents"), None, 401),
        ("GET", p("/api/agents/d1"), u, 200),
        ("GET", p("/api/agents/quick"), a, 200),
        ("GET", p("/api/agents/bad%20id"), u, 400),
        ("GET", p("/api/agents/%FF"), u, 400),
        ("GET", p("/api/agents/ghost"), u, 404),
        ("GET", p("/api/agents/quick/revenue"), u, 200),
        ("GET", p("/api/agents/bad%20id/revenue"), u, 400),
        ("GET", p("/api/agents/ghost/revenue"), u, 404),
        ("DELETE", p("/api/agents/d1"), u, 403),
        ("DELETE", p("/api/agents/quick"), a, 409),
        ("DELETE", p("/api/agents/bad%20id"), a, 400),
        ("DELETE", p("/api/agents/d1"), a, 204),
        ("DELETE", p("/api/agents/d1"), a, 404),
    ])
    .await;
    let request = api
        .http
        .post(format!("{}/api/agents", api.url))
        .bearer_auth(ADMIN);
    let request = request.header(CONTENT_TYPE, "text/plain").body("{}");
    assert_eq!(api.check(request).await.status, 415);
}

#[tokio::test]
async fn execution_operations_answer_as_documented() {
    let (server, api) = keyed_server().await;
    api.post_each(
        "/api/executions",
        USER,
        vec![
            (json!({"agentId": "quick", "input": {"a": 1}}), 202),
            (json!({"agentId": "quick", "inputData": [1]}), 202),
            (json!({"agentId": "quick"}), 202),
            (json!({"agentId": "quick", "input": 1, "inputData": 1}), 400),
            (json!({"agentId": "bad id"}), 400),
            (json!({"agentId": "ghost"}), 404),
            (json!({"agentId": "strict", "input": {}}), 422),
            (json!({"agentId": "quick", "input": "x".repeat(5000)}), 413),
        ],
    )
    .await;
    let client = server.client.with_token(USER);
    let done = client.submit("quick", json!({})).await;
    client.wait_terminal(&done, Duration::from_secs(20)).await;
    let running = client.submit("sleepy", json!({})).await;
    client
        .wait_status(&running, "RUNNING", Duration::from_secs(20))
        .await;
    let unknown = "exec_01m8f7zyfx1pgmq6mcqh9jyvq8";
    let (a, u, p) = (Some(ADMIN), Some(USER), str::to_owned);
    api.expect(&[
        ("GET", p("/api/executions"), u, 200),
        ("GET", p("/api/executions?limit=1&status=COMPLETED"), u, 200),
        ("GET", p("/api/executions?limit=0"), u, 400),
        ("GET", p("/api/executions"), None, 401),
        ("GET", format!("/api/executions/{done}"), u, 200),
        ("GET", format!("/api/executions/{done}"), a, 200),
        ("GET", p("/api/executions/nope"), u, 400),
        ("GET", format!("/api/executions/{unknown}"), u, 404),
        ("GET", format!("/api/executions/{done}/events"), u, 200),
        (
            "GET",
            format!("/api/executions/{done}/events?since=2&limit=1"),
            u,
            200,
        ),
        (
            "GET",
            format!("/api/executions/{done}/events?since=-1"),
            u,
            400,
        ),
        ("GET", format!("/api/executions/{unknown}/events"), u, 404),
        ("POST", format!("/api/executions/{done}/cancel"), u, 409),
        ("POST", format!("/api/executions/{running}/cancel"), u, 200),
        ("POST", p("/api/executions/nope/cancel"), u, 400),
        ("POST", format!("/api/executions/{unknown}/cancel"), u, 404),
    ])
    .await;
}

#[tokio::test]
async fn probes_metrics_the_document_and_the_websocket_upgrade_answer_as_documented() {
    let (_server, api) = keyed_server().await;
    let p = str::to_owned;
    api.expect(&[
        ("GET", p("/"), None, 200),
        ("GET", p("/health"), None, 200),
        ("GET", p("/health/live"), None, 200),
        ("GET", p("/health/ready"), None, 200),
        ("GET", p("/metrics"), None, 200),
        ("GET", p("/metrics/json"), None, 200),
        ("GET", p("/api/openapi.json"), None, 200),
        ("GET", p("/ws"), None, 401),
        // A plain GET is not an upgrade.
        ("GET", p("/ws"), Some(USER), 400),
    ])
    .await;
    let accept = "application/openmetrics-text; version=1.0.0";
    let openmetrics = api
        .http
        .get(format!("{}/metrics", api.url))
        .header("accept", accept);
    let answer = api.check(openmetrics).await;
    assert!(
        answer
            .content_type
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    // A foreign browser page may not connect.
    let foreign = api
        .http
        .get(format!("{}/ws", api.url))
        .bearer_auth(USER)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("origin", "http://elsewhere.example");
    assert_eq!(api.check(foreign).await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_root_points_at_the_api_document_the_probes_and_the_metrics() {
    let (_server, api) = keyed_server().await;
    let answer = api.call("GET", "/", None, None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let index: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(index["api"], "/api");
    assert_eq!(index["websocket"], "/ws");
    // Every page it names is there, and needs no key.
    for name in ["openapi", "health", "ready", "metrics"] {
        let path = index[name]
            .as_str()
            .unwrap_or_else(|| panic!("no {name}: {index}"));
        let answer = api.call("GET", path, None, None).await;
        assert_eq!(answer.status, StatusCode::OK, "{name}: {path}");
    }
}

/// Found by the fuzzer: JSON Schema's integers include `5.0`; the server refused them with 400.
#[tokio::test]
async fn integers_written_with_a_zero_fraction_are_integers() {
    let (_server, api) = keyed_server().await;
    let mut agent = docker_agent("floats");
    agent["timeoutSecs"] = json!(60.0);
    agent["runtime"]["memoryBytes"] = json!(67108864.0);
    agent["runtime"]["pidsLimit"] = json!(413308.0);
    agent["runtime"]["tmpBytes"] = json!(1048576.0);
    let answer = api
        .call("POST", "/api/agents", Some(ADMIN), Some(agent))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    let stored: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(stored["timeoutSecs"], json!(60));
    assert_eq!(stored["runtime"]["pidsLimit"], json!(413308));
    // A fraction is still refused, never rounded.
    let mut fractional_timeout = docker_agent("fraction");
    fractional_timeout["timeoutSecs"] = json!(60.5);
    let mut fractional_pids = docker_agent("fraction");
    fractional_pids["runtime"]["pidsLimit"] = json!(10.25);
    for agent in [fractional_timeout, fractional_pids] {
        let answer = api
            .call("POST", "/api/agents", Some(ADMIN), Some(agent))
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
        assert!(answer.body.contains("invalid_request"), "{}", answer.body);
    }
}

/// The document says a name is 1 to 200 characters; the server counted bytes.
#[tokio::test]
async fn an_agent_name_is_measured_in_characters() {
    let (_server, api) = keyed_server().await;
    let mut agent = docker_agent("long-name");
    agent["name"] = json!("é".repeat(200));
    let answer = api
        .call("POST", "/api/agents", Some(ADMIN), Some(agent))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    let mut agent = docker_agent("too-long");
    agent["name"] = json!("é".repeat(201));
    let answer = api
        .call("POST", "/api/agents", Some(ADMIN), Some(agent))
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
}

/// A query parameter's documented schema accepts exactly the values the server accepts (the
/// status filter is read in any case; a cursor is opaque, and not the store's row key).
#[tokio::test]
async fn documented_query_parameters_agree_with_the_server() {
    let (_server, api) = keyed_server().await;
    let parameters = api.doc["paths"]["/api/executions"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let schema_of = |name: &str| {
        let parameter = parameters.iter().find(|p| p["name"] == name).unwrap();
        let mut schema = parameter["schema"].clone();
        schema["components"] = api.doc["components"].clone();
        jsonschema::validator_for(&schema).unwrap()
    };
    let cases = [
        (
            "status",
            vec![
                "PENDING",
                "pending",
                "Running",
                "cAnCeLlEd",
                "DONE",
                "PENDING ",
                "",
            ],
        ),
        (
            "cursor",
            vec![
                "exec_01k6z3y8m4q0c2b7n5v9t1r3x6",
                "exec_01K6Z3Y8M4Q0C2B7N5V9T1R3X6",
                "exec_00000000000000000000000000",
                "EXEC_01k6z3y8m4q0c2b7n5v9t1r3x6",
                "exec_01k6z3y8m4q0c2b7n5v9t1r3x",
                "exec_01k6z3y8m4q0c2b7n5v9t1r3xu",
                "1",
                "9223372036854775807",
                "-4",
                "x",
            ],
        ),
    ];
    for (name, values) in cases {
        let schema = schema_of(name);
        for value in values {
            let documented = schema.is_valid(&json!(value));
            let path = format!("/api/executions?{name}={}", value.replace(' ', "%20"));
            let answer = api.call("GET", &path, Some(USER), None).await;
            assert_eq!(
                answer.status == StatusCode::OK,
                documented,
                "{name}={value:?}: the server answered {} {}",
                answer.status,
                answer.body
            );
        }
    }
}
