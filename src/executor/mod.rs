//! Executors run one execution of an agent and report what physically happened; the runtime
//! decides what that means for the execution's status. Only executors spawn processes and
//! containers. Every executor honours the same agent I/O contract:
//!
//! - input JSON on stdin, in the file named by `AGENTNEXUS_INPUT`, and in `INPUT_DATA` (when
//!   it fits an environment variable), plus `EXECUTION_ID` and `AGENT_ID`;
//! - every stdout/stderr line becomes a `log` event tagged with its stream;
//! - the output is the JSON in the file named by `AGENTNEXUS_OUTPUT` if the agent wrote it,
//!   else the last stdout line that is a complete JSON object.

mod cgroup;
mod containment;
mod docker;
mod lines;
mod proc_tree;
mod process;
mod supervisor;

pub use containment::Containment;
pub use docker::{DockerExecutor, OwnedContainer, ResumePoint};
pub use lines::{Line, LineReader, LineSplitter};
pub use process::ProcessExecutor;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::domain::{Agent, ExecError};
use crate::stream::Recorder;

/// Input larger than this goes by stdin (and file) only: Linux refuses environment strings over
/// 128 KiB, so `INPUT_DATA` is set only when it fits.
pub const MAX_ENV_INPUT: usize = 100 * 1024;
/// The largest output file an agent may write.
pub const MAX_OUTPUT_FILE: usize = 16 * 1024 * 1024;

/// What an executor needs to know about the execution it runs.
#[derive(Debug, Clone)]
pub struct Job {
    pub execution_id: String,
    /// Who submitted it (containers are labelled with it).
    pub user_id: String,
    pub agent: Agent,
    pub input: Value,
    /// Where the agent's OpenTelemetry SDK exports (`OTEL_EXPORTER_OTLP_*`, `TRACEPARENT`):
    /// set after the agent's own environment, so it cannot point elsewhere.
    pub telemetry_env: Vec<(String, String)>,
}

#[derive(Debug)]
pub enum RunOutcome {
    /// The agent could not be started at all.
    NotStarted(ExecError),
    /// The agent ended by itself.
    Exited {
        exit: Exit,
        /// The detected output; `Err` when the agent wrote an output file that is not JSON.
        output: Result<Option<Value>, String>,
    },
    /// `stop` was triggered and the agent was stopped (politely, then by force).
    Stopped { exit: Exit },
    /// The executor lost sight of the agent before its end (its container vanished, or the
    /// Docker daemon stayed unreachable past the limit): how it ended is not known.
    Lost(ExecError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// The kernel killed it for exceeding its memory limit (the exit code it reported).
    OomKilled(i32),
}

impl Exit {
    pub fn code(self) -> Option<i32> {
        match self {
            Exit::Code(c) | Exit::OomKilled(c) => Some(c),
            Exit::Signal(_) => None,
        }
    }
}

#[async_trait]
pub trait Executor: Send + Sync {
    /// Runs the job to its end, streaming its logs and resource samples into `recorder`, and
    /// stops it when `stop` is triggered.
    async fn run(&self, job: &Job, recorder: Arc<Recorder>, stop: CancellationToken) -> RunOutcome;
}

/// The JSON object a log line holds, if the whole line is one (a candidate for the output).
pub fn json_object_line(line: &str) -> Option<Value> {
    let trimmed = line.trim();
    if !(trimmed.starts_with('{') && trimmed.ends_with('}')) {
        return None;
    }
    serde_json::from_str::<Value>(trimmed)
        .ok()
        .filter(Value::is_object)
}
