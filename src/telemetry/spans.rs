//! OTLP spans made into `span` events: ids as hex, times in milliseconds, attributes keyed by
//! their OpenTelemetry names with string values cut at a cap and marked.
