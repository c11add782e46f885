//! A throw-away PostgreSQL cluster per test binary, and PgBouncer in front of it, for the tests
//! of the shared store. The cluster is made with `initdb` in a temporary directory, as the
//! unprivileged `postgres` user when the tests run as root (PostgreSQL refuses to run as root),
//! listens on 127.0.0.1 at a free port with fsync off (`durability`), and is started by the
//! first test that asks for a database; each test gets a fresh database of its own
//! (`database`).
//!
//! A test that stops and starts its database, or needs TLS, takes a cluster of its own
//! (`OwnCluster`), so the tests sharing the binary's cluster are not disturbed.
//!
//! A watchdog process, started with the cluster in a process group of its own, stops the
//! cluster and PgBouncer and removes the directory once the test binary has exited, however it
//! exited. A cluster left over by a watchdog that was killed blocks nothing: each run uses a
//! new directory and a new port.

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::free_port;
use super::tools::{Tool, have};

/// How a test reaches the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Straight to PostgreSQL.
    Direct,
    /// Through PgBouncer in transaction pooling mode: no session state survives a transaction.
    PgBouncer,
}

/// The user the cluster runs as: root may not run PostgreSQL.
const SYSTEM_USER: &str = "postgres";
/// What PostgreSQL's `trust` authentication lets in.
const DB_USER: &str = "postgres";

struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// Whether it runs with `ssl = on`.
    tls: bool,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static BOUNCER: OnceLock<u16> = OnceLock::new();
/// Numbers databases across every cluster of the binary.
static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// The directory of the newest installed PostgreSQL's programs (Debian's layout).
pub fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// Where PgBouncer is (Debian installs it in /usr/sbin, off a user's PATH).
pub fn pgbouncer() -> Option<PathBuf> {
    ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A fresh, empty database in this binary's cluster, as a `postgres://` URL by `route`; `None`
/// (after `skip`) when PostgreSQL, or PgBouncer for that route, is not installed.
pub fn database(route: Route) -> Option<String> {
    if !have(Tool::Postgres) || (route == Route::PgBouncer && !have(Tool::PgBouncer)) {
        return None;
    }
    let cluster = CLUSTER.get_or_init(|| Cluster::start(false));
    let name = cluster.create_database();
    let port = match route {
        Route::Direct => cluster.port,
        Route::PgBouncer => *BOUNCER.get_or_init(|| cluster.start_pgbouncer()),
    };
    Some(format!(
        "postgres://{DB_USER}@127.0.0.1:{port}/{name}?sslmode=disable"
    ))
}

/// Ends every server connection to the database of `url` (as an administrator's
/// `pg_terminate_backend` or a server restart would), returning how many there were.
pub fn terminate_connections(url: &str) -> usize {
    let cluster = CLUSTER.get().expect("the cluster is started by `database`");
    let name = database_name(url);
    cluster
        .psql(
            "postgres",
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{name}'"
            ),
        )
        .parse()
        .unwrap()
}

/// A cluster of one test's own, which it may stop and start again (on the same port and data
/// directory) or run with TLS, without disturbing the tests that share the binary's cluster.
pub struct OwnCluster(Cluster);

impl OwnCluster {
    /// A started cluster; with `tls`, `ssl = on` with a self-signed certificate for
    /// `localhost` and 127.0.0.1. `None` (after `skip`) when PostgreSQL is not installed.
    pub fn start(tls: bool) -> Option<OwnCluster> {
        have(Tool::Postgres).then(|| OwnCluster(Cluster::start(tls)))
    }

    /// A fresh database in it, as a URL with the given `sslmode`.
    pub fn database(&self, sslmode: &str) -> String {
        let name = self.0.create_database();
        format!(
            "postgres://{DB_USER}@127.0.0.1:{}/{name}?sslmode={sslmode}",
            self.0.port
        )
    }

    /// Stops the server (`pg_ctl stop -m fast`: sessions are ended, as a database restart or
    /// failover ends them) and waits until it is down.
    pub fn stop(&self) {
        let stopped = as_system_user(&self.0.bin.join("pg_ctl"))
            .args(["-w", "-t", "60", "-m", "fast", "-D"])
            .arg(self.0.dir.join("data"))
            .arg("stop")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl runs");
        assert!(stopped.success(), "pg_ctl stop");
    }

    /// Starts the stopped server again, on its port and data directory.
    pub fn restart(&self) {
        assert!(
            self.0.pg_ctl_start(),
            "PostgreSQL did not start again: {}",
            std::fs::read_to_string(self.0.dir.join("postgres.log")).unwrap_or_default()
        );
    }

    /// The server's certificate (PEM) of a cluster started with TLS.
    pub fn certificate(&self) -> PathBuf {
        self.0.dir.join("data").join("server.crt")
    }

    /// The answer of `sql` run in the database of `url` (unaligned, tuples only).
    pub fn query(&self, url: &str, sql: &str) -> String {
        self.0.psql(database_name(url), sql)
    }
}

/// The database a URL of these helpers names.
fn database_name(url: &str) -> &str {
    url.rsplit('/')
        .next()
        .and_then(|tail| tail.split('?').next())
        .expect("a database name")
}

impl Cluster {
    fn start(tls: bool) -> Cluster {
        let bin = bin_dir().expect("checked by have(Tool::Postgres)");
        let dir = tempfile::Builder::new()
            .prefix("agentnexus-pg-")
            .tempdir()
            .unwrap()
            .keep();
        own(&dir);
        let data = dir.join("data");
        let init = as_system_user(&bin.join("initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                DB_USER,
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .expect("initdb runs");
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        if tls {
            self_signed_certificate(&data);
            own(&dir);
        }
        watch_over(&bin, &dir);
        // A free port can be taken by someone else before the server binds it: try a few.
        for _ in 0..5 {
            let cluster = Cluster {
                bin: bin.clone(),
                dir: dir.clone(),
                port: free_port(),
                tls,
            };
            if cluster.pg_ctl_start() {
                return cluster;
            }
        }
        panic!(
            "PostgreSQL did not start: {}",
            std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default()
        );
    }

    /// Starts the server on its port and waits until it accepts connections.
    fn pg_ctl_start(&self) -> bool {
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} {} -c max_connections=200",
            self.port,
            self.dir.display(),
            durability()
        );
        if self.tls {
            options.push_str(" -c ssl=on");
        }
        as_system_user(&self.bin.join("pg_ctl"))
            .args(["-w", "-t", "60", "-D"])
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("postgres.log"))
            .args(["-o", &options, "start"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("pg_ctl runs")
            .success()
    }

    /// Creates a fresh database and returns its name.
    fn create_database(&self) -> String {
        let name = format!("test_{}", DATABASES.fetch_add(1, Ordering::Relaxed));
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        name
    }

    /// Runs `sql` in `database` as the administrator, returning its rows (unaligned).
    fn psql(&self, database: &str, sql: &str) -> String {
        let output = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                DB_USER,
                "-p",
                &self.port.to_string(),
            ])
            .args(["-d", database, "-c", sql])
            .env("PGSSLMODE", "disable")
            .output()
            .expect("psql runs");
        assert!(
            output.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Starts PgBouncer in transaction pooling mode in front of the cluster.
    fn start_pgbouncer(&self) -> u16 {
        let program = pgbouncer().expect("checked by have(Tool::PgBouncer)");
        let dir = &self.dir;
        let userlist = dir.join("userlist.txt");
        std::fs::write(&userlist, format!("\"{DB_USER}\" \"\"\n")).unwrap();
        for _ in 0..5 {
            let port = free_port();
            let ini = dir.join("pgbouncer.ini");
            std::fs::write(
                &ini,
                format!(
                    "[databases]\n* = host=127.0.0.1 port={}\n\n[pgbouncer]\n\
                     listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                     auth_type = trust\nauth_file = {}\npool_mode = transaction\n\
                     max_client_conn = 1000\ndefault_pool_size = 20\n\
                     logfile = {}\npidfile = {}\n",
                    self.port,
                    userlist.display(),
                    dir.join("pgbouncer.log").display(),
                    dir.join("pgbouncer.pid").display(),
                ),
            )
            .unwrap();
            own(dir);
            let started = as_system_user(&program)
                .arg("-d")
                .arg(&ini)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("pgbouncer runs");
            if started.success() && accepts(port) {
                return port;
            }
        }
        panic!(
            "PgBouncer did not start: {}",
            std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default()
        );
    }
}

/// Writes `server.crt` and `server.key` (self-signed, for `localhost` and 127.0.0.1) into a
/// data directory, where `ssl = on` finds them.
fn self_signed_certificate(data: &Path) {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let certified = rcgen::generate_simple_self_signed(names).expect("a certificate is made");
    std::fs::write(data.join("server.crt"), certified.cert.pem()).unwrap();
    let key = data.join("server.key");
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    // PostgreSQL refuses a key that others may read.
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// Gives `dir` (and what is in it) to the system user, when the tests run as root.
fn own(dir: &Path) {
    if running_as_root() {
        let chowned = Command::new("chown")
            .args(["-R", &format!("{SYSTEM_USER}:")])
            .arg(dir)
            .status()
            .expect("chown runs");
        assert!(chowned.success(), "chown {}", dir.display());
    }
}

/// Tests need no durability (fsync off); a benchmark that reports durable figures sets
/// `AGENTNEXUS_PG_DURABLE=1` before its first database and gets PostgreSQL's defaults.
fn durability() -> &'static str {
    if std::env::var_os("AGENTNEXUS_PG_DURABLE").is_some() {
        "-c fsync=on -c synchronous_commit=on -c full_page_writes=on"
    } else {
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    }
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A command that runs `program` as the system user when the tests run as root.
fn as_system_user(program: &Path) -> Command {
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", SYSTEM_USER, "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Starts the watchdog: once this process is gone, it stops PgBouncer and the cluster and
/// removes their directory. In a process group of its own, so an interrupt of the tests
/// (ctrl-c) does not stop it before it has cleaned up.
fn watch_over(bin: &Path, dir: &Path) {
    let pg_ctl = bin.join("pg_ctl");
    let stop = if running_as_root() {
        format!("runuser -u {SYSTEM_USER} -- '{}'", pg_ctl.display())
    } else {
        format!("'{}'", pg_ctl.display())
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done
         [ -f '{dir}/pgbouncer.pid' ] && kill -TERM \"$(cat '{dir}/pgbouncer.pid')\"
         {stop} -D '{dir}/data' stop -m immediate
         rm -rf '{dir}'",
        pid = std::process::id(),
        dir = dir.display(),
    );
    let mut watchdog = Command::new("sh")
        .args(["-c", &script])
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the cluster's watchdog starts");
    // It normally outlives this process; should it end first, it is reaped.
    std::thread::spawn(move || watchdog.wait());
}

/// Whether something accepts connections on `port` within a few seconds.
fn accepts(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
