//! Shared by the WebSocket benches: the flood agent (this same bench binary, started with
//! `--agent`), the server binary and the Node.js peer as child processes, WebSocket clients,
//! and `/proc` readings.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// If this process was started as the flood agent (`--agent GO_FILE LINES RATE`), runs it and
/// exits: waits until GO_FILE exists, then writes LINES lines `<ns since epoch> <i>`, each with its
/// own write(2) so the timestamp is the moment the server can read it; RATE lines per second, or
/// as fast as it can with 0.
pub fn agent_mode() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some("--agent") {
        return;
    }
    let go = PathBuf::from(&args[2]);
    let lines: u64 = args[3].parse().unwrap();
    let rate: u64 = args[4].parse().unwrap();
    while !go.exists() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut out = std::io::stdout().lock();
    let start = std::time::Instant::now();
    let mut line = Vec::with_capacity(64);
    for i in 1..=lines {
        if let Some(due) = (i * 1_000_000_000).checked_div(rate) {
            if let Some(wait) = Duration::from_nanos(due).checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        line.clear();
        writeln!(line, "{} {i}", now_ns()).unwrap();
        if out.write_all(&line).is_err() {
            std::process::exit(1);
        }
        out.flush().unwrap();
    }
    std::process::exit(0);
}

/// The command that runs the flood agent.
pub fn agent_command(go: &Path, lines: u64, rate: u64) -> Vec<String> {
    vec![
        std::env::current_exe().unwrap().display().to_string(),
        "--agent".into(),
        go.display().to_string(),
        lines.to_string(),
        rate.to_string(),
    ]
}

/// Raises the open-files limit to the hard limit (children inherit it).
pub fn raise_nofile(wanted: u64) -> u64 {
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = wanted.min(limit.rlim_max);
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        limit.rlim_cur
    }
}

pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// User + system CPU time of a process, in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The release server binary on `config` (TOML text, without `bind`/`data_dir`), on a free
/// port in `dir`. Returns the process and its `host:port`.
pub fn start_server(dir: &Path, config: &str) -> (Proc, String) {
    let path = dir.join("agentnexus.toml");
    std::fs::write(
        &path,
        format!(
            "bind = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n{config}",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentnexus"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn,agentnexus::server=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(addr) = line.split("addr=").nth(1) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(addr.split_whitespace().next().unwrap().to_owned());
                }
            } else if line.contains("WARN") || line.contains("ERROR") {
                eprintln!("[server] {line}");
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    (Proc(child), addr)
}

/// The Node.js peer (`benches/ws_peer.js`): a minimal `ws` server broadcasting the agent's
/// lines the way the spec's system does. `agent` is the command it runs; empty for none.
pub fn start_peer(agent: &[String], heartbeat_ms: u64) -> (Proc, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/ws_peer.js");
    let mut child = Command::new("node")
        .arg(script)
        .arg(heartbeat_ms.to_string())
        .args(agent)
        .env("NODE_PATH", "/usr/share/nodejs")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs (apt-get install node-ws)");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let port = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("peer said {line:?}"))
        .to_owned();
    std::thread::spawn(move || {
        let mut sink = String::new();
        while stdout.read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
    });
    (Proc(child), format!("127.0.0.1:{port}"))
}

/// Submits an execution over HTTP and returns its id.
pub async fn submit(addr: &str, agent: &str) -> String {
    let body: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{addr}/api/executions"))
        .json(&serde_json::json!({ "agentId": agent, "input": {} }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["executionId"].as_str().unwrap().to_owned()
}

/// A client with small buffers (thousands of them share this process).
pub async fn connect(addr: &str) -> Socket {
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0);
    for attempt in 0.. {
        match tokio_tungstenite::connect_async_with_config(
            format!("ws://{addr}/ws"),
            Some(config),
            true,
        )
        .await
        {
            Ok((socket, _)) => return socket,
            Err(e) if attempt < 20 => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot connect to {addr}: {e}"),
        }
    }
    unreachable!()
}

/// Subscribes and waits for the `subscribed` acknowledgement.
pub async fn subscribe(socket: &mut Socket, id: &str, since: u64) {
    let message = format!(r#"{{"type":"subscribe","executionId":"{id}","since":{since}}}"#);
    socket.send(Message::text(message)).await.unwrap();
    while let Some(Ok(message)) = socket.next().await {
        if let Message::Text(text) = message {
            if text.contains(r#""type":"subscribed""#) {
                return;
            }
            if text.contains(r#""type":"error""#) {
                panic!("subscribe failed: {text}");
            }
        }
    }
    panic!("closed before the subscription was acknowledged");
}

/// The number after `"key":` in a JSON text, without parsing the rest.
pub fn number_after(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits: &str = &text[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// Percentile of sorted values.
pub fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}
