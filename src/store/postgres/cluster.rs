//! The cluster's own rows: a heartbeat per replica (those fresher than a lease are the
//! replicas seen) and the facts lease, one row that one replica at a time holds, taken over by
//! any other once it expires, on the database's clock. Its holder alone exports the facts that
//! belong to the whole cluster, read here in one go (`facts`).

use std::time::Duration;

use tokio_postgres::types::Type;

use super::super::rules::parse_json;
use super::super::{ClusterBeat, ClusterFacts, Result, StoreError};
use super::PostgresStore;
use super::leases::DB_NOW_MS;
use crate::domain::{Agent, Wei};

/// Heartbeats older than this many leases are deleted: a replica that restarts under a new id
/// leaves its old row behind.
const FORGET_AFTER_LEASES: i64 = 10;

/// Records `replica`'s heartbeat, takes or renews the facts lease for `lease` if it is free,
/// expired or already this replica's, and counts the replicas seen within a lease; one
/// transaction.
pub(super) async fn heartbeat(
    store: &PostgresStore,
    replica: &str,
    lease: Duration,
) -> Result<ClusterBeat> {
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    tx.execute_typed(
        &format!(
            "INSERT INTO cluster_replicas (replica_id, seen_at) VALUES ($1, {DB_NOW_MS})
             ON CONFLICT (replica_id) DO UPDATE SET seen_at = excluded.seen_at"
        ),
        &[(&replica, Type::TEXT)],
    )
    .await?;
    tx.execute_typed(
        &format!("DELETE FROM cluster_replicas WHERE seen_at < {DB_NOW_MS} - $1 * $2"),
        &[(&lease_ms, Type::INT8), (&FORGET_AFTER_LEASES, Type::INT8)],
    )
    .await?;
    let holder = tx
        .query_typed_opt(
            &format!(
                "UPDATE cluster_facts_lease SET replica_id = $1, expires_at = {DB_NOW_MS} + $2
                 WHERE id = 1 AND (replica_id = $1 OR expires_at < {DB_NOW_MS})
                 RETURNING replica_id"
            ),
            &[(&replica, Type::TEXT), (&lease_ms, Type::INT8)],
        )
        .await?;
    let seen: i64 = tx
        .query_typed_one(
            &format!("SELECT count(*) FROM cluster_replicas WHERE seen_at > {DB_NOW_MS} - $1"),
            &[(&lease_ms, Type::INT8)],
        )
        .await?
        .get(0);
    tx.commit().await?;
    Ok(ClusterBeat {
        replicas_seen: u64::try_from(seen).unwrap_or(0),
        holds_facts_lease: holder.is_some(),
    })
}

/// The cluster's facts: every defined agent with its exact lifetime revenue (retired revenue
/// included, as `revenue` counts it) and the PENDING executions, each read in one statement.
pub(super) async fn facts(store: &PostgresStore) -> Result<ClusterFacts> {
    let client = store.client().await?;
    let rows = client
        .query_typed(
            "SELECT a.definition, (coalesce(c.wei, 0) + coalesce(r.wei, 0))::text
             FROM agents a
             LEFT JOIN (SELECT agent_id, sum(price_wei::numeric) AS wei FROM executions
                        WHERE status = 'COMPLETED' GROUP BY agent_id) c ON c.agent_id = a.id
             LEFT JOIN retired_revenue r ON r.agent_id = a.id
             ORDER BY a.id",
            &[],
        )
        .await?;
    let mut revenue = Vec::with_capacity(rows.len());
    for row in &rows {
        let agent: Agent = parse_json(row.get::<_, &str>(0))?;
        let total: &str = row.get(1);
        let wei: Wei = total.parse().map_err(|_| {
            StoreError::Corrupt(format!(
                "revenue {total} exceeds the largest representable amount"
            ))
        })?;
        revenue.push((agent, wei));
    }
    let pending: i64 = client
        .query_typed_one(
            "SELECT count(*) FROM executions WHERE status = 'PENDING'",
            &[],
        )
        .await?
        .get(0);
    Ok(ClusterFacts {
        revenue,
        pending: u64::try_from(pending).unwrap_or(0),
    })
}

/// Leaves the cluster on an orderly stop: the heartbeat goes at once (replicas seen drop now,
/// not a lease later), and so does the facts lease, for another replica to take at its next
/// heartbeat.
pub(super) async fn leave(store: &PostgresStore, replica: &str) -> Result<()> {
    let client = store.client().await?;
    client
        .execute_typed(
            "DELETE FROM cluster_replicas WHERE replica_id = $1",
            &[(&replica, Type::TEXT)],
        )
        .await?;
    client
        .execute_typed(
            "UPDATE cluster_facts_lease SET expires_at = 0 WHERE id = 1 AND replica_id = $1",
            &[(&replica, Type::TEXT)],
        )
        .await?;
    Ok(())
}
