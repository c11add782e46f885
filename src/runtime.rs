//! The runtime core: accepts executions, queues them under the concurrency limit in arrival
//! order, hands them to an executor, and turns what the executor reports into status changes.
//! `Runtime::transition` is the one function through which every status change goes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, Config, LogLimits};
use crate::docker::{DockerHealth, DockerProbe};
use crate::domain::{
    self, Agent, Event, ExecError, Execution, Runtime as AgentRuntime, Status, Wei, now_ms,
};
use crate::events::{Follow, Recorder};
use crate::executor::{
    DockerExecutor, Executor, Exit, Job, OwnedContainer, ProcessExecutor, ResumePoint, RunOutcome,
};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::store::{
    ExecutionFilter, LostStream, NewExecution, RunStats, SqliteOptions, SqliteStore, Store,
    StoreError, Transition, TransitionOutcome,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("agent {0:?} not found")]
    AgentNotFound(String),
    #[error("execution {0:?} not found")]
    ExecutionNotFound(String),
    #[error("{0:?} is not a valid {1} id")]
    InvalidId(String, &'static str),
    #[error("the input does not match the agent's input schema: {0}")]
    InputRejected(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("the runtime is shutting down")]
    ShuttingDown,
    /// A reader asked for the events after one that does not exist: nothing it can have seen.
    #[error("since {since} is beyond the last event of {id} (seq {last_seq})")]
    SinceBeyondEnd {
        id: String,
        since: u64,
        last_seq: u64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Who is asking. A user sees only their own executions; an admin sees all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: String,
    pub admin: bool,
}

impl Caller {
    /// The caller of a server with no API keys (open mode, loopback only).
    pub fn local() -> Caller {
        Caller {
            user_id: "local".into(),
            admin: true,
        }
    }

    fn sees(&self, execution: &Execution) -> bool {
        self.admin || execution.user_id == self.user_id
    }
}

/// Why an execution is being stopped; the first reason given wins.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StopReason {
    Cancelled,
    Timeout,
    Shutdown,
    /// The store cut its stream short: what it writes now cannot be stored.
    StreamLost(ExecError),
}

/// The runtime's grip on an execution that is queued or running.
struct Handle {
    /// The execution's store key.
    key: i64,
    stop: CancellationToken,
    reason: OnceLock<StopReason>,
    finished: CancellationToken,
}

impl Handle {
    fn request_stop(&self, reason: StopReason) {
        let _ = self.reason.set(reason);
        self.stop.cancel();
    }
}

pub struct Runtime {
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    docker: Arc<DockerProbe>,
    process: ProcessExecutor,
    docker_executor: DockerExecutor,
    permits: Arc<Semaphore>,
    handles: Mutex<HashMap<String, Arc<Handle>>>,
    tasks: TaskTracker,
    log_limits: LogLimits,
    kill_grace: Duration,
    default_timeout_secs: u64,
    /// Every user that can submit executions, for metric series created ahead of use.
    users: Vec<String>,
    /// Makes an agent's revenue gauge exact when it is defined: completions hold it shared
    /// from their commit until their metrics are updated; defining or deleting an agent holds
    /// it exclusively, so the revenue it reads from the store is neither missing a completion
    /// nor counting one twice.
    revenue_gate: tokio::sync::RwLock<()>,
}

impl Runtime {
    /// Opens the store, registers the configured agents and recovers what a previous run left
    /// unfinished: PENDING executions are queued again, RUNNING ones end as FAILED
    /// (`runtime_restarted`), since their processes died with the previous run.
    pub async fn start(config: &Config) -> Result<Arc<Runtime>> {
        let hub = Arc::new(Hub::new());
        let (lost, lost_streams) = tokio::sync::mpsc::unbounded_channel();
        let options = SqliteOptions {
            sync_commits: config.sync_commits,
            outage_limit: Duration::from_secs(config.store_outage_limit_secs),
        };
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(
            &config.data_dir,
            options,
            hub.clone(),
            lost,
        )?);
        let metrics = Arc::new(Metrics::new());
        let docker = Arc::new(DockerProbe::new(&config.docker, metrics.clone()));
        let runtime = Arc::new(Runtime {
            store,
            hub,
            docker: docker.clone(),
            metrics,
            process: ProcessExecutor {
                scratch_root: scratch_root(config),
                kill_grace: Duration::from_millis(config.kill_grace_ms),
                sample_interval: Duration::from_millis(config.sample_interval_ms),
                max_line_bytes: config.logs.max_line_bytes,
                containment: crate::executor::Containment::choose(config.containment)
                    .map_err(Error::Invalid)?,
            },
            docker_executor: DockerExecutor {
                probe: docker,
                kill_grace: Duration::from_millis(config.kill_grace_ms),
                sample_interval: Duration::from_millis(config.sample_interval_ms),
                max_line_bytes: config.logs.max_line_bytes,
                outage_limit: Duration::from_millis(config.docker.outage_limit_ms),
            },
            permits: Arc::new(Semaphore::new(config.max_concurrent_executions)),
            handles: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            log_limits: config.logs,
            kill_grace: Duration::from_millis(config.kill_grace_ms),
            default_timeout_secs: config.default_timeout_secs,
            users: known_users(config),
            revenue_gate: tokio::sync::RwLock::new(()),
        });
        runtime.spawn_lost_stream_stopper(lost_streams);
        for entry in &config.agents {
            let agent = config.agent(entry).map_err(Error::Invalid)?;
            runtime.store.put_agent(&agent, true, true).await?;
        }
        if let Some(memory) = crate::health::memory_standing(config.health.memory_limit_bytes) {
            let limit = i64::try_from(memory.limit_bytes).unwrap_or(i64::MAX);
            runtime.metrics.memory_limit_bytes.set(limit);
        }
        for agent in runtime.store.list_agents().await? {
            let revenue = runtime.store.revenue(&agent.id).await?;
            runtime
                .metrics
                .register_agent(&agent, &runtime.users, revenue.0);
        }
        runtime.recover().await?;
        runtime.spawn_container_sweeper(Duration::from_millis(config.docker.sweep_interval_ms));
        Ok(runtime)
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn docker(&self) -> &Arc<DockerProbe> {
        &self.docker
    }

    /// Executions left RUNNING by a previous run: a process agent cannot be re-attached, so
    /// whatever it left running is killed, but a container outlives the run. Containers are
    /// matched to executions by their label; one whose execution
    /// this store does not know belongs to another runtime and is left alone. Running or
    /// finished containers of RUNNING executions are resumed (`resume_container`); every other
    /// container of ours is a leftover and is removed. (Executors remove their containers
    /// before reporting, so leftovers appear only next to RUNNING docker executions.)
    async fn recover(self: &Arc<Self>) -> Result<()> {
        let unfinished = self.store.unfinished_executions().await?;
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
                    if let Some(container) = containers.remove(&execution.execution_id) {
                        if !container.never_started {
                            self.resume_container(execution, container).await?;
                            continue;
                        }
                        self.docker_executor.remove_container(&container.id).await;
                    }
                    if matches!(execution.agent.runtime, AgentRuntime::Process { .. }) {
                        let id = &execution.execution_id;
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
            if self.store.get_execution(&execution_id).await?.is_some() {
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
            if self
                .handles
                .lock()
                .unwrap()
                .contains_key(&container.execution_id)
            {
                continue;
            }
            let ended = self
                .store
                .get_execution(&container.execution_id)
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
    fn spawn_lost_stream_stopper(
        self: &Arc<Self>,
        mut lost: tokio::sync::mpsc::UnboundedReceiver<LostStream>,
    ) {
        let runtime = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(LostStream { key, error }) = lost.recv().await {
                let Some(runtime) = runtime.upgrade() else {
                    return;
                };
                let handles = runtime.handles.lock().unwrap();
                if let Some(handle) = handles.values().find(|h| h.key == key) {
                    handle.request_stop(StopReason::StreamLost(error));
                }
            }
        });
    }

    /// Sweeps every `interval` while the daemon is reachable, until shutdown.
    fn spawn_container_sweeper(self: &Arc<Self>, interval: Duration) {
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
                Recorder::new(
                    &execution,
                    runtime.store.clone(),
                    runtime.metrics.clone(),
                    runtime.log_limits,
                )
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
                    &execution, &handle, run, timeout, &recorder, started, permit,
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
                .events(execution.key, since, PAGE, PAGE_BYTES)
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

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    // ---- agents ----

    pub async fn create_agent(&self, caller: &Caller, agent: Agent) -> Result<Agent> {
        if !caller.admin {
            return Err(Error::Forbidden("only an admin may define agents".into()));
        }
        config::validate_agent(&agent).map_err(Error::Invalid)?;
        let _gate = self.revenue_gate.write().await;
        // An id defined before keeps its completed executions, and so its revenue.
        let revenue = self.store.revenue(&agent.id).await?;
        match self.store.put_agent(&agent, false, false).await {
            Err(StoreError::AlreadyExists(what)) => {
                Err(Error::Conflict(format!("{what} already exists")))
            }
            Err(e) => Err(e.into()),
            Ok(()) => {
                self.metrics.register_agent(&agent, &self.users, revenue.0);
                Ok(agent)
            }
        }
    }

    pub async fn agents(&self) -> Result<Vec<Agent>> {
        Ok(self.store.list_agents().await?)
    }

    pub async fn agent(&self, id: &str) -> Result<Agent> {
        if domain::validate_agent_id(id).is_err() {
            return Err(Error::InvalidId(id.to_owned(), "agent"));
        }
        match self.store.get_agent(id).await? {
            Some((agent, _)) => Ok(agent),
            None => Err(Error::AgentNotFound(id.to_owned())),
        }
    }

    pub async fn delete_agent(&self, caller: &Caller, id: &str) -> Result<()> {
        if !caller.admin {
            return Err(Error::Forbidden("only an admin may delete agents".into()));
        }
        if domain::validate_agent_id(id).is_err() {
            return Err(Error::InvalidId(id.to_owned(), "agent"));
        }
        match self.store.get_agent(id).await? {
            None => Err(Error::AgentNotFound(id.to_owned())),
            Some((_, true)) => Err(Error::Conflict(format!(
                "agent {id:?} is defined in the configuration file; remove it there"
            ))),
            Some((_, false)) => {
                let _gate = self.revenue_gate.write().await;
                self.store.delete_agent(id).await?;
                self.metrics.remove_agent(id);
                Ok(())
            }
        }
    }

    pub async fn revenue(&self, id: &str) -> Result<Wei> {
        self.agent(id).await?;
        Ok(self.store.revenue(id).await?)
    }

    pub fn default_timeout_secs(&self) -> u64 {
        self.default_timeout_secs
    }

    // ---- executions ----

    /// Durably records a PENDING execution and queues it.
    pub async fn submit(
        self: &Arc<Self>,
        caller: &Caller,
        agent_id: &str,
        input: Value,
    ) -> Result<Execution> {
        if self.permits.is_closed() {
            return Err(Error::ShuttingDown);
        }
        let agent = self.agent(agent_id).await?;
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
                id: domain::new_execution_id(),
                agent,
                user_id: caller.user_id.clone(),
                input,
                created_at: now_ms(),
            })
            .await?;
        self.metrics.submitted(&execution);
        self.enqueue(execution.clone());
        Ok(execution)
    }

    /// The execution, if it exists and the caller may see it; someone else's is "not found".
    pub async fn execution(&self, caller: &Caller, id: &str) -> Result<Execution> {
        if !domain::is_valid_execution_id(id) {
            return Err(Error::InvalidId(id.to_owned(), "execution"));
        }
        self.store
            .get_execution(id)
            .await?
            .filter(|e| caller.sees(e))
            .ok_or_else(|| Error::ExecutionNotFound(id.to_owned()))
    }

    pub async fn executions(
        &self,
        caller: &Caller,
        mut filter: ExecutionFilter,
    ) -> Result<Vec<Execution>> {
        if !caller.admin {
            filter.user_id = Some(caller.user_id.clone());
        }
        Ok(self.store.list_executions(filter).await?)
    }

    /// Stored events after `since`: at most `limit` of them, none after the one that brings
    /// their data to `max_bytes` (`Store::events`).
    pub async fn events(
        &self,
        caller: &Caller,
        id: &str,
        since: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>> {
        let execution = self.execution(caller, id).await?;
        // The row is read before the events, and a client learns of an event only after the
        // commit that also raised `last_seq`: a `since` above it is none the client saw.
        check_since(&execution.execution_id, since, execution.last_seq)?;
        Ok(self
            .store
            .events(execution.key, since, limit, max_bytes)
            .await?)
    }

    /// Every event after `since`, stored then live, until the final status.
    pub async fn follow(&self, caller: &Caller, id: &str, since: u64) -> Result<Follow> {
        let execution = self.execution(caller, id).await?;
        let follow = Follow::start(self.store.clone(), self.hub.clone(), &execution, since).await?;
        check_since(id, since, follow.start_last_seq)?;
        Ok(follow)
    }

    /// Cancels a queued or running execution and waits (boundedly) until it has ended.
    pub async fn cancel(&self, caller: &Caller, id: &str) -> Result<Execution> {
        let execution = self.execution(caller, id).await?;
        let handle = self.handles.lock().unwrap().get(id).cloned();
        let Some(handle) = handle else {
            if !execution.status.is_terminal() {
                // Queued work is parked while the runtime shuts down.
                return Err(Error::ShuttingDown);
            }
            return Err(Error::Conflict(format!(
                "execution {id} has already finished with status {}",
                execution.status
            )));
        };
        handle.request_stop(StopReason::Cancelled);
        let wait = self.kill_grace + Duration::from_secs(5);
        let _ = tokio::time::timeout(wait, handle.finished.cancelled()).await;
        self.execution(caller, id).await
    }

    /// Applies a status change — the one way any execution's status changes. The store applies
    /// it only if the execution is still in status `from`, atomically with its event, so of two
    /// racing changes exactly one wins. Returns whether this one did.
    ///
    /// The store retries passing faults itself, and records FAILED with the cause when it cannot
    /// record the change asked for (`RecordedAsFailed`); so an error here means the store is
    /// closed, or refuses even that.
    async fn transition(
        &self,
        execution: &Execution,
        from: Status,
        change: Change,
    ) -> Result<bool> {
        let to = change.to;
        let ran_for = change.ran_for;
        let _gate = match to {
            Status::Completed => Some(self.revenue_gate.read().await),
            _ => None,
        };
        let outcome = self
            .store
            .transition(change.request(execution.key, from))
            .await?;
        tracing::debug!(execution = %execution.execution_id, %from, %to, ?outcome, "transition");
        let recorded = match outcome {
            TransitionOutcome::Applied => to,
            TransitionOutcome::RecordedAsFailed(_) => Status::Failed,
            TransitionOutcome::Refused(_) => return Ok(false),
        };
        let ran_for = ran_for.map(|d| d.as_secs_f64());
        self.metrics.transitioned(execution, recorded, ran_for);
        Ok(recorded == to)
    }

    fn enqueue(self: &Arc<Self>, execution: Execution) {
        self.spawn_tracked(execution, |runtime, execution, handle| async move {
            runtime.drive(execution, &handle).await
        });
    }

    /// Runs `work` for an execution as a tracked task, with a handle through which it can be
    /// stopped; the handle goes away, and `cancel` stops waiting, when the work is done.
    fn spawn_tracked<F, Fut>(self: &Arc<Self>, execution: Execution, work: F)
    where
        F: FnOnce(Arc<Self>, Execution, Arc<Handle>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        let handle = Arc::new(Handle {
            key: execution.key,
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

    /// Waits for a slot, runs the execution, records how it ended.
    async fn drive(&self, execution: Execution, handle: &Handle) -> Result<()> {
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
        if !self
            .transition(&execution, Status::Pending, Change::to(Status::Running))
            .await?
        {
            return Ok(());
        }
        let started = Instant::now();
        let _running = self.metrics.running(&execution);

        let recorder = Arc::new(Recorder::new(
            &execution,
            self.store.clone(),
            self.metrics.clone(),
            self.log_limits,
        ));
        let job = Job {
            execution_id: execution.execution_id.clone(),
            user_id: execution.user_id.clone(),
            agent: execution.agent.clone(),
            input: execution.input.clone(),
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
        )
        .await
    }

    /// Sees an executor's run to its end within `timeout` (stopping it when that passes), frees
    /// the concurrency slot, and records how the execution ended.
    #[allow(clippy::too_many_arguments)]
    async fn finish_run(
        &self,
        execution: &Execution,
        handle: &Handle,
        run: impl std::future::Future<Output = RunOutcome>,
        timeout: Duration,
        recorder: &Recorder,
        started: Instant,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<()> {
        tokio::pin!(run);
        let outcome = tokio::select! {
            outcome = &mut run => outcome,
            _ = tokio::time::sleep(timeout) => {
                handle.request_stop(StopReason::Timeout);
                run.await
            }
        };
        drop(permit);
        let mut change = ended(outcome, handle, execution.agent.timeout_secs);
        change.stats = Some(recorder.stats());
        change.ran_for = Some(started.elapsed());
        self.transition(execution, Status::Running, change).await?;
        Ok(())
    }

    /// Stops taking new work, lets running executions finish within `grace`, stops the rest
    /// and waits until everything they wrote is committed. Queued executions stay PENDING and
    /// run after the next start.
    pub async fn shutdown(&self, grace: Duration) {
        self.permits.close();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            let running: Vec<_> = self.handles.lock().unwrap().values().cloned().collect();
            tracing::warn!(
                count = running.len(),
                "stopping executions still running after the grace period"
            );
            for handle in running {
                handle.request_stop(StopReason::Shutdown);
            }
            let _ =
                tokio::time::timeout(self.kill_grace + Duration::from_secs(5), self.tasks.wait())
                    .await;
        }
        if let Err(e) = self.store.flush().await {
            tracing::error!(error = %e, "final flush of the store failed");
        }
    }

    pub async fn ping_store(&self) -> Result<()> {
        Ok(self.store.ping().await?)
    }
}

/// A reader's `since` must be a seq the execution has (or 0): past its end, the reader would
/// wait for events it already claims to have, and never see the final status.
fn check_since(id: &str, since: u64, last_seq: u64) -> Result<()> {
    if since > last_seq {
        return Err(Error::SinceBeyondEnd {
            id: id.to_owned(),
            since,
            last_seq,
        });
    }
    Ok(())
}

fn known_users(config: &Config) -> Vec<String> {
    if config.api_keys.is_empty() {
        return vec![Caller::local().user_id];
    }
    let mut users: Vec<String> = config.api_keys.iter().map(|k| k.user.clone()).collect();
    users.sort();
    users.dedup();
    users
}

fn scratch_root(config: &Config) -> PathBuf {
    config.data_dir.join("runs")
}

/// A status change the runtime asks for, with what comes with it.
#[derive(Debug, Default)]
struct Change {
    to: Status,
    output: Option<Value>,
    error: Option<ExecError>,
    exit_code: Option<i32>,
    stats: Option<RunStats>,
    /// How long the agent ran, for the duration histogram.
    ran_for: Option<Duration>,
}

impl Change {
    fn to(status: Status) -> Change {
        Change {
            to: status,
            ..Change::default()
        }
    }

    /// The store's request for this change of execution `key` from status `from`.
    fn request(self, key: i64, from: Status) -> Transition {
        Transition {
            key,
            from,
            to: self.to,
            at: now_ms(),
            output: self.output,
            error: self.error,
            exit_code: self.exit_code,
            stats: self.stats,
        }
    }

    fn error(mut self, error: ExecError) -> Change {
        self.error = Some(error);
        self
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
        StopReason::Shutdown => Change::to(Status::Failed).error(ExecError::new(
            "runtime_shutdown",
            "the runtime shut down while this execution was running",
        )),
        StopReason::StreamLost(error) => Change::to(Status::Failed).error(error),
    };
    change.exit_code = exit.code();
    change
}
