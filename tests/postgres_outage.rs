//! PostgreSQL away, and back, and TLS to it. A server started while its database is down
//! answers its probes (alive, not ready), logs each attempt without the password, and serves
//! once the database is up; a fault that will not pass (no such database) ends the start with a
//! clear error. A database that stops under running replicas makes their readiness 503 and a
//! submission 503 `store_unavailable` (nothing half-accepted); once it is back everything
//! resumes without a restart, and an execution that ran through the outage has every line,
//! gapless (or, past `store_outage_limit_secs`, ends FAILED `store_unavailable`, gapless). `sslmode=require` encrypts the session (as `pg_stat_ssl` shows), `verify-full`
//! with `sslrootcert` accepts the server's certificate and `verify-ca` with another root
//! refuses it, and a server without TLS is refused.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::postgres::{OwnCluster, Route, database};
use common::{
    Client, LoggedServer, ServerProcess, assert_gapless, log_lines, statuses, write_config,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const CHECK_TIMEOUT_MS: u64 = 1000;

/// `quick` answers at once; `ticker` prints numbered lines until the file `finish` exists.
fn config(dir: &Path, url: &str) -> std::path::PathBuf {
    let finish = dir.join("finish");
    let extra = format!(
        r#"database_url = "{url}"
[health]
check_timeout_ms = {CHECK_TIMEOUT_MS}

[[agents]]
id = "quick"
name = "Quick"
price_wei = "1"
runtime = {{ type = "process", command = "sh", args = ["-c", "echo '{{}}'"] }}

[[agents]]
id = "ticker"
name = "Ticker"
price_wei = "1"
runtime = {{ type = "process", command = "sh", args = ["-c", "i=0; while [ ! -e {finish} ]; do i=$((i+1)); echo tick $i; sleep 0.1; done; echo '{{}}'"] }}
"#,
        finish = finish.display()
    );
    write_config(dir, &extra)
}

/// Waits until `GET path` answers `wanted`, returning the body.
async fn wait_for(client: &Client, path: &str, wanted: StatusCode) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = client.get(path).await;
        if status == wanted {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} still answers {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn submit_refused(client: &Client) {
    let (status, body) = client
        .post("/api/executions", json!({"agentId": "quick", "input": {}}))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
}

async fn runs_quick(client: &Client) {
    let id = client.submit("quick", json!({})).await;
    let done = client.wait_terminal(&id, WAIT).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_while_its_database_is_down_answers_probes_then_serves_once_it_is_up() {
    let Some(cluster) = OwnCluster::start(false) else {
        return;
    };
    // Trust authentication ignores the password; it is there to be kept out of the log.
    let url = cluster
        .database("disable")
        .replacen("postgres@", "postgres:pg-s3cret@", 1);
    cluster.stop();
    let dir = tempfile::tempdir().unwrap();
    let server = LoggedServer::spawn_until(
        &config(dir.path(), &url),
        &[("RUST_LOG", "info")],
        "waiting for the database",
    );
    let client = Client::new(&server.url);

    let (status, live) = client.get("/health/live").await;
    assert_eq!(status, StatusCode::OK, "{live}");
    let (status, ready) = client.get("/health/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(ready["status"], "unhealthy", "{ready}");
    assert_eq!(ready["checks"]["database"]["status"], "error", "{ready}");
    submit_refused(&client).await;
    let deadline = Instant::now() + WAIT;
    while server.log().matches("cannot be reached yet").count() < 2 {
        assert!(Instant::now() < deadline, "{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    cluster.restart();
    let ready = wait_for(&client, "/health/ready", StatusCode::OK).await;
    assert_eq!(ready["checks"]["database"]["status"], "ok", "{ready}");
    runs_quick(&client).await;

    let log = server.stop();
    let attempt = log
        .lines()
        .find(|l| l.contains("cannot be reached yet"))
        .unwrap();
    assert!(attempt.contains("attempt=1"), "{attempt}");
    assert!(attempt.contains("Connection refused"), "{attempt}");
    assert!(attempt.contains("postgres:***@127.0.0.1"), "{attempt}");
    assert!(
        !log.contains("pg-s3cret"),
        "the password was logged:\n{log}"
    );
}

/// Runs `agentnexus serve` on `config` and returns its exit code and stderr once it has ended.
fn serve_until_it_exits(config: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentnexus"))
        .args(["serve", "--config"])
        .arg(config)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "the server did not exit: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_server_whose_database_does_not_exist_exits_with_a_clear_error() {
    let Some(url) = database(Route::Direct) else {
        return;
    };
    let url = url.replace("/test_", "/missing_");
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = serve_until_it_exits(&config(dir.path(), &url));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(!stderr.contains("cannot be reached yet"), "{stderr}");
}

/// Asserts every replica answers readiness `wanted` within the check's timeout (and a margin
/// for a loaded machine): a database that does not answer must not hang the probe.
async fn wait_ready(replicas: &[ServerProcess], wanted: StatusCode) {
    for replica in replicas {
        let client = replica.client();
        wait_for(&client, "/health/ready", wanted).await;
        let asked = Instant::now();
        let (status, body) = client.get("/health/ready").await;
        assert_eq!(status, wanted, "{body}");
        let bound = Duration::from_millis(CHECK_TIMEOUT_MS) + Duration::from_secs(10);
        assert!(
            asked.elapsed() < bound,
            "readiness took {:?}",
            asked.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_stopped_under_running_replicas_makes_them_unready_and_all_resumes_once_back() {
    let Some(cluster) = OwnCluster::start(false) else {
        return;
    };
    let url = cluster.database("disable");
    let dir = tempfile::tempdir().unwrap();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let replicas: Vec<ServerProcess> = dirs
        .iter()
        .map(|d| {
            let config = config(d.path(), &url);
            // Both replicas' tickers end on the same file.
            let text = std::fs::read_to_string(&config).unwrap().replace(
                &d.path().join("finish").display().to_string(),
                &dir.path().join("finish").display().to_string(),
            );
            std::fs::write(&config, text).unwrap();
            ServerProcess::spawn(&config)
        })
        .collect();
    let (a, b) = (replicas[0].client(), replicas[1].client());
    let ticker = a.submit("ticker", json!({})).await;
    a.wait_status(&ticker, "RUNNING", WAIT).await;
    let deadline = Instant::now() + WAIT;
    while log_lines(&a.all_events(&ticker).await).len() < 3 {
        assert!(Instant::now() < deadline, "the ticker logs nothing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    cluster.stop();
    wait_ready(&replicas, StatusCode::SERVICE_UNAVAILABLE).await;
    for replica in &replicas {
        let (status, live) = replica.client().get("/health/live").await;
        assert_eq!(status, StatusCode::OK, "{live}");
    }
    submit_refused(&b).await;

    cluster.restart();
    wait_ready(&replicas, StatusCode::OK).await;
    let (status, page) = b.get("/api/executions").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let listed: Vec<&Value> = page["executions"].as_array().unwrap().iter().collect();
    assert_eq!(
        listed.len(),
        1,
        "the refused submission left a trace: {page}"
    );
    runs_quick(&b).await;

    std::fs::write(dir.path().join("finish"), "").unwrap();
    let done = a.wait_terminal(&ticker, WAIT).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let events = b.all_events(&ticker).await;
    assert_gapless(&events);
    assert_eq!(statuses(&events), ["PENDING", "RUNNING", "COMPLETED"]);
    let lines: Vec<String> = log_lines(&events)
        .into_iter()
        .filter(|l| l.starts_with("tick "))
        .collect();
    assert!(lines.len() >= 3, "{lines:?}");
    let expected: Vec<String> = (1..=lines.len()).map(|i| format!("tick {i}")).collect();
    assert_eq!(lines, expected, "a line was lost or repeated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_whose_events_outwait_the_outage_limit_ends_store_unavailable_once_the_database_is_back()
 {
    let Some(cluster) = OwnCluster::start(false) else {
        return;
    };
    let url = cluster.database("disable");
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &url);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.insert_str(0, "store_outage_limit_secs = 1\n");
    std::fs::write(&config, text).unwrap();
    let server = LoggedServer::spawn(&config, &[("RUST_LOG", "info")]);
    let client = Client::new(&server.url);
    let ticker = client.submit("ticker", json!({})).await;
    client.wait_status(&ticker, "RUNNING", WAIT).await;

    cluster.stop();
    let deadline = Instant::now() + WAIT;
    while !server.log().contains("an execution's stream is cut short") {
        assert!(Instant::now() < deadline, "{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.restart();

    let done = client.wait_terminal(&ticker, WAIT).await;
    assert_eq!(done["status"], "FAILED", "{done}");
    assert_eq!(done["error"]["kind"], "store_unavailable", "{done}");
    let events = client.all_events(&ticker).await;
    assert_gapless(&events);
    assert_eq!(statuses(&events), ["PENDING", "RUNNING", "FAILED"]);
    let last = events.last().unwrap();
    assert_eq!(last["type"], "status", "{last}");
    wait_for(&client, "/health/ready", StatusCode::OK).await;
    runs_quick(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_encrypts_the_session_verify_checks_the_root_and_a_server_without_tls_is_refused()
 {
    let Some(cluster) = OwnCluster::start(true) else {
        return;
    };
    let url = cluster.database("require");
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(&config(dir.path(), &url));
    let client = server.client();
    wait_for(&client, "/health/ready", StatusCode::OK).await;
    runs_quick(&client).await;
    let sessions = cluster.query(
        &url,
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
         FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'agentnexus'",
    );
    let (encrypted, plain) = sessions.split_once('|').unwrap();
    assert!(encrypted.parse::<u32>().unwrap() >= 1, "{sessions}");
    assert_eq!(plain, "0", "{sessions}");

    // Verified: the server's certificate is its own root, and names 127.0.0.1.
    let root = cluster.certificate();
    let verified = url.replace(
        "sslmode=require",
        &format!("sslmode=verify-full&sslrootcert={}", root.display()),
    );
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(&config(dir.path(), &verified));
    runs_quick(&server.client()).await;

    // Another root: refused at once, not waited for.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other-root.pem");
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    std::fs::write(&other, certified.cert.pem()).unwrap();
    let impostor = url.replace(
        "sslmode=require",
        &format!("sslmode=verify-ca&sslrootcert={}", other.display()),
    );
    let (code, stderr) = serve_until_it_exits(&config(dir.path(), &impostor));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("invalid peer certificate"), "{stderr}");

    // The binary's cluster runs without TLS.
    let Some(plain_url) = database(Route::Direct) else {
        return;
    };
    let plain_url = plain_url.replace("sslmode=disable", "sslmode=require");
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = serve_until_it_exits(&config(dir.path(), &plain_url));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("does not support TLS"), "{stderr}");
}
