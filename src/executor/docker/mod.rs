//! Runs an agent in a Docker container through the Engine API (bollard), hardened by default:
//! no network, read-only root filesystem with a small tmpfs at `/tmp`, every capability dropped,
//! `no-new-privileges`, a non-root user, memory (and equal swap), CPU and pids limits.
//!
//! Output is streamed from an attach connection made before the container starts, so no line is
//! missed. Resource samples come from the daemon's stats stream, which has a cadence of one
//! second: a shorter sampling interval cannot be honoured (one-shot calls are no faster — the
//! daemon answers a repeated one at its next collection), a longer one thins the stream out.
//! The container is never auto-removed: after it exits the executor reads its exit state
//! (including the OOM flag) and output file, then removes it itself.
//!
//! Containers carry labels with their execution, agent and user ids, so that after a crash of
//! the runtime they can be found and resumed (`DockerExecutor::resume`).
//!
//! The output file lives on a small anonymous volume mounted at `/agentnexus`, not on the
//! tmpfs: a tmpfs vanishes when the container stops, while a volume can still be read with
//! `download_from_container` after the exit and is removed together with the container.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerStatsResponse, ContainerSummaryStateEnum, HostConfig,
    HostConfigLogConfig, Mount, MountType,
};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, CreateImageOptions,
    DownloadFromContainerOptions, KillContainerOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, StatsOptions, StopContainerOptions, UploadToContainerOptions,
};
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::{
    Executor, Exit, Job, LineReader, MAX_ENV_INPUT, MAX_OUTPUT_FILE, RunOutcome, json_object_line,
};
use crate::docker::DockerProbe;
use crate::domain::{ExecError, LogStream, Runtime};
use crate::events::Recorder;

pub const LABEL_EXECUTION: &str = "agentnexus.execution";
pub const LABEL_AGENT: &str = "agentnexus.agent";
pub const LABEL_USER: &str = "agentnexus.user";
/// `nobody:nogroup`: exists (numerically) in every image, owns nothing in it.
pub const CONTAINER_USER: &str = "65534:65534";
/// Where the output volume is mounted, and the file the agent may write its output to.
const OUTPUT_VOLUME: &str = "/agentnexus";
const OUTPUT_FILE: &str = "/agentnexus/out/output.json";
/// Connecting (and negotiating the API version) must not hold up an execution for long: when
/// the daemon is away, docker executions fail fast with `docker_unavailable`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// For the short calls (inspect, create, start, remove…).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// After the container exits, how long its output streams may take to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Buffer between the demultiplexer and each stream's line splitter; a full buffer slows the
/// reading of the container's output, not the server's memory.
const PIPE_BUFFER: usize = 64 * 1024;

pub struct DockerExecutor {
    pub probe: Arc<DockerProbe>,
    pub kill_grace: Duration,
    pub sample_interval: Duration,
    pub max_line_bytes: usize,
}

/// A container this runtime started, as found on the daemon.
#[derive(Debug, Clone)]
pub struct OwnedContainer {
    pub id: String,
    pub execution_id: String,
    /// Created but never started: its agent never received its input.
    pub never_started: bool,
}

/// How many lines of each stream the store already holds for an execution being resumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResumePoint {
    pub stdout_lines: u64,
    pub stderr_lines: u64,
}

#[async_trait]
impl Executor for DockerExecutor {
    async fn run(&self, job: &Job, recorder: Arc<Recorder>, stop: CancellationToken) -> RunOutcome {
        let docker = match self.probe.client(CONNECT_TIMEOUT).await {
            Ok(docker) => docker,
            Err(e) => {
                return RunOutcome::NotStarted(ExecError::new("docker_unavailable", e.to_string()));
            }
        };
        let Runtime::Docker { image, .. } = &job.agent.runtime else {
            return RunOutcome::NotStarted(ExecError::new(
                "spawn_failed",
                "the docker executor was given an agent of another runtime",
            ));
        };
        match self.ensure_image(&docker, image, &stop).await {
            Ok(true) => {}
            Ok(false) => return RunOutcome::Stopped { exit: not_run() },
            Err(e) => return RunOutcome::NotStarted(e),
        }
        let id = match create(&docker, job).await {
            Ok(id) => id,
            Err(e) => return RunOutcome::NotStarted(e),
        };
        // From here on the container exists: whatever happens next, it is removed.
        let outcome = self.run_container(&docker, &id, job, recorder, stop).await;
        remove(&docker, &id).await;
        outcome
    }
}

impl DockerExecutor {
    /// The containers on the daemon that carry this runtime's execution label (of any runtime
    /// instance: the caller decides which are its own by their execution ids).
    pub async fn containers(&self) -> Result<Vec<OwnedContainer>, String> {
        let docker = self
            .probe
            .client(CONNECT_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let filters = HashMap::from([("label".to_owned(), vec![LABEL_EXECUTION.to_owned()])]);
        let list = docker.list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }));
        let list = tokio::time::timeout(CALL_TIMEOUT, list)
            .await
            .map_err(|_| "listing containers timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                Some(OwnedContainer {
                    execution_id: c.labels?.remove(LABEL_EXECUTION)?,
                    never_started: c.state == Some(ContainerSummaryStateEnum::CREATED),
                    id: c.id?,
                })
            })
            .collect())
    }

    /// Removes a container (and its output volume), whatever its state.
    pub async fn remove_container(&self, id: &str) {
        if let Ok(docker) = self.probe.client(CONNECT_TIMEOUT).await {
            remove(&docker, id).await;
        }
    }

    /// Takes over a container started by a previous run of the runtime, from the point the
    /// store reached, and sees it to its end like `run` would.
    ///
    /// The attach stream of the previous run died with it, but the daemon kept every line in
    /// the container's log (the executor pins the `json-file` driver). Lines are matched by
    /// their position in each stream, not by time: the logs are re-read from the start, split
    /// by the same splitter, and the first `point.stdout_lines` stdout lines and
    /// `point.stderr_lines` stderr lines — exactly those the store committed — are skipped.
    /// Counting is exact where timestamps are not: ours are taken on arrival, Docker's on
    /// write; many lines share a millisecond; and `since` has only second precision. A partial
    /// line that was buffered when the runtime died was never stored, so it is not counted and
    /// comes again, whole. The cost is reading the container's log once more.
    pub async fn resume(
        &self,
        container_id: &str,
        point: ResumePoint,
        recorder: Arc<Recorder>,
        stop: CancellationToken,
    ) -> RunOutcome {
        let docker = match self.probe.client(CONNECT_TIMEOUT).await {
            Ok(docker) => docker,
            Err(e) => {
                return RunOutcome::NotStarted(ExecError::new("docker_unavailable", e.to_string()));
            }
        };
        let logs = docker.logs(
            container_id,
            Some(LogsOptions {
                follow: true,
                stdout: true,
                stderr: true,
                ..Default::default()
            }),
        );
        let lines = spawn_lines(logs, point, recorder.clone(), self.max_line_bytes);
        let (exit, stopped) = self.supervise(&docker, container_id, recorder, &stop).await;
        let outcome = finish(&docker, container_id, exit, stopped, lines).await;
        remove(&docker, container_id).await;
        outcome
    }

    /// Whether the image is there, pulling it if not. `Ok(false)`: stopped while pulling.
    async fn ensure_image(
        &self,
        docker: &Docker,
        image: &str,
        stop: &CancellationToken,
    ) -> Result<bool, ExecError> {
        match tokio::time::timeout(CALL_TIMEOUT, docker.inspect_image(image)).await {
            Err(_) => return Err(timed_out("inspecting the image")),
            Ok(Ok(_)) => return Ok(true),
            Ok(Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            })) => {}
            Ok(Err(e)) => return Err(failure("image_not_found", "cannot inspect the image", e)),
        }
        // A pull can take long for a big image; the execution's timeout and cancel still
        // apply, through `stop`. Without a registry it fails at once.
        let mut pull = docker.create_image(
            Some(CreateImageOptions {
                from_image: Some(image.to_owned()),
                ..Default::default()
            }),
            None,
            None,
        );
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(false),
                item = pull.next() => match item {
                    None => return Ok(true),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        let why = match e {
                            BollardError::DockerResponseServerError { message, .. } => message,
                            BollardError::DockerStreamError { error } => error,
                            other => return Err(failure("image_not_found", "pulling the image failed", other)),
                        };
                        return Err(ExecError::new(
                            "image_not_found",
                            format!("image {image:?} is not present and cannot be pulled: {why}"),
                        ));
                    }
                }
            }
        }
    }

    async fn run_container(
        &self,
        docker: &Docker,
        id: &str,
        job: &Job,
        recorder: Arc<Recorder>,
        stop: CancellationToken,
    ) -> RunOutcome {
        if let Err(e) = prepare_output_dir(docker, id).await {
            return RunOutcome::NotStarted(e);
        }
        // Attached before the start, so that not even the first line can be missed.
        let attach = docker.attach_container(
            id,
            Some(AttachContainerOptions {
                stream: true,
                stdin: true,
                stdout: true,
                stderr: true,
                ..Default::default()
            }),
        );
        let attach = match tokio::time::timeout(CALL_TIMEOUT, attach).await {
            Err(_) => return RunOutcome::NotStarted(timed_out("attaching")),
            Ok(Err(e)) => {
                return RunOutcome::NotStarted(failure("spawn_failed", "cannot attach", e));
            }
            Ok(Ok(attach)) => attach,
        };
        match tokio::time::timeout(CALL_TIMEOUT, docker.start_container(id, None)).await {
            Err(_) => return RunOutcome::NotStarted(timed_out("starting the container")),
            Ok(Err(e)) => {
                return RunOutcome::NotStarted(failure(
                    "spawn_failed",
                    "cannot start the container",
                    e,
                ));
            }
            Ok(Ok(())) => {}
        }
        let mut stdin = attach.input;
        let input = job.input.to_string();
        let feeder = tokio::spawn(async move {
            // An agent that ignores its stdin may be gone before it is written: not an error.
            // Closing our end closes the container's stdin (`StdinOnce`).
            let _ = stdin.write_all(input.as_bytes()).await;
            let _ = stdin.shutdown().await;
        });
        let lines = spawn_lines(
            attach.output,
            ResumePoint::default(),
            recorder.clone(),
            self.max_line_bytes,
        );
        let (exit, stopped) = self.supervise(docker, id, recorder, &stop).await;
        feeder.abort();
        finish(docker, id, exit, stopped, lines).await
    }

    /// Waits for the container to exit, sampling its resources meanwhile, and stops it when
    /// asked. Returns how it exited and whether it was stopped.
    async fn supervise(
        &self,
        docker: &Docker,
        id: &str,
        recorder: Arc<Recorder>,
        stop: &CancellationToken,
    ) -> (Exit, bool) {
        let mut wait = Box::pin(docker.wait_container(id, None));
        let _sampling = AbortOnDropHandle::new(tokio::spawn(stream_stats(
            docker.clone(),
            id.to_owned(),
            recorder,
            self.sample_interval,
        )));
        tokio::select! {
            _ = wait.next() => return (exit_state(docker, id, false).await, false),
            _ = stop.cancelled() => {}
        }
        // Docker's stop sends the image's stop signal, waits, then kills; it counts in whole
        // seconds, so a sub-second grace rounds up to one second.
        let grace = self.kill_grace.as_secs_f64().ceil().max(1.0) as i32;
        let stopping = docker.stop_container(
            id,
            Some(StopContainerOptions {
                t: Some(grace),
                signal: None,
            }),
        );
        let stopped = tokio::time::timeout(CALL_TIMEOUT + self.kill_grace, stopping).await;
        if !matches!(stopped, Ok(Ok(()))) {
            let kill = docker.kill_container(id, Some(KillContainerOptions::default()));
            let _ = tokio::time::timeout(CALL_TIMEOUT, kill).await;
        }
        let _ = tokio::time::timeout(CALL_TIMEOUT, wait.next()).await;
        (exit_state(docker, id, true).await, true)
    }
}

/// A container stopped before it ran has no exit code.
fn not_run() -> Exit {
    Exit::Signal(libc::SIGTERM)
}

async fn create(docker: &Docker, job: &Job) -> Result<String, ExecError> {
    let Runtime::Docker {
        image,
        cmd,
        env,
        memory_bytes,
        cpu_quota,
        pids_limit,
        network,
        tmp_bytes,
    } = &job.agent.runtime
    else {
        unreachable!("checked by the caller");
    };
    let input = job.input.to_string();
    let mut vars: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    vars.push(format!("EXECUTION_ID={}", job.execution_id));
    vars.push(format!("AGENT_ID={}", job.agent.id));
    vars.push(format!("AGENTNEXUS_OUTPUT={OUTPUT_FILE}"));
    if input.len() <= MAX_ENV_INPUT {
        vars.push(format!("INPUT_DATA={input}"));
    }
    let labels = HashMap::from([
        (LABEL_EXECUTION.to_owned(), job.execution_id.clone()),
        (LABEL_AGENT.to_owned(), job.agent.id.clone()),
        (LABEL_USER.to_owned(), job.user_id.clone()),
    ]);
    let memory = i64::try_from(*memory_bytes).unwrap_or(i64::MAX);
    let host_config = HostConfig {
        memory: Some(memory),
        // Swap limit = memory limit: the container gets no swap on top of its memory.
        memory_swap: Some(memory),
        nano_cpus: Some((cpu_quota * 1e9) as i64),
        pids_limit: Some(i64::try_from(*pids_limit).unwrap_or(i64::MAX)),
        network_mode: Some(network.clone()),
        readonly_rootfs: Some(true),
        tmpfs: Some(HashMap::from([(
            "/tmp".to_owned(),
            format!("rw,nosuid,nodev,noexec,size={tmp_bytes},mode=1777"),
        )])),
        mounts: Some(vec![Mount {
            target: Some(OUTPUT_VOLUME.to_owned()),
            typ: Some(MountType::VOLUME),
            ..Default::default()
        }]),
        cap_drop: Some(vec!["ALL".to_owned()]),
        security_opt: Some(vec!["no-new-privileges".to_owned()]),
        // Resuming after a restart re-reads the container's log: it must be one the daemon
        // can read back, whatever the daemon's default driver is.
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".to_owned()),
            config: None,
        }),
        auto_remove: Some(false),
        ..Default::default()
    };
    let body = ContainerCreateBody {
        image: Some(image.clone()),
        cmd: (!cmd.is_empty()).then(|| cmd.clone()),
        env: Some(vars),
        user: Some(CONTAINER_USER.to_owned()),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(true),
        stdin_once: Some(true),
        tty: Some(false),
        labels: Some(labels),
        host_config: Some(host_config),
        ..Default::default()
    };
    let options = CreateContainerOptions {
        name: Some(format!("agentnexus-{}", job.execution_id)),
        ..Default::default()
    };
    match tokio::time::timeout(CALL_TIMEOUT, docker.create_container(Some(options), body)).await {
        Err(_) => Err(timed_out("creating the container")),
        Ok(Err(e)) => Err(failure("spawn_failed", "cannot create the container", e)),
        Ok(Ok(created)) => Ok(created.id),
    }
}

/// A fresh volume belongs to root; an `out` directory that anyone may write into (sticky, like
/// `/tmp`) lets the non-root agent write its output file there.
async fn prepare_output_dir(docker: &Docker, id: &str) -> Result<(), ExecError> {
    let mut tar = tar_header("out/", 0o1777, b'5', 0).to_vec();
    tar.extend_from_slice(&[0; 1024]);
    let upload = docker.upload_to_container(
        id,
        Some(UploadToContainerOptions {
            path: OUTPUT_VOLUME.to_owned(),
            ..Default::default()
        }),
        bollard::body_full(tar.into()),
    );
    match tokio::time::timeout(CALL_TIMEOUT, upload).await {
        Err(_) => Err(timed_out("preparing the output directory")),
        Ok(Err(e)) => Err(failure(
            "spawn_failed",
            "cannot prepare the output directory",
            e,
        )),
        Ok(Ok(())) => Ok(()),
    }
}

/// After the exit: collects the log streams, then what the container left behind.
async fn finish(
    docker: &Docker,
    id: &str,
    exit: Exit,
    stopped: bool,
    lines: JoinHandle<Option<Value>>,
) -> RunOutcome {
    let abort = lines.abort_handle();
    let last_json = match tokio::time::timeout(DRAIN_TIMEOUT, lines).await {
        Ok(result) => result.ok().flatten(),
        Err(_) => {
            tracing::warn!(
                container = id,
                "the container's output did not drain in time"
            );
            abort.abort();
            None
        }
    };
    if stopped {
        return RunOutcome::Stopped { exit };
    }
    let output = match read_output_file(docker, id).await {
        Ok(Some(value)) => Ok(Some(value)),
        Ok(None) => Ok(last_json),
        Err(e) => Err(e),
    };
    RunOutcome::Exited { exit, output }
}

/// How the container ended, from its state: the exit code, and whether the kernel killed it
/// for exceeding its memory limit (an agent stopped on purpose is not reported as OOM).
async fn exit_state(docker: &Docker, id: &str, stopped: bool) -> Exit {
    match tokio::time::timeout(CALL_TIMEOUT, docker.inspect_container(id, None)).await {
        Ok(Ok(info)) => {
            let state = info.state.unwrap_or_default();
            let code = state.exit_code.unwrap_or(-1) as i32;
            if state.oom_killed == Some(true) && code != 0 && !stopped {
                Exit::OomKilled(code)
            } else {
                Exit::Code(code)
            }
        }
        Ok(Err(e)) => {
            tracing::error!(container = id, error = %e, "cannot inspect the exited container");
            Exit::Code(-1)
        }
        Err(_) => {
            tracing::error!(container = id, "inspecting the exited container timed out");
            Exit::Code(-1)
        }
    }
}

async fn remove(docker: &Docker, id: &str) {
    let removal = docker.remove_container(
        id,
        Some(RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        }),
    );
    match tokio::time::timeout(CALL_TIMEOUT, removal).await {
        Ok(Ok(()))
        | Ok(Err(BollardError::DockerResponseServerError {
            status_code: 404, ..
        })) => {}
        Ok(Err(e)) => tracing::warn!(container = id, error = %e, "cannot remove the container"),
        Err(_) => tracing::warn!(container = id, "removing the container timed out"),
    }
}

async fn read_output_file(docker: &Docker, id: &str) -> Result<Option<Value>, String> {
    let mut download = docker.download_from_container(
        id,
        Some(DownloadFromContainerOptions {
            path: OUTPUT_FILE.to_owned(),
        }),
    );
    let mut archive = Vec::new();
    let read = async {
        while let Some(chunk) = download.next().await {
            match chunk {
                Ok(bytes) => {
                    archive.extend_from_slice(&bytes);
                    // The archive adds headers and padding around the file.
                    if archive.len() > MAX_OUTPUT_FILE + 64 * 1024 {
                        return Err(format!(
                            "the output file is over the limit of {MAX_OUTPUT_FILE} bytes"
                        ));
                    }
                }
                Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => return Ok(false),
                Err(e) => return Err(format!("cannot read the output file: {e}")),
            }
        }
        Ok(true)
    };
    match tokio::time::timeout(CALL_TIMEOUT, read).await {
        Err(_) => return Err("reading the output file timed out".into()),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(false)) => return Ok(None),
        Ok(Ok(true)) => {}
    }
    let Some(bytes) = first_file_in_tar(&archive) else {
        // The agent made something that is not a regular file there.
        return Err("the output file is not a regular file".into());
    };
    if bytes.len() > MAX_OUTPUT_FILE {
        return Err(format!(
            "the output file is {} bytes, over the limit of {MAX_OUTPUT_FILE}",
            bytes.len()
        ));
    }
    serde_json::from_slice(bytes)
        .map(Some)
        .map_err(|e| format!("the output file is not valid JSON: {e}"))
}

/// Demultiplexes a container's output into its two streams, splits each into lines with the
/// same rules as for processes, skips the lines `skip` says are already stored, and records
/// the rest. Returns the last stdout line that is a JSON object, skipped lines included.
fn spawn_lines<S>(
    source: S,
    skip: ResumePoint,
    recorder: Arc<Recorder>,
    max_line_bytes: usize,
) -> JoinHandle<Option<Value>>
where
    S: Stream<Item = Result<LogOutput, BollardError>> + Send + 'static,
{
    let (mut out_w, out_r) = tokio::io::duplex(PIPE_BUFFER);
    let (mut err_w, err_r) = tokio::io::duplex(PIPE_BUFFER);
    let stdout = tokio::spawn(pump(
        out_r,
        LogStream::Stdout,
        skip.stdout_lines,
        recorder.clone(),
        max_line_bytes,
    ));
    let stderr = tokio::spawn(pump(
        err_r,
        LogStream::Stderr,
        skip.stderr_lines,
        recorder,
        max_line_bytes,
    ));
    tokio::spawn(async move {
        let mut source = std::pin::pin!(source);
        while let Some(item) = source.next().await {
            let written = match item {
                Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                    out_w.write_all(&message).await
                }
                Ok(LogOutput::StdErr { message }) => err_w.write_all(&message).await,
                Ok(LogOutput::StdIn { .. }) => Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the container's output failed");
                    break;
                }
            };
            if written.is_err() {
                break;
            }
        }
        drop((out_w, err_w));
        let last_json = stdout.await.ok().flatten();
        let _ = stderr.await;
        last_json
    })
}

async fn pump(
    pipe: impl AsyncRead + Unpin,
    stream: LogStream,
    mut skip: u64,
    recorder: Arc<Recorder>,
    max_line_bytes: usize,
) -> Option<Value> {
    let mut reader = LineReader::new(pipe, max_line_bytes);
    let mut last_json = None;
    let mut recording = true;
    loop {
        match reader.next_lines().await {
            Ok(Some(mut lines)) => {
                if stream == LogStream::Stdout {
                    if let Some(json) = lines.iter().rev().find_map(|l| json_object_line(l)) {
                        last_json = Some(json);
                    }
                }
                let skipped = skip.min(lines.len() as u64);
                lines.drain(..skipped as usize);
                skip -= skipped;
                // Once the store refuses, keep reading anyway: the container must not block
                // on a full pipe.
                if recording && !lines.is_empty() && recorder.logs(stream, lines).await.is_err() {
                    recording = false;
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, ?stream, "reading the container's output failed");
                break;
            }
        }
    }
    recorder.truncated_lines(reader.truncated_lines());
    last_json
}

/// CPU and memory from consecutive one-shot stats, computed the way `docker stats` does.
struct StatsSampler {
    previous: Option<(u64, Option<u64>, Instant)>,
}

impl StatsSampler {
    fn new() -> StatsSampler {
        StatsSampler { previous: None }
    }

    /// Memory in bytes (the working set: usage less inactive file cache) and CPU percent of
    /// one core since the previous sample. The first sample is only a baseline: the CPU the
    /// container spent starting up, over the few milliseconds since, is no figure to report.
    fn sample(&mut self, stats: &ContainerStatsResponse) -> Option<(u64, f64)> {
        let memory = stats.memory_stats.as_ref()?;
        let usage = memory.usage?;
        let counters = memory.stats.as_ref();
        // cgroup v1 reports the hierarchy's figure as `total_inactive_file`, v2 as
        // `inactive_file`; `docker stats` prefers the former.
        let inactive = counters
            .and_then(|s| {
                s.get("total_inactive_file")
                    .or_else(|| s.get("inactive_file"))
            })
            .copied()
            .filter(|&i| i < usage)
            .unwrap_or(0);
        let cpu = stats.cpu_stats.as_ref()?;
        let total = cpu.cpu_usage.as_ref()?.total_usage?;
        let system = cpu.system_cpu_usage;
        let online = cpu
            .online_cpus
            .map(u64::from)
            .or_else(|| {
                cpu.cpu_usage
                    .as_ref()?
                    .percpu_usage
                    .as_ref()
                    .map(|p| p.len() as u64)
            })
            .filter(|&n| n > 0)
            .unwrap_or(1);
        let now = Instant::now();
        let (prev_total, prev_system, prev_at) = self.previous.replace((total, system, now))?;
        let used = total.saturating_sub(prev_total) as f64;
        let percent = match (prev_system, system) {
            (Some(before), Some(after)) if after > before => {
                used / (after - before) as f64 * online as f64 * 100.0
            }
            // Without the system figure, the wall clock stands in for it.
            _ => {
                let wall = now.duration_since(prev_at).as_nanos() as f64;
                if wall > 0.0 { used / wall * 100.0 } else { 0.0 }
            }
        };
        Some((usage - inactive, percent))
    }
}

/// Records the container's stats stream as `metrics` events, at most one per `interval`.
async fn stream_stats(docker: Docker, id: String, recorder: Arc<Recorder>, interval: Duration) {
    let mut stats = docker.stats(
        &id,
        Some(StatsOptions {
            stream: true,
            one_shot: false,
        }),
    );
    let mut sampler = StatsSampler::new();
    let mut last: Option<Instant> = None;
    while let Some(Ok(stats)) = stats.next().await {
        // Three quarters: the daemon's ticks jitter, and a sample a hair early must not be
        // dropped for a whole interval.
        if last.is_some_and(|t| t.elapsed() < interval * 3 / 4) {
            continue;
        }
        if let Some((memory, cpu)) = sampler.sample(&stats) {
            last = Some(Instant::now());
            if recorder.metrics(memory, cpu).await.is_err() {
                return;
            }
        }
    }
}

/// The error for a failed Docker call: `kind` when the daemon answered with an error, else
/// `docker_unavailable` (it could not be reached).
fn failure(kind: &str, what: &str, error: BollardError) -> ExecError {
    match error {
        BollardError::DockerResponseServerError { message, .. } => {
            ExecError::new(kind, format!("{what}: {message}"))
        }
        other => ExecError::new(
            "docker_unavailable",
            format!("{what}: the Docker daemon is unavailable: {other}"),
        ),
    }
}

fn timed_out(what: &str) -> ExecError {
    ExecError::new(
        "docker_unavailable",
        format!("{what}: the Docker daemon did not answer within {CALL_TIMEOUT:?}"),
    )
}

/// A ustar header for one entry (what the Engine API's archive endpoints speak).
fn tar_header(name: &str, mode: u32, kind: u8, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |h: &mut [u8; 512], at: usize, width: usize, value: u64| {
        let text = format!("{value:0w$o}\0", w = width - 1);
        h[at..at + width].copy_from_slice(text.as_bytes());
    };
    octal(&mut h, 100, 8, u64::from(mode));
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, size);
    octal(&mut h, 136, 12, 0);
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    h
}

/// The contents of the first regular file in a tar archive, skipping extended headers.
fn first_file_in_tar(archive: &[u8]) -> Option<&[u8]> {
    let mut at = 0;
    while at + 512 <= archive.len() {
        let header = &archive[at..at + 512];
        if header.iter().all(|&b| b == 0) {
            return None;
        }
        let size = tar_size(&header[124..136])?;
        let body = at + 512;
        let end = body.checked_add(usize::try_from(size).ok()?)?;
        match header[156] {
            b'0' | 0 => return archive.get(body..end),
            // PAX and GNU long-name headers precede the entry they describe.
            b'x' | b'g' | b'L' | b'K' => at = body + (end - body).div_ceil(512) * 512,
            _ => return None,
        }
    }
    None
}

fn tar_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        // Base-256, for sizes that do not fit the octal field.
        return Some(
            field[1..]
                .iter()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)),
        );
    }
    let text = std::str::from_utf8(field).ok()?;
    let digits = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if digits.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(digits, 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_round_trip() {
        let body = br#"{"ok":true}"#;
        let mut archive = tar_header("output.json", 0o644, b'0', body.len() as u64).to_vec();
        archive.extend_from_slice(body);
        archive.resize(archive.len().div_ceil(512) * 512, 0);
        archive.extend_from_slice(&[0; 1024]);
        assert_eq!(first_file_in_tar(&archive), Some(&body[..]));
        let dir = tar_header("out/", 0o1777, b'5', 0);
        assert_eq!(first_file_in_tar(&dir), None);
    }
}
