//! Three `agentnexus serve` replicas on one PostgreSQL database with a real NATS server between
//! them, followed over WebSocket: every follower, on whichever replica, gets each execution's
//! whole stream exactly once, through a cancel on a third replica, the SIGKILL of the owner
//! (the clients move to a survivor with `since`), the loss and return of NATS, and clients
//! that keep moving between replicas. A cancel through a replica that does not run the
//! execution reaches its owner over NATS at once, and through the database while NATS is away.

mod common;

use std::time::Duration;

use common::cluster::{Cluster, LEASE_MS, WAIT, cluster_with, wait_gone};
use common::nats::NatsServer;
use common::ws::{Got, Ws};
use common::{Client, assert_gapless};
use serde_json::{Value, json};

/// A client following one execution, across connections and replicas: every event it was
/// sent, in the order it came.
struct Follower {
    id: String,
    seen: Vec<Value>,
    ws: Option<Ws>,
}

/// What ended a `Follower::read`.
#[derive(Debug, PartialEq)]
enum Stop {
    /// The execution's final status event came.
    End,
    /// The connection was lost (its replica died).
    Lost,
    /// The wanted events came.
    Enough,
}

impl Follower {
    fn new(id: &str) -> Follower {
        Follower {
            id: id.to_owned(),
            seen: Vec::new(),
            ws: None,
        }
    }

    fn last_seq(&self) -> u64 {
        self.seen.last().map_or(0, |e| e["seq"].as_u64().unwrap())
    }

    /// Connects to the replica at `base` and subscribes from the last event seen.
    async fn connect(&mut self, base: &str) {
        let mut ws = Ws::connect_to(base).await;
        ws.subscribe(&self.id, Some(self.last_seq())).await;
        self.ws = Some(ws);
    }

    /// Drops the connection without a goodbye, as a client that goes away does.
    fn cut(&mut self) {
        self.ws = None;
    }

    /// Reads events until `enough` says so of the last one, the end, or the connection's loss.
    async fn read_until(&mut self, mut enough: impl FnMut(&Value) -> bool) -> Stop {
        let ws = self.ws.as_mut().expect("connected");
        loop {
            let m = match ws.next().await {
                Got::Message(m) => m,
                Got::Closed(_) => {
                    self.ws = None;
                    return Stop::Lost;
                }
            };
            match m["type"].as_str().unwrap() {
                "subscribed" => continue,
                "log" | "metrics" | "status" => assert_eq!(m["executionId"], self.id, "{m}"),
                _ => panic!("unexpected message: {m}"),
            }
            let end = m["type"] == "status"
                && matches!(
                    m["data"]["status"].as_str(),
                    Some("COMPLETED" | "FAILED" | "CANCELLED")
                );
            let wanted = enough(&m);
            self.seen.push(m);
            if end {
                return Stop::End;
            }
            if wanted {
                return Stop::Enough;
            }
        }
    }

    /// Reads `n` more events (or to the end, or the loss).
    async fn read(&mut self, n: usize) -> Stop {
        let mut left = n;
        self.read_until(|_| {
            left = left.saturating_sub(1);
            left == 0
        })
        .await
    }

    /// Reads until the log line `line` has come.
    async fn read_line(&mut self, line: &str) -> Stop {
        self.read_until(|m| m["type"] == "log" && m["data"]["log"] == line)
            .await
    }

    /// The final status event, after checking that the stream came whole, once, in order, and
    /// is what the database holds.
    async fn complete(&self, client: &Client) -> &Value {
        assert_gapless(&self.seen);
        let stored = client.all_events(&self.id).await;
        assert_gapless(&stored);
        assert_eq!(self.seen.len(), stored.len(), "every stored event was sent");
        let last = self.seen.last().unwrap();
        assert_eq!(last["type"], "status", "{last}");
        last
    }
}

/// Three replicas on NATS, each connected to it.
async fn live_cluster(nats: &NatsServer, lease_ms: u64) -> Option<Cluster> {
    let cluster = cluster_with(3, lease_ms, Some(&nats.url()))?;
    for i in 0..3 {
        bus_seen(&cluster.client(i), true).await;
    }
    Some(cluster)
}

/// Waits until the replica's readiness says the bus is `connected` (`healthy`) or not
/// (`degraded`, still 200: NATS away costs latency, not data).
async fn bus_seen(client: &Client, connected: bool) {
    let wanted = if connected { "healthy" } else { "degraded" };
    tokio::time::timeout(WAIT, async {
        loop {
            let (code, body) = client.get("/health/ready").await;
            assert_eq!(code, 200, "{body}");
            if (body["checks"]["bus"]["status"] == "ok") == connected && body["status"] == wanted {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("readiness follows the NATS connection")
}

async fn cancel(client: &Client, id: &str) -> Value {
    let (code, answer) = client
        .post(&format!("/api/executions/{id}/cancel"), json!({}))
        .await;
    assert!(code.is_success(), "{code}: {answer}");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_on_two_replicas_get_the_whole_stream_of_a_run_cancelled_on_a_third() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let Some(cluster) = live_cluster(&nats, LEASE_MS).await else {
        return;
    };
    let id = cluster.client(0).submit("long", json!({})).await;
    let mut followers = Vec::new();
    for replica in [1, 2] {
        let mut follower = Follower::new(&id);
        follower.connect(cluster.url(replica)).await;
        assert_eq!(follower.read_line("tick").await, Stop::Enough);
        followers.push(follower);
    }
    for follower in &mut followers {
        assert_eq!(follower.read(10).await, Stop::Enough);
    }
    cancel(&cluster.client(2), &id).await;
    for follower in &mut followers {
        assert_eq!(follower.read_until(|_| false).await, Stop::End);
        let last = follower.complete(&cluster.client(0)).await;
        assert_eq!(last["data"]["status"], "CANCELLED", "{last}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_owner_resume_on_a_survivor_and_get_every_event_once() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let Some(mut cluster) = live_cluster(&nats, LEASE_MS).await else {
        return;
    };
    let (id, owner) = cluster.long_running().await;
    let mut followers = Vec::new();
    for _ in 0..2 {
        let mut follower = Follower::new(&id);
        follower.connect(cluster.url(owner)).await;
        assert_eq!(follower.read(5).await, Stop::Enough);
        followers.push(follower);
    }
    cluster.replicas[owner].kill9();

    // A survivor ends the execution within the lease (and a renewal period) of the last renewal.
    let survivor = cluster.client(owner + 1);
    let within = Duration::from_millis(10 * LEASE_MS);
    let done = survivor.wait_terminal(&id, within).await;
    assert_eq!(done["status"], "FAILED", "{done}");
    assert_eq!(done["error"]["kind"], "replica_lost", "{done}");

    for (n, follower) in followers.iter_mut().enumerate() {
        assert_eq!(follower.read_until(|_| false).await, Stop::Lost);
        follower.connect(cluster.url(owner + 1 + n)).await;
        assert_eq!(follower.read_until(|_| false).await, Stop::End);
        let last = follower.complete(&survivor).await;
        assert_eq!(last["data"]["status"], "FAILED", "{last}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nats_followers_complete_from_the_database_and_its_return_makes_them_live() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let Some(cluster) = live_cluster(&nats, LEASE_MS).await else {
        return;
    };
    let (id, owner) = cluster.long_running().await;
    let others = [owner + 1, owner + 2];
    let mut followers = Vec::new();
    for replica in others {
        let mut follower = Follower::new(&id);
        follower.connect(cluster.url(replica)).await;
        assert_eq!(follower.read_line("tick").await, Stop::Enough);
        followers.push(follower);
    }

    nats.kill();
    for i in 0..3 {
        bus_seen(&cluster.client(i), false).await;
    }
    // The owner still runs and commits; the followers elsewhere read it from the database.
    for follower in &mut followers {
        assert_eq!(follower.read(10).await, Stop::Enough);
    }
    cancel(&cluster.client(owner + 1), &id).await;
    for follower in &mut followers {
        assert_eq!(follower.read_until(|_| false).await, Stop::End);
        let last = follower.complete(&cluster.client(0)).await;
        assert_eq!(last["data"]["status"], "CANCELLED", "{last}");
    }

    nats.restart();
    for i in 0..3 {
        bus_seen(&cluster.client(i), true).await;
    }
    // Live again: a line committed after the follower has subscribed on another replica comes
    // long before the follower's next look at the database (`QUIET_POLL`, 30 s), so over NATS.
    let (id, owner) = cluster.running("gated").await;
    let mut follower = Follower::new(&id);
    follower.connect(cluster.url(owner + 1)).await;
    assert_eq!(follower.read_line("waiting").await, Stop::Enough);
    cluster.open_gate();
    let live = tokio::time::timeout(Duration::from_secs(10), follower.read_line("live"));
    assert_eq!(live.await.expect("the line comes over NATS"), Stop::Enough);
    cancel(&cluster.client(owner), &id).await;
    assert_eq!(follower.read_until(|_| false).await, Stop::End);
    follower.complete(&cluster.client(0)).await;
}

/// splitmix64: a small seeded generator, so a failing run can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The seed from `AGENTNEXUS_TEST_SEED` (to replay a run), else from the clock; printed.
fn seed() -> u64 {
    let seed = std::env::var("AGENTNEXUS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            now.unwrap().as_nanos() as u64
        });
    println!("seed: {seed} (AGENTNEXUS_TEST_SEED={seed} replays it)");
    seed
}

const EXECUTIONS: usize = 30;
const CUTS: usize = 50;

/// Follows one execution through its planned cuts (each after so many events), connecting
/// each time to a random replica; returns the cuts made.
async fn follow_with_cuts(
    cluster: &Cluster,
    id: &str,
    cuts: Vec<usize>,
    mut rng: Rng,
) -> (Follower, usize) {
    let mut follower = Follower::new(id);
    let mut made = 0;
    for after in cuts {
        follower.connect(cluster.url(rng.below(3))).await;
        if follower.read(after).await == Stop::End {
            return (follower, made);
        }
        follower.cut();
        made += 1;
    }
    follower.connect(cluster.url(rng.below(3))).await;
    assert_eq!(follower.read_until(|_| false).await, Stop::End);
    (follower, made)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_moving_between_replicas_at_random_miss_nothing_and_repeat_nothing() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let Some(cluster) = live_cluster(&nats, LEASE_MS).await else {
        return;
    };
    let mut rng = Rng(seed());
    // Each of the 50 cuts falls on a random execution's follower, after a few events: fewer
    // than the `lines` agent's 40 lines in all, so every cut comes before the end.
    let mut plans = vec![Vec::new(); EXECUTIONS];
    for _ in 0..CUTS {
        plans[rng.below(EXECUTIONS)].push(0);
    }
    for plan in &mut plans {
        let most = (36 / plan.len().max(1)).min(6);
        for after in plan.iter_mut() {
            *after = 1 + rng.below(most);
        }
    }
    let cluster = std::sync::Arc::new(cluster);
    let mut tasks = Vec::new();
    for (n, plan) in plans.into_iter().enumerate() {
        let id = cluster.client(n).submit("lines", json!({})).await;
        let (cluster, rng) = (cluster.clone(), Rng(rng.next()));
        tasks.push(tokio::spawn(async move {
            follow_with_cuts(&cluster, &id, plan, rng).await
        }));
    }
    let mut cuts = 0;
    for task in tasks {
        let (follower, made) = tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
        let last = follower.complete(&cluster.client(0)).await;
        assert_eq!(last["data"]["status"], "COMPLETED", "{last}");
        let lines = follower.seen.iter().filter(|e| e["type"] == "log").count();
        assert_eq!(lines, 40, "every line once");
        cuts += made;
    }
    assert_eq!(cuts, CUTS, "every cut came before its execution's end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_through_another_replica_reaches_the_owner_over_nats_long_before_its_renewal() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    // Renewals every 20 s: the database alone would tell the owner that late.
    let Some(cluster) = live_cluster(&nats, 60_000).await else {
        return;
    };
    let (id, owner) = cluster.long_running().await;
    let pid = cluster.long_agent_pid().await;
    let other = cluster.client(owner + 1);
    let answer = tokio::time::timeout(Duration::from_secs(8), cancel(&other, &id))
        .await
        .expect("the owner stops the run as soon as NATS tells it");
    assert_eq!(answer["status"], "CANCELLED", "{answer}");
    assert_eq!(answer["replicaId"], format!("replica-{owner}"), "{answer}");
    wait_gone(pid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_down_a_cancel_through_another_replica_still_reaches_the_owner() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let Some(cluster) = live_cluster(&nats, LEASE_MS).await else {
        return;
    };
    let (id, owner) = cluster.long_running().await;
    let pid = cluster.long_agent_pid().await;
    nats.kill();
    for i in 0..3 {
        bus_seen(&cluster.client(i), false).await;
    }
    let other = cluster.client(owner + 1);
    cancel(&other, &id).await;
    let done = other.wait_terminal(&id, WAIT).await;
    assert_eq!(done["status"], "CANCELLED", "{done}");
    assert_eq!(done["error"]["kind"], "cancelled", "{done}");
    wait_gone(pid).await;
}
