//! Containment: every process an execution starts — also one that leaves the agent's process
//! group by `setsid`, by a double fork, or by Python's `start_new_session` — is measured while it
//! lives and is gone once the execution ends, however it ends: normally, by timeout, by cancel,
//! or by a crash of the runtime followed by a restart. Each mechanism is exercised explicitly:
//! cgroup v2, the cgroup v1 freezer (both need root and the hierarchy), and the subreaper
//! supervisor, the fallback that needs nothing.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use agentnexus::config::{ConfigAgent, ContainmentMode};
use agentnexus::domain::Runtime;
use agentnexus::executor::Containment;
use common::tools::Tool;
use common::{Client, ServerProcess, TestServer, log_lines, sh_agent, write_config};
use reqwest::StatusCode;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// The ways out of a process group that agents use; each appends the escaped pid to `$PIDS`
/// before it returns.
const ESCAPE_PY: &str = r#"
import os, subprocess, sys, time
pids = os.environ["PIDS"]
def note(pid):
    with open(pids, "a") as f:
        f.write(f"{pid}\n")
how = sys.argv[1]
if how == "double-fork":
    child = os.fork()
    if child == 0:
        os.setsid()
        grandchild = os.fork()
        if grandchild == 0:
            os.execvp("sleep", ["sleep", "300"])
        note(grandchild)
        os._exit(0)
    os.waitpid(child, 0)
elif how == "new-session":
    note(subprocess.Popen(["sleep", "300"], start_new_session=True).pid)
elif how == "hog":
    # 100 MB written (so resident) by a process in a session of its own that outlives this one.
    code = "import os, sys, time\nb = b'x' * (100 << 20)\nopen(sys.argv[1], 'a').write(f'{os.getpid()}\\n')\ntime.sleep(300)"
    subprocess.Popen([sys.executable, "-c", code, pids], start_new_session=True)
    while not open(pids).read().strip():
        time.sleep(0.02)
"#;

/// Leaves processes behind in five ways (a plain background child; `setsid`; `setsid` with an
/// emptied environment, which no search by environment finds; a double fork into a new
/// session; Python's `start_new_session`), notes the agent's own pid, and says so.
const ESCAPES: &str = r#"sleep 300 & echo $! >> "$PIDS"
setsid sleep 300 & echo $! >> "$PIDS"
setsid env -i sleep 300 & echo $! >> "$PIDS"
python3 "$ESCAPE" double-fork
python3 "$ESCAPE" new-session
echo $$ >> "$PIDS"
echo escaped
"#;
const ESCAPED_PIDS: usize = 6;

/// A directory with the escape script and the pid file an agent fills.
struct Scene {
    dir: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("escape.py"), ESCAPE_PY).unwrap();
        Scene { dir }
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("pids")
    }

    /// An agent running `script` with the escape script and the pid file at hand.
    fn agent(&self, id: &str, script: &str) -> ConfigAgent {
        let mut agent = sh_agent(id, "1", script);
        let Runtime::Process { env, .. } = &mut agent.runtime else {
            unreachable!()
        };
        env.insert("PIDS".into(), self.pid_file().display().to_string());
        let escape = self.dir.path().join("escape.py");
        env.insert("ESCAPE".into(), escape.display().to_string());
        agent
    }

    /// The same agent as a TOML table, for the real binary.
    fn agent_toml(&self, id: &str, script: &str) -> String {
        format!(
            "[[agents]]\nid = \"{id}\"\nname = \"{id}\"\nprice_wei = \"1\"\n\
             runtime = {{ type = \"process\", command = \"sh\", args = [\"-c\", {script:?}], \
             env = {{ PIDS = {:?}, ESCAPE = {:?} }} }}\n",
            self.pid_file().display().to_string(),
            self.dir.path().join("escape.py").display().to_string(),
        )
    }

    fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.pid_file())
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect()
    }
}

/// Whether this host offers `mode` and python3 (the escape script's language); if not, the
/// test is skipped (a failure in CI).
fn offered(mode: ContainmentMode) -> bool {
    match Containment::choose(mode) {
        Ok(_) => common::tools::have(Tool::Python3),
        Err(why) => common::skip(&why),
    }
}

fn mode_name(mode: ContainmentMode) -> &'static str {
    match mode {
        ContainmentMode::CgroupV2 => "cgroup_v2",
        ContainmentMode::CgroupV1 => "cgroup_v1",
        ContainmentMode::Subreaper => "subreaper",
        ContainmentMode::ProcessGroup => "process_group",
        ContainmentMode::Auto => "auto",
    }
}

async fn start(mode: ContainmentMode, agents: Vec<ConfigAgent>) -> TestServer {
    TestServer::start_with(agents, |config| config.containment = mode).await
}

async fn wait_for_line(client: &Client, id: &str, line: &str) {
    for _ in 0..1000 {
        if log_lines(&client.all_events(id).await)
            .iter()
            .any(|l| l == line)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{id} never logged {line:?}");
}

/// Waits (generously) until every pid is gone; a zombie counts as gone.
async fn assert_all_gone(pids: &[i32]) {
    for _ in 0..500 {
        if pids.iter().all(|&p| common::process_is_gone(p)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let alive: Vec<i32> = pids
        .iter()
        .copied()
        .filter(|&p| !common::process_is_gone(p))
        .collect();
    for &pid in &alive {
        // SAFETY: cleaning up after a failed test; the pids are the agent's.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    panic!("processes of the execution survived it: {alive:?} of {pids:?}");
}

fn escaped_pids(scene: &Scene) -> Vec<i32> {
    let pids = scene.pids();
    assert_eq!(pids.len(), ESCAPED_PIDS, "{pids:?}");
    pids
}

async fn escapees_die_when_the_agent_ends(mode: ContainmentMode) {
    if !offered(mode) {
        return;
    }
    let scene = Scene::new();
    let script = format!("{ESCAPES}echo '{{\"ended\": \"normally\"}}'");
    let server = start(mode, vec![scene.agent("escaper", &script)]).await;
    let id = server.client.submit("escaper", json!({})).await;
    let execution = server.client.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    assert_eq!(execution["output"], json!({"ended": "normally"}));
    assert_all_gone(&escaped_pids(&scene)).await;
}

async fn escapees_die_when_the_agent_kills_its_own_group(mode: ContainmentMode) {
    if !offered(mode) {
        return;
    }
    let scene = Scene::new();
    let script = format!("{ESCAPES}kill -9 0");
    let server = start(mode, vec![scene.agent("escaper", &script)]).await;
    let id = server.client.submit("escaper", json!({})).await;
    let execution = server.client.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["error"]["kind"], "signal", "{execution}");
    assert_all_gone(&escaped_pids(&scene)).await;
}

async fn escapees_die_with_a_timeout(mode: ContainmentMode) {
    if !offered(mode) {
        return;
    }
    let scene = Scene::new();
    let mut agent = scene.agent("escaper", &format!("{ESCAPES}sleep 300"));
    agent.timeout_secs = Some(5);
    let server = start(mode, vec![agent]).await;
    let id = server.client.submit("escaper", json!({})).await;
    wait_for_line(&server.client, &id, "escaped").await;
    let execution = server.client.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["error"]["kind"], "timeout", "{execution}");
    assert_all_gone(&escaped_pids(&scene)).await;
}

async fn escapees_die_with_a_cancel(mode: ContainmentMode) {
    if !offered(mode) {
        return;
    }
    let scene = Scene::new();
    let server = start(
        mode,
        vec![scene.agent("escaper", &format!("{ESCAPES}sleep 300"))],
    )
    .await;
    let client = &server.client;
    let id = client.submit("escaper", json!({})).await;
    wait_for_line(client, &id, "escaped").await;
    let pids = escaped_pids(&scene);
    let (status, body) = client
        .post(&format!("/api/executions/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "CANCELLED");
    assert_all_gone(&pids).await;
}

/// The runtime is killed with SIGKILL while the agent runs (with `leader_exits`, the restart
/// waits until the agent itself has ended); after the restart the execution has failed and
/// none of its processes is left.
async fn escapees_die_after_a_crash(mode: ContainmentMode, agent_script: &str, leader_exits: bool) {
    if !offered(mode) {
        return;
    }
    let scene = Scene::new();
    let config = write_config(
        scene.dir.path(),
        &format!(
            "containment = \"{}\"\n{}",
            mode_name(mode),
            scene.agent_toml("escaper", agent_script)
        ),
    );
    let mut server = ServerProcess::spawn(&config);
    let id = server.client().submit("escaper", json!({})).await;
    wait_for_line(&server.client(), &id, "escaped").await;
    let pids = escaped_pids(&scene);
    server.kill9();
    if mode == ContainmentMode::Subreaper {
        // The supervisor's parent-death signal: gone at once, not only after a restart.
        assert_all_gone(&pids).await;
    }
    if leader_exits {
        // The agent (the group's leader) ends while no runtime watches; what it started stays.
        let agent = *pids.last().unwrap();
        assert_all_gone(&[agent]).await;
    }

    let server = ServerProcess::spawn(&config);
    let execution = server.client().wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "FAILED", "{execution}");
    assert_eq!(execution["error"]["kind"], "runtime_restarted");
    assert_all_gone(&pids).await;
}

/// An escaped Python process holding 100 MB is in the execution's samples, and gone after.
async fn samples_count_an_escaped_process(mode: ContainmentMode) {
    if !offered(mode) {
        return;
    }
    let scene = Scene::new();
    let script = r#"python3 "$ESCAPE" hog; sleep 1.5; echo '{"ok": true}'"#;
    let server = start(mode, vec![scene.agent("hog", script)]).await;
    let client = &server.client;
    let id = client.submit("hog", json!({})).await;
    let execution = client.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    let events = client.all_events(&id).await;
    let most = events
        .iter()
        .filter(|e| e["type"] == "metrics")
        .map(|e| e["data"]["memoryUsage"].as_u64().unwrap())
        .max()
        .expect("metrics events");
    assert!(
        most >= 100 << 20,
        "the escaped 100 MB were not counted: {most}"
    );
    assert!(
        most < 400 << 20,
        "more than the agent's processes counted: {most}"
    );
    assert_all_gone(&scene.pids()).await;
}

macro_rules! every_ending {
    ($mechanism:ident, $mode:expr) => {
        mod $mechanism {
            use super::*;

            #[tokio::test]
            async fn escapees_die_when_the_agent_ends() {
                super::escapees_die_when_the_agent_ends($mode).await;
            }

            #[tokio::test]
            async fn escapees_die_when_the_agent_kills_its_own_group() {
                super::escapees_die_when_the_agent_kills_its_own_group($mode).await;
            }

            #[tokio::test]
            async fn escapees_die_with_a_timeout() {
                super::escapees_die_with_a_timeout($mode).await;
            }

            #[tokio::test]
            async fn escapees_die_with_a_cancel() {
                super::escapees_die_with_a_cancel($mode).await;
            }

            #[tokio::test]
            async fn escapees_die_after_a_crash_and_restart() {
                let script = format!("{ESCAPES}sleep 300");
                super::escapees_die_after_a_crash($mode, &script, false).await;
            }

            #[tokio::test]
            async fn escapees_die_after_a_crash_even_when_their_leader_ended_meanwhile() {
                let script = format!("{ESCAPES}sleep 3");
                super::escapees_die_after_a_crash($mode, &script, true).await;
            }

            #[tokio::test]
            async fn samples_count_an_escaped_process() {
                super::samples_count_an_escaped_process($mode).await;
            }
        }
    };
}

every_ending!(cgroup_v2, ContainmentMode::CgroupV2);
every_ending!(cgroup_v1, ContainmentMode::CgroupV1);
every_ending!(subreaper, ContainmentMode::Subreaper);

#[tokio::test]
async fn the_default_contains_executions_where_the_host_offers_it() {
    // On its own the runtime picks the best mechanism there is; everything above holds for it.
    escapees_die_when_the_agent_ends(ContainmentMode::Auto).await;
}
