//! Leases: which replica runs an execution. A replica claims the oldest PENDING execution
//! (`FOR UPDATE SKIP LOCKED`, so replicas never claim the same one) and marks it RUNNING in the
//! same transaction, taking its lease: owner, epoch + 1, expiry on the database's clock. It
//! renews its leases; one it cannot renew in time is lost: its stream is cut short (the runtime
//! stops the agent) and its writes are refused from then on. Every write of an owner is checked
//! against the epoch it claimed, under the row lock (`fence`), so once another replica has
//! taken the lease the old owner cannot write. Expired leases are taken over (epoch + 1) and
//! their executions end FAILED `replica_lost`; they are not run again.

use std::time::{Duration, Instant};

use tokio_postgres::types::Type;

use super::super::{Result, StoreError, rules};
use super::reads::{EXECUTION_COLUMN_COUNT, EXECUTION_COLUMNS, read_execution};
use super::writes::{insert_events, numbered};
use super::{Persist, PostgresStore};
use crate::domain::{ExecError, Execution, ExecutionId, Status, now_ms};

/// Now on the database's clock, in milliseconds: every replica compares expiries on one clock.
pub(super) const DB_NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";
/// Expired leases taken over in one transaction.
const TAKEOVER_BATCH: i64 = 32;

/// A lease this replica took: the epoch its writes are checked against.
#[derive(Debug, Clone, Copy)]
pub(super) struct Held {
    pub(super) epoch: i64,
    /// Lost (not renewed in time, or taken over): every write for it is refused.
    pub(super) lost: bool,
}

/// Whether a write for `id`, whose row (locked) has epoch `stored_epoch`, may go ahead: yes
/// unless this replica holds a lease on it that was lost or has moved on. Each refusal is
/// counted (`Store::fenced_writes`).
pub(super) fn fence(store: &PostgresStore, id: &ExecutionId, stored_epoch: i64) -> Result<()> {
    match store.leases.lock().unwrap().get(id) {
        Some(held) if held.lost || held.epoch != stored_epoch => {
            store
                .fenced_writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(StoreError::Fenced(format!(
                "execution {id}: this replica's lease (epoch {}) is lost",
                held.epoch
            )))
        }
        _ => Ok(()),
    }
}

pub(super) async fn claim_next(
    store: &PostgresStore,
    replica: &str,
    lease: Duration,
) -> Result<Option<Execution>> {
    let claimed = store
        .write(Persist::UntilOutageLimit, || {
            try_claim(store, replica, lease)
        })
        .await?;
    let Some((execution, epoch, event)) = claimed else {
        return Ok(None);
    };
    let id = execution.execution_id.clone();
    store
        .leases
        .lock()
        .unwrap()
        .insert(id.clone(), Held { epoch, lost: false });
    store.publish(&id, vec![event], false);
    Ok(Some(execution))
}

async fn try_claim(
    store: &PostgresStore,
    replica: &str,
    lease: Duration,
) -> Result<Option<(Execution, i64, crate::domain::Event)>> {
    let mut client = store.client().await?;
    let tx = PostgresStore::begin(&mut client).await?;
    let now = now_ms();
    let lease_ms = lease.as_millis() as i64;
    let sql = format!(
        "UPDATE executions SET status = 'RUNNING', started_at = $3, replica_id = $1,
             lease_epoch = lease_epoch + 1, lease_expires_at = {DB_NOW_MS} + $2,
             last_seq = last_seq + 1
         WHERE key = (SELECT key FROM executions WHERE status = 'PENDING'
                      ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING {EXECUTION_COLUMNS}, key, lease_epoch"
    );
    let row = tx
        .query_typed_opt(
            &sql,
            &[
                (&replica, Type::TEXT),
                (&lease_ms, Type::INT8),
                (&now, Type::INT8),
            ],
        )
        .await?;
    let Some(row) = row else {
        tx.rollback().await?;
        return Ok(None);
    };
    let execution = read_execution(&row)?;
    let key: i64 = row.get(EXECUTION_COLUMN_COUNT);
    let epoch: i64 = row.get(EXECUTION_COLUMN_COUNT + 1);
    let seq = execution.last_seq as i64;
    let event = rules::status_event(Status::Running, None, None, None, now).into();
    insert_events(&tx, key, seq, std::slice::from_ref(&event)).await?;
    tx.commit().await?;
    Ok(Some((execution, epoch, numbered(event, seq as u64))))
}

/// Renews this replica's leases. Those it no longer holds (taken over), and all of them when
/// the last renewal is older than a lease, are lost: cut short, their writes refused. Returns
/// the renewed ones whose cancel was requested.
pub(super) async fn renew(
    store: &PostgresStore,
    replica: &str,
    lease: Duration,
) -> Result<Vec<ExecutionId>> {
    let held: Vec<(ExecutionId, i64)> = store
        .leases
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, h)| !h.lost)
        .map(|(id, h)| (id.clone(), h.epoch))
        .collect();
    let last = *store.last_renewal.lock().unwrap();
    let mut cancel = Vec::new();
    if last.elapsed() >= lease {
        // Too late: another replica may have taken them over already.
        for (id, _) in &held {
            lose(store, id, "this replica could not renew its lease in time");
        }
    } else if !held.is_empty() {
        let renewed = try_renew(store, replica, lease, &held).await?;
        for (id, epoch) in &held {
            let Some(lease) = renewed
                .iter()
                .find(|r| r.id == id.as_str() && r.epoch == *epoch)
            else {
                lose(
                    store,
                    id,
                    "another replica took over this execution's lease",
                );
                continue;
            };
            if lease.cancel_requested {
                cancel.push(id.clone());
            }
        }
    }
    *store.last_renewal.lock().unwrap() = Instant::now();
    Ok(cancel)
}

/// A lease as renewed.
struct Renewed {
    id: String,
    epoch: i64,
    cancel_requested: bool,
}

async fn try_renew(
    store: &PostgresStore,
    replica: &str,
    lease: Duration,
    held: &[(ExecutionId, i64)],
) -> Result<Vec<Renewed>> {
    let client = store.client().await?;
    let ids: Vec<&str> = held.iter().map(|(id, _)| id.as_str()).collect();
    let lease_ms = lease.as_millis() as i64;
    let sql = format!(
        "UPDATE executions SET lease_expires_at = {DB_NOW_MS} + $2
         WHERE id = ANY($3) AND replica_id = $1 AND status = 'RUNNING'
           AND lease_expires_at > {DB_NOW_MS}
         RETURNING id, lease_epoch, cancel_requested"
    );
    let rows = client
        .query_typed(
            &sql,
            &[
                (&replica, Type::TEXT),
                (&lease_ms, Type::INT8),
                (&ids, Type::TEXT_ARRAY),
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Renewed {
            id: r.get(0),
            epoch: r.get(1),
            cancel_requested: r.get(2),
        })
        .collect())
}

/// Marks a RUNNING execution's cancel as requested; its owner sees it at its next renewal.
pub(super) async fn request_cancel(store: &PostgresStore, id: &ExecutionId) -> Result<()> {
    let client = store.client().await?;
    client
        .query_typed(
            "UPDATE executions SET cancel_requested = true WHERE id = $1 AND status = 'RUNNING'",
            &[(&id.as_str(), Type::TEXT)],
        )
        .await?;
    Ok(())
}

fn lose(store: &PostgresStore, id: &ExecutionId, why: &str) {
    if let Some(held) = store.leases.lock().unwrap().get_mut(id) {
        held.lost = true;
    }
    store.cut_short(id, ExecError::new("replica_lost", why));
}

/// Forgets the lease of an execution that has ended.
pub(super) fn release(store: &PostgresStore, id: &ExecutionId) {
    store.leases.lock().unwrap().remove(id);
}

/// Takes over expired leases (epoch + 1) and ends their executions FAILED `replica_lost` with
/// the final status event; returns them.
pub(super) async fn take_over_expired(
    store: &PostgresStore,
    replica: &str,
) -> Result<Vec<ExecutionId>> {
    let mut client = store.client().await?;
    let tx = PostgresStore::begin(&mut client).await?;
    let sql = format!(
        "SELECT key, id, replica_id FROM executions
         WHERE status = 'RUNNING' AND lease_expires_at < {DB_NOW_MS}
         ORDER BY key LIMIT $1 FOR UPDATE SKIP LOCKED"
    );
    let expired = tx
        .query_typed(&sql, &[(&TAKEOVER_BATCH, Type::INT8)])
        .await?;
    let mut ended = Vec::new();
    for row in expired {
        let key: i64 = row.get(0);
        let id = ExecutionId::stored(row.get::<_, String>(1));
        let owner: Option<String> = row.get(2);
        let now = now_ms();
        let error = ExecError::new(
            "replica_lost",
            format!(
                "replica {} stopped renewing its lease; the agent is not run again",
                owner.as_deref().unwrap_or("?")
            ),
        );
        let seq: i64 = tx
            .query_typed_one(
                "UPDATE executions SET status = 'FAILED', finished_at = $2, error_kind = $3,
                     error_message = $4, replica_id = $5, lease_epoch = lease_epoch + 1,
                     lease_expires_at = NULL, last_seq = last_seq + 1
                 WHERE key = $1 RETURNING last_seq",
                &[
                    (&key, Type::INT8),
                    (&now, Type::INT8),
                    (&error.kind.as_str(), Type::TEXT),
                    (&error.message.as_str(), Type::TEXT),
                    (&replica, Type::TEXT),
                ],
            )
            .await?
            .get(0);
        let event = rules::status_event(Status::Failed, None, Some(error), None, now).into();
        insert_events(&tx, key, seq, std::slice::from_ref(&event)).await?;
        ended.push((id, numbered(event, seq as u64)));
    }
    tx.commit().await?;
    Ok(ended
        .into_iter()
        .map(|(id, event)| {
            tracing::warn!(execution = %id, "took over an expired lease: FAILED replica_lost");
            store.publish(&id, vec![event], true);
            id
        })
        .collect())
}
