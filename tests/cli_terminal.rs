//! What a person at a terminal gets from the command-line client, on a real pseudo-terminal:
//! Ctrl-C typed while it waits (the execution it started is cancelled, someone else's is left
//! running, a second Ctrl-C stops waiting at once, exit code 130), and errors of every kind in
//! one style, coloured only on a terminal and never with `NO_COLOR`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::ServerProcess;
use common::cli::{AGENTS, OnTerminal, Stderr, code, command, expect, finish, start, stdout};
use serde_json::Value;

/// The id in the first `-- exec_…` note of a `run --wait|--follow`.
fn announced_id(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("-- exec_"))
        .map(|rest| format!("exec_{rest}"))
        .unwrap_or_else(|| panic!("no id announced in {stderr:?}"))
}

fn status_of(server: &ServerProcess, id: &str) -> Value {
    let client = server.client();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(client.execution(id))["status"].clone()
}

#[test]
fn ctrl_c_cancels_the_execution_that_run_started_and_exits_130() {
    let setup = start(AGENTS);
    for mode in ["--follow", "--wait"] {
        let cli = command(&setup.server.url, &["run", "sleeper", mode]);
        let mut terminal = OnTerminal::spawn(cli, Stderr::Pipe);
        if mode == "--follow" {
            terminal.stdout.wait_for("started\n");
        } else {
            terminal.stderr.wait_for("-- exec_");
        }
        terminal.ctrl_c();
        assert_eq!(terminal.exit_code(), 130, "{mode}");
        let err = terminal.stderr.text();
        let id = announced_id(&err);
        assert!(
            err.contains(&format!("-- interrupted: cancelling {id}")),
            "{err}"
        );
        assert!(err.contains(&format!("-- cancelled {id}\n")), "{err}");
        if mode == "--follow" {
            assert!(err.contains("-- CANCELLED"), "{err}");
        } else {
            assert!(err.contains("CANCELLED in "), "{err}");
        }
        assert_eq!(status_of(&setup.server, &id), "CANCELLED", "{mode}");
    }
}

#[test]
fn a_second_ctrl_c_stops_waiting_at_once() {
    // An agent that shrugs off SIGTERM, and a kill grace far longer than any test: cancelling
    // it takes ten minutes, unless the STOP file lets it go.
    let dir = tempfile::tempdir().unwrap();
    let stop = dir.path().join("STOP");
    let config = dir.path().join("agentnexus.toml");
    std::fs::write(
        &config,
        format!(
            r#"bind = "127.0.0.1:0"
data_dir = "{data}"
kill_grace_ms = 600000

[[agents]]
id = "stubborn"
name = "Stubborn"
price_wei = "0"
runtime = {{ type = "process", command = "sh", args = ["-c", "trap 'echo stopping' TERM; echo started; while [ ! -e '{stop}' ]; do sleep 0.05; done"] }}
"#,
            data = dir.path().join("data").display(),
            stop = stop.display(),
        ),
    )
    .unwrap();
    let server = ServerProcess::spawn(&config);
    let cli = command(&server.url, &["run", "stubborn", "--follow"]);
    let mut terminal = OnTerminal::spawn(cli, Stderr::Pipe);
    terminal.stdout.wait_for("started\n");
    terminal.ctrl_c();
    // The agent was told to stop (and ignores it): the cancellation has reached the server.
    terminal.stdout.wait_for("stopping\n");
    terminal.ctrl_c();
    assert_eq!(terminal.exit_code(), 130);
    let err = terminal.stderr.text();
    let id = announced_id(&err);
    assert!(
        err.contains(&format!(
            "-- stopped waiting for {id}, which was asked to stop"
        )),
        "{err}"
    );
    assert!(!err.contains("-- CANCELLED"), "{err}");
    assert_eq!(status_of(&server, &id), "RUNNING");

    std::fs::write(&stop, "").unwrap();
    let client = server.client();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ended = runtime.block_on(client.wait_terminal(&id, Duration::from_secs(30)));
    assert_eq!(ended["status"], "CANCELLED", "{ended}");
}

#[test]
fn ctrl_c_on_logs_follow_stops_following_and_the_execution_goes_on() {
    let setup = start(AGENTS);
    let id = stdout(&expect(&setup, &["run", "sleeper"], 0))
        .trim()
        .to_owned();
    let cli = command(&setup.server.url, &["logs", &id, "--follow"]);
    let mut terminal = OnTerminal::spawn(cli, Stderr::Pipe);
    terminal.stdout.wait_for("started\n");
    terminal.ctrl_c();
    assert_eq!(terminal.exit_code(), 130);
    let err = terminal.stderr.text();
    assert!(
        err.contains(&format!(
            "-- stopped following {id}; the execution goes on (`agentnexus cancel {id}` stops it)"
        )),
        "{err}"
    );
    assert_eq!(status_of(&setup.server, &id), "RUNNING");
    expect(&setup, &["cancel", &id], 0);
}

/// The CLI with `args` as run from a colour terminal (`TERM=xterm`), `NO_COLOR` as given.
fn on_colour_terminal(url: &str, args: &[&str], no_color: Option<&str>) -> Command {
    let mut cli = command(url, args);
    for ci_or_forced in ["NO_COLOR", "CLICOLOR", "CLICOLOR_FORCE", "CI"] {
        cli.env_remove(ci_or_forced);
    }
    cli.env("TERM", "xterm");
    if let Some(value) = no_color {
        cli.env("NO_COLOR", value);
    }
    cli
}

/// What the command shows on a terminal as its stderr, with its exit code.
fn screen(cli: Command) -> (i32, String) {
    let mut terminal = OnTerminal::spawn(cli, Stderr::Terminal);
    let code = terminal.exit_code();
    (code, terminal.screen.text())
}

/// The `error:` label of a message, with whatever styling surrounds it.
fn label(message: &str) -> &str {
    let end = message.find("error:").expect("an error") + "error:".len();
    let styled_end = message[end..].find(' ').map_or(end, |space| end + space);
    &message[..styled_end]
}

#[test]
fn errors_of_every_kind_look_alike_and_are_coloured_only_for_a_terminal() {
    let setup = start(AGENTS);
    let url = setup.server.url.as_str();
    // An argument error (clap's), and the server's refusal (ours).
    let usage: &[&str] = &["run", "echo", "--input", "{not json"];
    let refused: &[&str] = &["run", "ghost"];

    let (code_usage, usage_screen) = screen(on_colour_terminal(url, usage, None));
    let (code_refused, refused_screen) = screen(on_colour_terminal(url, refused, None));
    assert_eq!((code_usage, code_refused), (2, 4));
    assert!(
        label(&usage_screen).contains("\x1b["),
        "coloured: {usage_screen:?}"
    );
    assert_eq!(
        label(&refused_screen),
        label(&usage_screen),
        "{refused_screen:?}"
    );
    assert!(
        refused_screen.contains("(agent_not_found)"),
        "{refused_screen:?}"
    );

    // NO_COLOR with any non-empty value turns colour off; set but empty it does not.
    for args in [usage, refused] {
        let (_, plain) = screen(on_colour_terminal(url, args, Some("1")));
        assert!(plain.starts_with("error: "), "{plain:?}");
        assert!(!plain.contains('\x1b'), "{plain:?}");
        let (_, empty) = screen(on_colour_terminal(url, args, Some("")));
        assert_eq!(label(&empty), label(&usage_screen), "{empty:?}");
    }

    // Not a terminal: no colour, whatever TERM says.
    for args in [usage, refused] {
        let out = finish(on_colour_terminal(url, args, None));
        let err = String::from_utf8(out.stderr.clone()).unwrap();
        assert!(err.starts_with("error: "), "{err:?}");
        assert!(!err.contains('\x1b'), "{err:?}");
        assert_ne!(code(&out), 0);
    }
}
