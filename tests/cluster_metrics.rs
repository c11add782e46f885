//! The metrics of several `agentnexus serve` replicas on one PostgreSQL database, scraped from
//! each replica as Prometheus scrapes every pod: summed over the replicas, each figure is the
//! cluster's. Facts of the cluster (revenue, the shared queue's depth, replicas seen) are
//! exported by exactly one replica, and by another once it dies; what a replica did (lease
//! takeovers, writes its fence refused) is counted by that replica.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::deploy::{dashboard, deploy, panels_by_row};
use common::nats::NatsServer;
use common::postgres::{Route, database};
use common::prometheus::{Prometheus, sample, samples};
use common::tools::{Tool, have};
use common::{Client, ServerProcess, scrape, write_config};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const LEASE_MS: u64 = 1500;

fn agents(runs: &Path) -> String {
    let pid = format!("{}.pid", runs.display());
    format!(
        r#"
[[agents]]
id = "paid"
name = "Paid"
price_wei = "7"
runtime = {{ type = "process", command = "sh", args = ["-c", "sleep 0.3; echo '{{}}'"] }}

[[agents]]
id = "long"
name = "Long"
price_wei = "1"
runtime = {{ type = "process", command = "sh", args = ["-c", "echo $$ > {pid}; while true; do echo tick; sleep 0.2; done"] }}
"#
    )
}

/// Replicas on one database, each running at most `slots` executions at once.
struct Cluster {
    url: String,
    slots: usize,
    /// More configuration for every replica.
    extra: String,
    replicas: Vec<Option<ServerProcess>>,
    dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    fn start(size: usize, slots: usize) -> Option<Cluster> {
        Cluster::start_with(size, slots, String::new())
    }

    fn start_with(size: usize, slots: usize, extra: String) -> Option<Cluster> {
        let mut cluster = Cluster {
            url: database(Route::Direct)?,
            slots,
            extra,
            replicas: Vec::new(),
            dirs: vec![tempfile::tempdir().unwrap()],
        };
        for _ in 0..size {
            cluster.add();
        }
        Some(cluster)
    }

    /// Starts one more replica, `replica-<n>`.
    fn add(&mut self) {
        let n = self.replicas.len();
        let dir = tempfile::tempdir().unwrap();
        let extra = format!(
            "database_url = \"{}\"\nreplica_id = \"replica-{n}\"\nlease_ms = {LEASE_MS}\nmax_concurrent_executions = {}\n{}\n{}",
            self.url,
            self.slots,
            self.extra,
            agents(&self.dirs[0].path().join("runs"))
        );
        self.replicas.push(Some(ServerProcess::spawn(&write_config(
            dir.path(),
            &extra,
        ))));
        self.dirs.push(dir);
    }

    fn replica(&self, n: usize) -> &ServerProcess {
        self.replicas[n].as_ref().expect("a live replica")
    }

    fn client(&self, n: usize) -> Client {
        self.replica(n).client()
    }

    fn kill(&mut self, n: usize) {
        self.replicas[n].take().expect("a live replica").kill9();
    }

    fn alive(&self) -> Vec<usize> {
        (0..self.replicas.len())
            .filter(|n| self.replicas[*n].is_some())
            .collect()
    }

    /// Each live replica's samples of `name` whose labels include `labels`, by replica.
    async fn scrape(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(usize, f64)> {
        let mut found = Vec::new();
        for n in self.alive() {
            let text = scrape(&self.replica(n).url).await;
            for ((sample, have), value) in samples(&text) {
                let matches = labels
                    .iter()
                    .all(|(k, v)| have.get(*k).map(String::as_str) == Some(*v));
                if sample == name && matches {
                    found.push((n, value));
                }
            }
        }
        found
    }

    /// Waits until the samples of `name` with `labels` are `wanted`, by replica.
    async fn counts(&self, name: &str, labels: &[(&str, &str)], wanted: &[(usize, f64)]) {
        wait_for(&format!("{name} {labels:?} at {wanted:?}"), || async {
            let mut found = self.scrape(name, labels).await;
            found.sort_by_key(|(n, _)| *n);
            (found == wanted).then_some(())
        })
        .await
    }

    /// The replica that exports the cluster's facts, once exactly one does.
    async fn exporter(&self) -> usize {
        wait_for(
            "exactly one replica exporting the cluster's facts",
            || async {
                let exporters: Vec<usize> = self
                    .scrape("agentnexus_cluster_facts_exporter", &[])
                    .await
                    .into_iter()
                    .filter(|(_, v)| *v == 1.0)
                    .map(|(n, _)| n)
                    .collect();
                (exporters.len() == 1).then(|| exporters[0])
            },
        )
        .await
    }

    /// Waits until exactly one replica exports `name`, at `wanted`.
    async fn exported_once(&self, name: &str, wanted: f64) {
        wait_for(&format!("{name} at {wanted}, exported once"), || async {
            let series = self.scrape(name, &[]).await;
            (series.len() == 1 && series[0].1 == wanted).then_some(())
        })
        .await
    }

    /// The agent's revenue as the store has it, exactly.
    async fn stored_revenue(&self, agent: &str) -> f64 {
        let n = self.alive()[0];
        let (_, body) = self
            .client(n)
            .get(&format!("/api/agents/{agent}/revenue"))
            .await;
        body["revenueWei"].as_str().unwrap().parse().unwrap()
    }

    /// Waits until the revenue summed over the replicas is the store's, and only one replica
    /// exports it.
    async fn revenue_summed_is_stored(&self, agent: &str) {
        let stored = self.stored_revenue(agent).await;
        wait_for(
            &format!("the revenue of {agent} summed over the replicas to be {stored}"),
            || async {
                let series = self
                    .scrape("agentnexus_agent_revenue_wei", &[("agent_id", agent)])
                    .await;
                let sum: f64 = series.iter().map(|(_, v)| v).sum();
                (series.len() == 1 && sum == stored).then_some(())
            },
        )
        .await;
    }
}

/// Polls `probe` until it finds something, up to `WAIT`.
async fn wait_for<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "waited in vain for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `count` executions of `paid` through the live replicas in turn, to their end; returns
/// the replicas that ran them.
async fn run_paid(cluster: &Cluster, count: usize) -> std::collections::BTreeSet<String> {
    let alive = cluster.alive();
    let mut ids = Vec::new();
    for i in 0..count {
        let client = cluster.client(alive[i % alive.len()]);
        ids.push(client.submit("paid", json!({ "n": i })).await);
    }
    let mut owners = std::collections::BTreeSet::new();
    for id in ids {
        let done = cluster.client(alive[0]).wait_terminal(&id, WAIT).await;
        assert_eq!(done["status"], "COMPLETED", "{done}");
        owners.insert(done["replicaId"].as_str().unwrap().to_owned());
    }
    owners
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revenue_summed_over_the_replicas_is_the_store_s_revenue() {
    let Some(mut cluster) = Cluster::start(2, 1) else {
        return;
    };
    let owners = run_paid(&cluster, 6).await;
    assert!(owners.len() > 1, "ran on one replica only: {owners:?}");
    cluster.revenue_summed_is_stored("paid").await;

    // A replica that joins later, and finds revenue in the store, adds none of it again.
    cluster.add();
    let owners = run_paid(&cluster, 6).await;
    assert!(owners.len() > 1, "ran on one replica only: {owners:?}");
    cluster.revenue_summed_is_stored("paid").await;
    assert_eq!(cluster.stored_revenue("paid").await, 12.0 * 7.0);

    // So does an agent defined through one replica, with executions on others.
    let agent = json!({
        "id": "added",
        "name": "Added",
        "priceWei": "5",
        "runtime": {"type": "process", "command": "sh", "args": ["-c", "echo '{}'"]}
    });
    let (code, body) = cluster.client(2).post("/api/agents", agent).await;
    assert!(code.is_success(), "{code}: {body}");
    for n in 0..3 {
        let id = cluster.client(n).submit("added", json!({})).await;
        let done = cluster.client(0).wait_terminal(&id, WAIT).await;
        assert_eq!(done["status"], "COMPLETED", "{done}");
    }
    cluster.revenue_summed_is_stored("added").await;
    assert_eq!(cluster.stored_revenue("added").await, 15.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replica_exports_the_cluster_s_facts_once_their_exporter_is_killed() {
    let Some(mut cluster) = Cluster::start(3, 2) else {
        return;
    };
    run_paid(&cluster, 3).await;
    let exporter = cluster.exporter().await;
    cluster.revenue_summed_is_stored("paid").await;

    cluster.kill(exporter);
    let next = cluster.exporter().await;
    assert_ne!(next, exporter);
    cluster.revenue_summed_is_stored("paid").await;
    run_paid(&cluster, 2).await;
    cluster.revenue_summed_is_stored("paid").await;
    assert_eq!(cluster.stored_revenue("paid").await, 5.0 * 7.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_seen_are_the_live_ones_exported_once() {
    let Some(mut cluster) = Cluster::start(3, 2) else {
        return;
    };
    let seen = "agentnexus_cluster_replicas";
    cluster.exported_once(seen, 3.0).await;
    let exporter = cluster.exporter().await;
    cluster.kill((exporter + 1) % 3);
    cluster.exported_once(seen, 2.0).await;
    cluster.kill(exporter);
    cluster.exported_once(seen, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_queue_s_depth_is_the_pending_executions_of_the_cluster_exported_once() {
    // Two replicas with one slot each: two long executions take both, three more wait.
    let Some(cluster) = Cluster::start(2, 1) else {
        return;
    };
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            cluster
                .client(n % 2)
                .submit("long", json!({ "n": n }))
                .await,
        );
    }
    let depth = "agentnexus_execution_queue_depth";
    cluster.exported_once(depth, 3.0).await;
    let pending = pending_of(&cluster, &ids).await;
    let (code, body) = cluster
        .client(0)
        .post(&format!("/api/executions/{}/cancel", pending), json!({}))
        .await;
    assert!(code.is_success(), "{code}: {body}");
    cluster.exported_once(depth, 2.0).await;
}

/// One of `ids` that is still PENDING.
async fn pending_of(cluster: &Cluster, ids: &[String]) -> String {
    for id in ids {
        let execution: Value = cluster.client(0).execution(id).await;
        if execution["status"] == "PENDING" {
            return id.clone();
        }
    }
    panic!("none of {ids:?} is PENDING");
}

/// Starts a long execution and waits until it runs; returns its id and its owner.
async fn long_running(cluster: &Cluster) -> (String, usize) {
    let id = cluster.client(0).submit("long", json!({})).await;
    let running = cluster.client(0).wait_status(&id, "RUNNING", WAIT).await;
    let owner = running["replicaId"].as_str().unwrap();
    (id, owner.trim_start_matches("replica-").parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_survivor_that_ends_a_killed_replica_s_execution_counts_a_lease_takeover() {
    let Some(mut cluster) = Cluster::start(2, 2) else {
        return;
    };
    let (id, owner) = long_running(&cluster).await;
    let survivor = (owner + 1) % 2;
    cluster.kill(owner);
    let done = cluster.client(survivor).wait_terminal(&id, WAIT).await;
    assert_eq!(done["error"]["kind"], "replica_lost", "{done}");
    assert_eq!(done["replicaId"], format!("replica-{survivor}"), "{done}");

    // The survivor counts the takeover, and the execution's end, once.
    let takeovers = "agentnexus_lease_takeovers_total";
    cluster.counts(takeovers, &[], &[(survivor, 1.0)]).await;
    let failed = [("agent_id", "long"), ("status", "FAILED")];
    let statuses = "agentnexus_execution_status_total";
    cluster.counts(statuses, &failed, &[(survivor, 1.0)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_frozen_past_its_lease_counts_the_writes_its_fence_refused() {
    let Some(cluster) = Cluster::start(2, 2) else {
        return;
    };
    let (id, owner) = long_running(&cluster).await;
    let survivor = (owner + 1) % 2;
    let memory = [("execution_id", id.as_str())];
    wait_for("a memory sample of the execution", || async {
        let series = cluster
            .scrape("agentnexus_container_memory_bytes", &memory)
            .await;
        (!series.is_empty()).then_some(())
    })
    .await;
    let pid = cluster.replica(owner).child.id() as i32;
    // SAFETY: signals a child of this test.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let done = cluster.client(survivor).wait_terminal(&id, WAIT).await;
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_eq!(done["error"]["kind"], "replica_lost", "{done}");

    // The thawed owner's writes for the execution are refused, and counted there.
    wait_for("a fenced write counted by the frozen owner", || async {
        let refused = cluster
            .scrape("agentnexus_fenced_writes_refused_total", &[])
            .await;
        let by_owner = refused.iter().find(|(n, _)| *n == owner).map(|(_, v)| *v);
        let by_survivor = refused
            .iter()
            .find(|(n, _)| *n == survivor)
            .map(|(_, v)| *v);
        (by_owner >= Some(1.0) && by_survivor == Some(0.0)).then_some(())
    })
    .await;
    // Its end is the survivor's to count; the owner's gauges of it go with the run.
    wait_for("no more resource gauges of the execution", || async {
        let series = cluster
            .scrape("agentnexus_container_memory_bytes", &memory)
            .await;
        series.is_empty().then_some(())
    })
    .await;
    let takeovers = "agentnexus_lease_takeovers_total";
    cluster
        .counts(takeovers, &[], &[(owner, 0.0), (survivor, 1.0)])
        .await;
    let failed = [("agent_id", "long"), ("status", "FAILED")];
    let statuses = "agentnexus_execution_status_total";
    cluster
        .counts(statuses, &failed, &[(owner, 0.0), (survivor, 1.0)])
        .await;
}

/// A dashboard query as Grafana sends it, its variables replaced.
fn substitute(expr: &str) -> String {
    let out = expr
        .replace("$__rate_interval", "1m")
        .replace("$__range", "10m")
        .replace("$job", "agentnexus")
        .replace("$agent", ".*");
    assert!(!out.contains('$'), "an unknown variable in {expr}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_cluster_from_real_prometheus_scraping_every_replica() {
    if !have(Tool::Prometheus) {
        return;
    }
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let nats_url = format!("nats_url = \"{}\"", nats.url());
    let Some(cluster) = Cluster::start_with(3, 2, nats_url) else {
        return;
    };
    run_paid(&cluster, 3).await;
    let targets: Vec<String> = (0..3)
        .map(|n| cluster.replica(n).addr.to_string())
        .collect();
    let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
    let alerts = deploy("prometheus/alerts.yml");
    let prometheus = Prometheus::start_all(&targets, &[&alerts]);
    prometheus
        .wait_for("count(up{job=\"agentnexus\"} == 1)", 3.0)
        .await;
    prometheus
        .wait_for("sum(agentnexus_cluster_replicas)", 3.0)
        .await;
    prometheus
        .wait_for("sum(agentnexus_agent_revenue_wei)", 21.0)
        .await;
    prometheus
        .wait_for("sum(agentnexus_nats_connected)", 3.0)
        .await;
    // Two more scrapes, so that increase() has two samples of every counter.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut checked = Vec::new();
    for (row, panel) in panels_by_row(&dashboard()) {
        let title = panel["title"].as_str().unwrap();
        if row != "Cluster" && !["Total Revenue", "Queue Depth"].contains(&title) {
            continue;
        }
        let expr = substitute(panel["targets"][0]["expr"].as_str().unwrap());
        let result = prometheus.query(&expr).await;
        let values: Vec<f64> = result.iter().map(sample).collect();
        let per_replica = |v: f64| assert_eq!(values, [v; 3], "{title}: {result:?}");
        match title {
            "Total Revenue" => assert_eq!(values, [21.0], "{title}: {result:?}"),
            "Queue Depth" => assert_eq!(values, [0.0], "{title}: {result:?}"),
            "Replicas Seen" => assert_eq!(values, [3.0], "{title}: {result:?}"),
            "Facts Exporter" => {
                let mut sorted = values.clone();
                sorted.sort_by(f64::total_cmp);
                assert_eq!(sorted, [0.0, 0.0, 1.0], "{title}: {result:?}");
            }
            "NATS Connected" => per_replica(1.0),
            "Lease Takeovers" | "Fenced Writes Refused" => per_replica(0.0),
            other => panic!("panel \"{other}\" has no expected value in this test: add one"),
        }
        checked.push(title.to_owned());
    }
    assert_eq!(checked.len(), 7, "{checked:?}");
    let firing = prometheus.query("ALERTS{alertstate=\"firing\"}").await;
    assert!(firing.is_empty(), "{firing:?}");
}
