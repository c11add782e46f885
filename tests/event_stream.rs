//! The per-execution event stream: gapless seqs under concurrency, stream tagging, followers
//! that join before, during and after a run, and the log caps.

mod common;

use std::time::Duration;

use agentnexus::runtime::Caller;
use common::{TestServer, assert_gapless, log_lines, sh_agent};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// Everything a follower sees, as JSON values comparable with the REST endpoint's.
async fn follow_all(server: &TestServer, id: &str, since: u64) -> Vec<Value> {
    let mut follow = server
        .runtime()
        .follow(&Caller::local(), id, since)
        .await
        .unwrap();
    let mut events = Vec::new();
    while let Some(event) = tokio::time::timeout(WAIT, follow.next())
        .await
        .expect("follow stalled")
        .unwrap()
    {
        events.push(serde_json::to_value(&event).unwrap());
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_executions_each_get_a_gapless_ordered_stream() {
    // Each agent interleaves stdout and stderr lines; both streams' order must be kept.
    let script =
        r#"i=1; while [ $i -le 200 ]; do echo "out $i"; echo "err $i" >&2; i=$((i+1)); done"#;
    let server = TestServer::start_with(vec![sh_agent("chatty", "1", script)], |c| {
        c.max_concurrent_executions = 100
    })
    .await;
    let client = &server.client;
    let submits = (0..100).map(|_| client.submit("chatty", json!({})));
    let ids = futures_util::future::join_all(submits).await;

    for id in &ids {
        let execution = client.wait_terminal(id, WAIT).await;
        assert_eq!(execution["status"], "COMPLETED", "{execution}");
        let events = client.all_events(id).await;
        assert_gapless(&events);
        let non_metrics = events.iter().filter(|e| e["type"] != "metrics").count();
        assert_eq!(non_metrics, 400 + 3, "{id}: 400 lines and 3 status changes");
        assert_eq!(execution["lastSeq"], events.len());
        for stream in ["stdout", "stderr"] {
            let prefix = if stream == "stdout" { "out" } else { "err" };
            let lines: Vec<_> = events
                .iter()
                .filter(|e| e["type"] == "log" && e["data"]["stream"] == stream)
                .map(|e| e["data"]["log"].as_str().unwrap().to_owned())
                .collect();
            let expected: Vec<_> = (1..=200).map(|i| format!("{prefix} {i}")).collect();
            assert_eq!(lines, expected, "{id} {stream}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_joining_before_during_and_after_see_every_event_once() {
    let script = r#"i=1; while [ $i -le 300 ]; do echo "line $i"; [ $((i % 50)) -eq 0 ] && sleep 0.05; i=$((i+1)); done"#;
    let server = TestServer::start_with(vec![sh_agent("steady", "1", script)], |c| {
        c.max_concurrent_executions = 1
    })
    .await;
    let client = &server.client;
    // Keep the slot busy so that the first follower really joins before the start.
    let blocker = client.submit("steady", json!({})).await;
    let id = client.submit("steady", json!({})).await;

    let before = follow_all(&server, &id, 0);
    let during = async {
        loop {
            let seen = client.execution(&id).await["lastSeq"].as_u64().unwrap();
            if seen > 100 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        follow_all(&server, &id, 0).await
    };
    let resumed = async {
        client.wait_status(&id, "RUNNING", WAIT).await;
        follow_all(&server, &id, 40).await
    };
    let (before, during, resumed) = tokio::join!(before, during, resumed);
    client.wait_terminal(&blocker, WAIT).await;
    let after = follow_all(&server, &id, 0).await;
    let stored = client.all_events(&id).await;

    assert_gapless(&stored);
    assert_eq!(log_lines(&stored).len(), 300);
    assert_eq!(before, stored);
    assert_eq!(during, stored);
    assert_eq!(after, stored);
    assert_eq!(resumed, stored[40..]);
    // A follower that has already seen everything ends at once.
    assert!(
        follow_all(&server, &id, stored.len() as u64)
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_followers_of_a_flood_each_get_the_complete_stream() {
    // Fast enough that live batches outrun slow followers, exercising lag and catch-up.
    let script = "seq 1 50000";
    let server = TestServer::start(vec![sh_agent("flood", "1", script)]).await;
    let client = &server.client;
    let id = client.submit("flood", json!({})).await;
    let followers = (0..20u64).map(|i| {
        let server = &server;
        let id = id.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(i * 7)).await;
            let mut follow = server
                .runtime()
                .follow(&Caller::local(), &id, 0)
                .await
                .unwrap();
            let mut seqs = Vec::new();
            while let Some(event) = follow.next().await.unwrap() {
                seqs.push(event.seq);
                if i % 4 == 0 && seqs.len() % 5000 == 0 {
                    // A follower that stalls now and then falls behind the live feed.
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            }
            seqs
        }
    });
    let all = futures_util::future::join_all(followers).await;
    let stored = client.all_events(&id).await;
    assert_eq!(log_lines(&stored).len(), 50000);
    let expected: Vec<u64> = (1..=stored.len() as u64).collect();
    for seqs in all {
        assert_eq!(seqs, expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_catching_up_on_long_lines_gets_them_all_while_the_agent_is_quiet() {
    // 100 lines of 10 KB (more than one catch-up page by size, far fewer events than one by
    // count), then a long quiet spell: the follower must not wait for the next event to learn
    // that the store holds more.
    let script =
        r#"i=1; while [ $i -le 100 ]; do printf "%010000d\n" $i; i=$((i+1)); done; sleep 30"#;
    let server = TestServer::start_with(vec![sh_agent("wide", "1", script)], |c| {
        // No resource samples either: nothing live would come for the whole sleep.
        c.sample_interval_ms = 3_600_000
    })
    .await;
    let id = server.client.submit("wide", json!({})).await;
    while log_lines(&server.client.all_events(&id).await).len() < 100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut follow = server
        .runtime()
        .follow(&Caller::local(), &id, 0)
        .await
        .unwrap();
    let mut lines = Vec::new();
    while lines.len() < 100 {
        let event = tokio::time::timeout(Duration::from_secs(10), follow.next())
            .await
            .expect("the follower waited for a live event with stored ones unread")
            .unwrap()
            .expect("not finished yet");
        if let Some(line) = log_lines(&[serde_json::to_value(&event).unwrap()]).pop() {
            lines.push(line);
        }
    }
    let expected: Vec<_> = (1..=100).map(|i| format!("{i:010000}")).collect();
    assert_eq!(lines, expected);
}

#[tokio::test]
async fn long_lines_are_truncated_and_bad_utf8_is_kept() {
    let script = r#"head -c 100000 /dev/zero | tr '\0' 'a'; echo; printf 'caf\351 ok\n'"#;
    let server = TestServer::start(vec![sh_agent("odd", "1", script)]).await;
    let client = &server.client;
    let id = client.submit("odd", json!({})).await;
    client.wait_terminal(&id, WAIT).await;
    let lines = log_lines(&client.all_events(&id).await);
    assert_eq!(
        lines.len(),
        2,
        "{:?}",
        lines.iter().map(|l| l.len()).collect::<Vec<_>>()
    );
    assert!(lines[0].starts_with(&"a".repeat(16 * 1024)));
    assert!(lines[0].len() < 16 * 1024 + 100);
    assert!(lines[0].ends_with(&format!(
        "[line truncated: {} more bytes]",
        100_000 - 16 * 1024
    )));
    assert_eq!(lines[1], "caf\u{fffd} ok");
}

#[tokio::test]
async fn an_execution_over_its_log_budget_gets_one_marker_and_a_count() {
    let server = TestServer::start_with(vec![sh_agent("verbose", "1", "seq 1 150")], |c| {
        c.logs.max_lines = 100
    })
    .await;
    let client = &server.client;
    let id = client.submit("verbose", json!({})).await;
    let execution = client.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED");
    assert_eq!(execution["logLines"], 100);
    assert_eq!(execution["logLinesDropped"], 50);

    let events = client.all_events(&id).await;
    assert_gapless(&events);
    let logs: Vec<_> = events.iter().filter(|e| e["type"] == "log").collect();
    assert_eq!(logs.len(), 101);
    let expected: Vec<String> = (1..=100).map(|i| i.to_string()).collect();
    assert_eq!(log_lines(&events)[..100], expected[..]);
    assert_eq!(logs[100]["data"]["stream"], "system");
    assert!(
        logs[100]["data"]["log"]
            .as_str()
            .unwrap()
            .contains("log budget")
    );
}

/// Found by the fuzzer: a `since` past `i64::MAX` wrapped around in the store and returned the
/// stream from its start. However large, a `since` beyond the last seq gives nothing.
#[tokio::test]
async fn a_since_beyond_every_seq_gives_nothing_however_large() {
    let server = TestServer::start(vec![sh_agent("one", "1", "echo hello")]).await;
    let id = server.client.submit("one", json!({})).await;
    let done = server.client.wait_terminal(&id, WAIT).await;
    let last = done["lastSeq"].as_u64().unwrap();
    for since in [last, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX] {
        let path = format!("/api/executions/{id}/events?since={since}");
        let (status, page) = server.client.get(&path).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["events"], json!([]), "since={since}");
        assert_eq!(
            follow_all(&server, &id, since).await,
            Vec::<Value>::new(),
            "follow since={since}"
        );
    }
    let path = format!("/api/executions/{id}/events?since=18446744073709551616");
    let (status, page) = server.client.get(&path).await;
    assert_eq!(status, 400, "{page}");
}
