//! Test support shared by the metrics and monitoring-stack tests: a real Prometheus server, a
//! known mix of executions to measure, and a known LLM usage reported by agents' telemetry.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentnexus::domain::{BudgetLimit, TokenCounts};
use agentnexus::metrics::Metrics;
use agentnexus::telemetry::Counted;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{Client, free_port, sh_agent};

const WAIT: Duration = Duration::from_secs(60);

/// Agents for a known mix of outcomes; `hold` is for executions left running.
pub fn mix_agents() -> Vec<agentnexus::config::ConfigAgent> {
    vec![
        sh_agent("ok", "3", "echo '{\"fine\": true}'"),
        sh_agent("slow", "7", "sleep 1.2"),
        sh_agent("bad", "5", "exit 1"),
        sh_agent("long", "11", "sleep 30"),
        sh_agent("hold", "13", "sleep 120"),
    ]
}

/// 6 ok, 2 slow (1.2 s), 3 bad and 1 cancelled execution; returns when all have ended.
pub async fn run_mix(client: &Client) {
    let mut ids = Vec::new();
    for (agent, n) in [("ok", 6), ("slow", 2), ("bad", 3)] {
        for _ in 0..n {
            ids.push(client.submit(agent, json!({})).await);
        }
    }
    let long = client.submit("long", json!({})).await;
    client.wait_status(&long, "RUNNING", WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = client
        .post(&format!("/api/executions/{long}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    for id in &ids {
        client.wait_terminal(id, WAIT).await;
    }
}

/// Counts in the GenAI series, as the span intake does, what the telemetry of the mix's agents
/// could report: `ok` calls gpt-4o (priced; 1.5 s) and a tool (0.2 s); `bad` calls a model
/// missing from the price table (4 s) and one of its executions is stopped by its cost budget;
/// 3 spans are stored, 1 dropped and 1 attribute value cut. Called twice, every counter grows.
pub fn report_llm_usage(metrics: &Metrics) {
    let genai = &metrics.genai;
    let llm = |model: &str, priced_as: Option<&str>, tokens, cost: Option<&str>, secs| Counted {
        model: model.to_owned(),
        priced_as: priced_as.map(str::to_owned),
        tokens,
        cost_usd: cost.map(|c| c.parse().unwrap()),
        llm_call: true,
        tool_call: false,
        operation: "chat".to_owned(),
        duration_secs: secs,
    };
    let priced = TokenCounts {
        input_tokens: 1000,
        output_tokens: 500,
        cache_read_tokens: 200,
        cache_creation_tokens: 0,
        reasoning_tokens: 100,
    };
    let unpriced = TokenCounts {
        input_tokens: 300,
        output_tokens: 50,
        ..TokenCounts::default()
    };
    let tool = Counted {
        model: "unknown".to_owned(),
        priced_as: None,
        tokens: TokenCounts::default(),
        cost_usd: None,
        llm_call: false,
        tool_call: true,
        operation: "execute_tool".to_owned(),
        duration_secs: 0.2,
    };
    genai.counted(
        "ok",
        &llm(
            "gpt-4o-2024-08-06",
            Some("gpt-4o"),
            priced,
            Some("0.0075"),
            1.5,
        ),
    );
    genai.counted("ok", &tool);
    genai.counted("bad", &llm("in-house-llm", None, unpriced, None, 4.0));
    genai.budget_exceeded("bad", BudgetLimit::MaxCostUsd);
    genai.spans(3, 1);
    genai.attributes_truncated(1);
}

/// Checks a panel of the "Agents' LLM usage" row against what `report_llm_usage` reported
/// (twice): `results` are the panel's queries' results, in order.
pub fn expect_llm_usage_panel(title: &str, results: &[Vec<Value>]) {
    let r = &results[0];
    match title {
        "LLM Cost per Agent" | "Unpriced LLM Calls" => {
            let per_agent = by_label(r, "agent_id");
            // Only `ok` calls a priced model; only `bad` one that is not.
            let payer = if title == "LLM Cost per Agent" {
                "ok"
            } else {
                "bad"
            };
            assert_eq!(names(&per_agent), [payer], "{title}: {per_agent:?}");
            assert!(per_agent[payer] > 0.0, "{title}: {per_agent:?}");
        }
        "Tokens per Model" => expect_tokens(r),
        "LLM Latency (p50/p95)" => {
            // One call per model, in the buckets (1, 2.5] and (2.5, 5]; the 0.2 s tool call
            // (model `other`) is not an LLM call and must not pull `other` down.
            let [p50, p95] = [0, 1].map(|i| by_label(&results[i], "model"));
            for (got, want) in [(p50, [1.75, 3.75]), (p95, [2.425, 4.875])] {
                assert_eq!(names(&got), ["gpt-4o", "other"], "{title}: {got:?}");
                assert!((got["gpt-4o"] - want[0]).abs() < 1e-9, "{title}: {got:?}");
                assert!((got["other"] - want[1]).abs() < 1e-9, "{title}: {got:?}");
            }
        }
        "LLM and Tool Calls" => {
            let [llm, tools] = [0, 1].map(|i| by_label(&results[i], "agent_id"));
            assert_eq!(names(&llm), ["bad", "ok"], "{title}: {llm:?}");
            assert_eq!(names(&tools), ["ok"], "{title}: {tools:?}");
            assert!(
                llm.values().chain(tools.values()).all(|v| *v > 0.0),
                "{title}"
            );
        }
        "Budget Stops" => {
            assert_eq!(r.len(), 1, "{title}: {r:?}");
            assert_eq!(r[0]["metric"]["agent_id"], "bad");
            assert_eq!(r[0]["metric"]["budget"], "maxCostUsd");
            assert!(sample(&r[0]) > 0.0, "{title}: {r:?}");
        }
        "Spans" => {
            let [ingested, dropped, truncated] = [0, 1, 2].map(|i| single(&results[i], title));
            assert!(
                ingested > dropped && dropped > 0.0,
                "{title}: {ingested} {dropped}"
            );
            assert!(truncated > 0.0, "{title}: {truncated}");
        }
        other => panic!("panel \"{other}\" has no expected value in this test: add one"),
    }
}

/// The tokens by model and type that `report_llm_usage` reported.
fn expect_tokens(r: &[Value]) {
    let tokens: BTreeMap<String, f64> = r
        .iter()
        .map(|s| {
            let m = &s["metric"];
            (
                format!(
                    "{} {}",
                    m["model"].as_str().unwrap(),
                    m["type"].as_str().unwrap()
                ),
                sample(s),
            )
        })
        .collect();
    assert_eq!(
        names(&tokens),
        [
            "gpt-4o cache_read",
            "gpt-4o input",
            "gpt-4o output",
            "gpt-4o reasoning",
            "other input",
            "other output"
        ],
        "Tokens per Model"
    );
    // The parts are counted apart from the whole that includes them (5 times less).
    assert!(
        tokens["gpt-4o input"] > tokens["gpt-4o cache_read"],
        "Tokens per Model: {tokens:?}"
    );
    assert!(
        tokens["gpt-4o output"] > tokens["gpt-4o reasoning"],
        "Tokens per Model: {tokens:?}"
    );
    assert!(tokens["other output"] > 0.0, "Tokens per Model: {tokens:?}");
}

/// name label value → sample value, for a result keyed by one label.
pub fn by_label(result: &[Value], label: &str) -> BTreeMap<String, f64> {
    result
        .iter()
        .map(|s| {
            (
                s["metric"][label].as_str().unwrap_or("").to_owned(),
                sample(s),
            )
        })
        .collect()
}

/// The label values of a `by_label` result, in order.
pub fn names(by_label: &BTreeMap<String, f64>) -> Vec<&str> {
    by_label.keys().map(String::as_str).collect()
}

/// The value of a result that must hold exactly one series.
pub fn single(result: &[Value], what: &str) -> f64 {
    assert_eq!(result.len(), 1, "{what}: {result:?}");
    sample(&result[0])
}

/// A real Prometheus scraping its targets every second, with `rule_files` loaded.
pub struct Prometheus {
    child: Child,
    url: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(target: &str, rule_files: &[&Path]) -> Prometheus {
        Prometheus::start_all(&[target], rule_files)
    }

    /// Scraping each of `targets` (the replicas of a cluster) as one job.
    pub fn start_all(targets: &[&str], rule_files: &[&Path]) -> Prometheus {
        let target = targets.join("', '");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{}]\nscrape_configs:\n  - job_name: agentnexus\n    static_configs:\n      - targets: ['{target}']\n",
                rule_files.iter().map(|f| format!("'{}'", f.display())).collect::<Vec<_>>().join(", ")
            ),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts (callers check `tools::have(Tool::Prometheus)` first)");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    pub async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let body: Value = self
            .http
            .get(format!("{}/api/v1/{path}", self.url))
            .query(query)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["status"], "success", "{path} {query:?}: {body}");
        body["data"].clone()
    }

    pub async fn query(&self, promql: &str) -> Vec<Value> {
        let data = self.api("query", &[("query", promql)]).await;
        data["result"].as_array().unwrap().clone()
    }

    /// The value of a query that must return exactly one series.
    pub async fn scalar(&self, promql: &str) -> f64 {
        let result = self.query(promql).await;
        assert_eq!(result.len(), 1, "{promql}: {result:?}");
        sample(&result[0])
    }

    pub async fn value(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql).await;
        (result.len() == 1).then(|| sample(&result[0]))
    }

    pub async fn wait_for(&self, promql: &str, value: f64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let ready = self
                .http
                .get(format!("{}/-/ready", self.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready && self.value(promql).await == Some(value) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never saw {promql} = {value}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of one series of a query result.
pub fn sample(series: &Value) -> f64 {
    match series["value"][1].as_str().unwrap() {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        v => v.parse().unwrap(),
    }
}

/// (name, sorted labels) → value for every sample line of the text format.
pub fn samples(text: &str) -> BTreeMap<(String, BTreeMap<String, String>), f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (head, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match head.split_once('{') {
            None => (head.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let labels = rest
                    .trim_end_matches('}')
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once("=\"").unwrap();
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels)
            }
        };
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap(),
        };
        out.insert((name, labels), value);
    }
    out
}
