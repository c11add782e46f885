//! Retention on SQLite: a batch of deletions is one writer command, queued and committed like
//! any other, so it shares the writer's transactions with appends instead of holding the write
//! lock on its own, and its size is bounded by `RetentionBatch`.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use super::super::{Result, RetentionBatch, StoreError};
use super::commands::Ledger;
use crate::domain::{EpochMs, Wei};

/// Deletes one batch in the open transaction `conn`; returns how many executions went.
pub(super) fn delete_finished_before(
    conn: &Connection,
    ledger: &mut Ledger,
    cutoff: EpochMs,
    batch: RetentionBatch,
) -> Result<u64> {
    let mut candidates = conn.prepare_cached(
        "SELECT key, id, agent_id, status, price_wei, last_seq FROM executions
         WHERE status IN ('COMPLETED', 'FAILED', 'CANCELLED') AND finished_at < ?1
         ORDER BY finished_at, key LIMIT ?2",
    )?;
    let limit = i64::try_from(batch.executions).unwrap_or(i64::MAX);
    let mut rows = candidates.query(params![cutoff, limit])?;
    let mut doomed: Vec<(i64, String)> = Vec::new();
    let mut retired: HashMap<String, u128> = HashMap::new();
    let mut events: u64 = 0;
    while let Some(row) = rows.next()? {
        let last_seq = row.get::<_, i64>(5)? as u64;
        if !doomed.is_empty() && events.saturating_add(last_seq) > batch.events {
            break;
        }
        events = events.saturating_add(last_seq);
        doomed.push((row.get(0)?, row.get(1)?));
        if row.get::<_, String>(3)? == "COMPLETED" {
            let price: Wei = row
                .get::<_, String>(4)?
                .parse()
                .map_err(StoreError::Corrupt)?;
            let total = retired.entry(row.get(2)?).or_default();
            *total = add(*total, price.0)?;
        }
    }
    let mut delete_events = conn.prepare_cached("DELETE FROM events WHERE execution_key = ?1")?;
    let mut delete_execution = conn.prepare_cached("DELETE FROM executions WHERE key = ?1")?;
    for (key, id) in &doomed {
        delete_events.execute([key])?;
        delete_execution.execute([key])?;
        ledger.forget(id);
    }
    for (agent_id, wei) in retired {
        retire(conn, &agent_id, wei)?;
    }
    Ok(doomed.len() as u64)
}

/// Adds `wei` to the agent's retired revenue.
fn retire(conn: &Connection, agent_id: &str, wei: u128) -> Result<()> {
    let before: Option<String> = conn
        .prepare_cached("SELECT wei FROM retired_revenue WHERE agent_id = ?1")?
        .query_row([agent_id], |row| row.get(0))
        .optional()?;
    let before: Wei = match before {
        Some(text) => text.parse().map_err(StoreError::Corrupt)?,
        None => Wei(0),
    };
    let after = add(before.0, wei)?;
    conn.prepare_cached(
        "INSERT INTO retired_revenue (agent_id, wei) VALUES (?1, ?2)
         ON CONFLICT (agent_id) DO UPDATE SET wei = excluded.wei",
    )?
    .execute(params![agent_id, Wei(after).to_string()])?;
    Ok(())
}

fn add(a: u128, b: u128) -> Result<u128> {
    a.checked_add(b).ok_or_else(|| {
        StoreError::Corrupt("revenue exceeds the largest representable amount".into())
    })
}

/// The main file's pages plus the write-ahead log, which holds committed pages until a
/// checkpoint copies them back.
pub(super) fn size_bytes(conn: &Connection, path: &Path) -> Result<u64> {
    let pages: i64 = conn.pragma_query_value(None, "page_count", |r| r.get(0))?;
    let page_size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0);
    Ok((pages.max(0) as u64) * (page_size.max(0) as u64) + wal)
}
