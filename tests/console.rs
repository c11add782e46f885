//! The web console in a real headless Chromium, against real servers: an execution's page
//! follows its log live and survives a server restart without losing or repeating a line, shows
//! what agents write as text only, holds 200,000 lines and still answers, asks for the key when
//! the runtime has keys and keeps it out of every URL, and talks to no host but the runtime.
//! (The other pages: `console_pages.rs`.)

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use agentnexus::config::ApiKey;
use common::browser::{Browser, DEADLINE};
use common::console::*;
use common::tools::{Tool, have};
use common::{ServerProcess, TestServer, free_port, sh_agent};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// An agent that waits until `go` exists, then writes `lines` lines `tick <i>`, one every
/// `pause` seconds: the test opens the page first and watches the lines arrive.
fn gated_ticker(
    id: &str,
    go: &std::path::Path,
    lines: u32,
    pause: &str,
) -> agentnexus::config::ConfigAgent {
    sh_agent(
        id,
        "1",
        &format!(
            "{}; i=0; while [ $i -lt {lines} ]; do i=$((i+1)); echo \"tick $i\"; sleep {pause}; done",
            gate(go)
        ),
    )
}

/// A shell line that waits until `release(go)`.
fn gate(go: &std::path::Path) -> String {
    format!("while [ ! -e '{}' ]; do sleep 0.02; done", go.display())
}

fn release(go: &std::path::Path) {
    std::fs::write(go, b"go").unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_execution_shows_its_lines_as_they_are_written_and_ends_with_its_status() {
    if !have(Tool::Chromium) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let server = TestServer::start(vec![gated_ticker("ticker", &go, 100, "0.03")]).await;
    let id = server.client.submit("ticker", json!({})).await;
    server.client.wait_status(&id, "RUNNING", WAIT).await;
    let browser = Browser::start().await;
    open_execution(&browser, &server.url, &id).await;
    wait_live(&browser).await;
    // Its peaks are in the header while it runs, from the resource samples (the record has
    // them only at the end).
    browser
        .wait_until(
            "a peak memory shown while it runs",
            "document.querySelector('#peak-memory').textContent.endsWith('B') \
             && document.querySelector('#status').dataset.status === 'RUNNING'",
        )
        .await;
    release(&go);

    // The count of lines held, seen while the execution runs, until its end.
    let mut counts_while_running = BTreeSet::new();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let status = status(&browser).await;
        let count = line_count(&browser).await;
        if status.as_deref() != Some("RUNNING") {
            break;
        }
        if counts_while_running.insert(count) && counts_while_running.len() == 3 {
            browser.screenshot("live-running").await;
        }
        assert!(
            Instant::now() < deadline,
            "still RUNNING after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let growing: Vec<&u64> = counts_while_running.iter().filter(|c| **c > 0).collect();
    assert!(
        growing.len() >= 2,
        "the count of lines should grow while it runs, saw only {counts_while_running:?}"
    );
    wait_status(&browser, "COMPLETED").await;
    server.client.wait_terminal(&id, WAIT).await;
    wait_line_count(&browser, 100, WAIT).await;
    browser.screenshot("live-completed").await;
    assert_shows_every_line_once(&browser, &server.client, &id).await;
    assert_only_the_runtime_was_asked(&browser, &server.url).await;
}

/// The real binary on a fixed port (so a restarted server is where the page left it).
fn restartable_config(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    let path = dir.join("agentnexus.toml");
    let text = format!(
        r#"bind = "127.0.0.1:{port}"
data_dir = "{}"
sample_interval_ms = 100
kill_grace_ms = 500
shutdown_grace_secs = 2

[[agents]]
id = "ticker"
name = "Ticker"
price_wei = "1"
runtime = {{ type = "process", command = "sh", args = ["-c", "i=0; while true; do i=$((i+1)); echo \"tick $i\"; sleep 0.02; done"] }}
"#,
        dir.join("data").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_server_restart_the_page_reconnects_and_shows_every_line_exactly_once() {
    if !have(Tool::Chromium) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = restartable_config(dir.path(), free_port());
    let mut server = ServerProcess::spawn(&config);
    let id = server.client().submit("ticker", json!({})).await;
    let browser = Browser::start().await;
    open_execution(&browser, &server.url, &id).await;
    browser
        .wait_until(
            "some lines before the crash",
            "Number(document.querySelector('#log')?.dataset.lineCount) >= 20",
        )
        .await;
    browser.screenshot("restart-before").await;
    // Set on this document: still there at the end means the page was never reloaded.
    browser.eval("window.sameDocument = true;").await;

    server.kill9();
    browser
        .wait_until(
            "the page to notice the connection is gone",
            "document.querySelector('#connection:not([data-state=open])')",
        )
        .await;
    browser.screenshot("restart-server-down").await;
    let server = ServerProcess::spawn(&config);
    let client = server.client();
    // The crashed runtime's execution ends as FAILED (runtime_restarted) after the restart.
    let after = client.wait_terminal(&id, WAIT).await;
    assert_eq!(after["status"], "FAILED", "{after}");

    wait_status(&browser, "FAILED").await;
    let lines = api_lines(&client, &id).await.len() as u64;
    wait_line_count(&browser, lines, WAIT).await;
    browser.screenshot("restart-after").await;
    assert_eq!(
        browser.eval("return window.sameDocument === true;").await,
        true,
        "the page reloaded instead of reconnecting"
    );
    assert_shows_every_line_once(&browser, &client, &id).await;
    assert_only_the_runtime_was_asked(&browser, &server.url).await;
}

/// Markup an agent might print; each must be shown as these very characters.
const HOSTILE: [&str; 3] = [
    r#"<img src=x onerror="document.title='pwned'">"#,
    r#"<script>document.title='pwned'</script>"#,
    r#"<img src=x onerror="document.title='pwned-by-stderr'">"#,
];

#[tokio::test(flavor = "multi_thread")]
async fn markup_in_a_log_line_is_shown_as_text_and_never_runs() {
    if !have(Tool::Chromium) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let script = format!(
        "{}\ncat <<'EOF'\n{}\n{}\nEOF\ncat >&2 <<'EOF'\n{}\nEOF\nsleep 0.2",
        gate(&go),
        HOSTILE[0],
        HOSTILE[1],
        HOSTILE[2]
    );
    let server = TestServer::start(vec![sh_agent("hostile", "1", &script)]).await;
    let id = server.client.submit("hostile", json!({})).await;
    let browser = Browser::start().await;
    open_execution(&browser, &server.url, &id).await;
    let title = browser.eval("return document.title;").await;
    // Once live, once from history (a reload reads what is stored).
    release(&go);
    for view in ["live", "reloaded"] {
        if view == "reloaded" {
            browser.client.refresh().await.unwrap();
            browser.wait_for("#status[data-status]").await;
        }
        wait_status(&browser, "COMPLETED").await;
        wait_line_count(&browser, 3, WAIT).await;
        browser.screenshot(&format!("hostile-{view}")).await;
        let shown = shown_lines(&browser).await;
        let texts: Vec<&str> = shown.lines.values().map(|l| l.text.as_str()).collect();
        for raw in HOSTILE {
            assert!(
                texts.iter().any(|t| t.contains(raw)),
                "{view}: no line shows {raw:?} as text; lines: {texts:?}"
            );
        }
        let elements = browser
            .eval("return document.querySelectorAll('#log img, #log script, img[src=x]').length;")
            .await;
        assert_eq!(elements, 0, "{view}: markup from the log became elements");
        assert_eq!(
            browser.eval("return document.title;").await,
            title,
            "{view}"
        );
    }
    assert_no_violation_logged(&browser).await;
    assert_only_the_runtime_was_asked(&browser, &server.url).await;
}

const BIG: u64 = 200_000;
const BIG_WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn a_200000_line_execution_loads_scrolls_and_searches_without_freezing_the_page() {
    if !have(Tool::Chromium) {
        return;
    }
    let script = format!("seq -f 'line-%06g.' 1 {BIG}");
    let server = TestServer::start(vec![sh_agent("big", "1", &script)]).await;
    let client = &server.client;
    let id = client.submit("big", json!({})).await;
    client.wait_terminal(&id, BIG_WAIT).await;
    let expected = api_lines(client, &id).await;
    assert_eq!(expected.len() as u64, BIG);
    let seqs: Vec<u64> = expected.keys().copied().collect();

    let browser = Browser::start().await;
    open_execution(&browser, &server.url, &id).await;
    wait_line_count(&browser, BIG, BIG_WAIT).await;
    browser.screenshot("big-loaded").await;

    // The middle of the scroll height shows the lines around the middle one.
    browser
        .eval(
            "const log = document.getElementById('log'); \
             log.scrollTop = (log.scrollHeight - log.clientHeight) / 2; \
             return new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)));",
        )
        .await;
    let visible = visible_lines(&browser).await;
    browser.screenshot("big-middle").await;
    assert!(!visible.is_empty(), "no line drawn in the middle");
    for (seq, text) in &visible {
        let rank = seqs
            .binary_search(seq)
            .unwrap_or_else(|_| panic!("seq {seq} is no log line"));
        assert!(
            rank.abs_diff(seqs.len() / 2) < 1_000,
            "line {seq} (number {}) drawn in the middle of {BIG}",
            rank + 1
        );
        assert!(
            text.contains(&expected[seq].text),
            "line {seq} shows {text:?}"
        );
    }

    let needle = "line-150000.";
    browser.type_into("#log-search", needle).await;
    // Searching 200,000 lines on a loaded machine: a generous deadline, but no freeze after.
    browser
        .wait_until_within(
            "one match",
            "document.querySelector('#log[data-match-count=\"1\"]')",
            BIG_WAIT,
        )
        .await;
    browser
        .wait_until_within(
            "the match drawn",
            "document.querySelectorAll('#log div.line[data-seq]').length === 1",
            BIG_WAIT,
        )
        .await;
    browser.screenshot("big-search").await;
    let found = visible_lines(&browser).await;
    let (seq, text) = found.iter().next().unwrap();
    assert!(text.contains(needle), "the match shows {text:?}");
    assert_eq!(expected[seq].text, needle);
    // Still answering: a script returns.
    assert_eq!(browser.eval("return 6 * 7;").await, 42);
    assert_only_the_runtime_was_asked(&browser, &server.url).await;
}

const ALICE: &str = "alice-key-0123456789abcdef";
const BOB: &str = "bob-key-0123456789abcdef";

#[tokio::test(flavor = "multi_thread")]
async fn with_keys_the_page_asks_for_one_shows_its_users_executions_only_and_keeps_it_out_of_urls()
{
    if !have(Tool::Chromium) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let agents = vec![
        gated_ticker("ticker", &go, 50, "0.02"),
        sh_agent("echo", "1", "cat"),
    ];
    let server = TestServer::start_with(agents, |c| {
        c.api_keys = [("alice", ALICE), ("bob", BOB)]
            .into_iter()
            .map(|(user, key)| ApiKey {
                key: key.into(),
                user: user.into(),
                admin: false,
            })
            .collect();
    })
    .await;
    let (alice, bob) = (
        server.client.with_token(ALICE),
        server.client.with_token(BOB),
    );
    let theirs = bob.submit("echo", json!({})).await;
    bob.wait_terminal(&theirs, WAIT).await;
    let mine = alice.submit("ticker", json!({})).await;

    let browser = Browser::start().await;
    browser.open(&format!("{}/", server.url)).await;
    browser
        .wait_for("form#key-form input#key-input[type=password]")
        .await;
    browser.screenshot("keys-asked").await;
    // Typed as a user does, ending with Enter (WebDriver's key U+E007).
    browser
        .type_into("#key-input", &format!("{ALICE}\u{E007}"))
        .await;
    browser
        .wait_for(&format!("tr[data-execution-id='{mine}']"))
        .await;
    browser.screenshot("keys-list").await;
    let rows = browser
        .eval("return [...document.querySelectorAll('tr[data-execution-id]')].map(r => r.dataset.executionId);")
        .await;
    assert_eq!(rows, json!([mine]), "alice sees her execution only");
    assert_eq!(browser.stored_key().await.as_deref(), Some(ALICE));
    assert_eq!(browser.eval("return localStorage.length;").await, 0);

    // Her execution streams live with the key.
    open_execution(&browser, &server.url, &mine).await;
    wait_live(&browser).await;
    release(&go);
    wait_status(&browser, "COMPLETED").await;
    wait_line_count(&browser, 50, WAIT).await;
    browser.screenshot("keys-execution").await;
    assert_shows_every_line_once(&browser, &alice, &mine).await;

    browser
        .open(&format!("{}/executions/{theirs}", server.url))
        .await;
    browser
        .wait_until(
            "the page to say the execution is not found",
            "/not found/i.test(document.body.textContent)",
        )
        .await;
    browser.screenshot("keys-not-theirs").await;
    let status = browser.attr("#status", "data-status").await;
    assert!(
        status.as_deref().unwrap_or("").is_empty(),
        "bob's execution shows a status: {status:?}"
    );

    let urls = browser.requested_urls().await;
    assert!(
        urls.iter().any(|u| u.starts_with("ws:")),
        "no WebSocket was opened: {urls:#?}"
    );
    let hex_key = hex::encode(ALICE);
    for url in &urls {
        assert!(
            !url.contains(ALICE) && !url.contains(&hex_key),
            "the key is in the URL {url}"
        );
    }
    assert_only_the_runtime_was_asked(&browser, &server.url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_asks_no_other_host_and_breaks_none_of_its_policy() {
    if !have(Tool::Chromium) {
        return;
    }
    let server = TestServer::start(vec![sh_agent("echo", "1", "echo hello; cat")]).await;
    let id = server.client.submit("echo", json!({"x": 1})).await;
    server.client.wait_terminal(&id, WAIT).await;
    let page = reqwest::Client::new()
        .get(format!("{}/", server.url))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }

    let browser = Browser::start().await;
    for (path, page) in [
        ("/".to_owned(), "executions"),
        (format!("/executions/{id}"), "execution"),
        ("/agents".to_owned(), "agents"),
        ("/status".to_owned(), "status"),
    ] {
        browser.open(&format!("{}{path}", server.url)).await;
        browser
            .wait_until(
                &format!("the {page} page"),
                &format!("document.body.dataset.page === '{page}'"),
            )
            .await;
        // Give what the page loads and draws a moment to complete: its main element.
        let ready = match page {
            "executions" => format!("tr[data-execution-id='{id}']"),
            "execution" => "#status[data-status=COMPLETED]".to_owned(),
            "agents" => "tr[data-agent-id=echo]".to_owned(),
            _ => "#health[data-status]".to_owned(),
        };
        browser.wait_for(&ready).await;
        browser.screenshot(&format!("policy-{page}")).await;
        assert_no_violation_logged(&browser).await;
        assert_only_the_runtime_was_asked(&browser, &server.url).await;
    }
}
