//! Crash recovery: the real binary is killed with SIGKILL while executions are queued and
//! running; after a restart, nothing that was readable is lost and every execution ends as
//! specified (queued ones run, running ones fail with `runtime_restarted`).

mod common;

use std::time::Duration;

use common::faults::WriteLock;
use common::witness::{Witness, assert_counted_lines, assert_seen_stored_and_ended};
use common::{ServerProcess, assert_gapless, log_lines, write_config};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

const AGENTS: &str = r#"
max_concurrent_executions = 1

[[agents]]
id = "slow"
name = "Slow"
price_wei = "1"
runtime = { type = "process", command = "sh", args = ["-c", "i=0; while true; do i=$((i+1)); echo \"tick $i\"; sleep 0.02; done"] }

[[agents]]
id = "quick"
name = "Quick"
price_wei = "1"
runtime = { type = "process", command = "sh", args = ["-c", "echo queued-and-ran; echo '{\"ok\": true}'"] }
"#;

#[tokio::test]
async fn a_killed_server_recovers_every_execution_and_loses_no_event() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), AGENTS);
    let mut server = ServerProcess::spawn(&config);
    let client = server.client();

    let running = client.submit("slow", json!({})).await;
    client.wait_status(&running, "RUNNING", WAIT).await;
    let queued = [
        client.submit("quick", json!({})).await,
        client.submit("quick", json!({})).await,
    ];
    // Let it log for a while, then take a snapshot of what a reader could see, then crash.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen_before = client.all_events(&running).await;
    assert!(
        log_lines(&seen_before).len() > 5,
        "the agent should have logged by now"
    );
    for id in &queued {
        assert_eq!(client.execution(id).await["status"], "PENDING");
    }
    server.kill9();

    let server = ServerProcess::spawn(&config);
    let client = server.client();
    let after = client.wait_terminal(&running, WAIT).await;
    assert_eq!(after["status"], "FAILED");
    assert_eq!(after["error"]["kind"], "runtime_restarted");
    let events = client.all_events(&running).await;
    assert_gapless(&events);
    assert_eq!(
        events[..seen_before.len()],
        seen_before[..],
        "events readable before the crash changed"
    );
    assert_eq!(events.last().unwrap()["data"]["status"], "FAILED");

    for id in &queued {
        let execution = client.wait_terminal(id, WAIT).await;
        assert_eq!(execution["status"], "COMPLETED", "{execution}");
        assert_eq!(execution["output"], json!({"ok": true}));
        let events = client.all_events(id).await;
        assert_gapless(&events);
        assert_eq!(log_lines(&events)[0], "queued-and-ran");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_a_client_saw_before_a_kill_is_stored_once_in_order_after_a_store_fault() {
    let dir = tempfile::tempdir().unwrap();
    let agents = r#"
[[agents]]
id = "counter"
name = "Counter"
price_wei = "1"
runtime = { type = "process", command = "sh", args = ["-c", "i=1; while true; do echo \"line $i\"; i=$((i+1)); sleep 0.05; done"] }
"#;
    let config = write_config(dir.path(), agents);
    let mut server = ServerProcess::spawn(&config);
    let client = server.client();
    let id = client.submit("counter", json!({})).await;
    let witness = Witness::follow(&server.url, &id).await;
    witness.wait_lines(10, WAIT).await;

    // Another process holds the write lock for 7 s (past any busy timeout), then the run goes
    // on for a while, then the server is killed.
    let db = dir.path().join("data").join("agentnexus.db");
    let Some(lock) = WriteLock::hold(&db, Duration::from_secs(7)) else {
        return;
    };
    lock.release();
    let seen_so_far = log_lines(&witness.seen()).len();
    witness.wait_lines(seen_so_far + 20, WAIT).await;
    server.kill9();
    let seen = witness.finish(WAIT).await;

    let server = ServerProcess::spawn(&config);
    let client = server.client();
    let after = client.wait_terminal(&id, WAIT).await;
    assert_eq!(after["error"]["kind"], "runtime_restarted", "{after}");
    let stored = client.all_events(&id).await;
    let last = assert_seen_stored_and_ended(&seen, &stored);
    assert_eq!(last["data"]["status"], "FAILED");
    // Nothing the agent wrote before the kill is missing in between: the stored lines are
    // line 1, 2, 3, … up to at least what the client saw.
    let kept = assert_counted_lines(&stored, "line ");
    assert!(kept >= log_lines(&seen).len());
}

#[tokio::test]
async fn a_graceful_stop_lets_running_work_finish_and_keeps_queued_work() {
    let dir = tempfile::tempdir().unwrap();
    let agents = r#"
max_concurrent_executions = 1

[[agents]]
id = "short"
name = "Short"
price_wei = "1"
runtime = { type = "process", command = "sh", args = ["-c", "sleep 1; echo finished"] }
"#;
    let config = write_config(dir.path(), agents);
    let mut server = ServerProcess::spawn(&config);
    let client = server.client();
    let running = client.submit("short", json!({})).await;
    client.wait_status(&running, "RUNNING", WAIT).await;
    let queued = client.submit("short", json!({})).await;

    // SIGTERM: the running execution finishes within the grace period; the queued one waits.
    let pid = server.child.id() as i32;
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status}");

    let server = ServerProcess::spawn(&config);
    let client = server.client();
    let execution = client.execution(&running).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    assert_eq!(log_lines(&client.all_events(&running).await), ["finished"]);
    assert_eq!(
        client.wait_terminal(&queued, WAIT).await["status"],
        "COMPLETED"
    );
}

#[tokio::test]
async fn a_restart_stops_the_agents_a_crashed_runtime_left_running() {
    let dir = tempfile::tempdir().unwrap();
    // It writes nothing after its first line, so the crash of its reader does not end it.
    let agents = r#"
[[agents]]
id = "silent"
name = "Silent"
price_wei = "1"
runtime = { type = "process", command = "sh", args = ["-c", "echo pid $$; exec sleep 300"] }
"#;
    let config = write_config(dir.path(), agents);
    let mut server = ServerProcess::spawn(&config);
    let client = server.client();
    let id = client.submit("silent", json!({})).await;
    let pid: i32 = loop {
        let lines = log_lines(&client.all_events(&id).await);
        if let Some(pid) = lines.first().and_then(|l| l.strip_prefix("pid ")) {
            break pid.parse().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    server.kill9();
    assert!(
        !common::process_is_gone(pid),
        "the agent should outlive the crash"
    );

    let server = ServerProcess::spawn(&config);
    let execution = server.client().wait_terminal(&id, WAIT).await;
    assert_eq!(execution["error"]["kind"], "runtime_restarted");
    for _ in 0..100 {
        if common::process_is_gone(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the agent left by the crashed runtime is still running");
}
