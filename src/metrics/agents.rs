//! The per-agent series: they exist exactly for the agents that are defined now. Defining an
//! agent creates its series (the revenue gauge at its exact lifetime total at once), deleting
//! it removes them, and nothing else creates or re-creates one: an update about an agent that
//! is not defined (an execution of a deleted agent still running) changes no per-agent series.
//! The series carry the agent's current name, so re-creating an id under another name leaves
//! no series of the old name behind.
//!
//! One lock guards the registry and every update of these families, so that an update racing a
//! deletion cannot bring a removed series back.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::domain::{Agent, Execution, Status};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubmittedLabels {
    agent_id: String,
    agent_name: String,
    user_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    agent_id: String,
    agent_name: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
    agent_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct AgentLabels {
    pub(super) agent_id: String,
    pub(super) agent_name: String,
}

pub(super) const REVENUE_HELP: &str =
    "Total revenue per agent in wei (float; exact figure at /api/agents/{id}/revenue)";

type FloatGauge = Gauge<f64, AtomicU64>;

/// Execution durations from a tenth of a second to an hour: long agent runs stay resolvable.
const DURATION_BUCKETS: [f64; 14] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// The final statuses, each with its own status counter and duration histogram per agent.
const FINAL: [Status; 3] = [Status::Completed, Status::Failed, Status::Cancelled];

/// A defined agent, as its series know it.
struct Defined {
    name: String,
    /// The users its `executions_total` series exist for (all of them are removed with it).
    users: Vec<String>,
    /// Exact lifetime revenue; the gauge shows it as a float.
    revenue_wei: u128,
}

impl Defined {
    fn labels(&self, id: &str) -> AgentLabels {
        AgentLabels {
            agent_id: id.to_owned(),
            agent_name: self.name.clone(),
        }
    }
}

#[derive(Default)]
struct State {
    defined: HashMap<String, Defined>,
    /// Running executions by agent id, defined or not: an agent deleted while its executions
    /// run and then defined again shows them at once.
    running: HashMap<String, i64>,
}

pub(super) struct AgentSeries {
    executions: Family<SubmittedLabels, Counter>,
    duration: Family<DurationLabels, Histogram>,
    statuses: Family<StatusLabels, Counter>,
    running: Family<AgentLabels, Gauge>,
    /// `None` on a replica of a cluster, where revenue is a fact of the cluster, exported once
    /// (`metrics::cluster`) rather than by each replica.
    revenue: Option<Family<AgentLabels, FloatGauge>>,
    state: Arc<Mutex<State>>,
}

impl AgentSeries {
    /// The families, registered in the spec's order; the revenue gauge only if `revenue`.
    pub(super) fn new(registry: &mut Registry, revenue: bool) -> AgentSeries {
        let series = AgentSeries {
            executions: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS)),
            statuses: Family::default(),
            running: Family::default(),
            revenue: revenue.then(Family::default),
            state: Arc::default(),
        };
        // Counters get their `_total` suffix from the encoder.
        registry.register(
            "agentnexus_executions",
            "Total agent executions",
            series.executions.clone(),
        );
        registry.register(
            "agentnexus_execution_duration_seconds",
            "Execution duration distribution",
            series.duration.clone(),
        );
        registry.register(
            "agentnexus_execution_status",
            "Executions by final status",
            series.statuses.clone(),
        );
        registry.register(
            "agentnexus_agent_running_executions",
            "Currently running executions",
            series.running.clone(),
        );
        // A gauge, not a counter: the spec names it without `_total`, and it holds the exact
        // lifetime total from the store (as a float), not a count since this process started.
        if let Some(revenue) = &series.revenue {
            registry.register(
                "agentnexus_agent_revenue_wei",
                REVENUE_HELP,
                revenue.clone(),
            );
        }
        series
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Creates an agent's series at zero (for each user that can run it), with its running
    /// gauge and its revenue gauge at their true values. A series that first appears with a
    /// non-zero counter hides that increase from `rate()` and `increase()`; one that starts at
    /// zero does not.
    pub(super) fn define(&self, agent: &Agent, users: &[String], revenue_wei: u128) {
        self.define_in(&mut self.state(), agent, users, revenue_wei);
    }

    fn define_in(&self, state: &mut State, agent: &Agent, users: &[String], revenue_wei: u128) {
        if let Some(old) = state.defined.remove(&agent.id) {
            self.remove_series(&agent.id, &old);
        }
        let defined = Defined {
            name: agent.name.clone(),
            users: users.to_vec(),
            revenue_wei,
        };
        let labels = defined.labels(&agent.id);
        for user in users {
            let _ = self
                .executions
                .get_or_create(&submitted_labels(&labels, user));
        }
        for status in FINAL {
            let _ = self
                .statuses
                .get_or_create(&status_labels(&agent.id, status));
            let _ = self
                .duration
                .get_or_create(&duration_labels(&labels, status));
        }
        let running = state.running.get(&agent.id).copied().unwrap_or(0);
        self.running.get_or_create(&labels).set(running);
        if let Some(revenue) = &self.revenue {
            revenue.get_or_create(&labels).set(revenue_wei as f64);
        }
        state.defined.insert(agent.id.clone(), defined);
    }

    /// Defines an agent this replica has not defined yet, as `define` does; one it has keeps
    /// its series. A replica of a cluster learns so of agents defined through another replica
    /// when it first submits or runs one of their executions.
    pub(super) fn learn(&self, agent: &Agent, users: &[String]) {
        let mut state = self.state();
        if !state.defined.contains_key(&agent.id) {
            self.define_in(&mut state, agent, users, 0);
        }
    }

    /// Removes every series of an agent.
    pub(super) fn undefine(&self, agent_id: &str) {
        let mut state = self.state();
        if let Some(old) = state.defined.remove(agent_id) {
            self.remove_series(agent_id, &old);
        }
    }

    fn remove_series(&self, agent_id: &str, old: &Defined) {
        let labels = old.labels(agent_id);
        for user in &old.users {
            self.executions.remove(&submitted_labels(&labels, user));
        }
        for status in FINAL {
            self.statuses.remove(&status_labels(agent_id, status));
            self.duration.remove(&duration_labels(&labels, status));
        }
        self.running.remove(&labels);
        if let Some(revenue) = &self.revenue {
            revenue.remove(&labels);
        }
    }

    pub(super) fn submitted(&self, execution: &Execution) {
        let mut state = self.state();
        let Some(agent) = state.defined.get_mut(&execution.agent_id) else {
            return;
        };
        if !agent.users.contains(&execution.user_id) {
            agent.users.push(execution.user_id.clone());
        }
        let labels = agent.labels(&execution.agent_id);
        self.executions
            .get_or_create(&submitted_labels(&labels, &execution.user_id))
            .inc();
    }

    /// Counts an execution as running until the returned guard is dropped.
    pub(super) fn running(&self, execution: &Execution) -> RunningGuard {
        let guard = RunningGuard {
            running: self.running.clone(),
            state: self.state.clone(),
            agent_id: execution.agent_id.clone(),
        };
        guard.add(1);
        guard
    }

    /// Records the end of an execution of the agent, if it is defined.
    pub(super) fn ended(&self, execution: &Execution, to: Status, run_seconds: Option<f64>) {
        let mut state = self.state();
        let Some(agent) = state.defined.get_mut(&execution.agent_id) else {
            return;
        };
        let labels = agent.labels(&execution.agent_id);
        self.statuses
            .get_or_create(&status_labels(&execution.agent_id, to))
            .inc();
        if let Some(seconds) = run_seconds {
            self.duration
                .get_or_create(&duration_labels(&labels, to))
                .observe(seconds);
        }
        if let Some(revenue) = &self.revenue
            && to == Status::Completed
            && execution.price_wei.0 > 0
        {
            agent.revenue_wei = agent.revenue_wei.saturating_add(execution.price_wei.0);
            revenue.get_or_create(&labels).set(agent.revenue_wei as f64);
        }
    }
}

/// Counts an execution as running until its driver is done with it. It finds the agent's
/// series when dropped, not when made: the agent may have been deleted or defined again since.
pub struct RunningGuard {
    running: Family<AgentLabels, Gauge>,
    state: Arc<Mutex<State>>,
    agent_id: String,
}

impl RunningGuard {
    fn add(&self, delta: i64) {
        let mut state = lock(&self.state);
        let count = state.running.entry(self.agent_id.clone()).or_default();
        *count += delta;
        let count = *count;
        if count == 0 {
            state.running.remove(&self.agent_id);
        }
        if let Some(agent) = state.defined.get(&self.agent_id) {
            self.running
                .get_or_create(&agent.labels(&self.agent_id))
                .set(count);
        }
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.add(-1);
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every update is a single step, so the state is consistent even after a holder panicked.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn submitted_labels(agent: &AgentLabels, user: &str) -> SubmittedLabels {
    SubmittedLabels {
        agent_id: agent.agent_id.clone(),
        agent_name: agent.agent_name.clone(),
        user_id: user.to_owned(),
    }
}

fn status_labels(agent_id: &str, status: Status) -> StatusLabels {
    StatusLabels {
        status: status.as_str(),
        agent_id: agent_id.to_owned(),
    }
}

fn duration_labels(agent: &AgentLabels, status: Status) -> DurationLabels {
    DurationLabels {
        agent_id: agent.agent_id.clone(),
        agent_name: agent.agent_name.clone(),
        status: status.as_str(),
    }
}
