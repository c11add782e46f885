//! Health probes in the spec's shapes. Liveness never depends on anything but the process;
//! readiness checks the database, with a timeout so a hung dependency cannot hang the probe.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;
use super::error::Json;
use crate::domain::{now_ms, rfc3339_ms};

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

fn report(state: &AppState, status: &str, checks: Value) -> Value {
    json!({
        "status": status,
        "timestamp": rfc3339_ms(now_ms()),
        "uptime": state.started.elapsed().as_secs(),
        "checks": checks,
    })
}

pub async fn live(State(state): State<AppState>) -> Json<Value> {
    let checks = json!({ "service": { "status": "ok", "message": "Service is running" } });
    Json(report(&state, "healthy", checks))
}

pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let database = match tokio::time::timeout(CHECK_TIMEOUT, state.runtime.ping_store()).await {
        Ok(Ok(())) => json!({ "status": "ok", "message": "Database connection healthy" }),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: database check failed");
            json!({ "status": "error", "message": "Database connection failed" })
        }
        Err(_) => json!({ "status": "error", "message": "Database check timed out" }),
    };
    let healthy = database["status"] == "ok";
    let (code, status) = if healthy {
        (StatusCode::OK, "healthy")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
    };
    (
        code,
        Json(report(&state, status, json!({ "database": database }))),
    )
}
