//! The README's quick start: the shipped example configuration and agents, run by the real
//! binary from the repository's layout, with the config's own relative data directory.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{ServerProcess, log_lines};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn the_example_agents_run_as_the_quick_start_shows() {
    // A copy of `examples/`, with the server started from its parent as the README does.
    let dir = tempfile::tempdir().unwrap();
    let examples = dir.path().join("examples");
    let status = Command::new("cp")
        .args(["-r", concat!(env!("CARGO_MANIFEST_DIR"), "/examples")])
        .arg(&examples)
        .status()
        .unwrap();
    assert!(status.success());
    let mut command = Command::new(env!("CARGO_BIN_EXE_agentnexus"));
    command
        .args([
            "serve",
            "--config",
            "examples/agentnexus.toml",
            "--bind",
            "127.0.0.1:0",
        ])
        .current_dir(dir.path());
    let server = ServerProcess::spawn_command(command);
    let client = server.client();

    let (_, agents) = client.get("/api/agents").await;
    let ids: Vec<_> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    for id in ["echo", "counter", "fail"] {
        assert!(ids.contains(&id), "{ids:?}");
    }

    let echo = client.submit("echo", json!({"hello": "world"})).await;
    let echo = client.wait_terminal(&echo, WAIT).await;
    assert_eq!(echo["status"], "COMPLETED", "{echo}");
    assert_eq!(echo["output"], json!({"echo": {"hello": "world"}}));

    // The counter writes its output to the file named by AGENTNEXUS_OUTPUT.
    let counter = client.submit("counter", json!({"count": 3})).await;
    let finished = client.wait_terminal(&counter, WAIT).await;
    assert_eq!(finished["status"], "COMPLETED", "{finished}");
    assert_eq!(finished["output"], json!({"result": "counted to 3"}));
    assert_eq!(
        log_lines(&client.all_events(&counter).await),
        ["tick 1 of 3", "tick 2 of 3", "tick 3 of 3"]
    );

    let fail = client.submit("fail", json!({})).await;
    let fail = client.wait_terminal(&fail, WAIT).await;
    assert_eq!(fail["status"], "FAILED");
    assert_eq!(fail["exitCode"], 3);

    // The relative data directory of the example config lives where the server was started.
    assert!(dir.path().join("agentnexus-data/agentnexus.db").exists());
}
