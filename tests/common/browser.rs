//! A real headless Chromium driven over WebDriver (chromedriver on a free port, one fresh
//! profile per browser), for the console's tests and bench: open a page, wait until a condition
//! holds in it, take screenshots, and see what it requested and logged.
//!
//! Everything the page does is observed from the outside: DOM attributes through scripts, the
//! network through Chromium's own performance log (every request and WebSocket of every page
//! visited), console messages through its browser log.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tempfile::TempDir;

/// Where Debian's `chromium` package puts the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Long enough for a loaded machine; a condition that is not met by then is a failure.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The key the console keeps in `sessionStorage` (see CONSOLE-CONTRACT).
pub const KEY_ITEM: &str = "agentnexus.key";

/// Flags for a quiet, reproducible headless browser: no sandbox (tests may run as root), no
/// GPU, and none of Chromium's own background traffic, so every request seen is the page's.
const FLAGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--window-size=1400,900",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--metrics-recording-only",
    "--disable-extensions",
    "--no-default-browser-check",
];

/// One browser: chromedriver (its own process group, so the browser it starts goes with it),
/// and a WebDriver session on it.
pub struct Browser {
    pub client: Client,
    driver: Driver,
    driver_url: String,
    session: String,
    http: reqwest::Client,
    /// Performance-log entries already read (reading the log drains it).
    network: Mutex<Vec<Value>>,
    _profile: TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session.
    pub async fn start() -> Browser {
        let port = free_port();
        let mut command = Command::new("chromedriver");
        command
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let driver = Driver(command.spawn().expect("chromedriver starts"));
        let driver_url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + DEADLINE;
        while !http
            .get(format!("{driver_url}/status"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(Instant::now() < deadline, "chromedriver never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = FLAGS.iter().map(|f| f.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
            "goog:loggingPrefs": { "browser": "ALL", "performance": "ALL" },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        // chromedriver is plain HTTP on loopback.
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&driver_url)
            .await
            .expect("a Chromium session");
        let session = client.session_id().await.unwrap().expect("a session id");
        Browser {
            client,
            driver,
            driver_url,
            session,
            http,
            network: Mutex::new(Vec::new()),
            _profile: profile,
        }
    }

    /// Navigates to `url` and waits for its load event.
    pub async fn open(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// The value of a script's `return` (it may return a promise, which is awaited).
    pub async fn eval(&self, script: &str) -> Value {
        self.eval_with(script, vec![]).await
    }

    /// `eval` with `arguments[0..]`.
    pub async fn eval_with(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed ({e}): {script}"))
    }

    /// Polls the JavaScript expression `expr` until it is truthy and returns its value; panics
    /// with `what` and its last value after `DEADLINE`.
    pub async fn wait_until(&self, what: &str, expr: &str) -> Value {
        self.wait_until_within(what, expr, DEADLINE).await
    }

    /// `wait_until` with another deadline (e.g. for a 200,000-line execution).
    pub async fn wait_until_within(&self, what: &str, expr: &str, within: Duration) -> Value {
        let script = format!("return ({expr});");
        let deadline = Instant::now() + within;
        loop {
            // A navigation in progress makes a script fail: that is "not yet".
            let last = self.client.execute(&script, vec![]).await;
            match &last {
                Ok(v) if truthy(v) => return v.clone(),
                _ if Instant::now() >= deadline => {
                    let _ = self.screenshot("timed-out").await;
                    panic!("waited {within:?} for {what} ({expr}); last: {last:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Waits until `selector` matches an element.
    pub async fn wait_for(&self, selector: &str) {
        let expr = format!("document.querySelector({})", json!(selector));
        self.wait_until(&format!("an element {selector}"), &format!("!!{expr}"))
            .await;
    }

    /// The attribute `name` of the first element matching `selector`.
    pub async fn attr(&self, selector: &str, name: &str) -> Option<String> {
        let v = self
            .eval_with(
                "const e = document.querySelector(arguments[0]); \
                 return e ? e.getAttribute(arguments[1]) : null;",
                vec![json!(selector), json!(name)],
            )
            .await;
        v.as_str().map(str::to_owned)
    }

    /// The text of the first element matching `selector` (empty if none).
    pub async fn text(&self, selector: &str) -> String {
        let v = self
            .eval_with(
                "const e = document.querySelector(arguments[0]); \
                 return e ? e.textContent : '';",
                vec![json!(selector)],
            )
            .await;
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Clicks the first element matching `selector`.
    pub async fn click(&self, selector: &str) {
        self.wait_for(selector).await;
        let element = self.client.find(Locator::Css(selector)).await.unwrap();
        element.click().await.unwrap();
    }

    /// Types `text` into the field `selector`, replacing what it held.
    pub async fn type_into(&self, selector: &str, text: &str) {
        self.wait_for(selector).await;
        let element = self.client.find(Locator::Css(selector)).await.unwrap();
        element.clear().await.unwrap();
        element.send_keys(text).await.unwrap();
    }

    /// Chooses the option `value` of the `select` `selector`, as a user does.
    pub async fn select(&self, selector: &str, value: &str) {
        self.wait_for(selector).await;
        let element = self.client.find(Locator::Css(selector)).await.unwrap();
        element.select_by_value(value).await.unwrap();
    }

    /// Saves a PNG of the window as `target/console-screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.unwrap();
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Stores `key` where the console keeps it (the current page's origin's sessionStorage).
    pub async fn set_key(&self, key: &str) {
        self.eval_with(
            "sessionStorage.setItem(arguments[0], arguments[1]);",
            vec![json!(KEY_ITEM), json!(key)],
        )
        .await;
    }

    /// The key the page stored, if any.
    pub async fn stored_key(&self) -> Option<String> {
        let v = self
            .eval_with(
                "return sessionStorage.getItem(arguments[0]);",
                vec![json!(KEY_ITEM)],
            )
            .await;
        v.as_str().map(str::to_owned)
    }

    /// The URLs the current page requested, by its own account (navigation and resource
    /// timing entries; WebSockets are not in them, see `requested_urls`).
    pub async fn page_requests(&self) -> Vec<String> {
        let v = self
            .eval(
                "return performance.getEntriesByType('navigation') \
                 .concat(performance.getEntriesByType('resource')).map(e => e.name);",
            )
            .await;
        serde_json::from_value(v).unwrap()
    }

    /// The origins of `page_requests` (`data:` URLs have none and are left out).
    pub async fn requested_origins(&self) -> BTreeSet<String> {
        self.page_requests()
            .await
            .iter()
            .filter_map(|u| origin(u))
            .collect()
    }

    /// Every URL requested since the browser started, of every page visited: HTTP requests and
    /// WebSockets, as Chromium's network log saw them.
    pub async fn requested_urls(&self) -> Vec<String> {
        let mut network = self.network.lock().unwrap().clone();
        network.extend(self.read_log("performance").await);
        // The browser's own first tab (chrome://new-tab-page...) is no request of the page's.
        let urls = network
            .iter()
            .filter_map(|entry| {
                let message: Value = serde_json::from_str(entry["message"].as_str()?).ok()?;
                let message = &message["message"];
                match message["method"].as_str()? {
                    "Network.requestWillBeSent" => message["params"]["request"]["url"].as_str(),
                    "Network.webSocketCreated" => message["params"]["url"].as_str(),
                    _ => None,
                }
                .filter(|u| {
                    ["http:", "https:", "ws:", "wss:", "data:"]
                        .iter()
                        .any(|s| u.starts_with(s))
                })
                .map(str::to_owned)
            })
            .collect();
        *self.network.lock().unwrap() = network;
        urls
    }

    /// The WebSocket URLs opened since the browser started.
    pub async fn websocket_urls(&self) -> Vec<String> {
        self.requested_urls()
            .await
            .into_iter()
            .filter(|u| u.starts_with("ws:") || u.starts_with("wss:"))
            .collect()
    }

    /// The console messages (level and text) logged since the last call.
    pub async fn console_messages(&self) -> Vec<(String, String)> {
        self.read_log("browser")
            .await
            .iter()
            .map(|e| {
                (
                    e["level"].as_str().unwrap_or("").to_owned(),
                    e["message"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    /// Runs a DevTools Protocol command in the page's target (chromedriver's `goog/cdp`).
    pub async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.session_post("goog/cdp/execute", json!({ "cmd": cmd, "params": params }))
            .await
    }

    /// Chromedriver's log of `kind` (`browser`, `performance`), drained.
    async fn read_log(&self, kind: &str) -> Vec<Value> {
        let value = self.session_post("se/log", json!({ "type": kind })).await;
        value.as_array().cloned().unwrap_or_default()
    }

    /// Posts `body` to one of chromedriver's own endpoints of this session; its `value`.
    async fn session_post(&self, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}/{path}", self.driver_url, self.session);
        let answer: Value = self
            .http
            .post(url)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["value"].clone()
    }

    /// Ends the session (the browser quits) and chromedriver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

/// Chromedriver, leader of its own process group.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the browser it started, even after a panic.
        // SAFETY: signals the process group this test started.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `http://host:port` of a URL (`None` for `data:` and the like).
pub fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    Some(format!("{scheme}://{host}"))
}

/// `target/console-screenshots`.
pub fn screenshot_dir() -> PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("console-screenshots")
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}
