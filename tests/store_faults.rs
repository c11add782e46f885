//! Store faults, made for real against the real SQLite file: another process holding the write
//! lock past the busy timeout, a full filesystem, a fault that outlasts the outage limit, and
//! writes the database refuses for good. Whatever happens, no accepted event is dropped or
//! stored twice, every execution ends with a recorded cause, cancel keeps working, and
//! readiness tells the truth and recovers by itself.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::faults::{Tmpfs, WriteLock};
use common::witness::{Witness, assert_counted_lines, assert_seen_stored_and_ended};
use common::{TestServer, log_lines, sh_agent, statuses};
use reqwest::StatusCode;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// 40 lines, 100 ms apart.
const FORTY_LINES: &str =
    r#"i=1; while [ $i -le 40 ]; do echo "line $i"; i=$((i+1)); sleep 0.1; done"#;

fn database(server: &TestServer) -> PathBuf {
    server.dir.path().join("data").join("agentnexus.db")
}

async fn database_gauge(server: &TestServer) -> Option<f64> {
    let text = common::scrape(&server.url).await;
    text.lines()
        .find(|l| l.split([' ', '{']).next() == Some("agentnexus_database_healthy"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Polls until `check` holds (or `within` passes).
async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Readiness becomes `ready` (and the database check and gauge agree), without being asked
/// to: the gauge is polled first, so it is the background probe that set it.
async fn wait_readiness(server: &TestServer, ready: bool) {
    let gauge = if ready { 1.0 } else { 0.0 };
    eventually("the database gauge follows the store", WAIT, || async {
        database_gauge(server).await == Some(gauge)
    })
    .await;
    let (status, body) = server.client.get("/health/ready").await;
    if ready {
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["checks"]["database"]["status"], "ok", "{body}");
    } else {
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["status"], "unhealthy", "{body}");
        assert_eq!(body["checks"]["database"]["status"], "error", "{body}");
    }
}

async fn wait_stored_lines(server: &TestServer, id: &str, count: usize) {
    eventually("lines are stored", WAIT, || async {
        log_lines(&server.client.all_events(id).await).len() >= count
    })
    .await;
}

/// The pid an agent printed as its first line (`pid N`).
async fn agent_pid(server: &TestServer, id: &str) -> i32 {
    wait_stored_lines(server, id, 1).await;
    let lines = log_lines(&server.client.all_events(id).await);
    lines[0].strip_prefix("pid ").unwrap().parse().unwrap()
}

/// After a run of FORTY_LINES through a fault: every line stored once, in order, the run
/// COMPLETED, and the client following it saw exactly the stored stream.
async fn assert_forty_lines_complete(server: &TestServer, id: &str, witness: Witness) {
    let execution = server.client.wait_terminal(id, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    let stored = server.client.all_events(id).await;
    let expected: Vec<String> = (1..=40).map(|i| format!("line {i}")).collect();
    assert_eq!(log_lines(&stored), expected);
    assert_eq!(statuses(&stored), ["PENDING", "RUNNING", "COMPLETED"]);
    let seen = witness.finish(WAIT).await;
    assert_seen_stored_and_ended(&seen, &stored);
    assert_eq!(seen.len(), stored.len(), "the client missed events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_lock_held_past_the_busy_timeout_loses_nothing_and_cancel_still_works() {
    let agents = vec![
        sh_agent("lines", "1", FORTY_LINES),
        sh_agent("sleeper", "1", "echo pid $$; exec sleep 300"),
    ];
    let server = TestServer::start_with(agents, |c| c.docker.enabled = false).await;
    let sleeper = server.client.submit("sleeper", json!({})).await;
    let sleeper_pid = agent_pid(&server, &sleeper).await;
    let lines = server.client.submit("lines", json!({})).await;
    let witness = Witness::follow(&server.url, &lines).await;
    wait_stored_lines(&server, &lines, 1).await;

    // Another process holds the write lock for 12 s: far past the writer's busy timeout.
    let Some(mut lock) = WriteLock::hold(&database(&server), Duration::from_secs(12)) else {
        return;
    };
    wait_readiness(&server, false).await;
    // Cancel answers (it does not say 503), and the agent is stopped while the fault lasts.
    let (status, body) = server
        .client
        .post(&format!("/api/executions/{sleeper}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("the cancelled agent is stopped", WAIT, || async {
        common::process_is_gone(sleeper_pid)
    })
    .await;
    assert!(lock.held(), "the checks above must run during the fault");
    assert_eq!(server.client.execution(&lines).await["status"], "RUNNING");
    lock.release();

    wait_readiness(&server, true).await;
    assert_forty_lines_complete(&server, &lines, witness).await;
    let cancelled = server.client.wait_terminal(&sleeper, WAIT).await;
    assert_eq!(cancelled["status"], "CANCELLED", "{cancelled}");
    assert_eq!(cancelled["error"]["kind"], "cancelled");
    assert_eq!(
        statuses(&server.client.all_events(&sleeper).await),
        ["PENDING", "RUNNING", "CANCELLED"]
    );
    // The finished execution is no longer cancellable: a conflict, not "shutting down".
    let (status, body) = server
        .client
        .post(&format!("/api/executions/{lines}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_filesystem_holds_the_writes_until_space_is_freed() {
    let base = tempfile::tempdir().unwrap();
    let data = base.path().join("data");
    let Some(tmpfs) = Tmpfs::mount(&data, 16 * 1024 * 1024) else {
        return;
    };
    let agents = vec![sh_agent("lines", "1", FORTY_LINES)];
    let server = TestServer::start_with(agents, |c| {
        c.data_dir = data.clone();
        c.docker.enabled = false;
    })
    .await;
    let lines = server.client.submit("lines", json!({})).await;
    let witness = Witness::follow(&server.url, &lines).await;
    wait_stored_lines(&server, &lines, 1).await;

    let filler = tmpfs.fill();
    wait_readiness(&server, false).await;
    let during = server.client.execution(&lines).await;
    assert_eq!(during["status"], "RUNNING", "{during}");
    std::fs::remove_file(&filler).unwrap();

    wait_readiness(&server, true).await;
    assert_forty_lines_complete(&server, &lines, witness).await;
    drop(server);
    drop(tmpfs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_that_outlasts_the_limit_fails_the_runs_it_cut_short_without_a_hole() {
    let agents = vec![
        sh_agent(
            "chatty",
            "1",
            r#"echo pid $$; i=1; while true; do echo "line $i"; i=$((i+1)); sleep 0.05; done"#,
        ),
        sh_agent("quick", "1", r#"echo queued; echo '{"ok": true}'"#),
    ];
    let server = TestServer::start_with(agents, |c| {
        c.store_outage_limit_secs = 2;
        c.max_concurrent_executions = 1;
        c.docker.enabled = false;
    })
    .await;
    let chatty = server.client.submit("chatty", json!({})).await;
    let witness = Witness::follow(&server.url, &chatty).await;
    let chatty_pid = agent_pid(&server, &chatty).await;
    let queued = server.client.submit("quick", json!({})).await;
    wait_stored_lines(&server, &chatty, 5).await;

    let Some(mut lock) = WriteLock::hold(&database(&server), Duration::ZERO) else {
        return;
    };
    wait_readiness(&server, false).await;
    // Past the limit the store answers what it cannot do, instead of keeping callers waiting.
    let (status, body) = server
        .client
        .post("/api/executions", json!({"agentId": "quick"}))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    // The run whose events could not be stored is stopped.
    eventually("the cut-short agent is stopped", WAIT, || async {
        common::process_is_gone(chatty_pid)
    })
    .await;
    assert!(lock.held(), "the checks above must run during the fault");
    lock.release();

    let failed = server.client.wait_terminal(&chatty, WAIT).await;
    assert_eq!(failed["status"], "FAILED", "{failed}");
    assert_eq!(failed["error"]["kind"], "store_unavailable", "{failed}");
    let stored = server.client.all_events(&chatty).await;
    assert_eq!(statuses(&stored), ["PENDING", "RUNNING", "FAILED"]);
    assert_counted_lines(&stored, "line ");
    let last = assert_seen_stored_and_ended(&witness.finish(WAIT).await, &stored);
    assert_eq!(last["data"]["error"]["kind"], "store_unavailable");

    // Queued work was not concerned: it runs once the store is back. The refused submission
    // left nothing behind.
    let execution = server.client.wait_terminal(&queued, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    assert_eq!(execution["output"], json!({"ok": true}));
    let (_, list) = server.client.get("/api/executions").await;
    assert_eq!(list["executions"].as_array().unwrap().len(), 2, "{list}");
    wait_readiness(&server, true).await;
}

/// Installs a trigger, as another client of the database could, that makes SQLite refuse
/// certain writes for good.
fn install_trigger(db: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    conn.execute_batch(sql).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_the_database_refuses_fails_only_its_execution_with_a_cause() {
    let agents = vec![
        sh_agent(
            "good",
            "1",
            r#"i=1; while [ $i -le 30 ]; do echo "good $i"; i=$((i+1)); sleep 0.02; done"#,
        ),
        sh_agent(
            "bad",
            "1",
            r#"for i in 1 2 3 4 5; do echo "bad $i"; sleep 0.2; done; echo poison; echo "bad 6"; exec sleep 300"#,
        ),
    ];
    let server = TestServer::start_with(agents, |c| c.docker.enabled = false).await;
    install_trigger(
        &database(&server),
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON events WHEN NEW.data LIKE '%poison%'
         BEGIN SELECT RAISE(ABORT, 'this line is refused'); END;",
    );
    let bad = server.client.submit("bad", json!({})).await;
    let good = server.client.submit("good", json!({})).await;
    let witness = Witness::follow(&server.url, &bad).await;

    // Stopped at once (it would sleep 300 s), ended FAILED with the cause.
    let failed = server.client.wait_terminal(&bad, WAIT).await;
    assert_eq!(failed["status"], "FAILED", "{failed}");
    assert_eq!(failed["error"]["kind"], "store_write_failed", "{failed}");
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(message.contains("this line is refused"), "{message}");
    let stored = server.client.all_events(&bad).await;
    assert_eq!(statuses(&stored), ["PENDING", "RUNNING", "FAILED"]);
    // Everything before the refused line, nothing after it.
    let kept = assert_counted_lines(&stored, "bad ");
    assert!(kept <= 5, "{:?}", log_lines(&stored));
    assert_seen_stored_and_ended(&witness.finish(WAIT).await, &stored);

    let completed = server.client.wait_terminal(&good, WAIT).await;
    assert_eq!(completed["status"], "COMPLETED", "{completed}");
    let stored = server.client.all_events(&good).await;
    let expected: Vec<String> = (1..=30).map(|i| format!("good {i}")).collect();
    assert_eq!(log_lines(&stored), expected);
    common::assert_gapless(&stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_the_database_refuses_is_recorded_as_a_failure_with_its_cause() {
    let agents = vec![
        sh_agent("refused", "1", r#"echo '{"note": "refuse-me"}'"#),
        sh_agent("fine", "1", r#"echo '{"note": "fine"}'"#),
    ];
    let server = TestServer::start_with(agents, |c| c.docker.enabled = false).await;
    install_trigger(
        &database(&server),
        "CREATE TRIGGER refuse_output BEFORE UPDATE OF output ON executions
         WHEN NEW.output LIKE '%refuse-me%'
         BEGIN SELECT RAISE(ABORT, 'this output is refused'); END;",
    );
    let refused = server.client.submit("refused", json!({})).await;
    let fine = server.client.submit("fine", json!({})).await;

    let failed = server.client.wait_terminal(&refused, WAIT).await;
    assert_eq!(failed["status"], "FAILED", "{failed}");
    assert_eq!(failed["error"]["kind"], "store_write_failed", "{failed}");
    assert_eq!(failed["output"], Value::Null);
    let stored = server.client.all_events(&refused).await;
    assert_eq!(statuses(&stored), ["PENDING", "RUNNING", "FAILED"]);
    assert_seen_stored_and_ended(&stored, &stored);
    let completed = server.client.wait_terminal(&fine, WAIT).await;
    assert_eq!(completed["status"], "COMPLETED", "{completed}");
    assert_eq!(completed["output"], json!({"note": "fine"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_whose_every_event_is_refused_still_ends_failed_in_its_record() {
    let flag = tempfile::tempdir().unwrap();
    let go = flag.path().join("go");
    let script = format!(
        "while [ ! -e {} ]; do sleep 0.05; done; echo one; exec sleep 300",
        go.display()
    );
    let agents = vec![
        sh_agent("sealed", "1", &script),
        sh_agent("fine", "1", "echo fine"),
    ];
    let server = TestServer::start_with(agents, |c| c.docker.enabled = false).await;
    // After PENDING and RUNNING, the database refuses every event of this agent's executions,
    // the final status included.
    install_trigger(
        &database(&server),
        "CREATE TRIGGER seal BEFORE INSERT ON events WHEN NEW.seq > 2
           AND (SELECT agent_id FROM executions WHERE key = NEW.execution_key) = 'sealed'
         BEGIN SELECT RAISE(ABORT, 'this stream is sealed'); END;",
    );
    let sealed = server.client.submit("sealed", json!({})).await;
    server.client.wait_status(&sealed, "RUNNING", WAIT).await;
    let caller = agentnexus::runtime::Caller::local();
    let mut follow = server.runtime().follow(&caller, &sealed, 0).await.unwrap();
    let fine = server.client.submit("fine", json!({})).await;
    std::fs::write(&go, "").unwrap();

    let failed = server.client.wait_terminal(&sealed, WAIT).await;
    assert_eq!(failed["status"], "FAILED", "{failed}");
    assert_eq!(failed["error"]["kind"], "store_write_failed", "{failed}");
    let stored = server.client.all_events(&sealed).await;
    assert_eq!(statuses(&stored), ["PENDING", "RUNNING"]);
    common::assert_gapless(&stored);
    // A follower that was there is told the stream is over.
    let mut followed = Vec::new();
    while let Some(event) = tokio::time::timeout(WAIT, follow.next())
        .await
        .expect("the follower ends")
        .unwrap()
    {
        followed.push(event.seq);
    }
    assert_eq!(followed, [1, 2]);
    // So is one that comes after the end: it gets what was stored, then the end, not silence.
    let mut late = server.runtime().follow(&caller, &sealed, 0).await.unwrap();
    let mut replayed = Vec::new();
    while let Some(event) = tokio::time::timeout(WAIT, late.next())
        .await
        .expect("a late follower ends")
        .unwrap()
    {
        replayed.push(event.seq);
    }
    assert_eq!(replayed, [1, 2]);
    // A WebSocket client is told why no final status event comes...
    let ws = common::ws::Ws::connect(&server).await;
    let told = subscribe_until_error(ws, &sealed).await;
    assert_eq!(told.0, [1, 2]);
    assert_eq!(told.1["data"]["code"], "end_not_stored", "{}", told.1);
    assert_eq!(told.1["executionId"], sealed.as_str());
    // ...and the command-line client exits with the execution's code (FAILED: 1).
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_agentnexus"))
        .args(["logs", &sealed, "--follow", "--url", &server.url])
        .output()
        .unwrap();
    assert_eq!(cli.status.code(), Some(1), "{cli:?}");
    let (status, body) = server
        .client
        .post(&format!("/api/executions/{sealed}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let completed = server.client.wait_terminal(&fine, WAIT).await;
    assert_eq!(completed["status"], "COMPLETED", "{completed}");
}

/// Subscribes from the start; returns the seqs of the events received before the first `error`
/// message, and that message.
async fn subscribe_until_error(mut ws: common::ws::Ws, id: &str) -> (Vec<u64>, Value) {
    ws.subscribe(id, None).await;
    let mut seqs = Vec::new();
    loop {
        let message = ws.message().await;
        match message["type"].as_str() {
            Some("error") => return (seqs, message),
            Some("subscribed") => {}
            _ => seqs.push(message["seq"].as_u64().expect("an event")),
        }
    }
}
