//! The bus's own figures, read at scrape time: `agentnexus_nats_connected` and
//! `agentnexus_nats_dropped_batches_total`, present only when the bus is NATS.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::bus::{Bus, Transport};

pub struct BusCollector(pub Arc<dyn Bus>);

impl std::fmt::Debug for BusCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BusCollector")
    }
}

impl Collector for BusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Transport::Nats { connected, dropped } = self.0.transport() else {
            return Ok(());
        };
        let gauge = ConstGauge::new(i64::from(connected));
        gauge.encode(encoder.encode_descriptor(
            "agentnexus_nats_connected",
            "Connected to the NATS server that carries live events (1=connected)",
            None,
            gauge.metric_type(),
        )?)?;
        let counter = ConstCounter::new(dropped);
        counter.encode(encoder.encode_descriptor(
            "agentnexus_nats_dropped_batches",
            "Committed batches that never reached NATS (their followers read them from the store)",
            None,
            counter.metric_type(),
        )?)
    }
}
