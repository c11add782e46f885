//! AgentNexus runtime: executes AI agents as local processes and makes every execution
//! observable. See ARCHITECTURE.md for the map.

pub mod api;
pub mod bus;
pub mod config;
pub mod docker;
pub mod domain;
pub mod executor;
pub mod health;
pub mod metrics;
pub mod runtime;
pub mod server;
pub mod site;
pub mod store;
pub mod stream;
pub mod telemetry;
