//! The rules every store applies, whatever its database: which status changes apply, what the
//! status event of a change says, when a stream takes events, and how an execution is
//! assembled from what was stored. A store decides only how to keep things, never what they
//! mean, so two stores cannot disagree.

use std::path::PathBuf;

use serde_json::Value;
use serde_json::value::RawValue;

use super::{NewEvent, NewExecution, Result, StoreError, Transition, TransitionOutcome};
use crate::domain::{
    Agent, EpochMs, Event, EventData, EventKind, ExecError, Execution, ExecutionId, ProcessGroup,
    Status, StatusData, Usage,
};

/// The status event that records a change to `status`; `with_usage` adds the totals.
pub fn status_event(
    status: Status,
    output: Option<Value>,
    error: Option<ExecError>,
    exit_code: Option<i32>,
    at: EpochMs,
) -> StatusEvent {
    StatusEvent {
        data: StatusData {
            status,
            output,
            error,
            exit_code,
            usage: None,
        },
        at,
    }
}

/// A status event before it is encoded.
pub struct StatusEvent {
    data: StatusData,
    at: EpochMs,
}

impl StatusEvent {
    /// Adds the usage totals (as JSON text, see `final_usage`).
    pub fn with_usage(mut self, usage: Option<String>) -> NewEvent {
        self.data.usage = usage.and_then(|u| serde_json::from_str::<Usage>(&u).ok());
        self.into()
    }
}

impl From<StatusEvent> for NewEvent {
    fn from(event: StatusEvent) -> NewEvent {
        let data = EventData::Status(event.data);
        NewEvent {
            kind: EventKind::Status,
            data: serde_json::value::to_raw_value(&data).expect("status data serializes"),
            timestamp: event.at,
        }
    }
}

/// The usage a change to `to` records, as JSON text: a run's totals, with its end only, when
/// its telemetry reported any (the final status event carries them, and the execution's record
/// keeps them; without, the execution shows `reported: false`).
pub fn final_usage(to: Status, stats: &super::RunStats) -> Option<String> {
    (to.is_terminal() && stats.usage.reported)
        .then(|| serde_json::to_string(&stats.usage).expect("usage serializes"))
}

/// Whether an execution in `status` takes more events: the final status event is the last one,
/// so the stream of a finished execution is closed. (A status event is appended before the
/// status it records is stored, so it passes.)
pub fn takes_events(status: Status) -> bool {
    !status.is_terminal()
}

/// The cause a change must be recorded with instead of the one asked for, when the stream was
/// cut short: its last events are missing, and its final status says so, whatever the run
/// reported. Changes that do not end the execution are recorded as asked.
pub fn cut_short_end(cut_short: Option<&ExecError>, to: Status) -> Option<ExecError> {
    cut_short.filter(|_| to.is_terminal()).cloned()
}

/// A change that applies, as it is to be recorded.
#[derive(Debug)]
pub struct Decided {
    pub to: Status,
    pub output: Option<Value>,
    pub error: Option<ExecError>,
    pub outcome: TransitionOutcome,
}

/// Decides a requested change of an execution that is in status `current`: it applies only if
/// the execution is still in the status the change expects and the status machine allows the
/// step; otherwise it is refused with the status found (`Err`). With a `failure`, FAILED is
/// recorded with that cause instead of the change asked for.
pub fn decide(
    current: Status,
    t: &Transition,
    failure: Option<ExecError>,
) -> Result<Decided, Status> {
    if current != t.from || !t.from.can_become(t.to) {
        return Err(current);
    }
    Ok(match failure {
        Some(cause) => Decided {
            to: Status::Failed,
            output: None,
            error: Some(cause.clone()),
            outcome: TransitionOutcome::RecordedAsFailed(cause),
        },
        None => Decided {
            to: t.to,
            output: t.output.clone(),
            error: t.error.clone(),
            outcome: TransitionOutcome::Applied,
        },
    })
}

/// A new execution as its creation stores it: PENDING, with its first event (seq 1).
pub fn new_execution(new: &NewExecution) -> Execution {
    Execution {
        execution_id: new.id.clone(),
        agent_id: new.agent.id.clone(),
        agent_name: new.agent.name.clone(),
        user_id: new.user_id.clone(),
        status: Status::Pending,
        input: new.input.clone(),
        output: None,
        error: None,
        exit_code: None,
        created_at: new.created_at,
        started_at: None,
        finished_at: None,
        duration_ms: None,
        price_wei: new.agent.price_wei,
        peak_memory_bytes: None,
        peak_cpu_percent: None,
        log_lines: 0,
        log_lines_dropped: 0,
        last_seq: 1,
        replica_id: None,
        usage: Usage::default(),
        agent: new.agent.clone(),
        process: None,
    }
}

/// An execution as a store keeps it: plain values, JSON documents as text. `into_execution`
/// gives it meaning.
#[derive(Debug)]
pub struct StoredExecution {
    pub id: String,
    pub agent_id: String,
    pub user_id: String,
    pub status: String,
    /// The agent's definition at submission, as JSON.
    pub agent: String,
    pub price_wei: String,
    pub input: String,
    pub output: Option<String>,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    pub exit_code: Option<i32>,
    pub created_at: EpochMs,
    pub started_at: Option<EpochMs>,
    pub finished_at: Option<EpochMs>,
    pub peak_memory_bytes: Option<i64>,
    pub peak_cpu_percent: Option<f64>,
    pub log_lines: i64,
    pub log_lines_dropped: i64,
    pub last_seq: i64,
    pub process_group: Option<i32>,
    pub process_started: Option<i64>,
    pub process_cgroup: Option<String>,
    pub replica_id: Option<String>,
    /// The `Usage` recorded with its end, as JSON.
    pub usage: Option<String>,
    pub error_budget: Option<String>,
}

impl StoredExecution {
    /// The execution; what cannot be read is `Corrupt`.
    pub fn into_execution(self) -> Result<Execution> {
        let agent: Agent = parse_json(&self.agent)?;
        let process = match (self.process_group, self.process_started) {
            (Some(group), Some(started)) => Some(ProcessGroup {
                group,
                started_ticks: started as u64,
                cgroup: self.process_cgroup.map(PathBuf::from),
            }),
            _ => None,
        };
        Ok(Execution {
            execution_id: ExecutionId::stored(self.id),
            agent_name: agent.name.clone(),
            agent_id: self.agent_id,
            user_id: self.user_id,
            status: self.status.parse().map_err(StoreError::Corrupt)?,
            input: parse_json(&self.input)?,
            output: self.output.as_deref().map(parse_json).transpose()?,
            error: self.error_kind.map(|kind| ExecError {
                kind,
                message: self.error_message.unwrap_or_default(),
                budget: self.error_budget.as_deref().and_then(|b| {
                    serde_json::from_value(serde_json::Value::String(b.to_owned())).ok()
                }),
            }),
            exit_code: self.exit_code,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            duration_ms: duration(self.started_at, self.finished_at),
            price_wei: self.price_wei.parse().map_err(StoreError::Corrupt)?,
            peak_memory_bytes: self.peak_memory_bytes.map(|m| m as u64),
            peak_cpu_percent: self.peak_cpu_percent,
            log_lines: self.log_lines as u64,
            log_lines_dropped: self.log_lines_dropped as u64,
            last_seq: self.last_seq as u64,
            replica_id: self.replica_id,
            usage: self
                .usage
                .as_deref()
                .map(parse_json)
                .transpose()?
                .unwrap_or_default(),
            agent,
            process,
        })
    }
}

/// An event as a store keeps it: its kind by name and its data as JSON text.
pub fn stored_event(seq: i64, kind: &str, data: String, timestamp: EpochMs) -> Result<Event> {
    Ok(Event {
        seq: seq as u64,
        kind: EventKind::parse(kind)
            .ok_or_else(|| StoreError::Corrupt(format!("event kind {kind:?}")))?,
        data: RawValue::from_string(data).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        timestamp,
    })
}

pub fn parse_json<T: serde::de::DeserializeOwned>(json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn duration(started_at: Option<EpochMs>, finished_at: Option<EpochMs>) -> Option<i64> {
    Some((finished_at? - started_at?).max(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(from: Status, to: Status) -> Transition {
        Transition {
            id: ExecutionId::generate(),
            from,
            to,
            at: 0,
            output: None,
            error: None,
            exit_code: None,
            stats: None,
            owner: None,
        }
    }

    #[test]
    fn a_change_applies_only_from_the_status_it_expects_and_along_the_machine() {
        let run = change(Status::Pending, Status::Running);
        assert_eq!(
            decide(Status::Pending, &run, None).unwrap().to,
            Status::Running
        );
        assert_eq!(
            decide(Status::Running, &run, None).unwrap_err(),
            Status::Running
        );
        let back = change(Status::Running, Status::Pending);
        assert_eq!(
            decide(Status::Running, &back, None).unwrap_err(),
            Status::Running
        );
        for terminal in [Status::Completed, Status::Failed, Status::Cancelled] {
            let again = change(terminal, Status::Failed);
            assert_eq!(decide(terminal, &again, None).unwrap_err(), terminal);
        }
    }

    #[test]
    fn a_stream_cut_short_ends_failed_with_its_cause_whatever_was_reported() {
        let cause = ExecError::new("store_unavailable", "gone");
        assert_eq!(cut_short_end(Some(&cause), Status::Running), None);
        let failure = cut_short_end(Some(&cause), Status::Completed);
        let done = change(Status::Running, Status::Completed);
        let decided = decide(Status::Running, &done, failure).unwrap();
        assert_eq!(decided.to, Status::Failed);
        assert_eq!(decided.error, Some(cause.clone()));
        assert_eq!(decided.outcome, TransitionOutcome::RecordedAsFailed(cause));
    }
}
