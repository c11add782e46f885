//! Configuration: embedded defaults, then a TOML file, then `AGENTNEXUS_*` environment
//! variables, then command-line flags, each overriding the one before. Everything is checked
//! at load time, and an error names the offending key and where it came from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::domain::{self, Agent, Runtime, Wei};

mod database;
mod keys;
mod otlp;
mod replica;
mod report;
mod retention;

pub use database::{CertificateCheck, DatabaseUrl, client_url};
pub use keys::{ApiKey, KEYS_ENV, KeyDigest};
pub use otlp::OtlpConfig;
use replica::{LEASE_MS_MAX, LEASE_MS_MIN, default_replica_id, validate_replica_id};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        let all: Vec<String> = e.into_iter().map(report::describe).collect();
        ConfigError::Invalid(all.join("; "))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the one HTTP listener (API, WebSocket, metrics, health). Port 0 picks one.
    pub bind: SocketAddr,
    /// Where the SQLite database and per-execution scratch directories live.
    pub data_dir: PathBuf,
    /// A `postgres://` URL: keep agents, executions and events in that PostgreSQL database
    /// instead of the embedded SQLite one in `data_dir`. Its password never appears in logs.
    pub database_url: Option<DatabaseUrl>,
    /// Executions running at once; the rest wait in arrival order.
    pub max_concurrent_executions: usize,
    /// Interval between resource samples of a running execution.
    pub sample_interval_ms: u64,
    /// Between the polite stop signal and the kill, on timeout or cancel.
    pub kill_grace_ms: u64,
    /// On shutdown, how long running executions may go on before they are stopped.
    pub shutdown_grace_secs: u64,
    /// Timeout of agents that do not set their own.
    pub default_timeout_secs: u64,
    /// How the processes of a process agent are held together, so that all of them are
    /// measured and all of them end with the execution.
    pub containment: ContainmentMode,
    /// Make each commit reach the disk, not only the operating system: events survive a power
    /// loss, not only a crash of the runtime. Costs throughput on slow disks.
    pub sync_commits: bool,
    /// How long the store holds and retries its writes through a passing fault (a locked
    /// database, a full disk) before it gives up on the events waiting to be written: the
    /// executions concerned end FAILED `store_unavailable` once it can write again.
    pub store_outage_limit_secs: u64,
    /// The NATS server that carries live events between replicas (`nats://` or `tls://`, with
    /// any credentials in the URL). Absent: the in-process bus.
    pub nats_url: Option<String>,
    /// Finished executions that ended more than this many days ago are deleted, with their
    /// events (see `config::retention`). 0: kept forever.
    pub retention_days: u32,
    /// How often retention runs (and the store's size is measured), from start-up on.
    pub retention_interval_secs: u64,
    /// This replica's name among those sharing one database: the owner shown on the executions
    /// it runs. By default the host name plus a random suffix, new at each start.
    pub replica_id: String,
    /// How long a replica's claim on a running execution lasts unless renewed (it renews every
    /// third of it): after that, another replica ends the execution FAILED `replica_lost`.
    pub lease_ms: u64,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    pub logs: LogLimits,
    pub health: HealthConfig,
    pub docker: DockerConfig,
    pub websocket: WebSocketConfig,
    pub otlp: OtlpConfig,
    /// `[[prices]]`: US dollars per million tokens per model, over the default table.
    pub prices: Vec<crate::telemetry::Price>,
    /// Also serve `/metrics` and `/metrics/json` on this separate address (e.g. kept off the
    /// public port); they stay on the main listener too.
    pub metrics_bind: Option<SocketAddr>,
    /// Names besides the loopback ones that this server answers to without API keys (names
    /// an `/etc/hosts` entry or a local proxy gives it). Anything else is refused, which is
    /// what stops DNS rebinding. Host names or IP addresses, without a port.
    pub allowed_hosts: Vec<String>,
    pub agents: Vec<ConfigAgent>,
    /// API keys. After loading, also those of `api_keys_file` and `AGENTNEXUS_API_KEYS`.
    pub api_keys: Vec<ApiKey>,
    /// A TOML file of more `[[api_keys]]` (a mounted Secret), relative to the config file.
    pub api_keys_file: Option<PathBuf>,
    /// The file this configuration was read from, as it was named (not a setting).
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 3001)),
            data_dir: PathBuf::from("agentnexus-data"),
            database_url: None,
            max_concurrent_executions: 16,
            sample_interval_ms: 1000,
            kill_grace_ms: 5000,
            shutdown_grace_secs: 30,
            default_timeout_secs: 300,
            containment: ContainmentMode::Auto,
            sync_commits: true,
            store_outage_limit_secs: 120,
            nats_url: None,
            retention_days: 0,
            retention_interval_secs: 300,
            replica_id: default_replica_id(),
            lease_ms: 30_000,
            max_body_bytes: 1024 * 1024,
            logs: LogLimits::default(),
            health: HealthConfig::default(),
            docker: DockerConfig::default(),
            websocket: WebSocketConfig::default(),
            otlp: OtlpConfig::default(),
            prices: Vec::new(),
            metrics_bind: None,
            allowed_hosts: Vec::new(),
            agents: Vec::new(),
            api_keys: Vec::new(),
            api_keys_file: None,
            file: None,
        }
    }
}

/// The mechanism that contains an execution's processes (see README, Operations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainmentMode {
    /// The first that this host offers: cgroup v2, the v1 freezer, a subreaper supervisor.
    Auto,
    CgroupV2,
    CgroupV1,
    /// Each agent under a supervisor process that is a child subreaper.
    Subreaper,
    /// Only the agent's process group: what leaves it is not contained.
    ProcessGroup,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogLimits {
    /// Longer lines are cut to this many bytes and marked.
    pub max_line_bytes: usize,
    /// Stored lines per execution; past it one marker is stored and the rest only counted.
    pub max_lines: u64,
    /// Stored bytes of log per execution, with the same treatment as `max_lines`.
    pub max_bytes: u64,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            max_line_bytes: 16 * 1024,
            max_lines: 2_000_000,
            max_bytes: 512 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Each readiness check answers within this, whatever the dependency does.
    pub check_timeout_ms: u64,
    /// The memory the process may use; by default the cgroup limit, else the machine's memory.
    pub memory_limit_bytes: Option<u64>,
    /// Include internal error details in readiness answers (they are always logged).
    pub expose_details: bool,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            check_timeout_ms: 2000,
            memory_limit_bytes: None,
            expose_details: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerConfig {
    /// Whether this deployment uses Docker at all.
    pub enabled: bool,
    /// Daemon address (`unix:///…` or `tcp://…`); default `DOCKER_HOST`, else the local socket.
    pub host: Option<String>,
    /// Interval of the background health probe.
    pub probe_interval_ms: u64,
    /// How often containers of finished executions are looked for and removed (those the
    /// daemon could not remove when they ended, because it was away).
    pub sweep_interval_ms: u64,
    /// How long the daemon may stay unreachable while a container runs (connections refused or
    /// cut, calls unanswered) before its execution ends `docker_unavailable`.
    pub outage_limit_ms: u64,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            enabled: true,
            host: None,
            probe_interval_ms: 5000,
            sweep_interval_ms: 60_000,
            outage_limit_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// A protocol ping goes out this often.
    pub heartbeat_interval_ms: u64,
    /// A connection that sent nothing at all (not even a pong) for this long is closed.
    pub idle_timeout_ms: u64,
    /// Largest inbound message or frame.
    pub max_message_bytes: usize,
    pub max_subscriptions: usize,
    /// Over this, upgrades are refused with 503.
    pub max_connections: usize,
    /// Bytes queued for one client before the server waits for it to read.
    pub send_queue_bytes: usize,
    /// A client whose queue stays full this long is closed as a slow consumer (code 4008).
    pub slow_consumer_timeout_ms: u64,
    /// Inbound messages per second per connection, sustained.
    pub rate_limit_per_sec: u32,
    /// Inbound messages allowed in a burst.
    pub rate_limit_burst: u32,
    /// Browser origins (`scheme://host[:port]`) allowed to connect besides the server's own;
    /// requests without an `Origin` header (non-browser clients) are not affected. Without API
    /// keys, the only origins whose pages may send requests to the API at all.
    pub allowed_origins: Vec<String>,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            heartbeat_interval_ms: 30_000,
            idle_timeout_ms: 60_000,
            max_message_bytes: 64 * 1024,
            max_subscriptions: 100,
            max_connections: 10_000,
            send_queue_bytes: 1024 * 1024,
            slow_consumer_timeout_ms: 5_000,
            rate_limit_per_sec: 50,
            rate_limit_burst: 100,
            allowed_origins: Vec::new(),
        }
    }
}

/// An agent as written in the config file (snake_case keys, like the rest of the file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigAgent {
    pub id: String,
    pub name: String,
    pub price_wei: Wei,
    pub timeout_secs: Option<u64>,
    pub input_schema: Option<serde_json::Value>,
    pub runtime: Runtime,
    /// `budget = { max_tokens = 100000, max_cost_usd = "0.50", … }`; none when absent.
    #[serde(default, skip_serializing_if = "domain::Budget::is_empty")]
    pub budget: domain::Budget,
}

/// Values given on the command line; `None` leaves the lower layers in force.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<DatabaseUrl>,
}

impl Config {
    pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::MissingFile(file.to_owned()));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        let figment = figment
            // Only the server's own scalar settings: other AGENTNEXUS_* variables belong to the
            // command-line client or to agents.
            .merge(Env::prefixed("AGENTNEXUS_").only(&[
                "bind",
                "data_dir",
                "database_url",
                "max_concurrent_executions",
                "sample_interval_ms",
                "kill_grace_ms",
                "shutdown_grace_secs",
                "default_timeout_secs",
                "containment",
                "sync_commits",
                "store_outage_limit_secs",
                "nats_url",
                "retention_days",
                "retention_interval_secs",
                "replica_id",
                "lease_ms",
                "max_body_bytes",
                "api_keys_file",
            ]))
            .merge(Serialized::defaults(overrides));
        let mut config: Config = figment.extract()?;
        // A bare file name has an empty parent: the current directory.
        if let Some(dir) = file.and_then(Path::parent).map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        }) {
            let dir = std::path::absolute(dir).map_err(|e| {
                ConfigError::Invalid(format!("cannot resolve {}: {e}", dir.display()))
            })?;
            config.resolve_relative_paths(&dir);
        }
        // Agents run in their own working directories, and get paths under the data directory
        // (the output file): those must not depend on the server's working directory.
        config.data_dir = std::path::absolute(&config.data_dir).map_err(|e| {
            ConfigError::Invalid(format!("data_dir {}: {e}", config.data_dir.display()))
        })?;
        config.gather_api_keys(file)?;
        config.validate()?;
        config.file = file.map(Path::to_owned);
        Ok(config)
    }

    /// Checks the file's keys and adds those of the key file and the environment.
    fn gather_api_keys(&mut self, file: Option<&Path>) -> Result<(), ConfigError> {
        let mut ring = keys::KeyRing::default();
        let here = file.map_or("the configuration".into(), |f| f.display().to_string());
        ring.add(&here, std::mem::take(&mut self.api_keys))?;
        if let Some(path) = &self.api_keys_file {
            ring.add(
                &format!("api_keys_file {}", path.display()),
                keys::from_file(path)?,
            )?;
        }
        ring.add(KEYS_ENV, keys::from_env()?)?;
        self.api_keys = ring.into_keys();
        Ok(())
    }

    /// Agent commands and working directories written as `./x` or `../x` in the file are
    /// relative to the file, so a config works from wherever the server is started.
    fn resolve_relative_paths(&mut self, base: &Path) {
        if let Some(keys) = self.api_keys_file.as_mut().filter(|p| p.is_relative()) {
            *keys = base.join(&*keys);
        }
        let rel = |p: &str| p.starts_with("./") || p.starts_with("../");
        for agent in &mut self.agents {
            // Images are names, not paths: only process agents have paths to resolve.
            let Runtime::Process {
                command, workdir, ..
            } = &mut agent.runtime
            else {
                continue;
            };
            let resolve = |p: &str| {
                let joined = base.join(p);
                std::path::absolute(&joined)
                    .unwrap_or(joined)
                    .display()
                    .to_string()
            };
            if rel(command) {
                *command = resolve(command);
            }
            if let Some(dir) = workdir.as_mut().filter(|d| rel(d)) {
                *dir = resolve(dir);
            }
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if let Some(url) = &self.nats_url {
            // Only the scheme is told: the URL may hold credentials.
            let scheme = url.split_once("://").map(|(scheme, _)| scheme);
            if !matches!(scheme, Some("nats" | "tls")) {
                return invalid(
                    "nats_url must be a nats:// or tls:// URL, e.g. nats://nats:4222".into(),
                );
            }
        }
        validate_replica_id(&self.replica_id).map_err(ConfigError::Invalid)?;
        if !(LEASE_MS_MIN..=LEASE_MS_MAX).contains(&self.lease_ms) {
            return invalid(format!(
                "lease_ms must be between {LEASE_MS_MIN} and {LEASE_MS_MAX}, not {}",
                self.lease_ms
            ));
        }
        if self.max_concurrent_executions == 0 {
            return invalid("max_concurrent_executions must be at least 1".into());
        }
        if self.sample_interval_ms < 10 {
            return invalid("sample_interval_ms must be at least 10".into());
        }
        if self.logs.max_line_bytes < 64 {
            return invalid("logs.max_line_bytes must be at least 64".into());
        }
        if self.max_body_bytes < 1024 {
            return invalid("max_body_bytes must be at least 1024".into());
        }
        if self.store_outage_limit_secs == 0 {
            return invalid("store_outage_limit_secs must be at least 1".into());
        }
        retention::validate(self)?;
        otlp::validate(self)?;
        if self.health.check_timeout_ms == 0
            || self.docker.probe_interval_ms < 100
            || self.docker.sweep_interval_ms < 100
            || self.docker.outage_limit_ms < 100
        {
            return invalid("health.check_timeout_ms must be positive, docker.probe_interval_ms, docker.sweep_interval_ms and docker.outage_limit_ms at least 100".into());
        }
        let ws = &self.websocket;
        if ws.heartbeat_interval_ms == 0
            || ws.idle_timeout_ms < ws.heartbeat_interval_ms
            || ws.max_message_bytes < 256
            || ws.send_queue_bytes < ws.max_message_bytes
            || ws.rate_limit_per_sec == 0
            || ws.rate_limit_burst == 0
        {
            return invalid("websocket: heartbeat_interval_ms must be positive and at most idle_timeout_ms, max_message_bytes at least 256 and at most send_queue_bytes, rate limits positive".into());
        }
        if let Some(url) = &self.database_url {
            url.validate()
                .map_err(|e| ConfigError::Invalid(format!("database_url: {e}")))?;
        }
        if self.default_timeout_secs == 0 {
            return invalid("default_timeout_secs must be at least 1".into());
        }
        for (i, host) in self.allowed_hosts.iter().enumerate() {
            crate::site::Host::parse(host).map_err(|e| {
                ConfigError::Invalid(format!(
                    "allowed_hosts[{i}]: {e} (a name or address without a port; no wildcards)"
                ))
            })?;
        }
        for (i, origin) in ws.allowed_origins.iter().enumerate() {
            origin.parse::<crate::site::Origin>().map_err(|e| {
                ConfigError::Invalid(format!("websocket.allowed_origins[{i}]: {e}"))
            })?;
        }
        if self.api_keys.is_empty() && !self.bind.ip().is_loopback() {
            return invalid(format!(
                "no api_keys are configured, so the server may only bind a loopback address, not {}",
                self.bind
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, agent) in self.agents.iter().enumerate() {
            if !seen.insert(&agent.id) {
                return invalid(format!("agents[{i}]: duplicate agent id {:?}", agent.id));
            }
            self.agent(agent)
                .map_err(|e| ConfigError::Invalid(format!("agents[{i}] ({:?}): {e}", agent.id)))?;
        }
        Ok(())
    }

    /// The agent a config entry defines, checked like one submitted over the API.
    pub fn agent(&self, entry: &ConfigAgent) -> Result<Agent, String> {
        let agent = Agent {
            id: entry.id.clone(),
            name: entry.name.clone(),
            price_wei: entry.price_wei,
            timeout_secs: entry.timeout_secs.unwrap_or(self.default_timeout_secs),
            input_schema: entry.input_schema.clone(),
            runtime: entry.runtime.clone(),
            budget: entry.budget,
        };
        validate_agent(&agent)?;
        Ok(agent)
    }
}

/// The checks every agent passes, wherever it was defined.
pub fn validate_agent(agent: &Agent) -> Result<(), String> {
    domain::validate_agent_id(&agent.id)?;
    if agent.name.trim().is_empty() || agent.name.chars().count() > 200 {
        return Err("name must be 1 to 200 characters".into());
    }
    if agent.timeout_secs == 0 || agent.timeout_secs > 7 * 24 * 3600 {
        return Err("timeoutSecs must be between 1 and 604800 (one week)".into());
    }
    agent.budget.validate()?;
    if let Some(schema) = &agent.input_schema {
        jsonschema::validator_for(schema)
            .map_err(|e| format!("inputSchema is not a valid JSON Schema: {e}"))?;
    }
    match &agent.runtime {
        Runtime::Process { command, env, .. } => {
            if command.trim().is_empty() {
                return Err("runtime.command must not be empty".into());
            }
            if let Some(bad) = env.keys().find(|k| k.is_empty() || k.contains(['=', '\0'])) {
                return Err(format!("runtime.env has an invalid variable name {bad:?}"));
            }
        }
        Runtime::Docker {
            image,
            env,
            memory_bytes,
            cpu_quota,
            pids_limit,
            network,
            tmp_bytes,
            ..
        } => {
            if image.trim().is_empty() {
                return Err("runtime.image must not be empty".into());
            }
            if let Some(bad) = env.keys().find(|k| k.is_empty() || k.contains(['=', '\0'])) {
                return Err(format!("runtime.env has an invalid variable name {bad:?}"));
            }
            // Docker itself refuses less than 6 MiB; the upper bounds keep the i64s it takes sane.
            if !(6 * 1024 * 1024..=1 << 50).contains(memory_bytes) {
                return Err("runtime.memoryBytes must be between 6 MiB and 1 PiB".into());
            }
            if !(cpu_quota.is_finite() && (0.01..=1024.0).contains(cpu_quota)) {
                return Err("runtime.cpuQuota must be between 0.01 and 1024 cores".into());
            }
            if !(1..=1 << 22).contains(pids_limit) {
                return Err("runtime.pidsLimit must be between 1 and 4194304".into());
            }
            if network.trim().is_empty() {
                return Err("runtime.network must not be empty (use \"none\")".into());
            }
            if !(1024 * 1024..=1 << 40).contains(tmp_bytes) {
                return Err("runtime.tmpBytes must be between 1 MiB and 1 TiB".into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration from a file holding `toml` (shared by the submodules' tests).
    pub(super) fn load_str(toml: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentnexus.toml");
        std::fs::write(&path, toml).unwrap();
        Config::load(Some(&path), Overrides::default())
    }

    #[test]
    fn unknown_keys_are_named_with_their_file() {
        let err = load_str("bnd = \"127.0.0.1:1\"").unwrap_err().to_string();
        assert!(err.contains("bnd"), "{err}");
        assert!(err.contains("agentnexus.toml"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = load_str("max_concurrent_executions = \"many\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_concurrent_executions"), "{err}");
        let err = load_str("[[agents]]\nid = \"a\"\nname = \"A\"\nprice_wei = \"1.5\"\nruntime = { type = \"process\", command = \"x\" }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("price_wei") || err.contains("price"), "{err}");
    }

    #[test]
    fn containment_is_automatic_unless_named() {
        assert_eq!(load_str("").unwrap().containment, ContainmentMode::Auto);
        let config = load_str("containment = \"subreaper\"").unwrap();
        assert_eq!(config.containment, ContainmentMode::Subreaper);
        let err = load_str("containment = \"jail\"").unwrap_err().to_string();
        assert!(
            err.contains("containment") && err.contains("cgroup_v2"),
            "{err}"
        );
    }

    #[test]
    fn a_zero_store_outage_limit_is_refused() {
        let err = load_str("store_outage_limit_secs = 0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("store_outage_limit_secs"), "{err}");
        assert_eq!(load_str("").unwrap().store_outage_limit_secs, 120);
    }

    #[test]
    fn open_mode_only_on_loopback() {
        let err = load_str("bind = \"0.0.0.0:3001\"").unwrap_err().to_string();
        assert!(err.contains("loopback"), "{err}");
        let ok = load_str(
            "bind = \"0.0.0.0:3001\"\n[[api_keys]]\nkey = \"0123456789abcdef\"\nuser = \"alice\"",
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn allowed_hosts_and_origins_are_checked_and_named() {
        for (toml, key) in [
            ("allowed_hosts = [\"*.example\"]", "allowed_hosts[0]"),
            (
                "allowed_hosts = [\"a.example\", \"a.example:80\"]",
                "allowed_hosts[1]",
            ),
            ("allowed_hosts = [\"127.1\"]", "allowed_hosts[0]"),
            (
                "[websocket]\nallowed_origins = [\"null\"]",
                "allowed_origins[0]",
            ),
            (
                "[websocket]\nallowed_origins = [\"*\"]",
                "allowed_origins[0]",
            ),
            (
                "[websocket]\nallowed_origins = [\"https://a.example/app\"]",
                "allowed_origins[0]",
            ),
        ] {
            let err = load_str(toml).unwrap_err().to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
        let ok = load_str(
            "allowed_hosts = [\"agentnexus.lan\", \"[::1]\", \"10.0.0.2\"]\n[websocket]\nallowed_origins = [\"https://console.example/\"]",
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn a_bare_file_name_is_relative_to_the_current_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("bare.toml"),
            "max_concurrent_executions = 3",
        )
        .unwrap();
        let cwd = std::env::current_dir().unwrap();
        std::env::set_current_dir(dir.path()).unwrap();
        let loaded = Config::load(Some(Path::new("bare.toml")), Overrides::default());
        std::env::set_current_dir(cwd).unwrap();
        assert_eq!(loaded.unwrap().max_concurrent_executions, 3);
    }

    #[test]
    fn lease_ms_and_replica_id_are_checked() {
        let config = load_str("replica_id = \"r1\"\nlease_ms = 1500").unwrap();
        assert_eq!((config.replica_id.as_str(), config.lease_ms), ("r1", 1500));
        assert_eq!(load_str("").unwrap().lease_ms, 30_000);
        let err = load_str("lease_ms = 10").unwrap_err().to_string();
        assert!(err.contains("lease_ms must be between 300 and"), "{err}");
        let err = load_str("replica_id = \"a b\"").unwrap_err().to_string();
        assert!(err.contains("replica_id must be"), "{err}");
    }

    #[test]
    fn a_nats_url_names_a_nats_or_tls_server_and_errors_never_show_it() {
        let config = load_str("nats_url = \"nats://u:p@nats:4222\"").unwrap();
        assert_eq!(config.nats_url.as_deref(), Some("nats://u:p@nats:4222"));
        assert!(load_str("nats_url = \"tls://nats:4222\"").is_ok());
        let err = load_str("nats_url = \"http://user:secret@nats:4222\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nats_url must be a nats:// or tls:// URL"),
            "{err}"
        );
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn the_data_directory_is_made_absolute() {
        let config = load_str("data_dir = \"relative/data\"").unwrap();
        assert!(
            config.data_dir.is_absolute(),
            "{}",
            config.data_dir.display()
        );
        assert!(config.data_dir.ends_with("relative/data"));
    }

    #[test]
    fn relative_commands_resolve_against_the_file() {
        let config = load_str(
            "[[agents]]\nid = \"a\"\nname = \"A\"\nprice_wei = \"1\"\nruntime = { type = \"process\", command = \"./run.sh\" }",
        )
        .unwrap();
        let Runtime::Process { command, .. } = &config.agents[0].runtime else {
            panic!("a process agent");
        };
        assert!(
            !command.contains("/./") && command.ends_with("/run.sh") && command.starts_with('/'),
            "{command}"
        );
    }
}
