//! Status changes: `Runtime::transition` is the one way any execution's status changes, and
//! `Change` what the runtime asks for.

use std::time::Duration;

use serde_json::Value;

use crate::domain::{ExecError, Execution, ExecutionId, Status, now_ms};
use crate::store::{RunStats, Transition, TransitionOutcome};

use super::{Result, Runtime};

impl Runtime {
    /// Applies a status change — the one way any execution's status changes. The store applies
    /// it only if the execution is still in status `from`, atomically with its event, so of two
    /// racing changes exactly one wins. Returns whether this one did.
    ///
    /// The store retries passing faults itself, and records FAILED with the cause when it cannot
    /// record the change asked for (`RecordedAsFailed`); so an error here means the store is
    /// closed, or refuses even that.
    pub(super) async fn transition(
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
            .transition(change.request(&execution.execution_id, from, &self.replica_id))
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
}

/// A status change the runtime asks for, with what comes with it.
#[derive(Debug, Default)]
pub(super) struct Change {
    pub(super) to: Status,
    pub(super) output: Option<Value>,
    pub(super) error: Option<ExecError>,
    pub(super) exit_code: Option<i32>,
    pub(super) stats: Option<RunStats>,
    /// How long the agent ran, for the duration histogram.
    pub(super) ran_for: Option<Duration>,
}

impl Change {
    pub(super) fn to(status: Status) -> Change {
        Change {
            to: status,
            ..Change::default()
        }
    }

    /// The store's request for this change of execution `id` from status `from`, made by
    /// replica `replica`: the one that runs it, when the change is to RUNNING.
    pub(super) fn request(self, id: &ExecutionId, from: Status, replica: &str) -> Transition {
        let owner = (self.to == Status::Running).then(|| replica.to_owned());
        Transition {
            id: id.clone(),
            from,
            to: self.to,
            at: now_ms(),
            output: self.output,
            error: self.error,
            exit_code: self.exit_code,
            stats: self.stats,
            owner,
        }
    }

    pub(super) fn error(mut self, error: ExecError) -> Change {
        self.error = Some(error);
        self
    }
}
