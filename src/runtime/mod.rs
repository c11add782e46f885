//! The runtime core: accepts executions, queues them under the concurrency limit in arrival
//! order, hands them to an executor, and turns what the executor reports into status changes.
//! `Runtime::transition` (`transition.rs`) is the one function through which every status
//! change goes.
//!
//! This file is the facade the API calls and the wiring of the parts; each job lives in its own
//! file: `access.rs` who may see what, `agents.rs` agent definitions, `queue.rs` submitting and
//! the wait for a slot, `supervise.rs` driving one run to its end, `transition.rs` status
//! changes, `recovery.rs` what a previous run left, `shutdown.rs` the orderly stop; with a
//! shared store, `claims.rs` the shared queue and its leases, `cluster.rs` the heartbeat and
//! the cluster's facts.

mod access;
mod agents;
mod claims;
mod cluster;
mod queue;
mod recovery;
mod retention;
mod shutdown;
mod supervise;
mod telemetry;
mod transition;

pub use access::Caller;
pub use telemetry::{ExportError, Exported, Sink};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::bus::Bus;
use crate::config::{Config, LogLimits};
use crate::docker::DockerProbe;
use crate::domain::ExecutionId;
use crate::executor::{DockerExecutor, ProcessExecutor};
use crate::metrics::Metrics;
use crate::store::{LostStream, Store, StoreError};
use supervise::Handle;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("agent {0:?} not found")]
    AgentNotFound(String),
    #[error("execution {0:?} not found")]
    ExecutionNotFound(String),
    #[error("{0:?} is not a valid {1} id")]
    InvalidId(String, &'static str),
    #[error("the input does not match the agent's input schema: {0}")]
    InputRejected(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("the runtime is shutting down")]
    ShuttingDown,
    /// A reader asked for the events after one that does not exist: nothing it can have seen.
    #[error("since {since} is beyond the last event of {id} (seq {last_seq})")]
    SinceBeyondEnd {
        id: String,
        since: u64,
        last_seq: u64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the runtime is given to keep and share its state, chosen once at wiring time
/// (`server::open_backends`): the store, the bus its commits are published on, and where the
/// store announces the streams it cut short.
pub struct Backends {
    pub store: Arc<dyn Store>,
    pub queue: QueueMode,
    pub bus: Arc<dyn Bus>,
    pub lost_streams: tokio::sync::mpsc::UnboundedReceiver<LostStream>,
}

/// Where PENDING executions wait, chosen with the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueMode {
    /// In this process, in arrival order: the store is this server's alone.
    InProcess,
    /// In the shared store: each replica claims the oldest one when it has a free slot, and
    /// holds a lease of this length on what it runs (see `claims`).
    Shared { lease: Duration },
}

pub struct Runtime {
    store: Arc<dyn Store>,
    queue: QueueMode,
    /// Wakes the claimer of a shared queue at once when an execution is submitted, here or
    /// (as the bus signals) on another replica.
    submitted: tokio::sync::Notify,
    bus: Arc<dyn Bus>,
    metrics: Arc<Metrics>,
    docker: Arc<DockerProbe>,
    process: ProcessExecutor,
    docker_executor: DockerExecutor,
    permits: Arc<Semaphore>,
    handles: Mutex<HashMap<ExecutionId, Arc<Handle>>>,
    tasks: TaskTracker,
    log_limits: LogLimits,
    kill_grace: Duration,
    default_timeout_secs: u64,
    /// Every user that can submit executions, for metric series created ahead of use.
    users: Vec<String>,
    /// Makes an agent's revenue gauge exact when it is defined: completions hold it shared
    /// from their commit until their metrics are updated; defining or deleting an agent holds
    /// it exclusively, so the revenue it reads from the store is neither missing a completion
    /// nor counting one twice.
    revenue_gate: tokio::sync::RwLock<()>,
    /// This replica's name: the owner recorded on the executions it runs.
    replica_id: String,
    /// Agents' OTLP exports, by the token of their run.
    telemetry: telemetry::TelemetryIntake,
    prices: Arc<crate::telemetry::PriceTable>,
    max_spans: u64,
}

impl Runtime {
    /// Starts on the given store and bus, registers the configured agents and recovers what a
    /// previous run left unfinished: PENDING executions are queued again, RUNNING ones end as
    /// FAILED (`runtime_restarted`), since their processes died with the previous run.
    pub async fn start(config: &Config, backends: Backends) -> Result<Arc<Runtime>> {
        let Backends {
            store,
            queue,
            bus,
            lost_streams,
        } = backends;
        let mut metrics = match queue {
            QueueMode::InProcess => Metrics::new(),
            QueueMode::Shared { .. } => {
                let store = store.clone();
                Metrics::shared(Box::new(move || store.fenced_writes()))
            }
        };
        metrics.watch_bus(bus.clone());
        let metrics = Arc::new(metrics);
        let docker = Arc::new(DockerProbe::new(&config.docker, metrics.clone()));
        let runtime = Arc::new(Runtime {
            store,
            queue,
            submitted: tokio::sync::Notify::new(),
            bus,
            docker: docker.clone(),
            metrics,
            process: ProcessExecutor {
                scratch_root: scratch_root(config),
                kill_grace: Duration::from_millis(config.kill_grace_ms),
                sample_interval: Duration::from_millis(config.sample_interval_ms),
                max_line_bytes: config.logs.max_line_bytes,
                containment: crate::executor::Containment::choose(config.containment)
                    .map_err(Error::Invalid)?,
            },
            docker_executor: DockerExecutor {
                probe: docker,
                kill_grace: Duration::from_millis(config.kill_grace_ms),
                sample_interval: Duration::from_millis(config.sample_interval_ms),
                max_line_bytes: config.logs.max_line_bytes,
                outage_limit: Duration::from_millis(config.docker.outage_limit_ms),
            },
            permits: Arc::new(Semaphore::new(config.max_concurrent_executions)),
            handles: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            log_limits: config.logs,
            kill_grace: Duration::from_millis(config.kill_grace_ms),
            default_timeout_secs: config.default_timeout_secs,
            users: known_users(config),
            revenue_gate: tokio::sync::RwLock::new(()),
            replica_id: config.replica_id.clone(),
            telemetry: telemetry::TelemetryIntake::new(
                config
                    .otlp
                    .endpoint
                    .clone()
                    .unwrap_or_else(|| otlp_endpoint(config.bind)),
                config.otlp.max_attribute_bytes,
            ),
            prices: Arc::new(
                crate::telemetry::PriceTable::new(&config.prices).map_err(Error::Invalid)?,
            ),
            max_spans: config.otlp.max_spans,
        });
        runtime.spawn_lost_stream_stopper(lost_streams);
        for entry in &config.agents {
            let agent = config.agent(entry).map_err(Error::Invalid)?;
            runtime.store.put_agent(&agent, true, true).await?;
        }
        if let Some(memory) = crate::health::memory_standing(config.health.memory_limit_bytes) {
            let limit = i64::try_from(memory.limit_bytes).unwrap_or(i64::MAX);
            runtime.metrics.memory_limit_bytes.set(limit);
        }
        for agent in runtime.store.list_agents().await? {
            let revenue = runtime.store.revenue(&agent.id).await?;
            runtime
                .metrics
                .register_agent(&agent, &runtime.users, revenue.0);
        }
        runtime.recover().await?;
        if let QueueMode::Shared { lease } = queue {
            runtime.listen_to_signals().await;
            runtime.spawn_claimer();
            runtime.spawn_lease_keeper(lease);
            runtime.spawn_cluster_heartbeat(lease);
        }
        runtime.spawn_container_sweeper(Duration::from_millis(config.docker.sweep_interval_ms));
        runtime.spawn_retention(
            config.retention_ms(),
            Duration::from_secs(config.retention_interval_secs),
        );
        Ok(runtime)
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn docker(&self) -> &Arc<DockerProbe> {
        &self.docker
    }

    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
    pub fn default_timeout_secs(&self) -> u64 {
        self.default_timeout_secs
    }
    pub async fn ping_store(&self) -> Result<()> {
        Ok(self.store.ping().await?)
    }
}

fn known_users(config: &Config) -> Vec<String> {
    if config.api_keys.is_empty() {
        return vec![Caller::local().user_id];
    }
    let mut users: Vec<String> = config.api_keys.iter().map(|k| k.user.clone()).collect();
    users.sort();
    users.dedup();
    users
}

/// The OTLP endpoint of a server listening on `addr`, as an agent on this machine reaches it:
/// an address bound to every interface is reached on loopback.
pub fn otlp_endpoint(addr: std::net::SocketAddr) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("http://{}", std::net::SocketAddr::new(ip, addr.port()))
}

fn scratch_root(config: &Config) -> PathBuf {
    config.data_dir.join("runs")
}
