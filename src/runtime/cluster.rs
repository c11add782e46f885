//! A replica's part in the cluster's figures (`QueueMode::Shared` only): a heartbeat in the
//! database every third of a lease (at most every `MAX_FACTS_AGE`), which also takes or renews
//! the facts lease; while this replica holds it, it reads the cluster's facts from the store
//! and exports them (`metrics::cluster`), so they are exported once, whatever the number of
//! replicas. On an orderly stop the replica leaves: its heartbeat and its facts lease go at
//! once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Runtime;

/// The oldest the exported facts get while their exporter lives, whatever the lease.
const MAX_FACTS_AGE: Duration = Duration::from_secs(5);

impl Runtime {
    /// Beats until the runtime shuts down or is dropped.
    pub(super) fn spawn_cluster_heartbeat(self: &Arc<Self>, lease: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval((lease / 3).min(MAX_FACTS_AGE));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(runtime) = weak.upgrade() else {
                    return;
                };
                if runtime.permits.is_closed() {
                    return;
                }
                runtime.beat(lease).await;
            }
        });
    }

    /// One heartbeat, and the facts if this replica holds their lease. A failed beat changes
    /// nothing: facts already read stay exported until the lease they were read under may
    /// have passed to another replica.
    async fn beat(&self, lease: Duration) {
        let Some(series) = &self.metrics.cluster else {
            return;
        };
        // Before the renewal reaches the database, so never later than the lease's expiry there.
        let renewing = Instant::now();
        let beat = match self.store.cluster_heartbeat(&self.replica_id, lease).await {
            Ok(beat) => beat,
            Err(e) => {
                tracing::warn!(error = %e, "cannot record this replica's heartbeat");
                return;
            }
        };
        if !beat.holds_facts_lease {
            series.not_holding();
            return;
        }
        match self.store.cluster_facts().await {
            Ok(facts) => series.holding(renewing + lease, beat.replicas_seen, facts),
            Err(e) => tracing::warn!(error = %e, "cannot read the cluster's facts"),
        }
    }

    /// Leaves the cluster on an orderly stop, so that it no longer counts as seen and another
    /// replica exports the facts at its next heartbeat.
    pub(super) async fn leave_cluster(&self) {
        let Some(series) = &self.metrics.cluster else {
            return;
        };
        series.not_holding();
        if let Err(e) = self.store.leave_cluster(&self.replica_id).await {
            tracing::warn!(error = %e, "cannot leave the cluster: its rows expire within a lease");
        }
    }
}
