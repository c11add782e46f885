//! Command-line interface: `serve` runs the server; every other command is an HTTP client of a
//! running server. This module holds the argument definitions and maps outcomes to exit codes.
//!
//! Exit codes: 0 success (or COMPLETED), 1 FAILED execution or internal error, 2 usage error,
//! 3 CANCELLED execution, 4 error reported by the server or server unreachable.

mod agents;
mod client;
mod executions;
mod follow;
mod output;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use agentnexus::domain::{Status, Wei};
use clap::{Args, Parser, Subcommand};
use reqwest::Url;
use serde_json::Value;

use client::{Client, Failure};

#[derive(Parser)]
#[command(
    name = "agentnexus",
    version,
    about = "AgentNexus: a runtime that executes AI agents and makes every execution observable live"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (REST API, agent executions) until SIGTERM or ctrl-c
    Serve(serve::ServeArgs),
    /// List, define and remove agents
    Agents(AgentsArgs),
    /// Start an execution of an agent, optionally waiting for it or following its log
    Run(RunArgs),
    /// List executions, newest first
    Ps(PsArgs),
    /// Print the event log of an execution
    Logs(LogsArgs),
}

/// Options of every client command. `global` lets them follow the subcommand too
/// (`agentnexus agents list --json`).
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

#[derive(Args)]
struct AgentsArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: AgentsCommand,
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
    #[command(flatten)]
    client: ClientArgs,
    /// Id of the agent to run
    pub agent: String,
    /// Input of the execution, as JSON
    #[arg(long, value_name = "JSON", value_parser = parse_json, default_value = "{}")]
    pub input: Value,
    /// Wait until the execution ends, then print its output or error
    #[arg(long, conflicts_with = "follow")]
    pub wait: bool,
    /// Print the execution's log as it arrives, until the execution ends
    #[arg(long)]
    pub follow: bool,
}

#[derive(Args)]
pub struct PsArgs {
    #[command(flatten)]
    client: ClientArgs,
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
    #[command(flatten)]
    client: ClientArgs,
    /// Id of the execution
    pub execution: String,
    /// Keep printing new events until the execution ends
    #[arg(long, short)]
    pub follow: bool,
    /// Only events after this sequence number
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    pub since: u64,
}

pub fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => serve::serve(args),
        Command::Agents(a) => client_main(&a.client, async |c, json| {
            agents::run(c, a.command, json).await
        }),
        Command::Run(a) => client_main(&a.client, async |c, json| {
            executions::run(c, &a, json).await
        }),
        Command::Ps(a) => client_main(&a.client, async |c, json| executions::ps(c, &a, json).await),
        Command::Logs(a) => client_main(&a.client, async |c, json| {
            executions::logs(c, &a, json).await
        }),
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
            eprintln!("error: {e:#}");
            if e.is::<Failure>() {
                ExitCode::from(4)
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
    use clap::CommandFactory;

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
