//! Health probes in the spec's shapes. Liveness depends on nothing but the process. Readiness
//! runs its checks concurrently, each bounded by a timeout, so a hung dependency makes it answer
//! fast rather than hang: database failure → 503 unhealthy; Docker or memory trouble, or NATS
//! away (followers read the store meanwhile) → 200 degraded; shutting down → 503. While the
//! server waits for its database at start, liveness answers 200 and readiness 503.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::AppState;
use super::error::Json;
use crate::bus::Transport;
use crate::docker::DockerHealth;
use crate::domain::{now_ms, rfc3339_ms};
use crate::health::memory_standing;

/// Above this share of its memory limit the process reports itself degraded.
const MEMORY_DEGRADED_PERCENT: f64 = 90.0;

/// The answer of every probe, as `report` and `check` build it.
#[derive(ToSchema)]
#[schema(description = "The answer of every probe")]
#[allow(dead_code)]
struct HealthReport {
    status: HealthStatus,
    #[schema(format = DateTime)]
    timestamp: String,
    /// Seconds since the server started.
    uptime: u64,
    /// By name: `service` (liveness); `database`, `docker`, `memory`, `websocket`, `bus` and,
    /// while shutting down, `server` (readiness).
    checks: BTreeMap<String, HealthCheck>,
}

#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum HealthStatus {
    Healthy,
    Degraded,
    Unhealthy,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct HealthCheck {
    status: CheckStatus,
    message: String,
    /// Figures of the check (`memory`, `websocket`).
    #[schema(value_type = Option<Object>)]
    details: Option<Value>,
}

#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum CheckStatus {
    Ok,
    Error,
}

fn report(state: &AppState, status: &str, checks: Value) -> Value {
    report_since(state.started, status, checks)
}

fn report_since(started: Instant, status: &str, checks: Value) -> Value {
    json!({
        "status": status,
        "timestamp": rfc3339_ms(now_ms()),
        "uptime": started.elapsed().as_secs(),
        "checks": checks,
    })
}

fn check(ok: bool, message: &str) -> Value {
    json!({ "status": if ok { "ok" } else { "error" }, "message": message })
}

/// Liveness: 200 while the process runs. (`/health` is the same probe.)
#[utoipa::path(
    get, path = "/health/live", tag = "health", operation_id = "healthLive", security(()),
    responses((status = 200, description = "The process is running", body = HealthReport)),
)]
pub async fn live(State(state): State<AppState>) -> Json<Value> {
    let checks = json!({ "service": check(true, "Service is running") });
    Json(report(&state, "healthy", checks))
}

/// Liveness while the server waits for its database at start: the process runs.
pub async fn starting_live(State(started): State<Instant>) -> Json<Value> {
    let checks = json!({ "service": check(true, "Service is running") });
    Json(report_since(started, "healthy", checks))
}

/// Readiness while the server waits for its database at start: not ready.
pub async fn starting_ready(State(started): State<Instant>) -> (StatusCode, Json<Value>) {
    let checks = json!({
        "database": check(false, "Database connection failed (waiting for it at start)"),
    });
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(report_since(started, "unhealthy", checks)),
    )
}

/// Readiness: the database, Docker, memory, the WebSocket server and the event bus, each
/// within a timeout.
#[utoipa::path(
    get, path = "/health/ready", tag = "health", operation_id = "healthReady", security(()),
    responses(
        (status = 200, description = "`healthy`, or `degraded` (Docker or memory trouble, NATS away)", body = HealthReport),
        (status = 503, description = "`unhealthy`: the database failed, or shutdown has begun", body = HealthReport),
    ),
)]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let timeout = Duration::from_millis(state.health.check_timeout_ms);
    let (database, docker) = tokio::join!(database(&state, timeout), docker(&state, timeout));
    let memory = memory(&state);
    let websocket = websocket(&state);
    let bus = bus(&state);

    let mut checks = json!({
        "database": database.0,
        "docker": docker.0,
        "memory": memory.0,
        "websocket": websocket.0,
        "bus": bus.0,
    });
    let draining = state.draining.is_cancelled();
    if draining {
        checks["server"] = check(false, "Server is shutting down");
    }
    let (code, status) = if !database.1 || draining {
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
    } else if !(docker.1 && memory.1 && websocket.1 && bus.1) {
        (StatusCode::OK, "degraded")
    } else {
        (StatusCode::OK, "healthy")
    };
    (code, Json(report(&state, status, checks)))
}

/// A failure message, with the internal detail only when configured to show it.
fn failure(state: &AppState, message: &str, detail: impl std::fmt::Display) -> Value {
    if state.health.expose_details {
        check(false, &format!("{message}: {detail}"))
    } else {
        check(false, message)
    }
}

async fn database(state: &AppState, timeout: Duration) -> (Value, bool) {
    let metrics = state.runtime.metrics();
    let result = match tokio::time::timeout(timeout, state.runtime.ping_store()).await {
        Ok(Ok(())) => (check(true, "Database connection healthy"), true),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: database check failed");
            (failure(state, "Database connection failed", e), false)
        }
        Err(_) => {
            tracing::warn!(?timeout, "readiness: database check timed out");
            (
                check(false, "Database connection failed (timed out)"),
                false,
            )
        }
    };
    metrics.database_healthy.set(i64::from(result.1));
    result
}

async fn docker(state: &AppState, timeout: Duration) -> (Value, bool) {
    match state.runtime.docker().check(timeout).await {
        DockerHealth::Healthy => (check(true, "Docker daemon available"), true),
        DockerHealth::NotConfigured => (check(true, "Docker not configured"), true),
        DockerHealth::Unavailable(why) => {
            tracing::warn!(reason = %why, "readiness: Docker daemon unavailable");
            (failure(state, "Docker daemon unavailable", why), false)
        }
    }
}

fn memory(state: &AppState) -> (Value, bool) {
    let Some(m) = memory_standing(state.health.memory_limit_bytes) else {
        return (check(false, "Memory usage unknown"), false);
    };
    let percent = m.used_percent();
    let ok = percent < MEMORY_DEGRADED_PERCENT;
    let mib = |b: u64| format!("{:.2}", b as f64 / (1024.0 * 1024.0));
    let mut value = check(
        ok,
        if ok {
            "Memory usage normal"
        } else {
            "Memory usage high"
        },
    );
    // The spec's field names, measured honestly: resident memory against the real limit.
    value["details"] = json!({
        "heapUsedPercent": format!("{percent:.2}"),
        "heapUsedMB": mib(m.resident_bytes),
        "heapTotalMB": mib(m.limit_bytes),
        "residentBytes": m.resident_bytes,
        "limitBytes": m.limit_bytes,
        "limitSource": m.limit_source,
    });
    (value, ok)
}

fn websocket(state: &AppState) -> (Value, bool) {
    let connections = state.runtime.metrics().websocket_connections.get();
    let mut value = check(true, "WebSocket server operational");
    value["details"] = json!({ "activeConnections": connections });
    (value, true)
}

/// The event bus. NATS away costs latency, not data (followers read the store), so it degrades
/// readiness without failing it.
fn bus(state: &AppState) -> (Value, bool) {
    match state.runtime.bus().transport() {
        Transport::InProcess => (check(true, "In-process event bus"), true),
        Transport::Nats {
            connected: true, ..
        } => (check(true, "NATS connected"), true),
        Transport::Nats {
            connected: false, ..
        } => (
            check(
                false,
                "NATS disconnected: live events are read from the database",
            ),
            false,
        ),
    }
}
