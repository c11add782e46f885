//! Metric series stay bounded whatever clients send: no label value comes from client input, a
//! deleted agent's series are gone, a (re)defined agent's revenue gauge equals the API's figure
//! at once. The series count follows the formula in docs/monitoring.md.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{TestServer, scrape, sh_agent};
use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const WAIT: Duration = Duration::from_secs(60);

/// Series of one agent: `executions_total` per user, 3 status counters, 3 duration histograms
/// of 14 buckets + `+Inf` + `_sum` + `_count`, the running gauge and the revenue gauge.
fn per_agent(users: usize) -> usize {
    users + 3 + 3 * 17 + 1 + 1
}

/// Every sample line: (name, labels).
fn series(text: &str) -> Vec<(String, BTreeMap<String, String>)> {
    common::prometheus::samples(text).into_keys().collect()
}

fn with_label<'a>(
    all: &'a [(String, BTreeMap<String, String>)],
    label: &str,
    value: &str,
) -> Vec<&'a (String, BTreeMap<String, String>)> {
    all.iter()
        .filter(|(_, l)| l.get(label).map(String::as_str) == Some(value))
        .collect()
}

fn gauge(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (head, value) = line.rsplit_once(' ')?;
        let (n, rest) = head.split_once('{')?;
        let matches = n == name
            && labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        matches.then(|| value.parse().unwrap())
    })
}

/// A small deterministic generator of junk (xorshift), so a failure can be replayed.
struct Junk(u64);

impl Junk {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `len` characters from `alphabet`.
    fn word(&mut self, alphabet: &str, len: usize) -> String {
        let chars: Vec<char> = alphabet.chars().collect();
        (0..len)
            .map(|_| chars[self.next() as usize % chars.len()])
            .collect()
    }

    fn token(&mut self) -> String {
        let len = 3 + self.next() as usize % 12;
        self.word(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~",
            len,
        )
    }

    fn hex(&mut self) -> String {
        self.word("0123456789abcdef", 16)
    }
}

/// One round of hostile traffic: made-up methods, paths, queries, headers, hosts, origins, bodies,
/// broken HTTP, and WebSocket junk. Every kind of request is sent in every round, each time with
/// fresh random values: a first round may add the bounded set of series its kinds of answers
/// make; a second one must add none.
async fn hostile_round(url: &str, junk: &mut Junk) {
    let http = reqwest::Client::new();
    let host = url.trim_start_matches("http://").to_owned();
    for _ in 0..20 {
        let method = Method::from_bytes(junk.token().as_bytes()).unwrap();
        let lower = Method::from_bytes(b"get").unwrap();
        let paths = [
            "/health".to_owned(),
            format!("/{}", junk.hex()),
            format!("/api/agents/{}", junk.hex()),
            format!("/api/executions/{}", junk.hex()),
            format!("/api/executions/{}/events?since={}", junk.hex(), junk.hex()),
            format!("/api/{}/{}/{}", junk.hex(), junk.hex(), junk.hex()),
        ];
        for path in &paths {
            for m in [method.clone(), lower.clone(), Method::GET] {
                let _ = http.request(m, format!("{url}{path}")).send().await;
            }
        }
        let name = junk.word("abcdefghijklmnopqrstuvwxyz", 10);
        let status = http
            .get(format!("{url}/health"))
            .header(format!("x-{name}"), junk.hex())
            .header("accept", junk.hex())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::OK);
        let _ = http
            .get(format!("{url}/metrics"))
            .header("accept", format!("application/{}", junk.hex()))
            .send()
            .await;
        let _ = http
            .get(format!("{url}/api/executions?status={}", junk.hex()))
            .send()
            .await;
        let _ = http
            .post(format!("{url}/api/executions"))
            .header("content-type", format!("text/{}", junk.hex()))
            .body(junk.hex())
            .send()
            .await;
        let _ = http
            .post(format!("{url}/api/executions"))
            .json(&json!({"agentId": junk.hex(), "input": {}}))
            .send()
            .await;
        let _ = http
            .get(format!("{url}/api/agents"))
            .header("host", format!("{}.example:1", junk.hex()))
            .send()
            .await;
        let _ = http
            .post(format!("{url}/api/agents"))
            .header("origin", format!("http://{}.example", junk.hex()))
            .json(&json!({}))
            .send()
            .await;
        // Not HTTP at all.
        let mut raw = tokio::net::TcpStream::connect(&host).await.unwrap();
        let garbage = format!(
            "{} {} HTTP/9.{}\r\n\r\n",
            junk.token(),
            junk.hex(),
            junk.next()
        );
        raw.write_all(garbage.as_bytes()).await.unwrap();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(WAIT, raw.read_to_end(&mut sink)).await;
    }
    websocket_junk(url, junk).await;
}

async fn websocket_junk(url: &str, junk: &mut Junk) {
    let ws_url = format!("{}/ws", url.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    // Under the rate limit's burst (100), so that the ping below is answered.
    for _ in 0..15 {
        let messages = [
            Message::text(junk.hex()),
            Message::text(json!({"type": junk.token()}).to_string()),
            Message::text(json!({"type": "subscribe", "executionId": junk.hex()}).to_string()),
            Message::text(
                json!({"type": "subscribe", "executionId": format!("exec_01{}", junk.word("0123456789abcdefghjkmnpqrstvwxyz", 24))})
                    .to_string(),
            ),
            Message::binary(junk.hex().into_bytes()),
        ];
        for message in messages {
            ws.send(message).await.unwrap();
        }
    }
    ws.send(Message::text(json!({"type": "ping"}).to_string()))
        .await
        .unwrap();
    // Everything sent before the ping has been handled once the pong is here.
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no pong");
        let frame = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
        let frame = frame.expect("the server keeps the connection").unwrap();
        if let Message::Text(text) = frame {
            if serde_json::from_str::<Value>(&text).unwrap()["type"] == "pong" {
                break;
            }
        }
    }
    let _ = ws.close(None).await;
    // An upgrade from a foreign origin and one with made-up subprotocols.
    let mut request = ws_url.as_str().into_client_request().unwrap();
    let origin = format!("http://{}.example", junk.hex());
    request
        .headers_mut()
        .insert("origin", origin.parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_err());
    let mut request = ws_url.as_str().into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        junk.word("abcdefghijklmnopqrstuvwxyz", 8).parse().unwrap(),
    );
    if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(request).await {
        let _ = ws.close(None).await;
    }
}

const STANDARD_METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "other",
];
const ROUTES: [&str; 14] = [
    "/api/agents",
    "/api/agents/{id}",
    "/api/agents/{id}/revenue",
    "/api/executions",
    "/api/executions/{id}",
    "/api/executions/{id}/cancel",
    "/api/executions/{id}/events",
    "/health",
    "/health/live",
    "/health/ready",
    "/ws",
    "/metrics",
    "/metrics/json",
    "unmatched",
];

/// Every label value of every series is one the server chose: a standard method or `other`, a
/// route template, an agent that is defined, a user from the configuration.
fn assert_no_client_values(text: &str, agents: &[&str]) {
    for (name, labels) in series(text) {
        for (label, value) in &labels {
            let known = match label.as_str() {
                "method" => STANDARD_METHODS.contains(&value.as_str()),
                "route" => ROUTES.contains(&value.as_str()),
                "status" => value.chars().all(|c| c.is_ascii_alphanumeric()) && value.len() <= 9,
                "agent_id" => agents.contains(&value.as_str()),
                "agent_name" => agents.iter().any(|a| *value == format!("Agent {a}")),
                "user_id" => value == "local",
                "le" | "execution_id" => true,
                other => panic!("unexpected label {other} on {name}"),
            };
            assert!(
                known,
                "{name}: {label}=\"{value}\" did not come from the server"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_burst_adds_no_series() {
    let server = TestServer::start(vec![sh_agent("a", "7", "echo '{\"ok\": true}'")]).await;
    let id = server.client.submit("a", json!({})).await;
    server.client.wait_terminal(&id, WAIT).await;
    let seed = 0x9E37_79B9_7F4A_7C15 ^ std::process::id() as u64;
    println!("junk seed {seed:#x}");
    let mut junk = Junk(seed);

    hostile_round(&server.url, &mut junk).await;
    let before = scrape(&server.url).await;
    assert_no_client_values(&before, &["a"]);
    hostile_round(&server.url, &mut junk).await;
    hostile_round(&server.url, &mut junk).await;
    let after = scrape(&server.url).await;
    assert_no_client_values(&after, &["a"]);

    let (before, after) = (series(&before), series(&after));
    let names = |s: &[(String, BTreeMap<String, String>)]| -> BTreeSet<String> {
        s.iter().map(|(n, l)| format!("{n}{l:?}")).collect()
    };
    let added: Vec<String> = names(&after).difference(&names(&before)).cloned().collect();
    assert!(added.is_empty(), "hostile traffic added series: {added:#?}");
    assert_eq!(before.len(), after.len());
    // The formula of docs/monitoring.md: 38 + 56·A + A·U + 2·R + H + G, here with one agent,
    // one user (open mode), nothing running and no telemetry (G = 0); H is 1 per (method,
    // route, status) and 15 per (method, route) seen.
    assert_eq!(with_label(&after, "agent_id", "a").len(), per_agent(1));
    assert!(after.iter().all(|(_, l)| !l.contains_key("execution_id")));
    let http: Vec<_> = after
        .iter()
        .filter(|(n, _)| n.starts_with("agentnexus_http_"))
        .collect();
    let pairs: BTreeSet<_> = http
        .iter()
        .map(|(_, l)| (&l["method"], &l["route"]))
        .collect();
    let triples = http
        .iter()
        .filter(|(n, _)| n == "agentnexus_http_requests_total")
        .count();
    assert_eq!(http.len(), triples + 15 * pairs.len());
    assert_eq!(after.len(), 38 + 56 + 1 + http.len());
}

async fn define(server: &TestServer, id: &str, name: &str, price: &str, script: &str) {
    let (status, body) = server
        .client
        .post(
            "/api/agents",
            json!({"id": id, "name": name, "priceWei": price,
                   "runtime": {"type": "process", "command": "sh", "args": ["-c", script]}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn api_revenue(server: &TestServer, id: &str) -> f64 {
    let (status, body) = server
        .client
        .get(&format!("/api/agents/{id}/revenue"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["revenueWei"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_agent_leaves_no_series_and_a_redefined_one_shows_its_revenue_at_once() {
    let server = TestServer::start(vec![]).await;
    define(&server, "x", "Old name", "12", "echo done").await;
    let id = server.client.submit("x", json!({})).await;
    assert_eq!(
        server.client.wait_terminal(&id, WAIT).await["status"],
        "COMPLETED"
    );
    let text = scrape(&server.url).await;
    let revenue = "agentnexus_agent_revenue_wei";
    assert_eq!(gauge(&text, revenue, &[("agent_id", "x")]), Some(12.0));
    assert_eq!(
        with_label(&series(&text), "agent_id", "x").len(),
        per_agent(1)
    );

    let (status, _) = server.client.delete("/api/agents/x").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let text = scrape(&server.url).await;
    assert_eq!(
        with_label(&series(&text), "agent_id", "x"),
        Vec::<&_>::new()
    );

    // The same id under another name: the old name's series stay gone, and the revenue gauge
    // shows the id's lifetime revenue — the API's figure — from the first scrape.
    define(&server, "x", "New name", "5", "echo done").await;
    let text = scrape(&server.url).await;
    let all = series(&text);
    assert_eq!(with_label(&all, "agent_name", "Old name"), Vec::<&_>::new());
    assert_eq!(with_label(&all, "agent_id", "x").len(), per_agent(1));
    assert_eq!(api_revenue(&server, "x").await, 12.0);
    assert_eq!(
        gauge(
            &text,
            revenue,
            &[("agent_id", "x"), ("agent_name", "New name")]
        ),
        Some(12.0)
    );
    let id = server.client.submit("x", json!({})).await;
    server.client.wait_terminal(&id, WAIT).await;
    let text = scrape(&server.url).await;
    assert_eq!(api_revenue(&server, "x").await, 17.0);
    assert_eq!(gauge(&text, revenue, &[("agent_id", "x")]), Some(17.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_outliving_its_agent_brings_no_series_back() {
    let server = TestServer::start(vec![]).await;
    let gate = server.dir.path().join("go");
    let script = format!(
        "while [ ! -f {} ]; do sleep 0.05; done; echo done",
        gate.display()
    );
    define(&server, "y", "First", "3", &script).await;
    let first = server.client.submit("y", json!({})).await;
    server.client.wait_status(&first, "RUNNING", WAIT).await;
    let running = "agentnexus_agent_running_executions";
    let text = scrape(&server.url).await;
    assert_eq!(gauge(&text, running, &[("agent_id", "y")]), Some(1.0));

    // Deleted while it runs: its series go at once and stay gone after it completes.
    let (status, _) = server.client.delete("/api/agents/y").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let text = scrape(&server.url).await;
    assert_eq!(gauge(&text, running, &[("agent_id", "y")]), None);
    std::fs::write(&gate, "").unwrap();
    server.client.wait_terminal(&first, WAIT).await;
    let text = scrape(&server.url).await;
    assert_eq!(
        with_label(&series(&text), "agent_id", "y"),
        Vec::<&_>::new()
    );

    // Defined again while an execution of the old definition still runs: the running gauge
    // counts it at once, and its completion reaches the revenue gauge as it reaches the API.
    std::fs::remove_file(&gate).unwrap();
    define(&server, "z", "Zed", "4", &script).await;
    let old = server.client.submit("z", json!({})).await;
    server.client.wait_status(&old, "RUNNING", WAIT).await;
    assert_eq!(
        server.client.delete("/api/agents/z").await.0,
        StatusCode::NO_CONTENT
    );
    define(&server, "z", "Zed again", "9", "echo done").await;
    let text = scrape(&server.url).await;
    assert_eq!(
        gauge(&text, running, &[("agent_name", "Zed again")]),
        Some(1.0)
    );
    std::fs::write(&gate, "").unwrap();
    server.client.wait_terminal(&old, WAIT).await;
    let text = scrape(&server.url).await;
    assert_eq!(
        gauge(&text, running, &[("agent_name", "Zed again")]),
        Some(0.0)
    );
    let revenue = "agentnexus_agent_revenue_wei";
    assert_eq!(api_revenue(&server, "z").await, 4.0);
    assert_eq!(
        gauge(&text, revenue, &[("agent_name", "Zed again")]),
        Some(4.0)
    );
    assert_eq!(
        with_label(&series(&text), "agent_name", "Zed"),
        Vec::<&_>::new()
    );
    assert_eq!(
        with_label(&series(&text), "agent_id", "y"),
        Vec::<&_>::new()
    );
}
