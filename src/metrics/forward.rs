//! The forwarding of OTLP exports to another endpoint: requests sent, dropped because the queue
//! was full, and failed, by signal. Three signals, so at most nine series.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignalLabels {
    signal: &'static str,
}

pub struct ForwardSeries {
    forwarded: Family<SignalLabels, Counter>,
    dropped: Family<SignalLabels, Counter>,
    failed: Family<SignalLabels, Counter>,
}

impl ForwardSeries {
    pub(super) fn new(registry: &mut Registry) -> ForwardSeries {
        let series = ForwardSeries {
            forwarded: Family::default(),
            dropped: Family::default(),
            failed: Family::default(),
        };
        registry.register(
            "agentnexus_otlp_forwarded",
            "OTLP export requests forwarded to otlp.forward_endpoint, by signal",
            series.forwarded.clone(),
        );
        registry.register(
            "agentnexus_otlp_forward_dropped",
            "OTLP export requests not forwarded because the forwarding queue was full, by signal",
            series.dropped.clone(),
        );
        registry.register(
            "agentnexus_otlp_forward_failed",
            "OTLP export requests the forwarding endpoint did not accept (error, timeout or non-2xx answer), by signal",
            series.failed.clone(),
        );
        series
    }

    fn of(family: &Family<SignalLabels, Counter>, signal: &'static str) {
        family.get_or_create(&SignalLabels { signal }).inc();
    }

    pub fn forwarded(&self, signal: &'static str) {
        Self::of(&self.forwarded, signal);
    }

    pub fn dropped(&self, signal: &'static str) {
        Self::of(&self.dropped, signal);
    }

    pub fn failed(&self, signal: &'static str) {
        Self::of(&self.failed, signal);
    }
}
