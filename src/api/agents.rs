//! `/api/agents`: define, list, inspect and remove agents; an agent's exact revenue.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AppState;
use super::error::{ApiError, Json};
use crate::domain::{Agent, Runtime, Wei};
use crate::runtime::Caller;

/// The body of `POST /api/agents`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentSpec {
    id: Option<String>,
    name: String,
    price_wei: Wei,
    timeout_secs: Option<u64>,
    input_schema: Option<Value>,
    runtime: Runtime,
}

impl AgentSpec {
    /// The agent this body defines: a generated id when it names none, the server's default
    /// timeout when it sets none. Not validated yet (`config::validate_agent` does that).
    pub fn into_agent(self, default_timeout_secs: u64) -> Agent {
        Agent {
            id: self.id.unwrap_or_else(|| {
                format!("agent_{}", ulid::Ulid::new().to_string().to_lowercase())
            }),
            name: self.name,
            price_wei: self.price_wei,
            timeout_secs: self.timeout_secs.unwrap_or(default_timeout_secs),
            input_schema: self.input_schema,
            runtime: self.runtime,
        }
    }
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(spec): Json<AgentSpec>,
) -> Result<(StatusCode, Json<Agent>), ApiError> {
    let agent = spec.into_agent(state.runtime.default_timeout_secs());
    let agent = state.runtime.create_agent(&caller, agent).await?;
    Ok((StatusCode::CREATED, Json(agent)))
}

#[derive(Serialize)]
pub struct AgentList {
    agents: Vec<Agent>,
}

pub async fn list(State(state): State<AppState>, _: Caller) -> Result<Json<AgentList>, ApiError> {
    let agents = state.runtime.agents().await?;
    Ok(Json(AgentList { agents }))
}

pub async fn get(
    State(state): State<AppState>,
    _: Caller,
    Path(id): Path<String>,
) -> Result<Json<Agent>, ApiError> {
    Ok(Json(state.runtime.agent(&id).await?))
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.runtime.delete_agent(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Revenue {
    agent_id: String,
    revenue_wei: Wei,
}

pub async fn revenue(
    State(state): State<AppState>,
    _: Caller,
    Path(id): Path<String>,
) -> Result<Json<Revenue>, ApiError> {
    let revenue_wei = state.runtime.revenue(&id).await?;
    Ok(Json(Revenue {
        agent_id: id,
        revenue_wei,
    }))
}
