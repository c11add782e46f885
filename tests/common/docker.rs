//! Docker test support: the local test image (built without a registry), docker agents, and
//! the containers of an execution as the daemon lists them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use agentnexus::config::ConfigAgent;
use agentnexus::domain::Runtime;
use serde_json::Value;

use super::{Client, log_lines};

pub const IMAGE: &str = "agentnexus-test-busybox:1";
pub const WAIT: Duration = Duration::from_secs(30);

/// Whether Docker and the test image are there; prints why not, or fails when CI requires it.
pub fn ready() -> bool {
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
        Err(why) => super::skip(why),
    }
}

pub fn docker_agent(id: &str, script: &str) -> ConfigAgent {
    ConfigAgent {
        budget: Default::default(),
        runtime: Runtime::docker(IMAGE, &["sh", "-c", script]),
        ..super::sh_agent(id, "1", "")
    }
}

/// Containers (any state) labelled with this execution id.
pub fn containers_of(execution_id: &str) -> Vec<String> {
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

/// Waits until no container of this execution is left.
pub async fn wait_no_container(execution_id: &str) {
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

/// Waits until the execution has logged at least `n` lines; returns its events.
pub async fn wait_lines(client: &Client, id: &str, n: usize) -> Vec<Value> {
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
