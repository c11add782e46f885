//! The documentation says what the code does: every JSON example in the README and the guides
//! parses, and the error codes they list are exactly the codes the API and the WebSocket
//! protocol can answer with.
//!
//! Which text is JSON, precisely:
//! - a ```` ```json ```` block: one JSON document, or one per line (JSON Lines), each line
//!   optionally followed by a `// comment`;
//! - in a ```` ```bash ```` block: the body of a `curl` command (`-d '…'`, `--data '…'`), the
//!   `--input '…'` of an `agentnexus` command, and a response shown as a comment (a comment
//!   line starting `# {` or `# [`, continued on the comment lines right after it).

mod common;

use std::collections::BTreeSet;

use agentnexus::api::ws::protocol::ErrorCode as WsCode;
use common::TestServer;
use serde_json::Value;

const DOCUMENTS: [&str; 3] = ["README.md", "docs/monitoring.md", "deploy/README.md"];

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// A fenced code block: its language tag, the line of its opening fence, its text.
struct Block {
    lang: String,
    line: usize,
    text: String,
}

fn code_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (n, line) in markdown.lines().enumerate() {
        match (&mut open, line.trim_start().strip_prefix("```")) {
            (None, Some(lang)) => {
                open = Some(Block {
                    lang: lang.trim().to_owned(),
                    line: n + 1,
                    text: String::new(),
                })
            }
            (Some(_), Some(_)) => blocks.push(open.take().unwrap()),
            (Some(block), None) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "an unclosed code block");
    blocks
}

/// A JSON example found in a document: where it is, and its text.
struct Example {
    place: String,
    json: String,
}

/// The JSON examples of one document.
fn json_examples(path: &str) -> Vec<Example> {
    let mut examples = Vec::new();
    for block in code_blocks(&read(path)) {
        let place = format!("{path}, the block at line {}", block.line);
        let found = match block.lang.as_str() {
            "json" => json_block(&block.text),
            "bash" | "sh" => bash_block(&block.text),
            _ => continue,
        };
        examples.extend(found.into_iter().map(|json| Example {
            place: place.clone(),
            json,
        }));
    }
    examples
}

/// A `json` block: one document, else one document per line with an optional `// comment`.
fn json_block(text: &str) -> Vec<String> {
    let one_per_line = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .all(|line| line.starts_with(['{', '[']));
    if serde_json::from_str::<Value>(text).is_ok() || !one_per_line {
        return vec![text.to_owned()];
    }
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            // The first JSON value on the line; what follows it may only be a comment.
            let mut values = serde_json::Deserializer::from_str(line).into_iter::<Value>();
            match values.next() {
                Some(Ok(_)) => {
                    let rest = line[values.byte_offset()..].trim();
                    if rest.is_empty() || rest.starts_with("//") {
                        line[..values.byte_offset()].to_owned()
                    } else {
                        line.to_owned()
                    }
                }
                _ => line.to_owned(),
            }
        })
        .collect()
}

/// The JSON in a shell block: request bodies, `--input` values, and responses in comments.
fn bash_block(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        if let Some(start) = response_comment(lines[i]) {
            let mut json = start.to_owned();
            while i + 1 < lines.len() && lines[i + 1].starts_with('#') {
                i += 1;
                json.push_str(&lines[i][1..]);
            }
            found.push(json);
        }
        i += 1;
    }
    for command in text.replace("\\\n", " ").lines() {
        let command = command.trim_start();
        let flags: &[&str] = if command.starts_with("curl ") {
            &["-d", "--data", "--data-raw"]
        } else if command.starts_with("agentnexus ") {
            &["--input"]
        } else {
            continue;
        };
        for flag in flags {
            found.extend(quoted_after(command, &format!(" {flag} '")));
        }
    }
    found
}

/// The JSON of a response comment line (`# {…` or `# […`).
fn response_comment(line: &str) -> Option<&str> {
    let rest = line.strip_prefix('#')?.trim_start();
    rest.starts_with(['{', '[']).then_some(rest)
}

/// Every single-quoted argument right after `prefix` (which ends with the opening quote).
fn quoted_after(command: &str, prefix: &str) -> Vec<String> {
    command
        .match_indices(prefix)
        .filter_map(|(at, _)| {
            let rest = &command[at + prefix.len()..];
            rest.find('\'').map(|end| rest[..end].to_owned())
        })
        .collect()
}

#[test]
fn every_json_example_in_the_documentation_parses() {
    let mut problems = Vec::new();
    let mut count = 0;
    for path in DOCUMENTS {
        for example in json_examples(path) {
            count += 1;
            if let Err(error) = serde_json::from_str::<Value>(&example.json) {
                problems.push(format!("{}: {error}\n    {}", example.place, example.json));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "invalid JSON:\n{}",
        problems.join("\n")
    );
    // The extraction finds what the documents show: the Docker runtime, the three WebSocket
    // messages, two request bodies, two responses, two CLI inputs.
    assert!(count >= 10, "only {count} JSON examples found");
}

#[test]
fn the_extraction_finds_each_kind_of_example() {
    let bash = "curl -s -X POST x \\\n     -d '{\"a\": 1}'\n# {\"b\":\n#  2}\nagentnexus run e --input '[3]' --wait\ntr -d '=+/'\n";
    assert_eq!(bash_block(bash), ["{\"b\":  2}", "{\"a\": 1}", "[3]"]);
    let lines = "{\"type\": \"ping\"}    // answered\n\n{\"type\": \"x\"} oops\n";
    assert_eq!(
        json_block(lines),
        ["{\"type\": \"ping\"}", "{\"type\": \"x\"} oops"]
    );
}

// ---------------------------------------------------------------------------------------------
// Error codes

/// The backticked words of the list that follows `marker` in `text`, up to the end of its
/// sentence; parenthesised remarks (which quote other things) are left out.
fn listed_after(text: &str, marker: &str) -> BTreeSet<String> {
    let at = text
        .find(marker)
        .unwrap_or_else(|| panic!("no `{marker}` in the document"));
    let mut depth = 0usize;
    let mut kept = String::new();
    for c in text[at + marker.len()..].chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            '.' if depth == 0 => break,
            _ if depth == 0 => kept.push(c),
            _ => {}
        }
    }
    kept.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// Codes named with an HTTP error status anywhere in the text: "403 `forbidden_origin`",
/// "`forbidden_host` (421)". The health report's statuses ("503 `unhealthy`") are no codes.
fn codes_with_a_status(text: &str) -> BTreeSet<String> {
    let parts: Vec<&str> = text.split('`').collect();
    let status = |s: &str| s.len() == 3 && s.starts_with(['4', '5']);
    let status = |s: &str| s.chars().all(|c| c.is_ascii_digit()) && status(s);
    (1..parts.len())
        .step_by(2)
        .filter(|&i| {
            let before = parts[i - 1].trim_end_matches([' ', '*']);
            let after = parts.get(i + 1).copied().unwrap_or_default();
            let after = after.strip_prefix(" (").unwrap_or_default();
            let closed = after
                .get(3..4)
                .is_some_and(|c| matches!(c, ")" | ":" | ","));
            status(before.rsplit([' ', '*', '(']).next().unwrap_or_default())
                || (status(after.get(..3).unwrap_or_default()) && closed)
        })
        .map(|i| parts[i].to_owned())
        .filter(|word| !HEALTH_STATUSES.contains(&word.as_str()))
        .collect()
}

const HEALTH_STATUSES: [&str; 3] = ["healthy", "degraded", "unhealthy"];

/// The codes of the API's `ErrorCode`, as its OpenAPI document lists them.
async fn api_codes() -> BTreeSet<String> {
    let server = TestServer::start(vec![]).await;
    let (_, doc) = server.client.get("/api/openapi.json").await;
    let codes = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("no ErrorCode enum in {}", doc["components"]));
    codes
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect()
}

/// The codes of the WebSocket protocol's `error` messages.
fn ws_codes() -> BTreeSet<String> {
    let all = [
        WsCode::BadRequest,
        WsCode::NotFound,
        WsCode::SinceBeyondEnd,
        WsCode::EndNotStored,
        WsCode::TooManySubscriptions,
        WsCode::RateLimited,
        WsCode::Internal,
    ];
    // Exhaustive on purpose: a new code stops this from compiling until it is listed above.
    for code in all {
        match code {
            WsCode::BadRequest
            | WsCode::NotFound
            | WsCode::SinceBeyondEnd
            | WsCode::EndNotStored
            | WsCode::TooManySubscriptions
            | WsCode::RateLimited
            | WsCode::Internal
            | WsCode::Unknown => {}
        }
    }
    all.iter().map(|c| c.as_str().to_owned()).collect()
}

#[tokio::test]
async fn the_readme_lists_exactly_the_api_error_codes() {
    let documented = listed_after(&read("README.md"), "Error codes:");
    assert_eq!(documented, api_codes().await);
}

#[test]
fn the_readme_lists_exactly_the_websocket_error_codes() {
    let documented = listed_after(&read("README.md"), "with `code` one of");
    assert_eq!(documented, ws_codes());
}

#[tokio::test]
async fn every_code_named_with_a_status_exists() {
    let api = api_codes().await;
    let mut named = 0;
    for path in DOCUMENTS {
        for code in codes_with_a_status(&read(path)) {
            named += 1;
            assert!(api.contains(&code), "{path}: `{code}` is no API error code");
        }
    }
    assert!(named >= 5, "only {named} codes named with a status");
}

#[test]
fn the_list_and_status_readers_read_what_they_should() {
    let text = "Codes: `a_b`, `c` (503: `not_this`), `d` (`/ws`, 503). Then `e`.";
    assert_eq!(
        listed_after(text, "Codes:"),
        BTreeSet::from(["a_b".into(), "c".into(), "d".into()])
    );
    let text = "answer **403 `forbidden_origin`**; `forbidden_host` (421) or `not_a_code` (see)";
    assert_eq!(
        codes_with_a_status(text),
        BTreeSet::from(["forbidden_origin".into(), "forbidden_host".into()])
    );
}
