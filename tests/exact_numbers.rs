//! JSON numbers are carried exactly: an input reaches the agent (stdin, `INPUT_DATA`, the
//! `AGENTNEXUS_INPUT` file), and an output reaches every reader (REST, the events endpoint,
//! WebSocket, the CLI, after a restart) digit for digit as written — integers beyond 64 bits,
//! numbers beyond f64's range or precision, `-0`, trailing zeros, at any depth — from process
//! and Docker agents alike. `inputSchema` compares such numbers exactly. A number the runtime
//! must itself read (a `since`, a resource limit) is refused with an error naming it when it
//! does not fit, never wrapped or rounded.
//!
//! Bodies are sent and read as text: parsing them in the test would say nothing about the server.

mod common;

use std::time::Duration;

use agentnexus::config::{Config, ConfigAgent, Overrides};
use agentnexus::domain::Runtime;
use common::docker::IMAGE as TEST_IMAGE;
use common::{Client, ServerProcess, TestServer, log_lines, sh_agent};
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(60);

/// The reported input.
const WEI: &str = r#"{"balanceWei":19876543210987654321}"#;

/// Its variants: beyond u64 and i64, beyond f64's range and precision, negative zero, a
/// trailing zero, nested in arrays and objects. Keys are sorted and the text is compact, so it is
/// exactly how the server writes the value back.
const PAYLOAD: &str = r#"{"balanceWei":19876543210987654321,"nested":{"deep":[[-19876543210987654321,123456789012345678901234567890,1e+400,-1.5e-400,-0,1.0,0.1000000000000000055511151231257827,[{"wei":340282366920938463463374607431768211456}]]],"max":18446744073709551615,"min":-9223372036854775808},"paidWei":19876543210987654321}"#;

/// Prints what it received on each channel, then its input again as its last stdout line (the
/// output).
const ECHO: &str = r#"input=$(cat); echo "stdin $input"; echo "env $INPUT_DATA"; echo "file $(cat "$AGENTNEXUS_INPUT")"; echo "$input""#;

/// Writes its input to the output file, and a decoy on stdout.
const TO_FILE: &str = r#"cat > "$AGENTNEXUS_OUTPUT"; echo '{"from":"stdout"}'"#;

/// GETs `path` and returns the status and the body as the server wrote it.
async fn get_text(client: &Client, path: &str) -> (StatusCode, String) {
    let response = reqwest::get(format!("{}{path}", client.url)).await.unwrap();
    (response.status(), response.text().await.unwrap())
}

/// POSTs a JSON text and returns the status and the body as the server wrote it.
async fn post_text(client: &Client, path: &str, body: &str) -> (StatusCode, String) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", client.url))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .timeout(WAIT)
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

/// Submits `input` (JSON text) under the given key and returns the execution id.
async fn submit_as(client: &Client, agent: &str, key: &str, input: &str) -> String {
    let body = format!(r#"{{"agentId":"{agent}","{key}":{input}}}"#);
    let (status, text) = post_text(client, "/api/executions", &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    body["executionId"].as_str().unwrap().to_owned()
}

async fn submit(client: &Client, agent: &str, input: &str) -> String {
    submit_as(client, agent, "input", input).await
}

/// Waits for the execution to end and returns its REST representation as text.
async fn finished(client: &Client, id: &str) -> String {
    let execution = client.wait_terminal(id, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    let (status, text) = get_text(client, &format!("/api/executions/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    text
}

fn assert_has(text: &str, wanted: &str) {
    assert!(text.contains(wanted), "expected {wanted}\n in {text}");
}

/// The execution as REST and the events endpoint show it carries `input` and `output` exactly.
async fn assert_exact(client: &Client, id: &str, input: &str, output: &str) {
    let execution = finished(client, id).await;
    assert_has(&execution, &format!(r#""input":{input}"#));
    assert_has(&execution, &format!(r#""output":{output}"#));
    let (status, events) = get_text(client, &format!("/api/executions/{id}/events")).await;
    assert_eq!(status, StatusCode::OK, "{events}");
    assert_has(&events, &format!(r#""output":{output}"#));
}

// ---- inputs and outputs of process agents ----

#[tokio::test]
async fn the_reported_wei_amount_reaches_the_agent_and_comes_back_unrounded() {
    let printer = r#"cat >/dev/null; echo '{"paidWei": 19876543210987654321}'"#;
    let server = TestServer::start(vec![
        sh_agent("echo", "1", ECHO),
        sh_agent("printer", "1", printer),
    ])
    .await;
    let client = &server.client;
    let id = submit(client, "echo", WEI).await;
    assert_exact(client, &id, WEI, WEI).await;
    let lines = log_lines(&client.all_events(&id).await);
    assert_eq!(
        lines,
        [
            format!("stdin {WEI}"),
            format!("env {WEI}"),
            format!("file {WEI}"),
            WEI.to_owned()
        ]
    );

    let id = submit(client, "printer", "{}").await;
    assert_exact(client, &id, "{}", r#"{"paidWei":19876543210987654321}"#).await;
}

#[tokio::test]
async fn every_number_of_a_nested_input_reaches_the_agent_as_written() {
    let server = TestServer::start(vec![sh_agent("echo", "1", ECHO)]).await;
    let client = &server.client;
    for key in ["input", "inputData"] {
        let id = submit_as(client, "echo", key, PAYLOAD).await;
        assert_exact(client, &id, PAYLOAD, PAYLOAD).await;
        let lines = log_lines(&client.all_events(&id).await);
        assert_eq!(
            lines,
            [
                format!("stdin {PAYLOAD}"),
                format!("env {PAYLOAD}"),
                format!("file {PAYLOAD}"),
                PAYLOAD.to_owned()
            ],
            "{key}"
        );
    }
}

#[tokio::test]
async fn an_output_file_keeps_every_digit_like_the_last_stdout_line() {
    let server = TestServer::start(vec![sh_agent("file", "1", TO_FILE)]).await;
    let client = &server.client;
    let id = submit(client, "file", PAYLOAD).await;
    assert_exact(client, &id, PAYLOAD, PAYLOAD).await;
    // A pretty-printed output file is the same value.
    let pretty = PAYLOAD.replace(',', ",\n  ").replace(':', ": ");
    let id = submit(client, "file", &pretty).await;
    assert_exact(client, &id, PAYLOAD, PAYLOAD).await;
}

#[tokio::test]
async fn an_exponent_is_kept_with_its_digits_in_one_canonical_spelling() {
    // `1E400` and `1e400` are the number `1e+400`: the runtime writes every exponent with a
    // lowercase `e` and its sign, and changes nothing else (README, "Numbers are exact").
    let server = TestServer::start(vec![sh_agent("echo", "1", ECHO)]).await;
    let client = &server.client;
    let input = r#"{"a":1E400,"b":1e400,"c":2.50E-3,"d":-7e+0021,"e":1e-7}"#;
    let canonical = r#"{"a":1e+400,"b":1e+400,"c":2.50e-3,"d":-7e+0021,"e":1e-7}"#;
    let id = submit(client, "echo", input).await;
    assert_exact(client, &id, canonical, canonical).await;
    let lines = log_lines(&client.all_events(&id).await);
    assert_eq!(lines[0], format!("stdin {canonical}"));
}

// ---- every reader ----

/// Raw WebSocket texts about `id` until its final status event, subscribing with `since` 0.
async fn ws_texts_until_end(server: &TestServer, id: &str) -> Vec<String> {
    let url = format!("{}/ws", server.url.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let subscribe = format!(r#"{{"type":"subscribe","executionId":"{id}"}}"#);
    ws.send(Message::text(subscribe)).await.unwrap();
    let mut texts = Vec::new();
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("the socket stays open")
            .unwrap();
        let Message::Text(text) = frame else { continue };
        let end = text.contains(r#""status":"COMPLETED""#) || text.contains(r#""status":"FAILED""#);
        texts.push(text.to_string());
        if end && text.starts_with(r#"{"type":"status""#) {
            return texts;
        }
    }
}

#[tokio::test]
async fn websocket_status_events_carry_the_output_exactly_live_and_replayed() {
    let slow = format!("sleep 0.5; {ECHO}");
    let server = TestServer::start(vec![sh_agent("echo", "1", &slow)]).await;
    let id = submit(&server.client, "echo", PAYLOAD).await;
    let live = ws_texts_until_end(&server, &id).await;
    assert_has(live.last().unwrap(), &format!(r#""output":{PAYLOAD}"#));
    let replayed = ws_texts_until_end(&server, &id).await;
    assert_has(replayed.last().unwrap(), &format!(r#""output":{PAYLOAD}"#));
    assert_has(
        &live.join("\n"),
        &format!(r#""log":"stdin {}""#, PAYLOAD.replace('"', "\\\"")),
    );
}

#[tokio::test]
async fn numbers_are_exact_after_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_owned();
    let agents = || vec![sh_agent("echo", "1", ECHO)];
    let mut server = TestServer::start_with(agents(), |c| c.data_dir = dir.clone()).await;
    let id = submit(&server.client, "echo", PAYLOAD).await;
    assert_exact(&server.client, &id, PAYLOAD, PAYLOAD).await;
    server.stop().await;

    let server = TestServer::start_with(agents(), |c| c.data_dir = dir.clone()).await;
    assert_exact(&server.client, &id, PAYLOAD, PAYLOAD).await;
    let replayed = ws_texts_until_end(&server, &id).await;
    assert_has(replayed.last().unwrap(), &format!(r#""output":{PAYLOAD}"#));
}

#[tokio::test]
async fn docker_agents_get_and_give_numbers_exactly() {
    if !common::docker::ready() {
        return;
    }
    let echo = r#"input=$(cat); echo "stdin $input"; echo "env $INPUT_DATA"; echo "$input""#;
    let docker = |id: &str, script: &str| ConfigAgent {
        budget: Default::default(),
        runtime: Runtime::docker(TEST_IMAGE, &["sh", "-c", script]),
        ..sh_agent(id, "1", "")
    };
    let server = TestServer::start(vec![docker("echo", echo), docker("file", TO_FILE)]).await;
    let client = &server.client;
    let id = submit(client, "echo", PAYLOAD).await;
    assert_exact(client, &id, PAYLOAD, PAYLOAD).await;
    let lines = log_lines(&client.all_events(&id).await);
    assert_eq!(
        lines,
        [
            format!("stdin {PAYLOAD}"),
            format!("env {PAYLOAD}"),
            PAYLOAD.to_owned()
        ]
    );
    let id = submit(client, "file", PAYLOAD).await;
    assert_exact(client, &id, PAYLOAD, PAYLOAD).await;
}

/// Removes all whitespace: the CLI pretty-prints, the payload has no strings with spaces.
fn compact(text: &str) -> String {
    text.split_whitespace().collect()
}

#[test]
fn the_cli_prints_inputs_outputs_and_events_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let agent = format!(
        "[[agents]]\nid = \"echo\"\nname = \"Echo\"\nprice_wei = \"0\"\nruntime = {{ type = \"process\", command = \"sh\", args = [\"-c\", {ECHO:?}] }}\n"
    );
    let server = ServerProcess::spawn(&common::write_config(dir.path(), &agent));
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentnexus"))
            .args(args)
            .args(["--url", &server.url])
            .env_remove("AGENTNEXUS_URL")
            .env_remove("AGENTNEXUS_TOKEN")
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(out.status.success(), "{args:?}\n{stdout}\n{stderr}");
        stdout
    };
    let output = cli(&["run", "echo", "--input", PAYLOAD, "--wait"]);
    assert_eq!(compact(&output), PAYLOAD);

    let execution = compact(&cli(&[
        "run", "echo", "--input", PAYLOAD, "--wait", "--json",
    ]));
    assert_has(&execution, &format!(r#""input":{PAYLOAD}"#));
    assert_has(&execution, &format!(r#""output":{PAYLOAD}"#));

    let execution: serde_json::Value = serde_json::from_str(&execution).unwrap();
    let id = execution["executionId"].as_str().unwrap();
    let events = compact(&cli(&["logs", id, "--json"]));
    assert_has(&events, &format!(r#""output":{PAYLOAD}"#));
}

// ---- inputSchema ----

/// An agent that accepts what its schema allows, created over the API.
async fn schema_agent(client: &Client, id: &str, schema: &str) {
    let body = format!(
        r#"{{"id":"{id}","name":"{id}","priceWei":"0","inputSchema":{schema},"runtime":{{"type":"process","command":"true"}}}}"#
    );
    let (status, text) = post_text(client, "/api/agents", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let (_, text) = get_text(client, &format!("/api/agents/{id}")).await;
    assert_has(&text, &format!(r#""inputSchema":{schema}"#));
}

async fn verdict(client: &Client, agent: &str, input: &str) -> StatusCode {
    let body = format!(r#"{{"agentId":"{agent}","input":{input}}}"#);
    let (status, text) = post_text(client, "/api/executions", &body).await;
    assert!(
        matches!(
            status,
            StatusCode::ACCEPTED | StatusCode::UNPROCESSABLE_ENTITY
        ),
        "{input}: {status} {text}"
    );
    status
}

#[tokio::test]
async fn an_input_schema_compares_big_numbers_exactly() {
    let server = TestServer::start(vec![]).await;
    let client = &server.client;
    let schema = r#"{"properties":{"balanceWei":{"maximum":19876543210987654321,"minimum":0,"type":"integer"},"big":{"minimum":0,"type":"integer"},"lots":{"multipleOf":1000000000000000000000}},"type":"object"}"#;
    schema_agent(client, "wallet", schema).await;
    let cases = [
        (
            r#"{"balanceWei":19876543210987654321}"#,
            StatusCode::ACCEPTED,
        ),
        (
            r#"{"balanceWei":19876543210987654322}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (r#"{"balanceWei":-1}"#, StatusCode::UNPROCESSABLE_ENTITY),
        (
            r#"{"big":123456789012345678901234567890}"#,
            StatusCode::ACCEPTED,
        ),
        (
            r#"{"big":-123456789012345678901234567890}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"big":123456789012345678901234567890.5}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (r#"{"big":1.0}"#, StatusCode::ACCEPTED),
        (r#"{"lots":5000000000000000000000}"#, StatusCode::ACCEPTED),
        (
            r#"{"lots":5000000000000000000001}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(verdict(client, "wallet", input).await, expected, "{input}");
    }
}

#[tokio::test]
async fn numbers_beyond_f64_never_break_schema_validation() {
    let server = TestServer::start(vec![]).await;
    let client = &server.client;
    let schema = r#"{"properties":{"n":{"maximum":10,"minimum":0,"multipleOf":3,"type":"integer"}},"type":"object"}"#;
    schema_agent(client, "small", schema).await;
    let cases = [
        ("1e+400", StatusCode::UNPROCESSABLE_ENTITY),
        ("-1e+400", StatusCode::UNPROCESSABLE_ENTITY),
        ("1e-400", StatusCode::UNPROCESSABLE_ENTITY),
        ("1e+999999999", StatusCode::UNPROCESSABLE_ENTITY),
        ("-1e-999999999", StatusCode::UNPROCESSABLE_ENTITY),
        (
            "123456789012345678901234567890123456789012345678901234567890",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("-0", StatusCode::ACCEPTED),
        ("9.0", StatusCode::ACCEPTED),
        ("9e+0", StatusCode::ACCEPTED),
        (
            "0.1000000000000000055511151231257827",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (n, expected) in cases {
        let input = format!(r#"{{"n":{n}}}"#);
        assert_eq!(verdict(client, "small", &input).await, expected, "{input}");
    }
    // A schema made of such numbers is accepted and used just the same.
    let schema = r#"{"maximum":1e+999999999,"minimum":-1e+400,"multipleOf":1e-400}"#;
    schema_agent(client, "huge", schema).await;
    assert_eq!(verdict(client, "huge", "1").await, StatusCode::ACCEPTED);
    assert_eq!(
        verdict(client, "huge", "1e+1000000000").await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let (status, _) = get_text(client, "/health").await;
    assert_eq!(status, StatusCode::OK);
}

// ---- numbers the runtime reads itself ----

#[tokio::test]
async fn agent_settings_keep_their_numbers_and_refuse_what_does_not_fit() {
    let server = TestServer::start(vec![]).await;
    let client = &server.client;
    let docker = |extra: &str| {
        format!(
            r#"{{"id":"d","name":"d","priceWei":"0","runtime":{{"type":"docker","image":"{TEST_IMAGE}"{extra}}}}}"#
        )
    };
    let settings = r#","cpuQuota":0.25,"memoryBytes":268435456,"pidsLimit":64,"tmpBytes":1048576"#;
    let (status, text) = post_text(client, "/api/agents", &docker(settings)).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    assert_has(
        &text,
        r#""memoryBytes":268435456,"cpuQuota":0.25,"pidsLimit":64"#,
    );
    client.delete("/api/agents/d").await;

    for (extra, field) in [
        (r#","memoryBytes":18446744073709551616"#, "memoryBytes"),
        (r#","memoryBytes":1.5"#, "memoryBytes"),
        (r#","pidsLimit":-1"#, "pidsLimit"),
        (r#","cpuQuota":1e+400"#, "cpuQuota"),
    ] {
        let (status, text) = post_text(client, "/api/agents", &docker(extra)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{extra}: {text}");
        assert_has(&text, field);
    }
    let body = r#"{"id":"p","name":"p","priceWei":"0","timeoutSecs":18446744073709551616,"runtime":{"type":"process","command":"true"}}"#;
    let (status, text) = post_text(client, "/api/agents", body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert_has(&text, "timeoutSecs");
}

#[test]
fn a_config_file_keeps_the_numbers_of_docker_settings_and_input_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[[agents]]\nid = \"d\"\nname = \"D\"\nprice_wei = \"1\"\n\
         input_schema = {{ maximum = 9223372036854775807, minimum = -0.5 }}\n\
         runtime = {{ type = \"docker\", image = \"{TEST_IMAGE}\", cpu_quota = 0.25, memory_bytes = 268435456, pids_limit = 64 }}\n"
    );
    let path = common::write_config(dir.path(), &toml);
    let config = Config::load(Some(&path), Overrides::default()).unwrap();
    let agent = &config.agents[0];
    let Runtime::Docker {
        cpu_quota,
        memory_bytes,
        pids_limit,
        ..
    } = agent.runtime
    else {
        panic!("a docker agent");
    };
    assert_eq!(
        (cpu_quota, memory_bytes, pids_limit),
        (0.25, 268_435_456, 64)
    );
    assert_eq!(
        agent.input_schema.as_ref().unwrap().to_string(),
        r#"{"maximum":9223372036854775807,"minimum":-0.5}"#
    );
}

#[tokio::test]
async fn a_since_beyond_any_seq_is_refused_never_wrapped() {
    let server = TestServer::start(vec![sh_agent("echo", "1", ECHO)]).await;
    let client = &server.client;
    let id = submit(client, "echo", WEI).await;
    finished(client, &id).await;
    for since in ["18446744073709551615", "9223372036854775808"] {
        let path = format!("/api/executions/{id}/events?since={since}");
        let (status, text) = get_text(client, &path).await;
        // Far beyond the last seq: refused as such, not wrapped round to "everything".
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        assert_has(&text, "since_beyond_end");
    }
    for since in ["18446744073709551616", "1e30", "-1", "1.5"] {
        let path = format!("/api/executions/{id}/events?since={since}");
        let (status, text) = get_text(client, &path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{since}: {text}");
        assert_has(&text, "invalid_query");
    }

    let url = format!("{}/ws", server.url.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    for since in ["18446744073709551616", "1e30", "-1", "1.5", "\"5\""] {
        let message = format!(r#"{{"type":"subscribe","executionId":"{id}","since":{since}}}"#);
        ws.send(Message::text(message)).await.unwrap();
        let reply = loop {
            match tokio::time::timeout(WAIT, ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
            {
                Message::Text(text) => break text.to_string(),
                _ => continue,
            }
        };
        assert_has(&reply, r#""type":"error""#);
        assert_has(&reply, r#""code":"bad_request""#);
        assert_has(&reply, "an integer from 0 to 18446744073709551615");
    }
}
