//! Runs an agent as a local process, contained (see `containment`) so that stopping it — on
//! timeout, cancel, shutdown, or because the agent itself ended — reaches every process it
//! started: SIGTERM first, then SIGKILL after the grace period.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::containment::{Containment, EXECUTION_ID_VAR, Scope};
use super::proc_tree::TreeSampler;
use super::{
    Executor, Exit, Job, LineReader, MAX_ENV_INPUT, MAX_OUTPUT_FILE, RunOutcome, json_object_line,
};
use crate::domain::{ExecError, LogStream, ProcessGroup, Runtime};
use crate::stream::Recorder;

/// Variables passed through from the runtime's own environment; everything else an agent gets
/// is explicit (its `env`, and the contract's variables), so the runtime's secrets stay home.
const PASSTHROUGH_ENV: &[&str] = &["PATH", "HOME", "USER", "LANG", "LC_ALL", "TZ", "TMPDIR"];
/// After the agent has exited (and what it left was killed), reading its output stops at the
/// end of the pipes, or once they have been quiet this long — someone outside the containment
/// may hold them open — keeping everything read so far.
const DRAIN_QUIET: Duration = Duration::from_millis(100);
/// ... and in any case once reading has waited this long in all. Only waiting for the pipes
/// counts: time spent handing lines to the store (which may be holding writes through a fault)
/// never cuts off what is still in a pipe.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// More than a pipe can hold (`/proc/sys/fs/pipe-max-size`, 1 MiB by default) read after the
/// agent's end means someone outside the containment is still writing: reading stops there.
const DRAIN_MAX_BYTES: usize = 1024 * 1024;

pub struct ProcessExecutor {
    /// Per-execution working directories (`<scratch_root>/<execution id>`).
    pub scratch_root: PathBuf,
    pub kill_grace: Duration,
    pub sample_interval: Duration,
    pub max_line_bytes: usize,
    pub containment: Containment,
}

/// A started agent: its containment and the process the runtime waits for. The scope is
/// dropped first, so an abandoned run is killed before its leader can be reaped.
struct AgentProcess {
    scope: Scope,
    child: Child,
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
        let input = job.input.to_string();
        let output_file = scratch.join("output.json");
        let input_file = scratch.join("input.json");
        if let Err(e) = prepare_scratch(scratch, &input_file, &input).await {
            return RunOutcome::NotStarted(ExecError::new(
                "spawn_failed",
                format!("cannot prepare the working directory: {e}"),
            ));
        }
        let cmd = match command(job, scratch, &output_file, &input_file, &input) {
            Ok(cmd) => cmd,
            Err(e) => return RunOutcome::NotStarted(e),
        };
        let started = Instant::now();
        let mut agent = match self.start(job, cmd, &recorder).await {
            Ok(agent) => agent,
            Err(e) => return RunOutcome::NotStarted(e),
        };

        let mut stdin = agent.child.stdin.take().expect("piped");
        let feeder = tokio::spawn(async move {
            // An agent that ignores its stdin may close it early: not an error.
            let _ = stdin.write_all(input.as_bytes()).await;
        });
        let exited = CancellationToken::new();
        let stdout = tokio::spawn(pump(
            agent.child.stdout.take().expect("piped"),
            LogStream::Stdout,
            recorder.clone(),
            self.max_line_bytes,
            exited.clone(),
        ));
        let stderr = tokio::spawn(pump(
            agent.child.stderr.take().expect("piped"),
            LogStream::Stderr,
            recorder.clone(),
            self.max_line_bytes,
            exited.clone(),
        ));

        let (exit, stopped) = self.supervise(&mut agent, started, &recorder, &stop).await;
        // Whatever the agent left behind goes with it; that also closes the pipes it held.
        agent.scope.finish().await;
        exited.cancel();
        feeder.abort();
        let (last_json, _) = tokio::join!(stdout, stderr);
        let last_json = last_json.ok().flatten();

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

    /// Starts the agent inside its containment and records where it runs.
    async fn start(
        &self,
        job: &Job,
        mut cmd: Command,
        recorder: &Recorder,
    ) -> Result<AgentProcess, ExecError> {
        let program = cmd.as_std().get_program().to_owned();
        let mut scope = self
            .containment
            .prepare(&job.execution_id, &mut cmd)
            .map_err(|e| {
                ExecError::new(
                    "spawn_failed",
                    format!("cannot prepare the agent's containment: {e}"),
                )
            })?;
        let child = self.containment.spawn(cmd).await.map_err(|e| {
            ExecError::new("spawn_failed", format!("cannot start {program:?}: {e}"))
        })?;
        let pid = child.id().expect("a just-spawned child has a pid") as i32;
        if let Some(process) = scope.started(pid) {
            let _ = recorder.process_started(process).await;
        }
        Ok(AgentProcess { scope, child })
    }

    /// Waits for the agent to exit, sampling its resources meanwhile, and stops it when asked.
    /// Returns how it exited and whether it was stopped.
    async fn supervise(
        &self,
        agent: &mut AgentProcess,
        started: Instant,
        recorder: &Recorder,
        stop: &CancellationToken,
    ) -> (Exit, bool) {
        let mut sampler = TreeSampler::new(agent.scope.members(), started);
        let mut ticks = tokio::time::interval_at(
            tokio::time::Instant::now() + self.sample_interval,
            self.sample_interval,
        );
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                status = agent.child.wait() => {
                    agent.scope.leader_reaped();
                    return (exit_of(status), false);
                }
                _ = stop.cancelled() => break,
                _ = ticks.tick() => {
                    if let Some((memory, cpu)) = sampler.sample() {
                        let _ = recorder.metrics(memory, cpu).await;
                    }
                }
            }
        }
        agent.scope.terminate();
        let exit = match tokio::time::timeout(self.kill_grace, agent.child.wait()).await {
            Ok(status) => exit_of(status),
            Err(_) => {
                agent.scope.kill().await;
                exit_of(agent.child.wait().await)
            }
        };
        agent.scope.leader_reaped();
        (exit, true)
    }

    /// Kills what an execution that a crashed run of the runtime left running still has.
    pub async fn stop_leftover(&self, execution_id: &str, process: Option<&ProcessGroup>) {
        self.containment.stop_leftover(execution_id, process).await;
    }
}

/// The agent's command: its program and arguments, a clean environment with the contract's
/// variables, piped standard streams.
fn command(
    job: &Job,
    scratch: &Path,
    output_file: &Path,
    input_file: &Path,
    input: &str,
) -> Result<Command, ExecError> {
    let Runtime::Process {
        command,
        args,
        env,
        workdir,
    } = &job.agent.runtime
    else {
        return Err(ExecError::new(
            "spawn_failed",
            "the process executor was given an agent of another runtime",
        ));
    };
    let mut cmd = Command::new(command);
    cmd.args(args)
        .env_clear()
        .envs(
            PASSTHROUGH_ENV
                .iter()
                .filter_map(|k| Some((k, std::env::var_os(k)?))),
        )
        .envs(env)
        .envs(job.telemetry_env.iter().map(|(k, v)| (k, v)))
        .env(EXECUTION_ID_VAR, &job.execution_id)
        .env("AGENT_ID", &job.agent.id)
        .env("AGENTNEXUS_OUTPUT", output_file)
        .env("AGENTNEXUS_INPUT", input_file)
        .current_dir(workdir.as_deref().map(Path::new).unwrap_or(scratch))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if input.len() <= MAX_ENV_INPUT {
        cmd.env("INPUT_DATA", input);
    }
    Ok(cmd)
}

async fn prepare_scratch(scratch: &Path, input_file: &Path, input: &str) -> std::io::Result<()> {
    tokio::fs::create_dir_all(scratch).await?;
    tokio::fs::write(input_file, input).await
}

/// Streams one output pipe into the recorder; returns the last line that was a JSON object.
/// Once `exited` fires it reads on only while data keeps coming (see `DRAIN_QUIET`), so a
/// process that holds the pipe open can neither hold up the end of the run nor cost what was
/// read.
async fn pump(
    pipe: impl AsyncRead + Unpin,
    stream: LogStream,
    recorder: Arc<Recorder>,
    max_line_bytes: usize,
    exited: CancellationToken,
) -> Option<Value> {
    let mut reader = LineReader::new(pipe, max_line_bytes);
    let mut last_json = None;
    // Set once the agent has exited: how long reading may still wait, in all.
    let mut drain_left: Option<Duration> = None;
    let mut drained = 0;
    loop {
        let next = match drain_left {
            None => tokio::select! {
                next = reader.next_lines() => next,
                _ = exited.cancelled() => {
                    drain_left = Some(DRAIN_LIMIT);
                    continue;
                }
            },
            Some(left) => {
                let waiting = tokio::time::Instant::now();
                let read = tokio::time::timeout(DRAIN_QUIET.min(left), reader.next_lines()).await;
                drain_left = Some(left.saturating_sub(waiting.elapsed()));
                match read {
                    Ok(next) => next,
                    Err(_) => {
                        tracing::debug!(
                            ?stream,
                            "an agent's output pipe is held open after its end"
                        );
                        break;
                    }
                }
            }
        };
        match next {
            Ok(Some(lines)) => {
                if drain_left.is_some() {
                    drained += lines.iter().map(|l| l.len() + 1).sum::<usize>();
                }
                if !deliver(lines, stream, &recorder, &mut last_json).await
                    || drained > DRAIN_MAX_BYTES
                {
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
    // Stopped before the end of the stream: the line it was in the middle of still counts.
    if let Some(line) = reader.take_partial() {
        deliver(vec![line], stream, &recorder, &mut last_json).await;
    }
    recorder.truncated_lines(reader.truncated_lines());
    last_json
}

/// Records lines of one stream, noting the last JSON object on stdout; `false` once the
/// recorder takes no more.
async fn deliver(
    lines: Vec<String>,
    stream: LogStream,
    recorder: &Recorder,
    last_json: &mut Option<Value>,
) -> bool {
    if stream == LogStream::Stdout {
        if let Some(json) = lines.iter().rev().find_map(|l| json_object_line(l)) {
            *last_json = Some(json);
        }
    }
    recorder.logs(stream, lines).await.is_ok()
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
