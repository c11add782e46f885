//! Prometheus metrics: the spec's metric set with its exact names, types and labels, plus what
//! operators need beyond it. Fed by the runtime at the points where the events happen
//! (submission, status changes, resource samples, log ingestion, HTTP requests); rendered in
//! the classic text format, OpenMetrics, or prom-client's JSON shape.
//!
//! Cardinality is bounded by design, and no label value comes from client input: the only
//! label that names an execution is on the two per-execution resource gauges, removed when the
//! execution ends; per-agent series exist exactly while the agent is defined (`agents`); HTTP
//! series are labelled with a standard method or `other`, a route template and the status
//! the server answered. `docs/monitoring.md` gives the series count as a formula.

mod agents;
mod bus;
mod cluster;
mod forward;
mod genai;
mod store;

use std::sync::atomic::AtomicU64;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::{Map, Value, json};

use crate::domain::{Agent, Execution, Status};

pub use agents::RunningGuard;
pub use cluster::{ClusterSeries, FencedWrites};
pub use store::StoreSeries;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    execution_id: String,
    agent_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: &'static str,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

const HTTP_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
const LAG_BUCKETS: [f64; 9] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0];

pub struct Metrics {
    registry: Registry,
    agents: agents::AgentSeries,
    pub store: StoreSeries,
    /// What agents' telemetry reported (tokens, cost, calls) and the span intake.
    pub genai: genai::GenAiSeries,
    /// The forwarding of OTLP exports to `otlp.forward_endpoint`.
    pub forward: forward::ForwardSeries,
    /// Present on a replica that shares its database with others (`Metrics::shared`).
    pub cluster: Option<ClusterSeries>,
    pub websocket_connections: Gauge,
    pub docker_healthy: Gauge,
    container_memory: Family<ResourceLabels, Gauge>,
    container_cpu: Family<ResourceLabels, FloatGauge>,
    pub database_healthy: Gauge,
    pub memory_limit_bytes: Gauge,
    queue_depth: Gauge,
    pub websocket_messages_sent: Counter,
    pub websocket_slow_consumers: Counter,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<RouteLabels, Histogram>,
    log_lines: Counter,
    log_lines_truncated: Counter,
    log_lines_dropped: Counter,
    scheduling_lag: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Also exports the bus's figures (none for the in-process bus).
    pub fn watch_bus(&mut self, bus: std::sync::Arc<dyn crate::bus::Bus>) {
        self.registry
            .register_collector(Box::new(bus::BusCollector(bus)));
    }

    /// The series of a server that is alone on its database.
    pub fn new() -> Metrics {
        Metrics::build(None)
    }

    /// The series of a replica that shares its database with others: its own counters, plus
    /// the cluster's facts (revenue, queue depth) only while it holds the facts lease
    /// (`cluster`), instead of its own view of them. `fenced_writes` reads its store's count.
    pub fn shared(fenced_writes: FencedWrites) -> Metrics {
        Metrics::build(Some(fenced_writes))
    }

    fn build(shared: Option<FencedWrites>) -> Metrics {
        let mut registry = Registry::default();
        let agents = agents::AgentSeries::new(&mut registry, shared.is_none());
        let store = StoreSeries::new(&mut registry);
        let genai = genai::GenAiSeries::new(&mut registry);
        let forward = forward::ForwardSeries::new(&mut registry);
        let websocket_connections = Gauge::default();
        let docker_healthy = Gauge::default();
        let container_memory = Family::default();
        let container_cpu = Family::default();
        let database_healthy = Gauge::default();
        let memory_limit_bytes = Gauge::default();
        let queue_depth = Gauge::default();
        let websocket_messages_sent = Counter::default();
        let websocket_slow_consumers = Counter::default();
        let http_requests = Family::default();
        let http_duration =
            Family::<RouteLabels, Histogram>::new_with_constructor(|| Histogram::new(HTTP_BUCKETS));
        let log_lines = Counter::default();
        let log_lines_truncated = Counter::default();
        let log_lines_dropped = Counter::default();
        let scheduling_lag = Histogram::new(LAG_BUCKETS);

        registry.register(
            "agentnexus_active_websocket_connections",
            "Active WS connections",
            websocket_connections.clone(),
        );
        registry.register(
            "agentnexus_docker_healthy",
            "Docker health (1=healthy)",
            docker_healthy.clone(),
        );
        registry.register(
            "agentnexus_container_memory_bytes",
            "Container memory usage",
            container_memory.clone(),
        );
        registry.register(
            "agentnexus_container_cpu_percent",
            "Container CPU usage",
            container_cpu.clone(),
        );
        registry.register(
            "agentnexus_database_healthy",
            "Database health (1=healthy), as of the last readiness check",
            database_healthy.clone(),
        );
        registry.register(
            "agentnexus_memory_limit_bytes",
            "The memory the runtime may use: its cgroup limit, else the configured limit, else the machine's memory",
            memory_limit_bytes.clone(),
        );
        if shared.is_none() {
            registry.register(
                "agentnexus_execution_queue_depth",
                "Executions waiting for a slot (PENDING)",
                queue_depth.clone(),
            );
        }
        registry.register(
            "agentnexus_websocket_messages_sent",
            "WebSocket messages sent to clients",
            websocket_messages_sent.clone(),
        );
        registry.register(
            "agentnexus_websocket_slow_consumer_disconnects",
            "WebSocket clients closed because they could not keep up",
            websocket_slow_consumers.clone(),
        );
        registry.register(
            "agentnexus_http_requests",
            "HTTP requests by route template and status",
            http_requests.clone(),
        );
        registry.register(
            "agentnexus_http_request_duration_seconds",
            "HTTP request latency by route template",
            http_duration.clone(),
        );
        registry.register(
            "agentnexus_log_lines_ingested",
            "Log lines stored",
            log_lines.clone(),
        );
        registry.register(
            "agentnexus_log_lines_truncated",
            "Log lines cut at the line length cap",
            log_lines_truncated.clone(),
        );
        registry.register(
            "agentnexus_log_lines_dropped",
            "Log lines counted but not stored, over an execution's log budget",
            log_lines_dropped.clone(),
        );
        registry.register(
            "agentnexus_runtime_scheduling_lag_seconds",
            "Delay of a periodic timer task beyond its due time: the async runtime's counterpart of the event loop lag",
            scheduling_lag.clone(),
        );
        registry.register_collector(Box::new(ProcessCollector));
        registry.register_collector(Box::new(AsyncRuntimeCollector));
        let cluster = shared.map(|fenced| ClusterSeries::new(&mut registry, fenced));

        Metrics {
            registry,
            agents,
            store,
            genai,
            forward,
            cluster,
            websocket_connections,
            docker_healthy,
            container_memory,
            container_cpu,
            database_healthy,
            memory_limit_bytes,
            queue_depth,
            websocket_messages_sent,
            websocket_slow_consumers,
            http_requests,
            http_duration,
            log_lines,
            log_lines_truncated,
            log_lines_dropped,
            scheduling_lag,
        }
    }

    pub fn submitted(&self, execution: &Execution) {
        self.agents.submitted(execution);
    }

    pub fn queued(&self) {
        self.queue_depth.inc();
    }

    pub fn dequeued(&self) {
        self.queue_depth.dec();
    }

    /// Counts an execution as running until the returned guard is dropped.
    pub fn running(&self, execution: &Execution) -> RunningGuard {
        self.agents.running(execution)
    }

    /// Records an applied status change; `run_seconds` is how long the agent ran, if it did.
    pub fn transitioned(&self, execution: &Execution, to: Status, run_seconds: Option<f64>) {
        if !to.is_terminal() {
            return;
        }
        self.container_memory.remove(&resource_labels(execution));
        self.container_cpu.remove(&resource_labels(execution));
        self.agents.ended(execution, to, run_seconds);
    }

    /// Creates an agent's series — at zero, except its revenue gauge, which shows
    /// `revenue_wei`, its exact lifetime total — replacing any it had under another name.
    /// `users` are the users that can run it.
    pub fn register_agent(&self, agent: &Agent, users: &[String], revenue_wei: u128) {
        self.agents.define(agent, users, revenue_wei);
    }

    /// Creates an agent's series (at zero) unless it has them: for an agent defined through
    /// another replica of a cluster, whose executions this replica submits or runs.
    pub fn learn_agent(&self, agent: &Agent, users: &[String]) {
        self.agents.learn(agent, users);
    }

    /// Removes the per-execution resource gauges of an execution this replica stopped running,
    /// also when its end was recorded elsewhere (its lease was lost).
    pub fn run_ended(&self, execution: &Execution) {
        self.container_memory.remove(&resource_labels(execution));
        self.container_cpu.remove(&resource_labels(execution));
    }

    /// Removes every series of a deleted agent; later updates about it create none.
    pub fn remove_agent(&self, agent_id: &str) {
        self.agents.undefine(agent_id);
        self.genai.forget_agent(agent_id);
    }

    pub fn resource_sample(&self, execution: &Execution, memory_bytes: u64, cpu_percent: f64) {
        let labels = resource_labels(execution);
        self.container_memory
            .get_or_create(&labels)
            .set(memory_bytes.min(i64::MAX as u64) as i64);
        self.container_cpu.get_or_create(&labels).set(cpu_percent);
    }

    pub fn log_lines(&self, stored: u64, truncated: u64, dropped: u64) {
        self.log_lines.inc_by(stored);
        self.log_lines_truncated.inc_by(truncated);
        self.log_lines_dropped.inc_by(dropped);
    }

    /// Counts a request. Every label value must come from a fixed set: `method` a standard
    /// method or `other`, `route` a route template or `unmatched`, never the raw request.
    pub fn http_request(&self, method: &'static str, route: &str, status: u16, seconds: f64) {
        self.http_requests
            .get_or_create(&HttpLabels {
                method,
                route: route.to_owned(),
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels {
                method,
                route: route.to_owned(),
            })
            .observe(seconds);
    }

    pub fn scheduling_lag(&self, seconds: f64) {
        self.scheduling_lag.observe(seconds);
    }

    /// The Prometheus text format, version 0.0.4.
    pub fn render_text(&self) -> String {
        let mut out = String::with_capacity(64 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The OpenMetrics text format.
    pub fn render_openmetrics(&self) -> String {
        let mut out = String::with_capacity(64 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The same content as `render_text`, as prom-client's `getMetricsAsJSON` shape:
    /// `[{name, help, type, values: [{labels, value, metricName?}]}]`.
    pub fn render_json(&self) -> Value {
        text_to_json(&self.render_text())
    }
}

fn resource_labels(execution: &Execution) -> ResourceLabels {
    ResourceLabels {
        execution_id: execution.execution_id.to_string(),
        agent_id: execution.agent_id.clone(),
    }
}

/// Converts the classic text exposition into JSON. Deriving the JSON from the text keeps the two
/// endpoints in agreement by construction.
fn text_to_json(text: &str) -> Value {
    let mut families: Vec<Map<String, Value>> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let mut family = Map::new();
            family.insert("name".into(), json!(name));
            family.insert("help".into(), json!(unescape_help(help)));
            family.insert("type".into(), json!("untyped"));
            family.insert("values".into(), json!([]));
            families.push(family);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let (Some(family), Some((_, kind))) = (families.last_mut(), rest.split_once(' ')) {
                family.insert("type".into(), json!(kind));
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let Some(family) = families.last_mut() else {
                continue;
            };
            let Some((metric_name, labels, value)) = parse_sample(line) else {
                continue;
            };
            let mut sample = json!({ "labels": labels, "value": value });
            if family["name"] != metric_name.as_str() {
                sample["metricName"] = json!(metric_name);
            }
            family
                .get_mut("values")
                .and_then(Value::as_array_mut)
                .expect("inserted above")
                .push(sample);
        }
    }
    Value::Array(families.into_iter().map(Value::Object).collect())
}

fn unescape_help(help: &str) -> String {
    help.replace("\\n", "\n").replace("\\\\", "\\")
}

/// `name{a="x",b="y"} value` → (name, {a: x, b: y}, value).
fn parse_sample(line: &str) -> Option<(String, Map<String, Value>, Value)> {
    let (head, value) = line.rsplit_once(' ')?;
    let mut labels = Map::new();
    let name = match head.split_once('{') {
        None => head.to_owned(),
        Some((name, rest)) => {
            let mut rest = rest.strip_suffix('}')?;
            while !rest.is_empty() {
                let (key, after) = rest.split_once("=\"")?;
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    let (i, c) = chars.next()?;
                    match c {
                        '\\' => match chars.next()?.1 {
                            'n' => value.push('\n'),
                            other => value.push(other),
                        },
                        '"' => break i,
                        c => value.push(c),
                    }
                };
                labels.insert(key.to_owned(), Value::String(value));
                rest = after[end + 1..].trim_start_matches(',');
            }
            name.to_owned()
        }
    };
    let number = match value {
        "+Inf" => json!("+Inf"),
        "-Inf" => json!("-Inf"),
        "NaN" => json!("NaN"),
        v => json!(v.parse::<f64>().ok()?),
    };
    Some((name, labels, number))
}

/// The standard `process_*` metrics, read at scrape time.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = metrics_process::collector::collect();
        if let Some(v) = m.cpu_seconds_total {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?)?;
        }
        let gauges: [(&str, &str, Option<u64>); 7] = [
            (
                "process_open_fds",
                "Number of open file descriptors",
                m.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                m.max_fds,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                m.virtual_memory_bytes,
            ),
            (
                "process_virtual_memory_max_bytes",
                "Maximum amount of virtual memory available in bytes",
                m.virtual_memory_max_bytes,
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                m.resident_memory_bytes,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                m.start_time_seconds,
            ),
            (
                "process_threads",
                "Number of OS threads in the process",
                m.threads,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let g = ConstGauge::new(v.min(i64::MAX as u64) as i64);
                g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        Ok(())
    }
}

/// Tokio's own figures: the counterpart of the spec's Node.js active handles.
#[derive(Debug)]
struct AsyncRuntimeCollector;

impl Collector for AsyncRuntimeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return Ok(());
        };
        let m = handle.metrics();
        let gauges = [
            (
                "agentnexus_runtime_workers",
                "Worker threads of the async runtime",
                m.num_workers(),
            ),
            (
                "agentnexus_runtime_alive_tasks",
                "Tasks alive in the async runtime",
                m.num_alive_tasks(),
            ),
            (
                "agentnexus_runtime_global_queue_depth",
                "Tasks waiting in the async runtime's global queue",
                m.global_queue_depth(),
            ),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(value as i64);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}
