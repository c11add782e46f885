//! Retention and the store's size: one background task per server, at start-up and then every
//! `retention_interval_secs`, deletes finished executions that ended more than `retention_days`
//! ago (batch after batch, each a short transaction, until none are left) and measures the
//! database for `agentnexus_store_size_bytes`. Replicas sharing a database may all run it: each
//! execution is deleted, and counted, by one of them.

use std::sync::Arc;
use std::time::Duration;

use super::Runtime;
use crate::domain::{EpochMs, now_ms};
use crate::store::RetentionBatch;

impl Runtime {
    /// `keep_ms`: how long finished executions are kept; `None`, forever (only the size is
    /// measured).
    pub(super) fn spawn_retention(self: &Arc<Self>, keep_ms: Option<EpochMs>, every: Duration) {
        let runtime = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(runtime) = runtime.upgrade() else {
                    return;
                };
                if runtime.permits.is_closed() {
                    return;
                }
                if let Some(keep_ms) = keep_ms {
                    runtime
                        .delete_expired(now_ms().saturating_sub(keep_ms))
                        .await;
                }
                runtime.measure_store().await;
                drop(runtime);
                tokio::time::sleep(every).await;
            }
        });
    }

    /// Deletes batches until none is left. Between batches the writers go on: on SQLite each
    /// batch is one command in the writer's queue, on PostgreSQL one short transaction.
    async fn delete_expired(&self, cutoff: EpochMs) {
        let mut total = 0;
        loop {
            let deleted = match self
                .store
                .delete_finished_before(cutoff, RetentionBatch::default())
                .await
            {
                Ok(deleted) => deleted,
                Err(e) => {
                    tracing::warn!(error = %e, deleted = total, "retention stopped; it runs again at the next interval");
                    break;
                }
            };
            if deleted == 0 {
                break;
            }
            total += deleted;
            self.metrics.store.retention_deleted(deleted);
            tokio::task::yield_now().await;
        }
        if total > 0 {
            tracing::info!(
                executions = total,
                cutoff,
                "retention deleted finished executions"
            );
        }
    }

    async fn measure_store(&self) {
        match self.store.size_bytes().await {
            Ok(bytes) => self.metrics.store.measured_size(bytes),
            Err(e) => tracing::warn!(error = %e, "cannot measure the store's size"),
        }
    }
}
