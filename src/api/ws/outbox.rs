//! What a connection sends and what it accepts: the outbox, bounded in bytes, and the token
//! bucket that rate-limits the client's messages.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::Sink;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::protocol::{ErrorCode, Problem, ServerMessage};
use crate::domain::now_ms;

/// A message as the server writes it: an event's `data` is the stored JSON text.
pub(super) type Outgoing<'a> = ServerMessage<'a, &'a RawValue>;

/// What a connection sends, bounded in bytes. Replies to the client's own messages are always
/// queued (the rate limit bounds them); events only while there is room.
pub(super) struct Outbox {
    queue: VecDeque<Utf8Bytes>,
    bytes: usize,
    capacity: usize,
    /// A protocol ping goes out before the next message.
    ping: bool,
    /// Written to the socket but not flushed yet.
    unflushed: bool,
}

impl Outbox {
    pub fn new(capacity: usize) -> Outbox {
        Outbox {
            queue: VecDeque::new(),
            bytes: 0,
            capacity,
            ping: false,
            unflushed: false,
        }
    }

    pub fn has_room(&self) -> bool {
        self.bytes < self.capacity
    }

    /// Whether everything queued has reached the socket, flushed.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && !self.ping && !self.unflushed
    }

    /// A protocol ping goes out before the next message.
    pub fn ping(&mut self) {
        self.ping = true;
    }

    pub fn send(&mut self, message: &Outgoing<'_>) {
        self.push(message.to_text().into());
    }

    /// A message made once for every connection that sends it (`SharedEvent::text`): queued
    /// as the same bytes, not a copy.
    pub fn send_shared(&mut self, text: Bytes) {
        match Utf8Bytes::try_from(text) {
            Ok(text) => self.push(text),
            Err(e) => tracing::error!(error = %e, "a shared message is not UTF-8; not sent"),
        }
    }

    fn push(&mut self, text: Utf8Bytes) {
        self.bytes += text.len();
        self.queue.push_back(text);
    }

    /// An `error` message; with an execution id, about that subscription.
    pub fn error(&mut self, execution_id: Option<&str>, code: ErrorCode, message: &str) {
        self.problem(
            execution_id,
            Problem {
                code,
                message: message.to_owned(),
                last_seq: None,
            },
        );
    }

    pub fn problem(&mut self, execution_id: Option<&str>, problem: Problem) {
        self.send(&ServerMessage::Error {
            execution_id: execution_id.map(Cow::Borrowed),
            data: problem,
            timestamp: now_ms(),
        });
    }

    /// Moves queued messages into the socket and flushes them. Returns how many messages went
    /// out; `Err` when the socket is gone.
    pub fn write(&mut self, socket: &mut WebSocket, cx: &mut Context<'_>) -> Result<u64, ()> {
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

/// A token bucket for inbound messages.
pub(super) struct RateLimit {
    tokens: f64,
    per_sec: f64,
    burst: f64,
    at: Instant,
    last_complaint: Option<Instant>,
}

impl RateLimit {
    pub fn new(per_sec: f64, burst: f64) -> RateLimit {
        RateLimit {
            tokens: burst,
            per_sec,
            burst,
            at: Instant::now(),
            last_complaint: None,
        }
    }

    pub fn allow(&mut self) -> bool {
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
    pub fn complain(&mut self) -> bool {
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
