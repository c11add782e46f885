//! `/ws` over real sockets with a real WebSocket client: the spec's message shapes, replay and
//! resume without gap or duplicate, heartbeat, slow consumers, limits, auth and bad input.

mod common;

use std::time::{Duration, Instant};

use agentnexus::config::ApiKey;
use common::ws::{Got, WAIT, Ws};
use common::{TestServer, log_lines, sh_agent};
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// The REST view of the stream, as WebSocket messages look (with `executionId`).
async fn stored_messages(server: &TestServer, id: &str) -> Vec<Value> {
    server
        .client
        .all_events(id)
        .await
        .into_iter()
        .map(|mut e| {
            e["executionId"] = json!(id);
            e
        })
        .collect()
}

#[tokio::test]
async fn messages_have_the_spec_shapes_with_seq_and_an_acknowledgement() {
    let server = TestServer::start(vec![sh_agent(
        "talk",
        "1",
        "echo hello; sleep 0.3; echo '{\"result\": \"done\"}'",
    )])
    .await;
    let id = server.client.submit("talk", json!({})).await;
    let mut ws = Ws::connect(&server).await;
    ws.subscribe(&id, None).await;
    let ack = ws.message().await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
    assert_eq!(ack["executionId"], id.as_str());
    assert!(ack["data"]["lastSeq"].is_u64());
    assert!(ack["data"]["status"].is_string());

    let events = ws.events_until_end(&id).await;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i as u64 + 1);
        assert!(
            e["timestamp"].as_i64().unwrap() > 1_600_000_000_000,
            "epoch ms: {e}"
        );
    }
    let log = events.iter().find(|e| e["type"] == "log").unwrap();
    assert_eq!(log["data"]["log"], "hello");
    assert_eq!(log["data"]["stream"], "stdout");
    let metrics = events
        .iter()
        .find(|e| e["type"] == "metrics")
        .expect("a resource sample");
    assert!(metrics["data"]["memoryUsage"].as_u64().unwrap() > 0);
    assert!(metrics["data"]["cpuUsage"].is_number());
    assert!(metrics["data"]["duration"].is_u64());
    let last = events.last().unwrap();
    assert_eq!(last["data"]["status"], "COMPLETED");
    assert_eq!(last["data"]["output"], json!({"result": "done"}));
    assert_eq!(events, stored_messages(&server, &id).await);
    ws.ping_pong().await;
}

#[tokio::test]
async fn a_line_that_escapes_to_a_huge_message_is_delivered_whole() {
    // 100,000 control characters: JSON escapes each one as `\u0001`, so the message is ~600 KB,
    // far more than the socket's write buffer.
    let script = r"head -c 100000 /dev/zero | tr '\000' '\001'; echo; echo after";
    let server = TestServer::start_with(vec![sh_agent("wide", "1", script)], |c| {
        c.logs.max_line_bytes = 128 * 1024
    })
    .await;
    let id = server.client.submit("wide", json!({})).await;
    let mut ws = Ws::connect(&server).await;
    ws.subscribe(&id, None).await;
    let events = ws.events_until_end(&id).await;
    assert_eq!(
        log_lines(&events),
        ["\u{1}".repeat(100_000), "after".into()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_before_during_and_after_the_run_gives_the_same_stream() {
    let script = r#"i=1; while [ $i -le 200 ]; do echo "line $i"; [ $((i % 20)) -eq 0 ] && sleep 0.05; i=$((i+1)); done"#;
    let agents = vec![
        sh_agent("steady", "1", script),
        sh_agent("blocker", "1", "sleep 1.5"),
    ];
    let server = TestServer::start_with(agents, |c| c.max_concurrent_executions = 1).await;
    // Holds the only slot, so that the first subscriber really joins before the start.
    let blocker = server.client.submit("blocker", json!({})).await;
    let id = server.client.submit("steady", json!({})).await;

    let mut before = Ws::connect(&server).await;
    before.subscribe(&id, None).await;
    let before = tokio::spawn({
        let id = id.clone();
        async move { before.events_until_end(&id).await }
    });
    assert_eq!(server.client.execution(&id).await["status"], "PENDING");
    server.client.wait_terminal(&blocker, WAIT).await;
    loop {
        if server.client.execution(&id).await["lastSeq"]
            .as_u64()
            .unwrap()
            > 60
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut during = Ws::connect(&server).await;
    during.subscribe(&id, None).await;
    let during = during.events_until_end(&id).await;
    let before = before.await.unwrap();
    let mut after = Ws::connect(&server).await;
    after.subscribe(&id, None).await;
    let after = after.events_until_end(&id).await;

    let stored = stored_messages(&server, &id).await;
    assert_eq!(common::log_lines(&stored).len(), 200);
    assert_eq!(before, stored);
    assert_eq!(during, stored);
    assert_eq!(after, stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_off_fifty_times_resumes_with_since_and_gets_every_event_once() {
    // 100,000 lines, paced so that some cuts fall while the agent still writes.
    let script = r#"awk 'BEGIN { for (i = 1; i <= 100000; i++) { print "line " i; if (i % 2000 == 0) { fflush(); system("sleep 0.02") } } }'"#;
    let server = TestServer::start(vec![sh_agent("long", "1", script)]).await;
    let id = server.client.submit("long", json!({})).await;

    let mut seqs: Vec<u64> = Vec::new();
    let mut cuts = 0;
    let mut rng = 0x2545F4914F6CDD1Du64;
    'outer: loop {
        let mut ws = Ws::connect(&server).await;
        ws.subscribe(&id, seqs.last().copied()).await;
        // xorshift: a deterministic spread of cut points between 200 and 2,200 messages.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let cut_after = 200 + rng % 2000;
        let mut received = 0;
        loop {
            let m = ws.message().await;
            if m["type"] == "subscribed" {
                continue;
            }
            seqs.push(m["seq"].as_u64().unwrap());
            received += 1;
            let end = m["type"] == "status" && m["data"]["status"] == "COMPLETED";
            if end {
                break 'outer;
            }
            if received == cut_after {
                cuts += 1;
                // Drop the TCP connection without a close handshake.
                drop(ws);
                continue 'outer;
            }
        }
    }
    assert!(cuts >= 50, "only {cuts} cuts");
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "every seq exactly once, in order");
    let stored = server.client.execution(&id).await;
    assert_eq!(stored["lastSeq"], seqs.len());
    assert_eq!(stored["logLines"], 100_000);
}

#[tokio::test]
async fn a_client_that_stops_answering_pings_is_closed_and_a_quiet_one_is_not() {
    let server = TestServer::start_with(vec![], |c| {
        c.websocket.heartbeat_interval_ms = 100;
        c.websocket.idle_timeout_ms = 400;
    })
    .await;
    let mut silent = Ws::connect(&server).await;
    let mut quiet = Ws::connect(&server).await;
    // `quiet` keeps reading (so its client answers pings) but sends nothing of its own.
    let quiet_reader = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_millis(1200);
        while Instant::now() < deadline {
            if let Ok(Some(frame)) =
                tokio::time::timeout(Duration::from_millis(50), quiet.0.next()).await
            {
                match frame {
                    Ok(Message::Ping(_) | Message::Pong(_)) => {}
                    other => panic!("the quiet client got {other:?}"),
                }
            }
        }
        quiet
    });
    // `silent` reads nothing, so its pings go unanswered.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut quiet = quiet_reader.await.unwrap();
    quiet.ping_pong().await;
    let started = Instant::now();
    match silent.next().await {
        Got::Closed(code) => assert_eq!(code, Some(4000)),
        Got::Message(m) => panic!("{m}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Reads an execution's messages to the end, keeping only the seqs (a flood is big).
async fn seqs_until_end(ws: &mut Ws) -> Vec<u64> {
    let mut seqs = Vec::new();
    loop {
        let m = ws.message().await;
        if m["type"] == "subscribed" {
            continue;
        }
        seqs.push(m["seq"].as_u64().unwrap());
        if m["type"] == "status" && m["data"]["status"] == "COMPLETED" {
            return seqs;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_closed_as_slow_while_others_keep_up_and_it_resumes_losslessly() {
    // The real binary, so that its memory can be measured on its own.
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(
        dir.path(),
        r#"
[websocket]
send_queue_bytes = 65536
# Long enough that a client that does read is never taken for a stalled one on a busy machine.
slow_consumer_timeout_ms = 2000

[[agents]]
id = "flood"
name = "Flood"
price_wei = "1"
runtime = { type = "process", command = "seq", args = ["1", "300000"] }
"#,
    );
    let process = common::ServerProcess::spawn(&config);
    let client = process.client();
    let pid = process.child.id();
    let url = format!("ws://{}/ws", process.addr);
    let connect = || async {
        let (stream, _) = tokio_tungstenite::connect_async(url.clone()).await.unwrap();
        Ws(stream)
    };
    let rss_before = resident_kib(pid);
    let id = client.submit("flood", json!({})).await;
    let mut stalled = connect().await;
    stalled.subscribe(&id, None).await;
    let mut normal = connect().await;
    normal.subscribe(&id, None).await;
    let normal_seqs = tokio::spawn(async move { seqs_until_end(&mut normal).await });
    let mut peak_growth = 0;
    let deadline = Instant::now() + WAIT;
    loop {
        peak_growth = peak_growth.max(resident_kib(pid).saturating_sub(rss_before));
        let text = common::scrape(&process.url).await;
        if text.contains("agentnexus_websocket_slow_consumer_disconnects_total 1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stalled client was never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let normal_seqs = normal_seqs.await.unwrap();
    let total = client.execution(&id).await["lastSeq"].as_u64().unwrap();
    assert_eq!(
        normal_seqs,
        (1..=total).collect::<Vec<_>>(),
        "the normal client got everything"
    );
    assert!(
        peak_growth < 100 * 1024,
        "the server's resident memory grew by {peak_growth} KiB"
    );

    // The stalled client now reads what reached it, then the slow-consumer close.
    let mut last_seq = 0;
    loop {
        match stalled.next().await {
            Got::Message(m) if m["type"] == "subscribed" => {}
            Got::Message(m) => {
                let seq = m["seq"].as_u64().unwrap();
                assert_eq!(seq, last_seq + 1);
                last_seq = seq;
            }
            Got::Closed(code) => {
                // 4008 — unless the client stayed stalled longer than the server waits for
                // its close frame to get through the full socket, and the server just dropped
                // the connection (the counter above says why it went).
                assert!(matches!(code, Some(4008) | None), "{code:?}");
                break;
            }
        }
    }
    assert!(last_seq < total, "it was closed before the end");
    let mut resumed = connect().await;
    resumed.subscribe(&id, Some(last_seq)).await;
    let rest = seqs_until_end(&mut resumed).await;
    assert_eq!(rest, (last_seq + 1..=total).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_pipelining_subscribes_to_long_histories_all_get_them() {
    // Each client sends all its subscribes at once: the first replays are still catching up
    // from the store (some behind a full outbox) while the next subscribes need reads of their
    // own. Queued reads must not wait on each other's connections.
    let server = TestServer::start_with(vec![sh_agent("many", "1", "seq 1 5000")], |c| {
        c.websocket.send_queue_bytes = 64 * 1024
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(server.client.submit("many", json!({})).await);
    }
    for id in &ids {
        server.client.wait_terminal(id, WAIT).await;
    }
    let mut clients = Vec::new();
    for _ in 0..16 {
        let mut ws = Ws::connect(&server).await;
        let ids = ids.clone();
        clients.push(tokio::spawn(async move {
            for id in &ids {
                let subscribe = json!({"type": "subscribe", "executionId": id});
                ws.0.feed(Message::text(subscribe.to_string()))
                    .await
                    .unwrap();
            }
            ws.0.flush().await.unwrap();
            let mut lines = 0;
            let mut finished = 0;
            while finished < ids.len() {
                // Acknowledgements and streams of different executions interleave.
                let m = ws.message().await;
                match m["type"].as_str() {
                    Some("log") => lines += 1,
                    Some("status") if m["data"]["status"] == "COMPLETED" => finished += 1,
                    _ => {}
                }
            }
            lines
        }));
    }
    for client in clients {
        assert_eq!(client.await.unwrap(), 8 * 5000);
    }
    let fresh = tokio::time::timeout(Duration::from_secs(10), server.client.execution(&ids[0]));
    assert_eq!(
        fresh.await.expect("REST still answers")["status"],
        "COMPLETED"
    );
}

#[tokio::test]
async fn one_connection_follows_many_executions_each_event_once() {
    let server = TestServer::start(vec![sh_agent("a", "1", "sleep 0.2; seq 1 50")]).await;
    let first = server.client.submit("a", json!({})).await;
    let second = server.client.submit("a", json!({})).await;
    let mut ws = Ws::connect(&server).await;
    ws.subscribe(&first, None).await;
    ws.subscribe(&first, None).await;
    ws.subscribe(&second, None).await;
    let mut by_execution: std::collections::HashMap<String, Vec<u64>> = Default::default();
    let mut ended = 0;
    while ended < 2 {
        let m = ws.message().await;
        if m["type"] == "subscribed" {
            continue;
        }
        by_execution
            .entry(m["executionId"].as_str().unwrap().to_owned())
            .or_default()
            .push(m["seq"].as_u64().unwrap());
        if m["type"] == "status" && m["data"]["status"] == "COMPLETED" {
            ended += 1;
        }
    }
    for id in [&first, &second] {
        let seqs = &by_execution[id.as_str()];
        assert_eq!(*seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{id}");
    }
    // Nothing more arrives for the duplicate subscription.
    ws.ping_pong().await;

    // Unsubscribe stops the flow.
    let third = server.client.submit("a", json!({})).await;
    ws.subscribe(&third, None).await;
    assert_eq!(ws.message().await["type"], "subscribed");
    ws.send(json!({"type": "unsubscribe", "executionId": third}))
        .await;
    let ack = loop {
        let m = ws.message().await;
        if m["type"] == "unsubscribed" {
            break m;
        }
    };
    assert_eq!(ack["executionId"], third.as_str());
    server.client.wait_terminal(&third, WAIT).await;
    ws.ping_pong().await;
}

async fn keyed_server() -> TestServer {
    TestServer::start_with(vec![sh_agent("a", "1", "sleep 0.3; echo hi")], |c| {
        c.api_keys = vec![
            ApiKey {
                key: "alice-key-0123456789".into(),
                user: "alice".into(),
                admin: false,
            },
            ApiKey {
                key: "bob-key-0123456789ab".into(),
                user: "bob".into(),
                admin: false,
            },
            ApiKey {
                key: "admin-key-0123456789".into(),
                user: "root".into(),
                admin: true,
            },
        ];
        c.websocket.allowed_origins = vec!["https://dashboard.example".into()];
    })
    .await
}

#[tokio::test]
async fn users_see_only_their_own_executions_over_websocket_and_rest() {
    let server = keyed_server().await;
    let alice = server.client.with_token("alice-key-0123456789");
    let bob = server.client.with_token("bob-key-0123456789ab");
    let admin = server.client.with_token("admin-key-0123456789");
    let id = alice.submit("a", json!({})).await;

    // Bob: the execution does not exist for him, exactly like a missing one.
    let missing = "exec_01m8f7zyfx1pgmq6mcqh9jyvq8";
    let (status, his) = bob.get(&format!("/api/executions/{id}")).await;
    let (status_missing, missing_body) = bob.get(&format!("/api/executions/{missing}")).await;
    assert_eq!(
        (status, status_missing),
        (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND)
    );
    assert_eq!(his["error"]["code"], missing_body["error"]["code"]);
    let (status, _) = bob
        .post(&format!("/api/executions/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = bob.get("/api/executions").await;
    assert_eq!(list["executions"], json!([]));
    let (_, list) = admin.get("/api/executions").await;
    assert_eq!(list["executions"].as_array().unwrap().len(), 1);
    let (status, _) = server.client.get("/api/executions").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let mut bob_ws = Ws::try_connect(&server, &[("authorization", "Bearer bob-key-0123456789ab")])
        .await
        .unwrap();
    bob_ws.subscribe(&id, None).await;
    let error = bob_ws.expect_error("not_found").await;
    assert_eq!(error["executionId"], id.as_str());
    bob_ws.subscribe(missing, None).await;
    bob_ws.expect_error("not_found").await;

    // Alice, with the browser-style token in the query string.
    let url = format!(
        "{}/ws?token=alice-key-0123456789",
        server.url.replace("http://", "ws://")
    );
    let (stream, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut alice_ws = Ws(stream);
    alice_ws.subscribe(&id, None).await;
    let events = alice_ws.events_until_end(&id).await;
    assert_eq!(events.last().unwrap()["data"]["status"], "COMPLETED");
}

#[tokio::test]
async fn bad_tokens_and_foreign_origins_are_refused_at_the_upgrade() {
    let server = keyed_server().await;
    let refused = |r: Result<Ws, WsError>| match r {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("the upgrade was accepted"),
    };
    assert_eq!(refused(Ws::try_connect(&server, &[]).await), 401);
    assert_eq!(
        refused(Ws::try_connect(&server, &[("authorization", "Bearer wrong-key-000000000")]).await),
        401
    );
    let token = ("authorization", "Bearer alice-key-0123456789");
    assert_eq!(
        refused(Ws::try_connect(&server, &[token, ("origin", "https://evil.example")]).await),
        403
    );
    let mut ok = Ws::try_connect(&server, &[token, ("origin", "https://dashboard.example")])
        .await
        .unwrap();
    ok.ping_pong().await;
    let host = server.url.trim_start_matches("http://").to_owned();
    let same_origin = format!("http://{host}");
    let mut same = Ws::try_connect(&server, &[token, ("origin", &same_origin)])
        .await
        .unwrap();
    same.ping_pong().await;
}

/// Waits until an execution has stored at least `seq` events; returns how many it has.
async fn wait_last_seq(server: &TestServer, id: &str, seq: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let last = server.client.execution(id).await["lastSeq"]
            .as_u64()
            .unwrap();
        if last >= seq {
            return last;
        }
        assert!(Instant::now() < deadline, "{id} never reached seq {seq}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscription_ends_with_the_final_status_or_an_error_whatever_its_since() {
    let server = TestServer::start(vec![
        sh_agent("short", "1", "seq 1 12"),
        sh_agent("paced", "1", "echo started; sleep 1; echo done"),
    ])
    .await;
    let finished = server.client.submit("short", json!({})).await;
    let last = server.client.wait_terminal(&finished, WAIT).await["lastSeq"]
        .as_u64()
        .unwrap();
    let mut ws = Ws::connect(&server).await;

    // Beyond the end of a finished execution: refused, saying where the stream ends.
    for since in [last + 1, 1000, u64::MAX] {
        ws.subscribe(&finished, Some(since)).await;
        let m = ws.expect_error("since_beyond_end").await;
        assert_eq!(m["executionId"], finished.as_str(), "{m}");
        assert_eq!(m["data"]["lastSeq"], last, "{m}");
    }
    // Exactly at the end: the acknowledgement says the client has it all; nothing follows.
    ws.subscribe(&finished, Some(last)).await;
    let ack = ws.message().await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
    assert_eq!(ack["data"], json!({"status": "COMPLETED", "lastSeq": last}));
    ws.ping_pong().await;
    // One before the end: just the final status event.
    ws.subscribe(&finished, Some(last - 1)).await;
    let events = ws.events_until_end(&finished).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["seq"], last);

    // Beyond the end while it runs: refused at once, not left waiting for events it will
    // never send; from the last seq it names, the stream ends with the final status.
    let running = server.client.submit("paced", json!({})).await;
    wait_last_seq(&server, &running, 3).await;
    ws.subscribe(&running, Some(1000)).await;
    let m = ws.expect_error("since_beyond_end").await;
    assert_eq!(m["executionId"], running.as_str(), "{m}");
    let at = m["data"]["lastSeq"].as_u64().unwrap();
    assert!((3..1000).contains(&at), "{m}");
    ws.subscribe(&running, Some(at)).await;
    let events = ws.events_until_end(&running).await;
    assert_eq!(events[0]["seq"], at + 1);
    assert_eq!(events.last().unwrap()["data"]["status"], "COMPLETED");

    // A `since` that is not a seq is bad input, whatever the execution.
    for bad in [
        "-1",
        "1.5",
        "\"5\"",
        "1e30",
        "18446744073709551616",
        "{}",
        "true",
    ] {
        let text =
            format!(r#"{{"type": "subscribe", "executionId": "{finished}", "since": {bad}}}"#);
        ws.0.send(Message::text(text)).await.unwrap();
        let m = ws.expect_error("bad_request").await;
        let message = m["data"]["message"].as_str().unwrap();
        assert!(message.contains("since"), "{bad}: {m}");
    }
    // And an execution nobody knows is not found, with or without `since`.
    for since in [None, Some(0), Some(1000)] {
        ws.subscribe("exec_01m8f7zyfx1pgmq6mcqh9jyvq8", since).await;
        ws.expect_error("not_found").await;
    }
    ws.ping_pong().await;
}

#[tokio::test]
async fn every_kind_of_bad_message_gets_its_error_and_the_server_keeps_serving() {
    let server = TestServer::start_with(vec![sh_agent("a", "1", "echo hi")], |c| {
        c.websocket.max_subscriptions = 2;
        c.websocket.max_message_bytes = 1024;
        c.websocket.send_queue_bytes = 64 * 1024;
    })
    .await;
    let id = server.client.submit("a", json!({})).await;
    let mut ws = Ws::connect(&server).await;
    let bad: Vec<(&str, Message)> = vec![
        ("invalid JSON", Message::text("{nope")),
        ("a JSON array", Message::text("[1, 2]")),
        ("unknown type", Message::text(r#"{"type": "dance"}"#)),
        (
            "missing executionId",
            Message::text(r#"{"type": "subscribe"}"#),
        ),
        (
            "non-string executionId",
            Message::text(r#"{"type": "subscribe", "executionId": 42}"#),
        ),
        (
            "negative since",
            Message::text(format!(
                r#"{{"type": "subscribe", "executionId": "{id}", "since": -1}}"#
            )),
        ),
        (
            "since not a number",
            Message::text(format!(
                r#"{{"type": "subscribe", "executionId": "{id}", "since": "5"}}"#
            )),
        ),
        (
            "invalid execution id",
            Message::text(r#"{"type": "subscribe", "executionId": "exec_123"}"#),
        ),
        ("a binary frame", Message::binary(vec![1, 2, 3])),
    ];
    for (what, message) in bad {
        ws.0.send(message).await.unwrap();
        let m = ws.message().await;
        assert_eq!(m["type"], "error", "{what}: {m}");
        assert_eq!(m["data"]["code"], "bad_request", "{what}: {m}");
    }
    ws.subscribe("exec_01m8f7zyfx1pgmq6mcqh9jyvq8", None).await;
    ws.expect_error("not_found").await;

    // Too many subscriptions on one connection (to executions still running, since a
    // finished execution's subscription ends by itself).
    let slow = TestServer::start_with(vec![sh_agent("s", "1", "sleep 5")], |c| {
        c.websocket.max_subscriptions = 2
    })
    .await;
    let mut limited = Ws::connect(&slow).await;
    for _ in 0..3 {
        let id = slow.client.submit("s", json!({})).await;
        limited.subscribe(&id, None).await;
    }
    // Two acknowledgements and one refusal, in whatever order the tasks send them.
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let m = limited.message().await;
        if m["type"] == "subscribed" || m["type"] == "error" {
            kinds.push(format!(
                "{}:{}",
                m["type"].as_str().unwrap(),
                m["data"]["code"].as_str().unwrap_or("")
            ));
        }
    }
    kinds.sort();
    assert_eq!(
        kinds,
        ["error:too_many_subscriptions", "subscribed:", "subscribed:"]
    );
    limited.send(json!({"type": "ping"})).await;
    while limited.message().await["type"] != "pong" {}

    // A burst of 10,000 subscribes: rate limited, and the server keeps serving everyone.
    let mut burst = Ws::connect(&server).await;
    let flood: Vec<_> = (0..10_000)
        .map(|_| {
            Ok(Message::text(format!(
                r#"{{"type": "subscribe", "executionId": "{id}"}}"#
            )))
        })
        .collect();
    burst
        .0
        .send_all(&mut futures_util::stream::iter(flood))
        .await
        .unwrap();
    // The first subscribes are within the burst allowance (100): each replays the finished
    // execution (an acknowledgement and 4 events) before the complaint comes.
    let mut saw_rate_limited = false;
    for _ in 0..1000 {
        let m = burst.message().await;
        if m["type"] == "error" && m["data"]["code"] == "rate_limited" {
            saw_rate_limited = true;
            break;
        }
    }
    assert!(saw_rate_limited);
    ws.ping_pong().await;

    // An oversized frame closes that connection with 1009; others are unaffected.
    let mut big = Ws::connect(&server).await;
    big.0.send(Message::text("x".repeat(4096))).await.unwrap();
    loop {
        match big.next().await {
            Got::Closed(code) => {
                assert_eq!(code, Some(1009));
                break;
            }
            Got::Message(_) => {}
        }
    }
    ws.ping_pong().await;
    let fresh_id = server.client.submit("a", json!({})).await;
    ws.subscribe(&fresh_id, None).await;
    assert_eq!(
        ws.events_until_end(&fresh_id).await.last().unwrap()["data"]["status"],
        "COMPLETED"
    );
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_and_counted_ones_are_reported() {
    let server = TestServer::start_with(vec![], |c| c.websocket.max_connections = 2).await;
    let mut a = Ws::connect(&server).await;
    let mut b = Ws::connect(&server).await;
    match Ws::try_connect(&server, &[]).await {
        Err(WsError::Http(response)) => assert_eq!(response.status().as_u16(), 503),
        other => panic!("{:?}", other.map(|_| ())),
    }
    a.ping_pong().await;
    b.ping_pong().await;
    let (_, ready) = server.client.get("/health/ready").await;
    assert_eq!(
        ready["checks"]["websocket"]["details"]["activeConnections"],
        2
    );
    let text = common::scrape(&server.url).await;
    assert!(
        text.contains("agentnexus_active_websocket_connections 2"),
        "{text}"
    );
    drop(a);
    // A freed slot can be used again.
    let mut c = loop {
        if let Ok(c) = Ws::try_connect(&server, &[]).await {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    c.ping_pong().await;
}

#[tokio::test]
async fn shutdown_says_goodbye_with_1001() {
    let mut server = TestServer::start(vec![]).await;
    let mut ws = Ws::connect(&server).await;
    ws.ping_pong().await;
    let stopping = tokio::spawn(server.server.take().unwrap().shutdown());
    match ws.next().await {
        Got::Closed(code) => assert_eq!(code, Some(1001)),
        Got::Message(m) => panic!("{m}"),
    }
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown does not wait for clients")
        .unwrap();
}
