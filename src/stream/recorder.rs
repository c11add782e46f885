//! The write end of an execution's stream: `Recorder` is what an executor writes through (log
//! lines, resource samples) and what the agent's telemetry arrives through (spans, counted in
//! its ledger against its budget), with the execution's log and span budgets applied, on their
//! way to the store.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::LogLimits;
use crate::domain::{
    EventData, EventKind, ExecError, Execution, LogData, LogStream, MetricsData, ProcessGroup,
    SpanData, Usage, now_ms,
};
use crate::metrics::Metrics;
use crate::store::{self, NewEvent, RunStats, Store};
use crate::telemetry::{Ledger, PriceTable};

/// Writes one running execution's events. Shared by the tasks that read the agent's streams.
pub struct Recorder {
    execution: Execution,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    limits: LogLimits,
    started: Instant,
    tally: Mutex<Tally>,
    telemetry: Mutex<Telemetry>,
    /// The budget limit exceeded, once one is; `budget_tripped` is cancelled then.
    breach: OnceLock<ExecError>,
    budget_tripped: CancellationToken,
}

/// The spans of an execution so far, and its ledger.
struct Telemetry {
    max_spans: u64,
    spans: u64,
    dropped: u64,
    ledger: Ledger,
}

/// The default span budget of an execution (see `config::OtlpConfig::max_spans`).
pub const DEFAULT_MAX_SPANS: u64 = 100_000;

#[derive(Default)]
struct Tally {
    lines: u64,
    bytes: u64,
    dropped: u64,
    peak_memory: Option<u64>,
    peak_cpu: Option<f64>,
}

impl Recorder {
    /// A recorder within `limits` (logs) and `max_spans`, pricing reported usage with `prices`.
    pub fn new(
        execution: &Execution,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        limits: LogLimits,
        prices: Arc<PriceTable>,
        max_spans: u64,
    ) -> Recorder {
        Recorder {
            execution: execution.clone(),
            store,
            metrics,
            limits,
            started: Instant::now(),
            tally: Mutex::new(Tally::default()),
            telemetry: Mutex::new(Telemetry {
                max_spans,
                spans: 0,
                dropped: 0,
                ledger: Ledger::new(prices, execution.agent.budget),
            }),
            breach: OnceLock::new(),
            budget_tripped: CancellationToken::new(),
        }
    }

    pub fn execution(&self) -> &Execution {
        &self.execution
    }

    /// Appends spans the agent exported, within the execution's span budget (past it, one
    /// marker line, then spans are only counted), and counts each in the ledger, stored or not:
    /// a span budget does not hide usage from the execution's budget. The first limit exceeded
    /// trips `budget_exceeded`; each limit at 80 % is said once in a `system` line.
    /// Returns the spans stored and those only counted.
    pub async fn spans(&self, spans: Vec<SpanData>) -> store::Result<(u64, u64)> {
        let timestamp = now_ms();
        let agent_id = &self.execution.agent_id;
        let mut events = Vec::with_capacity(spans.len());
        let (stored, dropped, exceeded) = {
            let mut t = self.telemetry.lock().unwrap();
            let (spans_before, dropped_before) = (t.spans, t.dropped);
            for span in spans {
                if let Some(counted) = t.ledger.record(&span) {
                    self.metrics.genai.counted(agent_id, &counted);
                }
                if t.spans >= t.max_spans {
                    if t.dropped == 0 {
                        let marker = format!(
                            "[agentnexus] span budget of this execution exhausted ({} spans); further spans are counted, not stored",
                            t.max_spans
                        );
                        events.push(log_event(LogStream::System, marker, timestamp));
                    }
                    t.dropped += 1;
                    continue;
                }
                t.spans += 1;
                events.push(new_event(
                    EventKind::Span,
                    &EventData::Span(span),
                    timestamp,
                ));
            }
            let check = t.ledger.check();
            for nearing in check.nearing {
                let line = format!(
                    "[agentnexus] budget {} at 80 %: {} used of {}",
                    nearing.limit, nearing.used, nearing.max
                );
                events.push(log_event(LogStream::System, line, timestamp));
            }
            (
                t.spans - spans_before,
                t.dropped - dropped_before,
                check.exceeded,
            )
        };
        self.metrics.genai.spans(stored, dropped);
        if !events.is_empty() {
            self.store
                .append(&self.execution.execution_id, events)
                .await?;
        }
        if let Some((limit, message)) = exceeded {
            self.trip_budget(ExecError::budget_exceeded(limit, message));
        }
        Ok((stored, dropped))
    }

    /// Appends the runtime's root span of the execution, outside its span budget.
    pub async fn root_span(&self, span: SpanData) -> store::Result<()> {
        let event = new_event(EventKind::Span, &EventData::Span(span), now_ms());
        self.store
            .append(&self.execution.execution_id, vec![event])
            .await
    }

    /// Records that a budget limit was exceeded (the first one wins) and wakes whoever waits on
    /// `budget_exceeded`.
    pub fn trip_budget(&self, error: ExecError) {
        if self.breach.set(error).is_ok() {
            self.budget_tripped.cancel();
        }
    }

    /// Completes once a budget limit was exceeded; `breach` says which.
    pub async fn budget_exceeded(&self) {
        self.budget_tripped.cancelled().await
    }

    pub fn breach(&self) -> Option<&ExecError> {
        self.breach.get()
    }

    /// Whether the agent exported any span.
    pub fn has_spans(&self) -> bool {
        let t = self.telemetry.lock().unwrap();
        t.spans + t.dropped > 0
    }

    /// The usage its telemetry reported so far.
    pub fn usage(&self) -> Usage {
        self.telemetry.lock().unwrap().ledger.usage().clone()
    }

    /// Appends a remark of the runtime's own (a `system` line).
    pub async fn system_line(&self, line: String) -> store::Result<()> {
        let event = log_event(LogStream::System, line, now_ms());
        self.store
            .append(&self.execution.execution_id, vec![event])
            .await
    }

    /// Continues the record of an execution that a previous run of the runtime started: the
    /// log budget counts the `stored_lines` already in the store, and `duration` counts from
    /// the original start.
    pub fn resumed(mut self, stored_lines: u64) -> Recorder {
        self.tally.get_mut().unwrap().lines = stored_lines;
        if let Some(started_at) = self.execution.started_at {
            let ran = Duration::from_millis(now_ms().saturating_sub(started_at).max(0) as u64);
            self.started = Instant::now().checked_sub(ran).unwrap_or(self.started);
        }
        self
    }

    /// Appends log lines of one stream, in order, within the execution's log budget: the first
    /// line over budget is replaced by one marker line; later ones are only counted.
    pub async fn logs(&self, stream: LogStream, lines: Vec<String>) -> store::Result<()> {
        let timestamp = now_ms();
        let mut events = Vec::with_capacity(lines.len());
        let offered = lines.len() as u64;
        let dropped = {
            let mut tally = self.tally.lock().unwrap();
            let dropped_before = tally.dropped;
            for line in lines {
                let over = tally.lines >= self.limits.max_lines
                    || tally.bytes + line.len() as u64 > self.limits.max_bytes;
                if over {
                    if tally.dropped == 0 {
                        let marker = format!(
                            "[agentnexus] log budget of this execution exhausted ({} lines, {} bytes); further lines are counted, not stored",
                            self.limits.max_lines, self.limits.max_bytes
                        );
                        events.push(log_event(LogStream::System, marker, timestamp));
                    }
                    tally.dropped += 1;
                    continue;
                }
                tally.lines += 1;
                tally.bytes += line.len() as u64;
                events.push(log_event(stream, line, timestamp));
            }
            tally.dropped - dropped_before
        };
        self.metrics.log_lines(offered - dropped, 0, dropped);
        if events.is_empty() {
            return Ok(());
        }
        self.store
            .append(&self.execution.execution_id, events)
            .await
    }

    /// Counts lines that were cut at the line length cap (reported by the line splitter).
    pub fn truncated_lines(&self, count: u64) {
        self.metrics.log_lines(0, count, 0);
    }

    /// Records where the agent runs, so that a restart after a crash can stop it.
    pub async fn process_started(&self, process: ProcessGroup) -> store::Result<()> {
        self.store
            .record_process(&self.execution.execution_id, process)
            .await
    }

    pub async fn metrics(&self, memory_usage: u64, cpu_usage: f64) -> store::Result<()> {
        {
            let mut tally = self.tally.lock().unwrap();
            tally.peak_memory = tally.peak_memory.max(Some(memory_usage));
            tally.peak_cpu = Some(tally.peak_cpu.map_or(cpu_usage, |p| p.max(cpu_usage)));
        }
        self.metrics
            .resource_sample(&self.execution, memory_usage, cpu_usage);
        let data = EventData::Metrics(MetricsData {
            memory_usage,
            cpu_usage: (cpu_usage * 10.0).round() / 10.0,
            duration: self.started.elapsed().as_millis() as u64,
        });
        let event = new_event(EventKind::Metrics, &data, now_ms());
        self.store
            .append(&self.execution.execution_id, vec![event])
            .await
    }

    pub fn stats(&self) -> RunStats {
        let tally = self.tally.lock().unwrap();
        RunStats {
            peak_memory_bytes: tally.peak_memory,
            peak_cpu_percent: tally.peak_cpu,
            log_lines: tally.lines,
            log_lines_dropped: tally.dropped,
            usage: self.usage(),
        }
    }
}

fn log_event(stream: LogStream, log: String, timestamp: i64) -> NewEvent {
    new_event(
        EventKind::Log,
        &EventData::Log(LogData { log, stream }),
        timestamp,
    )
}

fn new_event(kind: EventKind, data: &EventData, timestamp: i64) -> NewEvent {
    NewEvent {
        kind,
        data: serde_json::value::to_raw_value(data).expect("event data serializes"),
        timestamp,
    }
}
