//! The writer's commands, and what each does inside a transaction. Applying a command only
//! reads it: when the transaction fails, the same commands are applied again, so nothing is
//! taken out of a command (its events, its reply) until its transaction has committed
//! (`finish`).
//!
//! Here `seq` numbers are assigned: per execution, in the order its events were queued, from
//! the ledger's count, which is reloaded from the database after a transaction fails.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::super::{
    NewEvent, NewExecution, Result, RetentionBatch, StoreError, Transition, TransitionOutcome,
    rules,
};
use crate::domain::{
    Agent, EpochMs, Event, EventKind, ExecError, Execution, ExecutionId, ProcessGroup, Status,
    now_ms,
};

pub(super) type Reply<T> = oneshot::Sender<Result<T>>;

pub(super) enum Command {
    PutAgent {
        agent: Box<Agent>,
        from_config: bool,
        replace: bool,
        reply: Reply<()>,
    },
    DeleteAgent {
        id: String,
        reply: Reply<bool>,
    },
    Create {
        new: Box<NewExecution>,
        reply: Reply<Execution>,
    },
    Append {
        id: ExecutionId,
        events: Vec<NewEvent>,
    },
    RecordProcess {
        id: ExecutionId,
        process: ProcessGroup,
    },
    Transition {
        transition: Box<Transition>,
        record: Record,
        reply: Reply<TransitionOutcome>,
    },
    Flush {
        reply: Reply<()>,
    },
    /// One batch of retention (`Store::delete_finished_before`).
    DeleteFinished {
        cutoff: EpochMs,
        batch: RetentionBatch,
        reply: Reply<u64>,
    },
}

/// How a status change is recorded. The writer steps down this list when the database refuses
/// a change for good, so that an execution never stays unfinished: FAILED with the cause, and
/// as the last resort in the execution's row alone, when even its status event is refused.
#[derive(Debug, Clone)]
pub(super) enum Record {
    AsAsked,
    AsFailure(ExecError),
    RowOnly(ExecError),
}

impl Command {
    /// Answers a command that will not be applied; commands without a reply are dropped.
    pub(super) fn answer_error(self, error: StoreError) {
        match self {
            Command::PutAgent { reply, .. } | Command::Flush { reply } => {
                let _ = reply.send(Err(error));
            }
            Command::DeleteAgent { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Command::Create { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Command::Transition { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Command::DeleteFinished { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Command::Append { .. } | Command::RecordProcess { .. } => {}
        }
    }
}

/// What applying a command produced, held until its transaction commits.
pub(super) enum Applied {
    /// `Err(AlreadyExists)` is an answer, not a failed write.
    PutAgent(Result<()>),
    DeleteAgent(bool),
    Create(Box<Execution>, Event),
    /// The seq of the first event; `None` when the events were discarded.
    Append(Option<u64>),
    /// The outcome, the status event, and whether the execution ended.
    Transition(TransitionOutcome, Option<Event>, bool),
    DeleteFinished(u64),
    Nothing,
}

/// What the writer remembers of an execution it is appending to.
struct Active {
    /// The execution's row.
    key: i64,
    status: Status,
    last_seq: u64,
    dirty: bool,
}

/// The writer's memory of executions: the committed state of those it writes to (a cache of
/// the database, dropped when a transaction fails), and the streams it cut short (its own
/// decisions, kept until their final status is committed).
#[derive(Default)]
pub(super) struct Ledger {
    active: HashMap<ExecutionId, Active>,
    cut_short: HashMap<ExecutionId, ExecError>,
}

impl Ledger {
    /// After a failed transaction: what is cached may be ahead of the database.
    pub(super) fn forget_uncommitted(&mut self) {
        self.active.clear();
    }

    /// Marks a stream cut short; returns false if it already was.
    pub(super) fn cut_short(&mut self, id: &ExecutionId, error: ExecError) -> bool {
        if self.cut_short.contains_key(id) {
            return false;
        }
        self.cut_short.insert(id.clone(), error);
        true
    }

    /// An execution deleted by retention (finished, so nothing of it is pending here).
    pub(super) fn forget(&mut self, id: &str) {
        self.active.remove(id);
        self.cut_short.remove(id);
    }

    /// After the final status of `id` is committed.
    pub(super) fn finished(&mut self, id: &ExecutionId) {
        self.active.remove(id);
        self.cut_short.remove(id);
    }

    /// Records each execution's last seq, in the transaction that assigned it.
    pub(super) fn write_last_seqs(&mut self, conn: &Connection) -> Result<()> {
        let mut stmt = conn.prepare_cached("UPDATE executions SET last_seq = ?2 WHERE key = ?1")?;
        for active in self.active.values_mut().filter(|a| a.dirty) {
            stmt.execute(params![active.key, active.last_seq as i64])?;
            active.dirty = false;
        }
        Ok(())
    }

    fn load<'a>(
        &'a mut self,
        conn: &Connection,
        id: &ExecutionId,
    ) -> Result<Option<&'a mut Active>> {
        if !self.active.contains_key(id) {
            let row = conn
                .prepare_cached("SELECT key, status, last_seq FROM executions WHERE id = ?1")?
                .query_row([id.as_str()], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                })
                .optional()?;
            let Some((key, status, last_seq)) = row else {
                return Ok(None);
            };
            self.active.insert(
                id.clone(),
                Active {
                    key,
                    status: status.parse().map_err(StoreError::Corrupt)?,
                    last_seq: last_seq as u64,
                    dirty: false,
                },
            );
        }
        Ok(self.active.get_mut(id))
    }
}

/// Applies one command in the open transaction `conn`. An error fails the whole transaction.
pub(super) fn apply(conn: &Connection, ledger: &mut Ledger, command: &Command) -> Result<Applied> {
    Ok(match command {
        Command::PutAgent {
            agent,
            from_config,
            replace,
            ..
        } => Applied::PutAgent(put_agent(conn, agent, *from_config, *replace)?),
        Command::DeleteAgent { id, .. } => {
            Applied::DeleteAgent(conn.execute("DELETE FROM agents WHERE id = ?1", [id])? > 0)
        }
        Command::Create { new, .. } => {
            let (execution, event) = create(conn, ledger, new)?;
            Applied::Create(Box::new(execution), event)
        }
        Command::Append { id, .. } if ledger.cut_short.contains_key(id) => Applied::Append(None),
        Command::Append { id, events } => {
            let events = events.iter().map(|e| (e.kind, e.data.get(), e.timestamp));
            Applied::Append(append(conn, ledger, id, events)?)
        }
        Command::Transition {
            transition, record, ..
        } => transition_to(conn, ledger, transition, record)?,
        Command::RecordProcess { id, process } => {
            conn.prepare_cached(
                "UPDATE executions SET process_group = ?2, process_started = ?3, \
                 process_cgroup = ?4 WHERE id = ?1",
            )?
            .execute(params![
                id.as_str(),
                process.group,
                process.started_ticks as i64,
                process
                    .cgroup
                    .as_deref()
                    .map(|p| p.to_string_lossy().into_owned()),
            ])?;
            Applied::Nothing
        }
        Command::Flush { .. } => Applied::Nothing,
        Command::DeleteFinished { cutoff, batch, .. } => Applied::DeleteFinished(
            super::retention::delete_finished_before(conn, ledger, *cutoff, *batch)?,
        ),
    })
}

/// Events committed in one transaction, to be published: per execution in seq order, and
/// which executions ended.
#[derive(Default)]
pub(super) struct Committed {
    pub events: HashMap<ExecutionId, Vec<Event>>,
    pub finished: Vec<ExecutionId>,
}

/// Sends a committed command's reply and takes its events for publication.
pub(super) fn finish(command: Command, applied: Applied, committed: &mut Committed) {
    match (command, applied) {
        (Command::PutAgent { reply, .. }, Applied::PutAgent(result)) => {
            let _ = reply.send(result);
        }
        (Command::DeleteAgent { reply, .. }, Applied::DeleteAgent(deleted)) => {
            let _ = reply.send(Ok(deleted));
        }
        (Command::Create { reply, .. }, Applied::Create(execution, event)) => {
            committed
                .events
                .entry(execution.execution_id.clone())
                .or_default()
                .push(event);
            let _ = reply.send(Ok(*execution));
        }
        (Command::Append { id, events }, Applied::Append(Some(first))) => {
            let published = committed.events.entry(id).or_default();
            published.extend(events.into_iter().zip(first..).map(|(e, seq)| Event {
                seq,
                kind: e.kind,
                data: e.data,
                timestamp: e.timestamp,
            }));
        }
        (
            Command::Transition {
                transition, reply, ..
            },
            Applied::Transition(outcome, event, ended),
        ) => {
            // Also without an event (recorded in the row only): followers learn of the end.
            let published = committed.events.entry(transition.id.clone()).or_default();
            published.extend(event);
            if ended {
                committed.finished.push(transition.id);
            }
            let _ = reply.send(Ok(outcome));
        }
        (Command::Flush { reply }, _) => {
            let _ = reply.send(Ok(()));
        }
        (Command::DeleteFinished { reply, .. }, Applied::DeleteFinished(deleted)) => {
            let _ = reply.send(Ok(deleted));
        }
        _ => {}
    }
}

fn put_agent(
    conn: &Connection,
    agent: &Agent,
    from_config: bool,
    replace: bool,
) -> Result<Result<()>> {
    let exists = conn
        .query_row(
            "SELECT 1 FROM agents WHERE id = ?1",
            [&agent.id],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if exists && !replace {
        return Ok(Err(StoreError::AlreadyExists(format!(
            "agent {:?}",
            agent.id
        ))));
    }
    let definition = serde_json::to_string(agent).expect("agents serialize");
    conn.execute(
        "INSERT INTO agents (id, definition, from_config, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET definition = excluded.definition,
                                        from_config = excluded.from_config",
        params![agent.id, definition, from_config, now_ms()],
    )?;
    Ok(Ok(()))
}

fn create(
    conn: &Connection,
    ledger: &mut Ledger,
    new: &NewExecution,
) -> Result<(Execution, Event)> {
    let agent_json = serde_json::to_string(&new.agent).expect("agents serialize");
    conn.prepare_cached(
        "INSERT INTO executions (id, agent_id, user_id, status, agent, price_wei, input, created_at)
         VALUES (?1, ?2, ?3, 'PENDING', ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        new.id.as_str(),
        new.agent.id,
        new.user_id,
        agent_json,
        new.agent.price_wei.to_string(),
        new.input.to_string(),
        new.created_at
    ])?;
    let key = conn.last_insert_rowid();
    ledger.active.insert(
        new.id.clone(),
        Active {
            key,
            status: Status::Pending,
            last_seq: 0,
            dirty: false,
        },
    );
    let event = rules::status_event(Status::Pending, None, None, None, new.created_at).into();
    let event = append_one(conn, ledger, &new.id, event)?.expect("a new execution takes events");
    let execution = rules::new_execution(new);
    Ok((execution, event))
}

/// Inserts events with the next seqs; returns the first one, or `None` if the execution is
/// unknown or finished (its events are discarded).
fn append<'a>(
    conn: &Connection,
    ledger: &mut Ledger,
    id: &ExecutionId,
    events: impl ExactSizeIterator<Item = (EventKind, &'a str, i64)>,
) -> Result<Option<u64>> {
    let Some(state) = ledger.load(conn, id)? else {
        tracing::warn!(execution = %id, "events for an unknown execution were discarded");
        return Ok(None);
    };
    if !rules::takes_events(state.status) {
        tracing::debug!(
            execution = %id,
            count = events.len(),
            "events after the end were discarded"
        );
        return Ok(None);
    }
    let mut insert = conn.prepare_cached(
        "INSERT INTO events (execution_key, seq, kind, data, timestamp) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let first = state.last_seq + 1;
    for (kind, data, timestamp) in events {
        // Counted only once the insert succeeded; a failed one fails the transaction anyway.
        insert.execute(params![
            state.key,
            (state.last_seq + 1) as i64,
            kind.as_str(),
            data,
            timestamp
        ])?;
        state.last_seq += 1;
        state.dirty = true;
    }
    Ok(Some(first))
}

/// Appends one event this module made (a status event), returning it with its seq.
fn append_one(
    conn: &Connection,
    ledger: &mut Ledger,
    id: &ExecutionId,
    event: NewEvent,
) -> Result<Option<Event>> {
    let one = std::iter::once((event.kind, event.data.get(), event.timestamp));
    Ok(append(conn, ledger, id, one)?.map(|seq| Event {
        seq,
        kind: event.kind,
        data: event.data,
        timestamp: event.timestamp,
    }))
}

fn transition_to(
    conn: &Connection,
    ledger: &mut Ledger,
    t: &Transition,
    record: &Record,
) -> Result<Applied> {
    let Some(state) = ledger.load(conn, &t.id)? else {
        return Err(StoreError::Corrupt(format!("no execution {}", t.id)));
    };
    let (key, current) = (state.key, state.status);
    let failure = match record {
        Record::AsAsked => rules::cut_short_end(ledger.cut_short.get(&t.id), t.to),
        Record::AsFailure(cause) | Record::RowOnly(cause) => Some(cause.clone()),
    };
    let rules::Decided {
        to,
        output,
        error,
        outcome,
    } = match rules::decide(current, t, failure) {
        Ok(decided) => decided,
        Err(current) => {
            if current.is_terminal() {
                ledger.cut_short.remove(&t.id);
            }
            return Ok(Applied::Transition(
                TransitionOutcome::Refused(current),
                None,
                false,
            ));
        }
    };
    let stats = t.stats.clone().unwrap_or_default();
    let terminal = to.is_terminal();
    let usage = rules::final_usage(to, &stats);
    conn.prepare_cached(
        "UPDATE executions SET status = ?2,
             started_at = CASE WHEN ?2 = 'RUNNING' THEN ?3 ELSE started_at END,
             finished_at = CASE WHEN ?4 THEN ?3 ELSE finished_at END,
             output = ?5, error_kind = ?6, error_message = ?7, exit_code = ?8,
             peak_memory_bytes = coalesce(?9, peak_memory_bytes),
             peak_cpu_percent = coalesce(?10, peak_cpu_percent),
             log_lines = log_lines + ?11, log_lines_dropped = log_lines_dropped + ?12,
             replica_id = coalesce(?13, replica_id),
             usage = coalesce(?14, usage), error_budget = ?15
         WHERE key = ?1",
    )?
    .execute(params![
        key,
        to.as_str(),
        t.at,
        terminal,
        output.as_ref().map(|o| o.to_string()),
        error.as_ref().map(|e| &e.kind),
        error.as_ref().map(|e| &e.message),
        t.exit_code,
        stats.peak_memory_bytes.map(|m| m as i64),
        stats.peak_cpu_percent,
        stats.log_lines as i64,
        stats.log_lines_dropped as i64,
        t.owner.as_deref(),
        usage.as_ref().map(|u| u.to_string()),
        error.as_ref().and_then(|e| e.budget).map(|b| b.as_str()),
    ])?;
    let event = match record {
        Record::RowOnly(_) => None,
        _ => {
            let event = rules::status_event(to, output, error, t.exit_code, t.at).with_usage(usage);
            append_one(conn, ledger, &t.id, event)?
        }
    };
    let state = ledger.active.get_mut(&t.id).expect("loaded above");
    state.status = to;
    Ok(Applied::Transition(outcome, event, terminal))
}
