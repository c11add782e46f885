//! Sees a started container to its end: waits for its exit, or stops it when asked. A wait
//! stream that ends or breaks is only a cue to ask the daemon for the container's state: the
//! run ends when the daemon reports the container exited, and a wait that broke while it still
//! runs is simply made again.

use std::time::Duration;

use bollard::query_parameters::{KillContainerOptions, StopContainerOptions};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::daemon::{CALL_TIMEOUT, CallError, Daemon, Outage, RETRY_FIRST, State, gone, is_answer};
use crate::domain::ExecError;
use crate::executor::Exit;

/// How often the state is asked while waiting anyway, in case a wait stream hangs without
/// breaking (a half-open connection to a remote daemon).
const STATE_CHECK: Duration = Duration::from_secs(10);

/// How a container's run ended, as far as the daemon could tell.
#[derive(Debug)]
pub(super) enum Ended {
    Exited(Exit),
    Stopped(Exit),
    /// Its end could not be seen: the daemon stayed away past the limit, or the container
    /// vanished.
    Lost(ExecError),
}

/// Why the container ended, which decides how its exit state reads.
#[derive(Clone, Copy)]
enum Ending {
    ByItself,
    StoppedOnPurpose,
}

/// Waits for the container to exit, or stops it when `stop` is triggered.
pub(super) async fn supervise(
    daemon: &Daemon,
    id: &str,
    kill_grace: Duration,
    stop: &CancellationToken,
) -> Ended {
    let mut outage = daemon.outage();
    let exited = tokio::select! {
        ended = until_exit(daemon, id, &mut outage) => Some(ended),
        _ = stop.cancelled() => None,
    };
    match exited {
        Some(ended) => ended,
        None => stop_container(daemon, id, kill_grace, &mut outage).await,
    }
}

async fn until_exit(daemon: &Daemon, id: &str, outage: &mut Outage) -> Ended {
    loop {
        let docker = match daemon.client(outage).await {
            Ok(docker) => docker,
            Err(e) => return Ended::Lost(e),
        };
        let mut wait = docker.wait_container(id, None);
        let mut check =
            tokio::time::interval_at(tokio::time::Instant::now() + STATE_CHECK, STATE_CHECK);
        loop {
            tokio::select! {
                // An answer or a broken connection: either way, the state tells.
                waited = wait.next() => {
                    if !matches!(&waited, Some(Ok(_))) && !matches!(&waited, Some(Err(e)) if is_answer(e)) {
                        daemon.note_trouble();
                    }
                    break;
                }
                _ = check.tick() => {
                    let state = daemon.state(id, outage).await;
                    if let Some(end) = ended(state, id, Ending::ByItself) {
                        return end;
                    }
                }
            }
        }
        if let Some(end) = ended(daemon.state(id, outage).await, id, Ending::ByItself) {
            return end;
        }
        tracing::info!(
            container = id,
            "waiting for the container broke off; waiting again"
        );
        tokio::time::sleep(RETRY_FIRST).await;
    }
}

/// Docker's stop sends the image's stop signal, waits, then kills; then the state has the exit.
async fn stop_container(
    daemon: &Daemon,
    id: &str,
    kill_grace: Duration,
    outage: &mut Outage,
) -> Ended {
    // Docker counts the grace in whole seconds, so a sub-second grace rounds up to one second.
    let grace = kill_grace.as_secs_f64().ceil().max(1.0) as i32;
    let stopping = |docker: bollard::Docker| async move {
        let options = StopContainerOptions {
            t: Some(grace),
            signal: None,
        };
        docker.stop_container(id, Some(options)).await
    };
    let within = CALL_TIMEOUT + kill_grace;
    match daemon
        .call_within(outage, "stopping the container", within, stopping)
        .await
    {
        Ok(()) => {}
        Err(CallError::Unavailable(e)) => return Ended::Lost(e),
        Err(CallError::Answered(e)) => {
            tracing::warn!(container = id, error = %e, "cannot stop the container; killing it");
            let kill = |docker: bollard::Docker| async move {
                let options = KillContainerOptions::default();
                docker.kill_container(id, Some(options)).await
            };
            if let Err(CallError::Unavailable(e)) =
                daemon.call(outage, "killing the container", kill).await
            {
                return Ended::Lost(e);
            }
        }
    }
    let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
    loop {
        let state = daemon.state(id, outage).await;
        if let Some(end) = ended(state, id, Ending::StoppedOnPurpose) {
            return end;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::error!(container = id, "the container did not stop");
            return Ended::Stopped(Exit::Signal(libc::SIGKILL));
        }
        tokio::time::sleep(RETRY_FIRST).await;
    }
}

/// The end a state means; `None` while the container runs.
fn ended(state: Result<State, ExecError>, id: &str, ending: Ending) -> Option<Ended> {
    let end = match state {
        Ok(State::Running) => return None,
        Ok(State::Exited { code, oom_killed }) => {
            // An agent stopped on purpose is not reported as killed for its memory.
            let exit = match ending {
                Ending::ByItself if oom_killed && code != 0 => Exit::OomKilled(code),
                _ => Exit::Code(code),
            };
            match ending {
                Ending::ByItself => Ended::Exited(exit),
                Ending::StoppedOnPurpose => Ended::Stopped(exit),
            }
        }
        Ok(State::Gone) => Ended::Lost(gone(id)),
        Err(e) => Ended::Lost(e),
    };
    Some(end)
}
