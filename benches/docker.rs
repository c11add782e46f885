//! Docker overhead: 50 sequential executions of a trivial container through the runtime against
//! `docker run --rm` of the same image with the same settings (limits, hardening, output
//! volume, stdin), alternating, in the same run. Reports the time per execution (submission to
//! the final status committed, vs. `docker run` spawn to exit), their ratio (target ≤ 1.2×),
//! and the start-to-first-log-line latency of each. Run: `cargo bench --bench docker`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentnexus::domain::{EventKind, Runtime};
use agentnexus::runtime::Caller;
use common::{TestServer, sh_agent};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const IMAGE: &str = "agentnexus-test-busybox:1";
const RUNS: usize = 50;
const SCRIPT: &str = "echo hello";

#[tokio::main]
async fn main() {
    if !Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        println!("SKIPPED: the Docker daemon is not reachable");
        return;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/docker/build-test-image.sh"
    );
    let built = Command::new("sh").args([script, IMAGE]).status().unwrap();
    assert!(built.success(), "cannot build the test image");

    let mut agent = sh_agent("trivial", "1", "");
    agent.runtime = Runtime::docker(IMAGE, &["sh", "-c", SCRIPT]);
    let server = TestServer::start_with(vec![agent], |c| {
        c.sample_interval_ms = 1000;
        c.sync_commits = true;
    })
    .await;
    let runtime = server.runtime().clone();
    let caller = Caller::local();

    let mut ours = Vec::new();
    let mut ours_first = Vec::new();
    let mut theirs = Vec::new();
    let mut theirs_first = Vec::new();
    for i in 0..=RUNS {
        // Ours: submission → final status committed, read through a follower.
        let start = Instant::now();
        let execution = runtime
            .submit(&caller, "trivial", json!({"i": i}), None)
            .await
            .unwrap();
        let mut follow = runtime
            .follow(&caller, execution.execution_id.as_str(), 0)
            .await
            .unwrap();
        let mut first_line = None;
        let mut last = None;
        while let Some(event) = follow.next().await.unwrap() {
            if event.kind == EventKind::Log && first_line.is_none() {
                first_line = Some(start.elapsed());
            }
            last = event.status();
        }
        let total = start.elapsed();
        assert_eq!(last.map(|s| s.as_str()), Some("COMPLETED"));

        // Theirs: the same container with `docker run --rm`, spawn → exit.
        let (their_total, their_first) = docker_run().await;
        // The first round warms both up (image cache, connections) and is not counted.
        if i == 0 {
            continue;
        }
        ours.push(total);
        ours_first.push(first_line.expect("the agent logs a line"));
        theirs.push(their_total);
        theirs_first.push(their_first);
    }

    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    println!("per execution (ms), runtime vs docker run --rm:");
    let mut out = std::io::stdout().lock();
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        let _ = writeln!(out, "  {:>2}: {:7.1}  {:7.1}", i + 1, ms(a), ms(b));
    }
    drop(out);
    report("execution", &ours, &theirs);
    report("start to first log line", &ours_first, &theirs_first);
}

fn stats(samples: &[Duration]) -> (f64, f64, f64, f64) {
    let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    v.sort_by(f64::total_cmp);
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    (mean, v[v.len() / 2], v[0], v[v.len() - 1])
}

fn report(what: &str, ours: &[Duration], theirs: &[Duration]) {
    let (om, omed, omin, omax) = stats(ours);
    let (tm, tmed, tmin, tmax) = stats(theirs);
    println!(
        "{what}: runtime mean {om:.1} ms, median {omed:.1} ms (min {omin:.1}, max {omax:.1}); docker run --rm mean {tm:.1} ms, median {tmed:.1} ms (min {tmin:.1}, max {tmax:.1}); ratio of means {:.2}x, of medians {:.2}x",
        om / tm,
        omed / tmed
    );
}

/// `docker run --rm` with the settings the executor applies; returns the time to exit and the
/// time to the first stdout line.
async fn docker_run() -> (Duration, Duration) {
    let start = Instant::now();
    let mut child = tokio::process::Command::new("docker")
        .args([
            "run",
            "--rm",
            "-i",
            "--network",
            "none",
            "--read-only",
            "--tmpfs",
            "/tmp:rw,nosuid,nodev,noexec,size=67108864,mode=1777",
            "--mount",
            "type=volume,target=/agentnexus",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--user",
            "65534:65534",
            "--memory",
            "536870912",
            "--memory-swap",
            "536870912",
            "--cpus",
            "0.5",
            "--pids-limit",
            "100",
            "--log-driver",
            "json-file",
            "-e",
            "INPUT_DATA={}",
            IMAGE,
            "sh",
            "-c",
            SCRIPT,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"{}").await.unwrap();
    drop(stdin);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap();
    let first_at = start.elapsed();
    assert_eq!(first.as_deref(), Some("hello"));
    while lines.next_line().await.unwrap().is_some() {}
    assert!(child.wait().await.unwrap().success());
    (start.elapsed(), first_at)
}
