//! The web console in headless Chromium against the release server on loopback:
//! (a) the bytes of the page and every asset it loads, (b) the first load of an execution's
//! page with an empty HTTP cache (median of 20; Navigation Timing's `loadEventEnd`, and the time
//! until its first log line is drawn), (c) a 5,000 lines/s agent for 10 s followed live: the
//! lines shown at the end against the lines written, and how long after its write the page
//! shows a line (the last one, and percentiles over all), (d) the page of a finished
//! 1,000,000-line execution: how long until it holds every line, how many line elements it has,
//! and a search over all of them.
//!
//! Run: `cargo bench --bench console` (needs chromium and chromedriver).

#[path = "support/ws.rs"]
mod support;

#[allow(dead_code)]
#[path = "../tests/common/browser.rs"]
mod browser;

use std::path::Path;
use std::time::{Duration, Instant};

use browser::Browser;
use serde_json::{Value, json};
use support::*;

const LOADS: usize = 20;
const RATE: u64 = 5_000;
const FLOOD_SECS: u64 = 10;
/// Lines of the execution whose page is loaded in (b).
const PAGE_LINES: u64 = 1_000;
/// Lines of the finished execution whose page is loaded in (d).
const BIG_LINES: u64 = 1_000_000;

/// Installed before any page script runs (DevTools injection, outside the page's CSP): notes
/// when the first log line is drawn and every change of `#log[data-line-count]`.
const OBSERVER: &str = r#"
window.benchCounts = [];
new MutationObserver(() => {
  const log = document.getElementById('log');
  if (!log) return;
  if (window.benchFirstLine === undefined && log.querySelector('div.line[data-seq]')) {
    window.benchFirstLine = performance.now();
  }
  const n = Number(log.dataset.lineCount || 0);
  const last = window.benchCounts[window.benchCounts.length - 1];
  if (!last || last[1] !== n) window.benchCounts.push([performance.timeOrigin + performance.now(), n]);
}).observe(document, { subtree: true, childList: true, attributes: true, attributeFilter: ['data-line-count'] });
"#;

fn main() {
    agent_mode();
    tokio::runtime::Runtime::new().unwrap().block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let flood = agent_command(&go, RATE * FLOOD_SECS, RATE);
    let config = format!(
        "[[agents]]\nid = \"page\"\nname = \"Page\"\nprice_wei = \"1\"\n\
         runtime = {{ type = \"process\", command = \"seq\", args = [\"-f\", \"line %g\", \"{PAGE_LINES}\"] }}\n\
         [[agents]]\nid = \"flood\"\nname = \"Flood\"\nprice_wei = \"1\"\n\
         runtime = {{ type = \"process\", command = {}, args = {} }}\n\
         [[agents]]\nid = \"big\"\nname = \"Big\"\nprice_wei = \"1\"\n\
         runtime = {{ type = \"process\", command = \"seq\", args = [\"-f\", \"line %.0f\", \"{BIG_LINES}\"] }}\n",
        json!(flood[0]),
        json!(flood[1..])
    );
    let (_server, addr) = start_server(dir.path(), &config);
    let url = format!("http://{addr}");
    let page = submit(&addr, "page").await;
    wait_terminal(&url, &page).await;

    let browser = Browser::start().await;
    browser
        .cdp(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({ "source": OBSERVER }),
        )
        .await;
    page_bytes(&browser, &url, &page).await;
    first_loads(&browser, &url, &page).await;
    follow_flood(&browser, &url, &addr, &go).await;
    let big = submit(&addr, "big").await;
    wait_terminal(&url, &big).await;
    big_page(&browser, &url, &big).await;
    browser.close().await;
}

/// (a) What the page and its assets weigh (decoded bytes, as served: nothing is compressed).
async fn page_bytes(browser: &Browser, url: &str, id: &str) {
    browser.open(&format!("{url}/executions/{id}")).await;
    wait_first_line(browser).await;
    let files = browser
        .eval(
            "return performance.getEntriesByType('navigation') \
             .concat(performance.getEntriesByType('resource')) \
             .filter(e => !new URL(e.name).pathname.startsWith('/api/')) \
             .filter(e => !['fetch', 'xmlhttprequest'].includes(e.initiatorType)) \
             .map(e => [new URL(e.name).pathname, e.decodedBodySize]);",
        )
        .await;
    let files: Vec<(String, u64)> = serde_json::from_value(files).unwrap();
    let total: u64 = files.iter().map(|(_, n)| n).sum();
    println!("(a) page + assets: {total} bytes in {} files", files.len());
    for (path, n) in &files {
        println!("      {n:>7}  {path}");
    }
}

/// (b) Loads with an empty HTTP cache, in one warm browser.
async fn first_loads(browser: &Browser, url: &str, id: &str) {
    let (mut load, mut first_line) = (Vec::new(), Vec::new());
    for _ in 0..LOADS {
        browser.open("about:blank").await;
        browser.cdp("Network.clearBrowserCache", json!({})).await;
        browser.open(&format!("{url}/executions/{id}")).await;
        let times = browser
            .wait_until(
                "the page loaded and its first line drawn",
                "(() => { const n = performance.getEntriesByType('navigation')[0]; \
                 return n && n.loadEventEnd > 0 && window.benchFirstLine !== undefined \
                 && [n.loadEventEnd, window.benchFirstLine]; })()",
            )
            .await;
        load.push(times[0].as_f64().unwrap());
        first_line.push(times[1].as_f64().unwrap());
    }
    println!(
        "(b) cold load of /executions/<id> ({PAGE_LINES} lines), median of {LOADS}: \
         loadEventEnd {:.1} ms, first log line drawn {:.1} ms (min {:.1} / max {:.1})",
        median(&mut load),
        median(&mut first_line),
        first_line.iter().cloned().fold(f64::MAX, f64::min),
        first_line.iter().cloned().fold(0.0, f64::max),
    );
}

/// (c) A flood followed live from the start.
async fn follow_flood(browser: &Browser, url: &str, addr: &str, go: &Path) {
    let id = submit(addr, "flood").await;
    browser.open(&format!("{url}/executions/{id}")).await;
    browser
        .wait_until(
            "the live stream open",
            "document.querySelector('#connection[data-state=open]')",
        )
        .await;
    // A plain client following the same execution: the server's share of the lag.
    let reference = tokio::spawn(follow_plainly(addr.to_owned(), id.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::write(go, b"go").unwrap();
    let started = Instant::now();
    wait_terminal(url, &id).await;
    let written = RATE * FLOOD_SECS;
    let lines = log_lines(url, &id).await;
    browser
        .wait_until_within(
            "every line shown",
            &format!(
                "Number(document.querySelector('#log')?.dataset.lineCount) >= {}",
                lines.len()
            ),
            Duration::from_secs(120),
        )
        .await;
    let shown: u64 = browser
        .attr("#log", "data-line-count")
        .await
        .unwrap()
        .parse()
        .unwrap();
    let counts: Vec<(f64, u64)> =
        serde_json::from_value(browser.eval("return window.benchCounts;").await).unwrap();
    // Line k (1-based, in log order) is shown at the first count change reaching k.
    let mut lags = Vec::new();
    let mut at = 0;
    for (k, text) in lines.iter().enumerate() {
        let Some(written_ns) = text.split(' ').next().and_then(|t| t.parse::<u64>().ok()) else {
            continue;
        };
        while at < counts.len() && counts[at].1 < k as u64 + 1 {
            at += 1;
        }
        if let Some((shown_ms, _)) = counts.get(at) {
            lags.push(shown_ms - written_ns as f64 / 1e6);
        }
    }
    let last = *lags.last().unwrap();
    lags.sort_by(f64::total_cmp);
    let pct = |p: f64| lags[((lags.len() - 1) as f64 * p).round() as usize];
    println!(
        "(c) {RATE} lines/s for {FLOOD_SECS} s followed live: written {written}, stored {}, shown {shown}; \
         run {:.1} s",
        lines.len(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "    write-to-shown lag: last line {last:.1} ms; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    let mut reference = reference.await.unwrap();
    let last = *reference.last().unwrap();
    reference.sort_by(f64::total_cmp);
    let pct = |p: f64| reference[((reference.len() - 1) as f64 * p).round() as usize];
    println!(
        "    the same lag for a plain WebSocket client in this process ({} lines): last line {last:.1} ms; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        reference.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
}

/// (d) The page of a finished execution of a million lines.
async fn big_page(browser: &Browser, url: &str, id: &str) {
    let started = Instant::now();
    browser.open(&format!("{url}/executions/{id}")).await;
    browser
        .wait_until_within(
            "every line held",
            &format!("Number(document.querySelector('#log')?.dataset.lineCount) >= {BIG_LINES}"),
            Duration::from_secs(600),
        )
        .await;
    let loaded = started.elapsed().as_secs_f64();
    let rows = browser
        .eval("return document.querySelectorAll('#log div.line').length;")
        .await;
    let searched = Instant::now();
    browser.type_into("#log-search", "line 999999").await;
    browser
        .wait_until_within(
            "the search over every line done",
            "(() => { const d = document.querySelector('#log').dataset; \
             return d.matchCount !== undefined && !('searching' in d) && d.matchCount; })()",
            Duration::from_secs(120),
        )
        .await;
    println!(
        "(d) a finished {BIG_LINES}-line execution: every line held {loaded:.1} s after \
         navigation, {rows} line elements in the page; a search of all of them {:.0} ms \
         (its 150 ms debounce included)",
        searched.elapsed().as_secs_f64() * 1000.0
    );
}

/// Follows `id` over WebSocket until its final status; the write-to-receipt lag of each line
/// (ms).
async fn follow_plainly(addr: String, id: String) -> Vec<f64> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut socket = connect(&addr).await;
    subscribe(&mut socket, &id, 0).await;
    let mut lags = Vec::new();
    while let Some(Ok(message)) = socket.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let now = now_ns();
        let event: Value = serde_json::from_str(&text).unwrap();
        if event["type"] == "log" {
            let written = event["data"]["log"]
                .as_str()
                .unwrap_or("")
                .split(' ')
                .next();
            if let Some(written) = written.and_then(|w| w.parse::<u64>().ok()) {
                lags.push(now.saturating_sub(written) as f64 / 1e6);
            }
        }
        if event["type"] == "status"
            && matches!(
                event["data"]["status"].as_str(),
                Some("COMPLETED" | "FAILED" | "CANCELLED")
            )
        {
            break;
        }
    }
    lags
}

async fn wait_first_line(browser: &Browser) {
    browser
        .wait_until("a log line drawn", "window.benchFirstLine !== undefined")
        .await;
}

async fn wait_terminal(url: &str, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let body: Value = reqwest::get(format!("{url}/api/executions/{id}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if matches!(
            body["status"].as_str(),
            Some("COMPLETED" | "FAILED" | "CANCELLED")
        ) {
            return;
        }
        assert!(Instant::now() < deadline, "{id} never ended: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The execution's log lines in order (every stream), from the REST API.
async fn log_lines(url: &str, id: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut since = 0;
    loop {
        let body: Value = reqwest::get(format!(
            "{url}/api/executions/{id}/events?since={since}&limit=10000"
        ))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        for e in body["events"].as_array().unwrap() {
            if e["type"] == "log" {
                lines.push(e["data"]["log"].as_str().unwrap().to_owned());
            }
        }
        if !body["hasMore"].as_bool().unwrap() {
            return lines;
        }
        since = body["nextSince"].as_u64().unwrap();
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
