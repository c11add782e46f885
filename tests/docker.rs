//! The docker runtime against the real Docker engine: the same behaviours as the process
//! executor (run side by side), live logs and resource samples, the hardening defaults, OOM,
//! resuming containers after a `kill -9` of the runtime, and a daemon outage through a socket
//! proxy. Without Docker the tests print `SKIPPED: <reason>` and pass, unless
//! `AGENTNEXUS_REQUIRE_TOOLS` is set (CI), where they fail.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use agentnexus::config::ConfigAgent;
use agentnexus::domain::Runtime;
use common::{Client, ServerProcess, TestServer, assert_gapless, log_lines, sh_agent};
use reqwest::StatusCode;
use serde_json::{Value, json};

const IMAGE: &str = "agentnexus-test-busybox:1";
const WAIT: Duration = Duration::from_secs(30);

/// Whether Docker and the test image are there; prints why not, or fails when CI requires it.
fn docker_ready() -> bool {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        let info = Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output();
        match info {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                return Err(format!(
                    "the Docker daemon is not reachable: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Err(e) => return Err(format!("no docker command: {e}")),
        }
        let present = Command::new("docker")
            .args(["image", "inspect", IMAGE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !present {
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/docker/build-test-image.sh");
            let out = Command::new("sh").arg(script).arg(IMAGE).output();
            match out {
                Ok(out) if out.status.success() => {}
                Ok(out) => {
                    return Err(format!(
                        "cannot build the test image {IMAGE}: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                Err(e) => return Err(format!("cannot run the image build script: {e}")),
            }
        }
        Ok(())
    });
    match ready {
        Ok(()) => true,
        Err(why) => common::skip(why),
    }
}

macro_rules! require_docker {
    () => {
        if !docker_ready() {
            return;
        }
    };
}

fn docker_agent(id: &str, script: &str) -> ConfigAgent {
    ConfigAgent {
        runtime: Runtime::docker(IMAGE, &["sh", "-c", script]),
        ..sh_agent(id, "1", "")
    }
}

/// Changes a docker agent's settings.
fn with(mut agent: ConfigAgent, tweak: impl FnOnce(&mut u64, &mut f64, &mut u64)) -> ConfigAgent {
    if let Runtime::Docker {
        memory_bytes,
        cpu_quota,
        tmp_bytes,
        ..
    } = &mut agent.runtime
    {
        tweak(memory_bytes, cpu_quota, tmp_bytes);
    }
    agent
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Process,
    Docker,
}

const BOTH: [Kind; 2] = [Kind::Process, Kind::Docker];

/// The same script as a process agent or a docker agent, ids prefixed by kind.
fn agent(kind: Kind, id: &str, script: &str) -> ConfigAgent {
    match kind {
        Kind::Process => sh_agent(&format!("process-{id}"), "1", script),
        Kind::Docker => docker_agent(&format!("docker-{id}"), script),
    }
}

fn id(kind: Kind, id: &str) -> String {
    match kind {
        Kind::Process => format!("process-{id}"),
        Kind::Docker => format!("docker-{id}"),
    }
}

/// Containers (any state) labelled with this execution id.
fn containers_of(execution_id: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-a", "-q", "--filter"])
        .arg(format!("label=agentnexus.execution={execution_id}"))
        .output()
        .expect("docker ps runs");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

async fn wait_no_container(execution_id: &str) {
    for _ in 0..100 {
        if containers_of(execution_id).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "containers left behind for {execution_id}: {:?}",
        containers_of(execution_id)
    );
}

async fn wait_lines(client: &Client, id: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let events = client.all_events(id).await;
        if log_lines(&events).len() >= n {
            return events;
        }
        assert!(Instant::now() < deadline, "{id} never logged {n} lines");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- 1. the same behaviours as the process executor ----

#[tokio::test]
async fn success_with_input_env_and_last_json_line_as_output() {
    require_docker!();
    let script = r#"read input; echo "got $input"; echo "env $EXECUTION_ID $AGENT_ID $INPUT_DATA"; echo '{"answer": 42}'; echo done"#;
    let server = TestServer::start(BOTH.iter().map(|&k| agent(k, "echo", script)).collect()).await;
    let client = &server.client;
    for kind in BOTH {
        let agent_id = id(kind, "echo");
        let exec = client.submit(&agent_id, json!({"q": "life"})).await;
        let execution = client.wait_terminal(&exec, WAIT).await;
        assert_eq!(execution["status"], "COMPLETED", "{kind:?}: {execution}");
        assert_eq!(execution["output"], json!({"answer": 42}), "{kind:?}");
        assert_eq!(execution["exitCode"], 0, "{kind:?}");
        let events = client.all_events(&exec).await;
        assert_gapless(&events);
        assert_eq!(
            log_lines(&events),
            [
                r#"got {"q":"life"}"#.to_owned(),
                format!(r#"env {exec} {agent_id} {{"q":"life"}}"#),
                r#"{"answer": 42}"#.to_owned(),
                "done".to_owned(),
            ],
            "{kind:?}"
        );
        let statuses = common::statuses(&events);
        assert_eq!(statuses, ["PENDING", "RUNNING", "COMPLETED"], "{kind:?}");
        if let Kind::Docker = kind {
            wait_no_container(&exec).await;
        }
    }
}

#[tokio::test]
async fn the_output_file_wins_over_stdout_and_a_broken_one_fails() {
    require_docker!();
    let mut agents = Vec::new();
    for kind in BOTH {
        agents.push(agent(
            kind,
            "file",
            r#"echo '{"from": "stdout"}'; echo '{"from": "file"}' > "$AGENTNEXUS_OUTPUT""#,
        ));
        agents.push(agent(
            kind,
            "broken",
            r#"echo 'not json' > "$AGENTNEXUS_OUTPUT""#,
        ));
        agents.push(agent(kind, "none", "echo plain text"));
    }
    let server = TestServer::start(agents).await;
    let client = &server.client;
    for kind in BOTH {
        let file = client.submit(&id(kind, "file"), json!({})).await;
        let broken = client.submit(&id(kind, "broken"), json!({})).await;
        let none = client.submit(&id(kind, "none"), json!({})).await;
        let file = client.wait_terminal(&file, WAIT).await;
        assert_eq!(file["status"], "COMPLETED", "{kind:?}: {file}");
        assert_eq!(file["output"], json!({"from": "file"}), "{kind:?}");
        let broken = client.wait_terminal(&broken, WAIT).await;
        assert_eq!(broken["status"], "FAILED", "{kind:?}");
        assert_eq!(broken["error"]["kind"], "invalid_output", "{kind:?}");
        let none = client.wait_terminal(&none, WAIT).await;
        assert_eq!(none["status"], "COMPLETED", "{kind:?}");
        assert_eq!(none["output"], json!(null), "{kind:?}");
    }
}

#[tokio::test]
async fn a_non_zero_exit_fails_with_its_code_and_streams_are_tagged() {
    require_docker!();
    let script = "echo working; echo 'boom: model refused' >&2; exit 3";
    let server = TestServer::start(BOTH.iter().map(|&k| agent(k, "fail", script)).collect()).await;
    let client = &server.client;
    for kind in BOTH {
        let exec = client.submit(&id(kind, "fail"), json!({})).await;
        let execution = client.wait_terminal(&exec, WAIT).await;
        assert_eq!(execution["status"], "FAILED", "{kind:?}");
        assert_eq!(execution["exitCode"], 3, "{kind:?}");
        assert_eq!(execution["error"]["kind"], "exit_code", "{kind:?}");
        let events = client.all_events(&exec).await;
        let streams: Vec<_> = common::tagged_lines(&events);
        assert!(
            streams.contains(&("stdout", "working")),
            "{kind:?} {streams:?}"
        );
        assert!(
            streams.contains(&("stderr", "boom: model refused")),
            "{kind:?} {streams:?}"
        );
    }
}

/// Ignores SIGTERM (a shell as PID 1 does anyway): only the kill after the grace stops it.
const STUBBORN: &str = r#"trap "" TERM; echo started; while true; do sleep 0.1; done"#;

#[tokio::test]
async fn a_timeout_fails_the_execution_and_removes_the_container() {
    require_docker!();
    let agents = BOTH
        .iter()
        .map(|&k| ConfigAgent {
            timeout_secs: Some(1),
            ..agent(k, "slow", STUBBORN)
        })
        .collect();
    let server = TestServer::start(agents).await;
    let client = &server.client;
    for kind in BOTH {
        let exec = client.submit(&id(kind, "slow"), json!({})).await;
        let execution = client.wait_terminal(&exec, WAIT).await;
        assert_eq!(execution["status"], "FAILED", "{kind:?}: {execution}");
        assert_eq!(execution["error"]["kind"], "timeout", "{kind:?}");
        assert_eq!(log_lines(&client.all_events(&exec).await), ["started"]);
        if let Kind::Docker = kind {
            wait_no_container(&exec).await;
        }
    }
}

#[tokio::test]
async fn cancelling_a_running_container_stops_and_removes_it() {
    require_docker!();
    let server =
        TestServer::start(BOTH.iter().map(|&k| agent(k, "slow", STUBBORN)).collect()).await;
    let client = &server.client;
    for kind in BOTH {
        let exec = client.submit(&id(kind, "slow"), json!({})).await;
        wait_lines(client, &exec, 1).await;
        if let Kind::Docker = kind {
            assert_eq!(containers_of(&exec).len(), 1, "the container runs");
        }
        let (status, body) = client
            .post(&format!("/api/executions/{exec}/cancel"), json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "{kind:?}: {body}");
        assert_eq!(body["status"], "CANCELLED", "{kind:?}");
        assert_eq!(body["error"]["kind"], "cancelled", "{kind:?}");
        if let Kind::Docker = kind {
            wait_no_container(&exec).await;
        }
    }
}

#[tokio::test]
async fn a_missing_image_fails_with_image_not_found() {
    require_docker!();
    let mut agent = docker_agent("ghost", "true");
    agent.runtime = Runtime::docker("agentnexus-no-such-image:404", &[]);
    let server = TestServer::start(vec![agent]).await;
    let exec = server.client.submit("ghost", json!({})).await;
    let execution = server.client.wait_terminal(&exec, WAIT).await;
    assert_eq!(execution["status"], "FAILED");
    assert_eq!(execution["error"]["kind"], "image_not_found", "{execution}");
}

// ---- 2. live logs and resource samples ----

#[tokio::test]
async fn lines_arrive_while_the_container_runs() {
    require_docker!();
    // Each line carries the agent's own clock (the kernel's uptime, which the container shares).
    let script = r#"for i in 1 2 3 4 5 6 7 8 9 10; do echo "tick $i $(cut -d' ' -f1 /proc/uptime)"; sleep 0.2; done"#;
    let server = TestServer::start(vec![docker_agent("ticker", script)]).await;
    let client = &server.client;
    let exec = client.submit("ticker", json!({})).await;
    let execution = client.wait_terminal(&exec, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    let events = client.all_events(&exec).await;
    let logs: Vec<(f64, i64)> = events
        .iter()
        .filter(|e| e["type"] == "log")
        .map(|e| {
            let line = e["data"]["log"].as_str().unwrap();
            let written: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            (written * 1000.0, e["timestamp"].as_i64().unwrap())
        })
        .collect();
    assert_eq!(logs.len(), 10);
    // Arrival minus writing time is (nearly) constant when lines are streamed as written; had
    // they been delivered at the end, it would shrink by the whole 2 s run.
    let lags: Vec<f64> = logs.iter().map(|(w, a)| *a as f64 - w).collect();
    let spread = lags.iter().cloned().fold(f64::MIN, f64::max)
        - lags.iter().cloned().fold(f64::MAX, f64::min);
    assert!(
        spread < 1000.0,
        "lines were not delivered as written: {lags:?}"
    );
    let span = logs.last().unwrap().1 - logs[0].1;
    assert!(span >= 1500, "arrivals spread over only {span} ms");
}

fn metrics_of(events: &[Value]) -> Vec<(u64, f64, u64)> {
    events
        .iter()
        .filter(|e| e["type"] == "metrics")
        .map(|e| {
            let d = &e["data"];
            (
                d["memoryUsage"].as_u64().unwrap(),
                d["cpuUsage"].as_f64().unwrap(),
                d["duration"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn metrics_report_the_containers_memory_and_cpu() {
    require_docker!();
    let memory = with(
        docker_agent(
            "fill",
            "head -c 104857600 /dev/zero > /tmp/fill; echo filled; sleep 4",
        ),
        |_, _, tmp| *tmp = 256 << 20,
    );
    let busy = docker_agent("busy", "yes > /dev/null & sleep 5; kill $!");
    let server = TestServer::start(vec![memory, busy]).await;
    let client = &server.client;

    let exec = client.submit("fill", json!({})).await;
    let execution = client.wait_terminal(&exec, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    let samples = metrics_of(&client.all_events(&exec).await);
    // The daemon's stats come once a second, whatever the (shorter) sampling interval.
    assert!(samples.len() >= 2, "{samples:?}");
    let peak = samples.iter().map(|s| s.0).max().unwrap();
    println!(
        "memory: peak {:.1} MiB over {} samples",
        peak as f64 / 1048576.0,
        samples.len()
    );
    assert!(
        (95 << 20..200 << 20).contains(&peak),
        "a container holding 100 MiB reports {peak} bytes"
    );
    assert_eq!(execution["peakMemoryBytes"], json!(peak));

    let exec = client.submit("busy", json!({})).await;
    let execution = client.wait_terminal(&exec, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    let samples = metrics_of(&client.all_events(&exec).await);
    // Past the first second, the busy loop runs against its quota of half a core.
    let mut cpu: Vec<f64> = samples
        .iter()
        .filter(|s| (1000..4800).contains(&s.2))
        .map(|s| s.1)
        .collect();
    cpu.sort_by(f64::total_cmp);
    assert!(cpu.len() >= 2, "{samples:?}");
    let median = cpu[cpu.len() / 2];
    println!(
        "cpu: median {median:.1}% of one core (quota 50%) over {} samples",
        cpu.len()
    );
    assert!(
        (25.0..=75.0).contains(&median),
        "a busy loop under a half-core quota reports a median of {median}%: {cpu:?}"
    );
}

// ---- 3. hardening ----

/// What the agent sees of its own confinement; each line `key value`.
const PROBE: &str = r#"
echo "uid $(id -u):$(id -g)"
touch /rootfs-write 2>/dev/null && echo "rootfs writable" || echo "rootfs read-only"
echo x > /tmp/probe && echo "tmp writable"
echo "ifaces $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\n' ',')"
grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs):' /proc/self/status | tr -d '\t' | sed 's/:/ /'
for f in /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max; do [ -r $f ] && echo "memlimit $(cat $f)"; done
for f in /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes /sys/fs/cgroup/memory.swap.max; do [ -r $f ] && echo "swaplimit $(cat $f)"; done
for f in /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max; do [ -r $f ] && echo "pidsmax $(cat $f)"; done
[ -r /sys/fs/cgroup/cpu/cpu.cfs_quota_us ] && echo "cpuquota $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us)/$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)"
[ -r /sys/fs/cgroup/cpu.max ] && echo "cpuquota $(tr ' ' / < /sys/fs/cgroup/cpu.max)"
( i=0; while [ $i -lt 150 ]; do sleep 30 & i=$((i+1)); echo $i > /tmp/forks; done ) 2>/dev/null
read n < /tmp/forks; echo "forks $n"
echo ready
exec sleep 30
"#;

fn inspect(container: &str) -> Value {
    let out = Command::new("docker")
        .args(["inspect", container])
        .output()
        .unwrap();
    assert!(out.status.success());
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    list[0].clone()
}

#[tokio::test]
async fn containers_run_hardened_by_default() {
    require_docker!();
    let server = TestServer::start(vec![docker_agent("probe", PROBE)]).await;
    let client = &server.client;
    let exec = client.submit("probe", json!({})).await;
    let deadline = Instant::now() + WAIT;
    let lines = loop {
        let lines = log_lines(&client.all_events(&exec).await);
        if lines.iter().any(|l| l == "ready") {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "the probe never got ready: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let seen = |key: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{key} ")).map(str::to_owned))
    };

    // The configuration the daemon holds for the running container.
    let containers = containers_of(&exec);
    assert_eq!(containers.len(), 1);
    let info = inspect(&containers[0]);
    let host = &info["HostConfig"];
    assert_eq!(host["NetworkMode"], "none");
    assert_eq!(host["ReadonlyRootfs"], true);
    assert_eq!(host["CapDrop"], json!(["ALL"]));
    assert_eq!(host["CapAdd"], json!(null));
    assert_eq!(host["Privileged"], false);
    assert_eq!(host["SecurityOpt"], json!(["no-new-privileges"]));
    assert_eq!(host["Memory"], 512 << 20);
    assert_eq!(
        host["MemorySwap"],
        512 << 20,
        "no swap beyond the memory limit"
    );
    assert_eq!(host["NanoCpus"], 500_000_000);
    assert_eq!(host["PidsLimit"], 100);
    assert!(
        host["Tmpfs"]["/tmp"]
            .as_str()
            .unwrap()
            .contains("size=67108864"),
        "{}",
        host["Tmpfs"]
    );
    assert_eq!(host["AutoRemove"], false);
    assert_eq!(info["Config"]["User"], "65534:65534");
    let labels = &info["Config"]["Labels"];
    assert_eq!(labels["agentnexus.execution"], exec);
    assert_eq!(labels["agentnexus.agent"], "probe");
    assert_eq!(labels["agentnexus.user"], "local");

    // What the kernel enforces, as seen from inside.
    println!("seen from inside the container: {lines:#?}");
    assert_eq!(seen("uid").as_deref(), Some("65534:65534"));
    assert!(lines.iter().any(|l| l == "rootfs read-only"), "{lines:?}");
    assert!(lines.iter().any(|l| l == "tmp writable"), "{lines:?}");
    assert_eq!(seen("ifaces").as_deref(), Some("lo,"), "only loopback");
    assert_eq!(seen("CapEff").as_deref(), Some("0000000000000000"));
    assert_eq!(seen("CapPrm").as_deref(), Some("0000000000000000"));
    assert_eq!(seen("NoNewPrivs").as_deref(), Some("1"));
    let mut unenforced = Vec::new();
    match seen("memlimit") {
        Some(v) => assert_eq!(v, (512u64 << 20).to_string()),
        None => unenforced.push("memory limit (cgroup file not visible)"),
    }
    match seen("swaplimit") {
        Some(v) => assert!(
            v == (512u64 << 20).to_string() || v == "0",
            "memory+swap limit {v}"
        ),
        None => unenforced.push("swap limit (swap accounting is off in this kernel)"),
    }
    match seen("pidsmax") {
        Some(v) => assert_eq!(v, "100"),
        None => unenforced.push("pids limit (cgroup file not visible)"),
    }
    match seen("cpuquota") {
        Some(v) => assert!(v == "50000/100000" || v == "50000/100000\n", "{v}"),
        None => unenforced.push("CPU quota (cgroup file not visible)"),
    }
    // 150 background sleeps against a limit of 100 pids (two are the shells): the rest
    // cannot fork.
    let forks: u64 = seen("forks").unwrap().trim().parse().unwrap();
    assert!(forks <= 98, "{forks} forks under a pids limit of 100");
    for what in &unenforced {
        println!("NOT VERIFIED ON THIS ENGINE: {what}");
    }
    let (status, _) = client
        .post(&format!("/api/executions/{exec}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    wait_no_container(&exec).await;
}

// ---- 4. OOM ----

#[tokio::test]
async fn exceeding_the_memory_limit_fails_with_oom_killed() {
    require_docker!();
    // Anonymous memory (sort holds its whole input), so the kernel's OOM killer acts in the
    // page-fault path; a tmpfs write over the limit may get ENOMEM instead.
    let agent = with(
        docker_agent(
            "hog",
            r#"echo filling; head -c 209715200 /dev/zero | tr '\0' a | sort > /dev/null && echo survived"#,
        ),
        |memory, _, _| *memory = 32 << 20,
    );
    let server = TestServer::start(vec![agent]).await;
    let exec = server.client.submit("hog", json!({})).await;
    let execution = server.client.wait_terminal(&exec, WAIT).await;
    assert_eq!(execution["status"], "FAILED", "{execution}");
    assert_eq!(execution["error"]["kind"], "oom_killed", "{execution}");
    let lines = log_lines(&server.client.all_events(&exec).await);
    assert_eq!(
        lines.first().map(String::as_str),
        Some("filling"),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l == "survived"), "{lines:?}");
    wait_no_container(&exec).await;
}

// ---- 5. restart safety ----

fn toml_docker_agent(id: &str, script: &str) -> String {
    format!(
        "[[agents]]\nid = \"{id}\"\nname = \"{id}\"\nprice_wei = \"1\"\ntimeout_secs = 120\nruntime = {{ type = \"docker\", image = \"{IMAGE}\", cmd = [\"sh\", \"-c\", {script:?}] }}\n"
    )
}

/// `n` numbered lines on each stream, 50 ms apart, then a JSON output line.
fn logger_script(n: usize) -> String {
    format!(
        r#"i=0; while [ $i -lt {n} ]; do i=$((i+1)); echo "out $i"; echo "err $i" >&2; sleep 0.05; done; echo '{{"lines": {n}}}'"#
    )
}

#[tokio::test]
async fn containers_survive_a_kill_9_of_the_runtime_and_complete_with_full_logs() {
    require_docker!();
    let dir = tempfile::tempdir().unwrap();
    // Different lengths: some finish while the runtime is down, some after it is back.
    let lengths = [15, 40, 60, 80, 100];
    let agents: String = lengths
        .iter()
        .map(|n| toml_docker_agent(&format!("log{n}"), &logger_script(*n)))
        .collect();
    let config = common::write_config(dir.path(), &agents);
    let mut server = ServerProcess::spawn(&config);
    let client = server.client();
    let mut ids = Vec::new();
    for n in lengths {
        ids.push((n, client.submit(&format!("log{n}"), json!({})).await));
    }
    for (_, id) in &ids {
        wait_lines(&client, id, 4).await;
    }
    server.kill9();
    for (_, id) in &ids {
        assert_eq!(
            containers_of(id).len(),
            1,
            "the container outlives the runtime"
        );
    }
    // Down long enough for the shortest to finish and the others to log on.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let server = ServerProcess::spawn(&config);
    let client = server.client();
    for (n, id) in &ids {
        let execution = client.wait_terminal(id, WAIT).await;
        assert_eq!(execution["status"], "COMPLETED", "{execution}");
        assert_eq!(execution["output"], json!({"lines": n}));
        let events = client.all_events(id).await;
        assert_gapless(&events);
        let of = |stream: &str| -> Vec<String> {
            events
                .iter()
                .filter(|e| e["type"] == "log" && e["data"]["stream"] == stream)
                .map(|e| e["data"]["log"].as_str().unwrap().to_owned())
                .collect()
        };
        let mut expected_out: Vec<String> = (1..=*n).map(|i| format!("out {i}")).collect();
        expected_out.push(format!(r#"{{"lines": {n}}}"#));
        let expected_err: Vec<String> = (1..=*n).map(|i| format!("err {i}")).collect();
        assert_eq!(of("stdout"), expected_out, "stdout of {id}");
        assert_eq!(of("stderr"), expected_err, "stderr of {id}");
        let statuses = common::statuses(&events);
        assert_eq!(statuses, ["PENDING", "RUNNING", "COMPLETED"]);
        wait_no_container(id).await;
    }
}

// ---- 6. daemon outage ----

/// A socat proxy in front of the real Docker socket, in its own process group so that
/// stopping it also cuts the connections its children hold open.
struct Proxy {
    socket: std::path::PathBuf,
    child: Option<Child>,
}

impl Proxy {
    fn start(socket: &Path) -> Proxy {
        let mut proxy = Proxy {
            socket: socket.to_owned(),
            child: None,
        };
        proxy.resume();
        proxy
    }

    fn resume(&mut self) {
        let child = Command::new("socat")
            .arg(format!(
                "UNIX-LISTEN:{},fork,unlink-early",
                self.socket.display()
            ))
            .arg("UNIX-CONNECT:/var/run/docker.sock")
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("socat starts");
        for _ in 0..100 {
            if self.socket.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    fn cut(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: killpg has no memory effects; the group is the proxy's own.
            unsafe {
                libc::killpg(child.id() as i32, libc::SIGKILL);
            }
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

fn socat_available() -> bool {
    let ok = Command::new("socat")
        .arg("-V")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok || common::skip("socat is not installed (apt-get install -y socat)")
}

async fn gauge(client: &Client) -> String {
    let (status, body) = client.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let text = body.as_str().unwrap().to_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("agentnexus_docker_healthy "))
        .unwrap_or("missing")
        .trim()
        .to_owned()
}

/// Waits until the background probe has set the gauge (without asking readiness, which would
/// update it too).
async fn wait_gauge(client: &Client, wanted: &str) {
    let deadline = Instant::now() + WAIT;
    while gauge(client).await != wanted {
        assert!(
            Instant::now() < deadline,
            "agentnexus_docker_healthy never became {wanted}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_docker_outage_fails_docker_executions_fast_and_recovers_without_restart() {
    require_docker!();
    if !socat_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let mut proxy = Proxy::start(&socket);
    let server = TestServer::start_with(
        vec![
            docker_agent("hello", r#"echo '{"hello": "docker"}'"#),
            sh_agent(
                "steady",
                "1",
                r#"for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do echo "step $i"; sleep 0.2; done; echo '{"steady": true}'"#,
            ),
        ],
        |c| {
            c.docker.host = Some(format!("unix://{}", socket.display()));
            c.docker.probe_interval_ms = 200;
            c.health.check_timeout_ms = 1000;
        },
    )
    .await;
    let client = &server.client;

    let ready = |client: &Client| {
        let client = client.clone();
        async move { client.get("/health/ready").await }
    };
    wait_gauge(client, "1").await;
    let (status, body) = ready(client).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "healthy", "{body}");
    let exec = client.submit("hello", json!({})).await;
    assert_eq!(
        client.wait_terminal(&exec, WAIT).await["status"],
        "COMPLETED"
    );

    let steady = client.submit("steady", json!({})).await;
    wait_lines(client, &steady, 1).await;
    proxy.cut();
    wait_gauge(client, "0").await;
    let (status, body) = ready(client).await;
    assert_eq!(status, StatusCode::OK, "degraded is still 200: {body}");
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["checks"]["docker"]["status"], "error", "{body}");

    let submitted = Instant::now();
    let exec = client.submit("hello", json!({})).await;
    let execution = client.wait_terminal(&exec, WAIT).await;
    assert_eq!(execution["status"], "FAILED", "{execution}");
    assert_eq!(
        execution["error"]["kind"], "docker_unavailable",
        "{execution}"
    );
    println!(
        "docker execution during the outage failed after {:?}: {}",
        submitted.elapsed(),
        execution["error"]["message"]
    );
    // The process execution went on regardless.
    let steady = client.wait_terminal(&steady, WAIT).await;
    assert_eq!(steady["status"], "COMPLETED", "{steady}");
    assert_eq!(steady["output"], json!({"steady": true}));

    proxy.resume();
    wait_gauge(client, "1").await;
    let (_, body) = ready(client).await;
    assert_eq!(body["status"], "healthy", "{body}");
    let exec = client.submit("hello", json!({})).await;
    let execution = client.wait_terminal(&exec, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    assert_eq!(execution["output"], json!({"hello": "docker"}));
}

// ---- containers the daemon could not remove in time ----

/// Creates (without starting) a container labelled as one of ours for `execution_id`.
fn create_labelled_container(execution_id: &str) -> String {
    let out = Command::new("docker")
        .args(["create", "--label"])
        .arg(format!("agentnexus.execution={execution_id}"))
        .args([IMAGE, "true"])
        .output()
        .expect("docker create runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn containers_of_finished_executions_are_swept_and_others_are_left_alone() {
    require_docker!();
    let server = TestServer::start_with(vec![docker_agent("quick", "echo hi")], |c| {
        c.docker.sweep_interval_ms = 200;
    })
    .await;
    let exec = server.client.submit("quick", json!({})).await;
    assert_eq!(
        server.client.wait_terminal(&exec, WAIT).await["status"],
        "COMPLETED"
    );
    wait_no_container(&exec).await;

    // As if the daemon had been away when the execution ended: its container is still there.
    create_labelled_container(&exec);
    // And a container of an execution this runtime does not know (another runtime's).
    let foreign_execution = "exec_01m8f7zyfx1pgmq6mcqh9jyvq8";
    let foreign = create_labelled_container(foreign_execution);

    wait_no_container(&exec).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        containers_of(foreign_execution).len(),
        1,
        "another runtime's container was removed"
    );
    let _ = Command::new("docker").args(["rm", "-f", &foreign]).output();
}
