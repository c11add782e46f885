//! `agentnexus run`, `ps`, `logs` and `cancel`: submitting executions, listing them, reading
//! their event stream and stopping them. Human output keeps stdout for the agent's own stdout
//! (and the output JSON), and sends everything else to stderr, so `agentnexus run X --follow >
//! out.txt` captures just that.

use std::process::ExitCode;
use std::time::Duration;

use agentnexus::domain::Status;
use anyhow::{Context, anyhow};
use serde_json::{Value, json};

use super::client::{Client, Failure};
use super::interrupt::{Interrupts, Watched, cancel_on_interrupt, interrupted};
use super::output::{Spinner, dim, duration_ms, note, print_json, print_table, text};
use super::{CancelArgs, LogsArgs, PsArgs, RunArgs};

const POLL: Duration = Duration::from_millis(200);
const PAGE: usize = 1000;

/// The exit code that mirrors an execution's final status.
fn exit_code(status: Status) -> ExitCode {
    match status {
        Status::Completed => ExitCode::SUCCESS,
        Status::Cancelled => ExitCode::from(3),
        _ => ExitCode::FAILURE,
    }
}

fn status_of(execution: &Value) -> anyhow::Result<Status> {
    let status = execution["status"]
        .as_str()
        .ok_or_else(|| anyhow!("the server's answer has no status: {execution}"))?;
    status.parse().map_err(|e: String| anyhow!(e))
}

pub async fn run(client: &Client, args: &RunArgs, json: bool) -> anyhow::Result<ExitCode> {
    if !args.wait && !args.follow {
        let (id, submitted) = submit(client, args).await?;
        if json {
            print_json(&submitted);
        } else {
            println!("{id}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    // From the submission on, Ctrl-C means "cancel it".
    let mut interrupts = Interrupts::catch()?;
    let (id, _) = submit(client, args).await?;
    if !json {
        // The id goes first, so a long execution can be looked at from elsewhere.
        note(&id);
    }
    if args.follow {
        follow_run(client, &id, json, &mut interrupts).await
    } else {
        wait_run(client, &id, json, &mut interrupts).await
    }
}

/// Submits the execution; returns its id and the server's answer.
async fn submit(client: &Client, args: &RunArgs) -> anyhow::Result<(String, Value)> {
    let body = json!({ "agentId": args.agent, "input": args.input });
    let submitted = client.post(&["executions"], &body).await?;
    let id = submitted["executionId"]
        .as_str()
        .with_context(|| format!("the server's answer has no executionId: {submitted}"))?;
    Ok((id.to_owned(), submitted))
}

/// `run --follow`: the log as it comes, then the output.
async fn follow_run(
    client: &Client,
    id: &str,
    json: bool,
    interrupts: &mut Interrupts,
) -> anyhow::Result<ExitCode> {
    let mut output = Value::Null;
    let mut print = |event: &Value| {
        let status = print_event(event, json);
        if status.is_some_and(Status::is_terminal) {
            output = event["data"]["output"].clone();
        }
        status
    };
    let follow = super::follow::follow(client, id, 0, &mut print);
    let watched = cancel_on_interrupt(client, id, interrupts, follow).await?;
    // With --json the final status event, already printed, holds the output.
    if !json && !output.is_null() {
        note("output");
        print_json(&output);
    }
    Ok(match watched {
        Watched::Ended(status) => exit_code(status),
        Watched::Cancelled(status) => after_interrupt(id, status),
        Watched::Detached => detached(id),
    })
}

/// `run --wait`: a spinner until the end, then the outcome and the output.
async fn wait_run(
    client: &Client,
    id: &str,
    json: bool,
    interrupts: &mut Interrupts,
) -> anyhow::Result<ExitCode> {
    let (execution, interrupted) =
        match cancel_on_interrupt(client, id, interrupts, wait(client, id)).await? {
            Watched::Ended(execution) => (execution, false),
            Watched::Cancelled(execution) => (execution, true),
            Watched::Detached => return Ok(detached(id)),
        };
    let status = status_of(&execution)?;
    if json {
        print_json(&execution);
    } else {
        if execution["durationMs"].is_null() {
            eprintln!("{status}");
        } else {
            eprintln!("{status} in {}", duration_ms(&execution["durationMs"]));
        }
        if let Some(error) = execution["error"].as_object() {
            eprintln!("{}: {}", text(&error["kind"]), text(&error["message"]));
        }
        if !execution["output"].is_null() {
            print_json(&execution["output"]);
        }
    }
    Ok(if interrupted {
        after_interrupt(id, status)
    } else {
        exit_code(status)
    })
}

/// Says how an execution cancelled on Ctrl-C ended.
fn after_interrupt(id: &str, status: Status) -> ExitCode {
    if status == Status::Cancelled {
        note(&format!("cancelled {id}"));
    } else {
        note(&format!("{id} ended {status} before it could be cancelled"));
    }
    interrupted()
}

fn detached(id: &str) -> ExitCode {
    note(&format!(
        "stopped waiting for {id}, which was asked to stop (`agentnexus ps` shows how it ends)"
    ));
    interrupted()
}

/// Polls the execution until it ends and returns its final state.
async fn wait(client: &Client, id: &str) -> anyhow::Result<Value> {
    let mut spinner = Spinner::start();
    loop {
        let execution = client.get(&["executions", id], &[]).await?;
        let status = status_of(&execution)?;
        if status.is_terminal() {
            spinner.clear();
            return Ok(execution);
        }
        spinner.tick(&format!("{id} {status}"));
        tokio::time::sleep(POLL).await;
    }
}

pub async fn ps(client: &Client, args: &PsArgs, json: bool) -> anyhow::Result<ExitCode> {
    let mut query = Vec::new();
    if let Some(agent) = &args.agent {
        query.push(("agentId", agent.clone()));
    }
    if let Some(status) = args.status {
        query.push(("status", status.as_str().to_owned()));
    }
    if let Some(limit) = args.limit {
        query.push(("limit", limit.to_string()));
    }
    let page = client.get(&["executions"], &query).await?;
    if json {
        print_json(&page);
        return Ok(ExitCode::SUCCESS);
    }
    let executions = page["executions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = executions
        .iter()
        .map(|e| {
            vec![
                text(&e["executionId"]),
                text(&e["agentId"]),
                text(&e["status"]),
                text(&e["createdAt"]),
                duration_ms(&e["durationMs"]),
            ]
        })
        .collect();
    print_table(
        &["EXECUTION", "AGENT", "STATUS", "CREATED", "DURATION"],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn logs(client: &Client, args: &LogsArgs, json: bool) -> anyhow::Result<ExitCode> {
    let id = &args.execution;
    if args.follow {
        // Someone's execution, maybe not this user's to stop: Ctrl-C only stops following.
        let mut interrupts = Interrupts::catch()?;
        return tokio::select! {
            status = follow(client, id, args.since, json) => Ok(exit_code(status?)),
            () = interrupts.next() => {
                note(&format!(
                    "stopped following {id}; the execution goes on (`agentnexus cancel {id}` stops it)"
                ));
                Ok(interrupted())
            }
        };
    }
    let mut since = args.since;
    loop {
        let page = events_after(client, id, since).await?;
        for event in &page.events {
            print_event(event, json);
        }
        if !page.has_more {
            return Ok(ExitCode::SUCCESS);
        }
        since = page.next_since;
    }
}

/// `agentnexus cancel`: 0 once the execution is cancelled; the server's refusal (not found,
/// already ended) is an error like any other, exit code 4.
pub async fn cancel(client: &Client, args: &CancelArgs, json: bool) -> anyhow::Result<ExitCode> {
    let id = &args.execution;
    let execution = client
        .post(&["executions", id, "cancel"], &json!({}))
        .await?;
    let status = status_of(&execution)?;
    if status.is_terminal() && status != Status::Cancelled {
        // It ended by itself while the cancellation was on its way.
        return Err(Failure::Api {
            code: "conflict".into(),
            message: format!("execution {id} has already finished with status {status}"),
        }
        .into());
    }
    if json {
        print_json(&execution);
    } else {
        println!("{id} {status}");
        if !status.is_terminal() {
            note(&format!("{id} was asked to stop and has not ended yet"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the events of execution `id` after `since` as they arrive, until its terminal status
/// event, and returns that status. Follows over the WebSocket, reconnecting and resuming after
/// the last seq printed when the connection drops.
async fn follow(client: &Client, id: &str, since: u64, json: bool) -> anyhow::Result<Status> {
    super::follow::follow(client, id, since, &mut |event| print_event(event, json)).await
}

/// One page of the events stored after `since`.
struct Page {
    events: Vec<Value>,
    next_since: u64,
    has_more: bool,
}

async fn events_after(client: &Client, id: &str, since: u64) -> anyhow::Result<Page> {
    let query = [("since", since.to_string()), ("limit", PAGE.to_string())];
    let mut body = client.get(&["executions", id, "events"], &query).await?;
    let (Value::Array(events), Some(next_since), Some(has_more)) = (
        body["events"].take(),
        body["nextSince"].as_u64(),
        body["hasMore"].as_bool(),
    ) else {
        return Err(anyhow!(
            "the server's answer is not a page of events: {body}"
        ));
    };
    Ok(Page {
        events,
        next_since,
        has_more,
    })
}

/// Prints one event and returns the status it announces, if it is a status event.
fn print_event(event: &Value, json: bool) -> Option<Status> {
    let data = &event["data"];
    let status = match event["type"].as_str() {
        Some("status") => data["status"].as_str().and_then(|s| s.parse().ok()),
        _ => None,
    };
    if json {
        println!("{event}");
        return status;
    }
    match event["type"].as_str() {
        Some("log") => {
            let line = data["log"].as_str().unwrap_or_default();
            match data["stream"].as_str() {
                Some("stdout") => println!("{line}"),
                Some("stderr") | Some("otlp") => eprintln!("{line}"),
                _ => eprintln!("[agentnexus] {line}"),
            }
        }
        Some("status") => {
            let mut line = format!("-- {}", text(&data["status"]));
            if let Some(error) = data["error"].as_object() {
                line += &format!(" ({}: {})", text(&error["kind"]), text(&error["message"]));
            }
            eprintln!("{}", dim(&line));
        }
        Some("span") => eprintln!("{}", dim(&span_line(data))),
        // Metrics, and kinds added after this client was built, are for --json readers.
        _ => {}
    }
    status
}

/// A span in one line: its name, duration, model and tokens when it has them
/// (`-- span chat gpt-4o 1250 ms, 120 in / 40 out tokens`).
fn span_line(data: &Value) -> String {
    let attributes = &data["attributes"];
    let mut line = format!("-- span {}", text(&data["name"]));
    if let (Some(start), Some(end)) = (data["startTimeMs"].as_i64(), data["endTimeMs"].as_i64()) {
        line += &format!(" {} ms", end.saturating_sub(start));
    }
    let model = attributes["gen_ai.response.model"]
        .as_str()
        .or(attributes["gen_ai.request.model"].as_str());
    if let Some(model) = model {
        line += &format!(", {model}");
    }
    let tokens = |key: &str| attributes[key].as_u64();
    if let (Some(input), Some(output)) = (
        tokens("gen_ai.usage.input_tokens"),
        tokens("gen_ai.usage.output_tokens"),
    ) {
        line += &format!(", {input} in / {output} out tokens");
    }
    if data["status"]["code"] == "ERROR" {
        line += " (error)";
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_reads_as_one_line_with_its_model_and_tokens() {
        let span = json!({
            "name": "chat gpt-4o", "startTimeMs": 1000, "endTimeMs": 2250,
            "status": {"code": "ERROR"},
            "attributes": {"gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06",
                           "gen_ai.usage.input_tokens": 120, "gen_ai.usage.output_tokens": 40}
        });
        assert_eq!(
            span_line(&span),
            "-- span chat gpt-4o 1250 ms, gpt-4o-2024-08-06, 120 in / 40 out tokens (error)"
        );
        let bare = json!({"name": "tool", "status": {"code": "UNSET"}, "attributes": {}});
        assert_eq!(span_line(&bare), "-- span tool");
    }
}
