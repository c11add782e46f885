//! `/ws`: live execution streams over WebSocket, in the spec's message shapes plus additive
//! extensions (`seq`, `since`, `subscribed`, `error`, JSON `ping`/`pong`), typed in `protocol`.
//!
//! A connection is one task and nothing more (`connection`): it reads the client's frames, drives
//! the followers of its subscriptions (`stream::Follow`), writes its outbox to the socket and
//! keeps the heartbeat, all from one `poll`. No channel, no task per subscription: an idle
//! subscribed connection costs this task's state, tungstenite's buffers and one small boxed
//! receive per subscription.
//!
//! The outbox is bounded in bytes (`outbox`): followers are polled only while it has room, so a
//! client that reads slowly makes its followers fall behind the live feed, and they catch up from
//! the store later — the server's memory does not grow. A client whose outbox stays full past the
//! slow-consumer timeout is closed with code 4008; it resumes with `since` and loses nothing.
//!
//! On shutdown every connection delivers what was committed, then closes with 1001; the server
//! waits for that (`Connections::closed`).

mod connection;
mod outbox;
pub mod protocol;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::AppState;
use super::error::{ApiError, ErrorBody, ErrorCode, Upgrade};
use crate::runtime::Caller;
use connection::Connection;

pub use protocol::{CLOSE_HEARTBEAT_TIMEOUT, CLOSE_SLOW_CONSUMER};

/// How long a connection may take, once the server is closing, to deliver the events committed
/// so far before it says goodbye anyway (a client that does not read resumes with `since`).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a close frame may take to reach a client before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections open now: their count, for the connection limit, and their tasks, so that
/// shutdown can wait until each has said goodbye.
#[derive(Default)]
pub struct Connections {
    open: AtomicUsize,
    tasks: TaskTracker,
}

impl Connections {
    /// A slot under `limit`, held until the returned guard is dropped — also when an upgrade
    /// fails halfway and the connection never runs.
    fn claim(self: &Arc<Self>, limit: usize) -> Option<Slot> {
        let open = self.open.fetch_add(1, Ordering::SeqCst);
        let slot = Slot {
            connections: self.clone(),
            _task: self.tasks.token(),
        };
        (open < limit).then_some(slot)
    }

    /// Waits until every connection has ended. Once the server is closing, each delivers what
    /// was committed and closes with 1001 within `DRAIN_TIMEOUT` and `CLOSE_TIMEOUT`; the wait
    /// is bounded by them too, in case a task cannot run to its end.
    pub async fn closed(&self) {
        self.tasks.close();
        let bound = DRAIN_TIMEOUT + CLOSE_TIMEOUT + Duration::from_secs(1);
        if tokio::time::timeout(bound, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.open.load(Ordering::SeqCst),
                "WebSocket connections still open after the close timeout"
            );
        }
    }
}

struct Slot {
    connections: Arc<Connections>,
    /// Counts the connection's task as one of `Connections::tasks` while the slot lives.
    _task: TaskTrackerToken,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The subprotocol a browser offers to name this protocol; the server selects it.
pub const SUBPROTOCOL: &str = "agentnexus";
/// The prefix of the subprotocol that carries an API key: `agentnexus.bearer.` and the key's
/// UTF-8 bytes in hex (a subprotocol is an HTTP token: no spaces, no `=`, no `/`).
pub const BEARER_SUBPROTOCOL_PREFIX: &str = "agentnexus.bearer.";

/// The API key a browser offered as a subprotocol (`Sec-WebSocket-Protocol`), if any.
pub fn subprotocol_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(BEARER_SUBPROTOCOL_PREFIX))
        .and_then(|h| hex::decode(h).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
}

/// The live stream: a WebSocket upgrade (RFC 6455). The messages are described in the README.
#[utoipa::path(
    get, path = "/ws", tag = "websocket", operation_id = "websocket",
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "`invalid_request`: not a valid WebSocket upgrade", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden_origin`: a browser `Origin` that may not connect", body = ErrorBody),
        (status = 426, description = "`invalid_request`: the connection cannot be upgraded", body = ErrorBody),
        (status = 503, description = "`too_many_connections`", body = ErrorBody),
    ),
)]
pub async fn upgrade(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Upgrade(upgrade): Upgrade,
) -> Response {
    let config = &state.websocket;
    if !state.sites.origin_allowed(&headers) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::ForbiddenOrigin,
            "this Origin may not open a WebSocket here",
        )
        .into_response();
    }
    let Some(slot) = state.connections.claim(config.max_connections) else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::TooManyConnections,
            "the server has reached its WebSocket connection limit",
        )
        .into_response();
    };
    upgrade
        // A browser that offers subprotocols needs one of them selected, or it fails the
        // connection; the key-carrying one is never echoed.
        .protocols([SUBPROTOCOL])
        // Small buffers: an idle connection should cost a few KiB, not the default 128 KiB.
        // Client messages are small (a subscribe is under 128 bytes); a larger one grows it.
        .read_buffer_size(256)
        .write_buffer_size(16 * 1024)
        // No cap of its own: the connection waits for `poll_ready`, so this buffer never holds
        // more than the size above plus one message, and the outbox bounds the rest. A cap
        // would refuse a message larger than itself (a long line of control characters, escaped)
        // and drop the connection on every retry.
        .max_write_buffer_size(usize::MAX)
        .max_message_size(config.max_message_bytes)
        .max_frame_size(config.max_message_bytes)
        .on_upgrade(move |socket| Connection::new(socket, state, caller, slot).run())
}
