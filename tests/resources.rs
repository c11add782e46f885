//! Resource samples of running executions: memory of the whole process tree, CPU percent.

mod common;

use std::time::Duration;

use common::tools::{Tool, have};
use common::{TestServer, sh_agent};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn metrics(events: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    events.iter().filter(|e| e["type"] == "metrics").collect()
}

#[tokio::test]
async fn an_agent_holding_100_mb_shows_that_peak() {
    if !have(Tool::Python3) {
        return;
    }
    // A child process holds the memory: the sample covers the whole tree, not just the leader.
    let script = r#"python3 -c 'import time; b = bytearray(100 * 1024 * 1024); time.sleep(1.5)'"#;
    let server = TestServer::start(vec![sh_agent("hog", "1", script)]).await;
    let client = &server.client;
    let id = client.submit("hog", json!({})).await;
    let execution = client.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");

    let peak = execution["peakMemoryBytes"].as_u64().unwrap();
    assert!((100 << 20..200 << 20).contains(&peak), "peak {peak}");
    let events = client.all_events(&id).await;
    let samples = metrics(&events);
    assert!(
        samples.len() >= 5,
        "one sample per 100 ms expected, got {}",
        samples.len()
    );
    let max_sample = samples
        .iter()
        .map(|m| m["data"]["memoryUsage"].as_u64().unwrap())
        .max()
        .unwrap();
    assert_eq!(max_sample, peak);
    let durations: Vec<u64> = samples
        .iter()
        .map(|m| m["data"]["duration"].as_u64().unwrap())
        .collect();
    assert!(durations.windows(2).all(|w| w[0] < w[1]), "{durations:?}");
}

#[tokio::test]
async fn a_busy_loop_shows_about_one_core() {
    if !have(Tool::Python3) {
        return;
    }
    let script = r#"python3 -c '
import time
end = time.time() + 1.5
while time.time() < end:
    pass'"#;
    let server = TestServer::start(vec![sh_agent("busy", "1", script)]).await;
    let client = &server.client;
    let id = client.submit("busy", json!({})).await;
    let execution = client.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");

    let events = client.all_events(&id).await;
    let cpu: Vec<f64> = metrics(&events)
        .iter()
        .map(|m| m["data"]["cpuUsage"].as_f64().unwrap())
        .collect();
    // Skip the first samples (interpreter start-up); the loop itself is one busy core.
    let steady = &cpu[cpu.len().min(3)..];
    assert!(!steady.is_empty(), "{cpu:?}");
    let mean = steady.iter().sum::<f64>() / steady.len() as f64;
    assert!((70.0..=115.0).contains(&mean), "mean cpu {mean} of {cpu:?}");
    let peak = execution["peakCpuPercent"].as_f64().unwrap();
    assert!(peak >= 70.0, "{peak}");
}
