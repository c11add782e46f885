//! The NATS bus against a real `nats-server`: batches published on one replica reach the
//! followers of another, in order and whole; a subscription is live when `subscribe` returns;
//! losing the server is reported, never a silent hang, and its return needs no restart. End to
//! end: a server configured with `nats_url` streams an execution to a WebSocket follower, and
//! still completes it from the store while NATS is down, with readiness and the gauge saying so.

mod common;

use std::time::Duration;

use agentnexus::bus::{Batch, Bus, Live, NatsBus, Subscription};
use agentnexus::domain::{Event, EventKind, ExecutionId};
use common::nats::NatsServer;
use common::ws::Ws;
use common::{TestServer, assert_gapless, log_lines, scrape, sh_agent};
use serde_json::json;

/// A bound on waiting for what must come, so a broken bus fails instead of hanging.
const WAIT: Duration = Duration::from_secs(60);

fn events(seqs: std::ops::RangeInclusive<u64>, text: &str) -> Vec<Event> {
    seqs.map(|seq| Event {
        seq,
        kind: EventKind::Log,
        data: serde_json::value::to_raw_value(&json!({"log": text, "stream": "stdout"})).unwrap(),
        timestamp: 1,
    })
    .collect()
}

async fn next(live: &mut Subscription) -> Live {
    tokio::time::timeout(WAIT, live.next())
        .await
        .expect("the subscription says something")
}

fn seqs(live: Live) -> Vec<u64> {
    match live {
        Live::Batch(batch) => batch.iter().map(|e| e.event.seq).collect(),
        other => panic!("expected a batch, got {other:?}"),
    }
}

/// Two replicas' buses on one server, both connected.
async fn replicas(nats: &NatsServer) -> (NatsBus, NatsBus) {
    let a = NatsBus::connect(&nats.url()).await.unwrap();
    let b = NatsBus::connect(&nats.url()).await.unwrap();
    connected(&a).await;
    connected(&b).await;
    (a, b)
}

async fn connected(bus: &NatsBus) {
    tokio::time::timeout(WAIT, async {
        while !bus.is_connected() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("connects to NATS");
}

#[tokio::test]
async fn batches_published_on_one_replica_reach_another_in_order_then_the_end() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let (a, b) = replicas(&nats).await;
    let id = ExecutionId::generate();
    let mut live = b.subscribe(&id).await;
    a.publish(&id, events(1..=3, "x"), false);
    a.publish(&id, events(4..=4, "y"), false);
    a.publish(&id, events(5..=6, "z"), true);
    assert_eq!(seqs(next(&mut live).await), [1, 2, 3]);
    assert_eq!(seqs(next(&mut live).await), [4]);
    assert_eq!(seqs(next(&mut live).await), [5, 6]);
    assert!(matches!(next(&mut live).await, Live::Closed));
    assert!(
        matches!(next(&mut live).await, Live::Closed),
        "and stays closed"
    );
}

#[tokio::test]
async fn the_end_alone_closes_the_subscriptions() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let (a, b) = replicas(&nats).await;
    let id = ExecutionId::generate();
    let mut live = b.subscribe(&id).await;
    a.publish(&id, Vec::new(), true);
    loop {
        match next(&mut live).await {
            Live::Batch(batch) => assert!(batch.is_empty()),
            Live::Closed => break,
            Live::Lagged => panic!("lagged"),
        }
    }
}

#[tokio::test]
async fn a_publish_right_after_subscribe_returns_is_never_missed() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let (a, b) = replicas(&nats).await;
    for round in 0..100 {
        let id = ExecutionId::generate();
        let mut live = b.subscribe(&id).await;
        a.publish(&id, events(1..=1, "now"), true);
        match next(&mut live).await {
            Live::Batch(batch) => assert_eq!(batch[0].event.seq, 1, "round {round}"),
            other => panic!("round {round}: the first publish was missed: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_large_commit_arrives_whole_in_messages_under_the_servers_max_payload() {
    let Some(nats) = NatsServer::start_with("max_payload: 8192") else {
        return;
    };
    let (a, b) = replicas(&nats).await;
    let id = ExecutionId::generate();
    let mut live = b.subscribe(&id).await;
    let line = "l".repeat(200);
    a.publish(&id, events(1..=3000, &line), true);
    let mut seen = Vec::new();
    loop {
        match next(&mut live).await {
            Live::Batch(batch) => {
                assert!(batch.len() < 3000, "split into several messages");
                seen.extend(batch.iter().map(|e| e.event.seq));
            }
            Live::Closed => break,
            Live::Lagged => panic!("lagged after {} events", seen.len()),
        }
    }
    assert_eq!(seen, (1..=3000).collect::<Vec<_>>());
}

#[tokio::test]
async fn losing_the_server_is_reported_and_its_return_needs_no_new_bus() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let (a, b) = replicas(&nats).await;
    let id = ExecutionId::generate();
    let mut live = b.subscribe(&id).await;
    a.publish(&id, events(1..=1, "before"), false);
    assert_eq!(seqs(next(&mut live).await), [1]);

    nats.kill();
    assert!(
        matches!(next(&mut live).await, Live::Lagged),
        "the follower is told to read the store"
    );
    assert!(
        matches!(next(&mut live).await, Live::Lagged),
        "and told again while the server is away, so it completes from the store"
    );
    assert!(!b.is_connected());
    // A follower that starts during the outage is told to read the store too.
    let late = ExecutionId::generate();
    let mut late_live = b.subscribe(&late).await;
    assert!(matches!(next(&mut late_live).await, Live::Lagged));

    nats.restart();
    connected(&a).await;
    connected(&b).await;
    // Once both have subscribed again, a publish comes through on the same subscriptions.
    for (id, live) in [(&id, &mut live), (&late, &mut late_live)] {
        let batch = live_again(&a, id, live).await;
        assert_eq!(
            batch[0].event.data.get(),
            r#"{"log":"after","stream":"stdout"}"#
        );
    }
}

/// Publishes until a batch comes through on `live`: the subscription is made again some time
/// after the client reconnects.
async fn live_again(a: &NatsBus, id: &ExecutionId, live: &mut Subscription) -> Batch {
    let mut seq = 2;
    tokio::time::timeout(WAIT, async {
        loop {
            a.publish(id, events(seq..=seq, "after"), false);
            seq += 1;
            let wait = tokio::time::timeout(Duration::from_millis(500), live.next());
            if let Ok(Live::Batch(batch)) = wait.await {
                return batch;
            }
        }
    })
    .await
    .expect("live again after the server's return")
}

#[tokio::test]
async fn credentials_in_the_url_are_presented_to_the_server() {
    let Some(nats) =
        NatsServer::start_with("authorization { user: runtime, password: \"s3c:ret\" }")
    else {
        return;
    };
    let url = nats.url().replace("nats://", "nats://runtime:s3c%3Aret@");
    let (a, b) = (
        NatsBus::connect(&url).await.unwrap(),
        NatsBus::connect(&url).await.unwrap(),
    );
    connected(&a).await;
    connected(&b).await;
    let id = ExecutionId::generate();
    let mut live = b.subscribe(&id).await;
    a.publish(&id, events(1..=1, "authorized"), true);
    assert_eq!(seqs(next(&mut live).await), [1]);
}

async fn ready(server: &TestServer) -> serde_json::Value {
    let (status, body) = server.client.get("/health/ready").await;
    assert_eq!(status, 200, "NATS away degrades, never fails: {body}");
    body
}

/// Polls readiness and the gauge until NATS is seen as `connected`.
async fn nats_seen(server: &TestServer, connected: bool) -> serde_json::Value {
    tokio::time::timeout(WAIT, async {
        loop {
            let body = ready(server).await;
            let gauge = format!("agentnexus_nats_connected {}", i32::from(connected));
            let scraped = scrape(&server.url).await;
            if (body["checks"]["bus"]["status"] == "ok") == connected
                && scraped.lines().any(|l| l == gauge)
            {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("readiness and the gauge follow the connection")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_nats_streams_live_and_completes_from_the_store_while_nats_is_down() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let gate = tempfile::tempdir().unwrap();
    let go = gate.path().join("go");
    let script = format!(
        "echo first; while [ ! -e {} ]; do sleep 0.05; done; i=1; while [ $i -le 50 ]; do echo \"line $i\"; i=$((i+1)); done",
        go.display()
    );
    let url = nats.url();
    let server = TestServer::start_with(vec![sh_agent("gated", "0", &script)], |config| {
        config.nats_url = Some(url);
    })
    .await;
    let body = nats_seen(&server, true).await;
    assert_eq!(body["status"], "healthy", "{body}");

    // Live over NATS: a short run, followed from the start.
    let quick = server.client.submit("gated", json!({})).await;
    std::fs::write(&go, "").unwrap();
    let mut ws = Ws::connect(&server).await;
    ws.subscribe(&quick, Some(0)).await;
    let events = ws.events_until_end(&quick).await;
    assert_gapless(&events);
    assert_eq!(log_lines(&events).len(), 51);

    // NATS dies mid-run: the follower still gets everything, from the store.
    std::fs::remove_file(&go).unwrap();
    let id = server.client.submit("gated", json!({})).await;
    let mut ws = Ws::connect(&server).await;
    ws.subscribe(&id, Some(0)).await;
    let follower = tokio::spawn(async move { ws.events_until_end(&id).await });
    nats.kill();
    let body = nats_seen(&server, false).await;
    assert_eq!(body["status"], "degraded", "{body}");
    std::fs::write(&go, "").unwrap();
    let events = tokio::time::timeout(WAIT, follower)
        .await
        .expect("the follower completes without NATS")
        .unwrap();
    assert_gapless(&events);
    let lines = log_lines(&events);
    assert_eq!(lines.first().map(String::as_str), Some("first"));
    assert_eq!(lines.last().map(String::as_str), Some("line 50"));
    assert_eq!(lines.len(), 51);

    nats.restart();
    let body = nats_seen(&server, true).await;
    assert_eq!(body["status"], "healthy", "{body}");
}

#[test]
fn a_nats_url_that_is_not_nats_is_refused_by_name_without_showing_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(dir.path(), "");
    let serve = |args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentnexus"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("nats_url must be a nats:// or tls:// URL"),
            "{stderr}"
        );
        assert!(!stderr.contains("s3cret"), "{stderr}");
    };
    serve(&["--nats-url", "http://user:s3cret@nats:4222"], &[]);
    serve(&[], &[("AGENTNEXUS_NATS_URL", "user:s3cret@nats:4222")]);
}

#[tokio::test]
async fn a_bus_starts_while_the_server_is_away_and_connects_when_it_comes() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    nats.kill();
    let bus = tokio::time::timeout(WAIT, NatsBus::connect(&nats.url()))
        .await
        .expect("starting does not wait for the server")
        .unwrap();
    assert!(!bus.is_connected());
    let id = ExecutionId::generate();
    let mut live = bus.subscribe(&id).await;
    assert!(matches!(next(&mut live).await, Live::Lagged));
    nats.restart();
    connected(&bus).await;
    let batch = live_again(&bus, &id, &mut live).await;
    assert_eq!(batch.len(), 1);
}
