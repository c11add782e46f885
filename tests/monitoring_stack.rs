//! The monitoring stack in `deploy/` checked with the real tools: `promtool` (config, rules and
//! the rules' unit tests), `amtool`, a real Prometheus scraping the real runtime with the shipped
//! alert rules loaded and every query of the shipped Grafana dashboard evaluated against it,
//! `docker-compose config`, `kubernetes-validate`, and the shipped runtime configs, the image's
//! way of starting the runtime (keys from the environment or a Secret file) and its health check
//! script run for real.
//!
//! YAML is read through `python3 -c 'import yaml'` (PyYAML). Each test first checks the tools it
//! needs (`common::tools`): a missing one skips it, or fails it under `AGENTNEXUS_REQUIRE_TOOLS`;
//! `scripts/test` installs them all.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::prometheus::{Prometheus, mix_agents, run_mix, sample};
use common::tools::{Tool, have, on_path};
use common::{Client, ServerProcess, TestServer};
use reqwest::StatusCode;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs a command; returns whether it succeeded and its stdout and stderr together.
fn run(program: &str, args: &[&str], dir: Option<&Path>) -> (bool, String) {
    let mut command = Command::new(program);
    command.args(args);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Every document of a YAML file, as JSON.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let (ok, out) = run(
        "python3",
        &[
            "-c",
            "import sys, json, yaml\nprint(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]))",
            path.to_str().unwrap(),
        ],
        None,
    );
    assert!(ok, "reading {} as YAML failed: {out}", path.display());
    serde_json::from_str(&out).unwrap()
}

fn yaml(path: &str) -> Value {
    let mut docs = yaml_docs(&deploy(path));
    assert_eq!(docs.len(), 1, "{path}: expected one YAML document");
    docs.remove(0)
}

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
    let identity = |labels: &Value| -> String {
        ["instance", "execution_id"]
            .iter()
            .map(|k| labels[k].as_str().unwrap_or("").to_owned())
            .collect::<Vec<_>>()
            .join("/")
    };
    let series_identity = |series: &str| -> String {
        let label = |k: &str| {
            series
                .split(&format!("{k}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("")
                .to_owned()
        };
        format!("{}/{}", label("instance"), label("execution_id"))
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
    ] {
        assert!(alerts.contains(wanted), "no alert {wanted}");
    }

    let mut fires = BTreeSet::new();
    let mut silent_before = BTreeSet::new();
    for test in tests["tests"].as_array().unwrap() {
        let inputs: BTreeSet<String> = test["input_series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| series_identity(s["series"].as_str().unwrap()))
            .collect();
        for case in test["alert_rule_test"].as_array().unwrap() {
            let name = case["alertname"].as_str().unwrap().to_owned();
            let expected = case["exp_alerts"].as_array().cloned().unwrap_or_default();
            if expected.is_empty() {
                silent_before.insert(name);
                continue;
            }
            let firing: BTreeSet<String> = expected
                .iter()
                .map(|a| identity(&a["exp_labels"]))
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
// docker-compose and the Grafana provisioning

#[test]
fn docker_compose_accepts_the_compose_file() {
    let (program, prefix): (&str, &[&str]) = if on_path("docker-compose") {
        ("docker-compose", &[])
    } else if on_path("docker") && run("docker", &["compose", "version"], None).0 {
        ("docker", &["compose"])
    } else {
        common::skip(
            "neither docker-compose nor `docker compose` is installed (apt-get install docker-compose; scripts/test installs it)",
        );
        return;
    };
    let mut args = prefix.to_vec();
    args.extend(["-f", "docker-compose.yml", "config", "--quiet"]);
    let (ok, out) = run(program, &args, Some(&deploy("")));
    assert!(ok, "{program} config: {out}");
}

#[test]
fn compose_pins_images_uses_named_volumes_and_the_spec_ports() {
    if !have(Tool::PyYaml) {
        return;
    }
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_object().unwrap();
    for name in ["agentnexus", "prometheus", "grafana", "alertmanager"] {
        let image = services[name]["image"].as_str().unwrap();
        let (_, tag) = image.rsplit_once(':').expect("a tag");
        assert!(
            tag != "latest" && tag.chars().any(|c| c.is_ascii_digit()),
            "{name}: {image} is not pinned"
        );
    }
    let ports = |s: &str| services[s]["ports"].clone();
    assert_eq!(ports("agentnexus"), json!(["3001:3001"]));
    assert_eq!(ports("grafana"), json!(["3000:3000"]));
    assert_eq!(ports("prometheus"), json!(["9090:9090"]));
    // Named volumes for every service's data, the runtime's data directory among them.
    let named: BTreeSet<&str> = compose["volumes"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for (service, target) in [
        ("agentnexus", "/var/lib/agentnexus"),
        ("prometheus", "/prometheus"),
        ("grafana", "/var/lib/grafana"),
        ("alertmanager", "/alertmanager"),
    ] {
        let mounted = services[service]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .any(|v| {
                let mut parts = v.split(':');
                let source = parts.next().unwrap();
                named.contains(source) && parts.next() == Some(target)
            });
        assert!(mounted, "{service}: no named volume on {target}");
    }
    // The runtime's data directory is the one the image and config use.
    let config = read("agentnexus.toml");
    assert!(config.contains("data_dir = \"/var/lib/agentnexus\""));
    // Grafana credentials from the environment, defaulting to the spec's admin/admin.
    let env = &services["grafana"]["environment"];
    assert_eq!(
        env["GF_SECURITY_ADMIN_USER"],
        "${GRAFANA_ADMIN_USER:-admin}"
    );
    assert_eq!(
        env["GF_SECURITY_ADMIN_PASSWORD"],
        "${GRAFANA_ADMIN_PASSWORD:-admin}"
    );
}

/// The host path compose mounts at `target` in `service`, relative to deploy/.
fn compose_mount_source(compose: &Value, service: &str, target: &str) -> Option<String> {
    compose["services"][service]["volumes"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .find_map(|v| {
            let mut parts = v.split(':');
            let (source, to) = (parts.next()?, parts.next()?);
            (to == target).then(|| source.to_owned())
        })
}

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

fn dashboard() -> Value {
    serde_json::from_str(&read("grafana/dashboards/agentnexus.json")).unwrap()
}

/// The dashboard's panels, each with the title of the row it is under.
fn panels_by_row(dashboard: &Value) -> Vec<(String, Value)> {
    let mut panels: Vec<Value> = dashboard["panels"].as_array().unwrap().clone();
    panels.sort_by_key(|p| (p["gridPos"]["y"].as_u64(), p["gridPos"]["x"].as_u64()));
    let mut row = String::new();
    let mut out = Vec::new();
    for panel in panels {
        if panel["type"] == "row" {
            row = panel["title"].as_str().unwrap().to_owned();
        } else {
            out.push((row.clone(), panel));
        }
    }
    out
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

fn by_label(result: &[Value], label: &str) -> BTreeMap<String, f64> {
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

fn single(result: &[Value], what: &str) -> f64 {
    assert_eq!(result.len(), 1, "{what}: {result:?}");
    sample(&result[0])
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
    for (_, panel) in panels_by_row(&d) {
        let title = panel["title"].as_str().unwrap().to_owned();
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
    let total = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["title"] == "Total Executions")
        .unwrap();
    let expr = substitute(total["targets"][0]["expr"].as_str().unwrap(), "ok");
    assert_eq!(single(&prometheus.query(&expr).await, "filtered"), 6.0);

    // The shipped rules load and evaluate without error against the real metrics, and the
    // failure-rate alert sees the mix's 25% failures (pending: its `for` is 5 minutes).
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
        if evaluated && active.contains_key("AgentNexusHighFailureRate") {
            let docker_down = prometheus.value("agentnexus_docker_healthy").await == Some(0.0);
            let mut expected = BTreeSet::from(["AgentNexusHighFailureRate".to_owned()]);
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
            "the failure-rate alert never became active: {active:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let mut server = server;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Kubernetes manifests, the image's start and health check, against the real runtime

fn k8s_docs() -> Vec<(String, Value)> {
    let kustomization = yaml("k8s/kustomization.yaml");
    let mut docs = Vec::new();
    for file in kustomization["resources"].as_array().unwrap() {
        let file = file.as_str().unwrap();
        for doc in yaml_docs(&deploy(&format!("k8s/{file}"))) {
            docs.push((file.to_owned(), doc));
        }
    }
    docs
}

fn k8s(kind: &str) -> Value {
    let found: Vec<Value> = k8s_docs()
        .into_iter()
        .filter(|(_, d)| d["kind"] == kind)
        .map(|(_, d)| d)
        .collect();
    assert_eq!(found.len(), 1, "one {kind}");
    found.into_iter().next().unwrap()
}

#[test]
fn kubernetes_manifests_validate_offline() {
    if !have(Tool::PyYaml) {
        return;
    }
    // Every manifest file is listed in the kustomization.
    let listed: BTreeSet<String> = k8s_docs().into_iter().map(|(f, _)| f).collect();
    for entry in std::fs::read_dir(deploy("k8s")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            assert!(
                listed.contains(&name),
                "{name} is not in kustomization.yaml"
            );
        }
    }
    if !have(Tool::KubernetesValidate) {
        return;
    }
    let files: Vec<String> = listed
        .iter()
        .map(|f| deploy(&format!("k8s/{f}")).display().to_string())
        .collect();
    let mut args = vec!["--strict", "-k", "1.30.0"];
    args.extend(files.iter().map(String::as_str));
    let (ok, out) = run("kubernetes-validate", &args, None);
    assert!(ok, "kubernetes-validate: {out}");
    // The built-in kinds were validated, not skipped; only the operator's CRDs lack a schema.
    for kind in [
        "configmap",
        "deployment",
        "service",
        "persistentvolumeclaim",
        "namespace",
    ] {
        assert!(
            out.contains(&format!("passed for resource {kind}/")),
            "{kind}: {out}"
        );
    }
    for line in out.lines().filter(|l| l.starts_with("WARN")) {
        assert!(
            line.contains("monitoring.coreos.com/v1"),
            "unexpected warning: {line}"
        );
    }
}

#[test]
fn the_prometheus_rule_carries_the_same_rules_and_promtool_accepts_it() {
    if !(have(Tool::PyYaml) && have(Tool::Promtool)) {
        return;
    }
    let rule = k8s("PrometheusRule");
    let alerts = yaml("prometheus/alerts.yml");
    let sync =
        "k8s/prometheusrule.yaml differs from prometheus/alerts.yml: run deploy/k8s/sync-rules.sh";
    let (ours, theirs) = (&rule["spec"]["groups"], &alerts["groups"]);
    let names = |g: &Value| -> Vec<Value> {
        g.as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].clone())
            .collect()
    };
    assert_eq!(names(ours), names(theirs), "{sync}");
    for (a, b) in ours
        .as_array()
        .unwrap()
        .iter()
        .zip(theirs.as_array().unwrap())
    {
        assert_eq!(
            a["rules"].as_array().map(Vec::len),
            b["rules"].as_array().map(Vec::len),
            "{sync}"
        );
        for (x, y) in a["rules"]
            .as_array()
            .unwrap()
            .iter()
            .zip(b["rules"].as_array().unwrap())
        {
            assert_eq!(x, y, "{sync} (rule {})", y["alert"]);
        }
    }
    assert_eq!(ours, theirs, "{sync}");
    // And it is a rules file promtool accepts (JSON is YAML).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yml");
    std::fs::write(
        &path,
        json!({ "groups": rule["spec"]["groups"] }).to_string(),
    )
    .unwrap();
    let (ok, out) = run(
        "promtool",
        &["check", "rules", path.to_str().unwrap()],
        None,
    );
    assert!(ok, "{out}");
}

/// The real binary started as the image starts it — `agentnexus serve`, the config file named
/// by `AGENTNEXUS_CONFIG` — with a shipped config file and `env` (the API keys).
fn spawn_like_the_image(config: &Path, data: &Path, env: &[(&str, &str)]) -> ServerProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agentnexus"));
    command
        .arg("serve")
        .env("AGENTNEXUS_CONFIG", config)
        // The shipped file binds 0.0.0.0:3001; the test takes a free loopback port.
        .env("AGENTNEXUS_BIND", "127.0.0.1:0")
        .env("AGENTNEXUS_DATA_DIR", data.join("data"))
        .env_remove("AGENTNEXUS_API_KEYS")
        .env_remove("AGENTNEXUS_API_KEYS_FILE");
    for (k, v) in env {
        command.env(k, v);
    }
    ServerProcess::spawn_command(command)
}

fn toml_port(config: &str) -> u16 {
    let bind = config
        .lines()
        .find_map(|l| l.strip_prefix("bind = \""))
        .expect("a bind line");
    bind.trim_end_matches('"')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

async fn status_of(url: &str, token: Option<&str>) -> StatusCode {
    let mut request = reqwest::Client::new().get(url);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    request.send().await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_probes_ports_and_config_work_against_the_real_runtime() {
    if !have(Tool::PyYaml) {
        return;
    }
    let deployment = k8s("Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let config_map = k8s("ConfigMap");
    let config = config_map["data"]["agentnexus.toml"].as_str().unwrap();
    let service = k8s("Service");
    let monitor = k8s("ServiceMonitor");

    // The spec's probes and resources.
    let port = container["ports"][0]["containerPort"].as_u64().unwrap() as u16;
    assert_eq!(port, 3001);
    assert_eq!(toml_port(config), port, "the ConfigMap binds another port");
    let live = &container["livenessProbe"];
    let ready = &container["readinessProbe"];
    assert_eq!(live["httpGet"]["path"], "/health/live");
    assert_eq!(ready["httpGet"]["path"], "/health/ready");
    assert_eq!(
        (
            live["initialDelaySeconds"].as_u64(),
            live["periodSeconds"].as_u64()
        ),
        (Some(30), Some(10))
    );
    assert_eq!(
        (
            ready["initialDelaySeconds"].as_u64(),
            ready["periodSeconds"].as_u64()
        ),
        (Some(10), Some(5))
    );
    for probe in [live, ready] {
        assert_eq!(probe["httpGet"]["port"].as_u64(), Some(port as u64));
    }
    assert_eq!(
        container["resources"],
        json!({"requests": {"memory": "256Mi", "cpu": "250m"}, "limits": {"memory": "1Gi", "cpu": "1000m"}})
    );
    // Service → container port by name; ServiceMonitor → Service port by name, the same path.
    let port_name = container["ports"][0]["name"].as_str().unwrap();
    assert_eq!(service["spec"]["ports"][0]["targetPort"], port_name);
    let service_port_name = service["spec"]["ports"][0]["name"].as_str().unwrap();
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], service_port_name);
    assert_eq!(endpoint["interval"], "10s");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for selector in [
        &service["spec"]["selector"],
        &monitor["spec"]["selector"]["matchLabels"],
    ] {
        for (k, v) in selector.as_object().unwrap() {
            let labels = if selector == &service["spec"]["selector"] {
                pod_labels
            } else {
                &service["metadata"]["labels"]
            };
            assert_eq!(&labels[k], v, "selector {k}");
        }
    }
    // Kubernetes' grace outlasts the runtime's own shutdown grace.
    let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    let runtime_grace: u64 = config
        .lines()
        .find_map(|l| l.strip_prefix("shutdown_grace_secs = "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(grace > runtime_grace);
    // The config the runtime reads and the key file it names are mounts.
    let env: BTreeMap<&str, &str> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
        .collect();
    let mounts: BTreeSet<&str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert_eq!(
        env["AGENTNEXUS_CONFIG"],
        "/etc/agentnexus/config/agentnexus.toml"
    );
    assert!(mounts.contains("/etc/agentnexus/config"));
    assert!(mounts.contains("/tmp") && mounts.contains("/var/lib/agentnexus"));
    let key_file = config
        .lines()
        .find_map(|l| l.strip_prefix("api_keys_file = \""))
        .expect("the ConfigMap names the key file")
        .trim_end_matches('"');
    let (key_dir, key_name) = key_file.rsplit_once('/').unwrap();
    let secret_mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == key_dir)
        .expect("the key file's directory is a mount");
    let volume = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == secret_mount["name"])
        .unwrap();
    assert_eq!(volume["secret"]["secretName"], "agentnexus-api-keys");
    assert!(
        read("../docs/monitoring.md").contains(&format!("--from-file={key_name}")),
        "the guide creates the Secret with the key {key_name}"
    );

    // Now the ConfigMap's config, with keys in a Secret-like file at the path it names (moved
    // here by AGENTNEXUS_API_KEYS_FILE, which overrides it), run by the real binary as the image
    // runs it; the probes and the scrape path answer as the manifests expect.
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("agentnexus.toml");
    std::fs::write(&config_path, config).unwrap();
    let secret_file = dir.path().join(key_name);
    let key = "k8s-test-admin-key-0123456789";
    let hashed = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    };
    std::fs::write(
        &secret_file,
        format!("[[api_keys]]\nkey = \"sha256:{hashed}\"\nuser = \"ops\"\nadmin = true\n"),
    )
    .unwrap();
    let runtime = spawn_like_the_image(
        &config_path,
        dir.path(),
        &[("AGENTNEXUS_API_KEYS_FILE", secret_file.to_str().unwrap())],
    );
    for probe in [live, ready] {
        let path = probe["httpGet"]["path"].as_str().unwrap();
        assert_eq!(
            status_of(&format!("{}{path}", runtime.url), None).await,
            StatusCode::OK,
            "{path}"
        );
    }
    // Docker is disabled in the ConfigMap: readiness is healthy, not degraded.
    let ready_body: Value = reqwest::get(format!("{}/health/ready", runtime.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready_body["status"], "healthy", "{ready_body}");
    let metrics = reqwest::get(format!(
        "{}{}",
        runtime.url,
        endpoint["path"].as_str().unwrap()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        metrics.contains("agentnexus_executions_total{"),
        "no agent series"
    );
    // The API needs the key from the Secret.
    let agents = format!("{}/api/agents", runtime.url);
    assert_eq!(status_of(&agents, None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status_of(&agents, Some(key)).await, StatusCode::OK);

    // The image's health check script, as the Dockerfile and compose run it.
    let port = runtime.addr.port();
    let check = |path: &str| {
        Command::new("bash")
            .arg(deploy("healthcheck.sh"))
            .arg(path)
            .env("AGENTNEXUS_PORT", port.to_string())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(check("/health/live"));
    assert!(check("/health/ready"));
    assert!(!check("/no/such/path"), "a 404 must count as unhealthy");
    drop(runtime);
    assert!(
        !check("/health/live"),
        "nothing listening must count as unhealthy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_config_and_image_run_the_runtime_with_the_admin_key_from_env() {
    if !have(Tool::PyYaml) {
        return;
    }
    let dockerfile = read("Dockerfile");
    let config = read("agentnexus.toml");
    let compose = yaml("docker-compose.yml");
    let port = toml_port(&config);
    assert!(dockerfile.contains(&format!("EXPOSE {port}")));
    assert!(dockerfile.contains("AGENTNEXUS_PORT=3001") && port == 3001);
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("\"/health/live\""));
    assert!(
        dockerfile.contains("\nUSER agentnexus"),
        "the image must not run as root"
    );
    assert!(dockerfile.matches("\nFROM ").count() >= 2, "multi-stage");
    // Everything the image copies from the build context (the repository root) exists.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        for source in &words[1..words.len() - 1] {
            assert!(
                root.join(source).exists(),
                "Dockerfile copies a missing {source}"
            );
        }
    }
    assert_eq!(
        compose_mount_source(&compose, "agentnexus", "/etc/agentnexus/agentnexus.toml").as_deref(),
        Some("./agentnexus.toml")
    );
    // The image runs the binary itself (no script assembling a config), reading the config
    // the compose file mounts.
    assert!(
        dockerfile
            .contains("ENTRYPOINT [\"/usr/bin/tini\", \"--\", \"/usr/local/bin/agentnexus\"]")
    );
    assert!(dockerfile.contains("AGENTNEXUS_CONFIG=/etc/agentnexus/agentnexus.toml"));

    // The keys compose passes, with compose's substitution of AGENTNEXUS_ADMIN_KEY.
    let key = "compose-test-admin-key-0123456789";
    let keys = compose["services"]["agentnexus"]["environment"]["AGENTNEXUS_API_KEYS"]
        .as_str()
        .expect("compose passes AGENTNEXUS_API_KEYS");
    let default = "${AGENTNEXUS_ADMIN_KEY:-local-dev-admin-key-change-me}";
    assert!(keys.contains(default), "{keys}");
    let keys = keys.replace(default, key);
    let dir = tempfile::tempdir().unwrap();
    let runtime = spawn_like_the_image(
        &deploy("agentnexus.toml"),
        dir.path(),
        &[("AGENTNEXUS_API_KEYS", &keys)],
    );
    let client = Client::new(&runtime.url).with_token(key);
    let (status, body) = client.get("/api/agents").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["agents"].as_array().map(Vec::len), Some(3), "{body}");
    assert_eq!(
        status_of(&format!("{}/api/agents", runtime.url), None).await,
        StatusCode::UNAUTHORIZED
    );
    for path in ["/health/live", "/health/ready", "/metrics"] {
        assert_eq!(
            status_of(&format!("{}{path}", runtime.url), None).await,
            StatusCode::OK,
            "{path}"
        );
    }
}
