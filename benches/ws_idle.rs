//! 10,000 idle WebSocket connections, each subscribed to a running (sleeping) execution, with
//! the heartbeat on: the server's resident memory per connection and its CPU while idle, for the
//! release server binary and for the Node.js peer (`benches/ws_peer.js`) in the same run. The
//! clients are tokio-tungstenite connections in this process, answering pings.
//!
//! Run: `cargo bench --bench ws_idle` (needs `node` with `ws`: apt-get install node-ws);
//! `WS_IDLE_SAMPLE_MS=1000` adds the default resource sampling (one `metrics` message per
//! subscriber per second).

#[path = "support/ws.rs"]
mod support;

use std::time::Duration;

use futures_util::StreamExt;
use support::*;

const CONNECTIONS: usize = 10_000;
/// Shorter than the default 30 s so the idle window sees two rounds of pings.
const HEARTBEAT_MS: u64 = 5_000;
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// Resource samples of the execution are events too (a `metrics` message to every subscriber);
/// `WS_IDLE_SAMPLE_MS` sets their interval, by default long enough that none falls in the
/// window, so the connections are really idle, as with the peer.
fn sample_ms() -> u64 {
    std::env::var("WS_IDLE_SAMPLE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_600_000)
}

/// `WS_IDLE_SUBSCRIBE=0` leaves the connections unsubscribed, to split the cost per connection
/// into the connection itself and its subscription.
fn subscribed() -> bool {
    std::env::var("WS_IDLE_SUBSCRIBE").as_deref() != Ok("0")
}

struct Figures {
    base_kib: u64,
    loaded_kib: u64,
    idle_cpu_percent: f64,
}

impl Figures {
    fn per_connection_bytes(&self) -> f64 {
        (self.loaded_kib.saturating_sub(self.base_kib) * 1024) as f64 / CONNECTIONS as f64
    }
}

async fn load(pid: u32, addr: &str, id: &str) -> Figures {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base_kib = rss_kib(pid);
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for wave in 0..CONNECTIONS / 500 {
        let mut ready = Vec::new();
        for _ in 0..500 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let (addr, id) = (addr.to_owned(), id.to_owned());
            clients.push(tokio::spawn(async move {
                let mut socket = connect(&addr).await;
                if subscribed() {
                    subscribe(&mut socket, &id, 0).await;
                }
                let _ = tx.send(());
                // Keep reading: tungstenite answers the server's pings while polled.
                while let Some(Ok(_)) = socket.next().await {}
                panic!("connection {wave} closed by the server");
            }));
            ready.push(rx);
        }
        for rx in ready {
            rx.await.expect("subscribed");
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let loaded_kib = rss_kib(pid);
    let cpu_before = cpu_secs(pid);
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle_cpu_percent = (cpu_secs(pid) - cpu_before) / IDLE_WINDOW.as_secs_f64() * 100.0;
    for client in &clients {
        assert!(!client.is_finished(), "a connection ended while idle");
        client.abort();
    }
    Figures {
        base_kib,
        loaded_kib,
        idle_cpu_percent,
    }
}

async fn ours() -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let sample = sample_ms();
    let config = format!(
        "sample_interval_ms = {sample}\n\n[websocket]\nmax_connections = 20000\nheartbeat_interval_ms = {HEARTBEAT_MS}\nidle_timeout_ms = {}\n\n[[agents]]\nid = \"sleeper\"\nname = \"Sleeper\"\nprice_wei = \"0\"\nruntime = {{ type = \"process\", command = \"sleep\", args = [\"600\"] }}\n",
        HEARTBEAT_MS * 2
    );
    let (server, addr) = start_server(dir.path(), &config);
    let id = submit(&addr, "sleeper").await;
    load(server.pid(), &addr, &id).await
}

async fn peer() -> Figures {
    let (peer, addr) = start_peer(&[], HEARTBEAT_MS);
    load(peer.pid(), &addr, "exec_idle").await
}

fn print(who: &str, f: &Figures) {
    println!(
        "{who}  {CONNECTIONS} idle {} connections: resident {:.1} MiB → {:.1} MiB = {:.0} bytes ({:.2} KiB) per connection; idle CPU {:.2}% of one core (heartbeat every {} s)",
        if subscribed() {
            "subscribed"
        } else {
            "unsubscribed"
        },
        f.base_kib as f64 / 1024.0,
        f.loaded_kib as f64 / 1024.0,
        f.per_connection_bytes(),
        f.per_connection_bytes() / 1024.0,
        f.idle_cpu_percent,
        HEARTBEAT_MS / 1000
    );
}

fn main() {
    agent_mode();
    let limit = raise_nofile(65_536);
    assert!(
        limit as usize > CONNECTIONS + 1000,
        "open-files limit {limit} is too low"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let o = ours().await;
        print("ours", &o);
        let p = peer().await;
        print("peer", &p);
        println!(
            "ratio  memory per connection {:.2}×  idle CPU {:.2}× (ours / peer)",
            o.per_connection_bytes() / p.per_connection_bytes(),
            o.idle_cpu_percent / p.idle_cpu_percent.max(0.001)
        );
    });
}
