//! Forwarding what the OTLP intake stored to another OTLP/HTTP endpoint (a Collector,
//! Langfuse, Phoenix), with the execution's resource attributes added, through a bounded queue
//! and a background task that sends up to `CONCURRENT_SENDS` at once. Forwarding never holds
//! an export back: a full queue drops the newest request (counted), and a slow or failing
//! endpoint only delays the queue.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use tokio::sync::{Semaphore, mpsc};

use super::otlp::{LogsRequest, MetricsRequest, TracesRequest};
use super::{AGENT_ID_ATTRIBUTE, EXECUTION_ID_ATTRIBUTE};
use crate::config::OtlpConfig;
use crate::domain::ExecutionId;
use crate::metrics::Metrics;

/// How long one forwarded request may take, answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests in flight at once: enough to keep up with a busy intake over a link with some
/// latency, few enough to be gentle with the endpoint. A request waits in the queue until one
/// of them is free.
pub const CONCURRENT_SENDS: usize = 4;

/// Failures are logged at most this often (all are counted).
const WARN_EVERY: Duration = Duration::from_secs(60);

/// One export request as it was received, of any signal.
#[derive(Debug, Clone)]
pub enum Export {
    Traces(TracesRequest),
    Logs(LogsRequest),
    Metrics(MetricsRequest),
}

impl Export {
    /// The signal's name, as in the URL path and the metrics' `signal` label.
    pub fn signal(&self) -> &'static str {
        match self {
            Export::Traces(_) => "traces",
            Export::Logs(_) => "logs",
            Export::Metrics(_) => "metrics",
        }
    }

    /// Sets the execution's attributes on every resource of the request (a resource without
    /// attributes gets one); values the agent set under these keys are replaced.
    pub fn add_resource_attributes(&mut self, attributes: &[KeyValue]) {
        let resources: Vec<&mut Option<Resource>> = match self {
            Export::Traces(r) => r
                .resource_spans
                .iter_mut()
                .map(|r| &mut r.resource)
                .collect(),
            Export::Logs(r) => r
                .resource_logs
                .iter_mut()
                .map(|r| &mut r.resource)
                .collect(),
            Export::Metrics(r) => r
                .resource_metrics
                .iter_mut()
                .map(|r| &mut r.resource)
                .collect(),
        };
        for resource in resources {
            let resource = resource.get_or_insert_with(Resource::default);
            resource
                .attributes
                .retain(|kv| !attributes.iter().any(|a| a.key == kv.key));
            resource.attributes.extend_from_slice(attributes);
        }
    }

    fn encode_to_vec(&self) -> Vec<u8> {
        match self {
            Export::Traces(r) => r.encode_to_vec(),
            Export::Logs(r) => r.encode_to_vec(),
            Export::Metrics(r) => r.encode_to_vec(),
        }
    }
}

/// The resource attributes that name an execution and its agent.
pub fn execution_attributes(execution: &ExecutionId, agent_id: &str) -> Vec<KeyValue> {
    let text = |key: &str, value: String| KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..Default::default()
    };
    vec![
        text(EXECUTION_ID_ATTRIBUTE, execution.to_string()),
        text(AGENT_ID_ATTRIBUTE, agent_id.to_owned()),
    ]
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("otlp.forward_headers: {0:?} is not a valid header name")]
    HeaderName(String),
    #[error("otlp.forward_headers: the value of {0:?} is not a valid header value")]
    HeaderValue(String),
    #[error("the forwarding HTTP client cannot be built: {0}")]
    Client(#[from] reqwest::Error),
}

/// The sending end of the forwarding queue.
pub struct Forwarder {
    queue: mpsc::Sender<Queued>,
    metrics: Arc<Metrics>,
}

struct Queued {
    export: Export,
    attributes: Vec<KeyValue>,
}

impl Forwarder {
    /// Starts forwarding to `otlp.forward_endpoint`; `None` when it is not set.
    pub fn start(
        config: &OtlpConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Forwarder>, ForwardError> {
        let Some(endpoint) = &config.forward_endpoint else {
            return Ok(None);
        };
        let sender = Sender {
            base: endpoint.trim_end_matches('/').to_owned(),
            client: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .default_headers(headers(&config.forward_headers)?)
                .build()?,
            metrics: metrics.clone(),
            last_warned: Mutex::new(None),
        };
        let (queue, received) = mpsc::channel(config.forward_queue);
        tokio::spawn(Arc::new(sender).run(received));
        tracing::info!(endpoint = %endpoint, "forwarding OTLP exports");
        Ok(Some(Forwarder { queue, metrics }))
    }

    /// Queues an export of `execution`, or drops it (counted) if the queue is full.
    pub fn offer(&self, export: Export, execution: &ExecutionId, agent_id: &str) {
        let signal = export.signal();
        let queued = Queued {
            export,
            attributes: execution_attributes(execution, agent_id),
        };
        if self.queue.try_send(queued).is_err() {
            self.metrics.forward.dropped(signal);
        }
    }
}

fn headers(
    configured: &std::collections::BTreeMap<String, String>,
) -> Result<HeaderMap, ForwardError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    for (name, value) in configured {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ForwardError::HeaderName(name.clone()))?;
        let mut value = HeaderValue::from_str(value)
            .map_err(|_| ForwardError::HeaderValue(name.to_string()))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    Ok(headers)
}

/// The background task's state: sends queued exports, `CONCURRENT_SENDS` at most at once.
struct Sender {
    base: String,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    last_warned: Mutex<Option<Instant>>,
}

impl Sender {
    /// Takes a request from the queue only once a send is free, so that a stalled endpoint
    /// leaves the queue to fill (and drop) rather than piling up requests here.
    async fn run(self: Arc<Self>, mut received: mpsc::Receiver<Queued>) {
        let sends = Arc::new(Semaphore::new(CONCURRENT_SENDS));
        loop {
            let Ok(free) = sends.clone().acquire_owned().await else {
                return;
            };
            let Some(queued) = received.recv().await else {
                return;
            };
            let sender = self.clone();
            tokio::spawn(async move {
                sender.forward(queued).await;
                drop(free);
            });
        }
    }

    async fn forward(&self, queued: Queued) {
        let Queued {
            mut export,
            attributes,
        } = queued;
        export.add_resource_attributes(&attributes);
        let signal = export.signal();
        match self.send(&export).await {
            Ok(()) => self.metrics.forward.forwarded(signal),
            Err(why) => {
                self.metrics.forward.failed(signal);
                self.warn(signal, &why);
            }
        }
    }

    async fn send(&self, export: &Export) -> Result<(), String> {
        let url = format!("{}/v1/{}", self.base, export.signal());
        let response = self
            .client
            .post(&url)
            .body(export.encode_to_vec())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("{url} answered {}", response.status()))
        }
    }

    fn warn(&self, signal: &str, why: &str) {
        {
            let mut last = self.last_warned.lock().unwrap();
            if last.is_some_and(|t| t.elapsed() < WARN_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        tracing::warn!(
            signal,
            error = why,
            "OTLP export not forwarded (failures are counted in agentnexus_otlp_forward_failed_total; logged at most once a minute)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::ResourceSpans;

    #[test]
    fn every_resource_gets_the_execution_attributes_replacing_the_agents_own() {
        let own = KeyValue {
            key: "agentnexus.agent.id".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("forged".into())),
            }),
            ..Default::default()
        };
        let mut export = Export::Traces(TracesRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![own],
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ResourceSpans::default(),
            ],
        });
        let id = ExecutionId::generate();
        export.add_resource_attributes(&execution_attributes(&id, "summarizer"));
        let Export::Traces(request) = export else {
            unreachable!()
        };
        for resource in &request.resource_spans {
            let attributes = &resource.resource.as_ref().unwrap().attributes;
            assert_eq!(attributes, &execution_attributes(&id, "summarizer"));
        }
    }
}
