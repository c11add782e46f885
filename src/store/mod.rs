//! Durable state: agents, executions and every execution's event stream. The `Store` trait is the
//! seam between the runtime and a database: `sqlite` is the embedded implementation, `postgres`
//! the shared one. Only this module knows SQL.
//!
//! The store is also where an event becomes visible: it publishes each event to the bus only
//! after the transaction that holds it has committed, so anything a reader saw is durable.
//!
//! A write that fails for a passing reason (a locked database, a full disk, an I/O error) is
//! retried, never dropped: see `StoreError::is_transient` and the SQLite writer.

mod postgres;
pub mod rules;
mod sqlite;

pub use postgres::{PostgresOptions, PostgresStore};
pub use sqlite::{SqliteOptions, SqliteStore};

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::domain::{
    Agent, EpochMs, EventKind, ExecError, Execution, ExecutionId, ProcessGroup, Status, Usage, Wei,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Told with its causes: the client's own message alone ("db error", "error connecting to
    /// server") does not say what went wrong.
    #[error("database error: {}", postgres::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// No connection to the database could be had (the pool's own fault, or its limit).
    #[error("no database connection: {0}")]
    Connection(String),
    #[error("the store is shut down")]
    Closed,
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    #[error("cannot open the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    /// The write's execution is no longer this replica's: its lease was lost or moved on.
    #[error("fenced: {0}")]
    Fenced(String),
    /// The TLS the database URL asks for cannot be set up (e.g. its root certificate file).
    #[error("database TLS: {0}")]
    Tls(String),
    /// The store has not been able to write for longer than its outage limit.
    #[error("the store cannot write: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// Whether the same write may succeed later unchanged: the database is busy or locked by
    /// another process, the disk is full, an I/O error, memory ran out, the file cannot be
    /// opened or is read-only for now; for PostgreSQL, a lost or refused connection, a
    /// serialization failure or deadlock, a server shutting down or out of resources. Everything else (a constraint, corrupt data, a bug) fails
    /// the same way again.
    pub fn is_transient(&self) -> bool {
        use rusqlite::ErrorCode::*;
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                DatabaseBusy
                    | DatabaseLocked
                    | DiskFull
                    | SystemIoFailure
                    | OutOfMemory
                    | CannotOpen
                    | FileLockingProtocolFailed
                    | ReadOnly
            ),
            StoreError::Postgres(e) => postgres::is_transient(e),
            StoreError::Connection(_) => true,
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A new event on its way to the store; `seq` is assigned by the store on append.
#[derive(Debug)]
pub struct NewEvent {
    pub kind: EventKind,
    pub data: Box<RawValue>,
    pub timestamp: EpochMs,
}

#[derive(Debug)]
pub struct NewExecution {
    pub id: ExecutionId,
    pub agent: Agent,
    pub user_id: String,
    pub input: Value,
    pub created_at: EpochMs,
}

/// Figures an executor gathered over a run, recorded with the final status.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    pub peak_memory_bytes: Option<u64>,
    pub peak_cpu_percent: Option<f64>,
    pub log_lines: u64,
    pub log_lines_dropped: u64,
    /// What the run's telemetry reported (`reported: false` when nothing was).
    pub usage: Usage,
}

/// A requested status change. The store applies it only if the execution is in status `from`
/// and the status machine allows `from → to`, atomically with its `status` event.
#[derive(Debug)]
pub struct Transition {
    pub id: ExecutionId,
    pub from: Status,
    pub to: Status,
    pub at: EpochMs,
    pub output: Option<Value>,
    pub error: Option<ExecError>,
    pub exit_code: Option<i32>,
    pub stats: Option<RunStats>,
    /// The replica that runs it, recorded with the change to RUNNING.
    pub owner: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TransitionOutcome {
    Applied,
    /// The execution was in this status instead, or the change is not allowed.
    Refused(Status),
    /// FAILED was recorded with this cause instead of the status asked for: the execution's
    /// stream was cut short (see `LostStream`), or the database refused the change for good
    /// (`store_write_failed`). If it refused even the failure's status event, the end is in the
    /// execution's record alone and its stream has no final event.
    RecordedAsFailed(ExecError),
}

/// An execution whose stream the store had to cut short: some of its events could not be
/// stored (a fault outlasted the outage limit, or the database refuses them). Its later events
/// are discarded and its end is recorded as FAILED with `error`, whatever end is reported, so
/// the stored stream is everything up to the cut, gapless, then that final status.
#[derive(Debug, Clone)]
pub struct LostStream {
    pub id: ExecutionId,
    pub error: ExecError,
}

/// Whether the store can write, as its writer last found out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteHealth {
    Writing,
    /// Writes fail with a passing fault and are being retried, since `since`.
    Failing {
        since: EpochMs,
        error: String,
    },
}

#[derive(Debug, Default, Clone)]
pub struct ExecutionFilter {
    pub agent_id: Option<String>,
    pub status: Option<Status>,
    pub user_id: Option<String>,
    /// Only executions listed after this id, newest first: those with a smaller id, which
    /// need not exist (the pagination cursor).
    pub before: Option<ExecutionId>,
    pub limit: usize,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts an agent; `replace` overwrites one with the same id instead of failing.
    async fn put_agent(&self, agent: &Agent, from_config: bool, replace: bool) -> Result<()>;
    async fn delete_agent(&self, id: &str) -> Result<bool>;
    async fn get_agent(&self, id: &str) -> Result<Option<(Agent, bool)>>;
    async fn list_agents(&self) -> Result<Vec<Agent>>;

    /// Durably creates a PENDING execution together with its first event (seq 1).
    async fn create_execution(&self, new: NewExecution) -> Result<Execution>;
    /// Answers once the change is committed: through passing faults it is retried until it
    /// sticks; a change the database refuses for good is recorded as FAILED with the cause
    /// instead. An error means the store is closed, or refuses even that.
    async fn transition(&self, transition: Transition) -> Result<TransitionOutcome>;
    /// Appends events in order. Waits only when the write queue is full (backpressure, also
    /// while a passing fault is retried); the events become visible to readers once committed.
    /// Events for a finished execution, or one whose stream was cut short, are discarded.
    async fn append(&self, id: &ExecutionId, events: Vec<NewEvent>) -> Result<()>;
    /// Records the process group a process agent runs in (queued like `append`).
    async fn record_process(&self, id: &ExecutionId, process: ProcessGroup) -> Result<()>;
    /// Waits until everything queued before this call is committed.
    async fn flush(&self) -> Result<()>;

    async fn get_execution(&self, id: &ExecutionId) -> Result<Option<Execution>>;
    /// Executions newest first (by id), filtered.
    async fn list_executions(&self, filter: ExecutionFilter) -> Result<Vec<Execution>>;
    /// Executions left PENDING or RUNNING, oldest first: what a restart must recover.
    async fn unfinished_executions(&self) -> Result<Vec<Execution>>;
    /// Events after `since`, in order: at most `limit` of them, and none after the one that
    /// brings their data to `max_bytes` (so one page of long lines stays small).
    async fn events(
        &self,
        id: &ExecutionId,
        since: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<crate::domain::Event>>;
    /// Sum of the prices of an agent's completed executions, exact: those deleted by retention
    /// included (their sum is kept per agent when they are deleted).
    async fn revenue(&self, agent_id: &str) -> Result<Wei>;
    /// A real round trip to the database, for readiness; an error while writes fail.
    async fn ping(&self) -> Result<()>;
    /// Claims the oldest PENDING execution for `replica`, taking its lease for `lease`, and
    /// marks it RUNNING with its status event, in one transaction; `None` if none is waiting.
    /// For stores shared between replicas: a store of one server queues in process, and
    /// claims nothing.
    async fn claim_next(&self, _replica: &str, _lease: Duration) -> Result<Option<Execution>> {
        Ok(None)
    }
    /// Renews the leases `replica` holds. Those it cannot renew before they expire are lost:
    /// their streams are cut short (announced like any other) and their writes refused.
    /// Returns the executions renewed whose cancel was requested (`request_cancel`), for the
    /// owner to stop.
    async fn renew_leases(&self, _replica: &str, _lease: Duration) -> Result<Vec<ExecutionId>> {
        Ok(Vec::new())
    }
    /// Records a request to cancel a RUNNING execution, for whichever replica runs it: that
    /// replica learns of it when it next renews its leases. Nothing if it is not RUNNING. A
    /// store of one server records nothing: the server cancels what it runs itself.
    async fn request_cancel(&self, _id: &ExecutionId) -> Result<()> {
        Ok(())
    }
    /// Takes over expired leases and ends their executions FAILED `replica_lost` with their
    /// final event; returns those executions.
    async fn take_over_expired(&self, _replica: &str) -> Result<Vec<ExecutionId>> {
        Ok(Vec::new())
    }
    /// The writer's health, updated when it changes.
    fn write_health(&self) -> tokio::sync::watch::Receiver<WriteHealth>;

    /// Records `replica`'s heartbeat and takes (or renews, or leaves to its holder) the facts
    /// lease for `lease`: whoever holds it alone exports the cluster's facts. A store of one
    /// server has one replica, which always holds it.
    async fn cluster_heartbeat(&self, _replica: &str, _lease: Duration) -> Result<ClusterBeat> {
        Ok(ClusterBeat {
            replicas_seen: 1,
            holds_facts_lease: true,
        })
    }
    /// What belongs to the cluster rather than to one replica: each defined agent's exact
    /// revenue and the PENDING executions of the shared queue. Only shared stores are asked.
    async fn cluster_facts(&self) -> Result<ClusterFacts> {
        Err(StoreError::Corrupt(
            "a store of one server has no cluster facts".into(),
        ))
    }
    /// Removes `replica`'s heartbeat and gives up its facts lease (on an orderly stop).
    async fn leave_cluster(&self, _replica: &str) -> Result<()> {
        Ok(())
    }
    /// How many writes of this replica the fence refused since it started: writes for an
    /// execution whose lease it had lost or that had moved to another replica.
    fn fenced_writes(&self) -> u64 {
        0
    }

    /// Retention: deletes, in one short transaction, up to `batch.executions` finished
    /// executions (terminal status) that ended before `cutoff`, oldest end first, with their
    /// events, stopping before an execution that would bring the events deleted past
    /// `batch.events` (one execution is always taken). Unfinished executions are never
    /// deleted, whatever their age. The revenue of deleted COMPLETED executions is kept in a
    /// per-agent total, so `revenue` does not change. Returns how many executions this call
    /// deleted: fewer than `batch.executions` means none are left (or only ones over the
    /// events bound follow); several servers may run it at once, each row is deleted (and
    /// counted) once.
    async fn delete_finished_before(&self, cutoff: EpochMs, batch: RetentionBatch) -> Result<u64>;
    /// The database's size on disk in bytes: for SQLite the main file's pages plus the WAL,
    /// for PostgreSQL `pg_database_size` of the current database.
    async fn size_bytes(&self) -> Result<u64>;
}

/// What one heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterBeat {
    /// Replicas whose heartbeat is fresher than a lease, this one included.
    pub replicas_seen: u64,
    /// Whether this replica holds the facts lease now.
    pub holds_facts_lease: bool,
}

/// The facts that belong to the cluster, exported once (by the holder of the facts lease).
#[derive(Debug, Clone, Default)]
pub struct ClusterFacts {
    /// Every defined agent with its exact lifetime revenue.
    pub revenue: Vec<(Agent, Wei)>,
    /// PENDING executions in the shared queue.
    pub pending: u64,
}

/// How much one retention transaction may delete.
#[derive(Debug, Clone, Copy)]
pub struct RetentionBatch {
    pub executions: usize,
    pub events: u64,
}

impl Default for RetentionBatch {
    fn default() -> Self {
        RetentionBatch {
            executions: 500,
            events: 50_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::StoreError;
    use rusqlite::Connection;

    #[test]
    fn passing_faults_are_told_from_permanent_ones_by_their_sqlite_code() {
        let code = |code| {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(code),
                None,
            ))
        };
        for transient in [
            rusqlite::ffi::SQLITE_BUSY,
            rusqlite::ffi::SQLITE_LOCKED,
            rusqlite::ffi::SQLITE_FULL,
            rusqlite::ffi::SQLITE_IOERR_WRITE,
            rusqlite::ffi::SQLITE_IOERR_FSYNC,
        ] {
            assert!(code(transient).is_transient(), "{transient}");
        }
        for permanent in [
            rusqlite::ffi::SQLITE_CONSTRAINT_TRIGGER,
            rusqlite::ffi::SQLITE_CORRUPT,
            rusqlite::ffi::SQLITE_TOOBIG,
            rusqlite::ffi::SQLITE_MISMATCH,
        ] {
            assert!(!code(permanent).is_transient(), "{permanent}");
        }
        assert!(!StoreError::Corrupt("bad".into()).is_transient());

        // And as SQLite reports them.
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (x INTEGER PRIMARY KEY)")
            .unwrap();
        conn.execute("INSERT INTO t VALUES (1)", []).unwrap();
        let duplicate = conn.execute("INSERT INTO t VALUES (1)", []).unwrap_err();
        assert!(!StoreError::from(duplicate).is_transient());
    }
}
