//! The shared store's figures, against the release server binary on a throw-away PostgreSQL
//! cluster with its default durability (fsync and synchronous commit on):
//!
//! - ingest: one agent prints 1,000,000 short lines; lines per second from the submission to
//!   the final status being committed (every line durable before it is visible), beside the raw
//!   `COPY` rate of the same number of event rows into the same database, in the same run;
//! - throughput: 2,000 trivial executions submitted round-robin to three replicas (NATS between
//!   them), each followed over WebSocket on the next replica to its final event; beside one
//!   replica on the same database;
//! - failover: the replica running an execution is killed (SIGKILL); the time until a survivor
//!   has committed its final event, against the lease (5 s and 15 s).
//!
//! Run: `cargo bench --bench cluster` (needs PostgreSQL and nats-server, as the tests do);
//! `CLUSTER_SCENARIO=ingest|throughput|failover` runs one. Fan-out across replicas is in
//! `ws_fanout` (`WS_FANOUT_SCENARIO=replica`).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/ws.rs"]
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::nats::NatsServer;
use common::postgres::{Route, database};
use common::{ServerProcess, write_config};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const LINES: u64 = 1_000_000;
const EXECUTIONS: usize = 2000;
/// Slots per replica, as in the single-node throughput bench.
const CONCURRENCY: usize = 16;
/// Leases to fail over with: the time to take over follows the lease, plus at most a second.
const FAILOVER_LEASES_MS: [u64; 2] = [5000, 15_000];
const FAILOVERS: usize = 3;
const WAIT: Duration = Duration::from_secs(600);

/// A server on `dir` with `extra` configuration (the database and the agents).
fn replica(dir: &Path, n: usize, extra: &str) -> ServerProcess {
    let config =
        format!("replica_id = \"replica-{n}\"\nmax_concurrent_executions = {CONCURRENCY}\n{extra}");
    ServerProcess::spawn(&write_config(dir, &config))
}

fn agent(id: &str, command: &str, args: &[&str]) -> String {
    format!(
        "\n[[agents]]\nid = \"{id}\"\nname = \"{id}\"\nprice_wei = \"1\"\nruntime = {{ type = \"process\", command = {command:?}, args = {args:?} }}\n"
    )
}

async fn ingest() {
    let url = database(Route::Direct).expect("PostgreSQL is installed");
    let dir = tempfile::tempdir().unwrap();
    let lines = format!("seq 1 {LINES}");
    let extra = format!(
        "database_url = \"{url}\"{}",
        agent("flood", "sh", &["-c", &lines])
    );
    let server = replica(dir.path(), 0, &extra);
    let client = server.client();
    let start = Instant::now();
    let id = client.submit("flood", json!({})).await;
    let execution = client.wait_terminal(&id, WAIT).await;
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    assert_eq!(execution["logLines"], LINES);
    let copy = copy_reference(&url).await;
    println!(
        "ingest on PostgreSQL: {LINES} lines in {elapsed:.3} s = {:.0} lines/s; raw COPY of {LINES} event rows into the same database {copy:.3} s = {:.0} rows/s; ratio {:.2}x",
        LINES as f64 / elapsed,
        LINES as f64 / copy,
        elapsed / copy
    );
}

/// Seconds to `COPY` as many event rows as the ingest wrote, shaped as the runtime stores a
/// log line, into the events table of the same database, in one transaction.
async fn copy_reference(url: &str) -> f64 {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let key: i64 = client
        .query_one(
            "INSERT INTO executions (id, agent_id, user_id, status, agent, price_wei, input, created_at)
             VALUES ('copy-reference', 'flood', 'bench', 'RUNNING', '{}', '1', '{}', 0)
             RETURNING key",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let mut rows = Vec::with_capacity(LINES as usize * 64);
    for n in 1..=LINES {
        let data = format!(r#"{{"stream":"stdout","line":"{n}"}}"#);
        rows.extend_from_slice(
            format!("{key}\t{n}\tlog\t{data}\t{}\n", n + 1_700_000_000_000).as_bytes(),
        );
    }
    let start = Instant::now();
    let sink = client
        .copy_in("COPY events (execution_key, seq, kind, data, timestamp) FROM STDIN")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    for chunk in rows.chunks(1 << 20) {
        sink.send(bytes::Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
    }
    let copied = sink.finish().await.unwrap();
    assert_eq!(copied, LINES);
    start.elapsed().as_secs_f64()
}

/// Follows `id` over WebSocket on `addr` to its final status event.
async fn follow_to_end(addr: &str, id: &str) -> String {
    let mut socket = support::connect(addr).await;
    support::subscribe(&mut socket, id, 0).await;
    while let Some(message) = socket.next().await {
        if let Message::Text(text) = message.unwrap() {
            for status in ["COMPLETED", "FAILED", "CANCELLED"] {
                if text.contains(r#""type":"status""#) && text.contains(status) {
                    return status.to_owned();
                }
            }
        }
    }
    panic!("{id}: the stream closed before its final status");
}

/// Where the replicas keep their state.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    /// The embedded default (one node, SQLite): the reference.
    Embedded,
    /// One PostgreSQL database, NATS between the replicas (the spec's deployment).
    Postgres,
}

/// Executions per second of `EXECUTIONS` trivial runs through `replicas` replicas.
async fn throughput_of(backend: Backend, replicas: usize) -> f64 {
    let nats = NatsServer::start().expect("nats-server is installed");
    let mut extra = agent("trivial", "true", &[]);
    if backend == Backend::Postgres {
        let url = database(Route::Direct).expect("PostgreSQL is installed");
        extra = format!(
            "database_url = \"{url}\"\nnats_url = \"{}\"{extra}",
            nats.url()
        );
    }
    let dirs: Vec<_> = (0..replicas)
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let servers: Vec<_> = dirs
        .iter()
        .enumerate()
        .map(|(n, dir)| replica(dir.path(), n, &extra))
        .collect();
    let addrs: Arc<Vec<String>> = Arc::new(servers.iter().map(|s| s.addr.to_string()).collect());
    let start = Instant::now();
    // Twice the cluster's slots in flight, so no queue runs dry.
    futures_util::stream::iter(0..EXECUTIONS)
        .for_each_concurrent(CONCURRENCY * 2 * replicas, |n| {
            let addrs = addrs.clone();
            async move {
                let addr = &addrs[n % addrs.len()];
                let id = support::submit(addr, "trivial").await;
                let follower = &addrs[(n + 1) % addrs.len()];
                assert_eq!(follow_to_end(follower, &id).await, "COMPLETED");
            }
        })
        .await;
    let elapsed = start.elapsed().as_secs_f64();
    drop(servers);
    EXECUTIONS as f64 / elapsed
}

async fn throughput() {
    let embedded = throughput_of(Backend::Embedded, 1).await;
    let one = throughput_of(Backend::Postgres, 1).await;
    let three = throughput_of(Backend::Postgres, 3).await;
    println!(
        "throughput, {EXECUTIONS} trivial executions each followed over WebSocket (on the next replica): embedded SQLite, one node {embedded:.0}/s; PostgreSQL + NATS, 1 replica {one:.0}/s ({:.2}x), 3 replicas {three:.0}/s ({:.2}x)",
        one / embedded,
        three / embedded
    );
}

async fn failover(lease_ms: u64) {
    let url = database(Route::Direct).expect("PostgreSQL is installed");
    let extra = format!(
        "database_url = \"{url}\"\nlease_ms = {lease_ms}{}",
        agent(
            "long",
            "sh",
            &["-c", "while true; do echo tick; sleep 0.1; done"]
        )
    );
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // Each replica started gets a new id, as a restarted pod would.
    let mut started = 0;
    let mut start = |n: usize| {
        started += 1;
        (
            format!("replica-{started}"),
            replica(dirs[n].path(), started, &extra),
        )
    };
    let mut servers: Vec<(String, ServerProcess)> = (0..3).map(&mut start).collect();
    let mut took = Vec::new();
    for round in 0..FAILOVERS {
        let client = servers[round % 3].1.client();
        let id = client.submit("long", json!({})).await;
        let running = client.wait_status(&id, "RUNNING", WAIT).await;
        let owner = servers
            .iter()
            .position(|(name, _)| running["replicaId"] == name.as_str())
            .expect("owned by a replica of this run");
        let watcher = servers[(owner + 1) % 3].1.client();
        servers[owner].1.kill9();
        let killed = Instant::now();
        let done = watcher.wait_terminal(&id, WAIT).await;
        took.push(killed.elapsed().as_secs_f64());
        assert_eq!(done["error"]["kind"], "replica_lost", "{done}");
        servers[owner] = start(owner);
    }
    took.sort_by(f64::total_cmp);
    println!(
        "failover on PostgreSQL, lease {lease_ms} ms: SIGKILL of the owner → final event on a survivor, {} runs: min {:.2} s, median {:.2} s, max {:.2} s (target ≤ lease + 2 s = {:.1} s)",
        took.len(),
        took[0],
        took[took.len() / 2],
        took[took.len() - 1],
        lease_ms as f64 / 1000.0 + 2.0
    );
}

fn main() {
    // Durable figures: PostgreSQL's defaults, not the tests' fsync off.
    // SAFETY: set while this process has one thread.
    unsafe { std::env::set_var("AGENTNEXUS_PG_DURABLE", "1") };
    support::raise_nofile(65_536);
    let only = std::env::var("CLUSTER_SCENARIO").unwrap_or_default();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        if "ingest".contains(only.as_str()) {
            ingest().await;
        }
        if "throughput".contains(only.as_str()) {
            throughput().await;
        }
        if "failover".contains(only.as_str()) {
            for lease_ms in FAILOVER_LEASES_MS {
                failover(lease_ms).await;
            }
        }
    });
}
