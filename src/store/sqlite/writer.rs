//! The writer thread: takes queued commands in batches and commits each batch in one
//! transaction (group commit), then answers and publishes. A batch is held until it commits:
//!
//! - a passing fault (busy or locked database, full disk, I/O error; `is_transient`) is
//!   retried with backoff. Meanwhile nothing more is taken from the bounded queue, so the
//!   agents' pipes wait (backpressure) and memory stays bounded; readiness reports the fault.
//! - a fault that outlasts the outage limit gives up on events, not on ends: the events held
//!   and queued are dropped, their executions' streams are cut short (they end FAILED
//!   `store_unavailable` once the store is back, right after their last stored event), other
//!   commands that expect an answer get `Unavailable`, and status changes are kept and retried
//!   until they stick.
//! - a permanent failure (a constraint, corrupt data, a bug) is isolated by committing the
//!   batch's commands one by one: the one that fails alone is refused (its execution's stream
//!   is cut short with `store_write_failed`, or its caller gets the error); the rest commit.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{mpsc, watch};

use super::super::{LostStream, Result, StoreError, WriteHealth};
use super::commands::{self, Applied, Command, Committed, Ledger, Record};
use crate::bus::Bus;
use crate::domain::{ExecError, ExecutionId, now_ms};

/// Upper bound of commands per transaction, so one commit never grows without limit.
const MAX_BATCH: usize = 4096;
/// Waits between attempts while a fault lasts: doubling from the first to the last.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// While giving up on events, how often the queue is drained between attempts.
const DRAIN_PERIOD: Duration = Duration::from_millis(20);

pub(super) struct Writer {
    pub conn: Connection,
    pub bus: Arc<dyn Bus>,
    pub ledger: Ledger,
    pub lost: mpsc::UnboundedSender<LostStream>,
    pub health: watch::Sender<WriteHealth>,
    pub outage_limit: Duration,
}

/// A passing fault that has lasted since `since`.
struct Outage {
    since: Instant,
    attempts: u32,
    last_error: String,
    gave_up: bool,
}

/// Commands taken from the queue and not yet committed, oldest first.
#[derive(Default)]
struct Held {
    commands: VecDeque<Command>,
    /// How many of the first commands are to be committed one at a time, to find which one a
    /// permanent failure comes from.
    isolating: usize,
}

impl Writer {
    pub(super) fn run(mut self, mut queue: mpsc::Receiver<Command>) {
        let mut held = Held::default();
        let mut fault: Option<Outage> = None;
        let mut received = Vec::with_capacity(MAX_BATCH);
        loop {
            if held.commands.is_empty() {
                if queue.blocking_recv_many(&mut received, MAX_BATCH) == 0 {
                    return;
                }
                held.commands.extend(received.drain(..));
            }
            let size = if held.isolating > 0 {
                1
            } else {
                held.commands.len()
            };
            match self.commit(&mut held.commands, size) {
                Ok(()) => {
                    held.isolating = held.isolating.saturating_sub(size);
                    if let Some(ended) = fault.take() {
                        self.recovered(&ended);
                    }
                }
                Err(e) if e.is_transient() => {
                    let outage = self.failed(&mut fault, &e);
                    let pause = backoff(outage.attempts);
                    if !outage.gave_up && outage.since.elapsed() >= self.outage_limit {
                        outage.gave_up = true;
                        let last_error = outage.last_error.clone();
                        self.give_up(&mut held, &last_error);
                    }
                    if outage.gave_up {
                        let last_error = outage.last_error.clone();
                        self.triage_while(&mut queue, &mut held, &last_error, pause);
                    } else {
                        std::thread::sleep(pause);
                    }
                }
                Err(e) if size == 1 => {
                    let command = held.commands.pop_front().expect("one was applied");
                    held.isolating = held.isolating.saturating_sub(1);
                    self.refuse(command, e, &mut held);
                }
                Err(e) => {
                    tracing::error!(error = %e, commands = size, "a store write failed for good; retrying its commands one by one to find the one at fault");
                    held.isolating = size;
                }
            }
        }
    }

    /// Applies the first `size` held commands in one transaction. Once it has committed, they
    /// are answered and their events published; if it failed, they stay held.
    fn commit(&mut self, held: &mut VecDeque<Command>, size: usize) -> Result<()> {
        let applied = match self.apply(held.range(..size)) {
            Ok(applied) => applied,
            Err(e) => {
                self.ledger.forget_uncommitted();
                return Err(e);
            }
        };
        let mut committed = Committed::default();
        for (command, applied) in held.drain(..size).zip(applied) {
            commands::finish(command, applied, &mut committed);
        }
        for id in &committed.finished {
            self.ledger.finished(id);
        }
        for (id, events) in committed.events {
            let finished = committed.finished.contains(&id);
            self.bus.publish(&id, events, finished);
        }
        Ok(())
    }

    fn apply<'a>(&mut self, commands: impl Iterator<Item = &'a Command>) -> Result<Vec<Applied>> {
        // IMMEDIATE: the write lock is taken at the start, so a busy database fails here, before
        // anything is applied.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut applied = Vec::new();
        for command in commands {
            applied.push(commands::apply(&tx, &mut self.ledger, command)?);
        }
        self.ledger.write_last_seqs(&tx)?;
        tx.commit()?;
        Ok(applied)
    }

    /// Notes a failed attempt, reporting the fault when it begins.
    fn failed<'o>(&self, outage: &'o mut Option<Outage>, error: &StoreError) -> &'o mut Outage {
        let outage = outage.get_or_insert_with(|| {
            tracing::error!(error = %error, limit = ?self.outage_limit, "the store cannot write; holding its writes and retrying");
            self.health.send_replace(WriteHealth::Failing {
                since: now_ms(),
                error: error.to_string(),
            });
            Outage {
                since: Instant::now(),
                attempts: 0,
                last_error: String::new(),
                gave_up: false,
            }
        });
        outage.attempts = outage.attempts.saturating_add(1);
        outage.last_error = error.to_string();
        outage
    }

    fn recovered(&self, outage: &Outage) {
        tracing::info!(
            after = ?outage.since.elapsed(),
            attempts = outage.attempts,
            "the store writes again"
        );
        self.health.send_replace(WriteHealth::Writing);
    }

    /// The fault outlasted the limit: drop the held events (cutting their streams short) and
    /// answer what expects an answer; keep status changes and process records.
    fn give_up(&mut self, held: &mut Held, last_error: &str) {
        tracing::error!(limit = ?self.outage_limit, error = %last_error, "the store could not write for longer than its outage limit; the executions writing now end FAILED (store_unavailable) once it is back");
        held.isolating = 0;
        for command in std::mem::take(&mut held.commands) {
            self.triage(command, held, last_error);
        }
    }

    /// What becomes of a command while the store is given up on.
    fn triage(&mut self, command: Command, held: &mut Held, last_error: &str) {
        match command {
            Command::Append { id, .. } => {
                let why = format!(
                    "the store could not write for more than {:?} ({last_error}); the events after the last stored one are lost",
                    self.outage_limit
                );
                self.cut_short(&id, ExecError::new("store_unavailable", why));
            }
            Command::Transition { .. } | Command::RecordProcess { .. } => {
                held.commands.push_back(command);
            }
            other => other.answer_error(StoreError::Unavailable(last_error.to_owned())),
        }
    }

    /// Waits `pause` before the next attempt, triaging what arrives meanwhile, so nobody
    /// waits on a store that has been given up on.
    fn triage_while(
        &mut self,
        queue: &mut mpsc::Receiver<Command>,
        held: &mut Held,
        last_error: &str,
        pause: Duration,
    ) {
        let until = Instant::now() + pause;
        loop {
            while let Ok(command) = queue.try_recv() {
                self.triage(command, held, last_error);
            }
            let now = Instant::now();
            if now >= until {
                return;
            }
            std::thread::sleep((until - now).min(DRAIN_PERIOD));
        }
    }

    /// A command that fails alone, for good. A status change is tried again one step down
    /// (`Record`), first of all the held commands.
    fn refuse(&mut self, command: Command, error: StoreError, held: &mut Held) {
        tracing::error!(error = %error, "the store refused a write");
        match command {
            Command::Append { id, events } => {
                let why = format!(
                    "the store refused {} event(s) of this execution: {error}",
                    events.len()
                );
                self.cut_short(&id, ExecError::new("store_write_failed", why));
            }
            Command::RecordProcess { id, .. } => {
                tracing::warn!(execution = %id, "the process group of an execution was not recorded");
            }
            Command::Transition {
                transition,
                record,
                reply,
            } => {
                let next = match record {
                    Record::AsAsked => Record::AsFailure(ExecError::new(
                        "store_write_failed",
                        format!(
                            "the store refused to record the change to {}: {error}",
                            transition.to
                        ),
                    )),
                    Record::AsFailure(cause) => Record::RowOnly(cause),
                    Record::RowOnly(_) => {
                        tracing::error!(
                            execution = %transition.id,
                            "even the failure of an execution cannot be recorded; it stays unfinished"
                        );
                        let _ = reply.send(Err(error));
                        return;
                    }
                };
                held.commands.push_front(Command::Transition {
                    transition,
                    record: next,
                    reply,
                });
                held.isolating += 1;
            }
            other => other.answer_error(error),
        }
    }

    fn cut_short(&mut self, id: &ExecutionId, error: ExecError) {
        if self.ledger.cut_short(id, error.clone()) {
            tracing::error!(execution = %id, cause = %error.kind, message = %error.message, "an execution's stream is cut short");
            let id = id.clone();
            let _ = self.lost.send(LostStream { id, error });
        }
    }
}

fn backoff(attempts: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << attempts.saturating_sub(1).min(10))
        .min(MAX_BACKOFF)
}
