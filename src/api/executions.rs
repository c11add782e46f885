//! `/api/executions`: submit, inspect, list, cancel, and read the event stream.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::schema::{Object, ObjectBuilder, Type};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ErrorBody, ErrorCode, Json, Path, Query};
use crate::domain::{AgentId, Budget, EXECUTION_ID_PATTERN, Event, Execution, ExecutionId, Status};
use crate::runtime::Caller;
use crate::store::ExecutionFilter;

/// The body of `POST /api/executions`; `inputData` is the spec system's name for `input`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Submit {
    agent_id: String,
    input: Option<Value>,
    input_data: Option<Value>,
    #[serde(default)]
    budget: Option<Budget>,
}

/// `Submit` as documented: the input under one of its two names, or none (`{}`).
#[derive(ToSchema)]
#[serde(untagged)]
#[schema(as = Submit, description = "The agent and its input, as `input` or `inputData` (not both)")]
#[allow(dead_code)]
enum SubmitBody {
    Input(SubmitInput),
    InputData(SubmitInputData),
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
struct SubmitInput {
    #[schema(value_type = AgentId)]
    agent_id: String,
    /// The agent's input (`{}` when absent); checked against the agent's `inputSchema`.
    input: Option<Value>,
    /// Tightens the agent's budget for this execution (a looser limit is refused).
    budget: Option<Budget>,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
struct SubmitInputData {
    #[schema(value_type = AgentId)]
    agent_id: String,
    /// `input` under the spec system's name.
    input_data: Value,
    /// Tightens the agent's budget for this execution (a looser limit is refused).
    budget: Option<Budget>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Submitted {
    execution_id: ExecutionId,
    status: Status,
}

/// Queue an execution of an agent; it runs when a slot is free (first come, first served).
#[utoipa::path(
    post, path = "/api/executions", tag = "executions", operation_id = "submitExecution",
    request_body = SubmitBody,
    responses(
        (status = 202, description = "Queued (`PENDING`)", body = Submitted),
        (status = 400, description = "`invalid_json`, `invalid_request`, `invalid_id`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`agent_not_found`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body must be `application/json`", body = ErrorBody),
        (status = 422, description = "`input_rejected`: the input does not satisfy the agent's `inputSchema`", body = ErrorBody),
        (status = 503, description = "`shutting_down`, `store_unavailable` (the store cannot be reached, or has not been able to write for longer than its outage limit)", body = ErrorBody),
    ),
)]
pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<Submit>,
) -> Result<(StatusCode, Json<Submitted>), ApiError> {
    let input = match (body.input, body.input_data) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidRequest,
                "give the input as either `input` or `inputData`, not both",
            ));
        }
        (Some(input), None) | (None, Some(input)) => input,
        (None, None) => Value::Object(Default::default()),
    };
    let execution = state
        .runtime
        .submit(&caller, &body.agent_id, input, body.budget.as_ref())
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Submitted {
            execution_id: execution.execution_id,
            status: execution.status,
        }),
    ))
}

/// One execution: status, output, timings, peaks. Someone else's is not found.
#[utoipa::path(
    get, path = "/api/executions/{id}", tag = "executions", operation_id = "getExecution",
    params(("id" = ExecutionId, Path, description = "The execution's id")),
    responses(
        (status = 200, description = "The execution", body = Execution),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`execution_not_found`", body = ErrorBody),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Execution>, ApiError> {
    Ok(Json(state.runtime.execution(&caller, &id).await?))
}

/// Stop a queued or running execution; answers once it has ended.
#[utoipa::path(
    post, path = "/api/executions/{id}/cancel", tag = "executions", operation_id = "cancelExecution",
    params(("id" = ExecutionId, Path, description = "The execution's id")),
    responses(
        (status = 200, description = "The execution, ended", body = Execution),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`execution_not_found`", body = ErrorBody),
        (status = 409, description = "`conflict`: it had already ended", body = ErrorBody),
        (status = 503, description = "`shutting_down`", body = ErrorBody),
    ),
)]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Execution>, ApiError> {
    Ok(Json(state.runtime.cancel(&caller, &id).await?))
}

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 1000;

#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this agent's executions.
    agent_id: Option<String>,
    /// Only executions in this status (`PENDING`, `RUNNING`, `COMPLETED`, `FAILED`,
    /// `CANCELLED`; any case).
    #[param(schema_with = status_filter)]
    status: Option<String>,
    /// `nextCursor` of the previous page: an opaque position in the listing, passed back as
    /// given.
    #[param(schema_with = cursor)]
    cursor: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// The API key, for clients that cannot send a header (see the security schemes).
    #[allow(dead_code)]
    #[param(ignore)]
    token: Option<String>,
}

/// A status name in any case, as `Status::from_str` reads it.
fn status_filter() -> Object {
    let any_case = |name: &str| -> String {
        name.chars()
            .map(|c| format!("[{}{}]", c.to_ascii_uppercase(), c.to_ascii_lowercase()))
            .collect()
    };
    let names: Vec<String> = Status::ALL.iter().map(|s| any_case(s.as_str())).collect();
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(format!("^(?:{})$", names.join("|"))))
        .build()
}

/// A cursor names the position after the last execution of a page (today that execution's id;
/// clients pass it back as given, so it may change).
fn cursor() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(EXECUTION_ID_PATTERN))
        .build()
}

/// The listing resumes after the execution a cursor names: ids are compared as the store holds
/// them, lowercase.
fn parse_cursor(cursor: &str) -> Option<ExecutionId> {
    let id = ExecutionId::parse(cursor)?;
    ExecutionId::parse(&id.as_str().to_ascii_lowercase())
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionPage {
    executions: Vec<Execution>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    next_cursor: Option<String>,
}

/// Executions, newest first, a page at a time (a user sees their own; an admin, all).
#[utoipa::path(
    get, path = "/api/executions", tag = "executions", operation_id = "listExecutions",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of executions", body = ExecutionPage),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> Result<Json<ExecutionPage>, ApiError> {
    let status = query
        .status
        .as_deref()
        .map(str::parse::<Status>)
        .transpose()
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidQuery, e))?;
    let before = query
        .cursor
        .as_deref()
        .map(|c| {
            parse_cursor(c)
                .ok_or_else(|| ApiError::bad_request(ErrorCode::InvalidQuery, "invalid cursor"))
        })
        .transpose()?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidQuery,
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    let filter = ExecutionFilter {
        agent_id: query.agent_id,
        status,
        user_id: None,
        before,
        limit,
    };
    let executions = state.runtime.executions(&caller, filter).await?;
    let next_cursor = (executions.len() == limit)
        .then(|| executions.last().map(|e| e.execution_id.to_string()))
        .flatten();
    Ok(Json(ExecutionPage {
        executions,
        next_cursor,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events with a greater `seq` (the last one seen); 0 when absent.
    #[param(schema_with = since)]
    since: Option<u64>,
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
    /// The API key, for clients that cannot send a header (see the security schemes).
    #[allow(dead_code)]
    #[param(ignore)]
    token: Option<String>,
}

/// Any 64-bit unsigned integer: no `int64` format, which would cap it at `i64::MAX`.
fn since() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(0))
        .maximum(Some(u64::MAX))
        .build()
}

const MAX_EVENTS: usize = 10_000;
/// A page holds events whose JSON adds up to at most this many bytes — one larger event comes
/// alone — so that a page of long lines stays small, for the server and for the reader.
const PAGE_BYTES: usize = 1 << 20;

/// One page of an execution's events. A reader that passes `nextSince` as the next `since` until
/// `hasMore` is false has every event stored so far, each once, in order.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventPage {
    #[schema(value_type = ExecutionId)]
    execution_id: String,
    /// In `seq` order, without gaps.
    events: Vec<Event>,
    /// The `since` of the next page: the last seq in this one (or this page's `since`).
    next_since: u64,
    /// Whether more events may be stored after `nextSince`. False: none are, as of this read.
    has_more: bool,
}

/// An execution's event stream from `since` on, stored events only (follow it live over `/ws`).
#[utoipa::path(
    get, path = "/api/executions/{id}/events", tag = "executions", operation_id = "listExecutionEvents",
    params(("id" = ExecutionId, Path, description = "The execution's id"), EventsQuery),
    responses(
        (status = 200, description = "A page of events", body = EventPage),
        (status = 400, description = "`invalid_id`, `invalid_query`, `since_beyond_end` (a `since` above the last seq)", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`execution_not_found`", body = ErrorBody),
    ),
)]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<EventsQuery>,
) -> Result<Json<EventPage>, ApiError> {
    let limit = query.limit.unwrap_or(1000);
    if limit == 0 || limit > MAX_EVENTS {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidQuery,
            format!("limit must be between 1 and {MAX_EVENTS}"),
        ));
    }
    let since = query.since.unwrap_or(0);
    // One more than asked for tells whether there are more.
    let mut events = state
        .runtime
        .events(&caller, &id, since, limit + 1, PAGE_BYTES)
        .await?;
    let read = events.len();
    let read_bytes: usize = events.iter().map(|e| e.data.get().len()).sum();
    events.truncate(within_budget(&events[..read.min(limit)]));
    // The store stops reading once the data reaches the budget, so a page it cut there may be
    // followed by more even when nothing was left out here.
    let has_more = events.len() < read || read_bytes >= PAGE_BYTES;
    Ok(Json(EventPage {
        execution_id: id,
        next_since: events.last().map_or(since, |e| e.seq),
        events,
        has_more,
    }))
}

/// How many of `events`, from the first, fit in `PAGE_BYTES` of JSON; at least one, so that a
/// reader always moves on.
fn within_budget(events: &[Event]) -> usize {
    let mut bytes = 0;
    for (count, event) in events.iter().enumerate() {
        bytes += json_len(event) + 1;
        if bytes > PAGE_BYTES && count > 0 {
            return count;
        }
    }
    events.len()
}

/// The length of an event's JSON, as the page will carry it.
fn json_len(event: &Event) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, event).expect("an event serializes");
    count.0
}
