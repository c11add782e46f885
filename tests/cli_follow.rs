//! Following an execution with the command-line client (`run --follow`, `logs --follow`):
//! every event once and in order, through server restarts and cut connections, and the exit
//! code of the execution's end.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::cli::{
    AGENTS, code, collect, command, expect, finish, json_stdout, start, stderr, stdout,
};
use common::{ServerProcess, free_port};
use serde_json::{Value, json};

#[test]
fn run_follow_streams_log_lines_in_order() {
    let setup = start(AGENTS);
    let out = expect(&setup, &["run", "lines", "--follow"], 0);
    // stdout carries exactly the agent's stdout; the rest goes to stderr.
    assert_eq!(stdout(&out), "line1\nline2\nline3\n");
    let err = stderr(&out);
    assert!(err.contains("oops"), "{err}");
    let running = err.find("-- RUNNING").expect("RUNNING shown");
    let completed = err.find("-- COMPLETED").expect("COMPLETED shown");
    assert!(running < completed, "{err}");
}

#[test]
fn run_follow_prints_the_output_at_the_end() {
    let setup = start(AGENTS);
    let out = expect(
        &setup,
        &["run", "echo", "--input", r#"{"x": 1}"#, "--follow"],
        0,
    );
    // The log lines as they came, then the output as `--wait` prints it.
    assert_eq!(
        stdout(&out),
        "{\"x\":1}\n{\"ok\": true}\n{\n  \"ok\": true\n}\n"
    );
    let err = stderr(&out);
    let completed = err.find("-- COMPLETED").expect("COMPLETED shown");
    let output = err.find("-- output").expect("the output announced");
    assert!(completed < output, "{err}");

    // An agent without output prints none; with --json, the final status event holds it.
    let out = expect(&setup, &["run", "lines", "--follow"], 0);
    assert!(!stderr(&out).contains("-- output"), "{}", stderr(&out));
    let out = expect(&setup, &["run", "echo", "--follow", "--json"], 0);
    let last: Value = serde_json::from_str(stdout(&out).lines().last().unwrap()).unwrap();
    assert_eq!(last["data"]["output"], json!({ "ok": true }), "{last}");
}

#[test]
fn logs_follow_of_a_cancelled_execution_exits_3() {
    let setup = start(AGENTS);
    let out = expect(&setup, &["run", "sleeper"], 0);
    let id = stdout(&out).trim().to_owned();
    assert!(id.starts_with("exec_"), "{id}");

    let mut follow = command(&setup.server.url, &["logs", &id, "--follow"]);
    let follow = follow
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = setup.server.client();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        // Cancel only once the agent has logged, so there is a line to follow.
        let deadline = Instant::now() + Duration::from_secs(10);
        while common::log_lines(&client.all_events(&id).await).is_empty() {
            assert!(Instant::now() < deadline, "the agent never logged");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (status, body) = client
            .post(&format!("/api/executions/{id}/cancel"), json!({}))
            .await;
        assert!(status.is_success(), "{body}");
    });
    let out = collect(follow);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert_eq!(stdout(&out), "started\n");
    assert!(stderr(&out).contains("-- CANCELLED"), "{}", stderr(&out));
}

#[test]
fn logs_follow_of_a_missing_execution_exits_4() {
    let setup = start(AGENTS);
    let out = expect(
        &setup,
        &["logs", "exec_01jabcdefghjkmnpqrstvwxyz0", "--follow"],
        4,
    );
    assert!(stderr(&out).contains("(not_found)"), "{}", stderr(&out));
    let out = expect(&setup, &["logs", "not-an-id", "--follow"], 4);
    assert!(stderr(&out).contains("(bad_request)"), "{}", stderr(&out));
}

#[test]
fn logs_since_beyond_the_end_is_refused_and_follow_exits_with_the_execution_s_code() {
    let setup = start(AGENTS);
    let out = expect(&setup, &["run", "fail", "--wait", "--json"], 1);
    let execution = json_stdout(&out);
    let id = execution["executionId"].as_str().unwrap();
    let last = execution["lastSeq"].to_string();

    // Printing what is stored after a seq the execution never had is an error...
    let out = expect(&setup, &["logs", id, "--since", "1000"], 4);
    assert!(
        stderr(&out).contains("(since_beyond_end)"),
        "{}",
        stderr(&out)
    );
    // ...while following waits for the end, which has come: the exit code is the execution's.
    for since in ["1000", &last] {
        let out = expect(&setup, &["logs", id, "--follow", "--since", since], 1);
        assert_eq!(stdout(&out), "", "nothing after seq {since}");
    }
    let out = setup.cli(&["logs", id, "--follow", "--since", "1000"]);
    assert!(
        stderr(&out).contains("beyond the last event"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn logs_follow_since_beyond_the_end_of_a_running_execution_follows_it_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("GO");
    let agent = format!(
        r#"
[[agents]]
id = "gated"
name = "Gated"
price_wei = "0"
runtime = {{ type = "process", command = "sh", args = ["-c", "echo started; while [ ! -e '{}' ]; do sleep 0.02; done; echo done"] }}
"#,
        go.display()
    );
    let server = ServerProcess::spawn(&common::write_config(dir.path(), &agent));
    let client = server.client();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let id = runtime.block_on(async {
        let id = client.submit("gated", json!({})).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while common::log_lines(&client.all_events(&id).await).is_empty() {
            assert!(Instant::now() < deadline, "the agent never logged");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        id
    });
    let mut follow = command(&server.url, &["logs", &id, "--follow", "--since", "1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The follower says where it follows from; only then may the agent end.
    let stderr_lines =
        std::io::BufRead::lines(std::io::BufReader::new(follow.stderr.take().unwrap()));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr_lines.map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let note = rx.recv_timeout(Duration::from_secs(30));
    std::fs::write(&go, "").unwrap();
    let out = collect(follow);
    let note = note.expect("the follower said nothing");
    assert!(note.contains("beyond the last event"), "{note}");
    assert_eq!(code(&out), 0);
    assert_eq!(stdout(&out), "done\n");
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(rest.iter().any(|l| l.contains("-- COMPLETED")), "{rest:?}");
}

/// Lines `n1` … `n<count>` on stdout, one per line.
fn numbered(count: usize) -> String {
    (1..=count).map(|i| format!("n{i}\n")).collect()
}

#[test]
fn follow_survives_a_server_restart_and_prints_every_line_once() {
    // A fixed port, so that the restarted server is where the follower left it.
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agentnexus.toml");
    std::fs::write(
        &config,
        format!(
            r#"bind = "127.0.0.1:{port}"
data_dir = "{}"
kill_grace_ms = 500
shutdown_grace_secs = 2
max_concurrent_executions = 1

[[agents]]
id = "blocker"
name = "Blocker"
price_wei = "0"
runtime = {{ type = "process", command = "sh", args = ["-c", "echo blocking; sleep 30"] }}

[[agents]]
id = "counter"
name = "Counter"
price_wei = "0"
runtime = {{ type = "process", command = "sh", args = ["-c", "i=0; while [ $i -lt 40 ]; do i=$((i+1)); echo n$i; sleep 0.01; done"] }}
"#,
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut server = ServerProcess::spawn(&config);
    let client = server.client();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // The blocker takes the only slot, so the counter waits in the queue.
    let (blocker, counter) = runtime.block_on(async {
        let blocker = client.submit("blocker", json!({})).await;
        client
            .wait_status(&blocker, "RUNNING", Duration::from_secs(10))
            .await;
        (blocker, client.submit("counter", json!({})).await)
    });

    let follow = command(&server.url, &["logs", &counter, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Crash the server only once the follower is connected, then start it again on the same
    // config: the running blocker fails, the queued counter runs.
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, body) = client.get("/metrics").await;
            let text = body.as_str().unwrap_or_default();
            if text
                .lines()
                .any(|l| l == "agentnexus_active_websocket_connections 1")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the follower never connected: {text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    server.kill9();
    let server = ServerProcess::spawn(&config);
    assert_eq!(server.addr.port(), port);

    let out = collect(follow);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        numbered(40),
        "every line exactly once, in order"
    );
    let err = stderr(&out);
    assert!(err.contains("-- connection lost"), "{err}");
    assert_eq!(err.matches("-- RUNNING").count(), 1, "{err}");
    assert_eq!(err.matches("-- COMPLETED").count(), 1, "{err}");
    let client = server.client();
    runtime.block_on(async {
        let after = client.execution(&blocker).await;
        assert_eq!(after["status"], "FAILED", "{after}");
    });
}

/// A TCP proxy in front of `upstream` that cuts every connection (both directions, mid-frame)
/// after it has carried a different number of bytes from the server, between 20 and 80 KB.
/// Returns its address and the number of connections it has cut so far.
fn cutting_proxy(
    upstream: std::net::SocketAddr,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let cuts = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = cuts.clone();
    std::thread::spawn(move || {
        for (n, client) in listener.incoming().enumerate() {
            let Ok(client) = client else { return };
            let server = TcpStream::connect(upstream).unwrap();
            let budget = 20_000 + (n * 7_919) % 60_000;
            let (mut client_in, mut server_out) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut client_in, &mut server_out);
                let _ = server_out.shutdown(Shutdown::Write);
            });
            let counted = counted.clone();
            std::thread::spawn(move || {
                let (mut server, mut client) = (server, client);
                let mut carried = 0;
                let mut buf = [0u8; 4096];
                loop {
                    let n = match server.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = client.shutdown(Shutdown::Write);
                            return;
                        }
                        Ok(n) => n.min(budget - carried),
                    };
                    if client.write_all(&buf[..n]).is_err() {
                        return;
                    }
                    carried += n;
                    if carried == budget {
                        counted.fetch_add(1, Ordering::SeqCst);
                        let _ = client.shutdown(Shutdown::Both);
                        let _ = server.shutdown(Shutdown::Both);
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), cuts)
}

#[test]
fn follow_resumes_after_connection_cuts_without_loss_or_repeat() {
    let setup = start(
        r#"
[[agents]]
id = "flood"
name = "Flood"
price_wei = "0"
runtime = { type = "process", command = "sh", args = ["-c", "seq -f n%g 1 10000"] }
"#,
    );
    let (proxy, cuts) = cutting_proxy(setup.server.addr);
    for args in [
        &["run", "flood", "--follow"][..],
        &["run", "flood", "--follow", "--json"][..],
    ] {
        let before = cuts.load(std::sync::atomic::Ordering::SeqCst);
        let out = finish(command(&proxy, args));
        let err = stderr(&out);
        assert_eq!(code(&out), 0, "{err}");
        let cut = cuts.load(std::sync::atomic::Ordering::SeqCst) - before;
        assert!(cut >= 5, "only {cut} cuts");
        // A cut may also land after the last event, when nothing needs resuming any more.
        let lost = err.matches("-- connection lost").count();
        assert!(
            lost + 1 >= cut && lost <= cut,
            "{lost} of {cut} cuts noticed: {err}"
        );
        if args.contains(&"--json") {
            // Every event, seq 1, 2, 3, … without gap or repeat, in the REST shape.
            let seqs: Vec<u64> = stdout(&out)
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .inspect(|e| assert!(e.get("executionId").is_none(), "{e}"))
                .map(|e| e["seq"].as_u64().unwrap())
                .collect();
            assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
            assert!(seqs.len() > 10_000, "{}", seqs.len());
        } else {
            assert_eq!(stdout(&out), numbered(10_000), "every line once, in order");
            assert_eq!(err.matches("-- COMPLETED").count(), 1, "{err}");
        }
    }
}
