//! The spec's JavaScript clients, run verbatim under Node.js with the `ws` package (Debian's
//! `node-ws`) against a live server: they are the compatibility promise of `/ws`. Only what
//! cannot stay is changed: `require('ws')` (browsers have `WebSocket` built in), the port, the
//! execution id, and code appended after the example so that it exits.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::tools::{self, Tool};
use common::{TestServer, sh_agent};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// `../shared/spec/monitoring-README.md`, "WebSocket Streaming" → "Connection", verbatim.
const SPEC_CONNECTION_EXAMPLE: &str = r#"const ws = new WebSocket('ws://localhost:3001/ws');

ws.onopen = () => {
  // Subscribe to execution
  ws.send(JSON.stringify({
    type: 'subscribe',
    executionId: 'exec_123'
  }));
};

ws.onmessage = (event) => {
  const message = JSON.parse(event.data);
  
  switch (message.type) {
    case 'log':
      console.log('[LOG]', message.data.log);
      break;
    case 'status':
      console.log('[STATUS]', message.data.status);
      break;
    case 'metrics':
      console.log('[METRICS]', message.data);
      break;
  }
};
"#;

/// The same file, "Testing" → "WebSocket Connection Test", verbatim.
const SPEC_TEST_WEBSOCKET_JS: &str = r#"// test-websocket.js
const WebSocket = require('ws');

const ws = new WebSocket('ws://localhost:3001/ws');

ws.on('open', () => {
  console.log('✅ Connected');
  
  ws.send(JSON.stringify({
    type: 'subscribe',
    executionId: 'test_123'
  }));
});

ws.on('message', (data) => {
  console.log('📥', data.toString());
});

ws.on('close', () => {
  console.log('❌ Disconnected');
});
"#;

/// Appended after the example: once the execution has ended, close, so that node exits.
/// A second listener, so the example's own `onmessage` stays as written and runs first.
const EXIT_AFTER_FINAL_STATUS: &str = r#"
// Added by the test: close once the execution has ended, so that node exits.
ws.addEventListener('message', (event) => {
  const message = JSON.parse(event.data);
  if (message.type === 'status' && ['COMPLETED', 'FAILED', 'CANCELLED'].includes(message.data.status)) {
    ws.close();
  }
});
setTimeout(() => { console.error('timed out'); process.exit(2); }, 20000).unref();
"#;

fn node(script: &std::path::Path) -> Command {
    let mut command = Command::new("node");
    command
        .arg(script)
        .env("NODE_PATH", tools::NODE_PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

fn port_of(server: &TestServer) -> String {
    server.url.rsplit(':').next().unwrap().to_owned()
}

/// Replaces `from` in `text`, which must occur exactly once.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from} in {text}");
    text.replace(from, to)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_client_prints_logs_status_and_metrics_of_a_running_execution() {
    if !tools::have(Tool::NodeWs) {
        return;
    }
    // Long enough for several resource samples (every 100 ms), and it uses some memory.
    let agent = sh_agent(
        "stepper",
        "0",
        "for i in 1 2 3 4 5 6 7 8 9 10; do echo \"step $i\"; sleep 0.1; done; echo '{\"done\": true}'",
    );
    let server = TestServer::start(vec![agent]).await;
    let id = server.client.submit("stepper", json!({})).await;
    server
        .client
        .wait_status(&id, "RUNNING", Duration::from_secs(10))
        .await;

    let script = format!(
        "const WebSocket = require('ws');\n{}{EXIT_AFTER_FINAL_STATUS}",
        replace_once(
            &replace_once(
                SPEC_CONNECTION_EXAMPLE,
                "localhost:3001",
                &format!("localhost:{}", port_of(&server))
            ),
            "'exec_123'",
            &format!("'{id}'"),
        )
    );
    let path = server.dir.path().join("client.js");
    std::fs::write(&path, &script).unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), node(&path).output())
        .await
        .expect("node finishes")
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();

    let logs: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("[LOG] "))
        .collect();
    let mut expected: Vec<String> = (1..=10).map(|i| format!("step {i}")).collect();
    expected.push("{\"done\": true}".into());
    assert_eq!(logs, expected, "{stdout}");

    let statuses: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("[STATUS] "))
        .collect();
    assert_eq!(statuses, ["PENDING", "RUNNING", "COMPLETED"], "{stdout}");
    let position = |wanted: &str| lines.iter().position(|l| *l == wanted).unwrap();
    assert!(
        position("[STATUS] RUNNING") < position("[LOG] step 1"),
        "{stdout}"
    );
    assert_eq!(lines.last(), Some(&"[STATUS] COMPLETED"), "{stdout}");

    let metrics: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("[METRICS]"))
        .collect();
    assert!(!metrics.is_empty(), "no metrics in {stdout}");
    for line in &metrics {
        // Node prints the `data` object: `{ memoryUsage: 1234, cpuUsage: 0.5, duration: 100 }`.
        assert!(line.starts_with("[METRICS] { memoryUsage: "), "{line}");
        assert!(
            line.contains("cpuUsage: ") && line.contains("duration: "),
            "{line}"
        );
    }
    // Every line the spec's client prints is one of its three kinds.
    assert_eq!(
        lines.len(),
        logs.len() + statuses.len() + metrics.len(),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_connection_test_connects_gets_an_answer_and_sees_the_close() {
    if !tools::have(Tool::NodeWs) {
        return;
    }
    let mut server = TestServer::start(vec![]).await;
    let script = replace_once(
        SPEC_TEST_WEBSOCKET_JS,
        "localhost:3001",
        &format!("localhost:{}", port_of(&server)),
    );
    let path = server.dir.path().join("test-websocket.js");
    std::fs::write(&path, &script).unwrap();
    let mut child = node(&path).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("node prints within 10 s")
            .unwrap()
            .expect("node prints before exiting")
    };

    assert_eq!(next().await, "✅ Connected");
    let answer = next().await;
    let json = answer
        .strip_prefix("📥 ")
        .unwrap_or_else(|| panic!("{answer}"));
    let message: Value = serde_json::from_str(json).unwrap();
    // `test_123` is not an execution id: the server says so, in its error shape.
    assert_eq!(message["type"], "error", "{message}");
    assert_eq!(message["executionId"], "test_123", "{message}");
    assert_eq!(message["data"]["code"], "bad_request", "{message}");
    assert!(message["timestamp"].is_u64(), "{message}");

    // A server shutting down closes the connection (1001), which the script reports; then node
    // has nothing left to do and exits.
    server.stop().await;
    assert_eq!(next().await, "❌ Disconnected");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("node exits after the close")
        .unwrap();
    assert!(status.success());
}
