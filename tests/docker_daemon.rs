//! The docker runtime when its connection to the daemon fails while the daemon stays up:
//! connections cut (all of them, only the stats stream, right as the container exits) or
//! refused for a while, through a proxy in front of the real daemon. A broken stream is never
//! taken for the container's exit: the run goes on, every line is stored exactly once and in
//! order, and only an outage longer than the limit ends it `docker_unavailable`. Without
//! Docker the tests print `SKIPPED: <reason>` and pass, unless `AGENTNEXUS_REQUIRE_TOOLS` is set
//! (CI), where they fail.

mod common;

use std::time::{Duration, Instant};

use common::daemon_proxy::DaemonProxy;
use common::docker::{WAIT, containers_of, docker_agent, wait_lines, wait_no_container};
use common::{Client, TestServer, assert_gapless, log_lines, sh_agent};
use reqwest::StatusCode;
use serde_json::{Value, json};

macro_rules! require_docker {
    () => {
        if !common::docker::ready() {
            return;
        }
    };
}

/// `n` numbered lines 0.2 s apart, then the output in the file (the last stdout line is not
/// JSON, so an output can only come from the file).
fn lines_then_file(n: usize) -> String {
    format!(
        r#"i=0; while [ $i -lt {n} ]; do i=$((i+1)); echo "line $i"; sleep 0.2; done; echo '{{"lines": {n}}}' > "$AGENTNEXUS_OUTPUT""#
    )
}

fn numbered(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("line {i}")).collect()
}

/// A server whose daemon is behind `proxy`, with the agent `steady` (25 lines) and `long`.
async fn server_behind(
    proxy: &DaemonProxy,
    tweak: impl FnOnce(&mut agentnexus::config::Config),
) -> TestServer {
    let host = proxy.host();
    TestServer::start_with(
        vec![
            docker_agent("steady", &lines_then_file(25)),
            docker_agent("long", &lines_then_file(100)),
        ],
        |c| {
            c.docker.host = Some(host);
            c.docker.probe_interval_ms = 200;
            c.docker.sweep_interval_ms = 200;
            tweak(c);
        },
    )
    .await
}

/// The execution ended as if nothing had happened: COMPLETED, exit 0, the output from the
/// file, all `n` lines exactly once and in order, the container gone.
async fn assert_untouched(client: &Client, exec: &str, n: usize) -> Vec<Value> {
    let execution = client.wait_terminal(exec, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    assert_eq!(execution["exitCode"], 0, "{execution}");
    assert_eq!(execution["output"], json!({"lines": n}), "{execution}");
    let events = client.all_events(exec).await;
    assert_gapless(&events);
    assert_eq!(log_lines(&events), numbered(n));
    assert_eq!(
        common::statuses(&events),
        ["PENDING", "RUNNING", "COMPLETED"]
    );
    wait_no_container(exec).await;
    events
}

#[tokio::test]
async fn connections_cut_mid_run_are_not_an_exit() {
    require_docker!();
    let dir = tempfile::tempdir().unwrap();
    let proxy = DaemonProxy::start(&dir.path().join("docker.sock"));
    let server = server_behind(&proxy, |_| {}).await;
    let client = &server.client;
    let exec = client.submit("steady", json!({})).await;
    wait_lines(client, &exec, 8).await;
    assert!(
        proxy.cut_all() > 0,
        "the run holds connections to the daemon"
    );
    assert_untouched(client, &exec, 25).await;
}

#[tokio::test]
async fn a_daemon_refusing_connections_for_a_while_is_waited_for() {
    require_docker!();
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = DaemonProxy::start(&dir.path().join("docker.sock"));
    let server = server_behind(&proxy, |_| {}).await;
    let client = &server.client;
    let exec = client.submit("steady", json!({})).await;
    wait_lines(client, &exec, 5).await;
    proxy.refuse();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Within the limit (a minute by default) nothing is decided while the daemon is away.
    assert_eq!(client.execution(&exec).await["status"], "RUNNING");
    proxy.resume();
    assert_untouched(client, &exec, 25).await;
}

#[tokio::test]
async fn an_outage_longer_than_the_limit_fails_docker_unavailable() {
    require_docker!();
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = DaemonProxy::start(&dir.path().join("docker.sock"));
    let server = server_behind(&proxy, |c| c.docker.outage_limit_ms = 1500).await;
    let client = &server.client;
    let exec = client.submit("long", json!({})).await;
    wait_lines(client, &exec, 3).await;
    proxy.refuse();
    let execution = client.wait_terminal(&exec, WAIT).await;
    assert_eq!(execution["status"], "FAILED", "{execution}");
    assert_eq!(
        execution["error"]["kind"], "docker_unavailable",
        "{execution}"
    );
    assert_eq!(execution["exitCode"], json!(null), "{execution}");
    println!("ended: {}", execution["error"]["message"]);
    let events = client.all_events(&exec).await;
    assert_gapless(&events);
    let lines = log_lines(&events);
    assert_eq!(lines, numbered(lines.len()), "a prefix, each line once");
    // Out of reach, the container runs on; once the daemon is back, it is removed.
    assert_eq!(containers_of(&exec).len(), 1);
    proxy.resume();
    wait_no_container(&exec).await;
}

#[tokio::test]
async fn a_cut_stats_stream_is_opened_again() {
    require_docker!();
    let dir = tempfile::tempdir().unwrap();
    let proxy = DaemonProxy::start(&dir.path().join("docker.sock"));
    let server = server_behind(&proxy, |_| {}).await;
    let client = &server.client;
    let exec = client.submit("long", json!({})).await;
    let deadline = Instant::now() + WAIT;
    let cut_after = loop {
        let events = client.all_events(&exec).await;
        if events.iter().any(|e| e["type"] == "metrics") {
            break events.last().unwrap()["seq"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "no resource sample");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(proxy.cut_where(|request| request.contains("/stats")), 1);
    let events = assert_untouched(client, &exec, 100).await;
    let later = events
        .iter()
        .filter(|e| e["type"] == "metrics" && e["seq"].as_u64().unwrap() > cut_after)
        .count();
    assert!(
        later > 0,
        "no resource sample after the stats stream was cut"
    );
}

#[tokio::test]
async fn connections_cut_as_the_container_exits_lose_nothing() {
    require_docker!();
    let dir = tempfile::tempdir().unwrap();
    let proxy = DaemonProxy::start(&dir.path().join("docker.sock"));
    let server = TestServer::start_with(
        vec![
            docker_agent("burst", r#"i=0; while [ $i -lt 500 ]; do i=$((i+1)); echo "line $i"; done; echo '{"lines": 500}' > "$AGENTNEXUS_OUTPUT""#),
            docker_agent("fails", r#"i=0; while [ $i -lt 500 ]; do i=$((i+1)); echo "line $i"; done; exit 3"#),
        ],
        |c| c.docker.host = Some(proxy.host()),
    )
    .await;
    let client = &server.client;
    // The attach stream lags behind, so the cut at the exit takes the end of the output with it.
    proxy.slow_down("/attach", Duration::from_millis(300));
    proxy.cut_at_exit();
    let exec = client.submit("burst", json!({})).await;
    assert_untouched(client, &exec, 500).await;
    assert!(
        !proxy.cut_at_exit_pending(),
        "the exit passed the proxy uncut"
    );

    proxy.cut_at_exit();
    let exec = client.submit("fails", json!({})).await;
    let execution = client.wait_terminal(&exec, WAIT).await;
    assert_eq!(execution["status"], "FAILED", "{execution}");
    assert_eq!(execution["exitCode"], 3, "{execution}");
    assert_eq!(execution["error"]["kind"], "exit_code", "{execution}");
    assert_eq!(log_lines(&client.all_events(&exec).await), numbered(500));
    assert!(
        !proxy.cut_at_exit_pending(),
        "the exit passed the proxy uncut"
    );
    wait_no_container(&exec).await;
}

// ---- the daemon away altogether ----

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
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = DaemonProxy::start(&dir.path().join("docker.sock"));
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
            c.docker.host = Some(proxy.host());
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
    proxy.refuse();
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
