//! A Unix socket proxy in front of the real Docker daemon, for tests of a connection that fails
//! while the daemon itself stays up: on command it cuts the connections it carries (all, or
//! those whose latest request matches), refuses new ones for a while, cuts everything the
//! moment the daemon reports a container's exit, or holds back what the daemon sends on some
//! connections (so that a cut loses it).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::{AbortHandle, JoinHandle};

const DAEMON: &str = "/var/run/docker.sock";

pub struct DaemonProxy {
    socket: PathBuf,
    shared: Arc<Mutex<Shared>>,
    accepting: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    connections: Vec<Connection>,
    /// Cut everything when the daemon's answer to a wait passes through.
    cut_at_exit: bool,
    /// Hold back each chunk the daemon sends on connections whose request contains this.
    slow: Option<(&'static str, Duration)>,
}

/// What to do with a chunk.
enum Verdict {
    Forward,
    ForwardAfter(Duration),
    /// Drop it: the connections were cut.
    Drop,
}

struct Connection {
    /// The request line the client sent last on this connection.
    request: Arc<Mutex<String>>,
    pumps: [AbortHandle; 2],
}

impl DaemonProxy {
    /// Listens on `socket`, passing everything through to the daemon.
    pub fn start(socket: &Path) -> DaemonProxy {
        let mut proxy = DaemonProxy {
            socket: socket.to_owned(),
            shared: Arc::default(),
            accepting: None,
        };
        proxy.resume();
        proxy
    }

    /// The address to configure as the daemon's.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Accepts connections again (after `refuse`).
    pub fn resume(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let listener = UnixListener::bind(&self.socket).expect("the proxy socket binds");
        let shared = self.shared.clone();
        self.accepting = Some(tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(daemon) = UnixStream::connect(DAEMON).await else {
                    continue;
                };
                carry(&shared, client, daemon);
            }
        }));
    }

    /// Cuts every connection and refuses new ones (the socket stays, nobody listens) until
    /// `resume`.
    pub fn refuse(&mut self) {
        if let Some(accepting) = self.accepting.take() {
            accepting.abort();
        }
        self.cut_all();
    }

    /// Cuts every open connection; new ones are accepted. Returns how many were cut.
    pub fn cut_all(&self) -> usize {
        self.cut_where(|_| true)
    }

    /// Cuts the connections whose latest request line matches.
    pub fn cut_where(&self, matches: impl Fn(&str) -> bool) -> usize {
        cut_where(&self.shared, matches)
    }

    /// Cuts everything once, when the daemon's answer to a container wait passes through (the
    /// answer is dropped with it).
    pub fn cut_at_exit(&self) {
        self.shared.lock().unwrap().cut_at_exit = true;
    }

    /// Holds back every chunk the daemon sends on connections whose latest request contains
    /// `request` for `delay` (a backlog builds up, which a cut loses).
    pub fn slow_down(&self, request: &'static str, delay: Duration) {
        self.shared.lock().unwrap().slow = Some((request, delay));
    }

    /// Whether a `cut_at_exit` is still waiting for its moment.
    pub fn cut_at_exit_pending(&self) -> bool {
        self.shared.lock().unwrap().cut_at_exit
    }
}

impl Drop for DaemonProxy {
    fn drop(&mut self) {
        self.refuse();
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn cut_where(shared: &Mutex<Shared>, matches: impl Fn(&str) -> bool) -> usize {
    let mut shared = shared.lock().unwrap();
    let mut cut = 0;
    shared.connections.retain(|c| {
        let open = !c.pumps.iter().all(AbortHandle::is_finished);
        let hit = open && matches(&c.request.lock().unwrap());
        if hit {
            c.pumps.iter().for_each(AbortHandle::abort);
            cut += 1;
        }
        open && !hit
    });
    cut
}

/// Pumps both directions of one connection; aborting the pumps drops (closes) both sockets.
fn carry(shared: &Arc<Mutex<Shared>>, client: UnixStream, daemon: UnixStream) {
    let (client_r, client_w) = client.into_split();
    let (daemon_r, daemon_w) = daemon.into_split();
    let request = Arc::new(Mutex::new(String::new()));
    let up = tokio::spawn(pump(client_r, daemon_w, {
        let request = request.clone();
        move |bytes: &[u8]| {
            if let Some(line) = request_line(bytes) {
                *request.lock().unwrap() = line;
            }
            Verdict::Forward
        }
    }));
    let down = tokio::spawn(pump(daemon_r, client_w, {
        let shared = shared.clone();
        let request = request.clone();
        move |bytes: &[u8]| {
            let exit = bytes.windows(12).any(|w| w == b"\"StatusCode\"");
            if exit && std::mem::take(&mut shared.lock().unwrap().cut_at_exit) {
                cut_where(&shared, |_| true);
                return Verdict::Drop;
            }
            match shared.lock().unwrap().slow {
                Some((pattern, delay)) if request.lock().unwrap().contains(pattern) => {
                    Verdict::ForwardAfter(delay)
                }
                _ => Verdict::Forward,
            }
        }
    }));
    shared.lock().unwrap().connections.push(Connection {
        request,
        pumps: [up.abort_handle(), down.abort_handle()],
    });
}

/// Copies until the end of `from` (then closes the writing side of `to`), each chunk as
/// `verdict` says.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut verdict: impl FnMut(&[u8]) -> Verdict,
) {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match verdict(&buffer[..n]) {
            Verdict::Forward => {}
            Verdict::ForwardAfter(delay) => tokio::time::sleep(delay).await,
            Verdict::Drop => return,
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

/// The HTTP request line in a chunk the client sent, if one starts there.
fn request_line(bytes: &[u8]) -> Option<String> {
    let end = bytes.windows(11).position(|w| w == b" HTTP/1.1\r\n")?;
    let start = bytes[..end]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    Some(String::from_utf8_lossy(&bytes[start..end]).into_owned())
}
