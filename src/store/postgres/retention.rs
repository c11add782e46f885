//! Retention on PostgreSQL: each batch is one statement, so one short transaction. Candidate
//! rows are locked `SKIP LOCKED`, so replicas running retention at once take disjoint batches
//! and each execution is deleted, and its revenue retired, exactly once. Events go with their
//! execution (`ON DELETE CASCADE`). Retired totals are updated in agent order, so two batches
//! touching the same agents cannot deadlock.

use tokio_postgres::types::Type;

use super::super::{Result, RetentionBatch};
use super::PostgresStore;
use crate::domain::EpochMs;

/// Oldest end first; within the batch, executions are taken while their events stay under the
/// bound (the first is always taken). The revenue of the COMPLETED ones is added to the
/// agent's retired total in the same statement.
const DELETE_BATCH: &str = "
WITH candidates AS (
    SELECT key, finished_at, last_seq FROM executions
    WHERE status IN ('COMPLETED', 'FAILED', 'CANCELLED') AND finished_at < $1
    ORDER BY finished_at, key LIMIT $2
    FOR UPDATE SKIP LOCKED
), bounded AS (
    SELECT key FROM (
        SELECT key,
               row_number() OVER (ORDER BY finished_at, key) AS n,
               sum(last_seq) OVER (ORDER BY finished_at, key) AS events
        FROM candidates
    ) c WHERE n = 1 OR events <= $3
), gone AS (
    DELETE FROM executions WHERE key IN (SELECT key FROM bounded)
    RETURNING agent_id, status, price_wei
), retired AS (
    INSERT INTO retired_revenue (agent_id, wei)
    SELECT agent_id, sum(price_wei::numeric) FROM gone
    WHERE status = 'COMPLETED' GROUP BY agent_id ORDER BY agent_id
    ON CONFLICT (agent_id) DO UPDATE SET wei = retired_revenue.wei + excluded.wei
)
SELECT count(*) FROM gone";

pub(super) async fn delete_finished_before(
    store: &PostgresStore,
    cutoff: EpochMs,
    batch: RetentionBatch,
) -> Result<u64> {
    let client = store.client().await?;
    let limit = i64::try_from(batch.executions).unwrap_or(i64::MAX);
    let events = i64::try_from(batch.events).unwrap_or(i64::MAX);
    let row = client
        .query_typed_one(
            DELETE_BATCH,
            &[
                (&cutoff, Type::INT8),
                (&limit, Type::INT8),
                (&events, Type::INT8),
            ],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

pub(super) async fn size_bytes(store: &PostgresStore) -> Result<u64> {
    let client = store.client().await?;
    let row = client
        .query_typed_one("SELECT pg_database_size(current_database())", &[])
        .await?;
    Ok(row.get::<_, i64>(0).max(0) as u64)
}
