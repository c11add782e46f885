//! Ingest: one agent prints 1,000,000 short lines as fast as it can. Reports lines per second
//! from submission to the final event being durable, and the ratio to the same program writing
//! to /dev/null. Run: `cargo bench --bench ingest`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{TestServer, sh_agent};
use serde_json::json;

const LINES: u64 = 1_000_000;

#[tokio::main]
async fn main() {
    let program = format!("seq 1 {LINES}");
    let bare = {
        let start = Instant::now();
        let status = std::process::Command::new("sh")
            .args(["-c", &format!("{program} > /dev/null")])
            .status()
            .unwrap();
        assert!(status.success());
        start.elapsed()
    };
    for sync_commits in [true, false] {
        let server = TestServer::start_with(vec![sh_agent("flood", "1", &program)], |c| {
            c.sync_commits = sync_commits;
        })
        .await;
        let client = &server.client;
        let start = Instant::now();
        let id = client.submit("flood", json!({})).await;
        let execution = client.wait_terminal(&id, Duration::from_secs(600)).await;
        let elapsed = start.elapsed();
        assert_eq!(execution["status"], "COMPLETED");
        assert_eq!(execution["logLines"], LINES);
        let rate = LINES as f64 / elapsed.as_secs_f64();
        println!(
            "ingest sync_commits={sync_commits}: {LINES} lines in {:.3} s = {:.0} lines/s; bare program to /dev/null {:.3} s; ratio {:.1}x",
            elapsed.as_secs_f64(),
            rate,
            bare.as_secs_f64(),
            elapsed.as_secs_f64() / bare.as_secs_f64()
        );
    }
}
