//! Several `agentnexus serve` replicas on one PostgreSQL database: each PENDING execution,
//! whichever replica it was submitted to, runs exactly once on one of them; when the replica
//! running an execution dies, a survivor ends it FAILED `replica_lost` with its final event;
//! a replica that was frozen past its lease writes nothing more for it and stops its agent; a
//! cancel through any replica reaches the replica running the execution; a follower on a replica
//! that does not run the execution gets its whole stream, without NATS (by polling the database).

mod common;

use std::time::Duration;

use common::cluster::{LEASE_MS, WAIT, cluster, wait_gone};
use common::ws::Ws;
use common::{assert_gapless, statuses};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_submitted_to_any_replica_each_run_exactly_once() {
    let Some(cluster) = cluster(3) else { return };
    let mut ids = Vec::new();
    for n in 0..30 {
        let id = cluster.client(n).submit("count", json!({"n": n})).await;
        ids.push(id);
    }
    let mut owners = std::collections::BTreeSet::new();
    for id in &ids {
        let done = cluster.client(0).wait_terminal(id, WAIT).await;
        assert_eq!(done["status"], "COMPLETED", "{done}");
        owners.insert(done["replicaId"].as_str().unwrap().to_owned());
        let events = cluster.client(1).all_events(id).await;
        assert_gapless(&events);
        assert_eq!(statuses(&events), ["PENDING", "RUNNING", "COMPLETED"]);
    }
    let runs = std::fs::read_to_string(&cluster.runs).unwrap();
    let mut seen: Vec<&str> = runs.lines().filter(|l| !l.is_empty()).collect();
    seen.sort();
    let mut expected: Vec<String> = (0..30).map(|n| json!({"n": n}).to_string()).collect();
    expected.sort();
    assert_eq!(seen, expected, "each execution ran exactly once");
    assert!(!owners.is_empty(), "{owners:?}");
}

fn ends_replica_lost(done: &Value, events: &[Value]) {
    assert_eq!(done["status"], "FAILED", "{done}");
    assert_eq!(done["error"]["kind"], "replica_lost", "{done}");
    assert_gapless(events);
    let last = events.last().unwrap();
    assert_eq!(last["type"], "status", "{last}");
    assert_eq!(last["data"]["status"], "FAILED", "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_execution_of_a_killed_replica_ends_replica_lost_on_a_survivor() {
    let Some(mut cluster) = cluster(2) else {
        return;
    };
    let (id, owner) = cluster.long_running().await;
    cluster.replicas[owner].kill9();
    let survivor = cluster.client(owner + 1);
    let done = survivor.wait_terminal(&id, WAIT).await;
    let events = survivor.all_events(&id).await;
    ends_replica_lost(&done, &events);
    assert_eq!(done["replicaId"], format!("replica-{}", (owner + 1) % 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_on_another_replica_than_the_owner_gets_the_whole_stream_without_nats() {
    let Some(cluster) = cluster(2) else { return };
    let (id, owner) = cluster.long_running().await;
    let other = (owner + 1) % 2;
    let mut ws = Ws::connect_to(&cluster.replicas[other].url).await;
    ws.subscribe(&id, Some(0)).await;
    // Ticks the owner commits after the subscription reach the follower on the other replica ...
    let mut ticks = 0;
    let mut seen = Vec::new();
    while ticks < 15 {
        let m = ws.message().await;
        if m["type"] == "log" && m["data"]["log"] == "tick" {
            ticks += 1;
        }
        if m["type"] != "subscribed" {
            seen.push(m);
        }
    }
    // ... and so does the end.
    let (code, answer) = cluster
        .client(owner)
        .post(&format!("/api/executions/{id}/cancel"), json!({}))
        .await;
    assert!(code.is_success(), "{code}: {answer}");
    seen.extend(ws.events_until_end(&id).await);
    assert_gapless(&seen);
    assert_eq!(seen.last().unwrap()["data"]["status"], "CANCELLED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_through_a_replica_that_does_not_run_the_execution_stops_it() {
    let Some(cluster) = cluster(2) else { return };
    let (id, owner) = cluster.long_running().await;
    let other = cluster.client(owner + 1);
    let (code, answer) = other
        .post(&format!("/api/executions/{id}/cancel"), json!({}))
        .await;
    assert!(code.is_success(), "{code}: {answer}");
    assert_eq!(answer["executionId"], id, "{answer}");
    let done = other.wait_terminal(&id, WAIT).await;
    assert_eq!(done["status"], "CANCELLED", "{done}");
    assert_eq!(done["error"]["kind"], "cancelled", "{done}");
    assert_eq!(done["replicaId"], format!("replica-{owner}"), "{done}");
    let events = other.all_events(&id).await;
    assert_gapless(&events);
    let last = events.last().unwrap();
    assert_eq!(last["type"], "status", "{last}");
    assert_eq!(last["data"]["status"], "CANCELLED", "{last}");
    wait_gone(cluster.long_agent_pid().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_frozen_past_its_lease_writes_nothing_more_and_stops_its_agent() {
    let Some(cluster) = cluster(2) else { return };
    let (id, owner) = cluster.long_running().await;
    let pid = cluster.replicas[owner].child.id() as i32;
    let survivor = cluster.client(owner + 1);
    // SAFETY: signals a child of this test.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let done = survivor.wait_terminal(&id, WAIT).await;
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let before = survivor.all_events(&id).await;
    ends_replica_lost(&done, &before);

    // The thawed owner finds its lease lost: it stops the agent and stores nothing more.
    wait_gone(cluster.long_agent_pid().await).await;
    tokio::time::sleep(Duration::from_millis(2 * LEASE_MS)).await;
    let after = survivor.all_events(&id).await;
    assert_eq!(after, before, "nothing was stored after the lease was lost");
}
