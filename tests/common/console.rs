//! What the console's tests read from its pages, through the hooks of its contract
//! (CONSOLE-CONTRACT: `#status[data-status]`, `#log[data-line-count]`, `div.line[data-seq]`, ...),
//! and what they compare it with: the same execution through the REST API.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Client;
use super::browser::Browser;

/// One log line as a page or the API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// `stdout`, `stderr`, `system` or `otlp`.
    pub stream: String,
    pub text: String,
}

/// Every line the execution page holds, read by scrolling `#log` through its whole height
/// (only the visible window is in the DOM), by seq; and the seqs rendered twice in one view.
pub struct Shown {
    pub lines: BTreeMap<u64, Line>,
    pub doubled: Vec<u64>,
}

/// Scrolls `#log` from top to bottom, a window at a time, waiting two frames after each
/// scroll for the rows to be drawn, and collects the rows.
const COLLECT: &str = r#"
const log = document.getElementById('log');
const frames = (n) => new Promise(done => {
  const step = () => (n-- > 0 ? requestAnimationFrame(step) : done());
  step();
});
const streams = ['stdout', 'stderr', 'system', 'otlp'];
const lines = {};
const doubled = [];
log.scrollTop = 0;
await frames(2);
for (;;) {
  const here = new Set();
  for (const row of log.querySelectorAll('div.line[data-seq]')) {
    const seq = row.dataset.seq;
    if (here.has(seq)) doubled.push(Number(seq));
    here.add(seq);
    const stream = streams.find(s => row.classList.contains(s)) || '';
    lines[seq] = [stream, row.textContent];
  }
  if (log.scrollTop + log.clientHeight >= log.scrollHeight - 1) break;
  const before = log.scrollTop;
  log.scrollTop = before + Math.max(1, log.clientHeight - 40);
  await frames(2);
  if (log.scrollTop === before) break;
}
return { lines, doubled };
"#;

/// Reads every line the page holds (see `Shown`).
pub async fn shown_lines(browser: &Browser) -> Shown {
    let v = browser
        .eval(&format!("return (async () => {{ {COLLECT} }})();"))
        .await;
    let lines = v["lines"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(seq, pair)| {
            let line = Line {
                stream: pair[0].as_str().unwrap().to_owned(),
                text: pair[1].as_str().unwrap().to_owned(),
            };
            (seq.parse().unwrap(), line)
        })
        .collect();
    let doubled = serde_json::from_value(v["doubled"].clone()).unwrap();
    Shown { lines, doubled }
}

/// The rows in `#log`'s DOM now (the visible window), by seq.
pub async fn visible_lines(browser: &Browser) -> BTreeMap<u64, String> {
    let v = browser
        .eval(
            "return [...document.querySelectorAll('#log div.line[data-seq]')] \
             .map(r => [Number(r.dataset.seq), r.textContent]);",
        )
        .await;
    serde_json::from_value::<Vec<(u64, String)>>(v)
        .unwrap()
        .into_iter()
        .collect()
}

/// The execution's log lines by seq, from the REST API.
pub async fn api_lines(client: &Client, id: &str) -> BTreeMap<u64, Line> {
    client
        .all_events(id)
        .await
        .iter()
        .filter(|e| e["type"] == "log")
        .map(|e| {
            let line = Line {
                stream: e["data"]["stream"].as_str().unwrap().to_owned(),
                text: e["data"]["log"].as_str().unwrap().to_owned(),
            };
            (e["seq"].as_u64().unwrap(), line)
        })
        .collect()
}

/// Asserts the page shows exactly the execution's lines: each seq once, none missing, none
/// extra, each with its stream and its text (a row may hold more than the text: its anchor).
pub async fn assert_shows_every_line_once(browser: &Browser, client: &Client, id: &str) {
    let expected = api_lines(client, id).await;
    let count = line_count(browser).await;
    let shown = shown_lines(browser).await;
    assert!(
        shown.doubled.is_empty(),
        "rows drawn twice: {:?}",
        shown.doubled
    );
    let missing: Vec<u64> = expected
        .keys()
        .filter(|s| !shown.lines.contains_key(s))
        .copied()
        .collect();
    let extra: Vec<u64> = shown
        .lines
        .keys()
        .filter(|s| !expected.contains_key(s))
        .copied()
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "the page's lines differ from the API's: missing seqs {missing:?}, extra seqs {extra:?}"
    );
    assert_eq!(count, expected.len() as u64, "#log[data-line-count]");
    for (seq, line) in &expected {
        let row = &shown.lines[seq];
        assert!(
            row.text.contains(&line.text),
            "line {seq}: the row says {:?}, the API {:?}",
            row.text,
            line.text
        );
        assert_eq!(row.stream, line.stream, "the stream of line {seq}");
    }
}

/// `#status[data-status]`, if the page shows it yet.
pub async fn status(browser: &Browser) -> Option<String> {
    browser.attr("#status", "data-status").await
}

/// Waits until `#status[data-status]` is `wanted`.
pub async fn wait_status(browser: &Browser, wanted: &str) {
    browser
        .wait_until(
            &format!("#status[data-status={wanted}]"),
            &format!("document.querySelector('#status[data-status={wanted}]')"),
        )
        .await;
}

/// `#log[data-line-count]` (0 before the page draws its log).
pub async fn line_count(browser: &Browser) -> u64 {
    browser
        .attr("#log", "data-line-count")
        .await
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Waits until `#log[data-line-count]` is `n`.
pub async fn wait_line_count(browser: &Browser, n: u64, within: Duration) {
    browser
        .wait_until_within(
            &format!("{n} lines in #log"),
            &format!("document.querySelector('#log[data-line-count=\"{n}\"]')"),
            within,
        )
        .await;
}

/// Opens an execution's page and waits until it shows the execution.
pub async fn open_execution(browser: &Browser, url: &str, id: &str) {
    browser.open(&format!("{url}/executions/{id}")).await;
    browser.wait_for("#status[data-status]").await;
    browser.wait_for("#log").await;
}

/// Waits until the execution page's live stream is open.
pub async fn wait_live(browser: &Browser) {
    browser
        .wait_until(
            "the live stream open",
            "document.querySelector('#connection[data-state=open]')",
        )
        .await;
}

/// Asserts every request of every page the browser visited (HTTP and WebSocket), and every
/// resource the current page loaded, went to the runtime at `url` and nowhere else.
pub async fn assert_only_the_runtime_was_asked(browser: &Browser, url: &str) {
    let own = super::browser::origin(url).unwrap();
    let own_ws = own.replacen("http", "ws", 1);
    for u in browser.requested_urls().await {
        let Some(origin) = super::browser::origin(&u) else {
            assert!(u.starts_with("data:"), "a request to {u}");
            continue;
        };
        assert!(
            origin == own || origin == own_ws,
            "the page asked {u}, not only {own}"
        );
    }
    for origin in browser.requested_origins().await {
        assert_eq!(origin, own, "the page loaded something from {origin}");
    }
}

/// Asserts the browser logged no Content-Security-Policy or Trusted Types violation and no
/// uncaught error since the last look at its console.
pub async fn assert_no_violation_logged(browser: &Browser) {
    let bad: Vec<(String, String)> = browser
        .console_messages()
        .await
        .into_iter()
        // Chromium's wording: "security ..." for what the policy blocked (CSP, Trusted Types),
        // "... Content Security Policy ..." for blocked loads, "Uncaught ..." for exceptions.
        .filter(|(_, m)| {
            m.starts_with("security ")
                || m.contains("Content Security Policy")
                || m.contains("requires 'Trusted")
                || m.contains("Uncaught")
        })
        .collect();
    assert!(bad.is_empty(), "the console logged: {bad:#?}");
}
