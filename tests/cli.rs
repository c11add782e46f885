//! The command-line client against a real server binary: output, exit codes and error
//! reporting, each run as a subprocess like a user would. Following a stream is in
//! `cli_follow.rs`, what a person at a terminal sees (colour, Ctrl-C) in `cli_terminal.rs`.

mod common;

use std::collections::BTreeSet;

use common::cli::{AGENTS, code, command, expect, finish, json_stdout, start, stderr, stdout};
use common::{LoggedServer, free_port};
use serde_json::{Value, json};

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
    // Under a second in whole milliseconds, from a second on in seconds.
    let failed = page["executions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["executionId"] == row[0])
        .unwrap();
    let ms = failed["durationMs"].as_u64().unwrap();
    let shown = if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.2}s", ms as f64 / 1000.0)
    };
    assert_eq!(row[4], shown, "{out}");
}

#[test]
fn agents_list_shows_what_each_runtime_runs() {
    let setup = start(
        r#"
[[agents]]
id = "boxed"
name = "Boxed"
price_wei = "0"
runtime = { type = "docker", image = "busybox:1.36", cmd = ["sh", "-c", "echo hi"] }

[[agents]]
id = "plain-image"
name = "Plain"
price_wei = "0"
runtime = { type = "docker", image = "example/agent:2" }

[[agents]]
id = "wordy"
name = "Wordy"
price_wei = "0"
runtime = { type = "docker", image = "busybox:1.36", cmd = ["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9; do echo $i; done"] }

[[agents]]
id = "local"
name = "Local"
price_wei = "0"
runtime = { type = "process", command = "sh", args = ["-c", "true"] }
"#,
    );
    let out = stdout(&expect(&setup, &["agents", "list"], 0));
    // The cell between PRICE and TIMEOUT (every timeout is the default, 300 s).
    let start = out.lines().next().unwrap().find("RUNTIME").unwrap();
    let runtime_of = |id: &str| {
        let row = out
            .lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no {id} row in\n{out}"));
        let cell = row[start..].strip_suffix("300s").unwrap();
        cell.trim_end().to_owned()
    };
    assert_eq!(
        runtime_of("boxed"),
        "docker: busybox:1.36 [sh -c 'echo hi']"
    );
    assert_eq!(runtime_of("plain-image"), "docker: example/agent:2");
    // A long command is cut; `--json` has it whole.
    assert_eq!(
        runtime_of("wordy"),
        "docker: busybox:1.36 [sh -c 'for i in 1 2 3 4 5 6 7 8 9; do e…]"
    );
    assert_eq!(runtime_of("local"), "process: sh");
}

#[test]
fn cancel_stops_a_running_execution_and_says_when_it_cannot() {
    let setup = start(AGENTS);
    let id = stdout(&expect(&setup, &["run", "sleeper"], 0))
        .trim()
        .to_owned();
    let out = expect(&setup, &["cancel", &id], 0);
    assert_eq!(stdout(&out), format!("{id} CANCELLED\n"));
    let execution = json_stdout(&expect(&setup, &["ps", "--json"], 0))["executions"][0].clone();
    assert_eq!(execution["status"], "CANCELLED", "{execution}");

    // Nothing left to cancel: the server's refusal, said plainly, exit code 4.
    let again = expect(&setup, &["cancel", &id], 4);
    assert_eq!(
        stderr(&again),
        format!("error: execution {id} has already finished with status CANCELLED (conflict)\n")
    );
    let done = json_stdout(&expect(&setup, &["run", "echo", "--wait", "--json"], 0));
    let done = done["executionId"].as_str().unwrap();
    let out = expect(&setup, &["cancel", done], 4);
    assert!(
        stderr(&out).contains("already finished with status COMPLETED"),
        "{}",
        stderr(&out)
    );
    let missing = "exec_01jabcdefghjkmnpqrstvwxyz0";
    let out = expect(&setup, &["cancel", missing], 4);
    assert!(
        stderr(&out).contains("not found (execution_not_found)"),
        "{}",
        stderr(&out)
    );
    let out = expect(&setup, &["cancel", "exec-typo"], 4);
    assert!(stderr(&out).contains("(invalid_id)"), "{}", stderr(&out));

    let id = stdout(&expect(&setup, &["run", "sleeper"], 0))
        .trim()
        .to_owned();
    let cancelled = json_stdout(&expect(&setup, &["cancel", &id, "--json"], 0));
    assert_eq!(cancelled["status"], "CANCELLED", "{cancelled}");
}

#[test]
fn client_options_go_before_or_after_the_subcommand() {
    let setup = start(AGENTS);
    let url = setup.server.url.as_str();
    let bin = env!("CARGO_BIN_EXE_agentnexus");
    for args in [
        &["--url", url, "agents", "list", "--json"][..],
        &["--json", "--url", url, "agents", "list"][..],
        &["agents", "--url", url, "list", "--json"][..],
        &["agents", "list", "--json", "--url", url][..],
    ] {
        let mut command = std::process::Command::new(bin);
        command.args(args).env_remove("AGENTNEXUS_URL");
        let out = finish(command);
        assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
        assert_eq!(json_stdout(&out)["agents"][0]["id"], "echo", "{args:?}");
    }
    // `serve` has no use for them, and says so rather than ignore them.
    for option in [
        &["--url", url][..],
        &["--token", "t0123456789abcdef"],
        &["--json"],
    ] {
        let mut command = std::process::Command::new(bin);
        command.arg("serve").args(option).env("NO_COLOR", "1");
        let out = finish(command);
        assert_eq!(code(&out), 2, "{option:?}");
        assert!(
            stderr(&out).starts_with(&format!(
                "error: {} is an option of the client commands, not of serve",
                option[0]
            )),
            "{}",
            stderr(&out)
        );
    }
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
    let port = free_port();
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

#[test]
fn serve_says_how_many_agents_it_loaded_and_from_where() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(dir.path(), AGENTS);
    let server = LoggedServer::spawn(&config, &[]);
    let add = [
        "agents",
        "add",
        "--id",
        "extra",
        "--name",
        "Extra",
        "--command",
        "true",
    ];
    assert_eq!(code(&finish(command(&server.url, &add))), 0);
    let log = server.stop();
    let from_file = format!("loaded 4 agents from {}", config.display());
    assert!(log.contains(&from_file), "{log}");

    // The agent defined over the API is kept in the data directory.
    let log = LoggedServer::spawn(&config, &[]).stop();
    let both = format!(
        "loaded 5 agents: 4 from {}, 1 from the store in {}",
        config.display(),
        dir.path().join("data").display()
    );
    assert!(log.contains(&both), "{log}");
}

#[test]
fn serve_names_a_bad_key_as_written_and_suggests_the_one_meant() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(dir.path(), "max_concurent_executions = 4");
    let serve = |env: &[(&str, &str)], config: &std::path::Path| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_agentnexus"));
        command.arg("serve").arg("--config").arg(config);
        command.env("NO_COLOR", "1").envs(env.iter().copied());
        let out = finish(command);
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        stderr(&out)
    };
    assert_eq!(
        serve(&[], &config),
        format!(
            "error: invalid configuration: unknown key `max_concurent_executions`; did you mean \
             `max_concurrent_executions`? (in {} TOML file)\n",
            config.display()
        )
    );
    let good = common::write_config(dir.path(), "");
    let err = serve(&[("AGENTNEXUS_MAX_CONCURRENT_EXECUTIONS", "many")], &good);
    assert!(
        err.starts_with(
            "error: invalid configuration: `AGENTNEXUS_MAX_CONCURRENT_EXECUTIONS`: invalid type"
        ),
        "{err}"
    );
    assert!(!err.contains("default."), "{err}");
}
