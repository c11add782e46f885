//! Submitting and queueing: an accepted execution is stored PENDING, then waits as a tracked
//! task for a slot under the concurrency limit, in arrival order; cancel reaches it through its
//! handle while it waits or runs, or, when another replica runs it, through the store.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::bus::Signal;
use crate::domain::{Budget, ExecError, Execution, ExecutionId, Status, now_ms};
use crate::store::NewExecution;

use super::supervise::{Handle, StopReason};
use super::transition::Change;
use super::{Caller, Error, QueueMode, Result, Runtime};

/// How often a cancel through a replica that does not run the execution looks whether it
/// has ended.
const CANCEL_POLL: Duration = Duration::from_millis(100);

impl Runtime {
    /// Durably records a PENDING execution and queues it.
    pub async fn submit(
        self: &Arc<Self>,
        caller: &Caller,
        agent_id: &str,
        input: Value,
        budget: Option<&Budget>,
    ) -> Result<Execution> {
        if self.permits.is_closed() {
            return Err(Error::ShuttingDown);
        }
        let mut agent = self.agent(agent_id).await?;
        if let Some(asked) = budget {
            asked.validate().map_err(Error::Invalid)?;
            // What runs is what was asked for: the execution keeps its own budget.
            agent.budget = agent.budget.tightened_by(asked).map_err(Error::Invalid)?;
        }
        if let Some(schema) = &agent.input_schema {
            let validator = jsonschema::validator_for(schema)
                .map_err(|e| Error::Invalid(format!("the agent's input schema is invalid: {e}")))?;
            let problems: Vec<String> = validator
                .iter_errors(&input)
                .take(5)
                .map(|e| format!("{} (at {:?})", e, e.instance_path().to_string()))
                .collect();
            if !problems.is_empty() {
                return Err(Error::InputRejected(problems.join("; ")));
            }
        }
        let execution = self
            .store
            .create_execution(NewExecution {
                id: ExecutionId::generate(),
                agent,
                user_id: caller.user_id.clone(),
                input,
                created_at: now_ms(),
            })
            .await?;
        match self.queue {
            QueueMode::InProcess => {
                self.metrics.submitted(&execution);
                self.enqueue(execution.clone());
            }
            QueueMode::Shared { .. } => {
                // Its agent may have been defined through another replica.
                self.metrics.learn_agent(&execution.agent, &self.users);
                self.metrics.submitted(&execution);
                self.submitted.notify_one();
                self.bus.signal(Signal::Submitted);
            }
        }
        Ok(execution)
    }
    /// Cancels a queued or running execution and waits (boundedly) until it has ended.
    pub async fn cancel(&self, caller: &Caller, id: &str) -> Result<Execution> {
        let execution = self.execution(caller, id).await?;
        let handle = self.handles.lock().unwrap().get(id).cloned();
        let Some(handle) = handle else {
            return self.cancel_elsewhere(caller, execution).await;
        };
        handle.request_stop(StopReason::Cancelled);
        let wait = self.kill_grace + Duration::from_secs(5);
        let _ = tokio::time::timeout(wait, handle.finished.cancelled()).await;
        self.execution(caller, id).await
    }

    /// Cancels an execution this replica holds no handle on: in the shared queue, one waiting
    /// there, or one another replica runs. Its owner learns of the request from the bus's
    /// signal at once, or else as it renews its leases (within a third of a lease), and stops
    /// it like a local cancel.
    async fn cancel_elsewhere(&self, caller: &Caller, execution: Execution) -> Result<Execution> {
        let id = execution.execution_id.as_str().to_owned();
        if execution.status.is_terminal() {
            return Err(Error::Conflict(format!(
                "execution {id} has already finished with status {}",
                execution.status
            )));
        }
        let QueueMode::Shared { lease } = self.queue else {
            // Queued work is parked while the runtime shuts down.
            return Err(Error::ShuttingDown);
        };
        if execution.status == Status::Pending {
            // Waiting in the shared queue: whichever change comes first wins.
            let cancelled = ExecError::new("cancelled", "cancelled before it started");
            let change = Change::to(Status::Cancelled).error(cancelled);
            if self.transition(&execution, Status::Pending, change).await? {
                return self.execution(caller, &id).await;
            }
        }
        // Running (perhaps claimed just now), here or on another replica.
        let execution = self.execution(caller, &id).await?;
        if execution.status != Status::Running {
            return Ok(execution);
        }
        if let Some(handle) = self.handles.lock().unwrap().get(id.as_str()).cloned() {
            handle.request_stop(StopReason::Cancelled);
        }
        // The database first: the signal is only a shortcut to what it records.
        self.store.request_cancel(&execution.execution_id).await?;
        self.bus
            .signal(Signal::Cancel(execution.execution_id.clone()));
        let deadline =
            tokio::time::Instant::now() + lease + self.kill_grace + Duration::from_secs(5);
        loop {
            let now = self.execution(caller, &id).await?;
            if now.status.is_terminal() || tokio::time::Instant::now() >= deadline {
                return Ok(now);
            }
            tokio::time::sleep(CANCEL_POLL).await;
        }
    }

    pub(super) fn enqueue(self: &Arc<Self>, execution: Execution) {
        self.spawn_tracked(execution, |runtime, execution, handle| async move {
            runtime.drive(execution, &handle).await
        });
    }

    /// Runs `work` for an execution as a tracked task, with a handle through which it can be
    /// stopped; the handle goes away, and `cancel` stops waiting, when the work is done.
    pub(super) fn spawn_tracked<F, Fut>(self: &Arc<Self>, execution: Execution, work: F)
    where
        F: FnOnce(Arc<Self>, Execution, Arc<Handle>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        let handle = Arc::new(Handle {
            stop: CancellationToken::new(),
            reason: OnceLock::new(),
            finished: CancellationToken::new(),
        });
        let id = execution.execution_id.clone();
        self.handles
            .lock()
            .unwrap()
            .insert(id.clone(), handle.clone());
        let runtime = self.clone();
        self.tasks.spawn(async move {
            if let Err(e) = work(runtime.clone(), execution, handle.clone()).await {
                tracing::error!(execution = %id, error = %e, "execution failed to complete");
            }
            runtime.handles.lock().unwrap().remove(&id);
            handle.finished.cancel();
        });
    }

    /// Waits for a slot, then runs the execution (`run`); a cancel while it waits ends it
    /// CANCELLED, a shutdown leaves it PENDING for the next start.
    pub(super) async fn drive(&self, execution: Execution, handle: &Handle) -> Result<()> {
        self.metrics.queued();
        let permit = tokio::select! {
            biased;
            _ = handle.stop.cancelled() => {
                self.metrics.dequeued();
                if handle.reason.get() == Some(&StopReason::Cancelled) {
                    let cancelled = ExecError::new("cancelled", "cancelled before it started");
                    let change = Change::to(Status::Cancelled).error(cancelled);
                    self.transition(&execution, Status::Pending, change).await?;
                }
                return Ok(());
            }
            permit = self.permits.clone().acquire_owned() => match permit {
                Ok(permit) => {
                    self.metrics.dequeued();
                    permit
                }
                // Shutting down: it stays PENDING and runs after the restart.
                Err(_) => {
                    self.metrics.dequeued();
                    return Ok(());
                }
            },
        };
        self.run(execution, handle, permit).await
    }
}
