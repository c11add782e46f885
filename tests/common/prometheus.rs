//! Test support shared by the metrics and monitoring-stack tests: a real Prometheus server, and
//! a known mix of executions to measure.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// name label value → sample value, for a result keyed by one label.
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
