//! Runs an agent as a local process in its own process group, so that stopping it (timeout,
//! cancel, shutdown) reaches every process it started: SIGTERM to the group, then SIGKILL
//! after the grace period.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

use super::proc_tree::{self, TreeSampler};
use super::{
    Executor, Exit, Job, LineReader, MAX_ENV_INPUT, MAX_OUTPUT_FILE, RunOutcome, json_object_line,
};
use crate::domain::{ExecError, LogStream, ProcessGroup, Runtime};
use crate::events::Recorder;

/// Variables passed through from the runtime's own environment; everything else an agent gets
/// is explicit (its `env`, and the contract's variables), so the runtime's secrets stay home.
const PASSTHROUGH_ENV: &[&str] = &["PATH", "HOME", "USER", "LANG", "LC_ALL", "TZ", "TMPDIR"];
/// After the agent exits, how long its output pipes may take to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

pub struct ProcessExecutor {
    /// Per-execution working directories (`<scratch_root>/<execution id>`).
    pub scratch_root: PathBuf,
    pub kill_grace: Duration,
    pub sample_interval: Duration,
    pub max_line_bytes: usize,
}

#[async_trait]
impl Executor for ProcessExecutor {
    async fn run(&self, job: &Job, recorder: Arc<Recorder>, stop: CancellationToken) -> RunOutcome {
        let scratch = self.scratch_root.join(&job.execution_id);
        let outcome = self.run_in(job, &scratch, recorder, stop).await;
        if let Err(e) = tokio::fs::remove_dir_all(&scratch).await {
            tracing::warn!(dir = %scratch.display(), error = %e, "cannot remove scratch directory");
        }
        outcome
    }
}

impl ProcessExecutor {
    async fn run_in(
        &self,
        job: &Job,
        scratch: &Path,
        recorder: Arc<Recorder>,
        stop: CancellationToken,
    ) -> RunOutcome {
        let Runtime::Process {
            command,
            args,
            env,
            workdir,
        } = &job.agent.runtime
        else {
            return RunOutcome::NotStarted(ExecError::new(
                "spawn_failed",
                "the process executor was given an agent of another runtime",
            ));
        };
        let input = job.input.to_string();
        let output_file = scratch.join("output.json");
        let input_file = scratch.join("input.json");
        if let Err(e) = prepare_scratch(scratch, &input_file, &input).await {
            return RunOutcome::NotStarted(ExecError::new(
                "spawn_failed",
                format!("cannot prepare the working directory: {e}"),
            ));
        }

        let mut cmd = tokio::process::Command::new(command);
        cmd.args(args)
            .env_clear()
            .envs(
                PASSTHROUGH_ENV
                    .iter()
                    .filter_map(|k| Some((k, std::env::var_os(k)?))),
            )
            .envs(env)
            .env("EXECUTION_ID", &job.execution_id)
            .env("AGENT_ID", &job.agent.id)
            .env("AGENTNEXUS_OUTPUT", &output_file)
            .env("AGENTNEXUS_INPUT", &input_file)
            .current_dir(workdir.as_deref().map(Path::new).unwrap_or(scratch))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if input.len() <= MAX_ENV_INPUT {
            cmd.env("INPUT_DATA", &input);
        }
        let started = Instant::now();
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                return RunOutcome::NotStarted(ExecError::new(
                    "spawn_failed",
                    format!("cannot start {command:?}: {e}"),
                ));
            }
        };
        let pgid = child.id().expect("a just-spawned child has a pid") as i32;
        if let Some(started_ticks) = proc_tree::start_ticks(pgid) {
            let group = ProcessGroup {
                group: pgid,
                started_ticks,
            };
            let _ = recorder.process_started(group).await;
        }

        let mut stdin = child.stdin.take().expect("piped");
        let feeder = tokio::spawn(async move {
            // An agent that ignores its stdin may close it early: not an error.
            let _ = stdin.write_all(input.as_bytes()).await;
        });
        let stdout = tokio::spawn(pump(
            child.stdout.take().expect("piped"),
            LogStream::Stdout,
            recorder.clone(),
            self.max_line_bytes,
        ));
        let stderr = tokio::spawn(pump(
            child.stderr.take().expect("piped"),
            LogStream::Stderr,
            recorder.clone(),
            self.max_line_bytes,
        ));

        let (exit, stopped) = self
            .supervise(&mut child, pgid, started, &recorder, &stop)
            .await;
        // Whatever the agent left behind in its group goes with it; this also closes the
        // pipes that a lingering child would hold open.
        signal_group(pgid, libc::SIGKILL);
        feeder.abort();
        let last_json = drain(stdout).await;
        drain(stderr).await;

        if stopped {
            return RunOutcome::Stopped { exit };
        }
        let output = match read_output_file(&output_file).await {
            Ok(Some(value)) => Ok(Some(value)),
            Ok(None) => Ok(last_json),
            Err(e) => Err(e),
        };
        RunOutcome::Exited { exit, output }
    }

    /// Waits for the agent to exit, sampling its resources meanwhile, and stops it when asked.
    /// Returns how it exited and whether it was stopped.
    async fn supervise(
        &self,
        child: &mut Child,
        pgid: i32,
        started: Instant,
        recorder: &Recorder,
        stop: &CancellationToken,
    ) -> (Exit, bool) {
        let mut sampler = TreeSampler::new(pgid, started);
        let mut ticks = tokio::time::interval_at(
            tokio::time::Instant::now() + self.sample_interval,
            self.sample_interval,
        );
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                status = child.wait() => return (exit_of(status), false),
                _ = stop.cancelled() => break,
                _ = ticks.tick() => {
                    if let Some((memory, cpu)) = sampler.sample() {
                        let _ = recorder.metrics(memory, cpu).await;
                    }
                }
            }
        }
        signal_group(pgid, libc::SIGTERM);
        let exit = match tokio::time::timeout(self.kill_grace, child.wait()).await {
            Ok(status) => exit_of(status),
            Err(_) => {
                signal_group(pgid, libc::SIGKILL);
                exit_of(child.wait().await)
            }
        };
        (exit, true)
    }
}

impl ProcessExecutor {
    /// Kills what remains of a process group that a crashed run of the runtime left behind —
    /// if its leader is still the same process (same pid and start time).
    pub fn stop_leftover(&self, process: ProcessGroup) {
        if proc_tree::start_ticks(process.group) == Some(process.started_ticks) {
            tracing::info!(
                group = process.group,
                "stopping an agent left running by the previous run"
            );
            signal_group(process.group, libc::SIGKILL);
        }
    }
}

async fn prepare_scratch(scratch: &Path, input_file: &Path, input: &str) -> std::io::Result<()> {
    tokio::fs::create_dir_all(scratch).await?;
    tokio::fs::write(input_file, input).await
}

/// Streams one output pipe into the recorder; returns the last line that was a JSON object.
async fn pump(
    pipe: impl AsyncRead + Unpin,
    stream: LogStream,
    recorder: Arc<Recorder>,
    max_line_bytes: usize,
) -> Option<Value> {
    let mut reader = LineReader::new(pipe, max_line_bytes);
    let mut last_json = None;
    loop {
        match reader.next_lines().await {
            Ok(Some(lines)) => {
                if stream == LogStream::Stdout {
                    if let Some(json) = lines.iter().rev().find_map(|l| json_object_line(l)) {
                        last_json = Some(json);
                    }
                }
                if recorder.logs(stream, lines).await.is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, ?stream, "reading agent output failed");
                break;
            }
        }
    }
    recorder.truncated_lines(reader.truncated_lines());
    last_json
}

async fn drain(reader: tokio::task::JoinHandle<Option<Value>>) -> Option<Value> {
    let abort = reader.abort_handle();
    match tokio::time::timeout(DRAIN_TIMEOUT, reader).await {
        Ok(result) => result.ok().flatten(),
        Err(_) => {
            // A process outside the agent's group still holds the pipe open.
            abort.abort();
            None
        }
    }
}

async fn read_output_file(path: &Path) -> Result<Option<Value>, String> {
    let Ok(meta) = tokio::fs::metadata(path).await else {
        return Ok(None);
    };
    if meta.len() > MAX_OUTPUT_FILE as u64 {
        return Err(format!(
            "the output file is {} bytes, over the limit of {MAX_OUTPUT_FILE}",
            meta.len()
        ));
    }
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| format!("cannot read the output file: {e}"))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| format!("the output file is not valid JSON: {e}"))
}

fn exit_of(status: std::io::Result<std::process::ExitStatus>) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(signal)) => Exit::Signal(signal),
            (None, None) => Exit::Code(-1),
        },
        Err(e) => {
            tracing::error!(error = %e, "waiting for an agent process failed");
            Exit::Code(-1)
        }
    }
}

fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: killpg has no memory effects; a group that is already gone yields ESRCH.
    unsafe {
        libc::killpg(pgid, signal);
    }
}
