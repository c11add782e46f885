//! A real `nats-server` on a free loopback port, for the NATS bus: it can be killed and started
//! again on the same port mid-test (an outage and the server's return), and is killed when the
//! test ends.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::free_port;
use super::tools::{NATS_SERVER_SBIN, Tool, have, on_path};

/// How long a fresh server may take to accept connections.
const START: Duration = Duration::from_secs(20);

pub struct NatsServer {
    addr: SocketAddr,
    config: PathBuf,
    child: Option<Child>,
    _dir: TempDir,
}

impl NatsServer {
    /// A server with the default limits, or `None` (after `skip`) without `nats-server`.
    pub fn start() -> Option<NatsServer> {
        Self::start_with("")
    }

    /// A server with `settings` added to its configuration file (e.g. `max_payload: 4096`).
    pub fn start_with(settings: &str) -> Option<NatsServer> {
        if !have(Tool::NatsServer) {
            return None;
        }
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("nats.conf");
        std::fs::write(
            &config,
            format!("host: 127.0.0.1\nport: {port}\n{settings}\n"),
        )
        .unwrap();
        let mut server = NatsServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            config,
            child: None,
            _dir: dir,
        };
        server.restart();
        Some(server)
    }

    /// `nats://127.0.0.1:<port>`, the same across restarts.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Kills the server at once (SIGKILL): its clients lose their connections.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on the same port and waits until it accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START;
        loop {
            let program = if on_path("nats-server") {
                "nats-server"
            } else {
                NATS_SERVER_SBIN
            };
            let mut child = Command::new(program)
                .arg("-c")
                .arg(&self.config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server starts");
            while Instant::now() < deadline {
                if TcpStream::connect(self.addr).is_ok() {
                    self.child = Some(child);
                    return;
                }
                if child.try_wait().unwrap().is_some() {
                    // The port is not free yet (the killed server's socket): try again.
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
