//! Execution lifecycle over real HTTP: success, failure, timeout, cancel, and the races between
//! them. Agents are real processes (shell scripts).

mod common;

use std::time::Duration;

use common::{Client, TestServer, log_lines, sh_agent};
use reqwest::StatusCode;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_successful_agent_completes_with_its_last_json_line_as_output() {
    let server = TestServer::start(vec![sh_agent(
        "echo",
        "7",
        r#"read input; echo "got $input"; echo "env $EXECUTION_ID $AGENT_ID $INPUT_DATA"; echo '{"answer": 42}'; echo done"#,
    )])
    .await;
    let client = &server.client;
    let id = client.submit("echo", json!({"q": "life"})).await;
    let execution = client.wait_terminal(&id, WAIT).await;

    assert_eq!(execution["status"], "COMPLETED");
    assert_eq!(execution["output"], json!({"answer": 42}));
    assert_eq!(execution["exitCode"], 0);
    assert_eq!(execution["error"], json!(null));
    assert_eq!(execution["agentId"], "echo");
    assert!(execution["durationMs"].as_i64().unwrap() >= 0);
    let events = client.all_events(&id).await;
    let lines = log_lines(&events);
    assert_eq!(
        lines,
        [
            r#"got {"q":"life"}"#.to_owned(),
            format!(r#"env {id} echo {{"q":"life"}}"#),
            r#"{"answer": 42}"#.to_owned(),
            "done".to_owned(),
        ]
    );
    let statuses = common::statuses(&events);
    assert_eq!(statuses, ["PENDING", "RUNNING", "COMPLETED"]);
    assert_eq!(
        events.last().unwrap()["data"]["output"],
        json!({"answer": 42})
    );
}

#[tokio::test]
async fn the_output_file_wins_over_stdout() {
    let server = TestServer::start(vec![
        sh_agent(
            "file",
            "1",
            r#"echo '{"from": "stdout"}'; echo '{"from": "file"}' > "$AGENTNEXUS_OUTPUT""#,
        ),
        sh_agent("broken", "1", r#"echo 'not json' > "$AGENTNEXUS_OUTPUT""#),
        sh_agent("none", "1", "echo plain text"),
    ])
    .await;
    let client = &server.client;
    let file = client.submit("file", json!({})).await;
    let broken = client.submit("broken", json!({})).await;
    let none = client.submit("none", json!({})).await;

    assert_eq!(
        client.wait_terminal(&file, WAIT).await["output"],
        json!({"from": "file"})
    );
    let broken = client.wait_terminal(&broken, WAIT).await;
    assert_eq!(broken["status"], "FAILED");
    assert_eq!(broken["error"]["kind"], "invalid_output");
    let none = client.wait_terminal(&none, WAIT).await;
    assert_eq!(none["status"], "COMPLETED");
    assert_eq!(none["output"], json!(null));
}

#[tokio::test]
async fn a_non_zero_exit_fails_with_the_exit_code_and_tagged_streams() {
    let server = TestServer::start(vec![sh_agent(
        "fail",
        "1",
        "echo working; echo 'boom: model refused' >&2; exit 3",
    )])
    .await;
    let client = &server.client;
    let id = client.submit("fail", json!({})).await;
    let execution = client.wait_terminal(&id, WAIT).await;

    assert_eq!(execution["status"], "FAILED");
    assert_eq!(execution["exitCode"], 3);
    assert_eq!(execution["error"]["kind"], "exit_code");
    assert!(
        execution["error"]["message"]
            .as_str()
            .unwrap()
            .contains('3')
    );
    let events = client.all_events(&id).await;
    let streams: Vec<_> = common::tagged_lines(&events);
    assert!(streams.contains(&("stdout", "working")), "{streams:?}");
    assert!(
        streams.contains(&("stderr", "boom: model refused")),
        "{streams:?}"
    );
    let last = events.last().unwrap();
    assert_eq!(last["data"]["status"], "FAILED");
    assert_eq!(last["data"]["error"]["kind"], "exit_code");
}

/// The agent leaves a helper behind in a session of its own (outside its process group) that
/// inherited its output pipes, and prints its result just before it ends.
const PIPE_HOLDER: &str = r#"setsid sleep 30 & echo "pid $!"; sleep 0.3; echo '{"result": 42}'"#;

/// Well under the 30 s of the helper's sleep: the run did not wait for the helper.
const PROMPT_MS: i64 = 15_000;

#[tokio::test]
async fn a_helper_holding_the_output_pipe_costs_neither_the_result_nor_time() {
    let server = TestServer::start(vec![sh_agent("holder", "1", PIPE_HOLDER)]).await;
    let client = &server.client;
    let id = client.submit("holder", json!({})).await;
    let execution = client.wait_terminal(&id, WAIT).await;

    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    assert_eq!(execution["output"], json!({"result": 42}));
    let duration = execution["durationMs"].as_i64().unwrap();
    assert!(duration < PROMPT_MS, "{duration}");
    // The helper is part of the execution, and ends with it.
    wait_gone(&printed_pids(&client.all_events(&id).await)).await;
}

#[tokio::test]
async fn without_containment_a_helper_holding_the_pipe_still_costs_neither_result_nor_time() {
    // Contained by its process group only, the helper outlives the agent and keeps the pipes
    // open: reading stops soon after the agent's end all the same, with everything read kept.
    let server = TestServer::start_with(vec![sh_agent("holder", "1", PIPE_HOLDER)], |c| {
        c.containment = agentnexus::config::ContainmentMode::ProcessGroup;
    })
    .await;
    let client = &server.client;
    let id = client.submit("holder", json!({})).await;
    let execution = client.wait_terminal(&id, WAIT).await;
    let helpers = printed_pids(&client.all_events(&id).await);
    for &pid in &helpers {
        // SAFETY: the test's own leftover helper.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }

    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    assert_eq!(execution["output"], json!({"result": 42}));
    let duration = execution["durationMs"].as_i64().unwrap();
    assert!(duration < PROMPT_MS, "{duration}");
}

#[tokio::test]
async fn stdout_and_stderr_flooded_at_once_are_read_in_full_and_in_order() {
    // Each stream gets far more than a pipe buffer holds, first both at once, then stderr alone
    // after stdout is done: reading one stream to its end before the other would deadlock.
    let script =
        r#"seq 1 30000 >&2 & seq 1 30000; wait; seq 30001 60000 >&2; echo '{"lines": 90000}'"#;
    let server = TestServer::start(vec![sh_agent("flood", "1", script)]).await;
    let client = &server.client;
    let id = client.submit("flood", json!({})).await;
    let execution = client.wait_terminal(&id, Duration::from_secs(120)).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    assert_eq!(execution["output"], json!({"lines": 90000}));

    let events = client.all_events(&id).await;
    let lines = common::tagged_lines(&events);
    let of = |stream: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|(s, _)| *s == stream)
            .map(|(_, l)| l.to_string())
            .collect()
    };
    let mut expected_stdout: Vec<String> = (1..=30000).map(|n| n.to_string()).collect();
    expected_stdout.push(r#"{"lines": 90000}"#.into());
    assert!(
        of("stdout") == expected_stdout,
        "stdout lines missing or out of order"
    );
    let expected_stderr: Vec<String> = (1..=60000).map(|n| n.to_string()).collect();
    assert!(
        of("stderr") == expected_stderr,
        "stderr lines missing or out of order"
    );
}

#[tokio::test]
async fn an_agent_that_cannot_start_fails_cleanly() {
    let mut agent = sh_agent("missing", "1", "");
    agent.runtime = agentnexus::domain::Runtime::Process {
        command: "/nonexistent/agent".into(),
        args: vec![],
        env: Default::default(),
        workdir: None,
    };
    let server = TestServer::start(vec![agent]).await;
    let id = server.client.submit("missing", json!({})).await;
    let execution = server.client.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "FAILED");
    assert_eq!(execution["error"]["kind"], "spawn_failed");
}

/// Pids the agent printed as `pid N`, so the test can check they are gone.
fn printed_pids(events: &[serde_json::Value]) -> Vec<i32> {
    log_lines(events)
        .iter()
        .filter_map(|l| l.strip_prefix("pid ")?.parse().ok())
        .collect()
}

async fn wait_gone(pids: &[i32]) {
    for _ in 0..100 {
        if pids.iter().all(|&p| common::process_is_gone(p)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("processes still alive: {pids:?}");
}

/// Starts a child that ignores SIGTERM, and sleeps: only the kill of the whole group stops it.
const STUBBORN_TREE: &str =
    r#"sh -c 'trap "" TERM; echo pid $$; while true; do sleep 0.1; done' & echo pid $$; sleep 300"#;

async fn wait_for_pids(client: &Client, id: &str, n: usize) -> Vec<i32> {
    for _ in 0..200 {
        let pids = printed_pids(&client.all_events(id).await);
        if pids.len() >= n {
            return pids;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the agent never printed {n} pids");
}

#[tokio::test]
async fn a_timeout_fails_the_execution_and_kills_the_process_tree() {
    let mut agent = sh_agent("slow", "1", STUBBORN_TREE);
    agent.timeout_secs = Some(1);
    let server = TestServer::start(vec![agent]).await;
    let client = &server.client;
    let id = client.submit("slow", json!({})).await;
    let pids = wait_for_pids(client, &id, 2).await;

    let execution = client.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "FAILED");
    assert_eq!(execution["error"]["kind"], "timeout");
    let duration = execution["durationMs"].as_i64().unwrap();
    assert!((1000..10_000).contains(&duration), "{duration}");
    wait_gone(&pids).await;
}

#[tokio::test]
async fn cancelling_a_running_execution_kills_the_whole_tree() {
    let server = TestServer::start(vec![sh_agent("slow", "1", STUBBORN_TREE)]).await;
    let client = &server.client;
    let id = client.submit("slow", json!({})).await;
    let pids = wait_for_pids(client, &id, 2).await;

    let (status, body) = client
        .post(&format!("/api/executions/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "CANCELLED");
    assert_eq!(body["error"]["kind"], "cancelled");
    wait_gone(&pids).await;

    // A second cancel is a conflict and changes nothing.
    let (status, body) = client
        .post(&format!("/api/executions/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(client.execution(&id).await["status"], "CANCELLED");
}

#[tokio::test]
async fn cancelling_a_queued_execution_never_runs_it() {
    let server = TestServer::start_with(
        vec![
            sh_agent("slow", "1", "sleep 2; echo finished"),
            sh_agent("marker", "1", "echo ran"),
        ],
        |c| c.max_concurrent_executions = 1,
    )
    .await;
    let client = &server.client;
    let running = client.submit("slow", json!({})).await;
    client.wait_status(&running, "RUNNING", WAIT).await;
    let queued = client.submit("marker", json!({})).await;
    assert_eq!(client.execution(&queued).await["status"], "PENDING");
    assert_eq!(client.execution(&queued).await["replicaId"], json!(null));
    let owner = client.execution(&running).await["replicaId"].clone();
    assert!(owner.as_str().is_some_and(|o| !o.is_empty()), "{owner}");

    let (status, body) = client
        .post(&format!("/api/executions/{queued}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "CANCELLED");
    assert_eq!(body["startedAt"], json!(null));

    assert_eq!(
        client.wait_terminal(&running, WAIT).await["status"],
        "COMPLETED"
    );
    let events = client.all_events(&queued).await;
    assert!(log_lines(&events).is_empty(), "{events:?}");
    let statuses: Vec<_> = events
        .iter()
        .map(|e| e["data"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["PENDING", "CANCELLED"]);
}

#[tokio::test]
async fn queued_executions_start_in_arrival_order() {
    let server = TestServer::start_with(vec![sh_agent("quick", "1", "sleep 0.05")], |c| {
        c.max_concurrent_executions = 1
    })
    .await;
    let client = &server.client;
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(client.submit("quick", json!({})).await);
    }
    let mut started = Vec::new();
    for id in &ids {
        let execution = client.wait_terminal(id, WAIT).await;
        assert_eq!(execution["status"], "COMPLETED");
        started.push(execution["startedAt"].as_str().unwrap().to_owned());
    }
    let mut sorted = started.clone();
    sorted.sort();
    assert_eq!(started, sorted, "executions started out of order");
}

#[tokio::test]
async fn cancel_racing_completion_ends_in_exactly_one_terminal_status() {
    let server = TestServer::start(vec![sh_agent("instant", "1", "echo '{\"ok\": true}'")]).await;
    let client = &server.client;
    let mut outcomes = std::collections::HashMap::new();
    for _ in 0..40 {
        let id = client.submit("instant", json!({})).await;
        let (status, _) = client
            .post(&format!("/api/executions/{id}/cancel"), json!({}))
            .await;
        assert!(
            matches!(status, StatusCode::OK | StatusCode::CONFLICT),
            "{status}"
        );
        let execution = client.wait_terminal(&id, WAIT).await;
        let events = client.all_events(&id).await;
        common::assert_gapless(&events);
        let terminal: Vec<_> = events
            .iter()
            .filter(|e| {
                matches!(
                    e["data"]["status"].as_str(),
                    Some("COMPLETED" | "FAILED" | "CANCELLED")
                )
            })
            .collect();
        assert_eq!(terminal.len(), 1, "{events:?}");
        assert_eq!(terminal[0]["data"]["status"], execution["status"]);
        assert_eq!(
            events.last().unwrap()["data"]["status"],
            execution["status"],
            "the terminal event is last"
        );
        *outcomes
            .entry(execution["status"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    assert!(!outcomes.contains_key("FAILED"), "{outcomes:?}");
}

#[tokio::test]
async fn revenue_is_the_exact_sum_over_completed_executions() {
    // 2^100 wei: far beyond what a float or i64 can hold exactly.
    let big = "1267650600228229401496703205376";
    let server = TestServer::start(vec![
        sh_agent("paid", big, "true"),
        sh_agent("paid_fail", big, "exit 1"),
    ])
    .await;
    let client = &server.client;
    for _ in 0..3 {
        let id = client.submit("paid", json!({})).await;
        client.wait_terminal(&id, WAIT).await;
    }
    let failed = client.submit("paid_fail", json!({})).await;
    client.wait_terminal(&failed, WAIT).await;

    let (status, body) = client.get("/api/agents/paid/revenue").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["revenueWei"], "3802951800684688204490109616128");
    let (_, body) = client.get("/api/agents/paid_fail/revenue").await;
    assert_eq!(body["revenueWei"], "0");
}

#[tokio::test]
async fn executions_list_filters_and_paginates() {
    let server = TestServer::start(vec![
        sh_agent("ok", "1", "true"),
        sh_agent("bad", "1", "exit 1"),
    ])
    .await;
    let client = &server.client;
    let mut ok_ids = Vec::new();
    for _ in 0..5 {
        ok_ids.push(client.submit("ok", json!({})).await);
    }
    let bad = client.submit("bad", json!({})).await;
    for id in ok_ids.iter().chain([&bad]) {
        client.wait_terminal(id, WAIT).await;
    }

    let (_, page) = client.get("/api/executions?status=FAILED").await;
    let ids: Vec<_> = page["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["executionId"].clone())
        .collect();
    assert_eq!(ids, [json!(bad)]);

    // Newest first, two at a time, following the cursor to the end.
    let mut seen = Vec::new();
    let mut path = "/api/executions?agentId=ok&limit=2".to_owned();
    loop {
        let (status, page) = client.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for e in page["executions"].as_array().unwrap() {
            seen.push(e["executionId"].as_str().unwrap().to_owned());
        }
        match page["nextCursor"].as_str() {
            Some(cursor) => {
                assert!(
                    cursor.parse::<i64>().is_err(),
                    "{cursor}: the store's row key stays inside the store"
                );
                path = format!("/api/executions?agentId=ok&limit=2&cursor={cursor}");
            }
            None => break,
        }
    }
    ok_ids.reverse();
    assert_eq!(seen, ok_ids);
}
