//! `scripts/cluster`, the README's three replicas on one machine: it starts PostgreSQL, NATS
//! and three replicas; an execution submitted to one replica is run once and followed live on
//! another, and through the docker-compose cluster profile's proxy config (nginx, in front of
//! these replicas instead of the containers); Ctrl-C (SIGINT to its process group, as a terminal sends it) and SIGTERM (to the
//! script alone) each stop
//! everything it started and remove its directory.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::tools::{NGINX_SBIN, Tool, have, on_path};
use common::ws::Ws;
use common::{Client, assert_gapless, free_port, log_lines};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);

struct Script {
    child: Child,
    http: Vec<u16>,
    others: Vec<u16>,
    dir: String,
}

/// Starts the script on free ports and waits until it says the cluster is ready.
fn start() -> Option<Script> {
    if !(have(Tool::Postgres) && have(Tool::NatsServer)) {
        return None;
    }
    let http: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let (pg, nats) = (free_port(), free_port());
    let ports = http
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster"))
        .env("AGENTNEXUS_BIN", env!("CARGO_BIN_EXE_agentnexus"))
        .env("CLUSTER_HTTP_PORTS", ports)
        .env("CLUSTER_PG_PORT", pg.to_string())
        .env("CLUSTER_NATS_PORT", nats.to_string())
        // Its own process group, as a terminal's foreground job: a Ctrl-C reaches all of it.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("bash runs");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("[cluster] {line}");
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + WAIT;
    let (mut ready, mut dir) = (false, None);
    while !(ready && dir.is_some()) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("the script says it is ready");
        ready |= line.starts_with("Cluster ready: 3 replicas");
        if let Some(d) = line.strip_prefix("Data (removed on exit): ") {
            dir = Some(d.to_owned());
        }
    }
    Some(Script {
        child,
        http,
        others: vec![pg, nats],
        dir: dir.unwrap(),
    })
}

impl Script {
    fn client(&self, i: usize) -> Client {
        Client::new(&format!("http://127.0.0.1:{}", self.http[i]))
    }

    /// Sends `signal` to the script (`-pid`: to its whole process group, as a terminal's
    /// Ctrl-C) and waits until the script has ended.
    fn stop_with(&mut self, signal: i32, whole_group: bool) {
        let pid = self.child.id() as i32;
        // SAFETY: signals a child of this test, or its process group.
        unsafe { libc::kill(if whole_group { -pid } else { pid }, signal) };
        let deadline = Instant::now() + WAIT;
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the script did not end");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Nothing it started is left: no process names its directory, the directory is gone,
    /// and none of its ports takes connections.
    fn assert_nothing_left(&self) {
        let left: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(&self.dir))
            .collect();
        assert!(left.is_empty(), "processes left: {left:?}");
        assert!(!Path::new(&self.dir).exists(), "{} is left", self.dir);
        for port in self.http.iter().chain(&self.others) {
            assert!(
                TcpStream::connect(("127.0.0.1", *port)).is_err(),
                "port {port} still listens"
            );
        }
    }
}

/// A test that failed half-way still stops what the script started.
impl Drop for Script {
    fn drop(&mut self) {
        if self.child.try_wait().unwrap().is_none() {
            // SAFETY: signals a child of this test.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

/// Follows `id` over WebSocket at `url` from its start to its end: the stream is gapless; how
/// many `tick` lines it had.
async fn ticks_followed(url: &str, id: &str) -> usize {
    let mut ws = Ws::connect_to(url).await;
    ws.subscribe(id, Some(0)).await;
    let events = ws.events_until_end(id).await;
    assert_gapless(&events);
    log_lines(&events)
        .iter()
        .filter(|l| l.starts_with("tick "))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_submitted_to_one_replica_is_followed_on_another_and_ctrl_c_stops_all() {
    let Some(mut script) = start() else { return };
    let id = script
        .client(0)
        .submit("counter", json!({"count": 30}))
        .await;
    let replica_2 = format!("http://127.0.0.1:{}", script.http[1]);
    assert_eq!(ticks_followed(&replica_2, &id).await, 30);
    let done = script.client(2).wait_terminal(&id, WAIT).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let owner = done["replicaId"].as_str().unwrap();
    assert!(
        ["replica-1", "replica-2", "replica-3"].contains(&owner),
        "{done}"
    );

    // The compose proxy's config in front of the same replicas: requests and WebSocket
    // upgrades pass through it.
    if let Some(proxy) = Proxy::start(&script.http) {
        let through = Client::new(&proxy.url);
        let id = through.submit("counter", json!({"count": 10})).await;
        assert_eq!(ticks_followed(&proxy.url, &id).await, 10);
        assert_eq!(through.execution(&id).await["status"], "COMPLETED");
    }

    script.stop_with(libc::SIGINT, true);
    script.assert_nothing_left();
}

/// nginx run with `deploy/nginx/cluster.conf`, its upstream servers and listen address moved
/// from the compose services to the replicas on this machine.
struct Proxy {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Proxy {
    fn start(replicas: &[u16]) -> Option<Proxy> {
        if !have(Tool::Nginx) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut conf = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx/cluster.conf"),
        )
        .unwrap();
        for (i, replica) in replicas.iter().enumerate() {
            let service = format!("server agentnexus-{}:3001;", i + 1);
            assert!(conf.contains(&service), "cluster.conf lacks {service}");
            conf = conf.replace(&service, &format!("server 127.0.0.1:{replica};"));
        }
        assert!(conf.contains("listen 80;"));
        conf = conf.replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
        let d = dir.path().display();
        std::fs::write(dir.path().join("cluster.conf"), conf).unwrap();
        std::fs::write(
            dir.path().join("nginx.conf"),
            format!(
                "pid {d}/nginx.pid;\nevents {{}}\nhttp {{\n  access_log off;\n  \
                 client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
                 include {d}/cluster.conf;\n}}\n"
            ),
        )
        .unwrap();
        let program = if on_path("nginx") {
            "nginx"
        } else {
            NGINX_SBIN
        };
        let child = Command::new(program)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .args(["-g", "daemon off; master_process off;"])
            .stdin(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let mut proxy = Proxy {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                proxy.child.try_wait().unwrap().is_none(),
                "nginx refused the config"
            );
            assert!(Instant::now() < deadline, "nginx did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(proxy)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sigterm_stops_everything_the_script_started() {
    let Some(mut script) = start() else { return };
    script.stop_with(libc::SIGTERM, false);
    script.assert_nothing_left();
}

#[test]
fn a_replica_that_cannot_start_ends_the_script_with_its_error_and_nothing_left() {
    if !(have(Tool::Postgres) && have(Tool::NatsServer)) {
        return;
    }
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let http = ports[..3].iter().map(u16::to_string).collect::<Vec<_>>();
    let out = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster"))
        .env("AGENTNEXUS_BIN", env!("CARGO_BIN_EXE_agentnexus"))
        .env("CLUSTER_CONFIG", "/no/such/agentnexus.toml")
        .env("CLUSTER_HTTP_PORTS", http.join(" "))
        .env("CLUSTER_PG_PORT", ports[3].to_string())
        .env("CLUSTER_NATS_PORT", ports[4].to_string())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("replica-1 did not start")
            && stderr.contains("/no/such/agentnexus.toml does not exist"),
        "{stderr}"
    );
    assert!(stderr.contains("cluster: stopped; removed"), "{stderr}");
    for port in ports {
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still listens"
        );
    }
}
