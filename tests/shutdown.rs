//! Graceful shutdown as followers see it, with the real binary and SIGTERM: every event
//! committed before a connection closes reaches its client — the final status of executions that
//! end during the grace period included — and then the close frame 1001, on every connection.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ws::{Got, Ws};
use common::{ServerProcess, write_config};
use futures_util::StreamExt;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// Five run at once; a sixth execution stays queued through the shutdown. `paced` and `burst`
/// wait for the file `GO`, which the test creates once the shutdown has begun, so that they end
/// during the grace period; `stuck` is still running when the grace period is over, and is
/// stopped: its final status is committed at the last moment.
fn agents(go: &std::path::Path) -> String {
    let wait = format!("while [ ! -e '{}' ]; do sleep 0.02; done", go.display());
    format!(
        r#"
max_concurrent_executions = 5

[[agents]]
id = "paced"
name = "Paced"
price_wei = "1"
runtime = {{ type = "process", command = "sh", args = ["-c", "{wait}; i=0; while [ $i -lt 15 ]; do echo $i; i=$((i+1)); done"] }}

[[agents]]
id = "burst"
name = "Burst"
price_wei = "1"
runtime = {{ type = "process", command = "sh", args = ["-c", "{wait}; seq 1 1000"] }}

[[agents]]
id = "stuck"
name = "Stuck"
price_wei = "1"
runtime = {{ type = "process", command = "sh", args = ["-c", "echo started; exec sleep 30"] }}
"#
    )
}

/// What one connection received: the events of each execution, and how it was closed.
struct Received {
    events: HashMap<String, Vec<Value>>,
    close: Option<u16>,
}

/// Reads until the server closes, then lets the client answer the close frame.
async fn read_until_closed(mut ws: Ws, subscriptions: usize) -> Received {
    let mut events: HashMap<String, Vec<Value>> = HashMap::new();
    let mut acks = 0;
    let close = loop {
        match ws.next().await {
            Got::Message(m) if m["type"] == "subscribed" => acks += 1,
            Got::Message(m) => {
                assert!(m["seq"].is_u64(), "{m}");
                let id = m["executionId"].as_str().unwrap().to_owned();
                events.entry(id).or_default().push(m);
            }
            Got::Closed(code) => break code,
        }
    };
    assert_eq!(acks, subscriptions);
    // Reading on sends the client's close reply, and ends when the server closes the TCP
    // connection.
    while let Ok(Some(_)) = tokio::time::timeout(WAIT, ws.0.next()).await {}
    Received { events, close }
}

/// Waits until the server reports `count` open WebSocket connections.
async fn wait_connections(url: &str, count: usize) {
    let wanted = format!("agentnexus_active_websocket_connections {count}\n");
    let deadline = Instant::now() + WAIT;
    while !common::scrape(url).await.contains(&wanted) {
        assert!(Instant::now() < deadline, "never {count} connections");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One shutdown: 30 connections following two executions each, and the CLI following one, when
/// SIGTERM comes. Returns a description of every way a client was let down (none expected).
async fn one_round(round: usize) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("GO");
    let mut server = ServerProcess::spawn(&write_config(dir.path(), &agents(&go)));
    let client = server.client();
    let mut ids = Vec::new();
    for agent in ["paced", "burst", "stuck", "paced", "burst", "paced"] {
        ids.push(client.submit(agent, json!({})).await);
    }
    let queued = ids[5].clone();
    let cli = Command::new(env!("CARGO_BIN_EXE_agentnexus"))
        .args(["logs", &ids[0], "--follow", "--url", &server.url])
        .env_remove("AGENTNEXUS_TOKEN")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut readers = Vec::new();
    for i in 0..30 {
        let mut ws = Ws::connect_to(&server.url).await;
        ws.subscribe(&ids[i % 6], None).await;
        ws.subscribe(&ids[(i + 1) % 6], None).await;
        readers.push(tokio::spawn(read_until_closed(ws, 2)));
    }
    wait_connections(&server.url, 31).await;

    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    // Readiness fails from the moment the shutdown begins; then the agents may end.
    let deadline = Instant::now() + WAIT;
    while client.get("/health/ready").await.0 != reqwest::StatusCode::SERVICE_UNAVAILABLE {
        assert!(Instant::now() < deadline, "the shutdown never began");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    std::fs::write(&go, "").unwrap();
    let deadline = Instant::now() + WAIT;
    let exit = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the server did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{exit}");

    let mut faults = Vec::new();
    for (i, reader) in readers.into_iter().enumerate() {
        let received = reader.await.unwrap();
        if received.close != Some(1001) {
            faults.push(format!(
                "round {round} connection {i}: closed with {:?}",
                received.close
            ));
        }
        for id in [&ids[i % 6], &ids[(i + 1) % 6]] {
            let events = received
                .events
                .get(id.as_str())
                .map_or(&[][..], Vec::as_slice);
            let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
            if seqs != (1..=seqs.len() as u64).collect::<Vec<_>>() {
                faults.push(format!("round {round} connection {i} {id}: seqs {seqs:?}"));
            }
            let last = events.last().map(|e| &e["data"]["status"]);
            let expected = if *id == queued {
                // Queued through the shutdown: it stays PENDING, and seq 1 is all there is.
                (seqs.len() == 1).then_some("PENDING")
            } else if *id == ids[2] {
                Some("FAILED")
            } else {
                Some("COMPLETED")
            };
            if last.and_then(Value::as_str) != expected {
                faults.push(format!(
                    "round {round} connection {i} {id}: ended with {last:?} after {} events",
                    seqs.len()
                ));
            }
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = cli.id() as i32;
    std::thread::spawn(move || tx.send(cli.wait_with_output().unwrap()));
    match rx.recv_timeout(WAIT) {
        Ok(out) => {
            let printed = String::from_utf8_lossy(&out.stdout);
            let lines: Vec<String> = (0..15).map(|i| i.to_string()).collect();
            if out.status.code() != Some(0) || printed.lines().collect::<Vec<_>>() != lines {
                let errors = String::from_utf8_lossy(&out.stderr);
                faults.push(format!(
                    "round {round}: the CLI exited {} after {printed:?}; {errors}",
                    out.status
                ));
            }
        }
        Err(_) => {
            // SAFETY: our own child, still running.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            faults.push(format!("round {round}: the CLI was still following"));
        }
    }
    faults
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_every_follower_gets_every_committed_event_then_1001() {
    let mut faults = Vec::new();
    for round in 0..10 {
        faults.extend(one_round(round).await);
    }
    assert!(faults.is_empty(), "{}", faults.join("\n"));
}
