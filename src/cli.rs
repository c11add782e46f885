//! Command-line interface: `serve` runs the server; every other command is an HTTP client of a
//! running server. This module holds the argument definitions and maps outcomes to exit codes
//! (`EXIT_CODES`, shown by `--help`).

mod agents;
mod client;
mod executions;
mod follow;
mod interrupt;
mod output;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use agentnexus::domain::{Status, Wei};
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use reqwest::Url;
use serde_json::Value;

use client::{Client, Failure};

/// A usage error (clap's own code for it).
const USAGE: u8 = 2;
/// The server answered with an error, or could not be reached.
const SERVER_ERROR: u8 = 4;

const EXIT_CODES: &str = "\
Exit codes:
  0    success; with --wait or --follow: the execution COMPLETED
  1    the execution FAILED, or an error in this program
  2    usage error; for serve, a bad configuration
  3    the execution was CANCELLED
  4    the server answered with an error (not found, already ended, ...) or could not be reached
  130  interrupted by Ctrl-C. `run --wait|--follow` cancels the execution it started and waits
       for its end (a second Ctrl-C stops waiting at once); `logs --follow` stops following and
       leaves the execution running";

#[derive(Parser)]
#[command(
    name = "agentnexus",
    version,
    about = "AgentNexus: a runtime that executes AI agents and makes every execution observable live",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (REST API, agent executions) until SIGTERM or ctrl-c
    Serve(serve::ServeArgs),
    /// List, define and remove agents
    Agents {
        #[command(subcommand)]
        command: AgentsCommand,
    },
    /// Start an execution of an agent, optionally waiting for it or following its log
    Run(RunArgs),
    /// List executions, newest first
    Ps(PsArgs),
    /// Print the event log of an execution
    Logs(LogsArgs),
    /// Cancel an execution: stop it, and answer once it has ended
    Cancel(CancelArgs),
}

/// Options of every client command. `global` lets them stand anywhere on the command line,
/// before or after the subcommand (`agentnexus --url URL agents list`, `agentnexus agents
/// list --json`).
#[derive(Args)]
pub struct ClientArgs {
    /// Base URL of the agentnexus server
    #[arg(
        long,
        global = true,
        help_heading = "Client options",
        env = "AGENTNEXUS_URL",
        default_value = "http://127.0.0.1:3001",
        value_parser = client::parse_base_url
    )]
    url: Url,
    /// API key, sent as `Authorization: Bearer <TOKEN>`
    #[arg(
        long,
        global = true,
        help_heading = "Client options",
        env = "AGENTNEXUS_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Print the server's JSON instead of tables (streams: one JSON object per line)
    #[arg(long, global = true, help_heading = "Client options")]
    json: bool,
}

impl ClientArgs {
    /// The ids of the options, for telling `serve` they are not its own.
    const IDS: [&str; 3] = ["url", "token", "json"];
}

#[derive(Subcommand)]
pub enum AgentsCommand {
    /// List the defined agents
    List,
    /// Define an agent, from flags or from a JSON file
    Add(Box<AddArgs>),
    /// Remove an agent
    Remove {
        /// Id of the agent to remove
        id: String,
    },
}

#[derive(Args)]
pub struct AddArgs {
    /// JSON file holding the whole request body of POST /api/agents, instead of the flags
    #[arg(long, value_name = "FILE", value_parser = read_json_file, conflicts_with_all = [
        "id", "name", "price_wei", "timeout_secs", "command", "args", "env", "workdir", "input_schema",
    ])]
    pub from: Option<Value>,
    /// Agent id (1 to 64 of A-Z a-z 0-9 _ - .); the server picks one when omitted
    #[arg(long)]
    pub id: Option<String>,
    /// Display name of the agent
    #[arg(long, required_unless_present = "from")]
    pub name: Option<String>,
    /// Price of one execution in wei, a whole number
    #[arg(long, value_name = "WEI", default_value = "0")]
    pub price_wei: Wei,
    /// Seconds an execution may run before it is stopped (server default when omitted)
    #[arg(long, value_name = "SECS")]
    pub timeout_secs: Option<u64>,
    /// Program the agent runs
    #[arg(long, required_unless_present = "from")]
    pub command: Option<String>,
    /// Argument of the program (repeat for several)
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// Environment variable of the program (repeat for several)
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_env_var)]
    pub env: Vec<(String, String)>,
    /// Working directory of the program
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// JSON Schema file that the input of every execution must match
    #[arg(long, value_name = "FILE", value_parser = read_json_file)]
    pub input_schema: Option<Value>,
}

#[derive(Args)]
pub struct RunArgs {
    /// Id of the agent to run
    pub agent: String,
    /// Input of the execution, as JSON
    #[arg(long, value_name = "JSON", value_parser = parse_json, default_value = "{}")]
    pub input: Value,
    /// Wait until the execution ends, then print its output or error (Ctrl-C cancels it)
    #[arg(long, conflicts_with = "follow")]
    pub wait: bool,
    /// Print the execution's log as it arrives, then its output (Ctrl-C cancels it)
    #[arg(long)]
    pub follow: bool,
}

#[derive(Args)]
pub struct PsArgs {
    /// Only executions of this agent
    #[arg(long, value_name = "ID")]
    pub agent: Option<String>,
    /// Only executions in this status (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED)
    #[arg(long)]
    pub status: Option<Status>,
    /// At most this many executions (server default 50)
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

#[derive(Args)]
pub struct LogsArgs {
    /// Id of the execution
    pub execution: String,
    /// Keep printing new events until the execution ends (Ctrl-C stops following; the
    /// execution goes on)
    #[arg(long, short)]
    pub follow: bool,
    /// Only events after this sequence number
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    pub since: u64,
}

#[derive(Args)]
pub struct CancelArgs {
    /// Id of the execution
    pub execution: String,
}

pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let client = &cli.client;
    match cli.command {
        Command::Serve(args) => {
            refuse_client_options(&matches);
            serve::serve(args)
        }
        Command::Agents { command } => {
            client_main(client, async |c, json| agents::run(c, command, json).await)
        }
        Command::Run(a) => client_main(client, async |c, json| executions::run(c, &a, json).await),
        Command::Ps(a) => client_main(client, async |c, json| executions::ps(c, &a, json).await),
        Command::Logs(a) => {
            client_main(client, async |c, json| executions::logs(c, &a, json).await)
        }
        Command::Cancel(a) => client_main(client, async |c, json| {
            executions::cancel(c, &a, json).await
        }),
    }
}

/// The client options are global, so clap accepts them after `serve` too; there they would
/// be silently ignored, which a user who meant `--bind` would not notice.
fn refuse_client_options(matches: &clap::ArgMatches) {
    let Some(serve) = matches.subcommand_matches("serve") else {
        return;
    };
    for id in ClientArgs::IDS {
        if serve.value_source(id) == Some(ValueSource::CommandLine) {
            let mut command = Cli::command();
            command.build();
            let serve = command.find_subcommand_mut("serve").expect("serve exists");
            serve
                .error(
                    ErrorKind::ArgumentConflict,
                    format!("--{id} is an option of the client commands, not of serve"),
                )
                .exit();
        }
    }
}

/// Runs a client command with a client made from `args` and the `--json` flag, and turns its
/// error into a message and an exit code.
fn client_main(
    args: &ClientArgs,
    command: impl AsyncFnOnce(&Client, bool) -> anyhow::Result<ExitCode>,
) -> ExitCode {
    // Die quietly on a closed pipe (`agentnexus logs X | head`) like other command-line tools,
    // rather than panicking in println!. Sockets are unaffected: Rust sends with MSG_NOSIGNAL.
    // SAFETY: called before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| {
            let client = Client::new(args)?;
            runtime.block_on(command(&client, args.json))
        });
    match result {
        Ok(code) => code,
        Err(e) => {
            output::error(format_args!("{e:#}"));
            if e.is::<Failure>() {
                ExitCode::from(SERVER_ERROR)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn parse_json(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))
}

fn read_json_file(path: &str) -> Result<Value, String> {
    let text = std::fs::read_to_string(PathBuf::from(path))
        .map_err(|e| format!("cannot read {path}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{path} is not valid JSON: {e}"))
}

fn parse_env_var(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn env_vars_split_at_the_first_equals_sign() {
        assert_eq!(
            parse_env_var("A=b=c"),
            Ok(("A".to_owned(), "b=c".to_owned()))
        );
        assert!(parse_env_var("=x").is_err());
        assert!(parse_env_var("A").is_err());
    }
}
