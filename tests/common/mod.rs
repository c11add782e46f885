//! Test support: a real server on port 0 (in-process, or as the real binary for crash tests),
//! a real HTTP client, and shell-script agents.
#![allow(dead_code)]

pub mod browser;
pub mod cli;
pub mod cluster;
pub mod console;
pub mod daemon_proxy;
pub mod deploy;
pub mod docker;
pub mod faults;
pub mod nats;
pub mod openai;
pub mod otlp;
pub mod postgres;
pub mod prometheus;
pub mod tools;
pub mod witness;
pub mod ws;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentnexus::config::{Config, ConfigAgent};
use agentnexus::domain::Runtime;
use agentnexus::server::Server;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;

/// A loopback port that was free a moment ago (something else may take it before it is bound).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The one rule for a test whose external tool or privilege is missing (Docker, Prometheus,
/// root for a mount, ... — see `tools`): with `AGENTNEXUS_REQUIRE_TOOLS` set (`scripts/test` and
/// CI set it) the test fails; otherwise it says `SKIPPED: <why>` on stderr, records
/// `<test binary>/<test>: <why>` in the skip log (`skip_log`), and the caller returns early.
/// Always returns `false`, so `return skip(..)` reads naturally where a bool is expected.
pub fn skip(why: &str) -> bool {
    if std::env::var_os("AGENTNEXUS_REQUIRE_TOOLS").is_some() {
        panic!("AGENTNEXUS_REQUIRE_TOOLS is set but {why}");
    }
    eprintln!("SKIPPED: {why}");
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    let line = format!("{}/{test}: {why}\n", env!("CARGO_CRATE_NAME"));
    let log = skip_log();
    if let Some(dir) = log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // O_APPEND and a single write: lines of tests skipping in parallel do not interleave.
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
    {
        use std::io::Write;
        let _ = file.write_all(line.as_bytes());
    }
    false
}

/// The file skipped tests are listed in: `AGENTNEXUS_SKIP_LOG`, else `test-skips.txt` in the
/// target directory. `scripts/test` empties it before the run and prints it after.
pub fn skip_log() -> PathBuf {
    match std::env::var_os("AGENTNEXUS_SKIP_LOG") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("the target directory")
            .join("test-skips.txt"),
    }
}

/// A config for tests: port 0, a fresh data directory, fast sampling and kill grace.
pub fn test_config(dir: &Path) -> Config {
    Config {
        bind: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.join("data"),
        sample_interval_ms: 100,
        kill_grace_ms: 500,
        shutdown_grace_secs: 2,
        ..Config::default()
    }
}

/// An agent that runs `script` with `sh -c`.
pub fn sh_agent(id: &str, price_wei: &str, script: &str) -> ConfigAgent {
    ConfigAgent {
        id: id.into(),
        name: format!("Agent {id}"),
        price_wei: price_wei.parse().unwrap(),
        timeout_secs: None,
        input_schema: None,
        budget: Default::default(),
        runtime: Runtime::Process {
            command: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: Default::default(),
            workdir: None,
        },
    }
}

pub struct TestServer {
    pub server: Option<Server>,
    pub url: String,
    pub client: Client,
    pub dir: TempDir,
}

impl TestServer {
    pub async fn start(agents: Vec<ConfigAgent>) -> TestServer {
        Self::start_with(agents, |_| {}).await
    }

    pub async fn start_with(
        agents: Vec<ConfigAgent>,
        tweak: impl FnOnce(&mut Config),
    ) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        config.agents = agents;
        tweak(&mut config);
        let server = Server::start(config).await.expect("server starts");
        let url = format!("http://{}", server.addr());
        TestServer {
            server: Some(server),
            client: Client::new(&url),
            url,
            dir,
        }
    }

    pub fn runtime(&self) -> &std::sync::Arc<agentnexus::runtime::Runtime> {
        self.server.as_ref().unwrap().runtime()
    }

    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}

/// A thin JSON client over real HTTP.
#[derive(Clone)]
pub struct Client {
    pub url: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Client {
    pub fn new(url: &str) -> Client {
        Client {
            url: url.to_owned(),
            http: reqwest::Client::new(),
            token: None,
        }
    }

    pub fn with_token(&self, token: &str) -> Client {
        Client {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    fn auth(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => request.bearer_auth(t),
            None => request,
        }
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .auth(self.http.get(format!("{}{path}", self.url)))
            .send()
            .await
            .unwrap();
        read(response).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let request = self.http.post(format!("{}{path}", self.url)).json(&body);
        read(self.auth(request).send().await.unwrap()).await
    }

    /// POST with a raw body and content type, for malformed-input cases.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let request = self
            .http
            .post(format!("{}{path}", self.url))
            .header("content-type", content_type)
            .body(body);
        read(self.auth(request).send().await.unwrap()).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .auth(self.http.delete(format!("{}{path}", self.url)))
            .send()
            .await
            .unwrap();
        read(response).await
    }

    /// Submits an execution and returns its id.
    pub async fn submit(&self, agent: &str, input: Value) -> String {
        let (status, body) = self
            .post(
                "/api/executions",
                json!({ "agentId": agent, "input": input }),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["status"], "PENDING");
        body["executionId"].as_str().unwrap().to_owned()
    }

    pub async fn execution(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/api/executions/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Polls until the execution reaches a terminal status (or `within` passes).
    pub async fn wait_terminal(&self, id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let execution = self.execution(id).await;
            let status = execution["status"].as_str().unwrap().to_owned();
            if matches!(status.as_str(), "COMPLETED" | "FAILED" | "CANCELLED") {
                return execution;
            }
            assert!(
                Instant::now() < deadline,
                "{id} still {status} after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_status(&self, id: &str, wanted: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let execution = self.execution(id).await;
            if execution["status"] == wanted {
                return execution;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never became {wanted}: {execution}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every event of an execution, read page by page from the REST endpoint as documented:
    /// `since` = the previous page's `nextSince`, until `hasMore` is false.
    pub async fn all_events(&self, id: &str) -> Vec<Value> {
        self.all_events_in_pages(id, 10_000).await.concat()
    }

    /// The pages of `GET /api/executions/{id}/events` from the start, `limit` events at most each.
    pub async fn all_events_in_pages(&self, id: &str, limit: usize) -> Vec<Vec<Value>> {
        let mut pages = Vec::new();
        let mut since = 0;
        loop {
            let (status, body) = self
                .get(&format!(
                    "/api/executions/{id}/events?since={since}&limit={limit}"
                ))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            pages.push(body["events"].as_array().unwrap().clone());
            if !body["hasMore"].as_bool().unwrap() {
                return pages;
            }
            since = body["nextSince"].as_u64().unwrap();
        }
    }
}

async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

/// The server's `/metrics` text.
pub async fn scrape(url: &str) -> String {
    reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The log lines of an event list, in order.
pub fn log_lines(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "log")
        .map(|e| e["data"]["log"].as_str().unwrap().to_owned())
        .collect()
}

/// The log lines of an event list with their stream (`stdout`, `stderr`, `system`), in order.
pub fn tagged_lines(events: &[Value]) -> Vec<(&str, &str)> {
    events
        .iter()
        .filter(|e| e["type"] == "log")
        .map(|e| {
            (
                e["data"]["stream"].as_str().unwrap(),
                e["data"]["log"].as_str().unwrap(),
            )
        })
        .collect()
}

/// The statuses the stream announced, in order.
pub fn statuses(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .filter(|e| e["type"] == "status")
        .map(|e| e["data"]["status"].as_str().unwrap())
        .collect()
}

/// Whether process `pid` has exited (a zombie has: it only waits for its parent to reap it).
pub fn process_is_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .unwrap()
            .trim_start()
            .starts_with('Z'),
    }
}

/// Asserts the seqs are exactly 1..=n.
pub fn assert_gapless(events: &[Value]) {
    for (i, event) in events.iter().enumerate() {
        assert_eq!(
            event["seq"].as_u64().unwrap(),
            i as u64 + 1,
            "gap or duplicate at index {i}"
        );
    }
}

/// The real `agentnexus` binary running `serve`, for tests that kill it.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub url: String,
}

impl ServerProcess {
    /// Starts `agentnexus serve --config <config>` and waits until it logs its address.
    pub fn spawn(config: &Path) -> ServerProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_agentnexus"));
        command.args(["serve", "--config"]).arg(config);
        Self::spawn_command(command)
    }

    /// Starts `command` (an `agentnexus serve …`) and waits until it logs its address.
    pub fn spawn_command(mut command: Command) -> ServerProcess {
        let mut child = command
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(addr) = line.split("addr=").nth(1) {
                        let addr = addr.split_whitespace().next().unwrap().to_owned();
                        let _ = tx.send(addr);
                        sent = true;
                    }
                }
                eprintln!("[server] {line}");
            }
        });
        let addr: SocketAddr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the server logs its address")
            .parse()
            .unwrap();
        ServerProcess {
            child,
            url: format!("http://{addr}"),
            addr,
        }
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url)
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a TOML config file for `ServerProcess`.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("agentnexus.toml");
    let text = format!(
        "bind = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nsample_interval_ms = 100\nkill_grace_ms = 500\nshutdown_grace_secs = 2\n{extra}",
        dir.join("data").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The real binary started as the container image starts it (`agentnexus serve`, its config
/// named by `AGENTNEXUS_CONFIG`), at debug level, with its whole log kept.
pub struct LoggedServer {
    child: Child,
    pub url: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl LoggedServer {
    pub fn spawn(config: &Path, env: &[(&str, &str)]) -> LoggedServer {
        Self::spawn_until(config, env, "agentnexus listening addr=")
    }

    /// Starts it and waits until a line holding `marker` and then the listener's address
    /// (`addr=`) is logged, e.g. once it answers the probes while it waits for its database.
    pub fn spawn_until(config: &Path, env: &[(&str, &str)], marker: &str) -> LoggedServer {
        let marker = marker.to_owned();
        let mut command = Command::new(env!("CARGO_BIN_EXE_agentnexus"));
        command
            .arg("serve")
            .env("AGENTNEXUS_CONFIG", config)
            .env("RUST_LOG", "debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(after) = line.split(&marker).nth(1) {
                    // The address follows the marker: directly, or as its `addr=` field.
                    let addr = after.split("addr=").nth(1).unwrap_or(after);
                    let _ = tx.send(addr.split_whitespace().next().unwrap_or("").to_owned());
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr: SocketAddr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the server did not start: {}", log.lock().unwrap()))
            .parse()
            .unwrap();
        let port = addr.port();
        LoggedServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            reader: Some(reader),
        }
    }

    /// Everything it has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Stops it gracefully and returns everything it logged.
    pub fn stop(mut self) -> String {
        // SAFETY: signals a child of this test, which it then waits for.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        // The child is gone, so its stderr is closed and the reader reaches the end.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.log.lock().unwrap().clone()
    }
}

impl Drop for LoggedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
