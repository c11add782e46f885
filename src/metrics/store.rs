//! The store's own figures: `agentnexus_store_size_bytes`, the database's size as last
//! measured by the retention task, and `agentnexus_retention_deleted_executions_total`, the
//! executions this server's retention deleted (each deleted by one server only, so the sum
//! across replicas is the cluster's total).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Default)]
pub struct StoreSeries {
    size_bytes: Gauge,
    retention_deleted: Counter,
}

impl StoreSeries {
    pub(super) fn new(registry: &mut Registry) -> StoreSeries {
        let series = StoreSeries::default();
        registry.register(
            "agentnexus_store_size_bytes",
            "Size of the database on disk in bytes (SQLite: file plus WAL; PostgreSQL: pg_database_size), as last measured",
            series.size_bytes.clone(),
        );
        registry.register(
            "agentnexus_retention_deleted_executions",
            "Finished executions deleted by this server's retention, with their events",
            series.retention_deleted.clone(),
        );
        series
    }

    pub fn measured_size(&self, bytes: u64) {
        self.size_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn retention_deleted(&self, executions: u64) {
        self.retention_deleted.inc_by(executions);
    }
}
