//! Runs an agent in a Docker container through the Engine API (bollard), hardened by default
//! (`spec`), with the same input/output contract as a process: input on stdin (through an
//! attach made before the start), in `INPUT_DATA`, and in the file `AGENTNEXUS_INPUT` names;
//! output in the file `AGENTNEXUS_OUTPUT` names, or the last JSON stdout line. Both files live
//! on a small volume (`volume`).
//!
//! The connection to the daemon may break at any time (a proxy that cuts connections, a daemon
//! restart) while the container runs on. Nothing but the daemon's own report of the container's
//! state is taken for its exit (`run`); output streams live from the attach connection, and
//! what a broken connection may have lost is read again from the container's log, which the
//! daemon keeps, without loss or repetition (`logs`); resource samples come from the stats
//! stream, opened again when it breaks (`stats`). Calls are retried while the daemon is away,
//! and only an outage longer than the configured limit ends the run `docker_unavailable`
//! (`daemon`).
//!
//! The container is never auto-removed: after it exits the executor reads its exit state
//! (including the OOM flag) and output file, then removes it itself. Containers carry labels
//! with their execution, agent and user ids, so that after a crash of the runtime they can be
//! found and resumed (`DockerExecutor::resume`).

mod daemon;
mod logs;
mod run;
mod spec;
mod stats;
mod volume;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::ContainerSummaryStateEnum;
use bollard::query_parameters::{AttachContainerOptions, ListContainersOptions};
use futures_util::Stream;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use self::daemon::{CALL_TIMEOUT, CONNECT_TIMEOUT, Daemon, failure, timed_out};
use self::logs::{Collected, LogFollower, LogsEnd};
use self::run::Ended;
use self::volume::OutputError;
use super::{Executor, Exit, Job, RunOutcome};
use crate::docker::DockerProbe;
use crate::domain::{ExecError, Runtime};
use crate::stream::Recorder;

pub const LABEL_EXECUTION: &str = "agentnexus.execution";
pub const LABEL_AGENT: &str = "agentnexus.agent";
pub const LABEL_USER: &str = "agentnexus.user";
/// `nobody:nogroup`: exists (numerically) in every image, owns nothing in it.
pub const CONTAINER_USER: &str = "65534:65534";
/// After the container ends, how long its log may go without progress before reading it is
/// given up (on top of the outage limit, which a read waits out).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub struct DockerExecutor {
    pub probe: Arc<DockerProbe>,
    pub kill_grace: Duration,
    pub sample_interval: Duration,
    pub max_line_bytes: usize,
    /// How long the daemon may stay unreachable while a container runs before its execution
    /// ends `docker_unavailable`.
    pub outage_limit: Duration,
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
        match spec::ensure_image(&docker, image, &stop).await {
            Ok(true) => {}
            Ok(false) => return RunOutcome::Stopped { exit: not_run() },
            Err(e) => return RunOutcome::NotStarted(e),
        }
        let id = match spec::create(&docker, job).await {
            Ok(id) => id,
            Err(e) => return RunOutcome::NotStarted(e),
        };
        // From here on the container exists: whatever happens next, it is removed.
        let outcome = match start(&docker, &id, job).await {
            Ok((output, feeder)) => {
                let source = Source::Attach(output);
                let outcome = self.see_through(&id, source, recorder, stop).await;
                feeder.abort();
                outcome
            }
            Err(e) => RunOutcome::NotStarted(e),
        };
        self.daemon().remove(&id).await;
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

    /// Removes a container (and its volume), whatever its state.
    pub async fn remove_container(&self, id: &str) {
        self.daemon().remove(id).await;
    }

    /// Takes over a container started by a previous run of the runtime, from the point the
    /// store reached, and sees it to its end like `run` would: the daemon kept every line in
    /// the container's log, and the lines before `point` are skipped (see `logs`).
    pub async fn resume(
        &self,
        container_id: &str,
        point: ResumePoint,
        recorder: Arc<Recorder>,
        stop: CancellationToken,
    ) -> RunOutcome {
        let source = Source::Log(point);
        let outcome = self.see_through(container_id, source, recorder, stop).await;
        self.daemon().remove(container_id).await;
        outcome
    }

    fn daemon(&self) -> Daemon {
        Daemon::new(self.probe.clone(), self.outage_limit)
    }

    /// Follows a started container to its end — its output, its resource samples, its exit (or
    /// its stop, when `stop` is triggered) — then collects what it left behind.
    async fn see_through(
        &self,
        id: &str,
        source: Source,
        recorder: Arc<Recorder>,
        stop: CancellationToken,
    ) -> RunOutcome {
        let daemon = self.daemon();
        let seen = match &source {
            Source::Attach(_) => ResumePoint::default(),
            Source::Log(point) => *point,
        };
        let follower = LogFollower::new(
            daemon.clone(),
            id,
            seen,
            recorder.clone(),
            self.max_line_bytes,
        );
        let progress = follower.progress();
        let output = tokio::spawn(async move {
            match source {
                Source::Attach(stream) => follower.attached(stream).await,
                Source::Log(_) => follower.read_log().await.map(Collected::Complete),
            }
        });
        let sampling = AbortOnDropHandle::new(tokio::spawn(stats::record(
            daemon.clone(),
            id.to_owned(),
            recorder,
            self.sample_interval,
        )));
        let ended = run::supervise(&daemon, id, self.kill_grace, &stop).await;
        drop(sampling);
        let exit = match ended {
            Ended::Lost(e) => {
                output.abort();
                return RunOutcome::Lost(e);
            }
            Ended::Stopped(exit) => {
                if let Err(e) = self.drain(id, output, &progress).await {
                    tracing::warn!(container = id, error = %e.message, "the stopped container's output was not read to its end");
                }
                return RunOutcome::Stopped { exit };
            }
            Ended::Exited(exit) => exit,
        };
        let last_json = match self.drain(id, output, &progress).await {
            Ok(last_json) => last_json,
            Err(e) => return RunOutcome::Lost(e),
        };
        let output = match volume::read_output(&daemon, id).await {
            Ok(Some(value)) => Ok(Some(value)),
            Ok(None) => Ok(last_json),
            Err(OutputError::Invalid(problem)) => Err(problem),
            Err(OutputError::Unavailable(e)) => return RunOutcome::Lost(e),
        };
        RunOutcome::Exited { exit, output }
    }

    /// Waits until the container's output is read to its end (checked against its log when the
    /// attach stream cannot be trusted), for as long as the reading makes progress or waits
    /// out an outage.
    async fn drain(
        &self,
        id: &str,
        mut output: JoinHandle<Result<Collected, ExecError>>,
        progress: &AtomicU64,
    ) -> LogsEnd {
        loop {
            match self.progressing(id, &mut output, progress).await? {
                Collected::Complete(last_json) => return Ok(last_json),
                Collected::AttachEnded(ended) => {
                    output =
                        tokio::spawn(
                            async move { ended.complete().await.map(Collected::Complete) },
                        );
                }
            }
        }
    }

    /// The result of a reading task, given up when it shows no progress for longer than an
    /// outage may last.
    async fn progressing(
        &self,
        id: &str,
        task: &mut JoinHandle<Result<Collected, ExecError>>,
        progress: &AtomicU64,
    ) -> Result<Collected, ExecError> {
        let window = DRAIN_TIMEOUT + self.outage_limit;
        let mut before = progress.load(Ordering::Relaxed);
        loop {
            match tokio::time::timeout(window, &mut *task).await {
                Ok(Ok(collected)) => return collected,
                Ok(Err(e)) => {
                    return Err(ExecError::new(
                        "docker_unavailable",
                        format!("reading the container's output failed: {e}"),
                    ));
                }
                Err(_) => {
                    let now = progress.load(Ordering::Relaxed);
                    if now == before {
                        task.abort();
                        return Err(ExecError::new(
                            "docker_unavailable",
                            format!("the output of the container {id} stalled before its end"),
                        ));
                    }
                    before = now;
                }
            }
        }
    }
}

/// Where a container's output is read from.
enum Source {
    /// The attach stream made before the start.
    Attach(AttachStream),
    /// The container's log, after the lines a previous run stored.
    Log(ResumePoint),
}

type AttachStream = Pin<Box<dyn Stream<Item = Result<LogOutput, BollardError>> + Send>>;

/// Prepares the volume, attaches to the container and starts it; returns its output stream
/// and the task that writes the input to its stdin.
async fn start(
    docker: &Docker,
    id: &str,
    job: &Job,
) -> Result<(AttachStream, JoinHandle<()>), ExecError> {
    let input = job.input.to_string();
    volume::prepare(docker, id, input.as_bytes()).await?;
    // Attached before the start, so that not even the first line can be missed, and the input
    // is there when the agent reads it.
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
        Err(_) => return Err(timed_out("attaching")),
        Ok(Err(e)) => return Err(failure("spawn_failed", "cannot attach", e)),
        Ok(Ok(attach)) => attach,
    };
    match tokio::time::timeout(CALL_TIMEOUT, docker.start_container(id, None)).await {
        Err(_) => return Err(timed_out("starting the container")),
        Ok(Err(e)) => return Err(failure("spawn_failed", "cannot start the container", e)),
        Ok(Ok(())) => {}
    }
    let mut stdin = attach.input;
    let feeder = tokio::spawn(async move {
        // An agent that ignores its stdin may be gone before it is written: not an error.
        // Closing our end closes the container's stdin (`StdinOnce`).
        let _ = stdin.write_all(input.as_bytes()).await;
        let _ = stdin.shutdown().await;
    });
    Ok((attach.output, feeder))
}

/// A container stopped before it ran has no exit code.
fn not_run() -> Exit {
    Exit::Signal(libc::SIGTERM)
}
