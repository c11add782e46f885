//! Writes: each one transaction on a pooled connection, retried through passing faults by
//! `PostgresStore::write`, and published to the bus only once committed.
//!
//! A write whose commit was interrupted by a lost connection may have committed nonetheless.
//! For events this is checked before retrying (`committed_nonetheless`), so they are not
//! stored twice. A status change retried after such a commit finds the change made and is
//! answered `Refused` with the new status; an idempotency key per write would tell it apart.

use tokio_postgres::Transaction;
use tokio_postgres::types::Type;

use super::super::{NewEvent, NewExecution, Result, StoreError, Transition, TransitionOutcome};
use super::super::{rules, rules::Decided};
use super::{Persist, PostgresStore, leases};
use crate::domain::{Agent, Event, ExecError, ExecutionId, ProcessGroup, Status, now_ms};

pub(super) async fn put_agent(
    store: &PostgresStore,
    agent: &Agent,
    from_config: bool,
    replace: bool,
) -> Result<Result<()>> {
    let client = store.client().await?;
    let definition = serde_json::to_string(agent).expect("agents serialize");
    let sql = if replace {
        "INSERT INTO agents (id, definition, from_config, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET definition = excluded.definition,
                                        from_config = excluded.from_config"
    } else {
        "INSERT INTO agents (id, definition, from_config, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO NOTHING"
    };
    let inserted = client
        .execute_typed(
            sql,
            &[
                (&agent.id, Type::TEXT),
                (&definition, Type::TEXT),
                (&from_config, Type::BOOL),
                (&now_ms(), Type::INT8),
            ],
        )
        .await?;
    if inserted == 0 {
        return Ok(Err(StoreError::AlreadyExists(format!(
            "agent {:?}",
            agent.id
        ))));
    }
    Ok(Ok(()))
}

pub(super) async fn delete_agent(store: &PostgresStore, id: &str) -> Result<bool> {
    let client = store.client().await?;
    let deleted = client
        .execute_typed("DELETE FROM agents WHERE id = $1", &[(&id, Type::TEXT)])
        .await?;
    Ok(deleted > 0)
}

/// Inserts the execution's row and its first event (seq 1) in one transaction.
pub(super) async fn create(store: &PostgresStore, new: &NewExecution) -> Result<Event> {
    let mut client = store.client().await?;
    let tx = PostgresStore::begin(&mut client).await?;
    let agent = serde_json::to_string(&new.agent).expect("agents serialize");
    let row = tx
        .query_typed_one(
            "INSERT INTO executions
                 (id, agent_id, user_id, status, agent, price_wei, input, created_at, last_seq)
             VALUES ($1, $2, $3, 'PENDING', $4, $5, $6, $7, 1) RETURNING key",
            &[
                (&new.id.as_str(), Type::TEXT),
                (&new.agent.id, Type::TEXT),
                (&new.user_id, Type::TEXT),
                (&agent, Type::TEXT),
                (&new.agent.price_wei.to_string(), Type::TEXT),
                (&new.input.to_string(), Type::TEXT),
                (&new.created_at, Type::INT8),
            ],
        )
        .await?;
    let event = rules::status_event(Status::Pending, None, None, None, new.created_at).into();
    insert_events(&tx, row.get(0), 1, std::slice::from_ref(&event)).await?;
    tx.commit().await?;
    Ok(numbered(event, 1))
}

/// Appends events with the next seqs, then publishes them. Events that cannot be stored cut
/// the execution's stream short; events of a finished or cut-short execution are discarded.
pub(super) async fn append(
    store: &PostgresStore,
    id: &ExecutionId,
    events: Vec<NewEvent>,
) -> Result<()> {
    if events.is_empty() || store.cut_short_cause(id).is_some() {
        return Ok(());
    }
    let stored = store
        .write(Persist::UntilOutageLimit, || try_append(store, id, &events))
        .await;
    match stored {
        Ok(Some(first)) => {
            let events = events
                .into_iter()
                .zip(first..)
                .map(|(e, seq)| numbered(e, seq))
                .collect();
            store.publish(id, events, false);
        }
        Ok(None) => {}
        Err(StoreError::Fenced(why)) => {
            store.cut_short(id, ExecError::new("replica_lost", why));
        }
        Err(StoreError::Unavailable(why)) => {
            let why = format!(
                "the store could not write for more than {:?} ({why}); the events after the last stored one are lost",
                store.outage_limit
            );
            store.cut_short(id, ExecError::new("store_unavailable", why));
        }
        Err(e) => {
            tracing::error!(error = %e, "the store refused a write");
            let why = format!(
                "the store refused {} event(s) of this execution: {e}",
                events.len()
            );
            store.cut_short(id, ExecError::new("store_write_failed", why));
        }
    }
    Ok(())
}

/// Raises the execution's `last_seq` by the number of events (locking its row) and inserts
/// them under the seqs that frees; returns the first, or `None` if the execution is unknown or
/// takes no more events.
async fn try_append(
    store: &PostgresStore,
    id: &ExecutionId,
    events: &[NewEvent],
) -> Result<Option<u64>> {
    let mut client = store.client().await?;
    let tx = PostgresStore::begin(&mut client).await?;
    let count = events.len() as i64;
    let row = tx
        .query_typed_opt(
            "UPDATE executions SET last_seq = last_seq + $2 WHERE id = $1
             RETURNING key, status, last_seq, lease_epoch",
            &[(&id.as_str(), Type::TEXT), (&count, Type::INT8)],
        )
        .await?;
    let Some(row) = row else {
        tx.rollback().await?;
        tracing::warn!(execution = %id, "events for an unknown execution were discarded");
        return Ok(None);
    };
    let status: Status = row.get::<_, &str>(1).parse().map_err(StoreError::Corrupt)?;
    if let Err(fenced) = leases::fence(store, id, row.get(3)) {
        tx.rollback().await?;
        return Err(fenced);
    }
    if !rules::takes_events(status) {
        tx.rollback().await?;
        tracing::debug!(execution = %id, count, "events after the end were discarded");
        return Ok(None);
    }
    let key: i64 = row.get(0);
    let first = row.get::<_, i64>(2) - count + 1;
    insert_events(&tx, key, first, events).await?;
    match tx.commit().await {
        Ok(()) => Ok(Some(first as u64)),
        Err(e) if committed_nonetheless(store, key, first, events).await => {
            tracing::debug!(execution = %id, error = %e, "a commit whose answer was lost had committed");
            Ok(Some(first as u64))
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether events whose commit failed (the connection was lost while committing) are stored
/// nonetheless: the seqs they were given hold exactly them, since nobody else could take those
/// seqs while the row was locked. A retry would otherwise store them twice. If this cannot be
/// told (the database is still away), they count as not stored.
async fn committed_nonetheless(
    store: &PostgresStore,
    key: i64,
    first: i64,
    events: &[NewEvent],
) -> bool {
    let Some(last) = events.last() else {
        return false;
    };
    let last_seq = first + events.len() as i64 - 1;
    let Ok(client) = store.client().await else {
        return false;
    };
    let found = client
        .query_typed_opt(
            "SELECT kind, data, timestamp FROM events WHERE execution_key = $1 AND seq = $2",
            &[(&key, Type::INT8), (&last_seq, Type::INT8)],
        )
        .await;
    matches!(found, Ok(Some(row))
        if row.get::<_, &str>(0) == last.kind.as_str()
            && row.get::<_, &str>(1) == last.data.get()
            && row.get::<_, i64>(2) == last.timestamp)
}

/// Inserts events numbered from `first` in one statement (arrays unnested in order).
pub(super) async fn insert_events(
    tx: &Transaction<'_>,
    key: i64,
    first: i64,
    events: &[NewEvent],
) -> Result<()> {
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let data: Vec<&str> = events.iter().map(|e| e.data.get()).collect();
    let timestamps: Vec<i64> = events.iter().map(|e| e.timestamp).collect();
    tx.execute_typed(
        "INSERT INTO events (execution_key, seq, kind, data, timestamp)
         SELECT $1, $2 + e.n - 1, e.kind, e.data, e.timestamp
         FROM unnest($3::text[], $4::text[], $5::int8[])
              WITH ORDINALITY AS e(kind, data, timestamp, n)",
        &[
            (&key, Type::INT8),
            (&first, Type::INT8),
            (&kinds, Type::TEXT_ARRAY),
            (&data, Type::TEXT_ARRAY),
            (&timestamps, Type::INT8_ARRAY),
        ],
    )
    .await?;
    Ok(())
}

pub(super) async fn record_process(
    store: &PostgresStore,
    id: &ExecutionId,
    process: &ProcessGroup,
) -> Result<()> {
    let client = store.client().await?;
    let started = process.started_ticks as i64;
    let cgroup = process
        .cgroup
        .as_deref()
        .map(|p| p.to_string_lossy().into_owned());
    client
        .execute_typed(
            "UPDATE executions SET process_group = $2, process_started = $3, process_cgroup = $4
             WHERE id = $1",
            &[
                (&id.as_str(), Type::TEXT),
                (&process.group, Type::INT4),
                (&started, Type::INT8),
                (&cgroup, Type::TEXT),
            ],
        )
        .await?;
    Ok(())
}

/// How a status change is recorded: a change the database refuses for good is recorded one
/// step down, so that an execution never stays unfinished (as in the embedded store).
#[derive(Debug, Clone)]
enum Record {
    AsAsked,
    AsFailure(ExecError),
    RowOnly(ExecError),
}

/// What a status change did, once committed.
enum Changed {
    Applied {
        outcome: TransitionOutcome,
        event: Option<Event>,
        ended: bool,
    },
    Refused(Status),
}

pub(super) async fn transition(store: &PostgresStore, t: Transition) -> Result<TransitionOutcome> {
    let mut record = Record::AsAsked;
    loop {
        let failure = match &record {
            Record::AsAsked => rules::cut_short_end(store.cut_short_cause(&t.id).as_ref(), t.to),
            Record::AsFailure(cause) | Record::RowOnly(cause) => Some(cause.clone()),
        };
        let changed = store
            .write(Persist::UntilItSticks, || {
                try_transition(store, &t, failure.clone(), &record)
            })
            .await;
        match changed {
            Ok(Changed::Applied {
                outcome,
                event,
                ended,
            }) => {
                if ended {
                    store.cut_short.lock().unwrap().remove(&t.id);
                    leases::release(store, &t.id);
                }
                // Also without an event (recorded in the row only): followers learn of the end.
                store.publish(&t.id, event.into_iter().collect(), ended);
                return Ok(outcome);
            }
            Ok(Changed::Refused(current)) => {
                if current.is_terminal() {
                    store.cut_short.lock().unwrap().remove(&t.id);
                    leases::release(store, &t.id);
                }
                return Ok(TransitionOutcome::Refused(current));
            }
            Err(e) => {
                tracing::error!(error = %e, "the store refused a write");
                record = match record {
                    Record::AsAsked => Record::AsFailure(ExecError::new(
                        "store_write_failed",
                        format!("the store refused to record the change to {}: {e}", t.to),
                    )),
                    Record::AsFailure(cause) => Record::RowOnly(cause),
                    Record::RowOnly(_) => {
                        tracing::error!(execution = %t.id, "even the failure of an execution cannot be recorded; it stays unfinished");
                        return Err(e);
                    }
                };
            }
        }
    }
}

/// Locks the execution's row, decides the change on the status found there, and records it
/// with its status event in one transaction.
async fn try_transition(
    store: &PostgresStore,
    t: &Transition,
    failure: Option<ExecError>,
    record: &Record,
) -> Result<Changed> {
    let mut client = store.client().await?;
    let tx = PostgresStore::begin(&mut client).await?;
    let row = tx
        .query_typed_opt(
            "SELECT key, status, lease_epoch FROM executions WHERE id = $1 FOR UPDATE",
            &[(&t.id.as_str(), Type::TEXT)],
        )
        .await?;
    let Some(row) = row else {
        return Err(StoreError::Corrupt(format!("no execution {}", t.id)));
    };
    let key: i64 = row.get(0);
    let current: Status = row.get::<_, &str>(1).parse().map_err(StoreError::Corrupt)?;
    if leases::fence(store, &t.id, row.get(2)).is_err() {
        tx.rollback().await?;
        return Ok(Changed::Refused(current));
    }
    let Decided {
        to,
        output,
        error,
        outcome,
    } = match rules::decide(current, t, failure) {
        Ok(decided) => decided,
        Err(current) => {
            tx.rollback().await?;
            return Ok(Changed::Refused(current));
        }
    };
    let with_event = !matches!(record, Record::RowOnly(_));
    let stats = t.stats.clone().unwrap_or_default();
    let ended = to.is_terminal();
    let usage = rules::final_usage(to, &stats);
    let row = tx
        .query_typed_one(
            "UPDATE executions SET status = $2,
                 started_at = CASE WHEN $2 = 'RUNNING' THEN $3 ELSE started_at END,
                 finished_at = CASE WHEN $4 THEN $3 ELSE finished_at END,
                 output = $5, error_kind = $6, error_message = $7, exit_code = $8,
                 peak_memory_bytes = coalesce($9, peak_memory_bytes),
                 peak_cpu_percent = coalesce($10, peak_cpu_percent),
                 log_lines = log_lines + $11, log_lines_dropped = log_lines_dropped + $12,
                 last_seq = last_seq + $13, replica_id = coalesce($14, replica_id),
                 usage = coalesce($15, usage), error_budget = $16
             WHERE key = $1 RETURNING last_seq",
            &[
                (&key, Type::INT8),
                (&to.as_str(), Type::TEXT),
                (&t.at, Type::INT8),
                (&ended, Type::BOOL),
                (&output.as_ref().map(|o| o.to_string()), Type::TEXT),
                (&error.as_ref().map(|e| e.kind.as_str()), Type::TEXT),
                (&error.as_ref().map(|e| e.message.as_str()), Type::TEXT),
                (&t.exit_code, Type::INT4),
                (&stats.peak_memory_bytes.map(|m| m as i64), Type::INT8),
                (&stats.peak_cpu_percent, Type::FLOAT8),
                (&(stats.log_lines as i64), Type::INT8),
                (&(stats.log_lines_dropped as i64), Type::INT8),
                (&i64::from(with_event), Type::INT8),
                (&t.owner.as_deref(), Type::TEXT),
                (&usage.as_ref().map(|u| u.to_string()), Type::TEXT),
                (
                    &error.as_ref().and_then(|e| e.budget).map(|b| b.as_str()),
                    Type::TEXT,
                ),
            ],
        )
        .await?;
    let event = if with_event {
        let seq: i64 = row.get(0);
        let event = rules::status_event(to, output, error, t.exit_code, t.at).with_usage(usage);
        insert_events(&tx, key, seq, std::slice::from_ref(&event)).await?;
        Some(numbered(event, seq as u64))
    } else {
        None
    };
    tx.commit().await?;
    Ok(Changed::Applied {
        outcome,
        event,
        ended,
    })
}

pub(super) fn numbered(event: NewEvent, seq: u64) -> Event {
    Event {
        seq,
        kind: event.kind,
        data: event.data,
        timestamp: event.timestamp,
    }
}
