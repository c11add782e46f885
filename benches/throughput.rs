//! Throughput: 2,000 executions of a trivial agent at concurrency 16, submitted over HTTP and
//! followed to their end. Reports executions per second and the overhead per execution over a
//! bare spawn of the same program at the same concurrency. Run: `cargo bench --bench throughput`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use agentnexus::runtime::Caller;
use common::{TestServer, sh_agent};
use futures_util::StreamExt;
use serde_json::json;

const EXECUTIONS: usize = 2000;
const CONCURRENCY: usize = 16;

#[tokio::main]
async fn main() {
    let bare = {
        let start = Instant::now();
        futures_util::stream::iter(0..EXECUTIONS)
            .for_each_concurrent(CONCURRENCY, |_| async {
                let status = tokio::process::Command::new("true").status().await.unwrap();
                assert!(status.success());
            })
            .await;
        start.elapsed()
    };
    let mut agent = sh_agent("trivial", "1", "");
    agent.runtime = agentnexus::domain::Runtime::Process {
        command: "true".into(),
        args: vec![],
        env: Default::default(),
        workdir: None,
    };
    let server = Arc::new(
        TestServer::start_with(vec![agent], |c| c.max_concurrent_executions = CONCURRENCY).await,
    );
    let start = Instant::now();
    // Twice the concurrency in flight, so the queue never runs dry.
    futures_util::stream::iter(0..EXECUTIONS)
        .for_each_concurrent(CONCURRENCY * 2, |_| {
            let server = server.clone();
            async move {
                let id = server.client.submit("trivial", json!({})).await;
                let mut follow = server
                    .runtime()
                    .follow(&Caller::local(), &id, 0)
                    .await
                    .unwrap();
                let mut last = None;
                while let Some(event) = follow.next().await.unwrap() {
                    last = event.status();
                }
                assert_eq!(last.map(|s| s.as_str()), Some("COMPLETED"));
            }
        })
        .await;
    let elapsed = start.elapsed();
    let per_exec = elapsed.as_secs_f64() / EXECUTIONS as f64;
    let bare_per = bare.as_secs_f64() / EXECUTIONS as f64;
    println!(
        "throughput: {EXECUTIONS} executions at concurrency {CONCURRENCY} in {:.2} s = {:.0} executions/s",
        elapsed.as_secs_f64(),
        EXECUTIONS as f64 / elapsed.as_secs_f64()
    );
    println!(
        "bare spawn of the same program at the same concurrency: {:.2} s = {:.0} spawns/s; overhead {:.2} ms per execution (wall time per execution {:.2} ms vs {:.2} ms)",
        bare.as_secs_f64(),
        EXECUTIONS as f64 / bare.as_secs_f64(),
        (per_exec - bare_per) * 1000.0,
        per_exec * 1000.0,
        bare_per * 1000.0
    );
}
