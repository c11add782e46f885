//! `/api/executions`: submit, inspect, list, cancel, and read the event stream.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AppState;
use super::error::{ApiError, Json, Query};
use crate::domain::{Event, Execution, Status};
use crate::runtime::Caller;
use crate::store::ExecutionFilter;

/// The body of `POST /api/executions`; `inputData` is the spec system's name for `input`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Submit {
    agent_id: String,
    input: Option<Value>,
    input_data: Option<Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Submitted {
    execution_id: String,
    status: Status,
}

pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<Submit>,
) -> Result<(StatusCode, Json<Submitted>), ApiError> {
    let input = match (body.input, body.input_data) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "give the input as either `input` or `inputData`, not both",
            ));
        }
        (Some(input), None) | (None, Some(input)) => input,
        (None, None) => Value::Object(Default::default()),
    };
    let execution = state.runtime.submit(&caller, &body.agent_id, input).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Submitted {
            execution_id: execution.execution_id,
            status: execution.status,
        }),
    ))
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Execution>, ApiError> {
    Ok(Json(state.runtime.execution(&caller, &id).await?))
}

pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Execution>, ApiError> {
    Ok(Json(state.runtime.cancel(&caller, &id).await?))
}

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 1000;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListQuery {
    agent_id: Option<String>,
    status: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
    #[allow(dead_code)]
    token: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionPage {
    executions: Vec<Execution>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    next_cursor: Option<String>,
}

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
        .map_err(|e| ApiError::bad_request("invalid_query", e))?;
    let before_key = query
        .cursor
        .as_deref()
        .map(|c| c.parse::<i64>().ok().filter(|k| *k > 0))
        .map(|k| k.ok_or_else(|| ApiError::bad_request("invalid_query", "invalid cursor")))
        .transpose()?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    let filter = ExecutionFilter {
        agent_id: query.agent_id,
        status,
        user_id: None,
        before_key,
        limit,
    };
    let executions = state.runtime.executions(&caller, filter).await?;
    let next_cursor = (executions.len() == limit)
        .then(|| executions.last().map(|e| e.key.to_string()))
        .flatten();
    Ok(Json(ExecutionPage {
        executions,
        next_cursor,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    since: Option<u64>,
    limit: Option<usize>,
    #[allow(dead_code)]
    token: Option<String>,
}

const MAX_EVENTS: usize = 10_000;
/// A page holds events whose JSON adds up to at most this many bytes — one larger event comes
/// alone — so that a page of long lines stays small, for the server and for the reader.
const PAGE_BYTES: usize = 1 << 20;

/// One page of an execution's events. A reader that passes `nextSince` as the next `since` until
/// `hasMore` is false has every event stored so far, each once, in order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventPage {
    execution_id: String,
    events: Vec<Event>,
    /// The `since` of the next page: the last seq in this one (or this page's `since`).
    next_since: u64,
    /// Whether more events may be stored after `nextSince`. False: none are, as of this read.
    has_more: bool,
}

pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<EventsQuery>,
) -> Result<Json<EventPage>, ApiError> {
    let limit = query.limit.unwrap_or(1000);
    if limit == 0 || limit > MAX_EVENTS {
        return Err(ApiError::bad_request(
            "invalid_query",
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
