//! Reads: each one statement on a pooled connection, outside any transaction.

use tokio_postgres::Row;
use tokio_postgres::types::Type;

use super::super::rules::{self, StoredExecution, parse_json};
use super::super::{ExecutionFilter, Result, StoreError};
use super::PostgresStore;
use crate::domain::{Agent, Event, Execution, ExecutionId, Status, Wei};

pub(super) const EXECUTION_COLUMNS: &str = "id, agent_id, user_id, status, agent, price_wei, input, \
    output, error_kind, error_message, exit_code, created_at, started_at, finished_at, \
    peak_memory_bytes, peak_cpu_percent, log_lines, log_lines_dropped, last_seq, \
    process_group, process_started, process_cgroup, replica_id, usage, error_budget";

/// How many columns `EXECUTION_COLUMNS` names: the index of the first column a query returns
/// after them.
pub(super) const EXECUTION_COLUMN_COUNT: usize = {
    let bytes = EXECUTION_COLUMNS.as_bytes();
    let (mut i, mut columns) = (0, 1);
    while i < bytes.len() {
        if bytes[i] == b',' {
            columns += 1;
        }
        i += 1;
    }
    columns
};

pub(super) async fn get_agent(store: &PostgresStore, id: &str) -> Result<Option<(Agent, bool)>> {
    let client = store.client().await?;
    let row = client
        .query_typed_opt(
            "SELECT definition, from_config FROM agents WHERE id = $1",
            &[(&id, Type::TEXT)],
        )
        .await?;
    row.map(|row| Ok((parse_json(row.get::<_, &str>(0))?, row.get(1))))
        .transpose()
}

pub(super) async fn list_agents(store: &PostgresStore) -> Result<Vec<Agent>> {
    let client = store.client().await?;
    let rows = client
        .query_typed("SELECT definition FROM agents ORDER BY id", &[])
        .await?;
    rows.iter().map(|row| parse_json(row.get(0))).collect()
}

pub(super) async fn get_execution(
    store: &PostgresStore,
    id: &ExecutionId,
) -> Result<Option<Execution>> {
    let client = store.client().await?;
    let sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = $1");
    let row = client
        .query_typed_opt(&sql, &[(&id.as_str(), Type::TEXT)])
        .await?;
    row.as_ref().map(read_execution).transpose()
}

pub(super) async fn list_executions(
    store: &PostgresStore,
    filter: ExecutionFilter,
) -> Result<Vec<Execution>> {
    let client = store.client().await?;
    let sql = format!(
        "SELECT {EXECUTION_COLUMNS} FROM executions
         WHERE ($1::text IS NULL OR agent_id = $1)
           AND ($2::text IS NULL OR status = $2)
           AND ($3::text IS NULL OR user_id = $3)
           AND ($4::text IS NULL OR id < $4)
         ORDER BY id DESC LIMIT $5"
    );
    let status = filter.status.map(Status::as_str);
    let before = filter.before.as_ref().map(ExecutionId::as_str);
    let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
    let rows = client
        .query_typed(
            &sql,
            &[
                (&filter.agent_id, Type::TEXT),
                (&status, Type::TEXT),
                (&filter.user_id, Type::TEXT),
                (&before, Type::TEXT),
                (&limit, Type::INT8),
            ],
        )
        .await?;
    rows.iter().map(read_execution).collect()
}

pub(super) async fn unfinished_executions(store: &PostgresStore) -> Result<Vec<Execution>> {
    let client = store.client().await?;
    let sql = format!(
        "SELECT {EXECUTION_COLUMNS} FROM executions
         WHERE status IN ('PENDING', 'RUNNING') ORDER BY key"
    );
    let rows = client.query_typed(&sql, &[]).await?;
    rows.iter().map(read_execution).collect()
}

pub(super) async fn events(
    store: &PostgresStore,
    id: &ExecutionId,
    since: u64,
    limit: usize,
    max_bytes: usize,
) -> Result<Vec<Event>> {
    let client = store.client().await?;
    // A seq is at most i64::MAX, so a larger `since` has nothing after it.
    let since = i64::try_from(since).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client
        .query_typed(
            "SELECT seq, kind, data, timestamp FROM events
             WHERE execution_key = (SELECT key FROM executions WHERE id = $1)
               AND seq > $2 ORDER BY seq LIMIT $3",
            &[
                (&id.as_str(), Type::TEXT),
                (&since, Type::INT8),
                (&limit, Type::INT8),
            ],
        )
        .await?;
    let mut events = Vec::new();
    let mut bytes = 0;
    for row in rows {
        if bytes >= max_bytes {
            break;
        }
        let data: String = row.get(2);
        bytes += data.len();
        events.push(rules::stored_event(
            row.get(0),
            row.get(1),
            data,
            row.get(3),
        )?);
    }
    Ok(events)
}

/// Summed exactly in the database (as `numeric`), then checked to fit.
pub(super) async fn revenue(store: &PostgresStore, agent_id: &str) -> Result<Wei> {
    let client = store.client().await?;
    let row = client
        .query_typed_one(
            // One statement, one snapshot: an execution is counted either here or, once
            // retention deleted it, in the retired total.
            "SELECT (coalesce((SELECT sum(price_wei::numeric) FROM executions
                               WHERE agent_id = $1 AND status = 'COMPLETED'), 0)
                   + coalesce((SELECT wei FROM retired_revenue WHERE agent_id = $1), 0))::text",
            &[(&agent_id, Type::TEXT)],
        )
        .await?;
    let total: &str = row.get(0);
    total.parse().map_err(|_| {
        StoreError::Corrupt(format!(
            "revenue {total} exceeds the largest representable amount"
        ))
    })
}

pub(super) fn read_execution(row: &Row) -> Result<Execution> {
    let stored = StoredExecution {
        id: row.get(0),
        agent_id: row.get(1),
        user_id: row.get(2),
        status: row.get(3),
        agent: row.get(4),
        price_wei: row.get(5),
        input: row.get(6),
        output: row.get(7),
        error_kind: row.get(8),
        error_message: row.get(9),
        exit_code: row.get(10),
        created_at: row.get(11),
        started_at: row.get(12),
        finished_at: row.get(13),
        peak_memory_bytes: row.get(14),
        peak_cpu_percent: row.get(15),
        log_lines: row.get(16),
        log_lines_dropped: row.get(17),
        last_seq: row.get(18),
        process_group: row.get(19),
        process_started: row.get(20),
        process_cgroup: row.get(21),
        replica_id: row.get(22),
        usage: row.get(23),
        error_budget: row.get(24),
    };
    debug_assert_eq!(EXECUTION_COLUMN_COUNT, 25, "every column is read above");
    stored.into_execution()
}
