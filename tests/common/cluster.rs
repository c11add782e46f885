//! Several `agentnexus serve` replicas on one fresh PostgreSQL database, with or without NATS
//! between them, and agents that leave a trace of each run in a file the test can read.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::postgres::{Route, database};
use super::{Client, ServerProcess, write_config};

/// The lease of the replicas unless a test says otherwise: short, so takeovers come soon.
pub const LEASE_MS: u64 = 1500;

/// Agents that leave a trace of each run in `runs`:
/// - `count`: one line per run, its input, written at once (runs at the same time do not mix);
/// - `long`: writes its pid to `<runs>.pid`, then ticks every 0.2 s until stopped;
/// - `lines`: 40 numbered lines over about two seconds, then completes;
/// - `gated`: says `waiting` until `<runs>.go` exists, then `live`, then ticks until stopped.
fn agents(runs: &Path) -> String {
    let runs = runs.display();
    format!(
        r#"
[[agents]]
id = "count"
name = "Count"
price_wei = "1"
runtime = {{ type = "process", command = "sh", args = ["-c", "printf '%s\\n' \"$(cat)\" >> {runs}; echo '{{}}'"] }}

[[agents]]
id = "long"
name = "Long"
price_wei = "1"
runtime = {{ type = "process", command = "sh", args = ["-c", "echo started; echo $$ > {runs}.pid; while true; do echo tick; sleep 0.2; done"] }}

[[agents]]
id = "lines"
name = "Lines"
price_wei = "1"
runtime = {{ type = "process", command = "sh", args = ["-c", "i=1; while [ $i -le 40 ]; do echo \"line $i\"; i=$((i+1)); sleep 0.05; done"] }}

[[agents]]
id = "gated"
name = "Gated"
price_wei = "1"
runtime = {{ type = "process", command = "sh", args = ["-c", "echo waiting; while [ ! -e {runs}.go ]; do sleep 0.05; done; echo live; while true; do echo tick; sleep 0.2; done"] }}
"#
    )
}

pub struct Cluster {
    pub replicas: Vec<ServerProcess>,
    pub runs: PathBuf,
    _dirs: Vec<tempfile::TempDir>,
}

/// `size` replicas on one database, without NATS (followers poll the database), or `None`
/// (after `skip`) without PostgreSQL.
pub fn cluster(size: usize) -> Option<Cluster> {
    cluster_with(size, LEASE_MS, None)
}

/// `size` replicas on one database, each with a lease of `lease_ms` and, given `nats_url`,
/// NATS between them.
pub fn cluster_with(size: usize, lease_ms: u64, nats_url: Option<&str>) -> Option<Cluster> {
    let url = database(Route::Direct)?;
    let shared = tempfile::tempdir().unwrap();
    let runs = shared.path().join("runs");
    let nats = nats_url.map_or(String::new(), |u| format!("nats_url = \"{u}\"\n"));
    let mut dirs = vec![shared];
    let mut replicas = Vec::new();
    for i in 0..size {
        let dir = tempfile::tempdir().unwrap();
        let extra = format!(
            "database_url = \"{url}\"\n{nats}replica_id = \"replica-{i}\"\nlease_ms = {lease_ms}\nmax_concurrent_executions = 4\n{}",
            agents(&runs)
        );
        replicas.push(ServerProcess::spawn(&write_config(dir.path(), &extra)));
        dirs.push(dir);
    }
    Some(Cluster {
        replicas,
        runs,
        _dirs: dirs,
    })
}

impl Cluster {
    pub fn client(&self, i: usize) -> Client {
        self.replicas[i % self.replicas.len()].client()
    }

    pub fn url(&self, i: usize) -> &str {
        &self.replicas[i % self.replicas.len()].url
    }

    /// The index of the replica named `replica_id` (an execution's `replicaId`).
    pub fn index_of(&self, replica_id: &Value) -> usize {
        let name = replica_id.as_str().expect("an owner");
        name.trim_start_matches("replica-").parse().unwrap()
    }

    /// Starts a long execution and waits until its agent runs; returns its id and its owner.
    pub async fn long_running(&self) -> (String, usize) {
        self.running("long").await
    }

    /// Submits an execution of `agent` and waits until it runs; returns its id and its owner.
    pub async fn running(&self, agent: &str) -> (String, usize) {
        let id = self.client(0).submit(agent, serde_json::json!({})).await;
        let running = self.client(0).wait_status(&id, "RUNNING", WAIT).await;
        let owner = self.index_of(&running["replicaId"]);
        (id, owner)
    }

    /// The pid the `long` agent writes as it starts (waited for: RUNNING comes first).
    pub async fn long_agent_pid(&self) -> i32 {
        let path = format!("{}.pid", self.runs.display());
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if let Ok(pid) = text.trim().parse() {
                return pid;
            }
            assert!(std::time::Instant::now() < deadline, "the agent started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Opens the gate the `gated` agent waits at.
    pub fn open_gate(&self) {
        std::fs::write(format!("{}.go", self.runs.display()), "").unwrap();
    }
}

/// A bound on waiting for what must come, so a broken cluster fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(60);

/// Waits until the process `pid` has exited.
pub async fn wait_gone(pid: i32) {
    let deadline = std::time::Instant::now() + WAIT;
    while !super::process_is_gone(pid) {
        assert!(std::time::Instant::now() < deadline, "the agent still runs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
