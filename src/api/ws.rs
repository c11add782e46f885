//! `/ws`: live execution streams over WebSocket, in the spec's message shapes plus additive
//! extensions (`seq`, `since`, `subscribed`, `error`, JSON `ping`/`pong`).
//!
//! Per connection: the main task reads frames and runs the heartbeat; one writer task owns the
//! socket's sending half; one follower task per subscription turns an execution's event stream
//! into messages. Everything a connection sends goes through its outbox, bounded in bytes: a
//! follower waits while the client reads slowly (and catches up from the store later, so no
//! memory grows), and a client whose outbox stays full past the slow-consumer timeout is closed
//! with code 4008. It resumes with `since` and loses nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::header::{HOST, ORIGIN};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite;
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::error::ApiError;
use crate::config::WebSocketConfig;
use crate::domain::{Event, now_ms};
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

pub async fn upgrade(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
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
        .read_buffer_size(512)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(config.max_message_bytes.max(64 * 1024) * 2)
        .max_message_size(config.max_message_bytes)
        .max_frame_size(config.max_message_bytes)
        .on_upgrade(move |socket| async move {
            let metrics = state.runtime.metrics().clone();
            metrics.websocket_connections.inc();
            Connection::new(state.clone(), caller).run(socket).await;
            metrics.websocket_connections.dec();
            drop(slot);
        })
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

/// What the writer task sends.
enum Outgoing {
    /// A message and the queue bytes it holds.
    Text(Utf8Bytes, u32),
    Ping,
}

/// The bounded-by-bytes queue to a connection's writer.
#[derive(Clone)]
struct Outbox {
    queue: mpsc::UnboundedSender<Outgoing>,
    room: Arc<Semaphore>,
    capacity: u32,
    slow_after: Duration,
    /// Cancelled when the client proved too slow.
    slow: CancellationToken,
}

#[derive(Debug)]
struct Gone;

impl Outbox {
    async fn send(&self, text: String) -> Result<(), Gone> {
        let bytes = u32::try_from(text.len())
            .unwrap_or(u32::MAX)
            .min(self.capacity);
        match tokio::time::timeout(self.slow_after, self.room.acquire_many(bytes)).await {
            Ok(Ok(permit)) => permit.forget(),
            Ok(Err(_)) => return Err(Gone),
            Err(_) => {
                self.slow.cancel();
                return Err(Gone);
            }
        }
        self.queue
            .send(Outgoing::Text(text.into(), bytes))
            .map_err(|_| Gone)
    }

    async fn send_json(&self, value: Value) -> Result<(), Gone> {
        self.send(value.to_string()).await
    }

    async fn error(
        &self,
        execution_id: Option<&str>,
        code: &str,
        message: &str,
    ) -> Result<(), Gone> {
        let mut value = json!({
            "type": "error",
            "data": { "code": code, "message": message },
            "timestamp": now_ms(),
        });
        if let Some(id) = execution_id {
            value["executionId"] = json!(id);
        }
        self.send_json(value).await
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

struct Connection {
    state: AppState,
    caller: Caller,
    subscriptions: HashMap<String, JoinHandle<()>>,
    limit: RateLimit,
}

/// Why the connection ends, and the close frame that says so.
struct Ending(u16, &'static str);

impl Connection {
    fn new(state: AppState, caller: Caller) -> Connection {
        let config = &state.websocket;
        let limit = RateLimit {
            tokens: config.rate_limit_burst as f64,
            per_sec: config.rate_limit_per_sec as f64,
            burst: config.rate_limit_burst as f64,
            at: Instant::now(),
            last_complaint: None,
        };
        Connection {
            state,
            caller,
            subscriptions: HashMap::new(),
            limit,
        }
    }

    async fn run(mut self, socket: WebSocket) {
        let config = self.state.websocket.clone();
        let (sink, mut stream) = socket.split();
        let (queue, outgoing) = mpsc::unbounded_channel();
        let capacity = u32::try_from(config.send_queue_bytes).unwrap_or(u32::MAX);
        let room = Arc::new(Semaphore::new(capacity as usize));
        let outbox = Outbox {
            queue,
            room: room.clone(),
            capacity,
            slow_after: Duration::from_millis(config.slow_consumer_timeout_ms),
            slow: CancellationToken::new(),
        };
        let (close, close_rx) = oneshot::channel();
        let metrics = self.state.runtime.metrics().clone();
        let writer = tokio::spawn(write(sink, outgoing, room, close_rx, metrics));

        let heartbeat = Duration::from_millis(config.heartbeat_interval_ms);
        let idle_timeout = Duration::from_millis(config.idle_timeout_ms);
        let mut ticks =
            tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        let mut last_inbound = Instant::now();
        let ending = loop {
            tokio::select! {
                frame = stream.next() => {
                    last_inbound = Instant::now();
                    match frame {
                        None | Some(Ok(Message::Close(_))) => break None,
                        Some(Err(e)) => {
                            // Oversized frames and protocol violations end here.
                            let too_big = matches!(
                                e.into_inner().downcast_ref::<tungstenite::Error>(),
                                Some(tungstenite::Error::Capacity(_))
                            );
                            break too_big.then_some(Ending(CLOSE_TOO_BIG, "message too big"));
                        }
                        Some(Ok(Message::Text(text))) => {
                            // Boxed: client messages are rare, and an idle connection should
                            // not carry the space of this future in its own.
                            if Box::pin(self.handle(&text, &outbox)).await.is_err() {
                                continue;
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            let _ = outbox.error(None, "bad_request", "binary frames are not supported; send JSON text").await;
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    }
                }
                _ = ticks.tick() => {
                    if last_inbound.elapsed() >= idle_timeout {
                        break Some(Ending(CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout"));
                    }
                    if outbox.queue.send(Outgoing::Ping).is_err() {
                        break None;
                    }
                }
                _ = outbox.slow.cancelled() => {
                    self.state.runtime.metrics().websocket_slow_consumers.inc();
                    break Some(Ending(CLOSE_SLOW_CONSUMER, "slow consumer: resubscribe with since"));
                }
                _ = self.state.closing.cancelled() => {
                    break Some(Ending(CLOSE_GOING_AWAY, "server shutting down"));
                }
            }
        };
        for (_, follower) in self.subscriptions.drain() {
            follower.abort();
        }
        if let Some(Ending(code, reason)) = ending {
            let _ = close.send((code, reason));
        }
        drop(outbox);
        // The closing handshake: keep reading (and discarding) until the client's close frame
        // or the timeout. Dropping the socket with unread input would make the kernel reset
        // the connection, and the client would lose what it had not read yet, close frame
        // included.
        let drain = async {
            while let Some(Ok(frame)) = stream.next().await {
                if matches!(frame, Message::Close(_)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain).await;
        let abort = writer.abort_handle();
        if tokio::time::timeout(Duration::from_secs(1), writer)
            .await
            .is_err()
        {
            abort.abort();
        }
    }

    /// Handles one client message. `Err` only when the connection is going away.
    async fn handle(&mut self, text: &str, outbox: &Outbox) -> Result<(), Gone> {
        if !self.limit.allow() {
            if self.limit.complain() {
                outbox
                    .error(None, "rate_limited", "too many messages; slow down")
                    .await?;
            }
            return Ok(());
        }
        let message: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                return outbox
                    .error(None, "bad_request", &format!("invalid JSON: {e}"))
                    .await;
            }
        };
        let Some(kind) = message.get("type").and_then(Value::as_str) else {
            return outbox
                .error(
                    None,
                    "bad_request",
                    "expected a JSON object with a string `type`",
                )
                .await;
        };
        match kind {
            "ping" => {
                outbox
                    .send_json(json!({ "type": "pong", "timestamp": now_ms() }))
                    .await
            }
            "subscribe" | "unsubscribe" => {
                let Some(id) = message.get("executionId").and_then(Value::as_str) else {
                    return outbox
                        .error(None, "bad_request", "`executionId` must be a string")
                        .await;
                };
                if kind == "unsubscribe" {
                    if let Some(follower) = self.subscriptions.remove(id) {
                        follower.abort();
                    }
                    let ack =
                        json!({ "type": "unsubscribed", "executionId": id, "timestamp": now_ms() });
                    return outbox.send_json(ack).await;
                }
                let since = match message.get("since") {
                    None | Some(Value::Null) => 0,
                    Some(v) => {
                        match v.as_u64() {
                            Some(n) => n,
                            None => {
                                return outbox
                                .error(Some(id), "bad_request", "`since` must be a non-negative integer (the last seq seen)")
                                .await;
                            }
                        }
                    }
                };
                self.subscribe(id, since, outbox).await
            }
            other => {
                outbox
                    .error(
                        None,
                        "bad_request",
                        &format!("unknown message type {other:?}"),
                    )
                    .await
            }
        }
    }

    async fn subscribe(&mut self, id: &str, since: u64, outbox: &Outbox) -> Result<(), Gone> {
        self.subscriptions
            .retain(|_, follower| !follower.is_finished());
        if self.subscriptions.contains_key(id) {
            // Already following: every event goes out once per connection.
            return Ok(());
        }
        if self.subscriptions.len() >= self.state.websocket.max_subscriptions {
            return outbox
                .error(
                    Some(id),
                    "too_many_subscriptions",
                    "unsubscribe from something first",
                )
                .await;
        }
        let follow = match self.state.runtime.follow(&self.caller, id, since).await {
            Ok(follow) => follow,
            Err(e) => {
                let code = match e {
                    runtime::Error::InvalidId(..) => "bad_request",
                    runtime::Error::ExecutionNotFound(_) => "not_found",
                    _ => "internal",
                };
                if code == "internal" {
                    tracing::error!(error = %e, "cannot follow an execution");
                }
                let message = if code == "internal" {
                    "internal error".to_owned()
                } else {
                    e.to_string()
                };
                return outbox.error(Some(id), code, &message).await;
            }
        };
        let follower = tokio::spawn(stream(id.to_owned(), follow, outbox.clone()));
        self.subscriptions.insert(id.to_owned(), follower);
        Ok(())
    }
}

/// Sends the acknowledgement, then every event until the execution's end.
async fn stream(id: String, follow: crate::events::Follow, outbox: Outbox) {
    // `Gone` means the connection is closing; there is no one left to tell.
    let _ = send_stream(id, follow, outbox).await;
}

async fn send_stream(
    id: String,
    mut follow: crate::events::Follow,
    outbox: Outbox,
) -> Result<(), Gone> {
    let ack = json!({
        "type": "subscribed",
        "executionId": id,
        "data": { "status": follow.start_status, "lastSeq": follow.start_last_seq },
        "timestamp": now_ms(),
    });
    outbox.send_json(ack).await?;
    loop {
        match follow.next().await {
            Ok(Some(event)) => outbox.send(event_message(&id, &event)).await?,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::error!(execution = %id, error = %e, "reading an execution's events failed");
                return outbox
                    .error(Some(&id), "internal", "reading the event stream failed")
                    .await;
            }
        }
    }
}

/// The writer task: owns the sending half, batches what is queued into one flush, and on a
/// close request drops the backlog and sends the close frame.
async fn write(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
    room: Arc<Semaphore>,
    mut close: oneshot::Receiver<(u16, &'static str)>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut sent = 0u64;
    let ending = loop {
        let next = tokio::select! {
            biased;
            ending = &mut close => break ending.ok(),
            next = outgoing.recv() => next,
        };
        let Some(mut item) = next else { break None };
        let flushed = async {
            loop {
                let message = match item {
                    Outgoing::Text(text, bytes) => {
                        room.add_permits(bytes as usize);
                        sent += 1;
                        Message::Text(text)
                    }
                    Outgoing::Ping => Message::Ping(Default::default()),
                };
                sink.feed(message).await?;
                match outgoing.try_recv() {
                    Ok(more) => item = more,
                    Err(_) => break,
                }
            }
            sink.flush().await
        };
        let result = tokio::select! {
            biased;
            ending = &mut close => break ending.ok(),
            result = flushed => result,
        };
        metrics
            .websocket_messages_sent
            .inc_by(std::mem::take(&mut sent));
        if result.is_err() {
            break None;
        }
    };
    metrics.websocket_messages_sent.inc_by(sent);
    if let Some((code, reason)) = ending {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
}
