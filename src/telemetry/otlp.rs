//! OTLP export requests read from their protobuf or JSON encoding (the maintained
//! `opentelemetry-proto` types), and the success answers.
