//! What a previous run left: PENDING executions are queued again, RUNNING ones end FAILED
//! (`runtime_restarted`) unless their container still runs, which is resumed; containers of
//! finished executions are swept; streams the store cut short are stopped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::docker::DockerHealth;
use crate::domain::{
    self, ExecError, Execution, ExecutionId, Runtime as AgentRuntime, Status, now_ms,
};
use crate::executor::{OwnedContainer, ResumePoint};
use crate::store::LostStream;

use super::supervise::StopReason;
use super::transition::Change;
use super::{QueueMode, Result, Runtime};

impl Runtime {
    /// Executions left RUNNING by a previous run: a process agent cannot be re-attached, so
    /// whatever it left running is killed, but a container outlives the run. Containers are
    /// matched to executions by their label; one whose execution
    /// this store does not know belongs to another runtime and is left alone. Running or
    /// finished containers of RUNNING executions are resumed (`resume_container`); every other
    /// container of ours is a leftover and is removed. (Executors remove their containers
    /// before reporting, so leftovers appear only next to RUNNING docker executions.)
    pub(super) async fn recover(self: &Arc<Self>) -> Result<()> {
        let mut unfinished = self.store.unfinished_executions().await?;
        if let QueueMode::Shared { .. } = self.queue {
            // Of a shared queue, PENDING executions are claimed like new ones, and RUNNING ones
            // of other replicas are theirs, or taken over once their leases expire: this
            // replica recovers only what it ran itself under the same name (or what was
            // started before leases existed).
            unfinished.retain(|e| {
                e.status == Status::Running
                    && e.replica_id.as_ref().is_none_or(|r| *r == self.replica_id)
            });
        }
        let mut containers: HashMap<String, OwnedContainer> = HashMap::new();
        // Only asked when needed: a start must not wait on a daemon that is of no concern.
        let docker_running = unfinished.iter().any(|e| {
            e.status == Status::Running && matches!(e.agent.runtime, AgentRuntime::Docker { .. })
        });
        if docker_running && self.docker.host().is_some() {
            match self.docker_executor.containers().await {
                Ok(found) => {
                    containers = found
                        .into_iter()
                        .map(|c| (c.execution_id.clone(), c))
                        .collect();
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "cannot list containers left by a previous run; their executions fail"
                ),
            }
        }
        for execution in unfinished {
            match execution.status {
                Status::Running => {
                    if let Some(container) = containers.remove(execution.execution_id.as_str()) {
                        if !container.never_started {
                            self.resume_container(execution, container).await?;
                            continue;
                        }
                        self.docker_executor.remove_container(&container.id).await;
                    }
                    if matches!(execution.agent.runtime, AgentRuntime::Process { .. }) {
                        let id = execution.execution_id.as_str();
                        self.process
                            .stop_leftover(id, execution.process.as_ref())
                            .await;
                    }
                    let error = ExecError::new(
                        "runtime_restarted",
                        "the runtime stopped while this execution was running",
                    );
                    let change = Change::to(Status::Failed).error(error);
                    self.transition(&execution, Status::Running, change).await?;
                }
                _ => self.enqueue(execution),
            }
        }
        for (execution_id, container) in containers {
            let Some(id) = ExecutionId::parse(&execution_id) else {
                continue;
            };
            if self.store.get_execution(&id).await?.is_some() {
                tracing::info!(execution = %execution_id, container = %container.id, "removing a leftover container");
                self.docker_executor.remove_container(&container.id).await;
            }
        }
        Ok(())
    }

    /// Removes containers this runtime started whose executions have ended: those whose removal
    /// failed because the daemon was away (an outage during a run, or a restart while it was
    /// down). Containers of executions this store does not know belong to another runtime and
    /// are left alone.
    async fn sweep_containers(&self) {
        let Ok(containers) = self.docker_executor.containers().await else {
            return;
        };
        for container in containers {
            let Some(id) = ExecutionId::parse(&container.execution_id) else {
                continue;
            };
            if self.handles.lock().unwrap().contains_key(&id) {
                continue;
            }
            let ended = self
                .store
                .get_execution(&id)
                .await
                .is_ok_and(|e| e.is_some_and(|e| e.status.is_terminal()));
            if ended {
                tracing::info!(execution = %container.execution_id, container = %container.id, "removing the container of a finished execution");
                self.docker_executor.remove_container(&container.id).await;
            }
        }
    }

    /// Stops the executions whose streams the store cut short: nothing they write now can be
    /// stored, and the store records their end as FAILED with the cause.
    pub(super) fn spawn_lost_stream_stopper(
        self: &Arc<Self>,
        mut lost: tokio::sync::mpsc::UnboundedReceiver<LostStream>,
    ) {
        let runtime = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(LostStream { id, error }) = lost.recv().await {
                let Some(runtime) = runtime.upgrade() else {
                    return;
                };
                let handles = runtime.handles.lock().unwrap();
                if let Some(handle) = handles.get(&id) {
                    handle.request_stop(StopReason::StreamLost(error));
                }
            }
        });
    }

    /// Sweeps every `interval` while the daemon is reachable, until shutdown.
    pub(super) fn spawn_container_sweeper(self: &Arc<Self>, interval: Duration) {
        if self.docker.host().is_none() {
            return;
        }
        let runtime = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(runtime) = runtime.upgrade() else {
                    return;
                };
                if runtime.permits.is_closed() {
                    return;
                }
                if runtime.docker.last() == DockerHealth::Healthy {
                    runtime.sweep_containers().await;
                }
            }
        });
    }

    /// Sees a container started by a previous run to its end, like `drive` would have: it holds
    /// a concurrency slot, can be cancelled, and times out when the agent's timeout, counted
    /// from the original start, runs out.
    async fn resume_container(
        self: &Arc<Self>,
        execution: Execution,
        container: OwnedContainer,
    ) -> Result<()> {
        let point = self.resume_point(&execution).await?;
        tracing::info!(execution = %execution.execution_id, container = %container.id, ?point, "resuming a container");
        self.spawn_tracked(execution, move |runtime, execution, handle| async move {
            // Already running: it takes a slot, but does not wait for one during shutdown.
            let permit = runtime.permits.clone().acquire_owned().await.ok();
            let _running = runtime.metrics.running(&execution);
            let started = Instant::now();
            let recorder = Arc::new(
                runtime
                    .recorder(&execution)
                    .resumed(point.stdout_lines + point.stderr_lines),
            );
            let timeout_ms = execution.agent.timeout_secs.saturating_mul(1000);
            let ran_ms = now_ms().saturating_sub(execution.started_at.unwrap_or_else(now_ms));
            let timeout = Duration::from_millis(timeout_ms.saturating_sub(ran_ms.max(0) as u64));
            let run = runtime.docker_executor.resume(
                &container.id,
                point,
                recorder.clone(),
                handle.stop.clone(),
            );
            runtime
                .finish_run(
                    &execution, &handle, run, timeout, &recorder, started, permit, None,
                )
                .await
        });
        Ok(())
    }

    /// How many lines of each stream the store holds for an execution.
    async fn resume_point(&self, execution: &Execution) -> Result<ResumePoint> {
        const PAGE: usize = 10_000;
        // Lines of 16 KiB would make a page of 10,000 events 160 MB.
        const PAGE_BYTES: usize = 1 << 20;
        let mut point = ResumePoint::default();
        let mut since = 0;
        loop {
            let page = (self.store)
                .events(&execution.execution_id, since, PAGE, PAGE_BYTES)
                .await?;
            for event in &page {
                if event.kind != domain::EventKind::Log {
                    continue;
                }
                match serde_json::from_str::<domain::LogData>(event.data.get()).map(|l| l.stream) {
                    Ok(domain::LogStream::Stdout) => point.stdout_lines += 1,
                    Ok(domain::LogStream::Stderr) => point.stderr_lines += 1,
                    _ => {}
                }
            }
            // A short page may be cut by the byte budget: only an empty one is the end.
            match page.last() {
                Some(last) => since = last.seq,
                None => return Ok(point),
            }
        }
    }
}
