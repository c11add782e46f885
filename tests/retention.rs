//! Retention through a real server: with `retention_days`, finished executions that ended
//! longer ago are deleted in the background, at start-up and then every
//! `retention_interval_secs`, and counted; recent and recovered ones stay; revenue does not
//! drop; the store's size is exported either way. The old executions are written beforehand
//! through the store itself, ended ten days ago. On SQLite and on PostgreSQL.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentnexus::bus::LocalBus;
use agentnexus::config::DatabaseUrl;
use agentnexus::domain::{Execution, ExecutionId, Status, now_ms};
use agentnexus::store::{
    NewExecution, PostgresOptions, PostgresStore, SqliteOptions, SqliteStore, Store, Transition,
};
use common::postgres::{Route, database};
use common::{TestServer, scrape, sh_agent};
use reqwest::StatusCode;
use serde_json::json;
use tempfile::TempDir;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;
const PRICE: u128 = 5;

#[derive(Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// Executions of agent `shop` left by an earlier run: `completed` of them ended ten days ago,
/// and one still RUNNING since then (a restart ends it FAILED, now).
struct Earlier {
    data: TempDir,
    database_url: Option<String>,
    completed: Vec<ExecutionId>,
    running: ExecutionId,
}

/// `None` when the backend is not installed (after `common::skip`).
async fn earlier_run(backend: Backend, completed: usize) -> Option<Earlier> {
    let data = tempfile::tempdir().unwrap();
    let (lost, _lost) = tokio::sync::mpsc::unbounded_channel();
    let outage_limit = Duration::from_secs(30);
    let bus = Arc::new(LocalBus::new());
    let (store, database_url): (Arc<dyn Store>, _) = match backend {
        Backend::Sqlite => {
            let options = SqliteOptions {
                sync_commits: false,
                outage_limit,
            };
            let store = SqliteStore::open(data.path(), options, bus, lost).unwrap();
            (Arc::new(store), None)
        }
        Backend::Postgres => {
            let url = database(Route::Direct)?;
            let options = PostgresOptions { outage_limit };
            let store = PostgresStore::open(&url, options, bus, lost).await.unwrap();
            (Arc::new(store), Some(url))
        }
    };
    let agent = common::test_config(data.path())
        .agent(&shop())
        .expect("a valid agent");
    let long_ago = now_ms() - 10 * DAY_MS;
    let mut started = Vec::new();
    for _ in 0..=completed {
        let execution = store
            .create_execution(NewExecution {
                id: ExecutionId::generate(),
                agent: agent.clone(),
                user_id: "local".into(),
                input: json!({}),
                created_at: long_ago,
            })
            .await
            .unwrap();
        change(
            &*store,
            &execution,
            Status::Pending,
            Status::Running,
            long_ago,
        )
        .await;
        started.push(execution);
    }
    let running = started.pop().unwrap().execution_id;
    for execution in &started {
        change(
            &*store,
            execution,
            Status::Running,
            Status::Completed,
            long_ago,
        )
        .await;
    }
    store.flush().await.unwrap();
    Some(Earlier {
        data,
        database_url,
        completed: started.into_iter().map(|e| e.execution_id).collect(),
        running,
    })
}

async fn change(store: &dyn Store, e: &Execution, from: Status, to: Status, at: i64) {
    let t = Transition {
        id: e.execution_id.clone(),
        from,
        to,
        at,
        output: None,
        error: None,
        exit_code: None,
        stats: None,
        owner: None,
    };
    store.transition(t).await.unwrap();
}

fn shop() -> agentnexus::config::ConfigAgent {
    sh_agent("shop", &PRICE.to_string(), "echo sold")
}

async fn start(earlier: &Earlier, retention_days: u32) -> TestServer {
    let data = earlier.data.path().to_owned();
    let database_url = earlier.database_url.clone().map(DatabaseUrl::new);
    TestServer::start_with(vec![shop()], move |config| {
        config.data_dir = data;
        config.database_url = database_url;
        config.retention_days = retention_days;
        config.retention_interval_secs = 1;
    })
    .await
}

/// A metric without labels, once it has been set.
async fn metric(server: &TestServer, name: &str) -> Option<f64> {
    let text = scrape(&server.url).await;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

async fn exists(server: &TestServer, id: &ExecutionId) -> bool {
    let (status, _) = server.client.get(&format!("/api/executions/{id}")).await;
    status == StatusCode::OK
}

async fn revenue(server: &TestServer) -> String {
    let (_, body) = server.client.get("/api/agents/shop/revenue").await;
    body["revenueWei"].as_str().unwrap().to_owned()
}

/// Waits (boundedly) until `done` holds.
async fn eventually<F: AsyncFn() -> bool>(what: &str, done: F) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_finished_executions_past_retention_are_deleted() {
    finished_executions_past_retention_are_deleted_and_counted_and_revenue_stays(Backend::Sqlite)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_finished_executions_past_retention_are_deleted() {
    finished_executions_past_retention_are_deleted_and_counted_and_revenue_stays(Backend::Postgres)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_without_retention_nothing_is_deleted() {
    without_retention_nothing_is_deleted_and_the_size_is_still_exported(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_without_retention_nothing_is_deleted() {
    without_retention_nothing_is_deleted_and_the_size_is_still_exported(Backend::Postgres).await;
}

async fn finished_executions_past_retention_are_deleted_and_counted_and_revenue_stays(
    backend: Backend,
) {
    let Some(earlier) = earlier_run(backend, 3).await else {
        return;
    };
    let mut server = start(&earlier, 1).await;
    let recent = server.client.submit("shop", json!({})).await;
    server
        .client
        .wait_terminal(&recent, Duration::from_secs(30))
        .await;

    let old = &earlier.completed;
    eventually("the old executions are deleted", async || {
        for id in old {
            if exists(&server, id).await {
                return false;
            }
        }
        true
    })
    .await;
    let deleted = metric(&server, "agentnexus_retention_deleted_executions_total").await;
    assert_eq!(deleted, Some(3.0));
    assert!(metric(&server, "agentnexus_store_size_bytes").await > Some(0.0));
    // The three deleted ones still count, with the one just run.
    assert_eq!(revenue(&server).await, (4 * PRICE).to_string());
    assert!(
        exists(&server, &ExecutionId::parse(&recent).unwrap()).await,
        "a recent one stays"
    );
    assert!(
        exists(&server, &earlier.running).await,
        "one left running stays: it ended only now, at the restart"
    );
    server.stop().await;
}

async fn without_retention_nothing_is_deleted_and_the_size_is_still_exported(backend: Backend) {
    let Some(earlier) = earlier_run(backend, 2).await else {
        return;
    };
    let mut server = start(&earlier, 0).await;
    // The size is measured after retention's turn, so once it shows, that turn is over.
    eventually("the store's size is measured", async || {
        metric(&server, "agentnexus_store_size_bytes").await > Some(0.0)
    })
    .await;
    for id in &earlier.completed {
        assert!(exists(&server, id).await, "{id} is kept");
    }
    let deleted = metric(&server, "agentnexus_retention_deleted_executions_total").await;
    assert_eq!(deleted, Some(0.0));
    assert_eq!(revenue(&server).await, (2 * PRICE).to_string());
    server.stop().await;
}
