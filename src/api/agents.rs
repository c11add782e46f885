//! `/api/agents`: define, list, inspect and remove agents; an agent's exact revenue.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorBody, Json, Path};
use crate::domain::{Agent, AgentId, Budget, Runtime, Wei, json_schema_document};
use crate::runtime::Caller;

/// The body of `POST /api/agents`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentSpec {
    /// Generated (`agent_<ulid>`) when absent.
    #[schema(value_type = Option<AgentId>)]
    id: Option<String>,
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    name: String,
    price_wei: Wei,
    /// The server's `default_timeout_secs` when absent.
    #[serde(default, deserialize_with = "crate::domain::whole::deserialize_option")]
    #[schema(minimum = 1, maximum = 604800)]
    timeout_secs: Option<u64>,
    #[schema(schema_with = json_schema_document, nullable)]
    input_schema: Option<Value>,
    runtime: Runtime,
    /// Limits on what one execution may use; none when absent.
    #[serde(default)]
    budget: Budget,
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
            budget: self.budget,
        }
    }
}

/// Define an agent (admins only: an agent is a command the server will run).
#[utoipa::path(
    post, path = "/api/agents", tag = "agents", operation_id = "createAgent",
    request_body = AgentSpec,
    responses(
        (status = 201, description = "The agent as stored", body = Agent),
        (status = 400, description = "`invalid_json`, `invalid_request`: the body is not a valid agent", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden`: only an admin may define agents", body = ErrorBody),
        (status = 409, description = "`conflict`: an agent with this id exists", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body must be `application/json`", body = ErrorBody),
        (status = 503, description = "`store_unavailable`: the store cannot be reached, or has not been able to write for longer than its outage limit", body = ErrorBody),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(spec): Json<AgentSpec>,
) -> Result<(StatusCode, Json<Agent>), ApiError> {
    let agent = spec.into_agent(state.runtime.default_timeout_secs());
    let agent = state.runtime.create_agent(&caller, agent).await?;
    Ok((StatusCode::CREATED, Json(agent)))
}

#[derive(Serialize, ToSchema)]
pub struct AgentList {
    agents: Vec<Agent>,
}

/// Every agent, from the configuration file and defined over the API.
#[utoipa::path(
    get, path = "/api/agents", tag = "agents", operation_id = "listAgents",
    responses(
        (status = 200, description = "The agents", body = AgentList),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    ),
)]
pub async fn list(State(state): State<AppState>, _: Caller) -> Result<Json<AgentList>, ApiError> {
    let agents = state.runtime.agents().await?;
    Ok(Json(AgentList { agents }))
}

/// One agent.
#[utoipa::path(
    get, path = "/api/agents/{id}", tag = "agents", operation_id = "getAgent",
    params(("id" = AgentId, Path, description = "The agent's id")),
    responses(
        (status = 200, description = "The agent", body = Agent),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`agent_not_found`", body = ErrorBody),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    _: Caller,
    Path(id): Path<String>,
) -> Result<Json<Agent>, ApiError> {
    Ok(Json(state.runtime.agent(&id).await?))
}

/// Remove an agent defined over the API (admins only).
#[utoipa::path(
    delete, path = "/api/agents/{id}", tag = "agents", operation_id = "deleteAgent",
    params(("id" = AgentId, Path, description = "The agent's id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden`: only an admin may remove agents", body = ErrorBody),
        (status = 404, description = "`agent_not_found`", body = ErrorBody),
        (status = 409, description = "`conflict`: the agent is defined in the configuration file", body = ErrorBody),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.runtime.delete_agent(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Revenue {
    #[schema(value_type = AgentId)]
    agent_id: String,
    /// The exact sum of the prices of the agent's completed executions (also of those since
    /// deleted by retention).
    revenue_wei: Wei,
}

/// An agent's lifetime revenue, exact.
#[utoipa::path(
    get, path = "/api/agents/{id}/revenue", tag = "agents", operation_id = "getAgentRevenue",
    params(("id" = AgentId, Path, description = "The agent's id")),
    responses(
        (status = 200, description = "The revenue", body = Revenue),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`agent_not_found`", body = ErrorBody),
    ),
)]
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
