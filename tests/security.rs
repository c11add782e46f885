//! Who may drive the server. Without API keys only requests that name it as local and come from
//! no foreign web page reach it (DNS rebinding, other local pages, sandboxed frames are refused
//! before routing, on every route and listener); with keys the key is what counts, from any host.
//! Keys come from the config file, a key file and the environment, in clear or as SHA-256
//! digests, and never appear in a log.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use agentnexus::config::ApiKey;
use common::{LoggedServer, TestServer, sh_agent};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const WAIT: Duration = Duration::from_secs(60);

/// Sends `head` (request line and headers, without the blank line) and `body` over a fresh
/// connection; returns the status and the JSON body (`Null` when there is none).
async fn raw(addr: SocketAddr, head: &str, body: &str) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let length = if body.is_empty() {
        String::new()
    } else {
        format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        )
    };
    let request = format!("{head}\r\n{length}connection: close\r\n\r\n{body}");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn addr(server: &TestServer) -> SocketAddr {
    server.url.trim_start_matches("http://").parse().unwrap()
}

const AGENT_RUNNING_ID: &str = r#"{"id": "pwned", "name": "id", "priceWei": "0", "runtime": {"type": "process", "command": "id"}}"#;

/// Every route, as a browser after DNS rebinding would send it.
fn every_route() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        ("POST", "/api/agents", AGENT_RUNNING_ID),
        ("GET", "/api/agents", ""),
        ("GET", "/api/agents/echo", ""),
        ("DELETE", "/api/agents/echo", ""),
        ("GET", "/api/agents/echo/revenue", ""),
        (
            "POST",
            "/api/executions",
            r#"{"agentId": "echo", "input": {}}"#,
        ),
        ("GET", "/api/executions", ""),
        ("GET", "/api/executions/exec_01m8f7zyfx1pgmq6mcqh9jyvq8", ""),
        (
            "POST",
            "/api/executions/exec_01m8f7zyfx1pgmq6mcqh9jyvq8/cancel",
            "",
        ),
        (
            "GET",
            "/api/executions/exec_01m8f7zyfx1pgmq6mcqh9jyvq8/events",
            "",
        ),
        ("GET", "/", ""),
        ("GET", "/health", ""),
        ("GET", "/health/live", ""),
        ("GET", "/health/ready", ""),
        ("GET", "/metrics", ""),
        ("GET", "/metrics/json", ""),
        ("GET", "/ws", ""),
        ("GET", "/no/such/route", ""),
        ("PATCH", "/api/agents", ""),
    ]
}

async fn open_server() -> TestServer {
    TestServer::start(vec![sh_agent("echo", "1", "cat")]).await
}

async fn agents(server: &TestServer) -> Vec<String> {
    let (status, body) = server.client.get("/api/agents").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn without_keys_a_rebinding_host_is_refused_before_routing_on_every_route() {
    let server = open_server().await;
    let port = addr(&server).port();
    for (method, path, body) in every_route() {
        let head = format!("{method} {path} HTTP/1.1\r\nhost: rebind.attacker.example:{port}");
        let (status, answer) = raw(addr(&server), &head, body).await;
        assert_eq!(status, 421, "{method} {path}: {answer}");
        assert_eq!(answer["error"]["code"], "forbidden_host", "{method} {path}");
    }
    // The agent that would have run `id` was never defined, the echo agent never deleted, and
    // nothing was submitted.
    assert_eq!(agents(&server).await, ["echo"]);
    let (_, list) = server.client.get("/api/executions").await;
    assert_eq!(list["executions"], json!([]));
}

#[tokio::test]
async fn only_loopback_names_in_their_canonical_forms_are_local() {
    let server = open_server().await;
    let port = addr(&server).port();
    let local = [
        format!("localhost:{port}"),
        format!("LOCALHOST:{port}"),
        format!("LocalHost.:{port}"),
        "localhost".to_owned(),
        format!("127.0.0.1:{port}"),
        "127.0.0.1:1".to_owned(),
        format!("127.45.6.7:{port}"),
        format!("[::1]:{port}"),
        format!("[0:0:0:0:0:0:0:1]:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
    ];
    for host in &local {
        let (status, body) = raw(
            addr(&server),
            &format!("GET /api/agents HTTP/1.1\r\nhost: {host}"),
            "",
        )
        .await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    let foreign = [
        format!("localhost.attacker.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
        format!("localhost..:{port}"),
        format!("notlocalhost:{port}"),
        format!("2130706433:{port}"),
        format!("0x7f000001:{port}"),
        format!("0x7f.0.0.1:{port}"),
        format!("127.1:{port}"),
        format!("0177.0.0.1:{port}"),
        format!("0.0.0.0:{port}"),
        format!("[::]:{port}"),
        format!("[::2]:{port}"),
        format!("[::ffff:10.0.0.1]:{port}"),
        format!("::1:{port}"),
        format!("user@localhost:{port}"),
        format!("localhost@attacker.example:{port}"),
        format!("attacker.example@localhost:{port}"),
        format!("localhost:{port}@attacker.example"),
        format!("localhost, attacker.example:{port}"),
        format!("localhost:{port}/x"),
        "localhost:99999".to_owned(),
        "localhost:".to_owned(),
        "".to_owned(),
    ];
    for host in &foreign {
        let head = format!("POST /api/agents HTTP/1.1\r\nhost: {host}");
        let (status, body) = raw(addr(&server), &head, AGENT_RUNNING_ID).await;
        assert_eq!(status, 421, "{host:?}: {body}");
        assert_eq!(body["error"]["code"], "forbidden_host");
    }
    assert_eq!(agents(&server).await, ["echo"]);
}

#[tokio::test]
async fn a_request_that_does_not_name_one_local_host_is_refused() {
    let server = open_server().await;
    let port = addr(&server).port();
    let cases = [
        // No Host at all: HTTP/1.1 requires one, HTTP/1.0 did not, no browser omits it.
        "GET /api/agents HTTP/1.1".to_owned(),
        "GET /api/agents HTTP/1.0".to_owned(),
        // Two, one local.
        format!("GET /api/agents HTTP/1.1\r\nhost: localhost:{port}\r\nhost: attacker.example"),
        // An absolute-form target naming another host than the Host header, either way round.
        format!("GET http://attacker.example:{port}/api/agents HTTP/1.1\r\nhost: localhost:{port}"),
        format!("GET http://localhost:{port}/api/agents HTTP/1.1\r\nhost: attacker.example:{port}"),
        "GET http://attacker.example/api/agents HTTP/1.1\r\nhost: attacker.example".to_owned(),
        "GET http://attacker.example/api/agents HTTP/1.0".to_owned(),
        format!("GET http://user@localhost:{port}/api/agents HTTP/1.1\r\nhost: localhost:{port}"),
    ];
    for head in &cases {
        let (status, body) = raw(addr(&server), head, "").await;
        assert_eq!(status, 421, "{head:?}: {body}");
        assert_eq!(body["error"]["code"], "forbidden_host");
    }
    // The same absolute form naming the server as the Host header does is served.
    let head = format!("GET http://localhost:{port}/api/agents HTTP/1.1\r\nhost: localhost:{port}");
    assert_eq!(raw(addr(&server), &head, "").await.0, 200);
    let head = format!("GET /api/agents HTTP/1.0\r\nhost: 127.0.0.1:{port}");
    assert_eq!(raw(addr(&server), &head, "").await.0, 200);
}

#[tokio::test]
async fn without_keys_only_the_servers_own_pages_may_send_requests() {
    let server = TestServer::start_with(vec![sh_agent("echo", "1", "cat")], |c| {
        c.websocket.allowed_origins = vec!["https://console.example".into()];
    })
    .await;
    let port = addr(&server).port();
    let host = format!("host: localhost:{port}");
    let foreign = [
        "null".to_owned(),
        format!("http://localhost:{}", port + 1),
        "http://localhost".to_owned(),
        format!("https://localhost:{port}"),
        format!("http://rebind.attacker.example:{port}"),
        format!("http://localhost.attacker.example:{port}"),
        "file://".to_owned(),
        "https://console.example.attacker.example".to_owned(),
        "*".to_owned(),
        "".to_owned(),
    ];
    for origin in &foreign {
        let head = format!("POST /api/agents HTTP/1.1\r\n{host}\r\norigin: {origin}");
        let (status, body) = raw(addr(&server), &head, AGENT_RUNNING_ID).await;
        assert_eq!(status, 403, "{origin:?}: {body}");
        assert_eq!(body["error"]["code"], "forbidden_origin");
        // A simple cross-origin POST (no preflight) that would cancel an execution.
        let head = format!(
            "POST /api/executions/exec_01m8f7zyfx1pgmq6mcqh9jyvq8/cancel HTTP/1.1\r\n{host}\r\norigin: {origin}\r\ncontent-type: text/plain"
        );
        assert_eq!(raw(addr(&server), &head, "").await.0, 403, "{origin:?}");
    }
    assert_eq!(agents(&server).await, ["echo"]);
    // The server's own origin (the page a console served here would be), under each local
    // name, and an allowed origin.
    for (i, origin) in [
        format!("http://localhost:{port}"),
        format!("http://127.0.0.1:{port}"),
        format!("http://[::1]:{port}"),
        "https://console.example".to_owned(),
    ]
    .iter()
    .enumerate()
    {
        let agent = format!(
            r#"{{"id": "own{i}", "name": "own", "priceWei": "0", "runtime": {{"type": "process", "command": "true"}}}}"#
        );
        let head = format!("POST /api/agents HTTP/1.1\r\n{host}\r\norigin: {origin}");
        let (status, body) = raw(addr(&server), &head, &agent).await;
        assert_eq!(status, 201, "{origin}: {body}");
    }
}

async fn upgrade(url: &str, headers: &[(&str, &str)]) -> Result<(), u16> {
    let mut request = format!("{}/ws", url.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap();
        request.headers_mut().insert(name, value.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((mut ws, _)) => {
            ws.send_ping_pong().await;
            Ok(())
        }
        Err(WsError::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

trait PingPong {
    async fn send_ping_pong(&mut self);
}

impl<S> PingPong for tokio_tungstenite::WebSocketStream<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    async fn send_ping_pong(&mut self) {
        use futures_util::{SinkExt, StreamExt};
        self.send(Message::text(r#"{"type": "ping"}"#))
            .await
            .unwrap();
        loop {
            let frame = tokio::time::timeout(WAIT, self.next()).await.unwrap();
            if let Some(Ok(Message::Text(text))) = frame {
                assert!(text.contains("pong"), "{text}");
                return;
            }
        }
    }
}

#[tokio::test]
async fn websocket_upgrades_check_origins_against_the_configuration_never_the_host() {
    let server = open_server().await;
    let port = addr(&server).port();
    let rebind_host = format!("rebind.attacker.example:{port}");
    let rebind_origin = format!("http://{rebind_host}");
    // The rebinding page: its Host and Origin agree, as they do for a page's own origin.
    assert_eq!(
        upgrade(
            &server.url,
            &[("host", &rebind_host), ("origin", &rebind_origin)]
        )
        .await,
        Err(421)
    );
    let local = format!("localhost:{port}");
    for origin in [
        rebind_origin.as_str(),
        "null",
        &format!("http://localhost:{}", port + 1),
    ] {
        assert_eq!(
            upgrade(&server.url, &[("host", &local), ("origin", origin)]).await,
            Err(403)
        );
    }
    assert_eq!(upgrade(&server.url, &[]).await, Ok(()));
    let own = format!("http://localhost:{port}");
    assert_eq!(
        upgrade(&server.url, &[("host", &local), ("origin", &own)]).await,
        Ok(())
    );
}

#[tokio::test]
async fn with_keys_a_websocket_origin_is_still_checked_against_the_configuration() {
    // Host is the client's to choose: an Origin that merely agrees with it proves nothing.
    let server = keyed_server().await;
    let port = addr(&server).port();
    let token = ("authorization", "Bearer admin-key-0123456789");
    let evil = format!("evil.example:{port}");
    let evil_origin = format!("http://{evil}");
    assert_eq!(
        upgrade(
            &server.url,
            &[token, ("host", &evil), ("origin", &evil_origin)]
        )
        .await,
        Err(403)
    );
    assert_eq!(
        upgrade(&server.url, &[token, ("host", &evil)]).await,
        Ok(())
    );
    let own = format!("http://127.0.0.1:{port}");
    assert_eq!(
        upgrade(&server.url, &[token, ("origin", &own)]).await,
        Ok(())
    );
}

async fn keyed_server() -> TestServer {
    TestServer::start_with(vec![sh_agent("echo", "1", "cat")], |c| {
        c.api_keys = vec![ApiKey {
            key: "admin-key-0123456789".into(),
            user: "root".into(),
            admin: true,
        }];
    })
    .await
}

#[tokio::test]
async fn with_keys_any_host_works() {
    let server = keyed_server().await;
    for host in [
        "rebind.attacker.example",
        "agents.example.com:443",
        "10.0.0.7:3001",
    ] {
        let head = format!(
            "GET /api/agents HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer admin-key-0123456789"
        );
        assert_eq!(raw(addr(&server), &head, "").await.0, 200, "{host}");
        let head = format!("GET /api/agents HTTP/1.1\r\nhost: {host}");
        assert_eq!(raw(addr(&server), &head, "").await.0, 401, "{host}");
    }
}

#[tokio::test]
async fn allowed_hosts_are_local_names_too_and_the_metrics_listener_checks_them() {
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = TestServer::start_with(vec![], |c| {
        c.allowed_hosts = vec!["agentnexus.test".into(), "192.168.1.9".into()];
        c.metrics_bind = Some(metrics);
    })
    .await;
    let port = addr(&server).port();
    for (host, status) in [
        (format!("agentnexus.test:{port}"), 200),
        (format!("AgentNexus.Test.:{port}"), 200),
        ("192.168.1.9".to_owned(), 200),
        (format!("sub.agentnexus.test:{port}"), 421),
        (format!("agentnexus.test.attacker.example:{port}"), 421),
    ] {
        let head = format!("GET /api/agents HTTP/1.1\r\nhost: {host}");
        assert_eq!(raw(addr(&server), &head, "").await.0, status, "{host}");
    }
    // Pages served under an allowed name on this port are the server's own.
    let head = format!(
        "POST /api/agents HTTP/1.1\r\nhost: agentnexus.test:{port}\r\norigin: http://agentnexus.test:{port}"
    );
    let agent = r#"{"id": "a", "name": "a", "priceWei": "0", "runtime": {"type": "process", "command": "true"}}"#;
    assert_eq!(raw(addr(&server), &head, agent).await.0, 201);

    for (host, status) in [
        (format!("localhost:{}", metrics.port()), 200),
        (format!("agentnexus.test:{}", metrics.port()), 200),
        (format!("rebind.attacker.example:{}", metrics.port()), 421),
    ] {
        let head = format!("GET /metrics HTTP/1.1\r\nhost: {host}");
        assert_eq!(raw(metrics, &head, "").await.0, status, "{host}");
    }
}

// ---------------------------------------------------------------------------------------------
// API keys from outside the config file

fn sha256_hex(key: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

fn keys_toml(entries: &[(&str, &str, bool)]) -> String {
    entries
        .iter()
        .map(|(key, user, admin)| {
            format!("[[api_keys]]\nkey = \"{key}\"\nuser = \"{user}\"\nadmin = {admin}\n")
        })
        .collect()
}

/// Who the server takes `key` for: the user of an execution it submits (`None`: refused).
async fn user_of(url: &str, key: &str) -> Option<String> {
    let client = common::Client::new(url).with_token(key);
    let (status, body) = client
        .post("/api/executions", json!({"agentId": "echo", "input": {}}))
        .await;
    if status == StatusCode::UNAUTHORIZED {
        return None;
    }
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["executionId"].as_str().unwrap();
    let execution = client.execution(id).await;
    Some(execution["userId"].as_str().unwrap().to_owned())
}

const ECHO: &str = "[[agents]]\nid = \"echo\"\nname = \"Echo\"\nprice_wei = \"0\"\nruntime = { type = \"process\", command = \"true\" }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_come_from_the_config_a_key_file_and_the_environment_in_clear_or_hashed() {
    let dir = tempfile::tempdir().unwrap();
    let keys = [
        "file-key-in-clear-0123456789",
        "file-key-hashed-0123456789",
        "env-key-in-clear-0123456789",
        "env-key-hashed-0123456789",
        "config-key-in-clear-0123456789",
    ];
    std::fs::write(
        dir.path().join("secret-keys.toml"),
        keys_toml(&[
            (keys[0], "alice", false),
            (&format!("sha256:{}", sha256_hex(keys[1])), "bob", true),
        ]),
    )
    .unwrap();
    let env_keys = keys_toml(&[
        (keys[2], "carol", false),
        (
            &format!("sha256:{}", sha256_hex(keys[3]).to_uppercase()),
            "dave",
            false,
        ),
    ]);
    let config = common::write_config(
        dir.path(),
        &format!(
            "api_keys_file = \"secret-keys.toml\"\n{}{ECHO}",
            keys_toml(&[(keys[4], "erin", false)])
        ),
    );
    let server = LoggedServer::spawn(&config, &[("AGENTNEXUS_API_KEYS", &env_keys)]);
    for (key, user) in keys.iter().zip(["alice", "bob", "carol", "dave", "erin"]) {
        assert_eq!(
            user_of(&server.url, key).await.as_deref(),
            Some(user),
            "{key}"
        );
    }
    // The digest is not a key; nor is anything else.
    let digest = sha256_hex(keys[1]);
    for wrong in [
        digest.as_str(),
        &format!("sha256:{digest}"),
        "file-key-in-clear-012345678",
        "",
    ] {
        assert_eq!(user_of(&server.url, wrong).await, None, "{wrong}");
    }
    // The browser way, in the query string (a WebSocket upgrade cannot set headers).
    let url = format!("{}/api/agents?token={}", server.url, keys[0]);
    assert_eq!(reqwest::get(url).await.unwrap().status(), StatusCode::OK);
    let log = server.stop();
    assert!(log.contains("agentnexus listening"), "{log}");
    for key in keys {
        assert!(!log.contains(key), "the log shows {key}");
    }
    assert!(!log.contains(&digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_the_environment_alone_protect_a_public_bind() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(dir.path(), ECHO);
    let key = "only-in-the-environment-0123456789";
    let server = LoggedServer::spawn(
        &config,
        &[
            ("AGENTNEXUS_BIND", "0.0.0.0:0"),
            ("AGENTNEXUS_API_KEYS", &keys_toml(&[(key, "ops", true)])),
        ],
    );
    assert_eq!(user_of(&server.url, key).await.as_deref(), Some("ops"));
    assert_eq!(user_of(&server.url, "another-key-0123456789").await, None);
    drop(server);
    // A key file named by the environment works the same way.
    let file = dir.path().join("k.toml");
    let other = "named-by-the-environment-0123456789";
    std::fs::write(&file, keys_toml(&[(other, "eve", false)])).unwrap();
    let server = LoggedServer::spawn(
        &config,
        &[("AGENTNEXUS_API_KEYS_FILE", file.to_str().unwrap())],
    );
    assert_eq!(user_of(&server.url, other).await.as_deref(), Some("eve"));
}

/// Runs `serve` expecting it to refuse its configuration: exit code 2 and the message.
fn refused_config(config: &std::path::Path, env: &[(&str, &str)]) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_agentnexus"));
    command.args(["serve", "--config"]).arg(config);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    stderr
}

#[test]
fn bad_key_sources_are_config_errors_that_name_the_source_and_never_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "a-secret-that-must-not-show-0123";
    let file = dir.path().join("keys.toml");
    let config = common::write_config(dir.path(), "api_keys_file = \"keys.toml\"\n");
    // The key file's content (none: missing), AGENTNEXUS_API_KEYS, what the message names.
    let entry = |rest: &str| format!("[[api_keys]]\nkey = \"{secret}\"\n{rest}");
    let fine = keys_toml(&[("fine-key-0123456789", "u", false)]);
    let cases = [
        (None, None, "api_keys_file"),
        (
            Some(format!("[[api_keys]]\nkey = \"{secret}\nuser = \"u\"")),
            None,
            "keys.toml",
        ),
        (
            Some(entry(&format!("user = \"u\"\nadmin = \"{secret}\""))),
            None,
            "keys.toml",
        ),
        (
            Some(entry("user = \"u\"\nrole = \"x\"")),
            None,
            "unknown field `role`",
        ),
        (
            Some(keys_toml(&[("short", "u", false)])),
            None,
            "keys.toml: api_keys[0]: a key must be at least 16 characters",
        ),
        (
            Some(keys_toml(&[("sha256:1234", "u", false)])),
            None,
            "keys.toml: api_keys[0]",
        ),
        (
            Some(entry("user = \"\"")),
            None,
            "api_keys[0]: user must not be empty",
        ),
        (
            Some(fine.clone()),
            Some(entry("usr = \"u\"")),
            "AGENTNEXUS_API_KEYS",
        ),
        (
            Some(fine.clone()),
            Some(secret.to_owned()),
            "AGENTNEXUS_API_KEYS",
        ),
        (
            Some(keys_toml(&[(secret, "u", false)])),
            Some(keys_toml(&[(secret, "v", true)])),
            "AGENTNEXUS_API_KEYS: api_keys[0]: this key is configured twice",
        ),
    ];
    for (content, env, named) in cases {
        let _ = std::fs::remove_file(&file);
        if let Some(content) = &content {
            std::fs::write(&file, content).unwrap();
        }
        let env: Vec<(&str, &str)> = env
            .iter()
            .map(|v| ("AGENTNEXUS_API_KEYS", v.as_str()))
            .collect();
        let message = refused_config(&config, &env);
        assert!(message.contains(named), "{content:?}: {message}");
        assert!(!message.contains(secret), "{content:?}: {message}");
    }
    // The config file's own entries: the key is not quoted back either.
    for bad in [
        entry(&format!("user = \"u\"\nadmin = \"{secret}\"\n")),
        format!("[[api_keys]]\nkey = \"{secret}\nuser = \"u\"\n"),
    ] {
        let config = common::write_config(dir.path(), &bad);
        let message = refused_config(&config, &[]);
        assert!(message.contains("agentnexus.toml"), "{message}");
        assert!(!message.contains(secret), "{message}");
    }
}
