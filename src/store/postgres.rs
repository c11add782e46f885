//! The shared store: one PostgreSQL database, reached through a small connection pool, directly
//! or through a transaction-pooling proxy such as PgBouncer. Hence no session state: no `SET`,
//! no `LISTEN`, no named prepared statements (every statement is sent unnamed, with its
//! parameter types, in one round trip), and each write is one transaction.
//!
//! The database assigns `seq` numbers: an append raises the execution's `last_seq` by its
//! number of events in the transaction that inserts them, which locks the execution's row, so
//! seqs are gapless whoever writes. A status change locks the row, is decided by
//! `rules::decide` on what it finds, and commits with its status event. Committed events are
//! published to the bus after the commit. Migrations run under a transaction-level advisory
//! lock, so replicas that start together apply each one once.

mod cluster;
mod leases;
mod reads;
mod retention;
mod tls;
mod writes;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::{mpsc, watch};

use super::{
    ClusterBeat, ClusterFacts, ExecutionFilter, LostStream, NewEvent, NewExecution, Result,
    RetentionBatch, Store, StoreError, Transition, TransitionOutcome, WriteHealth,
};
use crate::bus::Bus;
use crate::domain::{
    Agent, EpochMs, Event, ExecError, Execution, ExecutionId, ProcessGroup, Wei, now_ms,
};

/// Schema versions, applied in order; `schema_migrations` records those that have run.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/postgres/0001_init.sql"),
    include_str!("migrations/postgres/0002_retention.sql"),
    include_str!("migrations/postgres/0003_owner.sql"),
    include_str!("migrations/postgres/0004_leases.sql"),
    include_str!("migrations/postgres/0005_cancel_requests.sql"),
    include_str!("migrations/postgres/0006_cluster.sql"),
    include_str!("migrations/postgres/0007_usage.sql"),
];
/// The advisory lock key the migrations run under (any constant; "agentnexus" in ASCII).
const MIGRATION_LOCK: i64 = 0x6167_656e_746e_6578;
/// Connections held at most: writes of different executions run in parallel.
const POOL_SIZE: usize = 16;
/// A connection not made by then is a passing fault (the default when the URL sets none): a
/// database host that drops packets must not hang a write forever.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a write waits for a free pooled connection before that counts as a passing fault.
const POOL_WAIT: Duration = Duration::from_secs(10);
/// Waits between attempts while a passing fault lasts: doubling from the first to the last.
/// How long the database waits on this replica inside a write transaction before it ends the
/// transaction and its session. A write sends its statements back to back; a replica silent
/// that long mid-write is frozen or cut off, and the rows it locked would otherwise stay locked
/// until it comes back: a takeover skips locked rows, so its executions would never end.
const IDLE_IN_WRITE_MS: u64 = 5000;
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How the shared store connects and writes.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// How long a write is retried through a passing fault before its events are given up
    /// (their executions end FAILED `store_unavailable`). Status changes are retried longer.
    pub outage_limit: Duration,
}

pub struct PostgresStore {
    pool: Pool,
    bus: Arc<dyn Bus>,
    lost: mpsc::UnboundedSender<LostStream>,
    health: watch::Sender<WriteHealth>,
    health_watch: watch::Receiver<WriteHealth>,
    outage_limit: Duration,
    /// Executions whose streams were cut short, until their final status is committed.
    cut_short: Mutex<HashMap<ExecutionId, ExecError>>,
    /// The leases this replica took, until their executions end (`leases`).
    leases: Mutex<HashMap<ExecutionId, leases::Held>>,
    /// When the leases were last renewed (or none were held).
    last_renewal: Mutex<Instant>,
    /// Writes of this replica the fence refused since it started (`leases::fence`).
    fenced_writes: AtomicU64,
}

/// How long a write keeps trying through a passing fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Persist {
    /// Until the outage limit, then `Unavailable`.
    UntilOutageLimit,
    /// Until it sticks: an execution must not stay unfinished.
    UntilItSticks,
}

impl PostgresStore {
    /// Connects to the database at `url` (a `postgres://` URL), migrates it and returns the
    /// store. Committed batches are published on `bus`; executions whose streams the store cuts
    /// short are announced on `lost`.
    pub async fn open(
        url: &str,
        options: PostgresOptions,
        bus: Arc<dyn Bus>,
        lost: mpsc::UnboundedSender<LostStream>,
    ) -> Result<PostgresStore> {
        let (url, check) = crate::config::client_url(url).map_err(StoreError::Tls)?;
        let mut config = tokio_postgres::Config::from_str(&url)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("agentnexus");
        }
        let manager = Manager::from_config(
            config,
            tls::connector(&check)?,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Connection(e.to_string()))?;
        let (health, health_watch) = watch::channel(WriteHealth::Writing);
        let store = PostgresStore {
            pool,
            bus,
            lost,
            health,
            health_watch,
            outage_limit: options.outage_limit,
            cut_short: Mutex::new(HashMap::new()),
            leases: Mutex::new(HashMap::new()),
            last_renewal: Mutex::new(Instant::now()),
            fenced_writes: AtomicU64::new(0),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Client> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => StoreError::Postgres(e),
            other => StoreError::Connection(other.to_string()),
        })
    }

    /// Begins a transaction that locks executions' rows, given up by the database (with its
    /// session) when this replica stalls in it for `IDLE_IN_WRITE_MS`. `SET LOCAL` lasts the
    /// transaction only, as a transaction-pooling proxy requires.
    async fn begin<'a>(
        client: &'a mut deadpool_postgres::Client,
    ) -> Result<deadpool_postgres::Transaction<'a>> {
        let tx = client.transaction().await?;
        tx.batch_execute(&format!(
            "SET LOCAL idle_in_transaction_session_timeout = {IDLE_IN_WRITE_MS}"
        ))
        .await?;
        Ok(tx)
    }

    /// Applies the migrations not yet applied, each in one transaction under an advisory lock
    /// that is released with it: a replica starting at the same time waits, then finds them done.
    async fn migrate(&self) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.batch_execute(&format!(
            "SELECT pg_advisory_xact_lock({MIGRATION_LOCK});
             CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    INTEGER PRIMARY KEY,
                 applied_at BIGINT NOT NULL
             );"
        ))
        .await?;
        let row = tx
            .query_typed_one(
                "SELECT coalesce(max(version), 0) FROM schema_migrations",
                &[],
            )
            .await?;
        let applied = row.get::<_, i32>(0) as usize;
        if applied > MIGRATIONS.len() {
            return Err(StoreError::Corrupt(format!(
                "the database has schema version {applied}, newer than this build knows ({})",
                MIGRATIONS.len()
            )));
        }
        for (version, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
            tx.batch_execute(sql).await?;
            let version = version as i32 + 1;
            tx.execute_typed(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                &[
                    (&version, tokio_postgres::types::Type::INT4),
                    (&now_ms(), tokio_postgres::types::Type::INT8),
                ],
            )
            .await?;
            tracing::info!(version, "database schema migrated");
        }
        tx.commit().await?;
        Ok(())
    }

    /// Runs `attempt` until it succeeds, retrying passing faults with backoff (as `persist`
    /// says) and reporting them in the write health; a permanent failure is returned at once.
    async fn write<T, F, Fut>(&self, persist: Persist, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut outage: Option<(Instant, u32)> = None;
        loop {
            match attempt().await {
                Ok(value) => {
                    if let Some((since, attempts)) = outage {
                        tracing::info!(after = ?since.elapsed(), attempts, "the store writes again");
                        self.health.send_replace(WriteHealth::Writing);
                    }
                    return Ok(value);
                }
                Err(e) if e.is_transient() => {
                    let (since, attempts) = outage.get_or_insert_with(|| {
                        tracing::error!(error = %e, limit = ?self.outage_limit, "the store cannot write; retrying");
                        self.health.send_replace(WriteHealth::Failing {
                            since: now_ms(),
                            error: e.to_string(),
                        });
                        (Instant::now(), 0)
                    });
                    *attempts = attempts.saturating_add(1);
                    if persist == Persist::UntilOutageLimit && since.elapsed() >= self.outage_limit
                    {
                        return Err(StoreError::Unavailable(e.to_string()));
                    }
                    tokio::time::sleep(backoff(*attempts)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Cuts an execution's stream short (once), announcing it.
    fn cut_short(&self, id: &ExecutionId, error: ExecError) {
        let mut cut = self.cut_short.lock().unwrap();
        if cut.contains_key(id) {
            return;
        }
        tracing::error!(execution = %id, cause = %error.kind, message = %error.message, "an execution's stream is cut short");
        cut.insert(id.clone(), error.clone());
        let _ = self.lost.send(LostStream {
            id: id.clone(),
            error,
        });
    }

    fn cut_short_cause(&self, id: &ExecutionId) -> Option<ExecError> {
        self.cut_short.lock().unwrap().get(id).cloned()
    }

    fn publish(&self, id: &ExecutionId, events: Vec<Event>, finished: bool) {
        self.bus.publish(id, events, finished);
    }
}

/// Whether a PostgreSQL error may pass: the connection failed or was lost, the server is
/// shutting down, starting, or out of resources (class 53: disk, memory, connections), or the
/// transaction lost a serialization or deadlock conflict.
pub(super) fn is_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        let code = code.code();
        return code.starts_with("08")
            || code.starts_with("53")
            || matches!(
                code,
                "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "58030"
            );
    }
    // No answer from the server: a connection that could not be made or broke (I/O). A TLS
    // handshake that failed on the server's certificate comes as I/O too, but fails the same
    // way again.
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return io
                .get_ref()
                .is_none_or(|inner| inner.downcast_ref::<rustls::Error>().is_none());
        }
        source = cause.source();
    }
    false
}

/// A PostgreSQL error with its causes, e.g. "db error: FATAL: database \"x\" does not exist"
/// or "error connecting to server: Connection refused (os error 111)". Neither the client nor
/// the server puts the password in them.
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn backoff(attempts: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << attempts.saturating_sub(1).min(10))
        .min(MAX_BACKOFF)
}

#[async_trait]
impl Store for PostgresStore {
    async fn put_agent(&self, agent: &Agent, from_config: bool, replace: bool) -> Result<()> {
        self.write(Persist::UntilOutageLimit, || {
            writes::put_agent(self, agent, from_config, replace)
        })
        .await?
    }

    async fn delete_agent(&self, id: &str) -> Result<bool> {
        self.write(Persist::UntilOutageLimit, || writes::delete_agent(self, id))
            .await
    }

    async fn get_agent(&self, id: &str) -> Result<Option<(Agent, bool)>> {
        reads::get_agent(self, id).await
    }

    async fn list_agents(&self) -> Result<Vec<Agent>> {
        reads::list_agents(self).await
    }

    async fn create_execution(&self, new: NewExecution) -> Result<Execution> {
        let event = self
            .write(Persist::UntilOutageLimit, || writes::create(self, &new))
            .await?;
        self.publish(&new.id, vec![event], false);
        Ok(super::rules::new_execution(&new))
    }

    async fn transition(&self, transition: Transition) -> Result<TransitionOutcome> {
        writes::transition(self, transition).await
    }

    async fn append(&self, id: &ExecutionId, events: Vec<NewEvent>) -> Result<()> {
        writes::append(self, id, events).await
    }

    async fn record_process(&self, id: &ExecutionId, process: ProcessGroup) -> Result<()> {
        let recorded = self
            .write(Persist::UntilOutageLimit, || {
                writes::record_process(self, id, &process)
            })
            .await;
        if let Err(e) = recorded {
            tracing::warn!(execution = %id, error = %e, "the process group of an execution was not recorded");
        }
        Ok(())
    }

    /// Every write answers once committed: nothing is queued.
    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    async fn get_execution(&self, id: &ExecutionId) -> Result<Option<Execution>> {
        reads::get_execution(self, id).await
    }

    async fn list_executions(&self, filter: ExecutionFilter) -> Result<Vec<Execution>> {
        reads::list_executions(self, filter).await
    }

    async fn unfinished_executions(&self) -> Result<Vec<Execution>> {
        reads::unfinished_executions(self).await
    }

    async fn events(
        &self,
        id: &ExecutionId,
        since: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>> {
        reads::events(self, id, since, limit, max_bytes).await
    }

    async fn revenue(&self, agent_id: &str) -> Result<Wei> {
        reads::revenue(self, agent_id).await
    }

    /// Fails while writes fail; otherwise a round trip on a pooled connection.
    async fn ping(&self) -> Result<()> {
        if let WriteHealth::Failing { error, .. } = &*self.health_watch.borrow() {
            return Err(StoreError::Unavailable(error.clone()));
        }
        let client = self.client().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }

    async fn claim_next(&self, replica: &str, lease: Duration) -> Result<Option<Execution>> {
        leases::claim_next(self, replica, lease).await
    }

    async fn renew_leases(&self, replica: &str, lease: Duration) -> Result<Vec<ExecutionId>> {
        leases::renew(self, replica, lease).await
    }

    async fn request_cancel(&self, id: &ExecutionId) -> Result<()> {
        leases::request_cancel(self, id).await
    }

    async fn take_over_expired(&self, replica: &str) -> Result<Vec<ExecutionId>> {
        leases::take_over_expired(self, replica).await
    }

    fn write_health(&self) -> watch::Receiver<WriteHealth> {
        self.health_watch.clone()
    }

    async fn cluster_heartbeat(&self, replica: &str, lease: Duration) -> Result<ClusterBeat> {
        cluster::heartbeat(self, replica, lease).await
    }

    async fn cluster_facts(&self) -> Result<ClusterFacts> {
        cluster::facts(self).await
    }

    async fn leave_cluster(&self, replica: &str) -> Result<()> {
        cluster::leave(self, replica).await
    }

    fn fenced_writes(&self) -> u64 {
        self.fenced_writes.load(Ordering::Relaxed)
    }

    async fn delete_finished_before(&self, cutoff: EpochMs, batch: RetentionBatch) -> Result<u64> {
        // A batch whose commit answer was lost is not repeated: its rows are gone, so a retry
        // deletes the next ones (and only this call's count misses them).
        self.write(Persist::UntilOutageLimit, || {
            retention::delete_finished_before(self, cutoff, batch)
        })
        .await
    }

    async fn size_bytes(&self) -> Result<u64> {
        retention::size_bytes(self).await
    }
}
