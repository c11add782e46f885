//! The command-line client against a real server binary: output, exit codes and error
//! reporting, each run as a subprocess like a user would.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::ServerProcess;
use serde_json::{Value, json};
use tempfile::TempDir;

/// Agents shared by the tests; each finishes well under a second.
const AGENTS: &str = r#"
[[agents]]
id = "echo"
name = "Echo"
price_wei = "5"
runtime = { type = "process", command = "sh", args = ["-c", "cat; echo; echo '{\"ok\": true}'"] }

[[agents]]
id = "fail"
name = "Fail"
price_wei = "0"
runtime = { type = "process", command = "sh", args = ["-c", "echo failing; exit 3"] }

[[agents]]
id = "lines"
name = "Lines"
price_wei = "0"
runtime = { type = "process", command = "sh", args = ["-c", "for i in 1 2 3; do echo line$i; sleep 0.2; done; echo oops >&2"] }

[[agents]]
id = "sleeper"
name = "Sleeper"
price_wei = "0"
runtime = { type = "process", command = "sh", args = ["-c", "echo started; sleep 10"] }
"#;

struct Setup {
    server: ServerProcess,
    dir: TempDir,
}

fn start(extra_toml: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(&common::write_config(dir.path(), extra_toml));
    Setup { server, dir }
}

impl Setup {
    fn cli(&self, args: &[&str]) -> Output {
        finish(command(&self.server.url, args))
    }
}

/// The CLI with `args` and `--url`, shielded from the caller's environment.
fn command(url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agentnexus"));
    command
        .args(args)
        .args(["--url", url])
        .env_remove("AGENTNEXUS_URL")
        .env_remove("AGENTNEXUS_TOKEN")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    command
}

/// Runs the command to completion, failing the test instead of hanging if it never ends.
fn finish(mut command: Command) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    collect(child)
}

/// Waits for a child started with piped output, for at most 30 s (then kills it).
fn collect(child: Child) -> Output {
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| {
            // SAFETY: our own child, which has not been waited for.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the command did not finish within 30 s")
        })
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exited, not killed")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

fn json_stdout(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(output)))
}

/// Runs `args`, asserts exit code `expected`, and returns the output.
fn expect(setup: &Setup, args: &[&str], expected: i32) -> Output {
    let output = setup.cli(args);
    assert_eq!(
        code(&output),
        expected,
        "{args:?}\nstdout: {}\nstderr: {}",
        stdout(&output),
        stderr(&output)
    );
    output
}

#[test]
fn agents_list_shows_the_configured_agents() {
    let setup = start(AGENTS);
    let out = stdout(&expect(&setup, &["agents", "list"], 0));
    let lines: Vec<&str> = out.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["ID", "NAME", "PRICE", "RUNTIME", "TIMEOUT"]);
    let echo: Vec<&str> = lines
        .iter()
        .find(|l| l.starts_with("echo "))
        .unwrap_or_else(|| panic!("no echo row in\n{out}"))
        .split_whitespace()
        .collect();
    assert_eq!(echo, ["echo", "Echo", "5", "process:", "sh", "300s"]);
    assert_eq!(lines.len(), 5, "{out}");
}

#[test]
fn agents_add_list_run_and_remove() {
    let setup = start("");
    let big_price = u128::MAX.to_string();
    let out = expect(
        &setup,
        &[
            "agents",
            "add",
            "--id",
            "greeter",
            "--name",
            "Greeter",
            "--price-wei",
            &big_price,
            "--timeout-secs",
            "7",
            "--command",
            "sh",
            "--arg",
            "-c",
            "--arg",
            "echo \"$GREETING\"",
            "--env",
            "GREETING=hello=world",
        ],
        0,
    );
    assert_eq!(stdout(&out).trim(), "greeter");

    let list = json_stdout(&expect(&setup, &["agents", "list", "--json"], 0));
    let agent = list["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "greeter")
        .unwrap_or_else(|| panic!("greeter missing from {list}"));
    assert_eq!(agent["name"], "Greeter");
    assert_eq!(agent["priceWei"], json!(big_price), "wei must stay exact");
    assert_eq!(agent["timeoutSecs"], 7);
    assert_eq!(
        agent["runtime"]["args"],
        json!(["-c", "echo \"$GREETING\""])
    );
    assert_eq!(
        agent["runtime"]["env"],
        json!({ "GREETING": "hello=world" })
    );

    // The arguments and environment arrive at the process as given.
    let run = expect(&setup, &["run", "greeter", "--follow"], 0);
    assert_eq!(stdout(&run), "hello=world\n");

    let out = expect(&setup, &["agents", "remove", "greeter"], 0);
    assert_eq!(stdout(&out).trim(), "greeter");
    let list = stdout(&expect(&setup, &["agents", "list"], 0));
    assert!(!list.contains("greeter"), "{list}");
    let again = expect(&setup, &["agents", "remove", "greeter"], 4);
    assert!(
        stderr(&again).contains("(agent_not_found)"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn agents_add_from_a_file_and_with_an_input_schema() {
    let setup = start("");
    let body = json!({
        "id": "from-file",
        "name": "From file",
        "priceWei": "12",
        "runtime": { "type": "process", "command": "true" },
    });
    let body_file = setup.dir.path().join("agent.json");
    std::fs::write(&body_file, body.to_string()).unwrap();
    let out = expect(
        &setup,
        &["agents", "add", "--from", body_file.to_str().unwrap()],
        0,
    );
    assert_eq!(stdout(&out).trim(), "from-file");

    let schema = json!({ "type": "object", "required": ["name"] });
    let schema_file = setup.dir.path().join("schema.json");
    std::fs::write(&schema_file, schema.to_string()).unwrap();
    let out = expect(
        &setup,
        &[
            "agents",
            "add",
            "--json",
            "--name",
            "Strict",
            "--command",
            "cat",
            "--input-schema",
            schema_file.to_str().unwrap(),
        ],
        0,
    );
    let created = json_stdout(&out);
    assert_eq!(created["inputSchema"], schema);
    let id = created["id"].as_str().unwrap();
    let rejected = expect(&setup, &["run", id, "--input", "{}"], 4);
    assert!(
        stderr(&rejected).contains("(input_rejected)"),
        "{}",
        stderr(&rejected)
    );
    expect(
        &setup,
        &["run", id, "--input", r#"{"name": "x"}"#, "--wait"],
        0,
    );
}

#[test]
fn run_wait_prints_the_output_of_a_completed_execution() {
    let setup = start(AGENTS);
    let out = expect(
        &setup,
        &["run", "echo", "--input", r#"{"x": 1}"#, "--wait"],
        0,
    );
    assert_eq!(json_stdout(&out), json!({ "ok": true }));
    assert!(stderr(&out).contains("COMPLETED"), "{}", stderr(&out));
}

#[test]
fn run_wait_of_a_failing_agent_exits_1_with_the_error() {
    let setup = start(AGENTS);
    let out = expect(&setup, &["run", "fail", "--wait"], 1);
    let err = stderr(&out);
    assert!(err.contains("FAILED"), "{err}");
    assert!(
        err.contains("exit_code: the agent exited with code 3"),
        "{err}"
    );
    assert_eq!(stdout(&out), "", "no output on failure");

    let out = expect(&setup, &["run", "fail", "--wait", "--json"], 1);
    let execution = json_stdout(&out);
    assert_eq!(execution["status"], "FAILED");
    assert_eq!(execution["exitCode"], 3);
}

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
fn logs_prints_a_finished_execution() {
    let setup = start(AGENTS);
    let out = expect(
        &setup,
        &["run", "echo", "--input", r#"{"n": 1}"#, "--wait", "--json"],
        0,
    );
    let execution = json_stdout(&out);
    let id = execution["executionId"].as_str().unwrap();

    let out = expect(&setup, &["logs", id], 0);
    assert_eq!(stdout(&out), "{\"n\":1}\n{\"ok\": true}\n");
    assert!(stderr(&out).contains("-- COMPLETED"), "{}", stderr(&out));

    let out = expect(&setup, &["logs", id, "--json"], 0);
    let events: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        seqs.len() as u64,
        execution["lastSeq"].as_u64().unwrap(),
        "every event, once"
    );

    let out = expect(&setup, &["logs", id, "--json", "--since", "3"], 0);
    let first: Value = serde_json::from_str(stdout(&out).lines().next().unwrap()).unwrap();
    assert_eq!(first["seq"], 4);
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

#[test]
fn logs_reads_pages_of_long_lines_to_the_end() {
    // 400 lines of 16,000 bytes: several pages by size, far fewer events than a page by count.
    let setup = start(
        r#"
[[agents]]
id = "wide"
name = "Wide"
price_wei = "0"
runtime = { type = "process", command = "sh", args = ["-c", "line=$(head -c 16000 /dev/zero | tr '\\0' x); i=0; while [ $i -lt 400 ]; do echo \"$i $line\"; i=$((i+1)); done"] }
"#,
    );
    let out = expect(&setup, &["run", "wide", "--wait", "--json"], 0);
    let id = json_stdout(&out)["executionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = expect(&setup, &["logs", &id], 0);
    let printed = stdout(&out);
    let numbers: Vec<usize> = printed
        .lines()
        .map(|l| {
            let (n, line) = l.split_once(' ').unwrap();
            assert_eq!(line.len(), 16_000);
            n.parse().unwrap()
        })
        .collect();
    assert_eq!(
        numbers,
        (0..400).collect::<Vec<_>>(),
        "every line once, in order"
    );
    assert!(stderr(&out).contains("-- COMPLETED"), "{}", stderr(&out));
}

#[test]
fn ps_lists_executions() {
    let setup = start(AGENTS);
    let mut ids = BTreeSet::new();
    for (agent, code) in [("echo", 0), ("fail", 1)] {
        let out = expect(&setup, &["run", agent, "--wait", "--json"], code);
        ids.insert(
            json_stdout(&out)["executionId"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }

    let page = json_stdout(&expect(&setup, &["ps", "--json"], 0));
    let listed: BTreeSet<String> = page["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["executionId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ids);

    let out = stdout(&expect(&setup, &["ps", "--status", "failed"], 0));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["EXECUTION", "AGENT", "STATUS", "CREATED", "DURATION"]
    );
    assert_eq!(lines.len(), 2, "only the failed one:\n{out}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[1..3], ["fail", "FAILED"]);
    assert!(ids.contains(row[0]), "{out}");
    assert!(
        row[4].ends_with('s') && row[4].trim_end_matches('s').parse::<f64>().is_ok(),
        "{out}"
    );
}

#[test]
fn invalid_input_json_is_a_usage_error_and_sends_nothing() {
    let setup = start(AGENTS);
    let out = expect(&setup, &["run", "echo", "--input", "{not json"], 2);
    assert!(stderr(&out).contains("--input"), "{}", stderr(&out));
    let page = json_stdout(&expect(&setup, &["ps", "--json"], 0));
    assert_eq!(page["executions"], json!([]));
}

#[test]
fn server_errors_exit_4_with_their_code() {
    let setup = start(AGENTS);
    let out = expect(&setup, &["run", "ghost", "--wait"], 4);
    let err = stderr(&out);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("(agent_not_found)"), "{err}");
    assert_eq!(stdout(&out), "");
}

#[test]
fn an_unreachable_server_exits_4() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let out = finish(command(&url, &["agents", "list"]));
    assert_eq!(code(&out), 4);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("error: cannot reach the server at {url}")),
        "{err}"
    );
}

#[test]
fn the_token_is_sent_as_a_bearer_key() {
    let key = "0123456789abcdef-cli";
    let setup = start(&format!(
        "[[api_keys]]\nkey = \"{key}\"\nuser = \"alice\"\n{AGENTS}"
    ));
    let out = expect(&setup, &["agents", "list"], 4);
    assert!(stderr(&out).contains("(unauthorized)"), "{}", stderr(&out));
    expect(&setup, &["agents", "list", "--token", key], 0);

    let mut with_env = command(&setup.server.url, &["ps"]);
    with_env.env("AGENTNEXUS_TOKEN", key);
    assert_eq!(code(&finish(with_env)), 0);

    // Following goes over the WebSocket, with the same key on the upgrade.
    let out = expect(&setup, &["run", "lines", "--follow", "--token", key], 0);
    assert_eq!(stdout(&out), "line1\nline2\nline3\n");
    let id = json_stdout(&expect(
        &setup,
        &["run", "echo", "--token", key, "--json"],
        0,
    ))["executionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = expect(&setup, &["logs", &id, "--follow"], 4);
    assert!(stderr(&out).contains("(unauthorized)"), "{}", stderr(&out));
    expect(&setup, &["logs", &id, "--follow", "--token", key], 0);
}

/// Lines `n1` … `n<count>` on stdout, one per line.
fn numbered(count: usize) -> String {
    (1..=count).map(|i| format!("n{i}\n")).collect()
}

#[test]
fn follow_survives_a_server_restart_and_prints_every_line_once() {
    // A fixed port, so that the restarted server is where the follower left it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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
