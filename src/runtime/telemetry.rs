//! The runtime's side of agents' telemetry: for each run, a bearer token that lets the agent
//! export to its own execution and no other, the trace root the runtime owns, and the
//! environment that tells the agent's OpenTelemetry SDK where to export. What arrives with a
//! token goes into that execution's `Recorder`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::KeyDigest;
use crate::domain::{
    EpochMs, ExecutionId, SpanData, SpanKind, SpanStatus, SpanStatusCode, Status, now_ms,
};
use crate::store::StoreError;
use crate::stream::Recorder;
use crate::telemetry::otlp::{LogsRequest, TracesRequest};
use crate::telemetry::{AGENT_ID_ATTRIBUTE, EXECUTION_ID_ATTRIBUTE, spans};

use super::Runtime;

/// Where agents export, and the bounds of what they export.
pub(super) struct TelemetryIntake {
    /// The base URL given as `OTEL_EXPORTER_OTLP_ENDPOINT`.
    endpoint: String,
    max_attribute_bytes: usize,
    /// Running executions by the digest of their token (digests, so that a lookup's timing
    /// tells nothing about a real token).
    sinks: Mutex<HashMap<KeyDigest, Arc<Sink>>>,
}

/// One running execution's intake.
pub struct Sink {
    recorder: Arc<Recorder>,
    root: TraceRoot,
    /// False once the run is over. An export holds it read while its events are queued, so
    /// closing waits for those under way: each export answered OK is in the stream and in the
    /// final usage, or is refused.
    open: tokio::sync::RwLock<bool>,
}

/// Why an export was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The run ended while the export was on its way: its token opens nothing any more.
    #[error("the execution has ended")]
    Ended,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The runtime's root span of one execution: every span its agent exports without a parent
/// hangs from it. Its own `span` event is recorded when the run ends.
#[derive(Debug, Clone)]
pub struct TraceRoot {
    pub trace_id: String,
    pub span_id: String,
    pub started: EpochMs,
}

/// Holds a run's token valid; dropping it ends that.
pub(super) struct Registration<'a> {
    intake: &'a TelemetryIntake,
    digest: KeyDigest,
    sink: Arc<Sink>,
}

impl Registration<'_> {
    /// Ends the run's intake once the exports under way are queued, before its usage is read
    /// and its end recorded; returns its trace root.
    pub(super) async fn close(self) -> TraceRoot {
        self.intake.sinks.lock().unwrap().remove(&self.digest);
        *self.sink.open.write().await = false;
        self.sink.root.clone()
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.intake.sinks.lock().unwrap().remove(&self.digest);
    }
}

/// What one export did: spans stored and those counted but not stored (span budget).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Exported {
    pub stored: u64,
    pub rejected: u64,
}

impl TelemetryIntake {
    pub(super) fn new(endpoint: String, max_attribute_bytes: usize) -> TelemetryIntake {
        TelemetryIntake {
            endpoint,
            max_attribute_bytes,
            sinks: Mutex::new(HashMap::new()),
        }
    }

    /// Opens the intake of a run: a new token and trace root, valid until the registration is
    /// dropped, and the environment variables that point the agent's exporter at it.
    pub(super) fn register(
        &self,
        recorder: &Arc<Recorder>,
    ) -> (Registration<'_>, Vec<(String, String)>) {
        let token = random_hex(32);
        let root = TraceRoot {
            trace_id: random_hex(16),
            span_id: random_hex(8),
            started: now_ms(),
        };
        let digest = KeyDigest::of(&token);
        let sink = Arc::new(Sink {
            recorder: recorder.clone(),
            root,
            open: tokio::sync::RwLock::new(true),
        });
        self.sinks.lock().unwrap().insert(digest, sink.clone());
        let execution = recorder.execution();
        // Defaults the agent's own environment may change: spans every second rather than the
        // SDKs' 5 s (they are shown live, and a budget is checked as they arrive), and its name.
        let defaults = [
            ("OTEL_BSP_SCHEDULE_DELAY", "1000".to_owned()),
            ("OTEL_SERVICE_NAME", execution.agent_id.clone()),
        ];
        let own = execution.agent.runtime.env();
        let mut env: Vec<(String, String)> = defaults
            .into_iter()
            .filter(|(key, _)| !own.contains_key(*key))
            .map(|(key, value)| (key.to_owned(), value))
            .collect();
        // Where it exports and as what: the runtime's alone.
        env.extend([
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), self.endpoint.clone()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/protobuf".into()),
            (
                "OTEL_EXPORTER_OTLP_HEADERS".into(),
                format!("authorization=Bearer%20{token}"),
            ),
            (
                "OTEL_RESOURCE_ATTRIBUTES".into(),
                format!(
                    "{EXECUTION_ID_ATTRIBUTE}={},{AGENT_ID_ATTRIBUTE}={}",
                    execution.execution_id, execution.agent_id
                ),
            ),
            (
                "TRACEPARENT".into(),
                format!("00-{}-{}-01", sink.root.trace_id, sink.root.span_id),
            ),
        ]);
        let registration = Registration {
            intake: self,
            digest,
            sink,
        };
        (registration, env)
    }

    /// The intake a bearer token opens, if it belongs to a running execution.
    pub fn sink(&self, token: &str) -> Option<Arc<Sink>> {
        self.sinks
            .lock()
            .unwrap()
            .get(&KeyDigest::of(token))
            .cloned()
    }

    pub(super) fn usage_of(&self, id: &ExecutionId) -> Option<crate::domain::Usage> {
        let sinks = self.sinks.lock().unwrap();
        sinks
            .values()
            .find(|s| &s.recorder.execution().execution_id == id)
            .map(|s| s.recorder.usage())
    }
}

impl Sink {
    /// Stores the spans of an export in the execution's stream (durably, before returning).
    pub async fn traces(
        &self,
        request: TracesRequest,
        intake: &Runtime,
    ) -> Result<Exported, ExportError> {
        let open = self.open.read().await;
        if !*open {
            return Err(ExportError::Ended);
        }
        let converted = spans::spans(
            request,
            &self.root.span_id,
            intake.telemetry.max_attribute_bytes,
        );
        let metrics = &intake.metrics.genai;
        metrics.attributes_truncated(converted.truncated_attributes);
        let (stored, rejected) = self.recorder.spans(converted.spans).await?;
        drop(open);
        // `append` only queues: the export is answered once its spans are committed.
        intake.store.flush().await?;
        Ok(Exported { stored, rejected })
    }

    /// Stores the log records of an export as `otlp` lines of the execution's log.
    pub async fn logs(&self, request: LogsRequest, intake: &Runtime) -> Result<(), ExportError> {
        let open = self.open.read().await;
        if !*open {
            return Err(ExportError::Ended);
        }
        let max = intake.telemetry.max_attribute_bytes;
        self.recorder
            .logs(
                crate::domain::LogStream::Otlp,
                spans::log_lines(request, max),
            )
            .await?;
        drop(open);
        Ok(intake.store.flush().await?)
    }

    pub fn execution_id(&self) -> &ExecutionId {
        &self.recorder.execution().execution_id
    }

    pub fn agent_id(&self) -> &str {
        &self.recorder.execution().agent_id
    }
}

impl Runtime {
    /// The intake a bearer token opens (`None`: no running execution has this token).
    pub fn telemetry_sink(&self, token: &str) -> Option<Arc<Sink>> {
        self.telemetry.sink(token)
    }

    /// Records the execution's root span, from its start to now, before its final status, if
    /// the agent exported spans (one that did not pays nothing, not even this event).
    pub(super) async fn record_root_span(
        &self,
        recorder: &Recorder,
        root: &TraceRoot,
        ended: Status,
    ) {
        if !recorder.has_spans() {
            return;
        }
        let execution = recorder.execution();
        let mut attributes = serde_json::Map::new();
        attributes.insert(
            EXECUTION_ID_ATTRIBUTE.into(),
            execution.execution_id.to_string().into(),
        );
        attributes.insert(AGENT_ID_ATTRIBUTE.into(), execution.agent_id.clone().into());
        attributes.insert(
            "gen_ai.agent.name".into(),
            execution.agent_name.clone().into(),
        );
        let span = SpanData {
            trace_id: root.trace_id.clone(),
            span_id: root.span_id.clone(),
            parent_span_id: None,
            name: format!("execution {}", execution.agent_id),
            kind: SpanKind::Internal,
            start_time_ms: root.started,
            end_time_ms: now_ms(),
            status: SpanStatus {
                code: if ended == Status::Failed {
                    SpanStatusCode::Error
                } else {
                    SpanStatusCode::Unset
                },
                message: None,
            },
            attributes,
        };
        if let Err(e) = recorder.root_span(span).await {
            tracing::debug!(execution = %execution.execution_id, error = %e, "root span not recorded");
        }
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the operating system's random source");
    hex::encode(buf)
}
