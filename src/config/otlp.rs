//! The telemetry settings: `[otlp]` (the OTLP endpoint agents export to, its bounds, and where
//! to forward what it receives) and the price table, `[[prices]]`.

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError};
use crate::stream::DEFAULT_MAX_SPANS;
use crate::telemetry::PriceTable;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpConfig {
    /// The base URL agents are given as `OTEL_EXPORTER_OTLP_ENDPOINT`; by default this
    /// server's own address (`http://127.0.0.1:<port>` when bound to every interface). Set it
    /// when agents reach the server by another name, e.g. Docker agents on a bridge network:
    /// `http://host.docker.internal:3001`.
    pub endpoint: Option<String>,
    /// Largest accepted OTLP request body, compressed and once decompressed.
    pub max_body_bytes: usize,
    /// Spans stored per execution; past it one marker line is stored and the rest only counted.
    pub max_spans: u64,
    /// String attribute values longer than this are cut and marked (UTF-8 bytes).
    pub max_attribute_bytes: usize,
    /// Forward what is received, with the execution's attributes added, to this OTLP/HTTP
    /// endpoint (a Collector, Langfuse, Phoenix). Off when absent.
    pub forward_endpoint: Option<String>,
    /// Headers sent with each forwarded request (`{ authorization = "Bearer …" }`).
    pub forward_headers: std::collections::BTreeMap<String, String>,
    /// Requests waiting to be forwarded; past it the newest are dropped and counted.
    pub forward_queue: usize,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            endpoint: None,
            max_body_bytes: 8 * 1024 * 1024,
            max_spans: DEFAULT_MAX_SPANS,
            max_attribute_bytes: 16 * 1024,
            forward_endpoint: None,
            forward_headers: Default::default(),
            forward_queue: 256,
        }
    }
}

pub(super) fn validate(config: &Config) -> Result<(), ConfigError> {
    let invalid = |msg: String| Err(ConfigError::Invalid(msg));
    let otlp = &config.otlp;
    if otlp.max_body_bytes < 1024 {
        return invalid("otlp.max_body_bytes must be at least 1024".into());
    }
    if otlp.max_attribute_bytes < 64 {
        return invalid("otlp.max_attribute_bytes must be at least 64".into());
    }
    if otlp.forward_queue == 0 {
        return invalid("otlp.forward_queue must be at least 1".into());
    }
    for (key, url) in [
        ("otlp.endpoint", &otlp.endpoint),
        ("otlp.forward_endpoint", &otlp.forward_endpoint),
    ] {
        if let Some(url) = url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return invalid(format!(
                "{key} must be an http:// or https:// URL, got {url:?}"
            ));
        }
    }
    PriceTable::new(&config.prices)
        .map(|_| ())
        .map_err(|e| ConfigError::Invalid(format!("prices: {e}")))
}
