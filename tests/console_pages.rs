//! The console's other pages in a real headless Chromium: the executions list updates itself
//! and filters, the Run form submits only what the agent accepts and shows the server's answer,
//! the Cancel button cancels, and the status page shows readiness and its checks.

mod common;

use std::time::Duration;

use common::browser::Browser;
use common::console::*;
use common::tools::{Tool, have};
use common::{TestServer, sh_agent};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// Runs until killed.
const FOREVER: &str = "echo started; exec sleep 600";

#[tokio::test(flavor = "multi_thread")]
async fn the_executions_list_shows_new_executions_without_a_reload_and_filters_by_status() {
    if !have(Tool::Chromium) {
        return;
    }
    let server = TestServer::start(vec![
        sh_agent("quick", "1", "echo done"),
        sh_agent("forever", "1", FOREVER),
    ])
    .await;
    let client = &server.client;
    let browser = Browser::start().await;
    browser.open(&format!("{}/", server.url)).await;
    browser.wait_for("table#executions").await;
    // Set on this document: still there means the page was not reloaded.
    browser.eval("window.sameDocument = true;").await;

    let done = client.submit("quick", json!({})).await;
    client.wait_terminal(&done, WAIT).await;
    browser
        .wait_for(&format!(
            "tr[data-execution-id='{done}'][data-status=COMPLETED] a[href='/executions/{done}']"
        ))
        .await;
    let running = client.submit("forever", json!({})).await;
    client.wait_status(&running, "RUNNING", WAIT).await;
    browser
        .wait_for(&format!(
            "tr[data-execution-id='{running}'][data-status=RUNNING]"
        ))
        .await;
    browser.screenshot("list-live").await;
    assert_eq!(
        browser.eval("return window.sameDocument === true;").await,
        true
    );

    for (status, shown, hidden) in [("RUNNING", &running, &done), ("COMPLETED", &done, &running)] {
        browser.select("#filter-status", status).await;
        browser
            .wait_until(
                &format!("only {status} rows"),
                &format!(
                    "(() => {{ const rows = [...document.querySelectorAll('tr[data-execution-id]')]; \
                     return rows.length > 0 && rows.every(r => r.dataset.status === '{status}') \
                     && rows.some(r => r.dataset.executionId === '{shown}') \
                     && !rows.some(r => r.dataset.executionId === '{hidden}'); }})()"
                ),
            )
            .await;
        browser.screenshot(&format!("list-filter-{status}")).await;
    }
    assert_only_the_runtime_was_asked(&browser, &server.url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_run_form_submits_only_valid_input_shows_the_servers_error_and_opens_the_new_execution()
{
    if !have(Tool::Chromium) {
        return;
    }
    let mut strict = sh_agent("strict", "1", "cat");
    strict.input_schema = Some(json!({
        "type": "object",
        "properties": { "n": { "type": "integer" } },
        "required": ["n"]
    }));
    let server = TestServer::start(vec![strict, sh_agent("other", "1", "cat")]).await;
    let client = &server.client;
    let browser = Browser::start().await;
    browser.open(&format!("{}/agents", server.url)).await;
    browser
        .wait_for("table#agents tr[data-agent-id=strict]")
        .await;
    browser.select("#run-agent", "strict").await;
    browser
        .wait_until(
            "the schema shown",
            "/integer/.test(document.querySelector('#run-schema')?.textContent)",
        )
        .await;
    browser.screenshot("run-form").await;
    let executions = || async {
        let (_, body) = client.get("/api/executions").await;
        body["executions"].as_array().unwrap().len()
    };

    // Not JSON: the page says why and sends nothing.
    browser.type_into("#run-input", "{\"n\": ").await;
    browser.click("#run-submit").await;
    browser
        .wait_until(
            "a syntax error shown",
            "document.querySelector('#run-error')?.textContent.trim()",
        )
        .await;
    browser.screenshot("run-invalid-json").await;
    assert_eq!(executions().await, 0, "invalid JSON was submitted");

    // JSON the schema rejects: the server's error, as it says it.
    let (status, refusal) = client
        .post(
            "/api/executions",
            json!({"agentId": "strict", "input": {"n": "three"}}),
        )
        .await;
    assert!(status.is_client_error(), "{status} {refusal}");
    let said = format!(
        "{}: {}",
        refusal["error"]["code"].as_str().unwrap(),
        refusal["error"]["message"].as_str().unwrap()
    );
    browser.type_into("#run-input", "{\"n\": \"three\"}").await;
    browser.click("#run-submit").await;
    browser
        .wait_until(
            "the server's error shown",
            &format!(
                "document.querySelector('#run-error')?.textContent.includes({})",
                json!(said)
            ),
        )
        .await;
    browser.screenshot("run-rejected").await;
    assert_eq!(executions().await, 0);
    assert_eq!(browser.eval("return location.pathname;").await, "/agents");

    browser.type_into("#run-input", "{\"n\": 3}").await;
    browser.click("#run-submit").await;
    let path = browser
        .wait_until(
            "the new execution's page",
            "location.pathname.startsWith('/executions/') && location.pathname",
        )
        .await;
    let id = path
        .as_str()
        .unwrap()
        .trim_start_matches("/executions/")
        .to_owned();
    let execution = client.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["agentId"], "strict");
    assert_eq!(execution["input"], json!({"n": 3}));
    wait_status(&browser, "COMPLETED").await;
    browser.screenshot("run-submitted").await;
    assert_eq!(executions().await, 1);
    assert_only_the_runtime_was_asked(&browser, &server.url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cancel_button_cancels_a_running_execution() {
    if !have(Tool::Chromium) {
        return;
    }
    let server = TestServer::start(vec![sh_agent("forever", "1", FOREVER)]).await;
    let id = server.client.submit("forever", json!({})).await;
    server.client.wait_status(&id, "RUNNING", WAIT).await;
    let browser = Browser::start().await;
    open_execution(&browser, &server.url, &id).await;
    wait_status(&browser, "RUNNING").await;
    browser.screenshot("cancel-running").await;
    browser.click("button#cancel").await;
    wait_status(&browser, "CANCELLED").await;
    let execution = server.client.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "CANCELLED");
    browser
        .wait_until(
            "Cancel disabled once final",
            "document.querySelector('button#cancel').disabled",
        )
        .await;
    browser.screenshot("cancel-cancelled").await;
    assert_only_the_runtime_was_asked(&browser, &server.url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_shows_readiness_and_each_check() {
    if !have(Tool::Chromium) {
        return;
    }
    let server = TestServer::start(vec![]).await;
    let browser = Browser::start().await;
    browser.open(&format!("{}/status", server.url)).await;
    browser.wait_for("#health[data-status]").await;
    browser.screenshot("status").await;
    let (_, ready) = server.client.get("/health/ready").await;
    assert_eq!(
        browser.attr("#health", "data-status").await.as_deref(),
        ready["status"].as_str()
    );
    let checks = ready["checks"].as_object().unwrap();
    assert!(!checks.is_empty());
    for (name, check) in checks {
        let selector = format!("[data-check='{name}']");
        browser.wait_for(&selector).await;
        assert_eq!(
            browser.attr(&selector, "data-status").await.as_deref(),
            check["status"].as_str(),
            "check {name}"
        );
    }
    assert_only_the_runtime_was_asked(&browser, &server.url).await;
}
