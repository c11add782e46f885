//! The embedded store: one SQLite database in WAL mode, written by a single dedicated thread
//! that commits whatever has queued up in one transaction (group commit), read by a few reader
//! threads, each with its own read-only connection.
//!
//! The writer is the one place that assigns `seq` numbers and applies status changes, so both
//! are serialized without locks: per execution, events are numbered in the order they were
//! queued, and a status change is checked against the status machine at the moment it commits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use super::{
    ExecutionFilter, NewEvent, NewExecution, Result, Store, StoreError, Transition,
    TransitionOutcome,
};
use crate::domain::{
    Agent, Event, EventData, EventKind, ExecError, Execution, ProcessGroup, Status, StatusData,
    Wei, now_ms,
};
use crate::hub::Hub;

/// Schema versions, applied in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_process_group.sql"),
];

/// Commands queued for the writer beyond this make producers wait: the backpressure that keeps
/// a flood of log lines from growing memory without bound.
const WRITE_QUEUE: usize = 1024;
/// Upper bound of commands per transaction, so one commit never grows without limit.
const MAX_BATCH: usize = 4096;
/// Reader threads, each with its own read-only connection. Reads queue for the next free one:
/// a burst of reads costs queue entries, not threads and connections (each with a page cache).
const READERS: usize = 4;

type Reply<T> = oneshot::Sender<Result<T>>;

enum Command {
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
        key: i64,
        events: Vec<NewEvent>,
    },
    RecordProcess {
        key: i64,
        process: ProcessGroup,
    },
    Transition {
        transition: Box<Transition>,
        reply: Reply<TransitionOutcome>,
    },
    Flush {
        reply: Reply<()>,
    },
}

pub struct SqliteStore {
    commands: mpsc::Sender<Command>,
    readers: Readers,
}

impl SqliteStore {
    /// Opens (creating if needed) `<data_dir>/agentnexus.db`, migrates it and starts the writer.
    /// `sync_commits` makes every commit reach the disk (survives power loss), not only the OS.
    pub fn open(data_dir: &Path, sync_commits: bool, hub: Arc<Hub>) -> Result<SqliteStore> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let path = data_dir.join("agentnexus.db");
        let mut conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            if sync_commits { "FULL" } else { "NORMAL" },
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;

        let (commands, queue) = mpsc::channel(WRITE_QUEUE);
        let writer = Writer {
            conn,
            hub,
            active: HashMap::new(),
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
        self.ask(|reply| Command::Transition { transition, reply })
            .await
    }

    async fn append(&self, key: i64, events: Vec<NewEvent>) -> Result<()> {
        self.commands
            .send(Command::Append { key, events })
            .await
            .map_err(|_| StoreError::Closed)
    }

    async fn flush(&self) -> Result<()> {
        self.ask(|reply| Command::Flush { reply }).await
    }

    async fn record_process(&self, key: i64, process: ProcessGroup) -> Result<()> {
        self.commands
            .send(Command::RecordProcess { key, process })
            .await
            .map_err(|_| StoreError::Closed)
    }

    async fn get_execution(&self, id: &str) -> Result<Option<Execution>> {
        let id = id.to_owned();
        self.readers
            .read(move |conn| {
                let sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = ?1");
                conn.query_row(&sql, [&id], read_execution)
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
                       AND (?4 IS NULL OR key < ?4)
                     ORDER BY key DESC LIMIT ?5"
                );
                let mut stmt = conn.prepare_cached(&sql)?;
                let rows = stmt.query_map(
                    params![
                        filter.agent_id,
                        filter.status.map(Status::as_str),
                        filter.user_id,
                        filter.before_key,
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
        key: i64,
        since: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>> {
        self.readers
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT seq, kind, data, timestamp FROM events
                     WHERE execution_key = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                )?;
                // A client's `since` may lie beyond any seq SQLite can hold: after it, nothing.
                let since = i64::try_from(since).unwrap_or(i64::MAX);
                let rows = stmt.query_map(params![key, since, limit as i64], |row| {
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
                    events.push(Event {
                        seq: seq as u64,
                        kind: EventKind::parse(&kind)
                            .ok_or_else(|| StoreError::Corrupt(format!("event kind {kind:?}")))?,
                        data: RawValue::from_string(data)
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                        timestamp,
                    });
                }
                Ok(events)
            })
            .await
    }

    async fn revenue(&self, agent_id: &str) -> Result<Wei> {
        let agent_id = agent_id.to_owned();
        self.readers
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT price_wei FROM executions WHERE agent_id = ?1 AND status = 'COMPLETED'",
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

    /// Opens a fresh connection (so a vanished or unreadable database shows) and makes a round
    /// trip through the writer (so a stuck writer shows).
    async fn ping(&self) -> Result<()> {
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
}

fn parse_json<T: serde::de::DeserializeOwned>(json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(e.to_string()))
}

const EXECUTION_COLUMNS: &str = "key, id, agent_id, user_id, status, agent, price_wei, input, \
    output, error_kind, error_message, exit_code, created_at, started_at, finished_at, \
    peak_memory_bytes, peak_cpu_percent, log_lines, log_lines_dropped, last_seq, \
    process_group, process_started";

/// Maps a row of `EXECUTION_COLUMNS`; the outer result is SQLite's, the inner one ours.
fn read_execution(row: &Row) -> rusqlite::Result<Result<Execution>> {
    let status: String = row.get(4)?;
    let agent: String = row.get(5)?;
    let price: String = row.get(6)?;
    let input: String = row.get(7)?;
    let output: Option<String> = row.get(8)?;
    let error_kind: Option<String> = row.get(9)?;
    let error_message: Option<String> = row.get(10)?;
    let started_at: Option<i64> = row.get(13)?;
    let finished_at: Option<i64> = row.get(14)?;
    let process = match (
        row.get::<_, Option<i32>>(20)?,
        row.get::<_, Option<i64>>(21)?,
    ) {
        (Some(group), Some(started)) => Some(ProcessGroup {
            group,
            started_ticks: started as u64,
        }),
        _ => None,
    };
    let columns = (
        row.get::<_, i64>(0)?,
        row.get::<_, String>(1)?,
        row.get::<_, String>(2)?,
        row.get::<_, String>(3)?,
        row.get::<_, Option<i32>>(11)?,
        row.get::<_, i64>(12)?,
        row.get::<_, Option<i64>>(15)?,
        row.get::<_, Option<f64>>(16)?,
        row.get::<_, i64>(17)?,
        row.get::<_, i64>(18)?,
        row.get::<_, i64>(19)?,
    );
    Ok((|| {
        let (
            key,
            id,
            agent_id,
            user_id,
            exit_code,
            created_at,
            peak_mem,
            peak_cpu,
            lines,
            dropped,
            last_seq,
        ) = columns;
        let agent: Agent = parse_json(&agent)?;
        Ok(Execution {
            execution_id: id,
            agent_name: agent.name.clone(),
            agent_id,
            user_id,
            status: status.parse().map_err(StoreError::Corrupt)?,
            input: parse_json(&input)?,
            output: output.as_deref().map(parse_json).transpose()?,
            error: error_kind.map(|kind| ExecError {
                kind,
                message: error_message.unwrap_or_default(),
            }),
            exit_code,
            created_at,
            started_at,
            finished_at,
            duration_ms: duration(started_at, finished_at),
            price_wei: price.parse().map_err(StoreError::Corrupt)?,
            peak_memory_bytes: peak_mem.map(|m| m as u64),
            peak_cpu_percent: peak_cpu,
            log_lines: lines as u64,
            log_lines_dropped: dropped as u64,
            last_seq: last_seq as u64,
            agent,
            key,
            process,
        })
    })())
}

fn duration(started_at: Option<i64>, finished_at: Option<i64>) -> Option<i64> {
    Some((finished_at? - started_at?).max(0))
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
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// What the writer remembers of an execution it is appending to.
struct Active {
    status: Status,
    last_seq: u64,
    dirty: bool,
}

struct Writer {
    conn: Connection,
    hub: Arc<Hub>,
    active: HashMap<i64, Active>,
}

/// Sends a command's reply once the fate of its transaction is known.
type DeferredReply = Box<dyn FnOnce(Option<&StoreError>) + Send>;

/// Replies and publications held back until the transaction commits.
#[derive(Default)]
struct Pending {
    replies: Vec<DeferredReply>,
    published: HashMap<i64, Vec<Event>>,
    finished: Vec<i64>,
}

impl Pending {
    fn reply<T: Send + 'static>(&mut self, reply: Reply<T>, result: Result<T>) {
        self.replies.push(Box::new(move |commit_error| {
            let result = match commit_error {
                Some(e) => Err(StoreError::Corrupt(format!("commit failed: {e}"))),
                None => result,
            };
            let _ = reply.send(result);
        }));
    }
}

impl Writer {
    fn run(mut self, mut queue: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while queue.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
            let mut pending = Pending::default();
            let outcome = self.apply_batch(batch.drain(..), &mut pending);
            if let Err(e) = &outcome {
                tracing::error!(error = %e, "store write failed; the batch is lost");
                // Our seq bookkeeping may be ahead of the database now: reload on next use.
                self.active.clear();
            }
            for reply in pending.replies {
                reply(outcome.as_ref().err());
            }
            if outcome.is_ok() {
                for (key, events) in pending.published {
                    let finished = pending.finished.contains(&key);
                    self.hub.publish(key, events, finished);
                }
                for key in pending.finished {
                    self.active.remove(&key);
                }
            }
        }
    }

    fn apply_batch(
        &mut self,
        commands: impl Iterator<Item = Command>,
        pending: &mut Pending,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        for command in commands {
            match command {
                Command::PutAgent {
                    agent,
                    from_config,
                    replace,
                    reply,
                } => {
                    let result = put_agent(&tx, &agent, from_config, replace);
                    pending.reply(reply, result);
                }
                Command::DeleteAgent { id, reply } => {
                    let deleted = tx.execute("DELETE FROM agents WHERE id = ?1", [&id])? > 0;
                    pending.reply(reply, Ok(deleted));
                }
                Command::Create { new, reply } => {
                    let result = create(&tx, &mut self.active, *new, pending);
                    pending.reply(reply, result);
                }
                Command::Append { key, events } => {
                    append(&tx, &mut self.active, key, events, pending)?;
                }
                Command::Transition { transition, reply } => {
                    let result = transition_to(&tx, &mut self.active, *transition, pending);
                    pending.reply(reply, result);
                }
                Command::RecordProcess { key, process } => {
                    tx.prepare_cached(
                        "UPDATE executions SET process_group = ?2, process_started = ?3 WHERE key = ?1",
                    )?
                    .execute(params![key, process.group, process.started_ticks as i64])?;
                }
                Command::Flush { reply } => pending.reply(reply, Ok(())),
            }
        }
        let mut stmt = tx.prepare_cached("UPDATE executions SET last_seq = ?2 WHERE key = ?1")?;
        for (key, active) in self.active.iter_mut().filter(|(_, a)| a.dirty) {
            stmt.execute(params![key, active.last_seq as i64])?;
            active.dirty = false;
        }
        drop(stmt);
        tx.commit()?;
        Ok(())
    }
}

fn put_agent(conn: &Connection, agent: &Agent, from_config: bool, replace: bool) -> Result<()> {
    let exists = conn
        .query_row(
            "SELECT 1 FROM agents WHERE id = ?1",
            [&agent.id],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if exists && !replace {
        return Err(StoreError::AlreadyExists(format!("agent {:?}", agent.id)));
    }
    let definition = serde_json::to_string(agent).expect("agents serialize");
    conn.execute(
        "INSERT INTO agents (id, definition, from_config, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET definition = excluded.definition,
                                        from_config = excluded.from_config",
        params![agent.id, definition, from_config, now_ms()],
    )?;
    Ok(())
}

fn create(
    conn: &Connection,
    active: &mut HashMap<i64, Active>,
    new: NewExecution,
    pending: &mut Pending,
) -> Result<Execution> {
    let agent_json = serde_json::to_string(&new.agent).expect("agents serialize");
    conn.prepare_cached(
        "INSERT INTO executions (id, agent_id, user_id, status, agent, price_wei, input, created_at)
         VALUES (?1, ?2, ?3, 'PENDING', ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        new.id,
        new.agent.id,
        new.user_id,
        agent_json,
        new.agent.price_wei.to_string(),
        new.input.to_string(),
        new.created_at
    ])?;
    let key = conn.last_insert_rowid();
    active.insert(
        key,
        Active {
            status: Status::Pending,
            last_seq: 0,
            dirty: false,
        },
    );
    let status = status_event(Status::Pending, None, None, None, new.created_at);
    append(conn, active, key, vec![status], pending)?;
    Ok(Execution {
        execution_id: new.id,
        agent_id: new.agent.id.clone(),
        agent_name: new.agent.name.clone(),
        user_id: new.user_id,
        status: Status::Pending,
        input: new.input,
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
        agent: new.agent,
        key,
        process: None,
    })
}

fn load_active<'a>(
    conn: &Connection,
    active: &'a mut HashMap<i64, Active>,
    key: i64,
) -> Result<Option<&'a mut Active>> {
    if let std::collections::hash_map::Entry::Vacant(slot) = active.entry(key) {
        let row = conn
            .query_row(
                "SELECT status, last_seq FROM executions WHERE key = ?1",
                [key],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)),
            )
            .optional()?;
        let Some((status, last_seq)) = row else {
            return Ok(None);
        };
        slot.insert(Active {
            status: status.parse().map_err(StoreError::Corrupt)?,
            last_seq: last_seq as u64,
            dirty: false,
        });
    }
    Ok(active.get_mut(&key))
}

fn append(
    conn: &Connection,
    active: &mut HashMap<i64, Active>,
    key: i64,
    events: Vec<NewEvent>,
    pending: &mut Pending,
) -> Result<()> {
    let Some(state) = load_active(conn, active, key)? else {
        tracing::warn!(key, "events for an unknown execution were discarded");
        return Ok(());
    };
    // The final status event is the last one: the stream of a finished execution is closed.
    // (A status event itself is appended before the status is updated, so it passes.)
    if state.status.is_terminal() {
        tracing::debug!(
            key,
            count = events.len(),
            "events after the end were discarded"
        );
        return Ok(());
    }
    let mut insert = conn.prepare_cached(
        "INSERT INTO events (execution_key, seq, kind, data, timestamp) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let published = pending.published.entry(key).or_default();
    for event in events {
        state.last_seq += 1;
        insert.execute(params![
            key,
            state.last_seq as i64,
            event.kind.as_str(),
            event.data.get(),
            event.timestamp
        ])?;
        published.push(Event {
            seq: state.last_seq,
            kind: event.kind,
            data: event.data,
            timestamp: event.timestamp,
        });
    }
    state.dirty = true;
    Ok(())
}

fn status_event(
    status: Status,
    output: Option<serde_json::Value>,
    error: Option<ExecError>,
    exit_code: Option<i32>,
    at: i64,
) -> NewEvent {
    let data = EventData::Status(StatusData {
        status,
        output,
        error,
        exit_code,
    });
    NewEvent {
        kind: EventKind::Status,
        data: serde_json::value::to_raw_value(&data).expect("status data serializes"),
        timestamp: at,
    }
}

fn transition_to(
    conn: &Connection,
    active: &mut HashMap<i64, Active>,
    t: Transition,
    pending: &mut Pending,
) -> Result<TransitionOutcome> {
    let Some(state) = load_active(conn, active, t.key)? else {
        return Err(StoreError::Corrupt(format!(
            "no execution with key {}",
            t.key
        )));
    };
    if state.status != t.from || !t.from.can_become(t.to) {
        return Ok(TransitionOutcome::Refused(state.status));
    }
    let stats = t.stats.unwrap_or_default();
    let terminal = t.to.is_terminal();
    conn.prepare_cached(
        "UPDATE executions SET status = ?2,
             started_at = CASE WHEN ?2 = 'RUNNING' THEN ?3 ELSE started_at END,
             finished_at = CASE WHEN ?4 THEN ?3 ELSE finished_at END,
             output = ?5, error_kind = ?6, error_message = ?7, exit_code = ?8,
             peak_memory_bytes = coalesce(?9, peak_memory_bytes),
             peak_cpu_percent = coalesce(?10, peak_cpu_percent),
             log_lines = log_lines + ?11, log_lines_dropped = log_lines_dropped + ?12
         WHERE key = ?1",
    )?
    .execute(params![
        t.key,
        t.to.as_str(),
        t.at,
        terminal,
        t.output.as_ref().map(|o| o.to_string()),
        t.error.as_ref().map(|e| &e.kind),
        t.error.as_ref().map(|e| &e.message),
        t.exit_code,
        stats.peak_memory_bytes.map(|m| m as i64),
        stats.peak_cpu_percent,
        stats.log_lines as i64,
        stats.log_lines_dropped as i64,
    ])?;
    let event = status_event(t.to, t.output, t.error, t.exit_code, t.at);
    append(conn, active, t.key, vec![event], pending)?;
    let state = active.get_mut(&t.key).expect("loaded above");
    state.status = t.to;
    if terminal {
        pending.finished.push(t.key);
    }
    Ok(TransitionOutcome::Applied)
}
