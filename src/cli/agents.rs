//! `agentnexus agents list|add|remove`.

use std::collections::BTreeMap;
use std::process::ExitCode;

use serde_json::{Value, json};

use super::client::Client;
use super::output::{print_json, print_table, text};
use super::{AddArgs, AgentsCommand};

pub async fn run(client: &Client, command: AgentsCommand, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        AgentsCommand::List => list(client, json).await?,
        AgentsCommand::Add(args) => add(client, args, json).await?,
        AgentsCommand::Remove { id } => {
            client.delete(&["agents", &id]).await?;
            if !json {
                println!("{id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(client: &Client, json: bool) -> anyhow::Result<()> {
    let body = client.get(&["agents"], &[]).await?;
    if json {
        print_json(&body);
        return Ok(());
    }
    let agents = body["agents"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|agent| {
            vec![
                text(&agent["id"]),
                text(&agent["name"]),
                text(&agent["priceWei"]),
                runtime(&agent["runtime"]),
                format!("{}s", text(&agent["timeoutSecs"])),
            ]
        })
        .collect();
    print_table(&["ID", "NAME", "PRICE", "RUNTIME", "TIMEOUT"], &rows);
    Ok(())
}

/// The longest docker command shown in the table; `--json` has it all.
const CMD_WIDTH: usize = 40;

/// What an agent runs: `process: <command>`, or `docker: <image> [<cmd>]` with the command
/// that replaces the image's own, when there is one (cut at `CMD_WIDTH`).
fn runtime(runtime: &Value) -> String {
    let kind = text(&runtime["type"]);
    match kind.as_str() {
        "process" => format!("{kind}: {}", text(&runtime["command"])),
        "docker" => {
            let mut shown = format!("{kind}: {}", text(&runtime["image"]));
            let cmd = runtime["cmd"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            if !cmd.is_empty() {
                let words: Vec<String> = cmd.iter().map(|word| quoted(&text(word))).collect();
                let mut line = words.join(" ");
                if line.chars().count() > CMD_WIDTH {
                    line = line.chars().take(CMD_WIDTH - 1).chain(['…']).collect();
                }
                shown += &format!(" [{line}]");
            }
            shown
        }
        // A runtime added after this client was built.
        _ => kind,
    }
}

/// A word as a shell would need it: quoted when it is empty or holds blanks or quotes.
fn quoted(word: &str) -> String {
    if !word.is_empty() && !word.contains(|c: char| c.is_whitespace() || "'\"\\".contains(c)) {
        return word.to_owned();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

async fn add(client: &Client, args: Box<AddArgs>, json: bool) -> anyhow::Result<()> {
    let body = match args.from {
        Some(body) => body,
        None => body_from_flags(*args),
    };
    let agent = client.post(&["agents"], &body).await?;
    if json {
        print_json(&agent);
    } else {
        println!("{}", text(&agent["id"]));
    }
    Ok(())
}

/// The POST body described by the flags; optional fields are left out so that the server's
/// defaults apply.
fn body_from_flags(args: AddArgs) -> Value {
    let env: BTreeMap<String, String> = args.env.into_iter().collect();
    let mut runtime = json!({
        "type": "process",
        "command": args.command,
        "args": args.args,
        "env": env,
    });
    if let Some(workdir) = args.workdir {
        runtime["workdir"] = json!(workdir);
    }
    let mut body = json!({
        "name": args.name,
        "priceWei": args.price_wei.to_string(),
        "runtime": runtime,
    });
    if let Some(id) = args.id {
        body["id"] = json!(id);
    }
    if let Some(secs) = args.timeout_secs {
        body["timeoutSecs"] = json!(secs);
    }
    if let Some(schema) = args.input_schema {
        body["inputSchema"] = schema;
    }
    body
}
