//! The monitoring stack in `deploy/` checked with the real tools: `promtool` (config, rules and
//! the rules' unit tests), `amtool`, and a real Prometheus scraping the real runtime with the
//! shipped alert rules loaded and every query of the shipped Grafana dashboard evaluated against
//! it. (The dashboard's model: `dashboard.rs`; compose, Kubernetes and the image: `deployment.rs`.)
//!
//! YAML is read through `python3 -c 'import yaml'` (PyYAML). Each test first checks the tools it
//! needs (`common::tools`): a missing one skips it, or fails it under `AGENTNEXUS_REQUIRE_TOOLS`;
//! `scripts/test` installs them all.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::TestServer;
use common::deploy::{dashboard, deploy, panels_by_row, run, yaml};
use common::prometheus::{
    Prometheus, by_label, expect_llm_usage_panel, mix_agents, report_llm_usage, run_mix, sample,
    single,
};
use common::tools::{Tool, have};
use reqwest::StatusCode;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// Runs promtool (the caller has checked it is there) in `deploy/prometheus`; it must succeed.
fn promtool(args: &[&str]) {
    let (ok, out) = run("promtool", args, Some(&deploy("prometheus")));
    assert!(ok, "promtool {}: {out}", args.join(" "));
    assert!(
        out.contains("SUCCESS"),
        "promtool {}: {out}",
        args.join(" ")
    );
}

// ---------------------------------------------------------------------------------------------
// Prometheus config, rules and Alertmanager config

#[test]
fn promtool_accepts_the_config_and_the_rules() {
    if !have(Tool::Promtool) {
        return;
    }
    promtool(&["check", "config", "prometheus.yml"]);
    promtool(&["check", "rules", "alerts.yml"]);
}

#[test]
fn every_alert_has_passing_unit_tests_that_fire_on_a_bad_series_only() {
    if !(have(Tool::Promtool) && have(Tool::PyYaml)) {
        return;
    }
    promtool(&["test", "rules", "alerts_test.yml"]);

    let rules = yaml("prometheus/alerts.yml");
    let tests = yaml("prometheus/alerts_test.yml");
    // A series is told apart by the labels among these that its firing alerts carry (by
    // `instance` and `execution_id` when they carry none, as the cluster-wide alerts).
    let identity_keys = |alerts: &[Value]| -> Vec<&str> {
        let carried: Vec<&str> = ["instance", "execution_id", "agent_id"]
            .into_iter()
            .filter(|k| alerts.iter().any(|a| a["exp_labels"].get(k).is_some()))
            .collect();
        if carried.is_empty() {
            vec!["instance", "execution_id"]
        } else {
            carried
        }
    };
    let identity = |labels: &Value, keys: &[&str]| -> String {
        keys.iter()
            .map(|k| labels[k].as_str().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("/")
    };
    let series_identity = |series: &str, keys: &[&str]| -> String {
        let label = |k: &str| {
            series
                .split(&format!("{k}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("")
        };
        keys.iter().map(|k| label(k)).collect::<Vec<_>>().join("/")
    };
    let mut alerts = BTreeSet::new();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["alert"]
                .as_str()
                .expect("only alerting rules")
                .to_owned();
            // Every alert waits, is graded and explains itself.
            assert!(rule["for"].is_string(), "{name}: no `for`");
            assert!(
                matches!(
                    rule["labels"]["severity"].as_str(),
                    Some("critical" | "warning" | "info")
                ),
                "{name}: severity"
            );
            for key in ["summary", "description"] {
                assert!(
                    rule["annotations"][key]
                        .as_str()
                        .is_some_and(|s| !s.is_empty()),
                    "{name}: annotation {key}"
                );
            }
            // Counters only through windowed functions, never as lifetime totals.
            let expr = rule["expr"].as_str().unwrap();
            if expr.contains("_total") {
                assert!(
                    expr.contains("rate(") || expr.contains("increase("),
                    "{name}: a counter without rate()/increase(): {expr}"
                );
            }
            assert!(alerts.insert(name.clone()), "{name} defined twice");
        }
    }
    assert!(alerts.len() >= 10, "{alerts:?}");
    // The spec's recommendations, and the runtime being down, by name.
    for wanted in [
        "AgentNexusHighFailureRate",
        "AgentNexusSlowExecutions",
        "AgentNexusRuntimeMemoryHigh",
        "AgentNexusRuntimeCpuHigh",
        "AgentNexusExecutionCpuHigh",
        "AgentNexusDockerDown",
        "AgentNexusDatabaseDown",
        "AgentNexusDown",
        "AgentNexusSlowConsumerStorm",
        "AgentNexusAgentCostRateHigh",
        "AgentNexusBudgetStops",
        "AgentNexusLLMCallsUnpriced",
        "AgentNexusSpansDropped",
    ] {
        assert!(alerts.contains(wanted), "no alert {wanted}");
    }

    let mut fires = BTreeSet::new();
    let mut silent_before = BTreeSet::new();
    for test in tests["tests"].as_array().unwrap() {
        let series = test["input_series"].as_array().unwrap();
        for case in test["alert_rule_test"].as_array().unwrap() {
            let name = case["alertname"].as_str().unwrap().to_owned();
            let expected = case["exp_alerts"].as_array().cloned().unwrap_or_default();
            if expected.is_empty() {
                silent_before.insert(name);
                continue;
            }
            let keys = identity_keys(&expected);
            let inputs: BTreeSet<String> = series
                .iter()
                .map(|s| series_identity(s["series"].as_str().unwrap(), &keys))
                .collect();
            let firing: BTreeSet<String> = expected
                .iter()
                .map(|a| identity(&a["exp_labels"], &keys))
                .collect();
            // At least one input series (a healthy one) must be absent from the firing list,
            // which promtool checks exhaustively.
            assert!(
                inputs.difference(&firing).next().is_some(),
                "{name}: the firing test has no healthy series that must stay silent"
            );
            fires.insert(name);
        }
    }
    assert_eq!(fires, alerts, "alerts without a firing unit test");
    assert_eq!(
        silent_before, alerts,
        "alerts without a test that they are silent before `for` has passed"
    );
}

#[test]
fn prometheus_config_matches_the_spec_and_the_compose_services() {
    if !have(Tool::PyYaml) {
        return;
    }
    let config = yaml("prometheus/prometheus.yml");
    assert_eq!(config["global"]["scrape_interval"], "15s");
    assert_eq!(config["global"]["evaluation_interval"], "15s");
    assert_eq!(config["rule_files"], json!(["alerts.yml"]));
    let jobs = config["scrape_configs"].as_array().unwrap();
    let runtime = jobs.iter().find(|j| j["job_name"] == "agentnexus").unwrap();
    assert_eq!(runtime["scrape_interval"], "10s");
    assert_eq!(runtime["metrics_path"], "/metrics");
    let compose = yaml("docker-compose.yml");
    let services = &compose["services"];
    // Scrape and alerting targets are compose services on their real ports.
    assert_eq!(
        runtime["static_configs"][0]["targets"],
        json!(["agentnexus:3001"])
    );
    assert!(
        services["agentnexus"]["ports"]
            .as_array()
            .unwrap()
            .contains(&json!("3001:3001"))
    );
    assert_eq!(
        config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"],
        json!(["alertmanager:9093"])
    );
    assert!(services["alertmanager"].is_object());
    // The rules file is mounted beside the config, where `rule_files` finds it.
    let prometheus = &services["prometheus"];
    let volumes: Vec<&str> = prometheus["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(volumes.contains(&"./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro"));
    assert!(volumes.contains(&"./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro"));
    let command: Vec<&str> = prometheus["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(command.contains(&"--config.file=/etc/prometheus/prometheus.yml"));
    assert!(
        command.contains(&"--storage.tsdb.retention.time=15d"),
        "{command:?}"
    );
    assert!(command.contains(&"--query.timeout=60s"), "{command:?}");
}

#[test]
fn amtool_accepts_the_alertmanager_config() {
    if !have(Tool::Amtool) {
        return;
    }
    let (ok, out) = run(
        "amtool",
        &[
            "check-config",
            deploy("alertmanager/alertmanager.yml").to_str().unwrap(),
        ],
        None,
    );
    assert!(ok && out.contains("SUCCESS"), "amtool: {out}");
}

// ---------------------------------------------------------------------------------------------
// Every dashboard query against a real Prometheus scraping the real runtime

/// A panel's query with Grafana's variables as the dashboard would send them.
fn substitute(expr: &str, agent: &str) -> String {
    let out = expr
        .replace("$__rate_interval", "1m")
        .replace("$__range", "10m")
        .replace("$job", "agentnexus")
        .replace("$agent", agent);
    assert!(!out.contains('$'), "an unknown variable in {expr}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_the_expected_data_from_real_prometheus() {
    if !have(Tool::Prometheus) {
        return;
    }
    // Three slots: the mix runs through them, then three `hold` executions fill them and a
    // fourth waits in the queue while the dashboard is read.
    let server = TestServer::start_with(mix_agents(), |c| c.max_concurrent_executions = 3).await;
    let client = &server.client;
    // A readiness check sets the database health gauge.
    let (status, _) = client.get("/health/ready").await;
    assert_eq!(status, StatusCode::OK);
    let alerts = deploy("prometheus/alerts.yml");
    let prometheus = Prometheus::start(server.url.trim_start_matches("http://"), &[&alerts]);
    prometheus.wait_for("up{job=\"agentnexus\"}", 1.0).await;
    // Agents' telemetry, counted as the span intake counts it: once now and once after the mix,
    // so that every GenAI counter grows between scrapes.
    let metrics = server.server.as_ref().unwrap().runtime().metrics().clone();
    report_llm_usage(&metrics);
    prometheus
        .wait_for("sum(agentnexus_spans_ingested_total)", 3.0)
        .await;

    run_mix(client).await;
    let mut holds = Vec::new();
    for _ in 0..4 {
        holds.push(client.submit("hold", json!({})).await);
    }
    prometheus
        .wait_for("sum(agentnexus_execution_status_total)", 12.0)
        .await;
    prometheus
        .wait_for("sum(agentnexus_execution_queue_depth)", 1.0)
        .await;
    prometheus
        .wait_for("count(agentnexus_container_memory_bytes)", 3.0)
        .await;
    let mut running = BTreeSet::new();
    for id in &holds {
        if client.execution(id).await["status"] == "RUNNING" {
            running.insert(id.clone());
        }
    }
    assert_eq!(running.len(), 3);
    report_llm_usage(&metrics);
    prometheus
        .wait_for("sum(agentnexus_spans_ingested_total)", 6.0)
        .await;
    // Two more scrapes, so that rates see the final values.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let d = dashboard();

    // The template variables' queries (Grafana's label_values()).
    let jobs = prometheus
        .api(
            "label/job/values",
            &[("match[]", "agentnexus_runtime_workers")],
        )
        .await;
    assert_eq!(jobs, json!(["agentnexus"]));
    let agents = prometheus
        .api(
            "label/agent_id/values",
            &[(
                "match[]",
                "agentnexus_executions_total{job=~\"agentnexus\"}",
            )],
        )
        .await;
    assert_eq!(agents, json!(["bad", "hold", "long", "ok", "slow"]));

    let mut checked = BTreeSet::new();
    for (row, panel) in panels_by_row(&d) {
        let title = panel["title"].as_str().unwrap().to_owned();
        if row == "Cluster" {
            // Series of replicas sharing PostgreSQL (and of NATS): a server alone has none.
            // tests/cluster_metrics.rs reads these panels from Prometheus scraping a cluster.
            for target in panel["targets"].as_array().unwrap() {
                let expr = substitute(target["expr"].as_str().unwrap(), ".*");
                let result = prometheus.query(&expr).await;
                assert!(result.is_empty(), "panel \"{title}\": {expr}: {result:?}");
            }
            checked.insert(title);
            continue;
        }
        let mut results = Vec::new();
        for target in panel["targets"].as_array().unwrap() {
            let expr = substitute(target["expr"].as_str().unwrap(), ".*");
            let result = prometheus.query(&expr).await;
            assert!(
                !result.is_empty(),
                "panel \"{title}\" shows no data: its query returned nothing: {expr}"
            );
            results.push(result);
        }
        if row == "Agents' LLM usage" {
            expect_llm_usage_panel(&title, &results);
            checked.insert(title);
            continue;
        }
        let r = &results[0];
        match title.as_str() {
            "Total Executions" => assert_eq!(single(r, &title), 16.0),
            "Success Rate" => {
                let v = single(r, &title);
                assert!((v - 800.0 / 12.0).abs() < 1e-6, "{title}: {v}");
            }
            "Average Duration" => {
                let v = single(r, &title);
                assert!(v > 0.2 && v < 0.6, "{title}: {v}");
            }
            "Active Connections" => assert_eq!(single(r, &title), 0.0),
            "Executions per Minute" => {
                let per_agent = by_label(r, "agent_name");
                assert!(per_agent["Agent ok"] > 0.0, "{title}: {per_agent:?}");
                assert!(per_agent.values().sum::<f64>() > 0.0);
            }
            "Duration Percentiles" => {
                let [p50, p95, p99] = [0, 1, 2].map(|i| single(&results[i], &title));
                assert!(p50 <= 0.5, "{title}: p50 {p50}");
                assert!(p95 > 1.0 && p95 <= 2.5, "{title}: p95 {p95}");
                assert!(p99 >= p95 && p99 <= 2.5, "{title}: p99 {p99}");
            }
            "Status Breakdown" => {
                let statuses = by_label(r, "status");
                let happened: BTreeSet<&str> = statuses
                    .iter()
                    .filter(|(_, v)| **v > 0.0)
                    .map(|(k, _)| k.as_str())
                    .collect();
                assert_eq!(
                    happened,
                    BTreeSet::from(["CANCELLED", "COMPLETED", "FAILED"]),
                    "{title}: {statuses:?}"
                );
                // increase() extrapolates every series by the same factor: the ratios are exact.
                let total: f64 = statuses.values().sum();
                assert!((statuses["COMPLETED"] / total - 8.0 / 12.0).abs() < 1e-9);
                assert!((statuses["FAILED"] / total - 3.0 / 12.0).abs() < 1e-9);
                assert!((statuses["CANCELLED"] / total - 1.0 / 12.0).abs() < 1e-9);
            }
            "Top Agents" => {
                let mut rows: Vec<(String, f64)> = by_label(r, "agent_name").into_iter().collect();
                rows.sort_by(|a, b| b.1.total_cmp(&a.1));
                let order: Vec<&str> = rows.iter().map(|(n, _)| n.as_str()).collect();
                assert_eq!(
                    order,
                    [
                        "Agent ok",
                        "Agent hold",
                        "Agent bad",
                        "Agent slow",
                        "Agent long"
                    ],
                    "{title}: {rows:?}"
                );
            }
            "Total Revenue" => assert_eq!(single(r, &title), 32.0),
            "Container Memory" | "Container CPU" => {
                let ids: BTreeSet<String> = r
                    .iter()
                    .map(|s| s["metric"]["execution_id"].as_str().unwrap().to_owned())
                    .collect();
                assert_eq!(ids, running, "{title}: the running executions");
                for s in r {
                    assert_eq!(s["metric"]["agent_id"], "hold");
                    let v = sample(s);
                    if title == "Container Memory" {
                        assert!(v > 0.0, "{title}: {v}");
                    } else {
                        assert!(v >= 0.0 && v.is_finite(), "{title}: {v}");
                    }
                }
            }
            "Docker Health" => {
                let v = single(r, &title);
                assert!(v == 0.0 || v == 1.0, "{title}: {v}");
            }
            "Database Health" => assert_eq!(single(r, &title), 1.0),
            "Runtime Memory" => {
                let v = single(r, &title);
                assert!(v > 1e6, "{title}: {v}");
            }
            "Scheduling Lag" => {
                for (i, result) in results.iter().enumerate() {
                    let v = single(result, &title);
                    assert!((0.0..1.0).contains(&v), "{title} target {i}: {v}");
                }
            }
            "Queue Depth" => assert_eq!(single(r, &title), 1.0),
            "Running Executions" => {
                let per_agent = by_label(r, "agent_name");
                assert_eq!(per_agent["Agent hold"], 3.0, "{title}: {per_agent:?}");
                assert_eq!(
                    per_agent.values().sum::<f64>(),
                    3.0,
                    "{title}: {per_agent:?}"
                );
            }
            "Slow Consumer Disconnects" => assert_eq!(single(r, &title), 0.0),
            "HTTP Latency (p95)" => {
                let submit = r
                    .iter()
                    .find(|s| {
                        s["metric"]["route"] == "/api/executions" && s["metric"]["method"] == "POST"
                    })
                    .unwrap_or_else(|| panic!("{title}: no POST /api/executions: {r:?}"));
                let v = sample(submit);
                assert!(v > 0.0 && v <= 10.0, "{title}: {v}");
            }
            "HTTP Requests" => {
                let statuses = by_label(r, "status");
                assert!(
                    statuses.get("202").is_some_and(|v| *v > 0.0),
                    "{title}: {statuses:?}"
                );
                assert!(
                    statuses.get("200").is_some_and(|v| *v > 0.0),
                    "{title}: {statuses:?}"
                );
            }
            "Log Lines" => {
                let [ingested, truncated, dropped] = [0, 1, 2].map(|i| single(&results[i], &title));
                assert!(ingested > 0.0, "{title}: {ingested}");
                assert_eq!((truncated, dropped), (0.0, 0.0), "{title}");
            }
            "WebSocket Messages" => assert_eq!(single(r, &title), 0.0),
            other => panic!("panel \"{other}\" has no expected value in this test: add one"),
        }
        checked.insert(title);
    }
    assert!(checked.len() >= 14, "{checked:?}");

    // The agent filter narrows the panels to the chosen agent.
    let expr = |title: &str, agent: &str| {
        let panels = d["panels"].as_array().unwrap();
        let panel = panels.iter().find(|p| p["title"] == title).unwrap();
        substitute(panel["targets"][0]["expr"].as_str().unwrap(), agent)
    };
    let total = prometheus.query(&expr("Total Executions", "ok")).await;
    assert_eq!(single(&total, "filtered"), 6.0);
    let unpriced = prometheus.query(&expr("Unpriced LLM Calls", "ok")).await;
    assert!(unpriced.is_empty(), "filtered: {unpriced:?}");

    // The shipped rules load and evaluate without error against the real metrics, the
    // failure-rate alert sees the mix's 25% failures (pending: its `for` is 5 minutes), and the
    // GenAI alerts the reported usage calls for (`bad`'s budget stop and unpriced calls, the
    // dropped span) are active; the cost rate is far under its threshold.
    let deadline = Instant::now() + WAIT;
    loop {
        let groups = prometheus.api("rules", &[]).await["groups"].clone();
        let rules: Vec<Value> = groups
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().clone())
            .collect();
        assert!(rules.len() >= 10, "{groups}");
        for rule in &rules {
            assert_ne!(
                rule["health"], "err",
                "rule {} fails: {}",
                rule["name"], rule["lastError"]
            );
        }
        let active: BTreeMap<String, String> = prometheus.api("alerts", &[]).await["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap().to_owned(),
                    a["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let evaluated = rules.iter().all(|r| r["health"] == "ok");
        let mut expected: BTreeSet<String> = [
            "AgentNexusHighFailureRate",
            "AgentNexusBudgetStops",
            "AgentNexusLLMCallsUnpriced",
            "AgentNexusSpansDropped",
        ]
        .map(str::to_owned)
        .into();
        if evaluated && expected.iter().all(|a| active.contains_key(a)) {
            let docker_down = prometheus.value("agentnexus_docker_healthy").await == Some(0.0);
            if docker_down {
                expected.insert("AgentNexusDockerDown".to_owned());
            }
            let names: BTreeSet<String> = active.keys().cloned().collect();
            assert_eq!(names, expected, "active alerts: {active:?}");
            assert_eq!(active["AgentNexusHighFailureRate"], "pending");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the expected alerts never became active: {active:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let mut server = server;
    server.stop().await;
}
