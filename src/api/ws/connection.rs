//! One WebSocket connection: a single task that reads the client's messages, drives a
//! `Follow` per subscription, writes the byte-bounded outbox and keeps the heartbeat, all from
//! one `poll` (`Connection::poll_step`).
//!
//! When the server closes, a connection drains: each follower delivers every event committed
//! so far (the store has them all by then), the outbox goes out, and only then the close frame
//! with 1001 — within `DRAIN_TIMEOUT`.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::outbox::{Outbox, Outgoing, RateLimit};
use super::protocol::{
    CLOSE_GOING_AWAY, CLOSE_HEARTBEAT_TIMEOUT, CLOSE_SLOW_CONSUMER, CLOSE_TOO_BIG, ClientMessage,
    ErrorCode, EventMessage, Problem, ServerMessage, Subscription,
};
use super::{CLOSE_TIMEOUT, DRAIN_TIMEOUT, Slot};
use crate::api::AppState;
use crate::domain::{Event, now_ms};
use crate::runtime::{self, Caller};
use crate::stream::Follow;

/// Messages formatted in one poll of a connection before it yields to other tasks, so that a
/// long replay to a fast client does not hold a worker thread.
const MESSAGES_PER_POLL: usize = 1024;

/// One subscription of a connection.
struct Follower {
    execution_id: Box<str>,
    follow: Follow,
}

/// Why the connection ends, and the close frame that says so (`None`: the client left).
struct Ending(u16, &'static str);

const GOING_AWAY: Ending = Ending(CLOSE_GOING_AWAY, "server shutting down");

/// What the connection's task does next.
enum Step {
    /// A message from the client.
    Text(Utf8Bytes),
    Binary,
    End(Option<Ending>),
}

/// One client connection: all of its state, driven by its one task (`run`). Every byte here is
/// paid once per open connection.
pub(super) struct Connection {
    socket: WebSocket,
    state: AppState,
    caller: Caller,
    followers: Vec<Follower>,
    /// The follower polled first next time, so that a busy execution cannot starve the others.
    turn: usize,
    outbox: Outbox,
    limit: RateLimit,
    /// Fires at the next ping, or at the slow-consumer or drain deadline if that comes first.
    timer: Pin<Box<Sleep>>,
    next_ping: Instant,
    last_inbound: Instant,
    /// Since when the outbox has been full without the client reading anything.
    full_since: Option<Instant>,
    closing: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Set once the server is closing: the connection delivers what is committed, then says
    /// goodbye, by this deadline at the latest.
    drain_by: Option<Instant>,
    _slot: Slot,
}

impl Connection {
    pub fn new(socket: WebSocket, state: AppState, caller: Caller, slot: Slot) -> Connection {
        let config = &state.websocket;
        let now = Instant::now();
        let next_ping = now + Duration::from_millis(config.heartbeat_interval_ms);
        Connection {
            socket,
            caller,
            followers: Vec::new(),
            turn: 0,
            outbox: Outbox::new(config.send_queue_bytes),
            limit: RateLimit::new(
                config.rate_limit_per_sec as f64,
                config.rate_limit_burst as f64,
            ),
            timer: Box::pin(tokio::time::sleep_until(next_ping)),
            next_ping,
            last_inbound: now,
            full_since: None,
            closing: Box::pin(state.closing.clone().cancelled_owned()),
            drain_by: None,
            state,
            _slot: slot,
        }
    }

    // Not an `async fn`: that would keep the argument and its moved copy side by side in the
    // future (1,464 bytes instead of 776), nearly doubling what every idle connection costs.
    #[allow(clippy::manual_async_fn)]
    pub fn run(mut self) -> impl Future<Output = ()> + Send {
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
            if self.drain_by.is_none() && self.closing.as_mut().poll(cx).is_ready() {
                self.drain();
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
            if self.drain_by.is_some() && self.followers.is_empty() && self.outbox.is_empty() {
                return Poll::Ready(Step::End(Some(GOING_AWAY)));
            }
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

    /// The heartbeat, and the slow-consumer and drain deadlines.
    fn on_timer(&mut self) -> Option<Ending> {
        let now = Instant::now();
        let config = &self.state.websocket;
        if let Some(deadline) = self.drain_by {
            // A client too slow to take the rest gets the goodbye anyway; it resumes with since.
            return (now >= deadline).then_some(GOING_AWAY);
        }
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
            self.outbox.ping();
            self.next_ping = now + Duration::from_millis(config.heartbeat_interval_ms);
        }
        None
    }

    fn deadline(&self) -> Instant {
        if let Some(deadline) = self.drain_by {
            return deadline;
        }
        let slow = Duration::from_millis(self.state.websocket.slow_consumer_timeout_ms);
        self.full_since
            .map_or(self.next_ping, |since| self.next_ping.min(since + slow))
    }

    /// The server is closing: every follower delivers what is committed and ends.
    fn drain(&mut self) {
        self.drain_by = Some(Instant::now() + DRAIN_TIMEOUT);
        for follower in &mut self.followers {
            follower.follow.drain();
        }
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
                Poll::Ready(Ok(Some(followed))) => {
                    let id = &follower.execution_id;
                    let text = followed.text(|event| event_message(id, event).to_text());
                    self.outbox.send_shared(text);
                    moved += 1;
                    self.turn = index + 1;
                }
                Poll::Ready(Ok(None)) => {
                    if follower.follow.ended_unrecorded() {
                        let id = follower.execution_id.clone();
                        let message = "the execution has ended but its final status event could not be stored; its record has the end";
                        self.outbox
                            .error(Some(&id), ErrorCode::EndNotStored, message);
                    }
                    self.followers.swap_remove(index);
                }
                Poll::Ready(Err(e)) => {
                    let id = follower.execution_id.clone();
                    tracing::error!(execution = %id, error = %e, "reading an execution's events failed");
                    let message = "reading the event stream failed";
                    self.outbox.error(Some(&id), ErrorCode::Internal, message);
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
            let message = "too many messages; slow down";
            self.outbox.error(None, ErrorCode::RateLimited, message);
        }
        false
    }

    fn reject_binary(&mut self) {
        if self.admit() {
            let message = "binary frames are not supported; send JSON text";
            self.outbox.error(None, ErrorCode::BadRequest, message);
        }
    }

    /// Handles one client text message.
    async fn handle(&mut self, text: &str) {
        if !self.admit() {
            return;
        }
        match ClientMessage::parse(text) {
            Err(message) => self.outbox.error(None, ErrorCode::BadRequest, &message),
            Ok(ClientMessage::Ping) => self.outbox.send(&ServerMessage::Pong {
                timestamp: now_ms(),
            }),
            Ok(ClientMessage::Unsubscribe { execution_id }) => {
                self.followers.retain(|f| *f.execution_id != execution_id);
                self.outbox.send(&ServerMessage::Unsubscribed {
                    execution_id: execution_id.into(),
                    timestamp: now_ms(),
                });
            }
            Ok(ClientMessage::Subscribe {
                execution_id,
                since,
            }) => self.subscribe(&execution_id, since.unwrap_or(0)).await,
        }
    }

    async fn subscribe(&mut self, id: &str, since: u64) {
        if self.followers.iter().any(|f| &*f.execution_id == id) {
            // Already following: every event goes out once per connection.
            return;
        }
        if self.followers.len() >= self.state.websocket.max_subscriptions {
            let message = "unsubscribe from something first";
            return (self.outbox).error(Some(id), ErrorCode::TooManySubscriptions, message);
        }
        let mut follow = match self.state.runtime.follow(&self.caller, id, since).await {
            Ok(follow) => follow,
            Err(e) => return self.outbox.problem(Some(id), refusal(e)),
        };
        if self.drain_by.is_some() {
            follow.drain();
        }
        self.outbox.send(&ServerMessage::Subscribed {
            execution_id: Cow::Borrowed(id),
            data: Subscription {
                status: follow.start_status,
                last_seq: follow.start_last_seq,
            },
            timestamp: now_ms(),
        });
        // Grown one at a time: most connections follow one or two executions.
        self.followers.reserve_exact(1);
        self.followers.push(Follower {
            execution_id: id.into(),
            follow,
        });
    }

    /// Ends the connection: drops what is still queued (a server that is closing has drained it
    /// already), sends the close frame if the server is the one closing, and completes the
    /// closing handshake, all within `CLOSE_TIMEOUT`.
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

/// An event as a WebSocket message: `data` goes out as the stored JSON text.
fn event_message<'a>(execution_id: &'a str, event: &'a Event) -> Outgoing<'a> {
    ServerMessage::Event(EventMessage {
        kind: Cow::Borrowed(event.kind.as_str()),
        execution_id: Cow::Borrowed(execution_id),
        seq: event.seq,
        data: &event.data,
        timestamp: event.timestamp,
    })
}

/// Why a subscription was refused, for the client. Details of failures on the server's side
/// stay in the log.
fn refusal(e: runtime::Error) -> Problem {
    let (code, last_seq) = match &e {
        runtime::Error::InvalidId(..) => (ErrorCode::BadRequest, None),
        runtime::Error::ExecutionNotFound(_) => (ErrorCode::NotFound, None),
        runtime::Error::SinceBeyondEnd { last_seq, .. } => {
            (ErrorCode::SinceBeyondEnd, Some(*last_seq))
        }
        _ => {
            tracing::error!(error = %e, "cannot follow an execution");
            return Problem {
                code: ErrorCode::Internal,
                message: "internal error".into(),
                last_seq: None,
            };
        }
    };
    Problem {
        code,
        message: e.to_string(),
        last_seq,
    }
}
