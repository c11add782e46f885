//! Driving one run: mark it RUNNING, hand it to its executor with its telemetry intake open,
//! stop it on cancel, timeout, an exceeded budget, shutdown or a lost stream (the first reason
//! wins), and record how it ended.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::domain::{BudgetLimit, ExecError, Execution, Runtime as AgentRuntime, Status};
use crate::executor::{Executor, Exit, Job, RunOutcome};
use crate::stream::Recorder;

use super::telemetry::Registration;
use super::transition::Change;
use super::{Result, Runtime};

/// Why an execution is being stopped; the first reason given wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum StopReason {
    Cancelled,
    Timeout,
    /// A limit of its budget was exceeded (`budget_exceeded`, naming the limit).
    Budget(ExecError),
    Shutdown,
    /// The store cut its stream short: what it writes now cannot be stored.
    StreamLost(ExecError),
}

/// The runtime's grip on an execution that is queued or running.
pub(super) struct Handle {
    pub(super) stop: CancellationToken,
    pub(super) reason: OnceLock<StopReason>,
    pub(super) finished: CancellationToken,
}

impl Handle {
    pub(super) fn request_stop(&self, reason: StopReason) {
        let _ = self.reason.set(reason);
        self.stop.cancel();
    }
}

impl Runtime {
    /// Marks a queued execution RUNNING (unless something else changed it first) and sees its
    /// run to the end.
    pub(super) async fn run(
        &self,
        execution: Execution,
        handle: &Handle,
        permit: OwnedSemaphorePermit,
    ) -> Result<()> {
        if !self
            .transition(&execution, Status::Pending, Change::to(Status::Running))
            .await?
        {
            return Ok(());
        }
        self.run_started(execution, handle, permit).await
    }

    /// Runs an execution the store marked RUNNING as it was claimed (`claims`).
    pub(super) async fn run_claimed(
        &self,
        execution: Execution,
        handle: &Handle,
        permit: OwnedSemaphorePermit,
    ) -> Result<()> {
        // Its agent may have been defined through another replica.
        self.metrics.learn_agent(&execution.agent, &self.users);
        self.run_started(execution, handle, permit).await
    }

    async fn run_started(
        &self,
        execution: Execution,
        handle: &Handle,
        permit: OwnedSemaphorePermit,
    ) -> Result<()> {
        let started = Instant::now();
        let _running = self.metrics.running(&execution);

        let recorder = Arc::new(self.recorder(&execution));
        let (intake, telemetry_env) = self.telemetry.register(&recorder);
        let job = Job {
            execution_id: execution.execution_id.to_string(),
            user_id: execution.user_id.clone(),
            agent: execution.agent.clone(),
            input: execution.input.clone(),
            telemetry_env,
        };
        let executor: &dyn Executor = match execution.agent.runtime {
            AgentRuntime::Process { .. } => &self.process,
            AgentRuntime::Docker { .. } => &self.docker_executor,
        };
        let timeout = Duration::from_secs(execution.agent.timeout_secs);
        let run = executor.run(&job, recorder.clone(), handle.stop.clone());
        self.finish_run(
            &execution,
            handle,
            run,
            timeout,
            &recorder,
            started,
            Some(permit),
            Some(intake),
        )
        .await
    }

    /// The recorder of a run of `execution`, with the price table and span budget.
    pub(super) fn recorder(&self, execution: &Execution) -> Recorder {
        Recorder::new(
            execution,
            self.store.clone(),
            self.metrics.clone(),
            self.log_limits,
            self.prices.clone(),
            self.max_spans,
        )
    }

    /// Sees an executor's run to its end within `timeout` and its budget (stopping it when
    /// either is passed), frees the concurrency slot, and records how the execution ended,
    /// after its root span when it had a telemetry intake (closed first, so that the usage
    /// recorded is final).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn finish_run(
        &self,
        execution: &Execution,
        handle: &Handle,
        run: impl std::future::Future<Output = RunOutcome>,
        timeout: Duration,
        recorder: &Recorder,
        started: Instant,
        permit: Option<OwnedSemaphorePermit>,
        intake: Option<Registration<'_>>,
    ) -> Result<()> {
        tokio::pin!(run);
        let outcome = tokio::select! {
            outcome = &mut run => outcome,
            _ = tokio::time::sleep(timeout) => {
                handle.request_stop(StopReason::Timeout);
                run.await
            }
            breach = over_budget(recorder, started) => {
                if let Some(limit) = breach.budget {
                    self.metrics.genai.budget_exceeded(&execution.agent_id, limit);
                }
                handle.request_stop(StopReason::Budget(breach));
                run.await
            }
        };
        drop(permit);
        let root = match intake {
            Some(intake) => Some(intake.close().await),
            None => None,
        };
        let mut change = ended(outcome, handle, execution.agent.timeout_secs);
        change.stats = Some(recorder.stats());
        change.ran_for = Some(started.elapsed());
        if let Some(root) = &root {
            self.record_root_span(recorder, root, change.to).await;
        }
        let recorded = self.transition(execution, Status::Running, change).await;
        // Also when the end was recorded elsewhere (a lost lease): its gauges end with the run.
        self.metrics.run_ended(execution);
        recorded?;
        Ok(())
    }
}

/// Completes with the breach once the run exceeds its budget: a limit its spans passed (the
/// recorder's ledger), or its wall time (`maxWallSecs`, from `started`), said at 80 % first.
async fn over_budget(recorder: &Recorder, started: Instant) -> ExecError {
    let wall = async {
        let Some(secs) = recorder.execution().agent.budget.max_wall_secs else {
            return std::future::pending().await;
        };
        let limit = Duration::from_secs(secs);
        tokio::time::sleep_until((started + limit.mul_f64(0.8)).into()).await;
        let line = format!(
            "[agentnexus] budget maxWallSecs at 80 %: {} s of {secs} s",
            started.elapsed().as_secs()
        );
        let _ = recorder.system_line(line).await;
        tokio::time::sleep_until((started + limit).into()).await;
        ExecError::budget_exceeded(
            BudgetLimit::MaxWallSecs,
            format!("the execution ran for {secs} s, its budget's limit (maxWallSecs)"),
        )
    };
    tokio::select! {
        breach = wall => breach,
        _ = recorder.budget_exceeded() => recorder.breach().cloned().expect("set before the wake-up"),
    }
}

/// The status change for how an executor's run ended.
fn ended(outcome: RunOutcome, handle: &Handle, timeout_secs: u64) -> Change {
    match outcome {
        RunOutcome::NotStarted(error) | RunOutcome::Lost(error) => {
            Change::to(Status::Failed).error(error)
        }
        RunOutcome::Stopped { exit } => {
            let reason = handle
                .reason
                .get()
                .cloned()
                .unwrap_or(StopReason::Cancelled);
            stopped(reason, exit, timeout_secs)
        }
        RunOutcome::Exited { exit, output } => exited(exit, output),
    }
}

fn exited(exit: Exit, output: Result<Option<Value>, String>) -> Change {
    let mut change = match (exit, output) {
        (Exit::Code(0), Ok(output)) => Change {
            output,
            ..Change::to(Status::Completed)
        },
        (Exit::Code(0), Err(problem)) => {
            Change::to(Status::Failed).error(ExecError::new("invalid_output", problem))
        }
        (Exit::Code(code), _) => Change::to(Status::Failed).error(ExecError::new(
            "exit_code",
            format!("the agent exited with code {code}"),
        )),
        (Exit::Signal(signal), _) => Change::to(Status::Failed).error(ExecError::new(
            "signal",
            format!("the agent was killed by signal {signal}"),
        )),
        (Exit::OomKilled(code), _) => Change::to(Status::Failed).error(ExecError::new(
            "oom_killed",
            format!("the agent exceeded its memory limit and was killed (exit code {code})"),
        )),
    };
    change.exit_code = exit.code();
    change
}

fn stopped(reason: StopReason, exit: Exit, timeout_secs: u64) -> Change {
    let mut change = match reason {
        StopReason::Cancelled => Change::to(Status::Cancelled)
            .error(ExecError::new("cancelled", "cancelled while running")),
        StopReason::Timeout => Change::to(Status::Failed).error(ExecError::new(
            "timeout",
            format!("the agent exceeded its timeout of {timeout_secs} s"),
        )),
        StopReason::Budget(error) => Change::to(Status::Failed).error(error),
        StopReason::Shutdown => Change::to(Status::Failed).error(ExecError::new(
            "runtime_shutdown",
            "the runtime shut down while this execution was running",
        )),
        StopReason::StreamLost(error) => Change::to(Status::Failed).error(error),
    };
    change.exit_code = exit.code();
    change
}
