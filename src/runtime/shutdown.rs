//! The orderly stop: no new work, running executions get a grace period, then are stopped, and
//! everything they wrote is committed before the runtime returns.

use std::time::Duration;

use super::Runtime;
use super::supervise::StopReason;

impl Runtime {
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
        self.leave_cluster().await;
    }
}
