//! The execution page's log and side panels in a real headless Chromium: the span waterfall
//! nests an agent's spans under the runtime's root span, ANSI colours are drawn (and garbage
//! escapes stay harmless), `#seq-N` links scroll to and highlight their line, scrolling up pauses
//! following while lines keep coming, the stream filter shows one stream, and the resources chart
//! and status timeline are drawn from their events. (The rest: `console.rs`, `console_pages.rs`.)

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::browser::Browser;
use common::console::*;
use common::otlp::{PROTOBUF, chat_span, server_with, span, string, traces};
use common::tools::{Tool, have};
use common::{TestServer, sh_agent};
use opentelemetry_proto::tonic::trace::v1::Status;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// Waits two animation frames: what a scroll or a click changed is drawn by then.
const FRAMES: &str =
    "return new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)));";

/// Whether the element `arguments[0]` lies inside the visible part of `#log`.
const INSIDE_LOG: &str = "const e = document.querySelector(arguments[0]); \
     if (!e) return false; \
     const log = document.getElementById('log'); \
     const b = log.getBoundingClientRect(); \
     const r = e.getBoundingClientRect(); \
     return r.top >= b.top - 1 && r.bottom <= b.top + log.clientHeight + 1;";

async fn inside_log(browser: &Browser, selector: &str) -> bool {
    browser.eval_with(INSIDE_LOG, vec![json!(selector)]).await == json!(true)
}

/// The seq of the first line whose row shows in `#log` (rows above it are drawn, not seen).
async fn first_visible_seq(browser: &Browser) -> u64 {
    browser
        .eval(
            "const log = document.getElementById('log'); \
             const top = log.getBoundingClientRect().top; \
             const row = [...log.querySelectorAll('div.line[data-seq]')] \
               .find(r => r.getBoundingClientRect().bottom > top + 1); \
             return row ? Number(row.dataset.seq) : -1;",
        )
        .await
        .as_u64()
        .expect("a line shows in #log")
}

fn span_id(id: u64) -> String {
    format!("{id:016x}")
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn the_waterfall_nests_the_agents_spans_under_the_runtimes_root_span_and_marks_the_failed_one()
 {
    if !have(Tool::Chromium) {
        return;
    }
    let (server, agents) = server_with(|_| {}).await;
    let (id, t) = agents.start(&server.client, None).await;
    let trace = t.trace_id().to_owned();

    // Timed now, as an SDK would, so they sit inside the root span's time range.
    let t0 = now_nanos();
    let ms = 1_000_000;
    let mut invoke = span(&trace, 0xa1, None, "invoke_agent planner");
    invoke.attributes = vec![string("gen_ai.operation.name", "invoke_agent")];
    (invoke.start_time_unix_nano, invoke.end_time_unix_nano) = (t0, t0 + 300 * ms);
    let mut first = chat_span(&trace, 0xa2, "gpt-4o-mini", 120, 30);
    first.parent_span_id = 0xa1u64.to_be_bytes().to_vec();
    (first.start_time_unix_nano, first.end_time_unix_nano) = (t0 + 10 * ms, t0 + 100 * ms);
    let mut second = chat_span(&trace, 0xa3, "llama-3.1-8b", 450, 0);
    second.parent_span_id = 0xa1u64.to_be_bytes().to_vec();
    (second.start_time_unix_nano, second.end_time_unix_nano) = (t0 + 120 * ms, t0 + 250 * ms);
    second.status = Some(Status {
        code: 2,
        message: "rate limited".into(),
    });
    let (status, _) = t
        .export(PROTOBUF, traces(vec![invoke, first, second]))
        .await;
    assert!(status.is_success(), "{status}");

    let browser = Browser::start().await;
    open_execution(&browser, &server.url, &id).await;
    browser
        .wait_until(
            "the agent's three spans in #spans",
            "document.querySelectorAll('#spans [data-span-id]').length === 3",
        )
        .await;
    browser
        .eval("document.getElementById('spans').scrollIntoView({block: 'center'});")
        .await;
    browser.screenshot("spans-running").await;

    // At the end the runtime's root span arrives and the agent's spans hang from it.
    t.finish();
    wait_status(&browser, "COMPLETED").await;
    browser
        .wait_until(
            "the root span in #spans",
            "document.querySelectorAll('#spans [data-span-id]').length === 4",
        )
        .await;
    browser
        .eval("document.getElementById('spans').scrollIntoView({block: 'center'});")
        .await;
    browser.eval(FRAMES).await;
    browser.screenshot("spans-completed").await;
    let rows = browser
        .eval(
            "return [...document.querySelectorAll('#spans [data-span-id]')].map(r => ({ \
               id: r.dataset.spanId, \
               indent: parseFloat(getComputedStyle(r.querySelector('.span-name')).paddingLeft), \
               attrs: r.querySelector('.span-attrs')?.textContent ?? '', \
               failed: r.querySelector('.span-bar').classList.contains('failed'), \
               bar: getComputedStyle(r.querySelector('.span-bar')).backgroundColor, \
               width: r.querySelector('.span-bar').getBoundingClientRect().width, \
               title: r.title }));",
        )
        .await;
    let rows = rows.as_array().unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let root = t.root_span_id();
    assert_eq!(
        ids,
        [root, &span_id(0xa1), &span_id(0xa2), &span_id(0xa3)],
        "depth first: the root, the agent's span, its two calls by start"
    );
    let indent = |i: usize| rows[i]["indent"].as_f64().unwrap();
    assert!(
        indent(0) < indent(1) && indent(1) < indent(2),
        "each level is indented under its parent: {rows:#?}"
    );
    assert_eq!(
        indent(2),
        indent(3),
        "the two calls are siblings: {rows:#?}"
    );

    let attrs = |i: usize| rows[i]["attrs"].as_str().unwrap();
    for (i, model, tokens) in [(2, "gpt-4o-mini", 120), (3, "llama-3.1-8b", 450)] {
        assert!(
            attrs(i).contains(&format!("request.model={model}"))
                && attrs(i).contains(&format!("usage.input_tokens={tokens}")),
            "row {i} shows its model and tokens: {:?}",
            attrs(i)
        );
    }
    let failed: Vec<bool> = rows.iter().map(|r| r["failed"] == true).collect();
    assert_eq!(failed, [false, false, false, true], "only the failed call");
    assert_eq!(rows[3]["title"], "error: rate limited");
    assert!(
        rows.iter().all(|r| r["width"].as_f64().unwrap() > 0.0),
        "every span draws its bar: {rows:#?}"
    );
    assert_ne!(rows[3]["bar"], rows[2]["bar"], "the failed bar stands out");
    assert_no_violation_logged(&browser).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ansi_colours_are_drawn_without_their_escape_codes_and_garbage_escapes_stay_harmless() {
    if !have(Tool::Chromium) {
        return;
    }
    let script = r#"printf '\033[31mred\033[0m plain \033[1;32mbold green\033[0m\n'
printf 'broken \033[ and \033[38;5m half \033\n'
echo after"#;
    let server = TestServer::start(vec![sh_agent("colours", "1", script)]).await;
    let id = server.client.submit("colours", json!({})).await;
    server.client.wait_terminal(&id, WAIT).await;
    let lines = api_lines(&server.client, &id).await;
    let seq_of = |start: &str| {
        *lines
            .iter()
            .find(|(_, l)| l.text.starts_with(start))
            .unwrap_or_else(|| panic!("no line starting {start:?}: {lines:?}"))
            .0
    };
    let (coloured, broken, after) = (seq_of("\u{1b}[31m"), seq_of("broken"), seq_of("after"));

    let browser = Browser::start().await;
    open_execution(&browser, &server.url, &id).await;
    wait_status(&browser, "COMPLETED").await;
    wait_line_count(&browser, lines.len() as u64, WAIT).await;
    browser.screenshot("ansi").await;

    let row = |seq: u64| format!("#log div.line[data-seq='{seq}'] .text");
    assert_eq!(browser.text(&row(coloured)).await, "red plain bold green");
    let styles = browser
        .eval_with(
            "const text = document.querySelector(arguments[0]); \
             const style = (e) => { const s = getComputedStyle(e); \
               return { colour: s.color, weight: s.fontWeight }; }; \
             return { plain: style(text), \
               parts: [...text.children].map(e => ({ text: e.textContent, ...style(e) })) };",
            vec![json!(row(coloured))],
        )
        .await;
    let plain = &styles["plain"];
    let parts = styles["parts"].as_array().unwrap();
    let part = |text: &str| {
        parts
            .iter()
            .find(|p| p["text"] == text)
            .unwrap_or_else(|| panic!("no element holds {text:?}: {styles:#}"))
    };
    let (red, green) = (part("red"), part("bold green"));
    assert_ne!(red["colour"], plain["colour"], "{styles:#}");
    assert_ne!(green["colour"], plain["colour"], "{styles:#}");
    assert_ne!(red["colour"], green["colour"], "{styles:#}");
    assert!(
        green["weight"].as_str().unwrap().parse::<u32>().unwrap() >= 600,
        "bold: {styles:#}"
    );
    assert!(
        parts.iter().all(|p| p["text"] != " plain "),
        "the plain part is not styled: {styles:#}"
    );

    let garbled = browser.text(&row(broken)).await;
    assert!(
        !garbled.contains('\u{1b}') && garbled.contains("broken") && garbled.contains("half"),
        "the garbled line shows its text without escapes: {garbled:?}"
    );
    // An incomplete colour (`38;5` without its index) changes nothing: no text in the log's
    // own background colour, unreadable.
    let garbled_colours = browser
        .eval_with(
            "return [...document.querySelector(arguments[0]).children] \
               .map(e => getComputedStyle(e).color);",
            vec![json!(row(broken))],
        )
        .await;
    for colour in garbled_colours.as_array().unwrap() {
        assert_eq!(colour, &plain["colour"], "the garbled line is drawn plain");
    }
    assert_eq!(browser.text(&row(after)).await, "after");
    let after_styled = browser
        .eval_with(
            "return document.querySelector(arguments[0]).children.length;",
            vec![json!(row(after))],
        )
        .await;
    assert_eq!(after_styled, 0, "a line's colours end with it");
    assert_no_violation_logged(&browser).await;
}

const MANY: u64 = 5_000;

#[tokio::test(flavor = "multi_thread")]
async fn a_seq_link_opens_at_its_line_highlighted_and_another_line_link_moves_the_highlight() {
    if !have(Tool::Chromium) {
        return;
    }
    let script = format!("seq -f 'line-%g' 1 {MANY}");
    let server = TestServer::start(vec![sh_agent("many", "1", &script)]).await;
    let id = server.client.submit("many", json!({})).await;
    server.client.wait_terminal(&id, WAIT).await;
    let lines = api_lines(&server.client, &id).await;
    let seqs: Vec<u64> = lines.keys().copied().collect();
    let number = seqs
        .iter()
        .position(|s| lines[s].text == "line-3000")
        .unwrap();
    let (k, m) = (seqs[number], seqs[number + 3]);

    let browser = Browser::start().await;
    browser
        .open(&format!("{}/executions/{id}#seq-{k}", server.url))
        .await;
    let target = format!("#log div.line.target[data-seq='{k}']");
    browser.wait_for(&target).await;
    browser.eval(FRAMES).await;
    browser.screenshot("seq-link-opened").await;
    assert!(
        inside_log(&browser, &target).await,
        "line {k} is in the visible part of #log"
    );
    assert_eq!(browser.text(&format!("{target} .text")).await, "line-3000");
    assert_eq!(
        browser
            .eval("return document.querySelectorAll('#log div.line.target').length;")
            .await,
        1
    );

    browser
        .click(&format!("#log div.line[data-seq='{m}'] a.seq"))
        .await;
    browser
        .wait_until(
            &format!("line {m} highlighted"),
            &format!("document.querySelector(\"#log div.line.target[data-seq='{m}']\")"),
        )
        .await;
    browser.eval(FRAMES).await;
    browser.screenshot("seq-link-clicked").await;
    assert_eq!(
        browser.eval("return location.hash;").await,
        json!(format!("#seq-{m}"))
    );
    let targets = browser
        .eval("return [...document.querySelectorAll('#log div.line.target')].map(r => Number(r.dataset.seq));")
        .await;
    assert_eq!(targets, json!([m]), "the highlight moved");
    assert!(
        inside_log(&browser, &format!("#log div.line[data-seq='{m}']")).await,
        "line {m} is in the visible part of #log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn scrolling_up_pauses_following_while_lines_keep_coming_and_follow_goes_back_to_the_end() {
    if !have(Tool::Chromium) {
        return;
    }
    let ticker = "i=0; while true; do i=$((i+1)); echo \"tick $i\"; sleep 0.01; done";
    let server = TestServer::start(vec![sh_agent("ticker", "1", ticker)]).await;
    let id = server.client.submit("ticker", json!({})).await;
    let browser = Browser::start().await;
    open_execution(&browser, &server.url, &id).await;
    browser
        .wait_until(
            "enough lines to scroll",
            "Number(document.querySelector('#log').dataset.lineCount) >= 300",
        )
        .await;
    assert_eq!(
        browser.attr("#follow", "aria-pressed").await.as_deref(),
        Some("true")
    );

    // A wheel turn upwards over the log, as a user scrolls.
    let centre = browser
        .eval(
            "const r = document.getElementById('log').getBoundingClientRect(); \
             return [r.left + r.width / 2, r.top + r.height / 2];",
        )
        .await;
    browser
        .cdp(
            "Input.dispatchMouseEvent",
            json!({"type": "mouseWheel", "x": centre[0], "y": centre[1], "deltaX": 0, "deltaY": -1500}),
        )
        .await;
    browser
        .wait_until(
            "following off",
            "document.querySelector('#follow[aria-pressed=false]')",
        )
        .await;
    browser.eval(FRAMES).await;
    let top = browser
        .eval("return document.getElementById('log').scrollTop;")
        .await;
    let first = first_visible_seq(&browser).await;
    let count = line_count(&browser).await;
    browser
        .wait_until(
            "more lines while paused",
            &format!("Number(document.querySelector('#log').dataset.lineCount) >= {count} + 100"),
        )
        .await;
    browser.eval(FRAMES).await;
    browser.screenshot("follow-paused").await;
    assert_eq!(
        browser
            .eval("return document.getElementById('log').scrollTop;")
            .await,
        top,
        "the scroll position stays put"
    );
    assert_eq!(first_visible_seq(&browser).await, first);
    assert_eq!(
        browser.attr("#follow", "aria-pressed").await.as_deref(),
        Some("false")
    );

    browser.click("#follow").await;
    assert_eq!(
        browser.attr("#follow", "aria-pressed").await.as_deref(),
        Some("true")
    );
    let (status, body) = server
        .client
        .post(&format!("/api/executions/{id}/cancel"), json!({}))
        .await;
    assert!(status.is_success(), "{status} {body}");
    server.client.wait_terminal(&id, WAIT).await;
    let lines = api_lines(&server.client, &id).await;
    let last = *lines.keys().last().unwrap();
    wait_status(&browser, "CANCELLED").await;
    wait_line_count(&browser, lines.len() as u64, WAIT).await;
    // The window (not #log) scrolls, so that the screenshot shows the log's end.
    browser
        .eval("document.getElementById('log').scrollIntoView({block: 'end'});")
        .await;
    browser.eval(FRAMES).await;
    browser.screenshot("follow-resumed").await;
    assert!(
        inside_log(&browser, &format!("#log div.line[data-seq='{last}']")).await,
        "the last line ({last}) shows at the end of #log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stream_filter_shows_only_that_streams_lines_and_clearing_it_shows_all() {
    if !have(Tool::Chromium) {
        return;
    }
    let script = "i=0; while [ $i -lt 40 ]; do i=$((i+1)); echo \"out $i\"; \
                  if [ $((i % 3)) -eq 0 ]; then echo \"err $i\" >&2; fi; done";
    let server = TestServer::start(vec![sh_agent("mixed", "1", script)]).await;
    let id = server.client.submit("mixed", json!({})).await;
    server.client.wait_terminal(&id, WAIT).await;
    let lines = api_lines(&server.client, &id).await;
    let stderr: Vec<u64> = lines
        .iter()
        .filter(|(_, l)| l.stream == "stderr")
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(stderr.len(), 13);

    let browser = Browser::start().await;
    open_execution(&browser, &server.url, &id).await;
    wait_status(&browser, "COMPLETED").await;
    wait_line_count(&browser, lines.len() as u64, WAIT).await;

    browser.select("#log-stream", "stderr").await;
    browser
        .wait_until(
            "the stderr lines counted",
            &format!(
                "document.querySelector('#log[data-match-count=\"{}\"]')",
                stderr.len()
            ),
        )
        .await;
    browser.eval(FRAMES).await;
    browser.screenshot("stream-stderr").await;
    let shown = shown_lines(&browser).await;
    let shown_seqs: Vec<u64> = shown.lines.keys().copied().collect();
    assert_eq!(shown_seqs, stderr, "only the stderr lines, all of them");
    assert!(
        shown.lines.values().all(|l| l.stream == "stderr"),
        "{:?}",
        shown.lines
    );

    browser.select("#log-stream", "").await;
    browser
        .wait_until(
            "no match count",
            "!document.querySelector('#log').hasAttribute('data-match-count')",
        )
        .await;
    browser.screenshot("stream-all").await;
    assert_shows_every_line_once(&browser, &server.client, &id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_resources_chart_draws_each_series_and_the_timeline_lists_the_statuses_in_order() {
    if !have(Tool::Chromium) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    // Busy for a second after the page opens: resource samples come every 100 ms.
    let script = format!(
        "while [ ! -e '{}' ]; do sleep 0.02; done; end=$(($(date +%s) + 2)); \
         while [ $(date +%s) -lt $end ]; do :; done; echo done",
        go.display()
    );
    let server = TestServer::start(vec![sh_agent("busy", "1", &script)]).await;
    let id = server.client.submit("busy", json!({})).await;
    server.client.wait_status(&id, "RUNNING", WAIT).await;
    let browser = Browser::start().await;
    open_execution(&browser, &server.url, &id).await;
    std::fs::write(&go, b"go").unwrap();
    wait_status(&browser, "COMPLETED").await;
    browser
        .wait_until(
            "the final status in the timeline",
            "document.querySelector('#timeline [data-status=COMPLETED]')",
        )
        .await;
    browser.eval(FRAMES).await;
    browser.screenshot("resources-timeline").await;

    let metrics = server
        .client
        .all_events(&id)
        .await
        .iter()
        .filter(|e| e["type"] == "metrics")
        .count();
    assert!(metrics >= 2, "the run sampled its resources: {metrics}");
    let charts = browser
        .eval(
            "const r = document.getElementById('resources'); \
             return { hidden: r.hidden || getComputedStyle(r).display === 'none', \
               series: [...r.querySelectorAll('svg')].map(svg => \
                 [...svg.querySelectorAll('polyline, path')] \
                   .map(p => (p.getAttribute('points') || p.getAttribute('d') || '') \
                     .trim().split(/\\s+/).filter(Boolean).length)) };",
        )
        .await;
    assert_eq!(charts["hidden"], false, "{charts}");
    let series: Vec<Vec<u64>> = serde_json::from_value(charts["series"].clone()).unwrap();
    assert_eq!(
        series.len(),
        2,
        "a chart for CPU and one for memory: {charts}"
    );
    for lines in &series {
        assert!(
            lines.len() == 1 && lines[0] >= 2,
            "each chart draws its series through its points: {charts}"
        );
    }

    let timeline = browser
        .eval("return [...document.querySelectorAll('#timeline [data-status]')].map(e => e.dataset.status);")
        .await;
    assert_eq!(timeline, json!(["PENDING", "RUNNING", "COMPLETED"]));
    let texts: Value = browser
        .eval("return [...document.querySelectorAll('#timeline [data-status]')].map(e => e.textContent);")
        .await;
    for (text, status) in texts
        .as_array()
        .unwrap()
        .iter()
        .zip(["PENDING", "RUNNING", "COMPLETED"])
    {
        assert!(text.as_str().unwrap().contains(status), "{texts}");
    }
    assert_no_violation_logged(&browser).await;
}
