//! The shared queue of replicas on one database: a replica with a free slot claims the oldest
//! PENDING execution from the store (whoever it was submitted to), woken by submissions here
//! and otherwise polling; it renews the leases on what it runs and takes over the expired
//! leases of replicas that stopped renewing (their executions end FAILED `replica_lost`), and
//! stops what it runs whose cancel another replica requested (learnt as it renews). The bus's
//! signals make both quicker where it carries them: another replica's submission wakes the
//! claimer, another replica's cancel stops the run at once; the database stays the fallback.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::supervise::StopReason;
use super::{QueueMode, Runtime};
use crate::bus::Signal;
use crate::domain::{ExecutionId, Status};

/// How often a replica looks for expired leases, at most (the lease keeper).
const TAKEOVER_SCAN: Duration = Duration::from_secs(1);
/// How often a replica looks for PENDING executions submitted elsewhere, or for a slot freed.
const CLAIM_POLL: Duration = Duration::from_millis(250);

impl Runtime {
    /// Claims executions while slots are free, until the runtime shuts down or is dropped.
    pub(super) fn spawn_claimer(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(runtime) = weak.upgrade() else {
                    return;
                };
                if runtime.permits.is_closed() {
                    return;
                }
                runtime.claim_while_free().await;
                tokio::select! {
                    _ = runtime.submitted.notified() => {}
                    _ = tokio::time::sleep(CLAIM_POLL) => {}
                }
            }
        });
    }

    /// Acts on the bus's signals until the runtime is dropped: a submission anywhere wakes the
    /// claimer, a cancel requested anywhere stops the run if it is here.
    pub(super) async fn listen_to_signals(self: &Arc<Self>) {
        let Some(mut signals) = self.bus.signals().await else {
            return;
        };
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(signal) = signals.next().await {
                let Some(runtime) = weak.upgrade() else {
                    return;
                };
                match signal {
                    Signal::Submitted => runtime.submitted.notify_one(),
                    Signal::Cancel(id) => runtime.stop_cancelled(&[id]),
                }
            }
        });
    }

    async fn claim_while_free(self: &Arc<Self>) {
        let QueueMode::Shared { lease } = self.queue else {
            return;
        };
        loop {
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                return;
            };
            match self.store.claim_next(&self.replica_id, lease).await {
                Ok(Some(execution)) => {
                    self.spawn_tracked(execution, |runtime, execution, handle| async move {
                        runtime.run_claimed(execution, &handle, permit).await
                    })
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim a PENDING execution");
                    return;
                }
            }
        }
    }

    /// Renews this replica's leases every third of a lease, and looks for expired leases to take
    /// over every `TAKEOVER_SCAN` (or third of a lease, if shorter): a dead owner's executions
    /// end within that of their expiry, however long the lease.
    pub(super) fn spawn_lease_keeper(self: &Arc<Self>, lease: Duration) {
        let weak = Arc::downgrade(self);
        let scan = (lease / 3).min(TAKEOVER_SCAN);
        // Renewal on every `renew_every`-th scan: never later than a third of the lease.
        let renew_every = ((lease / 3).as_millis() / scan.as_millis().max(1)).max(1);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(scan);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for n in 0u128.. {
                tick.tick().await;
                let Some(runtime) = weak.upgrade() else {
                    return;
                };
                let replica = runtime.replica_id.as_str();
                if n % renew_every == 0 {
                    match runtime.store.renew_leases(replica, lease).await {
                        Ok(cancelled) => runtime.stop_cancelled(&cancelled),
                        Err(e) => tracing::warn!(error = %e, "cannot renew leases"),
                    }
                }
                match runtime.store.take_over_expired(replica).await {
                    Ok(ended) => runtime.took_over(&ended).await,
                    Err(e) => tracing::debug!(error = %e, "cannot look for expired leases"),
                }
            }
        });
    }

    /// Counts the executions this replica ended `replica_lost`: as takeovers, and as the
    /// FAILED ends they are (their owner, gone or fenced, records none).
    async fn took_over(&self, ended: &[ExecutionId]) {
        if let Some(series) = &self.metrics.cluster {
            series.took_over(ended.len() as u64);
        }
        for id in ended {
            tracing::warn!(execution = %id, "its replica was lost: FAILED replica_lost");
            match self.store.get_execution(id).await {
                Ok(Some(execution)) => {
                    // Series are made only for an agent still defined (perhaps elsewhere).
                    if let Ok(Some(_)) = self.store.get_agent(&execution.agent_id).await {
                        self.metrics.learn_agent(&execution.agent, &self.users);
                    }
                    self.metrics.transitioned(&execution, Status::Failed, None);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(execution = %id, error = %e, "cannot count an execution taken over")
                }
            }
        }
    }

    /// Stops, like a local cancel, the executions whose cancel another replica requested.
    fn stop_cancelled(&self, ids: &[ExecutionId]) {
        let handles = self.handles.lock().unwrap();
        for id in ids {
            if let Some(handle) = handles.get(id.as_str()) {
                tracing::info!(execution = %id, "cancel requested through another replica");
                handle.request_stop(StopReason::Cancelled);
            }
        }
    }
}
