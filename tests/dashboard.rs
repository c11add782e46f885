//! The shipped Grafana dashboard and its provisioning: a plain provisionable model with the spec's
//! panels, found where docker-compose mounts it. (Every panel's query is evaluated against a real
//! Prometheus in `monitoring_stack.rs`.)

mod common;

use std::collections::BTreeSet;

use common::deploy::{compose_mount_source, dashboard, deploy, panels_by_row, yaml};
use common::tools::{Tool, have};
use serde_json::Value;

#[test]
fn grafana_provisioning_points_where_compose_mounts_the_files() {
    if !have(Tool::PyYaml) {
        return;
    }
    let compose = yaml("docker-compose.yml");
    let provider = yaml("grafana/provisioning/dashboards/agentnexus.yml");
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    assert_eq!(provider["providers"][0]["type"], "file");
    // The provider's folder is where compose mounts deploy/grafana/dashboards, and the
    // dashboard JSON is in that folder.
    let source = compose_mount_source(&compose, "grafana", path)
        .unwrap_or_else(|| panic!("compose mounts nothing at the provider's path {path}"));
    assert_eq!(source, "./grafana/dashboards");
    assert!(deploy("grafana/dashboards/agentnexus.json").is_file());
    let home =
        compose["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
            .as_str()
            .unwrap();
    assert_eq!(home, format!("{path}/agentnexus.json"));
    // The provisioning folder itself.
    assert_eq!(
        compose_mount_source(&compose, "grafana", "/etc/grafana/provisioning").as_deref(),
        Some("./grafana/provisioning")
    );
    // The datasource is the compose Prometheus.
    let datasources = yaml("grafana/provisioning/datasources/prometheus.yml");
    let ds = &datasources["datasources"][0];
    assert_eq!(ds["type"], "prometheus");
    assert_eq!(ds["url"], "http://prometheus:9090");
    assert!(compose["services"]["prometheus"].is_object());
}

/// The spec's 14 panels, by group (our titles: the Node.js panels are mapped to the runtime's
/// own process and scheduling metrics).
const SPEC_PANELS: [(&str, &[&str]); 5] = [
    (
        "Overview",
        &[
            "Total Executions",
            "Success Rate",
            "Average Duration",
            "Active Connections",
        ],
    ),
    (
        "Performance",
        &["Executions per Minute", "Duration Percentiles"],
    ),
    (
        "Analysis",
        &["Status Breakdown", "Top Agents", "Total Revenue"],
    ),
    ("Resources", &["Container Memory", "Container CPU"]),
    (
        "Health",
        &["Docker Health", "Runtime Memory", "Scheduling Lag"],
    ),
];

#[test]
fn the_dashboard_is_a_plain_provisionable_model_with_the_spec_panels() {
    let d = dashboard();
    assert_eq!(d["uid"], "agentnexus-executions");
    assert!(
        d.get("dashboard").is_none() && d.get("__inputs").is_none(),
        "wrapped for the import API"
    );
    assert!(
        d["id"].is_null(),
        "a provisioned dashboard must not carry a database id"
    );
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);

    // Template variables: the datasource, and an agent filter.
    let vars = d["templating"]["list"].as_array().unwrap();
    let var = |name: &str| vars.iter().find(|v| v["name"] == name).cloned();
    let ds = var("datasource").expect("a datasource variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let agent = var("agent").expect("an agent variable");
    assert_eq!(agent["type"], "query");
    assert_eq!(agent["includeAll"], true);
    for v in vars.iter().filter(|v| v["type"] == "query") {
        assert_eq!(v["datasource"]["uid"], "${datasource}", "{}", v["name"]);
    }

    let all = d["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(String, [u64; 4])> = Vec::new();
    for p in all {
        let title = p["title"].as_str().unwrap().to_owned();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate id: {title}"
        );
        let g = &p["gridPos"];
        let b = ["x", "y", "w", "h"].map(|k| g[k].as_u64().unwrap());
        assert!(
            b[0] + b[2] <= 24 && b[2] > 0 && b[3] > 0,
            "{title}: gridPos {g}"
        );
        for (other, o) in &boxes {
            let overlap = b[0] < o[0] + o[2]
                && o[0] < b[0] + b[2]
                && b[1] < o[1] + o[3]
                && o[1] < b[1] + b[3];
            assert!(!overlap, "{title} overlaps {other}");
        }
        boxes.push((title.clone(), b));
        let kind = p["type"].as_str().unwrap();
        assert!(
            [
                "row",
                "stat",
                "gauge",
                "timeseries",
                "piechart",
                "table",
                "bargauge",
                "text"
            ]
            .contains(&kind),
            "{title}: panel type {kind} (deprecated or a plugin)"
        );
        if kind == "row" {
            assert_eq!(
                p["collapsed"], false,
                "{title}: collapsed rows hide their panels"
            );
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()), "{title}");
        }
    }

    let by_row = panels_by_row(&d);
    for (row, titles) in SPEC_PANELS {
        for title in titles {
            let found = by_row.iter().find(|(_, p)| p["title"] == *title);
            let (in_row, _) = found.unwrap_or_else(|| panic!("no panel {title}"));
            assert_eq!(in_row, row, "{title} is not in the {row} row");
        }
    }
    // The operator panels beyond the spec.
    for title in [
        "Queue Depth",
        "Slow Consumer Disconnects",
        "HTTP Latency (p95)",
    ] {
        assert!(
            by_row.iter().any(|(_, p)| p["title"] == title),
            "no panel {title}"
        );
    }
}

/// What agents' telemetry reported has its row, each panel on the series it is about, the
/// per-agent ones following the Agent filter. (Their values: `monitoring_stack.rs`.)
#[test]
fn the_llm_usage_row_shows_each_genai_series() {
    let by_row = panels_by_row(&dashboard());
    let llm: Vec<&Value> = by_row
        .iter()
        .filter(|(row, _)| row == LLM_ROW)
        .map(|(_, p)| p)
        .collect();
    let titles: Vec<&str> = llm.iter().map(|p| p["title"].as_str().unwrap()).collect();
    assert_eq!(titles, LLM_PANELS.map(|(t, _)| t), "the {LLM_ROW} row");
    for ((title, metrics), panel) in LLM_PANELS.iter().zip(&llm) {
        let exprs: Vec<&str> = panel["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["expr"].as_str().unwrap())
            .collect();
        assert_eq!(exprs.len(), metrics.len(), "{title}");
        for (expr, metric) in exprs.iter().zip(*metrics) {
            assert!(expr.contains(&format!("{metric}{{")), "{title}: {expr}");
            let per_agent = !metric.starts_with("agentnexus_span");
            assert_eq!(
                expr.contains("agent_id=~\"$agent\""),
                per_agent,
                "{title}: {expr}"
            );
        }
    }
}

const LLM_ROW: &str = "Agents' LLM usage";

/// The panels of the LLM row in reading order, each with the series of its queries.
const LLM_PANELS: [(&str, &[&str]); 7] = [
    ("LLM Cost per Agent", &["agentnexus_genai_cost_usd_total"]),
    ("Tokens per Model", &["agentnexus_genai_tokens_total"]),
    (
        "LLM Latency (p50/p95)",
        &[
            "agentnexus_genai_operation_duration_seconds_bucket",
            "agentnexus_genai_operation_duration_seconds_bucket",
        ],
    ),
    (
        "LLM and Tool Calls",
        &[
            "agentnexus_genai_llm_calls_total",
            "agentnexus_genai_tool_calls_total",
        ],
    ),
    ("Budget Stops", &["agentnexus_budget_exceeded_total"]),
    (
        "Unpriced LLM Calls",
        &["agentnexus_genai_unpriced_calls_total"],
    ),
    (
        "Spans",
        &[
            "agentnexus_spans_ingested_total",
            "agentnexus_spans_dropped_total",
            "agentnexus_span_attributes_truncated_total",
        ],
    ),
];
