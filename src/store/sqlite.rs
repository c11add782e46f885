//! The embedded store: one SQLite database in WAL mode, written by a single dedicated thread
//! that commits whatever has queued up in one transaction (group commit), read by a few reader
//! threads, each with its own read-only connection.
//!
//! The writer is the one place that assigns `seq` numbers and applies status changes, so both
//! are serialized without locks: per execution, events are numbered in the order they were
//! queued, and a status change is checked against the status machine at the moment it commits.

mod commands;
mod retention;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use tokio::sync::{mpsc, oneshot, watch};

use super::rules::{self, StoredExecution, parse_json};
use super::{
    ExecutionFilter, LostStream, NewEvent, NewExecution, Result, RetentionBatch, Store, StoreError,
    Transition, TransitionOutcome, WriteHealth,
};
use crate::bus::Bus;
use crate::domain::{Agent, EpochMs, Event, Execution, ExecutionId, ProcessGroup, Status, Wei};
use commands::{Command, Ledger, Record, Reply};
use writer::Writer;

/// Schema versions, applied in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_process_group.sql"),
    include_str!("migrations/0003_process_cgroup.sql"),
    include_str!("migrations/0004_list_by_id.sql"),
    include_str!("migrations/0005_retention.sql"),
    include_str!("migrations/0006_owner.sql"),
    include_str!("migrations/0007_usage.sql"),
];

/// Commands queued for the writer beyond this make producers wait: the backpressure that keeps
/// a flood of log lines (or a store that cannot write for a while) from growing memory without
/// bound.
const WRITE_QUEUE: usize = 1024;
/// How long the writer waits for another process's write lock before it counts as a fault
/// (and is retried); readers wait longer, since a read fails rather than retries.
const WRITER_BUSY_TIMEOUT: Duration = Duration::from_secs(1);
const READER_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Reader threads, each with its own read-only connection. Reads queue for the next free one:
/// a burst of reads costs queue entries, not threads and connections (each with a page cache).
const READERS: usize = 4;

pub struct SqliteStore {
    commands: mpsc::Sender<Command>,
    readers: Readers,
    health: watch::Receiver<WriteHealth>,
}

/// How the embedded store writes.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Every commit reaches the disk (survives power loss), not only the operating system.
    pub sync_commits: bool,
    /// How long writes are held and retried through a passing fault before the events waiting
    /// to be written are given up (their executions end FAILED `store_unavailable`).
    pub outage_limit: Duration,
}

impl SqliteStore {
    /// Opens (creating if needed) `<data_dir>/agentnexus.db`, migrates it and starts the writer.
    /// Committed batches are published on `bus`; executions whose streams the writer cuts short
    /// are announced on `lost`.
    pub fn open(
        data_dir: &Path,
        options: SqliteOptions,
        bus: Arc<dyn Bus>,
        lost: mpsc::UnboundedSender<LostStream>,
    ) -> Result<SqliteStore> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let path = data_dir.join("agentnexus.db");
        let mut conn = Connection::open(&path)?;
        conn.busy_timeout(READER_BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            if options.sync_commits {
                "FULL"
            } else {
                "NORMAL"
            },
        )?;
        migrate(&mut conn)?;
        conn.busy_timeout(WRITER_BUSY_TIMEOUT)?;

        let (commands, queue) = mpsc::channel(WRITE_QUEUE);
        let (health, health_watch) = watch::channel(WriteHealth::Writing);
        let writer = Writer {
            conn,
            bus,
            ledger: Ledger::default(),
            lost,
            health,
            outage_limit: options.outage_limit,
        };
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(queue))
            .map_err(|source| StoreError::DataDir {
                path: path.display().to_string(),
                source,
            })?;
        Ok(SqliteStore {
            commands,
            readers: Readers::start(path)?,
            health: health_watch,
        })
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let applied: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "the database has schema version {applied}, newer than this build knows ({})",
            MIGRATIONS.len()
        )));
    }
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn put_agent(&self, agent: &Agent, from_config: bool, replace: bool) -> Result<()> {
        let agent = Box::new(agent.clone());
        self.ask(|reply| Command::PutAgent {
            agent,
            from_config,
            replace,
            reply,
        })
        .await
    }

    async fn delete_agent(&self, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.ask(|reply| Command::DeleteAgent { id, reply }).await
    }

    async fn get_agent(&self, id: &str) -> Result<Option<(Agent, bool)>> {
        let id = id.to_owned();
        self.readers
            .read(move |conn| {
                conn.query_row(
                    "SELECT definition, from_config FROM agents WHERE id = ?1",
                    [&id],
                    |row| Ok((row.get::<_, String>(0)?, row.get::<_, bool>(1)?)),
                )
                .optional()?
                .map(|(json, from_config)| Ok((parse_json(&json)?, from_config)))
                .transpose()
            })
            .await
    }

    async fn list_agents(&self) -> Result<Vec<Agent>> {
        self.readers
            .read(|conn| {
                let mut stmt = conn.prepare_cached("SELECT definition FROM agents ORDER BY id")?;
                let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
                rows.map(|json| parse_json(&json?)).collect()
            })
            .await
    }

    async fn create_execution(&self, new: NewExecution) -> Result<Execution> {
        let new = Box::new(new);
        self.ask(|reply| Command::Create { new, reply }).await
    }

    async fn transition(&self, transition: Transition) -> Result<TransitionOutcome> {
        let transition = Box::new(transition);
        self.ask(|reply| Command::Transition {
            transition,
            record: Record::AsAsked,
            reply,
        })
        .await
    }

    async fn append(&self, id: &ExecutionId, events: Vec<NewEvent>) -> Result<()> {
        let id = id.clone();
        self.commands
            .send(Command::Append { id, events })
            .await
            .map_err(|_| StoreError::Closed)
    }

    async fn flush(&self) -> Result<()> {
        self.ask(|reply| Command::Flush { reply }).await
    }

    async fn record_process(&self, id: &ExecutionId, process: ProcessGroup) -> Result<()> {
        let id = id.clone();
        self.commands
            .send(Command::RecordProcess { id, process })
            .await
            .map_err(|_| StoreError::Closed)
    }

    async fn get_execution(&self, id: &ExecutionId) -> Result<Option<Execution>> {
        let id = id.clone();
        self.readers
            .read(move |conn| {
                let sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = ?1");
                conn.prepare_cached(&sql)?
                    .query_row([id.as_str()], read_execution)
                    .optional()?
                    .transpose()
            })
            .await
    }

    async fn list_executions(&self, filter: ExecutionFilter) -> Result<Vec<Execution>> {
        self.readers
            .read(move |conn| {
                let sql = format!(
                    "SELECT {EXECUTION_COLUMNS} FROM executions
                     WHERE (?1 IS NULL OR agent_id = ?1)
                       AND (?2 IS NULL OR status = ?2)
                       AND (?3 IS NULL OR user_id = ?3)
                       AND (?4 IS NULL OR id < ?4)
                     ORDER BY id DESC LIMIT ?5"
                );
                let mut stmt = conn.prepare_cached(&sql)?;
                let rows = stmt.query_map(
                    params![
                        filter.agent_id,
                        filter.status.map(Status::as_str),
                        filter.user_id,
                        filter.before.as_ref().map(ExecutionId::as_str),
                        filter.limit as i64
                    ],
                    read_execution,
                )?;
                rows.map(|r| r?).collect()
            })
            .await
    }

    async fn unfinished_executions(&self) -> Result<Vec<Execution>> {
        self.readers
            .read(|conn| {
                let sql = format!(
                    "SELECT {EXECUTION_COLUMNS} FROM executions
                     WHERE status IN ('PENDING', 'RUNNING') ORDER BY key"
                );
                let mut stmt = conn.prepare_cached(&sql)?;
                let rows = stmt.query_map([], read_execution)?;
                rows.map(|r| r?).collect()
            })
            .await
    }

    async fn events(
        &self,
        id: &ExecutionId,
        since: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>> {
        let id = id.clone();
        self.readers
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT seq, kind, data, timestamp FROM events
                     WHERE execution_key = (SELECT key FROM executions WHERE id = ?1)
                       AND seq > ?2 ORDER BY seq LIMIT ?3",
                )?;
                // A seq is at most i64::MAX, so a larger `since` has nothing after it (a cast
                // would wrap it negative, to "everything").
                let since = i64::try_from(since).unwrap_or(i64::MAX);
                let rows = stmt.query_map(params![id.as_str(), since, limit as i64], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, i64>(3)?,
                    ))
                })?;
                let mut events = Vec::new();
                let mut bytes = 0;
                for row in rows {
                    if bytes >= max_bytes {
                        break;
                    }
                    let (seq, kind, data, timestamp) = row?;
                    bytes += data.len();
                    events.push(rules::stored_event(seq, &kind, data, timestamp)?);
                }
                Ok(events)
            })
            .await
    }

    async fn revenue(&self, agent_id: &str) -> Result<Wei> {
        let agent_id = agent_id.to_owned();
        self.readers
            .read(move |conn| {
                // One statement, one snapshot: an execution is counted either here or, once
                // retention deleted it, in the retired total.
                let mut stmt = conn.prepare_cached(
                    "SELECT price_wei FROM executions WHERE agent_id = ?1 AND status = 'COMPLETED'
                     UNION ALL SELECT wei FROM retired_revenue WHERE agent_id = ?1",
                )?;
                let mut total: u128 = 0;
                let mut rows = stmt.query([&agent_id])?;
                while let Some(row) = rows.next()? {
                    let price: Wei = row
                        .get::<_, String>(0)?
                        .parse()
                        .map_err(StoreError::Corrupt)?;
                    total = total.checked_add(price.0).ok_or_else(|| {
                        StoreError::Corrupt(
                            "revenue exceeds the largest representable amount".into(),
                        )
                    })?;
                }
                Ok(Wei(total))
            })
            .await
    }

    /// Fails while the writer's writes fail; otherwise opens a fresh connection (so a vanished
    /// or unreadable database shows) and makes a round trip through the writer (so a stuck
    /// writer shows).
    async fn ping(&self) -> Result<()> {
        if let WriteHealth::Failing { error, .. } = &*self.health.borrow() {
            return Err(StoreError::Unavailable(error.clone()));
        }
        let path = self.readers.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            conn.query_row("SELECT count(*) FROM executions", [], |_| Ok(()))?;
            Ok::<_, StoreError>(())
        })
        .await
        .map_err(|_| StoreError::Closed)??;
        self.flush().await
    }

    fn write_health(&self) -> watch::Receiver<WriteHealth> {
        self.health.clone()
    }

    async fn delete_finished_before(&self, cutoff: EpochMs, batch: RetentionBatch) -> Result<u64> {
        self.ask(|reply| Command::DeleteFinished {
            cutoff,
            batch,
            reply,
        })
        .await
    }

    async fn size_bytes(&self) -> Result<u64> {
        let path = self.readers.path.clone();
        self.readers
            .read(move |conn| retention::size_bytes(conn, &path))
            .await
    }
}

const EXECUTION_COLUMNS: &str = "id, agent_id, user_id, status, agent, price_wei, input, \
    output, error_kind, error_message, exit_code, created_at, started_at, finished_at, \
    peak_memory_bytes, peak_cpu_percent, log_lines, log_lines_dropped, last_seq, \
    process_group, process_started, process_cgroup, replica_id, usage, error_budget";

/// Reads a row of `EXECUTION_COLUMNS`; the outer result is SQLite's, the inner one ours.
fn read_execution(row: &Row) -> rusqlite::Result<Result<Execution>> {
    let stored = StoredExecution {
        id: row.get(0)?,
        agent_id: row.get(1)?,
        user_id: row.get(2)?,
        status: row.get(3)?,
        agent: row.get(4)?,
        price_wei: row.get(5)?,
        input: row.get(6)?,
        output: row.get(7)?,
        error_kind: row.get(8)?,
        error_message: row.get(9)?,
        exit_code: row.get(10)?,
        created_at: row.get(11)?,
        started_at: row.get(12)?,
        finished_at: row.get(13)?,
        peak_memory_bytes: row.get(14)?,
        peak_cpu_percent: row.get(15)?,
        log_lines: row.get(16)?,
        log_lines_dropped: row.get(17)?,
        last_seq: row.get(18)?,
        process_group: row.get(19)?,
        process_started: row.get(20)?,
        process_cgroup: row.get(21)?,
        replica_id: row.get(22)?,
        usage: row.get(23)?,
        error_budget: row.get(24)?,
    };
    Ok(stored.into_execution())
}

/// A read, run on a reader thread with that thread's connection (or the error opening it).
type ReadJob = Box<dyn FnOnce(Result<&Connection>) + Send>;

/// The reader threads. A read runs whether or not its caller is still waiting, and holds
/// nothing while queued, so a caller that is slow to poll its answer (a WebSocket follower
/// behind a full outbox) cannot hold up anyone else's reads.
struct Readers {
    path: PathBuf,
    jobs: std::sync::mpsc::Sender<ReadJob>,
}

impl Readers {
    fn start(path: PathBuf) -> Result<Readers> {
        let (jobs, queue) = std::sync::mpsc::channel::<ReadJob>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..READERS {
            let (own_path, queue) = (path.clone(), queue.clone());
            std::thread::Builder::new()
                .name(format!("store-reader-{i}"))
                .spawn(move || serve_reads(&own_path, &queue))
                .map_err(|source| StoreError::DataDir {
                    path: path.display().to_string(),
                    source,
                })?;
        }
        Ok(Readers { path, jobs })
    }

    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: ReadJob = Box::new(move |conn| {
            let _ = reply.send(conn.and_then(f));
        });
        self.jobs.send(job).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// A reader thread: takes the next queued read until the store is dropped. Its connection is
/// opened at the first read (after the writer has created the database) and reopened after a
/// failed open.
fn serve_reads(path: &Path, queue: &Mutex<std::sync::mpsc::Receiver<ReadJob>>) {
    let mut conn: Option<Connection> = None;
    loop {
        let Ok(job) = queue.lock().unwrap().recv() else {
            return;
        };
        let opened = match &mut conn {
            Some(open) => Ok(&*open),
            closed @ None => open_reader(path).map(|open| &*closed.insert(open)),
        };
        job(opened);
    }
}

fn open_reader(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(READER_BUSY_TIMEOUT)?;
    Ok(conn)
}
