//! Seeing inside the agent: what its OpenTelemetry export says, made into the execution's own
//! record. `otlp` reads OTLP export requests (protobuf or JSON) and turns their spans into
//! `span` events (`spans`); `prices` is the price table; `ledger` counts an execution's tokens,
//! calls and cost from its spans and checks them against its budget; `forward` sends what was
//! received on to another OTLP endpoint, if configured.

pub mod forward;
pub mod ledger;
pub mod otlp;
pub mod prices;
pub mod spans;

pub use ledger::{BudgetCheck, Counted, Ledger, Nearing};

/// The resource attribute naming the execution, as its agent is given it
/// (`OTEL_RESOURCE_ATTRIBUTES`), its root span carries it, and forwarding sets it.
pub const EXECUTION_ID_ATTRIBUTE: &str = "agentnexus.execution.id";
/// The resource attribute naming the agent, likewise.
pub const AGENT_ID_ATTRIBUTE: &str = "agentnexus.agent.id";
pub use prices::{Price, PriceTable};
