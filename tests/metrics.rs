//! Prometheus metrics as the spec documents them, checked by the real `promtool` and the real
//! `prometheus` server (Debian package `prometheus`), plus cardinality and gauge exactness.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::prometheus::{Prometheus, mix_agents, run_mix, samples};
use common::tools::{Tool, have};
use common::{Client, TestServer, scrape, sh_agent};
use reqwest::StatusCode;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_finds_no_problem_in_the_live_output() {
    if !have(Tool::Promtool) {
        return;
    }
    let server = TestServer::start(mix_agents()).await;
    run_mix(&server.client).await;
    // Both formats: the classic text the default scrape gets, and OpenMetrics.
    let classic = scrape(&server.url).await;
    let openmetrics = reqwest::Client::new()
        .get(format!("{}/metrics", server.url))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .unwrap();
    assert!(
        openmetrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
    );
    let openmetrics = openmetrics.text().await.unwrap();
    assert!(openmetrics.ends_with("# EOF\n"));
    // promtool reads the classic format; the OpenMetrics output is parsed for real by
    // Prometheus itself in the example-queries test (it asks for OpenMetrics first).
    {
        let text = classic;
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && report.trim().is_empty(),
            "promtool: {report}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_spec_is_there_with_its_type_and_labels() {
    let server = TestServer::start(mix_agents()).await;
    run_mix(&server.client).await;
    let text = scrape(&server.url).await;
    let expected = [
        (
            "agentnexus_executions_total",
            "counter",
            &["agent_id", "agent_name", "user_id"][..],
        ),
        (
            "agentnexus_execution_duration_seconds",
            "histogram",
            &["agent_id", "agent_name", "status"],
        ),
        (
            "agentnexus_execution_status_total",
            "counter",
            &["status", "agent_id"],
        ),
        (
            "agentnexus_agent_running_executions",
            "gauge",
            &["agent_id", "agent_name"],
        ),
        (
            "agentnexus_agent_revenue_wei",
            "gauge",
            &["agent_id", "agent_name"],
        ),
        ("agentnexus_active_websocket_connections", "gauge", &[]),
        ("agentnexus_docker_healthy", "gauge", &[]),
    ];
    for (name, kind, _) in expected {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} {kind} missing"
        );
    }
    let samples = samples(&text);
    for (name, _, labels) in expected
        .iter()
        .filter(|(_, _, l)| !l.is_empty() && !l.contains(&"execution_id"))
    {
        let sample_name = if name.ends_with("_seconds") {
            format!("{name}_count")
        } else {
            name.to_string()
        };
        let (_, found) = samples
            .keys()
            .find(|(n, _)| *n == sample_name)
            .unwrap_or_else(|| panic!("no sample of {sample_name}"));
        let keys: BTreeSet<_> = found.keys().map(String::as_str).collect();
        assert_eq!(keys, labels.iter().copied().collect(), "{name}");
    }
    let count = |name: &str, labels: &[(&str, &str)]| -> f64 {
        samples
            .iter()
            .filter(|((n, l), _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, v)| v)
            .sum()
    };
    assert_eq!(count("agentnexus_executions_total", &[]), 12.0);
    assert_eq!(
        count(
            "agentnexus_executions_total",
            &[("agent_id", "ok"), ("user_id", "local")]
        ),
        6.0
    );
    assert_eq!(
        count(
            "agentnexus_execution_status_total",
            &[("status", "COMPLETED")]
        ),
        8.0
    );
    assert_eq!(
        count("agentnexus_execution_status_total", &[("status", "FAILED")]),
        3.0
    );
    assert_eq!(
        count(
            "agentnexus_execution_status_total",
            &[("status", "CANCELLED")]
        ),
        1.0
    );
    assert_eq!(
        count("agentnexus_agent_revenue_wei", &[]),
        6.0 * 3.0 + 2.0 * 7.0
    );
    assert_eq!(count("agentnexus_agent_running_executions", &[]), 0.0);
    assert_eq!(
        count(
            "agentnexus_execution_duration_seconds_count",
            &[("agent_id", "slow"), ("status", "COMPLETED")]
        ),
        2.0
    );
    assert_eq!(
        count(
            "agentnexus_execution_duration_seconds_bucket",
            &[("agent_id", "slow"), ("le", "1.0")]
        ),
        0.0
    );
    assert_eq!(
        count(
            "agentnexus_execution_duration_seconds_bucket",
            &[("agent_id", "slow"), ("le", "2.5")]
        ),
        2.0
    );
    assert!(
        count(
            "agentnexus_http_requests_total",
            &[
                ("route", "/api/executions"),
                ("method", "POST"),
                ("status", "202")
            ]
        ) >= 12.0
    );
    assert!(
        !samples
            .keys()
            .any(|(n, _)| n.starts_with("agentnexus_container_")),
        "series of finished executions remain"
    );
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "agentnexus_runtime_alive_tasks",
        "agentnexus_memory_limit_bytes",
    ] {
        assert!(samples.keys().any(|(n, _)| n == name), "{name} missing");
    }
    let limit = samples[&("agentnexus_memory_limit_bytes".to_owned(), BTreeMap::new())];
    assert!(limit > 64.0 * 1024.0 * 1024.0, "memory limit {limit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_endpoint_agrees_with_the_text_for_every_series() {
    let server = TestServer::start(mix_agents()).await;
    run_mix(&server.client).await;
    let text = scrape(&server.url).await;
    let (status, json) = server.client.get("/metrics/json").await;
    assert_eq!(status, StatusCode::OK);
    let from_text = samples(&text);
    let mut from_json = BTreeMap::new();
    for family in json.as_array().unwrap() {
        assert!(
            family["help"].is_string() && family["type"].is_string(),
            "{family}"
        );
        for v in family["values"].as_array().unwrap() {
            let name = v
                .get("metricName")
                .unwrap_or(&family["name"])
                .as_str()
                .unwrap()
                .to_owned();
            let labels: BTreeMap<String, String> = v["labels"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            let value = match &v["value"] {
                Value::String(s) if s == "+Inf" => f64::INFINITY,
                n => n.as_f64().unwrap(),
            };
            from_json.insert((name, labels), value);
        }
    }
    // Series that move on their own (process, async runtime, HTTP, background health probes).
    let volatile = |name: &str| {
        name.starts_with("process_")
            || name.starts_with("agentnexus_runtime_")
            || name.starts_with("agentnexus_http_")
            || name.ends_with("_healthy")
    };
    let stable = |m: &BTreeMap<(String, BTreeMap<String, String>), f64>| -> BTreeMap<_, _> {
        m.iter()
            .filter(|((n, _), _)| !volatile(n))
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    };
    assert_eq!(stable(&from_json), stable(&from_text));
    // Values of the volatile series move between the two reads, but the series are the same
    // (the JSON read itself adds its own HTTP route series).
    let names = |m: &BTreeMap<(String, BTreeMap<String, String>), f64>| -> BTreeSet<String> {
        m.keys()
            .map(|(n, _)| n.clone())
            .filter(|n| !n.starts_with("agentnexus_http_"))
            .collect()
    };
    assert_eq!(names(&from_json), names(&from_text));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_gauge_is_exact_under_concurrency() {
    let server = TestServer::start_with(vec![sh_agent("nap", "1", "sleep 2")], |c| {
        c.max_concurrent_executions = 50;
    })
    .await;
    let submits = (0..50).map(|_| server.client.submit("nap", json!({})));
    let ids = futures_util::future::join_all(submits).await;
    let resource_series = |text: &str, name: &str| -> Vec<BTreeMap<String, String>> {
        samples(text)
            .into_keys()
            .filter(|(n, _)| n == name)
            .map(|(_, l)| l)
            .collect()
    };
    let running = |text: &str| {
        samples(text)
            .get(&(
                "agentnexus_agent_running_executions".to_owned(),
                BTreeMap::from([
                    ("agent_id".to_owned(), "nap".to_owned()),
                    ("agent_name".to_owned(), "Agent nap".to_owned()),
                ]),
            ))
            .copied()
    };
    let deadline = Instant::now() + WAIT;
    loop {
        let text = scrape(&server.url).await;
        if running(&text) == Some(50.0) {
            // The per-execution resource gauges of the spec, while executions run.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let text = scrape(&server.url).await;
            for (name, kind) in [
                ("agentnexus_container_memory_bytes", "gauge"),
                ("agentnexus_container_cpu_percent", "gauge"),
            ] {
                assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name}");
                let series = resource_series(&text, name);
                assert!(
                    !series.is_empty() && series.len() <= 50,
                    "{name}: {}",
                    series.len()
                );
                for labels in series {
                    assert_eq!(
                        labels.keys().collect::<Vec<_>>(),
                        ["agent_id", "execution_id"]
                    );
                    assert!(ids.contains(&labels["execution_id"]));
                }
            }
            break;
        }
        assert!(running(&text).unwrap_or(0.0) <= 50.0);
        assert!(Instant::now() < deadline, "never reached 50 running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in &ids {
        server.client.wait_terminal(id, WAIT).await;
    }
    let text = scrape(&server.url).await;
    assert_eq!(running(&text), Some(0.0));
    assert!(
        !text.contains("agentnexus_container_"),
        "resource series of finished executions remain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_stay_bounded_after_ten_thousand_executions() {
    const AGENTS: usize = 50;
    const EXECUTIONS: usize = 10_000;
    let agents: Vec<_> = (0..AGENTS)
        .map(|i| sh_agent(&format!("a{i}"), "1", ""))
        .map(|mut a| {
            a.runtime = agentnexus::domain::Runtime::Process {
                command: "true".into(),
                args: vec![],
                env: Default::default(),
                workdir: None,
            };
            a
        })
        .collect();
    let server = TestServer::start_with(agents, |c| c.max_concurrent_executions = 32).await;
    let client = &server.client;
    use futures_util::StreamExt;
    futures_util::stream::iter(0..EXECUTIONS)
        .for_each_concurrent(64, |i| async move {
            let id = client.submit(&format!("a{}", i % AGENTS), json!({})).await;
            client.wait_terminal(&id, WAIT).await;
        })
        .await;
    let text = scrape(&server.url).await;
    let samples = samples(&text);
    let executions: f64 = samples
        .iter()
        .filter(|((n, _), _)| n == "agentnexus_executions_total")
        .map(|(_, v)| v)
        .sum();
    assert_eq!(executions, EXECUTIONS as f64);
    let agentnexus: Vec<_> = samples
        .keys()
        .filter(|(n, _)| n.starts_with("agentnexus_"))
        .collect();
    // Per agent and user: 1 executions counter. Per agent: 3 status counters (one per final
    // status), 3 duration histograms of 14 buckets + +Inf + sum + count, 1 running gauge,
    // 1 revenue gauge. Plus a fixed number of agent-independent series (HTTP routes, runtime,
    // health). Nothing grows with the number of executions.
    let per_agent = 1 + 3 + 3 * 17 + 1 + 1;
    assert!(
        agentnexus.len() <= AGENTS * per_agent + 100,
        "{} series",
        agentnexus.len()
    );
    assert!(
        !text.contains("execution_id="),
        "a finished execution's series remains"
    );
    let with_exec_label = samples
        .keys()
        .filter(|(_, l)| l.values().any(|v| v.starts_with("exec_")))
        .count();
    assert_eq!(with_exec_label, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_example_queries_give_the_right_answers_in_prometheus() {
    if !have(Tool::Prometheus) {
        return;
    }
    let server = TestServer::start(mix_agents()).await;
    let target = server.url.trim_start_matches("http://").to_owned();
    let prometheus = Prometheus::start(&target, &[]);
    // Let Prometheus scrape the empty state first.
    prometheus.wait_for("up{job=\"agentnexus\"}", 1.0).await;
    run_mix(&server.client).await;
    prometheus
        .wait_for("sum(agentnexus_execution_status_total)", 12.0)
        .await;
    // Two more scrapes so that rates see the final values.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Total executions in last 5 minutes. The series existed at zero before the first run, so
    // rate() sees the whole increase; it extrapolates by up to half a scrape interval at the
    // end of the window, so the figure is 12 or a little above, by PromQL's design.
    let total = prometheus
        .scalar("sum(rate(agentnexus_executions_total[5m])) * 300")
        .await;
    assert!((11.5..=16.0).contains(&total), "total in 5m: {total}");

    let success = prometheus
        .scalar("sum(agentnexus_execution_status_total{status=\"COMPLETED\"}) \n/ sum(agentnexus_execution_status_total) * 100")
        .await;
    assert!(
        (success - 800.0 / 12.0).abs() < 1e-9,
        "success rate {success}"
    );

    // 9 of 12 runs took under 0.5 s, 2 took 1.2 s, 1 was cancelled after ~0.3 s: the 95th
    // percentile falls in the (1, 2.5] bucket.
    let p95 = prometheus
        .scalar("histogram_quantile(0.95, \n  sum(rate(agentnexus_execution_duration_seconds_bucket[5m])) by (le)\n)")
        .await;
    assert!(p95 > 1.0 && p95 <= 2.5, "p95 {p95}");

    let top = prometheus
        .query("topk(5, sum by (agent_name) (agentnexus_executions_total))")
        .await;
    // Every agent has its series from the start (at zero until it runs): five agents.
    assert_eq!(top.len(), 5, "{top:?}");
    let busiest = top.iter().max_by(|a, b| {
        let v = |x: &Value| x["value"][1].as_str().unwrap().parse::<f64>().unwrap();
        v(a).total_cmp(&v(b))
    });
    assert_eq!(busiest.unwrap()["metric"]["agent_name"], "Agent ok");
    assert_eq!(busiest.unwrap()["value"][1], "6");

    let revenue = prometheus.scalar("sum(agentnexus_agent_revenue_wei)").await;
    assert_eq!(revenue, 32.0);
}

#[tokio::test]
async fn metrics_can_also_be_served_on_their_own_listener() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = TestServer::start_with(vec![sh_agent("ok", "1", "true")], |c| {
        c.metrics_bind = Some(addr);
    })
    .await;
    let id = server.client.submit("ok", json!({})).await;
    server.client.wait_terminal(&id, WAIT).await;
    let separate = Client::new(&format!("http://{addr}"));
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("agentnexus_executions_total{agent_id=\"ok\",agent_name=\"Agent ok\",user_id=\"local\"} 1"), "{text}");
    let (status, json) = separate.get("/metrics/json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(json.as_array().is_some_and(|a| !a.is_empty()));
    // Only the metrics live there.
    let (status, _) = separate.get("/api/agents").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // And they stay on the main listener too.
    assert!(
        scrape(&server.url)
            .await
            .contains("agentnexus_executions_total")
    );
}
