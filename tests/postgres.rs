//! The runtime on PostgreSQL (`database_url`): a server keeps everything in the database, so a
//! restarted one, even with another data directory, finds every execution and event; replicas
//! starting together migrate the schema once; writes go on, each stored once, while the
//! database drops connections; the URL's password never shows; a bad URL is refused naming the
//! key. The store's own behaviours are in the store contract suite.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use agentnexus::bus::{Bus, LocalBus};
use agentnexus::domain::{Agent, EventKind, ExecutionId, Runtime, Wei, now_ms};
use agentnexus::store::{
    ExecutionFilter, NewEvent, NewExecution, PostgresOptions, PostgresStore, Store, WriteHealth,
};
use common::postgres::{Route, database, terminate_connections};
use common::{Client, LoggedServer, assert_gapless, free_port, log_lines, statuses, write_config};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

const AGENTS: &str = r#"
[[agents]]
id = "echo"
name = "Echo"
price_wei = "7"
runtime = { type = "process", command = "sh", args = ["-c", "echo first; echo second; echo '{\"done\": true}'"] }
"#;

/// The URL with a password in it: the test cluster trusts everyone, so any password connects.
fn with_password(url: &str) -> String {
    url.replacen("postgres@", "postgres:hunter2@", 1)
}

#[tokio::test]
async fn a_server_on_postgres_keeps_executions_and_events_across_a_restart() {
    let Some(url) = database(Route::Direct) else {
        return;
    };
    let url = with_password(&url);
    let first_dir = tempfile::tempdir().unwrap();
    let config = write_config(first_dir.path(), AGENTS);
    // The URL by environment variable the first time ...
    let server = LoggedServer::spawn(&config, &[("AGENTNEXUS_DATABASE_URL", &url)]);
    let client = Client::new(&server.url);
    let id = client.submit("echo", json!({"n": 1})).await;
    let done = client.wait_terminal(&id, WAIT).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["output"], json!({"done": true}));
    let events = client.all_events(&id).await;
    assert_gapless(&events);
    assert_eq!(log_lines(&events), ["first", "second", "{\"done\": true}"]);
    assert_eq!(statuses(&events), ["PENDING", "RUNNING", "COMPLETED"]);
    let log = server.stop();
    assert!(log.contains("keeping state in PostgreSQL"), "{log}");
    assert!(
        !log.contains("hunter2"),
        "the database password shows in the log"
    );
    assert!(
        !first_dir.path().join("data/agentnexus.db").exists(),
        "nothing is kept in SQLite"
    );

    // ... and in the configuration file the second time, with a data directory of its own.
    let second_dir = tempfile::tempdir().unwrap();
    let config = write_config(
        second_dir.path(),
        &format!("database_url = \"{url}\"\n{AGENTS}"),
    );
    let server = LoggedServer::spawn(&config, &[]);
    let client = Client::new(&server.url);
    let again = client.execution(&id).await;
    assert_eq!(again["status"], "COMPLETED");
    assert_eq!(again["output"], done["output"]);
    assert_eq!(client.all_events(&id).await, events);
    let (status, revenue) = client.get("/api/agents/echo/revenue").await;
    assert!(status.is_success(), "{revenue}");
    assert_eq!(revenue["revenueWei"], "7", "{revenue}");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_the_schema_once() {
    let Some(url) = database(Route::PgBouncer) else {
        return;
    };
    let opened = futures_util::future::join_all((0..6).map(|_| {
        let bus: Arc<dyn Bus> = Arc::new(LocalBus::new());
        let (lost, _) = tokio::sync::mpsc::unbounded_channel();
        let options = PostgresOptions {
            outage_limit: Duration::from_secs(5),
        };
        let url = url.clone();
        async move { PostgresStore::open(&url, options, bus, lost).await }
    }))
    .await;
    for store in opened {
        let store = store.expect("every replica opens the database");
        let listed = store.list_executions(ExecutionFilter {
            limit: 1,
            ..Default::default()
        });
        assert!(listed.await.unwrap().is_empty());
    }
}

#[test]
fn a_database_url_that_is_not_postgres_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let output = Command::new(env!("CARGO_BIN_EXE_agentnexus"))
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--database-url", "mysql://app:hunter2@db/agentnexus"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("database_url"), "{stderr}");
    assert!(stderr.contains("postgres://"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[tokio::test]
async fn a_database_that_cannot_be_reached_is_a_passing_fault_and_a_missing_one_is_not() {
    let Some(url) = database(Route::Direct) else {
        return;
    };
    let open = |url: String| async move {
        let bus: Arc<dyn Bus> = Arc::new(LocalBus::new());
        let (lost, _) = tokio::sync::mpsc::unbounded_channel();
        let options = PostgresOptions {
            outage_limit: Duration::from_secs(5),
        };
        PostgresStore::open(&url, options, bus, lost).await
    };
    // Nothing listens on a port just freed: the server is down (or restarting).
    let port = free_port();
    let down = open(format!(
        "postgres://postgres@127.0.0.1:{port}/x?sslmode=disable"
    ))
    .await;
    let down = down.err().expect("nothing to connect to");
    assert!(down.is_transient(), "{down}");
    // A database that does not exist stays missing, however often it is asked for.
    let (base, _) = url.rsplit_once('/').unwrap();
    let missing = open(format!("{base}/no_such_database")).await;
    let missing = missing.err().expect("no such database");
    assert!(!missing.is_transient(), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_on_after_the_database_drops_every_connection() {
    let Some(url) = database(Route::Direct) else {
        return;
    };
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::new());
    let (lost, mut lost_streams) = tokio::sync::mpsc::unbounded_channel();
    let options = PostgresOptions {
        outage_limit: Duration::from_secs(30),
    };
    let store = PostgresStore::open(&url, options, bus, lost).await.unwrap();
    let agent = Agent {
        id: "a".into(),
        name: "A".into(),
        price_wei: Wei(1),
        timeout_secs: 60,
        input_schema: None,
        budget: Default::default(),
        runtime: Runtime::Process {
            command: "true".into(),
            args: vec![],
            env: Default::default(),
            workdir: None,
        },
    };
    let execution = store
        .create_execution(NewExecution {
            id: ExecutionId::generate(),
            agent,
            user_id: "u".into(),
            input: json!({}),
            created_at: now_ms(),
        })
        .await
        .unwrap();
    let id = &execution.execution_id;
    let line = |n: usize| NewEvent {
        kind: EventKind::Log,
        data: serde_json::value::to_raw_value(&json!({"stream": "stdout", "line": n})).unwrap(),
        timestamp: now_ms(),
    };
    // Connections are ended while lines are being written, so some writes fail in flight.
    const LINES: usize = 300;
    let writing = async {
        for n in 0..LINES {
            store.append(id, vec![line(n)]).await.unwrap();
        }
    };
    let terminating = tokio::task::spawn_blocking({
        let url = url.clone();
        move || (0..20).map(|_| terminate_connections(&url)).sum::<usize>()
    });
    let (_, terminated) = tokio::join!(writing, terminating);
    assert!(terminated.unwrap() > 0, "connections were ended");

    let events = store.events(id, 0, 1000, usize::MAX).await.unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "gapless"
    );
    let lines: Vec<u64> = events[1..]
        .iter()
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(e.data.get()).unwrap()["line"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        lines,
        (0..LINES as u64).collect::<Vec<_>>(),
        "every line stored once, in order"
    );
    assert!(lost_streams.try_recv().is_err(), "no stream was cut short");
    assert_eq!(*store.write_health().borrow(), WriteHealth::Writing);
    store.ping().await.unwrap();
}
