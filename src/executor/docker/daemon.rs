//! The daemon as the supervision of one container sees it. A call that fails because the
//! daemon cannot be reached — a refused or dropped connection, no answer in time, a server
//! error — says nothing about the container: it is retried with backoff while the outage lasts,
//! and only an outage longer than the configured limit ends the run `docker_unavailable`. Only
//! the container's state as the daemon reports it (`State`) says that it exited.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum};
use bollard::query_parameters::RemoveContainerOptions;

use crate::docker::DockerProbe;
use crate::domain::ExecError;

/// Connecting (and negotiating the API version) must not hold up an execution for long: when
/// the daemon is away before a container exists, the execution fails fast.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// For the short calls (inspect, create, start, remove…).
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The first pause before a retry; it doubles up to `RETRY_MAX`.
pub(super) const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// The daemon, reached through the shared probe, with the limit on how long it may be away, as
/// one run sees it.
#[derive(Clone)]
pub(super) struct Daemon {
    probe: Arc<DockerProbe>,
    outage_limit: Duration,
    /// Set once anything in the run lost its connection or failed a call: then a stream's end
    /// may have been a cut.
    trouble: Arc<AtomicBool>,
}

/// What the daemon says about a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Not (yet) exited: running, paused, being stopped or removed.
    Running,
    Exited {
        code: i32,
        /// The kernel's OOM killer struck inside it.
        oom_killed: bool,
    },
    /// No such container (any more).
    Gone,
}

/// Why a call gave no result.
#[derive(Debug)]
pub(super) enum CallError {
    /// The daemon answered with a client error (4xx): the answer is for the caller to read.
    Answered(BollardError),
    /// The daemon stayed unreachable past the limit.
    Unavailable(ExecError),
}

impl Daemon {
    pub(super) fn new(probe: Arc<DockerProbe>, outage_limit: Duration) -> Daemon {
        Daemon {
            probe,
            outage_limit,
            trouble: Arc::default(),
        }
    }

    /// Records that a connection broke during the run.
    pub(super) fn note_trouble(&self) {
        self.trouble.store(true, Ordering::Relaxed);
    }

    /// Whether any connection broke, or any call failed, during the run.
    pub(super) fn had_trouble(&self) -> bool {
        self.trouble.load(Ordering::Relaxed)
    }

    /// A fresh tracker for one line of work (supervision, log, output file).
    pub(super) fn outage(&self) -> Outage {
        Outage {
            since: None,
            delay: RETRY_FIRST,
            limit: self.outage_limit,
            trouble: self.trouble.clone(),
        }
    }

    /// A client, connecting (and retrying) as needed. Having one proves nothing about the
    /// daemon, so it does not end an outage.
    pub(super) async fn client(&self, outage: &mut Outage) -> Result<Docker, ExecError> {
        loop {
            match self.probe.client(CONNECT_TIMEOUT).await {
                Ok(docker) => return Ok(docker),
                Err(e) => outage.failed("connecting", &e.to_string()).await?,
            }
        }
    }

    /// Runs `op` until the daemon answers it, within `CALL_TIMEOUT` per attempt.
    pub(super) async fn call<T, F, Fut>(
        &self,
        outage: &mut Outage,
        what: &str,
        op: F,
    ) -> Result<T, CallError>
    where
        F: FnMut(Docker) -> Fut,
        Fut: Future<Output = Result<T, BollardError>>,
    {
        self.call_within(outage, what, CALL_TIMEOUT, op).await
    }

    /// `call` with another time limit per attempt, for calls that take long by design.
    pub(super) async fn call_within<T, F, Fut>(
        &self,
        outage: &mut Outage,
        what: &str,
        timeout: Duration,
        mut op: F,
    ) -> Result<T, CallError>
    where
        F: FnMut(Docker) -> Fut,
        Fut: Future<Output = Result<T, BollardError>>,
    {
        loop {
            let docker = self.client(outage).await.map_err(CallError::Unavailable)?;
            let why = match tokio::time::timeout(timeout, op(docker)).await {
                Ok(Ok(value)) => {
                    outage.ended();
                    return Ok(value);
                }
                Ok(Err(e)) if is_answer(&e) => {
                    outage.ended();
                    return Err(CallError::Answered(e));
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {timeout:?}"),
            };
            outage
                .failed(what, &why)
                .await
                .map_err(CallError::Unavailable)?;
        }
    }

    /// The container's state, asking until the daemon answers.
    pub(super) async fn state(&self, id: &str, outage: &mut Outage) -> Result<State, ExecError> {
        let inspect = |docker: Docker| async move { docker.inspect_container(id, None).await };
        match self.call(outage, "inspecting the container", inspect).await {
            Ok(info) => Ok(state_of(info)),
            Err(CallError::Answered(_)) => Ok(State::Gone),
            Err(CallError::Unavailable(e)) => Err(e),
        }
    }

    /// Removes a container (and its volume), whatever its state; once, for what the daemon
    /// could not remove now is swept later.
    pub(super) async fn remove(&self, id: &str) {
        let Ok(docker) = self.probe.client(CONNECT_TIMEOUT).await else {
            tracing::warn!(container = id, "cannot remove the container: no daemon");
            return;
        };
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
}

/// One outage as one line of work lives through it: since when the daemon has been away, and
/// how long to pause before the next attempt.
pub(super) struct Outage {
    since: Option<Instant>,
    delay: Duration,
    limit: Duration,
    trouble: Arc<AtomicBool>,
}

impl Outage {
    /// The daemon answered.
    pub(super) fn ended(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(after = ?since.elapsed(), "the Docker daemon answers again");
        }
        self.delay = RETRY_FIRST;
    }

    /// An attempt failed without an answer: pauses before the next one, or gives up when the
    /// daemon has been away for longer than the limit.
    pub(super) async fn failed(&mut self, what: &str, why: &str) -> Result<(), ExecError> {
        self.trouble.store(true, Ordering::Relaxed);
        let since = *self.since.get_or_insert_with(|| {
            tracing::warn!(
                what,
                reason = why,
                "the Docker daemon does not answer; retrying"
            );
            Instant::now()
        });
        let away = since.elapsed();
        if away >= self.limit {
            return Err(ExecError::new(
                "docker_unavailable",
                format!(
                    "{what}: the Docker daemon was unreachable for {away:.1?}, over the limit of {:?}: {why}",
                    self.limit
                ),
            ));
        }
        tokio::time::sleep(self.delay.min(self.limit - away)).await;
        self.delay = (self.delay * 2).min(RETRY_MAX);
        Ok(())
    }
}

/// Whether an error is the daemon's answer rather than a sign that it cannot be reached. A
/// server error (5xx) counts as the daemon being in trouble, to be retried like an outage.
pub(super) fn is_answer(error: &BollardError) -> bool {
    match error {
        BollardError::DockerResponseServerError { status_code, .. } => *status_code < 500,
        BollardError::DockerContainerWaitError { .. } => true,
        _ => false,
    }
}

fn state_of(info: ContainerInspectResponse) -> State {
    let state = info.state.unwrap_or_default();
    match state.status {
        Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD) => State::Exited {
            code: state.exit_code.unwrap_or(-1) as i32,
            oom_killed: state.oom_killed == Some(true),
        },
        _ => State::Running,
    }
}

/// The error for a Docker call that failed before the container ran: `kind` when the daemon
/// answered with an error, else `docker_unavailable` (it could not be reached).
pub(super) fn failure(kind: &str, what: &str, error: BollardError) -> ExecError {
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

pub(super) fn timed_out(what: &str) -> ExecError {
    ExecError::new(
        "docker_unavailable",
        format!("{what}: the Docker daemon did not answer within {CALL_TIMEOUT:?}"),
    )
}

/// The error for a container that disappeared under the runtime (removed by someone else).
pub(super) fn gone(id: &str) -> ExecError {
    ExecError::new(
        "container_lost",
        format!("the container {id} disappeared before its end was seen"),
    )
}
