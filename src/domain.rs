//! The domain vocabulary: agents, executions, their status machine and the events of an
//! execution's stream. Plain data with serde shapes; no I/O lives here.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use utoipa::ToSchema;

mod event;
mod ids;
mod schema;
mod span;
mod usage;
pub mod whole;

pub use event::{Event, EventData, EventKind, LogData, LogStream, MetricsData, StatusData};
pub use ids::{ExecutionId, is_valid_execution_id};
pub use span::{SpanData, SpanKind, SpanStatus, SpanStatusCode};
pub use usage::{Budget, BudgetLimit, ModelUsage, TokenCounts, Usage, Usd};

pub use schema::{
    AGENT_ID_PATTERN, AgentId, EXECUTION_ID_PATTERN, json_schema_document, positive_decimal_up_to,
    wei_pattern,
};
use schema::{any_or_null, environment};

/// Milliseconds since the Unix epoch: the timestamp unit of events and of the store.
pub type EpochMs = i64;

pub fn now_ms() -> EpochMs {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as EpochMs)
        .unwrap_or_default()
}

/// RFC 3339 with milliseconds, UTC (`2025-10-07T12:00:00.000Z`), as the spec's JSON shows it.
pub fn rfc3339_ms(ms: EpochMs) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

/// An exact amount of wei. Carried as a decimal string in JSON, never as a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Wei(pub u128);

impl fmt::Display for Wei {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Wei {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "price must be a non-negative integer amount of wei written as a decimal string, got {s:?}"
            ));
        }
        s.parse::<u128>()
            .map(Wei)
            .map_err(|_| format!("price {s:?} is larger than the maximum of {}", u128::MAX))
    }
}

impl Serialize for Wei {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Wei {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Strings only: a JSON number would already have passed through a float or i64 somewhere.
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Agent ids appear in URLs, metric labels and file names: keep them boring.
pub fn validate_agent_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "agent id {id:?} is invalid: use 1 to 64 characters from A-Z a-z 0-9 _ - ."
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Agent {
    #[schema(value_type = AgentId)]
    pub id: String,
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: String,
    pub price_wei: Wei,
    #[serde(deserialize_with = "whole::deserialize")]
    #[schema(minimum = 1, maximum = 604800)]
    pub timeout_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = json_schema_document)]
    pub input_schema: Option<Value>,
    pub runtime: Runtime,
    /// Limits on what one execution may use (tokens, cost, calls, wall time); none by default.
    #[serde(default, skip_serializing_if = "Budget::is_empty")]
    pub budget: Budget,
}

/// How an agent is run: a local process, or a hardened Docker container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum Runtime {
    #[serde(rename_all = "camelCase")]
    Process {
        #[schema(pattern = r"\S")]
        command: String,
        #[serde(default)]
        args: Vec<String>,
        #[serde(default)]
        #[schema(schema_with = environment)]
        env: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workdir: Option<String>,
    },
    /// The defaults are the safe ones: every relaxation is explicit in the agent's definition.
    /// Multi-word keys are camelCase in JSON; the snake_case spelling is accepted too, so a
    /// TOML config file reads like the rest of the file.
    #[serde(rename_all = "camelCase")]
    Docker {
        #[schema(pattern = r"\S")]
        image: String,
        /// Replaces the image's `CMD`; empty keeps it.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        cmd: Vec<String>,
        #[serde(default)]
        #[schema(schema_with = environment)]
        env: BTreeMap<String, String>,
        /// Memory limit; swap is limited to the same amount (no swap beyond it).
        #[serde(
            default = "docker_defaults::memory_bytes",
            alias = "memory_bytes",
            deserialize_with = "setting::memory_bytes"
        )]
        #[schema(minimum = 6291456, maximum = 1125899906842624_i64)]
        memory_bytes: u64,
        /// CPU cores the container may use, like `docker run --cpus`.
        #[serde(
            default = "docker_defaults::cpu_quota",
            alias = "cpu_quota",
            deserialize_with = "setting::cpu_quota"
        )]
        #[schema(minimum = 0.01, maximum = 1024.0)]
        cpu_quota: f64,
        #[serde(
            default = "docker_defaults::pids_limit",
            alias = "pids_limit",
            deserialize_with = "setting::pids_limit"
        )]
        #[schema(minimum = 1, maximum = 4194304)]
        pids_limit: u64,
        /// Docker network mode; `none` (no network) unless the agent needs one.
        #[serde(default = "docker_defaults::network")]
        #[schema(pattern = r"\S")]
        network: String,
        /// Size of the writable tmpfs at `/tmp` (the root filesystem is read-only).
        #[serde(
            default = "docker_defaults::tmp_bytes",
            alias = "tmp_bytes",
            deserialize_with = "setting::tmp_bytes"
        )]
        #[schema(minimum = 1048576, maximum = 1099511627776_i64)]
        tmp_bytes: u64,
    },
}

/// The numeric settings of a `Runtime`, read through `serde_json::Number`. Serde buffers the
/// fields of an internally tagged enum before it knows the variant, and a buffered JSON number
/// that is not a 64-bit integer (`0.5`, `1e3`) keeps serde_json's exact form, which plain `u64`
/// and `f64` fields refuse with a confusing "invalid type: map". A `Number` accepts every form
/// (and TOML's); the conversion then names the setting when the value does not fit.
mod setting {
    use serde::de::{Deserialize, Deserializer, Error};
    use serde_json::Number;

    fn whole<'de, D: Deserializer<'de>>(d: D, name: &str) -> Result<u64, D::Error> {
        let n = Number::deserialize(d)?;
        super::whole::from_number(&n).ok_or_else(|| {
            D::Error::custom(format!(
                "{name} must be a whole number from 0 to {}, got {n}",
                u64::MAX
            ))
        })
    }

    pub fn memory_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        whole(d, "memoryBytes")
    }

    pub fn pids_limit<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        whole(d, "pidsLimit")
    }

    pub fn tmp_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        whole(d, "tmpBytes")
    }

    pub fn cpu_quota<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let n = Number::deserialize(d)?;
        n.as_f64()
            .ok_or_else(|| D::Error::custom(format!("cpuQuota must be a finite number, got {n}")))
    }
}

pub mod docker_defaults {
    pub fn memory_bytes() -> u64 {
        512 * 1024 * 1024
    }
    pub fn cpu_quota() -> f64 {
        0.5
    }
    pub fn pids_limit() -> u64 {
        100
    }
    pub fn network() -> String {
        "none".into()
    }
    pub fn tmp_bytes() -> u64 {
        64 * 1024 * 1024
    }
}

impl Runtime {
    pub fn kind(&self) -> &'static str {
        match self {
            Runtime::Process { .. } => "process",
            Runtime::Docker { .. } => "docker",
        }
    }

    /// The environment the agent's definition sets.
    pub fn env(&self) -> &BTreeMap<String, String> {
        match self {
            Runtime::Process { env, .. } | Runtime::Docker { env, .. } => env,
        }
    }

    /// A docker runtime with every setting at its default.
    pub fn docker(image: &str, cmd: &[&str]) -> Runtime {
        Runtime::Docker {
            image: image.to_owned(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            env: BTreeMap::new(),
            memory_bytes: docker_defaults::memory_bytes(),
            cpu_quota: docker_defaults::cpu_quota(),
            pids_limit: docker_defaults::pids_limit(),
            network: docker_defaults::network(),
            tmp_bytes: docker_defaults::tmp_bytes(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    #[default]
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Pending,
        Status::Running,
        Status::Completed,
        Status::Failed,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Running => "RUNNING",
            Status::Completed => "COMPLETED",
            Status::Failed => "FAILED",
            Status::Cancelled => "CANCELLED",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }

    /// The status machine: PENDING → RUNNING → terminal, or PENDING → terminal directly
    /// (cancelled or failed before it started). Nothing leaves a terminal status.
    pub fn can_become(self, next: Status) -> bool {
        match (self, next) {
            (Status::Pending, Status::Running) => true,
            (Status::Pending | Status::Running, n) => n.is_terminal(),
            _ => false,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown status {s:?}: expected PENDING, RUNNING, COMPLETED, FAILED or CANCELLED")
            })
    }
}

/// Why an execution failed, with a machine-readable `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExecError {
    /// `exit_code`, `signal`, `timeout`, `spawn_failed`, `invalid_output`, `runtime_restarted`,
    /// `runtime_shutdown`, `cancelled`, `budget_exceeded`, and for docker agents `oom_killed`, `image_not_found`,
    /// `docker_unavailable`.
    pub kind: String,
    pub message: String,
    /// With `budget_exceeded`: the limit that was exceeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetLimit>,
}

impl ExecError {
    pub fn new(kind: &str, message: impl Into<String>) -> Self {
        ExecError {
            kind: kind.to_owned(),
            message: message.into(),
            budget: None,
        }
    }

    /// `budget_exceeded`, naming the limit.
    pub fn budget_exceeded(limit: BudgetLimit, message: impl Into<String>) -> Self {
        ExecError {
            budget: Some(limit),
            ..ExecError::new("budget_exceeded", message)
        }
    }
}

/// One execution of an agent, as stored and as returned by the API.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Execution {
    pub execution_id: ExecutionId,
    #[schema(value_type = AgentId)]
    pub agent_id: String,
    pub agent_name: String,
    pub user_id: String,
    pub status: Status,
    pub input: Value,
    #[schema(schema_with = any_or_null)]
    pub output: Option<Value>,
    pub error: Option<ExecError>,
    pub exit_code: Option<i32>,
    #[serde(serialize_with = "ser_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: EpochMs,
    #[serde(serialize_with = "ser_opt_rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<EpochMs>,
    #[serde(serialize_with = "ser_opt_rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<EpochMs>,
    pub duration_ms: Option<i64>,
    pub price_wei: Wei,
    pub peak_memory_bytes: Option<u64>,
    pub peak_cpu_percent: Option<f64>,
    pub log_lines: u64,
    pub log_lines_dropped: u64,
    pub last_seq: u64,
    /// The replica that owns (or last owned) the run; null while the execution is PENDING.
    #[schema(value_type = Option<String>)]
    pub replica_id: Option<String>,
    /// Tokens, calls and cost its telemetry reported (live while it runs on this replica).
    pub usage: Usage,
    /// The agent as it was when the execution was submitted: what runs is what was asked for.
    #[serde(skip)]
    pub agent: Agent,
    /// The process group of a running process agent, once it started.
    #[serde(skip)]
    pub process: Option<ProcessGroup>,
}

/// Where a process agent runs: its process group, named unambiguously by its leader's pid and
/// start time (clock ticks since boot; a pid alone may have been reused by the time someone
/// looks), and the cgroup that holds every process of the execution, when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessGroup {
    pub group: i32,
    pub started_ticks: u64,
    pub cgroup: Option<std::path::PathBuf>,
}

fn ser_rfc3339<S: Serializer>(ms: &EpochMs, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339_ms(*ms))
}

fn ser_opt_rfc3339<S: Serializer>(ms: &Option<EpochMs>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => s.serialize_str(&rfc3339_ms(*ms)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wei_round_trips_exactly_beyond_f64_precision() {
        let w: Wei = "340282366920938463463374607431768211455".parse().unwrap();
        assert_eq!(w.0, u128::MAX);
        assert_eq!(
            serde_json::to_string(&w).unwrap(),
            format!("\"{}\"", u128::MAX)
        );
        assert!("-1".parse::<Wei>().is_err());
        assert!("1.5".parse::<Wei>().is_err());
        assert!(
            "340282366920938463463374607431768211456"
                .parse::<Wei>()
                .is_err()
        );
        assert!(serde_json::from_str::<Wei>("100").is_err());
    }

    #[test]
    fn docker_settings_read_any_json_number_and_name_what_does_not_fit() {
        // Internally tagged, so serde buffers these numbers before reading them.
        let json = r#"{"type":"docker","image":"i","cpuQuota":0.25,"memoryBytes":268435456,"pidsLimit":64,"tmp_bytes":1048576}"#;
        let Runtime::Docker {
            cpu_quota,
            memory_bytes,
            pids_limit,
            tmp_bytes,
            ..
        } = serde_json::from_str(json).unwrap()
        else {
            panic!("a docker runtime");
        };
        assert_eq!(
            (cpu_quota, memory_bytes, pids_limit, tmp_bytes),
            (0.25, 268_435_456, 64, 1_048_576)
        );
        for (setting, name) in [
            (r#""memoryBytes":18446744073709551616"#, "memoryBytes"),
            (r#""pidsLimit":-1"#, "pidsLimit"),
            (r#""tmpBytes":1.5"#, "tmpBytes"),
            (r#""cpuQuota":1e400"#, "cpuQuota"),
        ] {
            let json = format!(r#"{{"type":"docker","image":"i",{setting}}}"#);
            let err = serde_json::from_str::<Runtime>(&json)
                .unwrap_err()
                .to_string();
            assert!(err.contains(name), "{setting}: {err}");
        }
    }

    #[test]
    fn terminal_status_is_final() {
        for from in [Status::Completed, Status::Failed, Status::Cancelled] {
            for to in Status::ALL {
                assert!(!from.can_become(to), "{from} -> {to}");
            }
        }
        assert!(Status::Pending.can_become(Status::Cancelled));
        assert!(Status::Running.can_become(Status::Completed));
        assert!(!Status::Running.can_become(Status::Pending));
    }

    #[test]
    fn timestamps_format_like_the_spec() {
        assert_eq!(rfc3339_ms(1_759_838_400_000), "2025-10-07T12:00:00.000Z");
    }
}
