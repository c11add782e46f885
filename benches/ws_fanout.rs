//! WebSocket fan-out: one execution logging, N subscribers on loopback, all in one run against
//! the release server binary and against the Node.js peer (`benches/ws_peer.js`, the spec's way
//! of broadcasting), measured by the same tokio-tungstenite clients in this process.
//!
//! - saturation: the agent (this binary with `--agent`) writes as fast as it can; delivered log
//!   messages per second over all clients, from the go signal to the last message received;
//! - fixed load: 1,000 subscribers × 50 lines/s (50,000 messages/s offered) for 10 s;
//! - latency everywhere: the agent's write (a nanosecond timestamp it prints in the line) to the
//!   client's receive, p50 and p99 over every message.
//!
//! - across replicas: the fixed load with the agent on replica A and the subscribers on replica B
//!   of a cluster on PostgreSQL (durable defaults) and NATS; ours only (the peer has no
//!   replicas), beside the same load on one node in the same run.
//!
//! Run: `cargo bench --bench ws_fanout` (needs `node` with `ws`: apt-get install node-ws; and
//! PostgreSQL and nats-server for the replicas).
//! `WS_FANOUT_ONLY=ours` skips the peer; `WS_FANOUT_SCENARIO=fixed` runs the scenarios whose
//! name contains the word; `WS_FANOUT_CONFIG='sync_commits = false'` adds top-level config keys.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/ws.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use support::*;
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    subscribers: usize,
    lines: u64,
    /// Lines per second; 0 = as fast as the agent can.
    rate: u64,
    placement: Placement,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// One server: the embedded store.
    OneNode,
    /// The agent on one replica, the subscribers on another (PostgreSQL and NATS between).
    AcrossReplicas,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "saturation, 1 subscriber",
        subscribers: 1,
        lines: 300_000,
        rate: 0,
        placement: Placement::OneNode,
    },
    Scenario {
        name: "saturation, 100 subscribers",
        subscribers: 100,
        lines: 10_000,
        rate: 0,
        placement: Placement::OneNode,
    },
    Scenario {
        name: "saturation, 1,000 subscribers",
        subscribers: 1000,
        lines: 1_000,
        rate: 0,
        placement: Placement::OneNode,
    },
    Scenario {
        name: "fixed 50,000 msg/s (1,000 × 50 lines/s, 10 s)",
        subscribers: 1000,
        lines: 500,
        rate: 50,
        placement: Placement::OneNode,
    },
    Scenario {
        name: "fixed 50,000 msg/s across replicas (A → B)",
        subscribers: 1000,
        lines: 500,
        rate: 50,
        placement: Placement::AcrossReplicas,
    },
];

#[derive(Default)]
struct Outcome {
    delivered: u64,
    expected: u64,
    secs: f64,
    p50_us: u32,
    p99_us: u32,
    max_us: u32,
    /// The same split at the message's `timestamp` (ms; when the server read the line):
    /// agent write → server read, and server read → client receive.
    read_p99_ms: u32,
    deliver_p50_ms: u32,
    deliver_p99_ms: u32,
    reconnects: u64,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.delivered as f64 / self.secs
    }
}

struct ClientResult {
    received: u64,
    latencies_us: Vec<u32>,
    read_ms: Vec<u32>,
    deliver_ms: Vec<u32>,
    last_ns: u64,
    reconnects: u64,
}

/// One subscriber: receives until the execution's final status. Against our server it resumes
/// with `since` if it is ever closed (it should not be); against the peer it just stops.
async fn subscriber(
    addr: String,
    id: String,
    resumable: bool,
    ready: Arc<Barrier>,
    expected: u64,
) -> ClientResult {
    let mut socket = connect(&addr).await;
    subscribe(&mut socket, &id, 0).await;
    ready.wait().await;
    let mut result = ClientResult {
        received: 0,
        latencies_us: Vec::with_capacity(expected as usize),
        read_ms: Vec::with_capacity(expected as usize),
        deliver_ms: Vec::with_capacity(expected as usize),
        last_ns: 0,
        reconnects: 0,
    };
    let mut since = 0;
    loop {
        let message = socket.next().await;
        let now = now_ns();
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_) | Message::Frame(_))) | Some(Err(_)) | None => {
                if !resumable {
                    break;
                }
                result.reconnects += 1;
                socket = connect(&addr).await;
                subscribe(&mut socket, &id, since).await;
                continue;
            }
            Some(Ok(_)) => continue,
        };
        if let Some(seq) = number_after(&text, r#""seq":"#) {
            since = seq;
        }
        if text.contains(r#""type":"log""#) {
            let written = number_after(&text, r#""log":""#).unwrap_or(now);
            result.received += 1;
            result.last_ns = now;
            result
                .latencies_us
                .push((now.saturating_sub(written) / 1000).min(u32::MAX as u64) as u32);
            let read = number_after(&text, r#""timestamp":"#).unwrap_or(now / 1_000_000);
            result
                .read_ms
                .push(read.saturating_sub(written / 1_000_000) as u32);
            result
                .deliver_ms
                .push((now / 1_000_000).saturating_sub(read) as u32);
        } else if text.contains(r#""type":"status""#)
            && (text.contains("COMPLETED") || text.contains("FAILED"))
        {
            break;
        }
    }
    result
}

async fn measure(addr: &str, id: &str, go: &std::path::Path, s: Scenario, ours: bool) -> Outcome {
    let ready = Arc::new(Barrier::new(s.subscribers + 1));
    let mut clients = Vec::new();
    // Connect in waves so the accept queue never overflows.
    for wave in (0..s.subscribers).collect::<Vec<_>>().chunks(100) {
        let mut connected = Vec::new();
        for _ in wave {
            connected.push(tokio::spawn(subscriber(
                addr.to_owned(),
                id.to_owned(),
                ours,
                ready.clone(),
                s.lines,
            )));
        }
        clients.extend(connected);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ready.wait().await;
    let start = now_ns();
    std::fs::write(go, b"go").unwrap();
    let mut outcome = Outcome {
        expected: s.lines * s.subscribers as u64,
        ..Outcome::default()
    };
    let mut latencies = Vec::new();
    let (mut read, mut deliver) = (Vec::new(), Vec::new());
    let mut last = start;
    for client in clients {
        let result = tokio::time::timeout(Duration::from_secs(180), client)
            .await
            .expect("a subscriber finished within 180 s")
            .unwrap();
        outcome.delivered += result.received;
        outcome.reconnects += result.reconnects;
        last = last.max(result.last_ns);
        latencies.extend(result.latencies_us);
        read.extend(result.read_ms);
        deliver.extend(result.deliver_ms);
    }
    read.sort_unstable();
    deliver.sort_unstable();
    outcome.read_p99_ms = percentile(&read, 0.99);
    outcome.deliver_p50_ms = percentile(&deliver, 0.50);
    outcome.deliver_p99_ms = percentile(&deliver, 0.99);
    latencies.sort_unstable();
    outcome.secs = (last - start) as f64 / 1e9;
    outcome.p50_us = percentile(&latencies, 0.50);
    outcome.p99_us = percentile(&latencies, 0.99);
    outcome.max_us = latencies.last().copied().unwrap_or(0);
    outcome
}

fn flood_config(command: &[String], extra: &str) -> String {
    // Top-level keys from `WS_FANOUT_CONFIG` (e.g. `sync_commits = false`), for diagnosis.
    let diagnosis = std::env::var("WS_FANOUT_CONFIG").unwrap_or_default();
    format!(
        "{diagnosis}\n{extra}\n[websocket]\nmax_connections = 20000\n\n[[agents]]\nid = \"flood\"\nname = \"Flood\"\nprice_wei = \"0\"\nruntime = {{ type = \"process\", command = {:?}, args = {:?} }}\n",
        command[0],
        &command[1..]
    )
}

async fn ours(s: Scenario) -> Outcome {
    if s.placement == Placement::AcrossReplicas {
        return across_replicas(s).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let config = flood_config(&agent_command(&go, s.lines, s.rate), "");
    let (_server, addr) = start_server(dir.path(), &config);
    let id = submit(&addr, "flood").await;
    measure(&addr, &id, &go, s, true).await
}

/// Replica A runs the agent (it is the only replica when the execution is claimed); the
/// subscribers follow on replica B, which gets the lines over NATS.
async fn across_replicas(s: Scenario) -> Outcome {
    use common::postgres::{Route, database};
    let url = database(Route::Direct).expect("PostgreSQL is installed");
    let nats = common::nats::NatsServer::start().expect("nats-server is installed");
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let go = a.path().join("go");
    let shared = |id: &str| {
        format!(
            "database_url = \"{url}\"\nnats_url = \"{}\"\nreplica_id = \"{id}\"",
            nats.url()
        )
    };
    let command = agent_command(&go, s.lines, s.rate);
    let (_a, addr_a) = start_server(a.path(), &flood_config(&command, &shared("a")));
    let id = submit(&addr_a, "flood").await;
    let client = common::Client::new(&format!("http://{addr_a}"));
    let running = client
        .wait_status(&id, "RUNNING", Duration::from_secs(60))
        .await;
    assert_eq!(running["replicaId"], "a");
    let (_b, addr_b) = start_server(b.path(), &flood_config(&command, &shared("b")));
    measure(&addr_b, &id, &go, s, true).await
}

async fn peer(s: Scenario) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let (_peer, addr) = start_peer(&agent_command(&go, s.lines, s.rate), 30_000);
    measure(&addr, "exec_peer", &go, s, false).await
}

fn ms(us: u32) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

fn main() {
    agent_mode();
    // Durable figures on PostgreSQL: its defaults, not the tests' fsync off.
    // SAFETY: set while this process has one thread.
    unsafe { std::env::set_var("AGENTNEXUS_PG_DURABLE", "1") };
    raise_nofile(65_536);
    let with_peer = std::env::var("WS_FANOUT_ONLY").as_deref() != Ok("ours");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // `WS_FANOUT_SCENARIO=fixed` (a word of the name) runs only the matching scenarios.
        let only = std::env::var("WS_FANOUT_SCENARIO").unwrap_or_default();
        for &s in SCENARIOS.iter().filter(|s| s.name.contains(only.as_str())) {
            let o = ours(s).await;
            println!(
                "ours  {:<48} {:>9.0} msg/s  delivered {}/{} in {:.2} s  p50 {}  p99 {}  max {}  reconnects {}  [write→read p99 {} ms; read→receive p50 {} ms, p99 {} ms]",
                s.name,
                o.rate(),
                o.delivered,
                o.expected,
                o.secs,
                ms(o.p50_us),
                ms(o.p99_us),
                ms(o.max_us),
                o.reconnects,
                o.read_p99_ms,
                o.deliver_p50_ms,
                o.deliver_p99_ms
            );
            if with_peer && s.placement == Placement::OneNode {
                let p = peer(s).await;
                println!(
                    "peer  {:<48} {:>9.0} msg/s  delivered {}/{} in {:.2} s  p50 {}  p99 {}  max {}  [write→broadcast p99 {} ms; broadcast→receive p50 {} ms, p99 {} ms]",
                    s.name,
                    p.rate(),
                    p.delivered,
                    p.expected,
                    p.secs,
                    ms(p.p50_us),
                    ms(p.p99_us),
                    ms(p.max_us),
                    p.read_p99_ms,
                    p.deliver_p50_ms,
                    p.deliver_p99_ms
                );
                println!(
                    "ratio {:<48} throughput {:.2}×  p50 {:.2}×  p99 {:.2}× (ours / peer)",
                    s.name,
                    o.rate() / p.rate(),
                    o.p50_us as f64 / p.p50_us.max(1) as f64,
                    o.p99_us as f64 / p.p99_us.max(1) as f64
                );
            }
        }
    });
}
