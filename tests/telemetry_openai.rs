//! The telemetry of an agent instrumented as real ones are (`tests/agents/openai_chat.py`: the
//! OpenTelemetry SDK set up by the runtime's environment alone, the official OpenAI
//! instrumentation, the OpenAI client) calling a fake chat server, under the real binary: its
//! spans in the execution's stream while it runs, its tokens and cost counted exactly, an
//! execution without telemetry, and a token budget that stops a run.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::openai::{ChatUsage, FakeOpenAi, MODEL};
use common::tools::{Tool, have, otel_python};
use common::{Client, ServerProcess, log_lines, process_is_gone, write_config};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;

const WAIT: Duration = Duration::from_secs(60);

/// The real server with the agent `quiet` (a shell agent without telemetry) and, where the
/// instrumented Python is installed, `chat` (`tests/agents/openai_chat.py`).
struct Setup {
    server: ServerProcess,
    dir: TempDir,
}

impl Setup {
    /// With `chat`; `None` (the test skips) without the instrumented Python.
    fn start() -> Option<Setup> {
        if !have(Tool::OtelPython) {
            return None;
        }
        let python = otel_python().expect("checked by have");
        Some(Self::with_agents(&format!(
            "{QUIET}{}",
            chat_agent(&python)
        )))
    }

    /// With `quiet` only.
    fn start_quiet() -> Setup {
        Self::with_agents(QUIET)
    }

    fn with_agents(agents: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), agents);
        Setup {
            server: ServerProcess::spawn(&config),
            dir,
        }
    }

    fn client(&self) -> Client {
        self.server.client()
    }

    /// A file the agent waits for after its first call (see `goFile`).
    fn go_file(&self) -> PathBuf {
        self.dir.path().join("go")
    }
}

const QUIET: &str = r#"
[[agents]]
id = "quiet"
name = "No telemetry"
price_wei = "1"
runtime = { type = "process", command = "sh", args = ["-c", "echo working; echo '{\"done\": true}'"] }
"#;

impl Drop for Setup {
    /// Stops the server gracefully, so that it stops its agents too: a failed test (which would
    /// otherwise kill it outright) leaves no agent calling on behind it.
    fn drop(&mut self) {
        let child = &mut self.server.child;
        // SAFETY: signals a child of this test, which is waited for below.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        for _ in 0..200 {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn chat_agent(python: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/agents/openai_chat.py");
    // The batch processor's default 5 s delay would only make the test slower.
    format!(
        r#"
[[agents]]
id = "chat"
name = "Instrumented chat"
price_wei = "1"
timeout_secs = 120
runtime = {{ type = "process", command = {python:?}, args = [{script:?}], env = {{ OTEL_BSP_SCHEDULE_DELAY = "50" }} }}
"#
    )
}

/// Polls the execution's events until `found` holds for them.
async fn events_until(client: &Client, id: &str, found: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let events = client.all_events(id).await;
        if found(&events) {
            return events;
        }
        assert!(Instant::now() < deadline, "not found in {events:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spans(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|e| e["type"] == "span").collect()
}

/// The spans the agent exported: all but the execution's root span, which the runtime records
/// at the end (named `execution <agent id>`, without a parent).
fn agent_spans(events: &[Value]) -> Vec<&Value> {
    spans(events).into_iter().filter(|s| !is_root(s)).collect()
}

fn is_root(span: &Value) -> bool {
    span["data"]["parentSpanId"].is_null()
        && span["data"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("execution "))
}

/// The seq of the first log line equal to `line` (or starting with it, ending in `*`).
fn seq_of_line(events: &[Value], line: &str) -> u64 {
    let prefix = line.strip_suffix('*');
    events
        .iter()
        .find(|e| {
            e["type"] == "log"
                && e["data"]["log"]
                    .as_str()
                    .is_some_and(|l| prefix.map_or(l == line, |p| l.starts_with(p)))
        })
        .unwrap_or_else(|| panic!("no line {line:?} in {events:#?}"))["seq"]
        .as_u64()
        .unwrap()
}

fn usage(prompt: u64, completion: u64, cached: u64, reasoning: u64) -> ChatUsage {
    ChatUsage {
        prompt,
        completion,
        cached,
        reasoning,
    }
}

/// The execution's final status event.
fn final_status(events: &[Value]) -> &Value {
    events.iter().rev().find(|e| e["type"] == "status").unwrap()
}

#[tokio::test]
async fn spans_arrive_while_the_agent_runs_between_its_log_lines() {
    let Some(setup) = Setup::start() else { return };
    let chat = FakeOpenAi::start(vec![usage(1200, 300, 1000, 100)]).await;
    let client = setup.client();
    let go = setup.go_file();
    let input = json!({"baseUrl": chat.base_url, "calls": 2, "goFile": go});
    let id = client.submit("chat", input).await;

    // The agent waits after its first call until it is told to go on: its span must come now.
    let events = events_until(&client, &id, |e| !agent_spans(e).is_empty()).await;
    let running = client.execution(&id).await;
    assert_eq!(running["status"], "RUNNING", "{running}");
    let first = agent_spans(&events)[0].clone();
    std::fs::write(&go, "").unwrap();
    let execution = client.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");

    let events = client.all_events(&id).await;
    common::assert_gapless(&events);
    let seq = first["seq"].as_u64().unwrap();
    assert!(seq_of_line(&events, "answered 1*") < seq, "{events:#?}");
    assert!(seq < seq_of_line(&events, "go"), "{events:#?}");
    assert!(seq < seq_of_line(&events, "calling 2"), "{events:#?}");
    assert_eq!(agent_spans(&events).len(), 2, "{events:#?}");
    assert_eq!(chat.requests(), 2);

    // The span as the instrumentation made it, in the trace the runtime handed the agent.
    let traceparent = log_lines(&events)
        .into_iter()
        .find_map(|l| l.strip_prefix("traceparent ").map(str::to_owned))
        .unwrap();
    let parts: Vec<&str> = traceparent.split('-').collect();
    let span = &first["data"];
    assert_eq!(span["traceId"], parts[1], "{span}");
    assert_eq!(span["parentSpanId"], parts[2], "{span}");
    assert_eq!(span["name"], "chat gpt-4o", "{span}");
    assert_eq!(span["kind"], "client", "{span}");
    assert_eq!(span["status"]["code"], "UNSET", "{span}");
    assert!(
        span["startTimeMs"].as_u64() <= span["endTimeMs"].as_u64(),
        "{span}"
    );
    let attributes = &span["attributes"];
    assert_eq!(attributes["gen_ai.operation.name"], "chat", "{span}");
    assert_eq!(attributes["gen_ai.request.model"], "gpt-4o", "{span}");
    assert_eq!(attributes["gen_ai.response.model"], MODEL, "{span}");
    assert_eq!(attributes["gen_ai.usage.input_tokens"], 1200, "{span}");
    assert_eq!(attributes["gen_ai.usage.output_tokens"], 300, "{span}");

    // The root span the agent's spans hang from, recorded once the run has ended.
    let roots: Vec<_> = spans(&events).into_iter().filter(|s| is_root(s)).collect();
    assert_eq!(roots.len(), 1, "{events:#?}");
    let root = &roots[0]["data"];
    assert_eq!(root["name"], "execution chat", "{root}");
    assert_eq!(root["traceId"], parts[1], "{root}");
    assert_eq!(root["spanId"], parts[2], "{root}");
    assert_eq!(root["attributes"]["agentnexus.execution.id"], id, "{root}");
    let last_agent_span = agent_spans(&events).last().unwrap()["seq"].as_u64();
    assert!(roots[0]["seq"].as_u64() > last_agent_span, "{events:#?}");
}

#[tokio::test]
async fn spans_of_an_agent_that_ignores_traceparent_hang_from_the_root() {
    let Some(setup) = Setup::start() else { return };
    let chat = FakeOpenAi::start(vec![usage(10, 5, 0, 0)]).await;
    let client = setup.client();
    let input = json!({"baseUrl": chat.base_url, "calls": 1, "joinTrace": false});
    let id = client.submit("chat", input).await;
    let execution = client.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");

    // The SDK does not read TRACEPARENT: the span comes as a root of its own trace.
    let events = client.all_events(&id).await;
    let root = spans(&events).into_iter().find(|s| is_root(s)).unwrap();
    let chats = agent_spans(&events);
    assert_eq!(chats.len(), 1, "{events:#?}");
    let span = &chats[0]["data"];
    assert_eq!(span["parentSpanId"], root["data"]["spanId"], "{events:#?}");
    assert_eq!(
        span["attributes"]["gen_ai.usage.input_tokens"], 10,
        "{span}"
    );
    assert_eq!(execution["usage"]["llmCalls"], 1, "{execution}");
}

#[tokio::test]
async fn tokens_and_cost_are_counted_exactly() {
    let Some(setup) = Setup::start() else { return };
    let answers = vec![
        usage(1200, 300, 1000, 100),
        usage(2000, 500, 0, 200),
        usage(777, 33, 700, 0),
    ];
    let chat = FakeOpenAi::start(answers.clone()).await;
    let client = setup.client();
    let input = json!({"baseUrl": chat.base_url, "calls": 3, "tool": true});
    let id = client.submit("chat", input).await;
    let execution = client.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    assert_eq!(chat.requests(), 3);

    let input: u64 = answers.iter().map(|a| a.prompt).sum();
    let output: u64 = answers.iter().map(|a| a.completion).sum();
    assert_eq!((input, output), (3977, 833));
    // gpt-4o: 2.50 USD per million input tokens, 10.00 per million output tokens.
    // 3977 × 2.50 / 10⁶ = 0.0099425; 833 × 10 / 10⁶ = 0.00833; together 0.0182725.
    // The OpenAI instrumentation (openai-v2 2.4b0) reports only input and output tokens of a
    // chat completion, not the cached or reasoning parts the server answered: nothing is
    // priced at the cache-read price, and the parts are zero.
    let cost = "0.0182725";
    let usage = &execution["usage"];
    assert_eq!(usage["reported"], true, "{usage}");
    assert_eq!(usage["inputTokens"], input, "{usage}");
    assert_eq!(usage["outputTokens"], output, "{usage}");
    assert_eq!(usage["cacheReadTokens"], 0, "{usage}");
    assert_eq!(usage["reasoningTokens"], 0, "{usage}");
    assert_eq!(usage["cacheCreationTokens"], 0, "{usage}");
    assert_eq!(usage["llmCalls"], 3, "{usage}");
    assert_eq!(usage["toolCalls"], 1, "{usage}");
    assert_eq!(usage["costUsd"], cost, "{usage}");
    let by_model = usage["byModel"].as_object().unwrap();
    assert_eq!(by_model.len(), 1, "{usage}");
    let model = &by_model[MODEL];
    assert_eq!(model["inputTokens"], input, "{usage}");
    assert_eq!(model["outputTokens"], output, "{usage}");
    assert_eq!(model["llmCalls"], 3, "{usage}");
    assert_eq!(model["costUsd"], cost, "{usage}");

    let events = client.all_events(&id).await;
    let end = final_status(&events);
    assert_eq!(end["data"]["status"], "COMPLETED", "{end}");
    assert_eq!(&end["data"]["usage"], usage, "{end}");
    let tools: Vec<_> = agent_spans(&events)
        .into_iter()
        .filter(|s| s["data"]["attributes"]["gen_ai.operation.name"] == "execute_tool")
        .collect();
    assert_eq!(tools.len(), 1, "{events:#?}");
    assert_eq!(tools[0]["data"]["attributes"]["gen_ai.tool.name"], "lookup");
}

#[tokio::test]
async fn an_execution_without_telemetry_reports_none() {
    let setup = Setup::start_quiet();
    let client = setup.client();
    let id = client.submit("quiet", json!({})).await;
    let execution = client.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    let usage = &execution["usage"];
    assert_eq!(usage["reported"], false, "{usage}");
    assert_eq!(usage["costUsd"], Value::Null, "{usage}");
    assert_eq!(usage["llmCalls"], 0, "{usage}");
    assert_eq!(usage["inputTokens"], 0, "{usage}");
    // Not even the execution's root span: its stream is what it was before telemetry.
    let events = client.all_events(&id).await;
    assert!(spans(&events).is_empty(), "{events:#?}");
    let end = final_status(&events);
    assert!(end["data"].get("usage").is_none_or(Value::is_null), "{end}");
}

#[tokio::test]
async fn a_token_budget_stops_a_run_that_keeps_calling() {
    let Some(setup) = Setup::start() else { return };
    // 3000 tokens first (86 % of 3500), then 1000 a call: the second call goes over.
    let answers = vec![usage(2500, 500, 0, 0), usage(900, 100, 0, 0)];
    let chat = FakeOpenAi::start_with_delay(answers, Duration::from_millis(100)).await;
    let client = setup.client();
    let go = setup.go_file();
    let input = json!({"baseUrl": chat.base_url, "calls": 0, "goFile": go, "child": true});
    let (status, body) = client
        .post(
            "/api/executions",
            json!({"agentId": "chat", "input": input, "budget": {"maxTokens": 3500}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["executionId"].as_str().unwrap().to_owned();

    // Past 80 % after the first call: said in a system line, and the run goes on.
    let line = "[agentnexus] budget maxTokens at 80 %: 3000 used of 3500";
    let nearing = |events: &[Value]| {
        events.iter().any(|e| {
            e["type"] == "log" && e["data"]["stream"] == "system" && e["data"]["log"] == line
        })
    };
    let events = events_until(&client, &id, nearing).await;
    let running = client.execution(&id).await;
    assert_eq!(running["status"], "RUNNING", "{running}");
    let pids: Vec<i32> = log_lines(&events)
        .iter()
        .filter_map(|l| l.strip_prefix("pid ")?.parse().ok())
        .collect();
    assert_eq!(pids.len(), 2, "the agent and its child: {events:#?}");
    std::fs::write(&go, "").unwrap();

    let execution = client.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "FAILED", "{execution}");
    assert_eq!(execution["error"]["kind"], "budget_exceeded", "{execution}");
    assert_eq!(execution["error"]["budget"], "maxTokens", "{execution}");
    let usage = &execution["usage"];
    let total = usage["inputTokens"].as_u64().unwrap() + usage["outputTokens"].as_u64().unwrap();
    assert!(total > 3500, "{usage}");
    assert!(chat.requests() >= 2);

    let events = client.all_events(&id).await;
    common::assert_gapless(&events);
    let end = final_status(&events);
    assert_eq!(end["data"]["status"], "FAILED", "{end}");
    assert_eq!(end["data"]["usage"], *usage, "{end}");
    wait_gone(&pids).await;
}

async fn wait_gone(pids: &[i32]) {
    for _ in 0..200 {
        if pids.iter().all(|&p| process_is_gone(p)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("processes still alive: {pids:?}");
}

/// The Python example of the README's "Tracing your agent", as written.
fn readme_example() -> String {
    let readme = include_str!("../README.md");
    let section = readme
        .split("## Tracing your agent")
        .nth(1)
        .expect("the README has the section");
    let code = section
        .split("```python\n")
        .nth(1)
        .expect("a Python example");
    code.split("```").next().unwrap().to_owned()
}

#[tokio::test]
async fn the_readme_example_works_as_written() {
    if !have(Tool::OtelPython) {
        return;
    }
    let python = otel_python().expect("checked by have");
    let chat = FakeOpenAi::start(vec![usage(1200, 300, 0, 0)]).await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("agent.py");
    std::fs::write(&script, readme_example()).unwrap();
    // The OpenAI client reads its base URL and key from the environment, as in production.
    let agent = format!(
        r#"
[[agents]]
id = "example"
name = "The README's example"
price_wei = "1"
timeout_secs = 120
runtime = {{ type = "process", command = {python:?}, args = [{script:?}], env = {{ OPENAI_BASE_URL = {base:?}, OPENAI_API_KEY = "test" }} }}
"#,
        base = chat.base_url
    );
    let setup = Setup::with_agents(&agent);
    let client = setup.client();
    let id = client.submit("example", json!({})).await;
    let execution = client.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    assert_eq!(chat.requests(), 1);
    let events = client.all_events(&id).await;
    let calls = agent_spans(&events);
    assert_eq!(calls.len(), 1, "{events:#?}");
    assert_eq!(
        calls[0]["data"]["attributes"]["gen_ai.request.model"],
        "gpt-4o-mini"
    );
    let usage = &execution["usage"];
    assert_eq!(
        (
            usage["inputTokens"].as_u64(),
            usage["outputTokens"].as_u64()
        ),
        (Some(1200), Some(300)),
        "{usage}"
    );
    // Answered as gpt-4o-2024-08-06, priced as gpt-4o: 1200 × 2.50 + 300 × 10.00 per million.
    assert_eq!(usage["costUsd"], "0.006", "{usage}");
}
