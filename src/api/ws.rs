//! `/ws`: live execution streams over WebSocket, in the spec's message shapes plus additive
//! extensions (`seq`, `since`, `subscribed`, `error`, JSON `ping`/`pong`).
//!
//! A connection is one task and nothing more: it reads the client's frames, drives the
//! followers of its subscriptions (`events::Follow`), writes its outbox to the socket and keeps
//! the heartbeat, all from one `poll` (`Connection::poll_step`). No channel, no task per
//! subscription: an idle subscribed connection costs this task's state, tungstenite's buffers and
//! one small boxed receive per subscription.
//!
//! The outbox is bounded in bytes: followers are polled only while it has room, so a client that
//! reads slowly makes its followers fall behind the live feed, and they catch up from the store
//! later — the server's memory does not grow. A client whose outbox stays full past the
//! slow-consumer timeout is closed with code 4008; it resumes with `since` and loses nothing.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use axum::http::header::{HOST, ORIGIN};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{Sink, SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::AppState;
use super::error::{ApiError, ErrorBody, Upgrade};
use crate::config::WebSocketConfig;
use crate::domain::{Event, now_ms};
use crate::events::Follow;
use crate::runtime::{self, Caller};

/// Close codes, beyond the standard ones (1001 going away, 1009 too big).
pub const CLOSE_HEARTBEAT_TIMEOUT: u16 = 4000;
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_TOO_BIG: u16 = 1009;
/// How long a close frame may take to reach a client before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections open now, for the connection limit.
#[derive(Default)]
pub struct Connections(AtomicUsize);

impl Connections {
    /// A slot under `limit`, held until the returned guard is dropped — also when an upgrade
    /// fails halfway and the connection never runs.
    fn claim(self: &Arc<Self>, limit: usize) -> Option<Slot> {
        let open = self.0.fetch_add(1, Ordering::SeqCst);
        let slot = Slot(self.clone());
        (open < limit).then_some(slot)
    }
}

struct Slot(Arc<Connections>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::SeqCst);
    }
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
    if !origin_allowed(&headers, config) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            "this Origin may not open a WebSocket here",
        )
        .into_response();
    }
    let Some(slot) = state.connections.claim(config.max_connections) else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            "the server has reached its WebSocket connection limit",
        )
        .into_response();
    };
    upgrade
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

/// Non-browser clients send no Origin. Browsers may connect from the server's own origin or
/// from one on the allow-list.
fn origin_allowed(headers: &HeaderMap, config: &WebSocketConfig) -> bool {
    let Some(origin) = headers.get(ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    if config.allowed_origins.iter().any(|o| o == origin) {
        return true;
    }
    let host = headers.get(HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'));
    host.is_some() && origin_host == host
}

/// Messages formatted in one poll of a connection before it yields to other tasks, so that a
/// long replay to a fast client does not hold a worker thread.
const MESSAGES_PER_POLL: usize = 1024;

/// What a connection sends, bounded in bytes. Replies to the client's own messages are always
/// queued (the rate limit bounds them); events only while there is room.
struct Outbox {
    queue: VecDeque<Utf8Bytes>,
    bytes: usize,
    capacity: usize,
    /// A protocol ping goes out before the next message.
    ping: bool,
    /// Written to the socket but not flushed yet.
    unflushed: bool,
}

impl Outbox {
    fn has_room(&self) -> bool {
        self.bytes < self.capacity
    }

    fn push(&mut self, text: String) {
        self.bytes += text.len();
        self.queue.push_back(text.into());
    }

    fn push_json(&mut self, value: Value) {
        self.push(value.to_string());
    }

    fn error(&mut self, execution_id: Option<&str>, code: &str, message: &str) {
        let mut value = json!({
            "type": "error",
            "data": { "code": code, "message": message },
            "timestamp": now_ms(),
        });
        if let Some(id) = execution_id {
            value["executionId"] = json!(id);
        }
        self.push_json(value);
    }

    /// Moves queued messages into the socket and flushes them. Returns how many messages went
    /// out; `Err` when the socket is gone.
    fn write(&mut self, socket: &mut WebSocket, cx: &mut Context<'_>) -> Result<u64, ()> {
        let mut sent = 0;
        while self.ping || !self.queue.is_empty() {
            match Pin::new(&mut *socket).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Err(()),
                Poll::Pending => break,
            }
            let message = if std::mem::take(&mut self.ping) {
                Message::Ping(Default::default())
            } else {
                let text = self.queue.pop_front().expect("checked above");
                self.bytes -= text.len();
                sent += 1;
                Message::Text(text)
            };
            Pin::new(&mut *socket).start_send(message).map_err(drop)?;
            self.unflushed = true;
        }
        if self.queue.is_empty() {
            // An idle connection keeps no buffer (after a burst, a large one).
            self.queue = VecDeque::new();
        }
        if self.unflushed {
            match Pin::new(&mut *socket).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(_)) => return Err(()),
                Poll::Pending => {}
            }
        }
        Ok(sent)
    }
}

/// An event as a WebSocket message. Built by hand: `data` is already JSON text, and the id has
/// only `[a-z0-9_]`, so nothing needs escaping.
fn event_message(execution_id: &str, event: &Event) -> String {
    format!(
        r#"{{"type":"{}","executionId":"{}","seq":{},"data":{},"timestamp":{}}}"#,
        event.kind.as_str(),
        execution_id,
        event.seq,
        event.data.get(),
        event.timestamp
    )
}

/// A token bucket for inbound messages.
struct RateLimit {
    tokens: f64,
    per_sec: f64,
    burst: f64,
    at: Instant,
    last_complaint: Option<Instant>,
}

impl RateLimit {
    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.per_sec)
            .min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether to tell the client, at most once a second.
    fn complain(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last_complaint
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return false;
        }
        self.last_complaint = Some(now);
        true
    }
}

/// One subscription of a connection.
struct Follower {
    execution_id: Box<str>,
    follow: Follow,
}

/// Why the connection ends, and the close frame that says so (`None`: the client left).
struct Ending(u16, &'static str);

/// What the connection's task does next.
enum Step {
    /// A message from the client.
    Text(Utf8Bytes),
    Binary,
    End(Option<Ending>),
}

/// One client connection: all of its state, driven by its one task (`run`). Every byte here is
/// paid once per open connection.
struct Connection {
    socket: WebSocket,
    state: AppState,
    caller: Caller,
    followers: Vec<Follower>,
    /// The follower polled first next time, so that a busy execution cannot starve the others.
    turn: usize,
    outbox: Outbox,
    limit: RateLimit,
    /// Fires at the next ping, or at the slow-consumer deadline if that comes first.
    timer: Pin<Box<Sleep>>,
    next_ping: Instant,
    last_inbound: Instant,
    /// Since when the outbox has been full without the client reading anything.
    full_since: Option<Instant>,
    closing: Pin<Box<WaitForCancellationFutureOwned>>,
    _slot: Slot,
}

impl Connection {
    fn new(socket: WebSocket, state: AppState, caller: Caller, slot: Slot) -> Connection {
        let config = &state.websocket;
        let now = Instant::now();
        let next_ping = now + Duration::from_millis(config.heartbeat_interval_ms);
        Connection {
            socket,
            caller,
            followers: Vec::new(),
            turn: 0,
            outbox: Outbox {
                queue: VecDeque::new(),
                bytes: 0,
                capacity: config.send_queue_bytes,
                ping: false,
                unflushed: false,
            },
            limit: RateLimit {
                tokens: config.rate_limit_burst as f64,
                per_sec: config.rate_limit_per_sec as f64,
                burst: config.rate_limit_burst as f64,
                at: now,
                last_complaint: None,
            },
            timer: Box::pin(tokio::time::sleep_until(next_ping)),
            next_ping,
            last_inbound: now,
            full_since: None,
            closing: Box::pin(state.closing.clone().cancelled_owned()),
            state,
            _slot: slot,
        }
    }

    // Not an `async fn`: that would keep the argument and its moved copy side by side in the
    // future (1,464 bytes instead of 776), nearly doubling what every idle connection costs.
    #[allow(clippy::manual_async_fn)]
    fn run(mut self) -> impl Future<Output = ()> + Send {
        async move {
            let metrics = self.state.runtime.metrics().clone();
            metrics.websocket_connections.inc();
            let ending = loop {
                match std::future::poll_fn(|cx| self.poll_step(cx)).await {
                    // Boxed: client messages are rare, and an idle connection should not carry
                    // the space of this future in its own.
                    Step::Text(text) => Box::pin(self.handle(&text)).await,
                    Step::Binary => self.reject_binary(),
                    Step::End(ending) => break ending,
                }
            };
            Box::pin(self.close(ending)).await;
            metrics.websocket_connections.dec();
        }
    }

    /// Does everything that can be done now without waiting: the shutdown signal, the timer,
    /// the followers into the outbox, the outbox into the socket, the client's frames. Returns
    /// at a client message to handle or at the end of the connection.
    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        loop {
            if self.closing.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Step::End(Some(Ending(
                    CLOSE_GOING_AWAY,
                    "server shutting down",
                ))));
            }
            // A fired timer moves the deadline on (or ends the connection); it is re-armed below.
            if self.timer.as_mut().poll(cx).is_ready() {
                if let Some(ending) = self.on_timer() {
                    return Poll::Ready(Step::End(Some(ending)));
                }
            }
            // Outbound before inbound: a client that keeps sending must not stall its streams.
            let Ok(more) = self.pump(cx) else {
                return Poll::Ready(Step::End(None));
            };
            if self.outbox.has_room() {
                self.full_since = None;
            } else if self.full_since.is_none() {
                self.full_since = Some(Instant::now());
            }
            if let Poll::Ready(step) = self.poll_inbound(cx) {
                return Poll::Ready(step);
            }
            let deadline = self.deadline();
            if self.timer.deadline() != deadline {
                self.timer.as_mut().reset(deadline);
                continue;
            }
            if more {
                // Yield to other tasks, then go on.
                cx.waker().wake_by_ref();
            }
            return Poll::Pending;
        }
    }

    /// Moves events from the followers through the outbox into the socket until nothing more
    /// can move (`Ok(false)`), or until `MESSAGES_PER_POLL` have moved (`Ok(true)`: there may be
    /// more). `Err` when the socket is gone.
    fn pump(&mut self, cx: &mut Context<'_>) -> Result<bool, ()> {
        let mut budget = MESSAGES_PER_POLL;
        loop {
            budget -= self.fill(cx, budget);
            let sent = self.outbox.write(&mut self.socket, cx)?;
            if sent == 0 {
                return Ok(false);
            }
            // The client is reading: a full outbox counts as slow only without progress.
            self.full_since = None;
            let metrics = self.state.runtime.metrics();
            metrics.websocket_messages_sent.inc_by(sent);
            if budget == 0 {
                return Ok(true);
            }
        }
    }

    /// The heartbeat, and the slow-consumer check.
    fn on_timer(&mut self) -> Option<Ending> {
        let now = Instant::now();
        let config = &self.state.websocket;
        if self.full_since.is_some_and(|since| {
            now >= since + Duration::from_millis(config.slow_consumer_timeout_ms)
        }) {
            self.state.runtime.metrics().websocket_slow_consumers.inc();
            return Some(Ending(
                CLOSE_SLOW_CONSUMER,
                "slow consumer: resubscribe with since",
            ));
        }
        if now >= self.next_ping {
            if now >= self.last_inbound + Duration::from_millis(config.idle_timeout_ms) {
                return Some(Ending(CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout"));
            }
            self.outbox.ping = true;
            self.next_ping = now + Duration::from_millis(config.heartbeat_interval_ms);
        }
        None
    }

    fn deadline(&self) -> Instant {
        let slow = Duration::from_millis(self.state.websocket.slow_consumer_timeout_ms);
        self.full_since
            .map_or(self.next_ping, |since| self.next_ping.min(since + slow))
    }

    /// Reads the client's frames until one needs handling, or until none is ready.
    fn poll_inbound(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        loop {
            let Poll::Ready(frame) = self.socket.poll_next_unpin(cx) else {
                return Poll::Pending;
            };
            self.last_inbound = Instant::now();
            match frame {
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Step::End(None)),
                Some(Err(e)) => {
                    // Oversized frames and protocol violations end here.
                    let too_big = matches!(
                        e.into_inner().downcast_ref::<tungstenite::Error>(),
                        Some(tungstenite::Error::Capacity(_))
                    );
                    let ending = too_big.then_some(Ending(CLOSE_TOO_BIG, "message too big"));
                    return Poll::Ready(Step::End(ending));
                }
                Some(Ok(Message::Text(text))) => return Poll::Ready(Step::Text(text)),
                Some(Ok(Message::Binary(_))) => return Poll::Ready(Step::Binary),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            }
        }
    }

    /// Moves events from the followers into the outbox while it has room, round robin, at most
    /// `budget` of them. Returns how many it moved.
    fn fill(&mut self, cx: &mut Context<'_>, budget: usize) -> usize {
        let mut moved = 0;
        let mut idle = 0;
        while moved < budget && idle < self.followers.len() && self.outbox.has_room() {
            let index = self.turn % self.followers.len();
            let follower = &mut self.followers[index];
            match follower.follow.poll_next(cx) {
                Poll::Pending => {
                    idle += 1;
                    self.turn = index + 1;
                    continue;
                }
                Poll::Ready(Ok(Some(event))) => {
                    let message = event_message(&follower.execution_id, &event);
                    self.outbox.push(message);
                    moved += 1;
                    self.turn = index + 1;
                }
                Poll::Ready(Ok(None)) => {
                    self.followers.swap_remove(index);
                }
                Poll::Ready(Err(e)) => {
                    let id = follower.execution_id.clone();
                    tracing::error!(execution = %id, error = %e, "reading an execution's events failed");
                    self.outbox
                        .error(Some(&id), "internal", "reading the event stream failed");
                    self.followers.swap_remove(index);
                }
            }
            idle = 0;
        }
        moved
    }

    /// Whether a client message is within the rate limit; tells the client when it is not.
    fn admit(&mut self) -> bool {
        if self.limit.allow() {
            return true;
        }
        if self.limit.complain() {
            self.outbox
                .error(None, "rate_limited", "too many messages; slow down");
        }
        false
    }

    fn reject_binary(&mut self) {
        if self.admit() {
            let message = "binary frames are not supported; send JSON text";
            self.outbox.error(None, "bad_request", message);
        }
    }

    /// Handles one client text message.
    async fn handle(&mut self, text: &str) {
        if !self.admit() {
            return;
        }
        let message: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                let message = format!("invalid JSON: {e}");
                return self.outbox.error(None, "bad_request", &message);
            }
        };
        let Some(kind) = message.get("type").and_then(Value::as_str) else {
            return self.outbox.error(
                None,
                "bad_request",
                "expected a JSON object with a string `type`",
            );
        };
        match kind {
            "ping" => self
                .outbox
                .push_json(json!({ "type": "pong", "timestamp": now_ms() })),
            "subscribe" | "unsubscribe" => {
                let Some(id) = message.get("executionId").and_then(Value::as_str) else {
                    return self.outbox.error(
                        None,
                        "bad_request",
                        "`executionId` must be a string",
                    );
                };
                if kind == "unsubscribe" {
                    self.followers.retain(|f| &*f.execution_id != id);
                    let ack =
                        json!({ "type": "unsubscribed", "executionId": id, "timestamp": now_ms() });
                    return self.outbox.push_json(ack);
                }
                let since = match message.get("since") {
                    None | Some(Value::Null) => 0,
                    Some(v) => match v.as_u64() {
                        Some(n) => n,
                        None => {
                            return self.outbox.error(
                                Some(id),
                                "bad_request",
                                "`since` must be a non-negative integer (the last seq seen)",
                            );
                        }
                    },
                };
                self.subscribe(id, since).await
            }
            other => {
                let message = format!("unknown message type {other:?}");
                self.outbox.error(None, "bad_request", &message)
            }
        }
    }

    async fn subscribe(&mut self, id: &str, since: u64) {
        if self.followers.iter().any(|f| &*f.execution_id == id) {
            // Already following: every event goes out once per connection.
            return;
        }
        if self.followers.len() >= self.state.websocket.max_subscriptions {
            return self.outbox.error(
                Some(id),
                "too_many_subscriptions",
                "unsubscribe from something first",
            );
        }
        let follow = match self.state.runtime.follow(&self.caller, id, since).await {
            Ok(follow) => follow,
            Err(e) => {
                let code = match e {
                    runtime::Error::InvalidId(..) => "bad_request",
                    runtime::Error::ExecutionNotFound(_) => "not_found",
                    _ => "internal",
                };
                let message = if code == "internal" {
                    tracing::error!(error = %e, "cannot follow an execution");
                    "internal error".to_owned()
                } else {
                    e.to_string()
                };
                return self.outbox.error(Some(id), code, &message);
            }
        };
        self.outbox.push_json(json!({
            "type": "subscribed",
            "executionId": id,
            "data": { "status": follow.start_status, "lastSeq": follow.start_last_seq },
            "timestamp": now_ms(),
        }));
        // Grown one at a time: most connections follow one or two executions.
        self.followers.reserve_exact(1);
        self.followers.push(Follower {
            execution_id: id.into(),
            follow,
        });
    }

    /// Ends the connection: drops what is still queued, sends the close frame if the server is
    /// the one closing, and completes the closing handshake, all within `CLOSE_TIMEOUT`.
    async fn close(mut self, ending: Option<Ending>) {
        self.followers.clear();
        let socket = &mut self.socket;
        let handshake = async {
            let Some(Ending(code, reason)) = ending else {
                // The client closed (or vanished): send tungstenite's queued close reply.
                let _ = socket.close().await;
                return;
            };
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            if socket.send(Message::Close(Some(frame))).await.is_err() {
                return;
            }
            // Keep reading (and discarding) until the client's close frame: dropping the socket
            // with unread input would make the kernel reset the connection, and the client would
            // lose what it had not read yet, close frame included.
            while let Some(Ok(frame)) = socket.next().await {
                if matches!(frame, Message::Close(_)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, handshake).await;
    }
}
