//! Wires everything together: opens the store and the bus the configuration names, starts the
//! runtime on them, binds the listener and serves the API until told to stop, then shuts down in
//! order (stop accepting, let executions finish or stop them, flush the store).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::ws::Connections;
use crate::api::{self, AppState, Auth, Mode, SitePolicy};
use crate::bus::{Bus, LocalBus, NatsBus, NatsError};
use crate::config::{Config, ConfigError};
use crate::runtime::{self, Backends, QueueMode, Runtime};
use crate::site::SiteError;
use crate::store::{PostgresOptions, PostgresStore, SqliteOptions, SqliteStore, Store, StoreError};
use crate::telemetry::forward::{ForwardError, Forwarder};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid allowed_hosts or websocket.allowed_origins: {0}")]
    Sites(#[from] SiteError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Bus(#[from] NatsError),
    #[error(transparent)]
    Forward(#[from] ForwardError),
}

/// How often a follower re-reads a shared database when no NATS carries other replicas'
/// commits: the delay a follower on another replica than the owner may see.
const SHARED_STORE_POLL: Duration = Duration::from_secs(1);

/// The store and the bus, chosen once from the configuration: the PostgreSQL store at
/// `database_url` if there is one, else the embedded SQLite store in `data_dir`; NATS at
/// `nats_url` (connected in the background: the server may be away at start), else the
/// in-process bus (polling the store if the database is shared).
pub async fn open_backends(config: &Config) -> Result<Backends, StartError> {
    open_backends_waiting(config, &mut || {}).await
}

/// As `open_backends`, calling `waiting` after each attempt to reach the database that failed
/// for a passing reason (it is tried again until it answers).
async fn open_backends_waiting(
    config: &Config,
    waiting: &mut (dyn FnMut() + Send),
) -> Result<Backends, StartError> {
    let bus: Arc<dyn Bus> = match &config.nats_url {
        Some(url) => {
            let bus = NatsBus::connect(url).await?;
            // The URL may hold credentials: only where it points is logged.
            tracing::info!(server = %bus.server(), "event bus: NATS");
            Arc::new(bus)
        }
        // Replicas sharing a database without a bus between them: followers poll the store.
        None if config.database_url.is_some() => Arc::new(LocalBus::polling(SHARED_STORE_POLL)),
        None => Arc::new(LocalBus::new()),
    };
    let (lost, lost_streams) = tokio::sync::mpsc::unbounded_channel();
    let outage_limit = Duration::from_secs(config.store_outage_limit_secs);
    let lease = Duration::from_millis(config.lease_ms);
    let (store, queue): (Arc<dyn Store>, QueueMode) = match &config.database_url {
        Some(url) => {
            tracing::info!(database = %url, "keeping state in PostgreSQL");
            let options = PostgresOptions { outage_limit };
            let store = open_postgres(url, options, &bus, lost, waiting).await?;
            (Arc::new(store), QueueMode::Shared { lease })
        }
        None => {
            let options = SqliteOptions {
                sync_commits: config.sync_commits,
                outage_limit,
            };
            let store = SqliteStore::open(&config.data_dir, options, bus.clone(), lost)?;
            (Arc::new(store), QueueMode::InProcess)
        }
    };
    Ok(Backends {
        store,
        queue,
        bus,
        lost_streams,
    })
}

/// Waits between attempts to reach the database at start: doubling up to the last.
const FIRST_START_RETRY: Duration = Duration::from_millis(250);
const MAX_START_RETRY: Duration = Duration::from_secs(5);

/// Opens the PostgreSQL store, waiting for the database as long as its fault may pass (refused,
/// timed out, starting up: `StoreError::is_transient`), so replicas and their database can
/// start in any order. A fault that will not pass (no such database, authentication refused)
/// ends the start at once.
async fn open_postgres(
    url: &crate::config::DatabaseUrl,
    options: PostgresOptions,
    bus: &Arc<dyn Bus>,
    lost: tokio::sync::mpsc::UnboundedSender<crate::store::LostStream>,
    waiting: &mut (dyn FnMut() + Send),
) -> Result<PostgresStore, StoreError> {
    let mut attempts: u32 = 0;
    let mut wait = FIRST_START_RETRY;
    loop {
        match PostgresStore::open(url.expose(), options.clone(), bus.clone(), lost.clone()).await {
            Ok(store) => {
                if attempts > 0 {
                    tracing::info!(attempts = attempts + 1, "the database answers");
                }
                return Ok(store);
            }
            Err(e) if e.is_transient() => {
                attempts += 1;
                // The client's errors name the host and the cause, never the password.
                tracing::warn!(database = %url, attempt = attempts, error = %e, retry_in = ?wait, "the database cannot be reached yet; retrying");
                waiting();
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_START_RETRY);
            }
            Err(e) => return Err(e),
        }
    }
}

/// A server that is up and serving.
pub struct Server {
    addr: SocketAddr,
    runtime: Arc<Runtime>,
    draining: CancellationToken,
    stop_accepting: CancellationToken,
    http: JoinHandle<std::io::Result<()>>,
    connections: Arc<Connections>,
    shutdown_grace: Duration,
}

impl Server {
    pub async fn start(mut config: Config) -> Result<Server, StartError> {
        let started = Instant::now();
        // Bound first, so that while the database is awaited the probes can answer (alive, not
        // ready) instead of a refused connection that an orchestrator takes for a dead process.
        let (listener, addr) = bind(config.bind).await?;
        // Agents export their telemetry to the port actually bound (port 0 picks one).
        config
            .otlp
            .endpoint
            .get_or_insert_with(|| crate::runtime::otlp_endpoint(addr));
        let auth = Arc::new(Auth::from_config(&config)?);
        let mode = if auth.is_open() {
            Mode::Open
        } else {
            Mode::Protected
        };
        let sites = Arc::new(SitePolicy::new(&config, mode, addr.port())?);
        let backends = open_backends_with_probes(&config, &listener, started, &sites).await;
        let runtime = Runtime::start(&config, backends?).await?;
        let agents = runtime.agents().await?.len();
        tracing::info!("{}", agents_loaded(&config, agents));
        if mode == Mode::Open {
            tracing::warn!(
                "no api_keys configured: the API is open to anyone who can reach {addr} (loopback only; requests must name it as localhost, a loopback address or one of allowed_hosts)"
            );
        }
        let draining = CancellationToken::new();
        let stop_accepting = CancellationToken::new();
        let connections = Arc::new(Connections::default());
        let state = AppState {
            runtime: runtime.clone(),
            auth,
            health: Arc::new(config.health.clone()),
            started,
            draining: draining.clone(),
            closing: stop_accepting.clone(),
            websocket: Arc::new(config.websocket.clone()),
            connections: connections.clone(),
            sites,
            otlp: Arc::new(
                api::otlp::OtlpIngest::new(&config.otlp)
                    .forwarding(Forwarder::start(&config.otlp, runtime.metrics().clone())?),
            ),
        };
        if let Some(metrics_addr) = config.metrics_bind {
            let (listener, bound) = bind(metrics_addr).await?;
            let sites = Arc::new(SitePolicy::new(&config, mode, bound.port())?);
            let app = api::metrics_app(state.clone(), sites);
            tracing::info!(addr = %bound, "metrics listening");
            tokio::spawn(serve(listener, app, stop_accepting.clone()));
        }
        let app = api::router(state, config.max_body_bytes);
        let http = tokio::spawn(serve(listener, app, stop_accepting.clone()));
        runtime.docker().clone().spawn_background(
            Duration::from_millis(config.docker.probe_interval_ms),
            Duration::from_millis(config.health.check_timeout_ms),
            stop_accepting.clone(),
        );
        tokio::spawn(measure_scheduling_lag(
            runtime.clone(),
            stop_accepting.clone(),
        ));
        tokio::spawn(probe_database(
            runtime.clone(),
            Duration::from_millis(config.health.check_timeout_ms),
            stop_accepting.clone(),
        ));
        tracing::info!(%addr, data_dir = %config.data_dir.display(), ready_ms = started.elapsed().as_millis() as u64, "agentnexus listening");
        Ok(Server {
            addr,
            runtime,
            draining,
            stop_accepting,
            http,
            connections,
            shutdown_grace: Duration::from_secs(config.shutdown_grace_secs),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Graceful shutdown: readiness fails at once (so load balancers stop sending work) while
    /// the API keeps serving; running executions finish within the grace period, the rest are
    /// stopped, and everything is committed; then the listener closes, and each WebSocket
    /// client gets every event committed so far, then its close frame (1001).
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        self.draining.cancel();
        self.runtime.shutdown(self.shutdown_grace).await;
        self.stop_accepting.cancel();
        // In-flight requests had the whole grace period; do not wait on them forever.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.http).await;
        // Upgraded connections are no longer the HTTP server's: returning before they have
        // said goodbye would cut them off without a close frame.
        self.connections.closed().await;
        tracing::info!("stopped");
    }
}

/// A listener on `addr`, and the address it got (the port, for port 0).
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let bound = |source| StartError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bound)?;
    let local = listener.local_addr().map_err(bound)?;
    Ok((listener, local))
}

/// `open_backends`, answering the probes on `listener` while the database is awaited.
async fn open_backends_with_probes(
    config: &Config,
    listener: &TcpListener,
    started: Instant,
    sites: &Arc<SitePolicy>,
) -> Result<Backends, StartError> {
    let mut probes: Option<Probes> = None;
    let backends = open_backends_waiting(config, &mut || {
        if probes.is_none() {
            probes = Probes::serve(listener, started, sites.clone());
        }
    })
    .await;
    if let Some(probes) = probes {
        probes.stop().await;
    }
    backends
}

/// The probes served on the API's listener while the database is awaited at start.
struct Probes {
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl Probes {
    /// Serves `api::starting_router` on a second handle of `listener` (the same socket), which
    /// is closed again by `stop`; `None` (logged) if the handle cannot be had.
    fn serve(listener: &TcpListener, started: Instant, sites: Arc<SitePolicy>) -> Option<Probes> {
        use std::os::fd::AsFd;
        let handle = listener
            .as_fd()
            .try_clone_to_owned()
            .and_then(|fd| TcpListener::from_std(std::net::TcpListener::from(fd)));
        let second = match handle {
            Ok(second) => second,
            Err(e) => {
                tracing::warn!(error = %e, "cannot answer the probes while the database is awaited");
                return None;
            }
        };
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "waiting for the database; meanwhile liveness answers 200, readiness and the API 503");
        }
        let stop = CancellationToken::new();
        let app = api::starting_router(started, sites);
        let task = tokio::spawn(serve(second, app, stop.clone()));
        Some(Probes { stop, task })
    }

    async fn stop(self) {
        self.stop.cancel();
        // A probe is answered at once; a client that keeps its connection open is not awaited.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

/// Where the `total` agents the server started with come from: the configuration file, and the
/// store (those defined over the API, kept in the data directory).
fn agents_loaded(config: &Config, total: usize) -> String {
    let count = |n: usize| format!("{n} agent{}", if n == 1 { "" } else { "s" });
    let from_file = config.agents.len();
    let stored = total.saturating_sub(from_file);
    let mut sources = Vec::new();
    if let Some(file) = &config.file {
        sources.push((from_file, file.display().to_string()));
    }
    if stored > 0 || config.file.is_none() {
        let store = match &config.database_url {
            Some(url) => format!("the store in {url}"),
            None => format!("the store in {}", config.data_dir.display()),
        };
        sources.push((stored, store));
    }
    match sources.as_slice() {
        [(_, source)] => format!("loaded {} from {source}", count(total)),
        _ => {
            let each: Vec<String> = sources
                .iter()
                .map(|(n, source)| format!("{n} from {source}"))
                .collect();
            format!("loaded {}: {}", count(total), each.join(", "))
        }
    }
}

async fn serve(
    listener: TcpListener,
    app: axum::Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

/// How late a periodic timer fires: when the async runtime is starved (blocking work on its
/// threads, CPU saturation), every request and stream is late by about as much.
async fn measure_scheduling_lag(runtime: Arc<Runtime>, stop: CancellationToken) {
    const PERIOD: Duration = Duration::from_millis(100);
    loop {
        let due = Instant::now() + PERIOD;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(due.into()) => {}
        }
        let lag = Instant::now().saturating_duration_since(due);
        runtime.metrics().scheduling_lag(lag.as_secs_f64());
    }
}

/// Keeps `agentnexus_database_healthy` current whether or not anyone asks for readiness, so
/// an alert on it fires even when no probe is configured: periodically, and at once when the
/// store's writes start or stop failing.
async fn probe_database(runtime: Arc<Runtime>, timeout: Duration, stop: CancellationToken) {
    const PERIOD: Duration = Duration::from_secs(5);
    let mut writes = runtime.store().write_health();
    loop {
        let healthy = matches!(
            tokio::time::timeout(timeout, runtime.ping_store()).await,
            Ok(Ok(()))
        );
        runtime.metrics().database_healthy.set(i64::from(healthy));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PERIOD) => {}
            Ok(()) = writes.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigAgent;
    use crate::domain::{Runtime as AgentRuntime, Wei};

    fn config(file: Option<&str>, agents: usize) -> Config {
        let agent = |i: usize| ConfigAgent {
            id: format!("a{i}"),
            name: "A".into(),
            price_wei: Wei(0),
            timeout_secs: None,
            input_schema: None,
            runtime: AgentRuntime::docker("busybox", &[]),
            budget: Default::default(),
        };
        Config {
            file: file.map(Into::into),
            data_dir: "/var/lib/agentnexus".into(),
            agents: (0..agents).map(agent).collect(),
            ..Config::default()
        }
    }

    #[test]
    fn the_start_up_log_says_how_many_agents_came_from_where() {
        let file = Some("examples/agentnexus.toml");
        assert_eq!(
            agents_loaded(&config(file, 3), 3),
            "loaded 3 agents from examples/agentnexus.toml"
        );
        assert_eq!(
            agents_loaded(&config(file, 1), 3),
            "loaded 3 agents: 1 from examples/agentnexus.toml, 2 from the store in /var/lib/agentnexus"
        );
        assert_eq!(
            agents_loaded(&config(None, 0), 1),
            "loaded 1 agent from the store in /var/lib/agentnexus"
        );
        assert_eq!(
            agents_loaded(&config(None, 0), 0),
            "loaded 0 agents from the store in /var/lib/agentnexus"
        );
        let on_postgres = Config {
            database_url: Some(crate::config::DatabaseUrl::new(
                "postgres://app:s3cret@db:5432/agentnexus",
            )),
            ..config(None, 0)
        };
        assert_eq!(
            agents_loaded(&on_postgres, 2),
            "loaded 2 agents from the store in postgres://app:***@db:5432/agentnexus"
        );
    }
}
