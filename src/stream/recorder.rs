//! The write end of an execution's stream: `Recorder` is what an executor writes through (log
//! lines, resource samples), with the execution's log budget applied, on their way to the store.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::LogLimits;
use crate::domain::{
    EventData, EventKind, Execution, LogData, LogStream, MetricsData, ProcessGroup, now_ms,
};
use crate::metrics::Metrics;
use crate::store::{self, NewEvent, RunStats, Store};

/// Writes one running execution's events. Shared by the tasks that read the agent's streams.
pub struct Recorder {
    execution: Execution,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    limits: LogLimits,
    started: Instant,
    tally: Mutex<Tally>,
}

#[derive(Default)]
struct Tally {
    lines: u64,
    bytes: u64,
    dropped: u64,
    peak_memory: Option<u64>,
    peak_cpu: Option<f64>,
}

impl Recorder {
    pub fn new(
        execution: &Execution,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        limits: LogLimits,
    ) -> Recorder {
        Recorder {
            execution: execution.clone(),
            store,
            metrics,
            limits,
            started: Instant::now(),
            tally: Mutex::new(Tally::default()),
        }
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
