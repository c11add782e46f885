//! Metrics: render time of `/metrics` at a realistic cardinality, and the cost of recording one
//! execution's metrics on the hot path. For comparison it runs the same scenario with Python's
//! `prometheus_client` (`benches/metrics_peer.py`) when that library is installed
//! (`pip install prometheus_client`). Run: `cargo bench --bench metrics`.
//!
//! Cardinality: 1,000 agents × 10 users (executions counter), every agent with all three final
//! statuses observed in the duration histogram, 500 running executions with resource gauges.

use std::time::Instant;

use agentnexus::domain::{Agent, Execution, ExecutionId, Runtime, Status, Wei};
use agentnexus::metrics::Metrics;
use serde_json::json;

const AGENTS: usize = 1000;
const USERS: usize = 10;
const RUNNING: usize = 500;
const RENDERS: usize = 101;

fn execution(agent: usize, user: usize, n: usize) -> Execution {
    let agent = Agent {
        id: format!("agent-{agent}"),
        name: format!("Agent number {agent}"),
        price_wei: Wei(1_000_000_000_000_000),
        timeout_secs: 60,
        input_schema: None,
        budget: Default::default(),
        runtime: Runtime::Process {
            command: "true".into(),
            args: vec![],
            env: Default::default(),
            workdir: None,
        },
    };
    Execution {
        execution_id: ExecutionId::parse(&format!("exec_{n:026}")).unwrap(),
        agent_id: agent.id.clone(),
        agent_name: agent.name.clone(),
        user_id: format!("user-{user}"),
        status: Status::Running,
        input: json!({}),
        output: None,
        error: None,
        exit_code: None,
        created_at: 0,
        started_at: None,
        finished_at: None,
        duration_ms: None,
        price_wei: agent.price_wei,
        peak_memory_bytes: None,
        peak_cpu_percent: None,
        log_lines: 0,
        log_lines_dropped: 0,
        last_seq: 0,
        replica_id: None,
        usage: Default::default(),
        agent,
        process: None,
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let metrics = Metrics::new();
    let users: Vec<String> = (0..USERS).map(|u| format!("user-{u}")).collect();
    let mut n = 0;
    for a in 0..AGENTS {
        let e = execution(a, 0, 0);
        metrics.register_agent(&e.agent, &users, 0);
        for u in 0..USERS {
            n += 1;
            metrics.submitted(&execution(a, u, n));
        }
        for (i, status) in [Status::Completed, Status::Failed, Status::Cancelled]
            .into_iter()
            .enumerate()
        {
            metrics.transitioned(&e, status, Some(0.5 * (i + 1) as f64));
        }
    }
    let running: Vec<Execution> = (0..RUNNING)
        .map(|i| execution(i % AGENTS, 0, 1_000_000 + i))
        .collect();
    let _guards: Vec<_> = running.iter().map(|e| metrics.running(e)).collect();
    for e in &running {
        metrics.resource_sample(e, 128 << 20, 42.5);
    }

    let mut renders = Vec::new();
    let mut size = 0;
    let mut series = 0;
    for _ in 0..RENDERS {
        let start = Instant::now();
        let text = metrics.render_text();
        renders.push(start.elapsed().as_secs_f64() * 1000.0);
        size = text.len();
        series = text.lines().filter(|l| !l.starts_with('#')).count();
    }
    println!(
        "render /metrics (text 0.0.4): median {:.2} ms over {RENDERS} renders; {series} series, {} KiB",
        median(renders),
        size / 1024
    );
    let start = Instant::now();
    let json = metrics.render_json();
    println!(
        "render /metrics/json: {:.2} ms ({} families)",
        start.elapsed().as_secs_f64() * 1000.0,
        json.as_array().unwrap().len()
    );

    // Hot path: the updates one finished execution causes.
    let samples: Vec<Execution> = (0..1000)
        .map(|i| execution(i % AGENTS, i % USERS, i))
        .collect();
    const ROUNDS: usize = 1000;
    let start = Instant::now();
    for _ in 0..ROUNDS {
        for e in &samples {
            metrics.submitted(e);
        }
    }
    let counter_ns = start.elapsed().as_nanos() as f64 / (ROUNDS * samples.len()) as f64;
    let start = Instant::now();
    for _ in 0..ROUNDS {
        for e in &samples {
            metrics.transitioned(e, Status::Completed, Some(1.5));
        }
    }
    let finish_ns = start.elapsed().as_nanos() as f64 / (ROUNDS * samples.len()) as f64;
    println!(
        "hot path: {counter_ns:.0} ns per labelled counter increment (executions_total); {finish_ns:.0} ns per recorded end of an execution (status counter + duration histogram + revenue gauge + resource series removal, 5 updates: {:.0} ns each)",
        finish_ns / 5.0
    );

    let peer = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/metrics_peer.py"
        ))
        .output();
    match peer {
        Ok(out) if out.status.success() => print!("{}", String::from_utf8_lossy(&out.stdout)),
        Ok(out) => println!(
            "peer (python prometheus_client) not run: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ),
        Err(e) => println!("peer (python prometheus_client) not run: {e}"),
    }
}
