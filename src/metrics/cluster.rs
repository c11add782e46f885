//! The series of a replica that shares its database with others (`QueueMode::Shared`).
//!
//! Counters of what this replica did are its own, so their sum across replicas is the
//! cluster's: `agentnexus_lease_takeovers_total` (executions this replica ended `replica_lost`
//! after their owner stopped renewing) and `agentnexus_fenced_writes_refused_total` (writes of
//! this replica refused because its lease had been lost or had moved on).
//!
//! Facts of the cluster — each agent's revenue, the shared queue's depth, the replicas seen —
//! would come out N-fold if every replica exported them, so only the holder of the facts lease
//! (a row in the database, see `store::ClusterBeat`) does, from what it last read from the
//! store; every other replica exports none of them, and `agentnexus_cluster_facts_exporter` says
//! which one does. A holder stops exporting once its lease may have passed to another replica,
//! even before it learns so (a replica thawed after a freeze exports nothing stale).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::agents::AgentLabels;
use crate::store::ClusterFacts;

/// How this replica reads the writes its store's fence refused.
pub type FencedWrites = Box<dyn Fn() -> u64 + Send + Sync>;

/// The facts as the holder of the facts lease last read them.
struct Held {
    /// Until when the lease is surely still this replica's (measured from before it was
    /// renewed, so never later than its expiry in the database).
    until: Instant,
    replicas_seen: u64,
    facts: ClusterFacts,
}

#[derive(Clone)]
pub struct ClusterSeries {
    takeovers: Counter,
    held: Arc<Mutex<Option<Held>>>,
}

impl ClusterSeries {
    pub(super) fn new(registry: &mut Registry, fenced_writes: FencedWrites) -> ClusterSeries {
        let series = ClusterSeries {
            takeovers: Counter::default(),
            held: Arc::default(),
        };
        registry.register(
            "agentnexus_lease_takeovers",
            "Executions this replica ended FAILED replica_lost after taking over the expired lease of a replica that stopped renewing it",
            series.takeovers.clone(),
        );
        registry.register_collector(Box::new(ClusterCollector {
            held: series.held.clone(),
            fenced_writes,
        }));
        series
    }

    pub fn took_over(&self, executions: u64) {
        self.takeovers.inc_by(executions);
    }

    /// This replica holds the facts lease until `until` at the latest: it exports `facts`
    /// until then, or until the next call.
    pub fn holding(&self, until: Instant, replicas_seen: u64, facts: ClusterFacts) {
        *lock(&self.held) = Some(Held {
            until,
            replicas_seen,
            facts,
        });
    }

    /// This replica does not hold the facts lease (or cannot tell): it exports no facts.
    pub fn not_holding(&self) {
        *lock(&self.held) = None;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update is a single assignment, so the value is whole even after a holder panicked.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct ClusterCollector {
    held: Arc<Mutex<Option<Held>>>,
    fenced_writes: FencedWrites,
}

impl std::fmt::Debug for ClusterCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterCollector")
    }
}

impl Collector for ClusterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let fenced = ConstCounter::new((self.fenced_writes)());
        fenced.encode(encoder.encode_descriptor(
            "agentnexus_fenced_writes_refused",
            "Writes of this replica (event batches, status changes) refused because its lease on the execution had been lost or had moved to another replica",
            None,
            fenced.metric_type(),
        )?)?;
        let held = lock(&self.held);
        let held = held.as_ref().filter(|h| Instant::now() < h.until);
        let exporter = ConstGauge::new(i64::from(held.is_some()));
        exporter.encode(encoder.encode_descriptor(
            "agentnexus_cluster_facts_exporter",
            "1 on the one replica that holds the facts lease and exports the cluster's facts (revenue, queue depth, replicas seen), else 0",
            None,
            exporter.metric_type(),
        )?)?;
        let Some(held) = held else {
            return Ok(());
        };
        let replicas = ConstGauge::new(i64::try_from(held.replicas_seen).unwrap_or(i64::MAX));
        replicas.encode(encoder.encode_descriptor(
            "agentnexus_cluster_replicas",
            "Replicas whose heartbeat in the database is fresher than a lease (exported by the facts exporter only)",
            None,
            replicas.metric_type(),
        )?)?;
        let pending = ConstGauge::new(i64::try_from(held.facts.pending).unwrap_or(i64::MAX));
        pending.encode(encoder.encode_descriptor(
            "agentnexus_execution_queue_depth",
            "Executions waiting in the cluster's shared queue (PENDING; exported by the facts exporter only)",
            None,
            pending.metric_type(),
        )?)?;
        let mut revenue = encoder.encode_descriptor(
            "agentnexus_agent_revenue_wei",
            super::agents::REVENUE_HELP,
            None,
            MetricType::Gauge,
        )?;
        for (agent, wei) in &held.facts.revenue {
            let labels = AgentLabels {
                agent_id: agent.id.clone(),
                agent_name: agent.name.clone(),
            };
            ConstGauge::new(wei.0 as f64).encode(revenue.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
