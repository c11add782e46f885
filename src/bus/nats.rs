//! The NATS bus: committed batches travel between replicas over core NATS (no JetStream), one
//! subject per execution (`agentnexus.events.<executionId>`). NATS is a transport, never a
//! source of truth: whatever it loses, followers read from the store.
//!
//! - `publish` never waits: it hands the commit to a bounded queue that one task drains into
//!   NATS. When the queue is full (NATS is slow or away) the commit is dropped and counted; its
//!   followers fill the hole from the store.
//! - `subscribe` returns once the server has confirmed the subscription (a message to
//!   ourselves through the server), so "subscribed before I read the store" holds across
//!   replicas.
//! - A subscription reports `Lagged` whenever it may have missed something: on every change of
//!   the connection (lost, back, a slow consumer), every `DEGRADED_POLL` while the connection is
//!   down (so a follower completes from the store, slower), and after `QUIET_POLL` without a
//!   message (a batch dropped by its publisher cannot be seen by its subscribers otherwise).
//! - The client reconnects by itself and subscribes again: live without a restart.
//! - Signals (`agentnexus.signals.submitted`, `agentnexus.signals.cancel` with the execution id
//!   as payload) go through the same queue as commits and are heard by every replica, the
//!   sender included. Whoever can publish on the server can send them: NATS is trusted like the
//!   database.

use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::{Client, ConnectOptions, ServerAddr, Subscriber};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::ReusableBoxFuture;

use super::{
    Batch, Bus, Feed, Live, SharedEvent, Signal, Signals, Subscription, Transport, batches,
};
use crate::domain::{EpochMs, Event, EventKind, ExecutionId};

/// Subjects are this prefix and the execution id (`exec_` and a ULID: one safe token).
const SUBJECT_PREFIX: &str = "agentnexus.events";
/// Signals between replicas: `.submitted` (no payload) and `.cancel` (the execution id).
const SIGNALS: &str = "agentnexus.signals";
/// Commits waiting for NATS. A commit can hold many events; beyond this many, new ones are
/// dropped rather than held in memory.
const QUEUE: usize = 256;
/// How long `subscribe` waits for the client to take the subscription, and then for the
/// server to confirm it. Past it the subscription is returned unconfirmed and has its follower
/// check the store after `DEGRADED_POLL`, by when a working connection has made it live.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a follower re-reads the store while NATS is down (or its subscription unconfirmed).
pub const DEGRADED_POLL: Duration = Duration::from_secs(1);
/// How long a subscription stays quiet before its follower checks the store once.
pub const QUIET_POLL: Duration = Duration::from_secs(30);
/// The server's `max_payload` default, used until the server has said its own.
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("nats_url is not a valid NATS URL: {0}")]
    Url(String),
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
}

/// The connection as the client reports it: `epoch` counts its changes (and slow-consumer
/// reports), which may each have lost messages.
#[derive(Clone, Copy, Debug, Default)]
struct Standing {
    connected: bool,
    epoch: u64,
}

pub struct NatsBus {
    client: Client,
    /// Where the server is (host and port, never the URL's credentials).
    server: String,
    queue: mpsc::Sender<Outbound>,
    standing: watch::Receiver<Standing>,
    dropped: Arc<AtomicU64>,
}

/// What waits for NATS: one `publish` call, or a signal.
enum Outbound {
    Commit {
        id: ExecutionId,
        events: Vec<Event>,
        finished: bool,
    },
    Signal(Signal),
}

impl NatsBus {
    /// Connects in the background: the server may be away at start, like later.
    pub async fn connect(url: &str) -> Result<NatsBus, NatsError> {
        let (addr, options) = credentials(url)?;
        let server = format!("{}:{}", addr.host(), addr.port());
        let (tell, standing) = watch::channel(Standing::default());
        let tell = Arc::new(tell);
        let client = options
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempt| {
                Duration::from_millis((attempt as u64 * 250).min(2000))
            })
            .event_callback(move |event| {
                let tell = tell.clone();
                async move { note(&tell, event) }
            })
            .connect(addr)
            .await
            .map_err(|e| NatsError::Connect(e.to_string()))?;
        let (queue, commits) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(send_commits(client.clone(), commits, dropped.clone()));
        Ok(NatsBus {
            client,
            server,
            queue,
            standing,
            dropped,
        })
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// A message to ourselves through the server. The server handles a connection's commands
    /// in order, so once it comes back every subscription made before it is in place: from
    /// then on each publish to its subject, from any replica, reaches it. (The client's `flush`
    /// only writes the buffer out; it is no round trip.) In a cluster of NATS servers interest
    /// reaches the other servers a moment later; `QUIET_POLL` bounds what that could cost.
    async fn echo(&self) -> bool {
        let inbox = self.client.new_inbox();
        let Ok(mut echo) = self.client.subscribe(inbox.clone()).await else {
            return false;
        };
        if self.client.publish(inbox, Bytes::new()).await.is_err()
            || self.client.flush().await.is_err()
        {
            return false;
        }
        echo.next().await.is_some()
    }

    /// Commits (or parts of them) that never reached NATS.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The server's address without credentials (the client logs addresses), and the options that
/// carry them: `user:password@` or a `token@`, percent-decoded. The client itself ignores
/// credentials written in the URL.
fn credentials(url: &str) -> Result<(ServerAddr, ConnectOptions), NatsError> {
    let invalid = |e: std::io::Error| NatsError::Url(e.to_string());
    let addr = ServerAddr::from_str(url).map_err(invalid)?;
    let options = match (addr.username().map(decode_percent), addr.password()) {
        (Some(user), Some(password)) => {
            ConnectOptions::with_user_and_password(user, decode_percent(password))
        }
        (Some(token), None) => ConnectOptions::with_token(token),
        _ => ConnectOptions::new(),
    };
    let mut bare = addr.into_inner();
    // Only a URL without a host refuses these, and a server address has one.
    let _ = bare.set_username("");
    let _ = bare.set_password(None);
    let addr = ServerAddr::from_str(bare.as_str()).map_err(invalid)?;
    Ok((addr, options))
}

/// `%XX` escapes decoded (credentials in a URL are written so); anything else kept as it is.
fn decode_percent(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn note(tell: &watch::Sender<Standing>, event: async_nats::Event) {
    use async_nats::Event as E;
    let connected = match event {
        E::Connected => Some(true),
        E::Disconnected => Some(false),
        E::SlowConsumer(_) => None,
        other => {
            tracing::debug!(event = %other, "NATS");
            return;
        }
    };
    match connected {
        Some(true) => tracing::info!("NATS connected"),
        Some(false) => {
            tracing::warn!("NATS disconnected: followers read the store until it is back")
        }
        None => tracing::warn!("NATS dropped messages of a slow subscription"),
    }
    tell.send_modify(|s| {
        s.epoch += 1;
        s.connected = connected.unwrap_or(s.connected);
    });
}

fn subject(id: &ExecutionId) -> String {
    format!("{SUBJECT_PREFIX}.{id}")
}

#[async_trait]
impl Bus for NatsBus {
    async fn subscribe(&self, id: &ExecutionId) -> Subscription {
        let standing = self.standing.clone();
        let epoch = standing.borrow().epoch;
        // While NATS is away the subscription is only queued (the client makes it on
        // reconnecting) and the feed starts degraded: no use waiting for an echo.
        let connected = self.is_connected();
        let subscribing = self.client.subscribe(subject(id));
        let messages = match tokio::time::timeout(CONFIRM_TIMEOUT, subscribing).await {
            Ok(Ok(messages)) => Some(messages),
            _ => None,
        };
        let confirmed = messages.is_some()
            && connected
            && tokio::time::timeout(CONFIRM_TIMEOUT, self.echo())
                .await
                .unwrap_or(false);
        Subscription::new(NatsFeed::new(messages, confirmed, standing, epoch))
    }

    fn publish(&self, id: &ExecutionId, events: Vec<Event>, finished: bool) {
        let commit = Outbound::Commit {
            id: id.clone(),
            events,
            finished,
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.queue.try_send(commit) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn signal(&self, signal: Signal) {
        // A full queue means NATS is slow or away: the database carries the same fact.
        let _ = self.queue.try_send(Outbound::Signal(signal));
    }

    async fn signals(&self) -> Option<Signals> {
        // Queued by the client while NATS is away, and made again on every reconnection.
        let subscribing = self.client.subscribe(format!("{SIGNALS}.>"));
        let messages = match tokio::time::timeout(CONFIRM_TIMEOUT, subscribing).await {
            Ok(Ok(messages)) => messages,
            _ => {
                tracing::warn!("cannot subscribe to signals: replicas wait for the database");
                return None;
            }
        };
        let signals = messages.filter_map(|message| {
            let signal = read_signal(&message.subject, &message.payload);
            std::future::ready(signal)
        });
        Some(Box::pin(signals))
    }

    fn transport(&self) -> Transport {
        Transport::Nats {
            connected: self.is_connected(),
            dropped: self.dropped(),
        }
    }
}

/// A signal's subject and payload.
fn signal_message(signal: &Signal) -> (String, Bytes) {
    match signal {
        Signal::Submitted => (format!("{SIGNALS}.submitted"), Bytes::new()),
        Signal::Cancel(id) => (
            format!("{SIGNALS}.cancel"),
            Bytes::copy_from_slice(id.as_str().as_bytes()),
        ),
    }
}

/// A signal heard, or `None` for a message that is none (ignored: signals are hints).
fn read_signal(subject: &str, payload: &[u8]) -> Option<Signal> {
    match subject.strip_prefix(SIGNALS)? {
        ".submitted" => Some(Signal::Submitted),
        ".cancel" => {
            let id = ExecutionId::parse(std::str::from_utf8(payload).ok()?)?;
            Some(Signal::Cancel(id))
        }
        _ => None,
    }
}

/// The task between `publish`/`signal` and NATS: sends each signal, and cuts each commit into
/// messages under the server's `max_payload` and publishes them in order.
async fn send_commits(
    client: Client,
    mut outbound: mpsc::Receiver<Outbound>,
    dropped: Arc<AtomicU64>,
) {
    while let Some(next) = outbound.recv().await {
        let (id, events, finished) = match next {
            Outbound::Commit {
                id,
                events,
                finished,
            } => (id, events, finished),
            Outbound::Signal(signal) => {
                let (subject, payload) = signal_message(&signal);
                if client.publish(subject, payload).await.is_err() {
                    tracing::debug!(?signal, "a signal did not reach NATS");
                }
                continue;
            }
        };
        let limit = match client.server_info().max_payload {
            0 => DEFAULT_MAX_PAYLOAD,
            n => n,
        };
        let batches: Vec<Batch> = batches(events).collect();
        let mut messages = Vec::new();
        for batch in &batches {
            let left_out = encode(batch, limit, &mut messages);
            dropped.fetch_add(left_out, Ordering::Relaxed);
        }
        if finished && messages.is_empty() {
            // The end alone still closes the subscriptions, as it does on the in-process bus.
            messages.push(Outgoing {
                finished,
                events: Vec::new(),
            });
        }
        let subject = subject(&id);
        let last = messages.len().saturating_sub(1);
        for (i, mut message) in messages.into_iter().enumerate() {
            message.finished = finished && i == last;
            let payload = Bytes::from(serde_json::to_vec(&message).expect("serializable"));
            if client.publish(subject.clone(), payload).await.is_err() {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A message: events of one execution in seq order, and whether they end its stream.
#[derive(Serialize)]
struct Outgoing<'a> {
    finished: bool,
    events: Vec<&'a Event>,
}

#[derive(Deserialize)]
struct Incoming {
    finished: bool,
    events: Vec<WireEvent>,
}

#[derive(Deserialize)]
struct WireEvent {
    seq: u64,
    #[serde(rename = "type")]
    kind: EventKind,
    data: Box<RawValue>,
    timestamp: EpochMs,
}

/// Splits `events` into messages of at most `limit` bytes, and says how many events it left
/// out: one that alone exceeds the limit. Followers see that hole in `seq` (or the end) and
/// read it from the store.
fn encode<'a>(events: &'a [SharedEvent], limit: usize, into: &mut Vec<Outgoing<'a>>) -> u64 {
    let message = Outgoing {
        finished: true, // the longest form
        events: events.iter().map(|e| &e.event).collect(),
    };
    let size = serde_json::to_vec(&message).map_or(usize::MAX, |b| b.len());
    if size <= limit {
        if !events.is_empty() {
            into.push(message);
        }
        return 0;
    }
    if events.len() == 1 {
        return 1;
    }
    let (left, right) = events.split_at(events.len() / 2);
    encode(left, limit, into) + encode(right, limit, into)
}

fn decode(payload: &[u8]) -> Option<(Batch, bool)> {
    let Incoming { finished, events } = serde_json::from_slice(payload).ok()?;
    let batch = events.into_iter().map(|e| {
        SharedEvent::new(Event {
            seq: e.seq,
            kind: e.kind,
            data: e.data,
            timestamp: e.timestamp,
        })
    });
    Some((batch.collect(), finished))
}

/// One subscription: the subject's messages, the connection's news, and the timer of the
/// store checks.
struct NatsFeed {
    /// `None` when the subscription could not be made (NATS away): store checks only.
    messages: Option<Subscriber>,
    /// Whether the server confirmed the subscription, or a message has arrived since.
    confirmed: bool,
    news: ReusableBoxFuture<'static, watch::Receiver<Standing>>,
    connected: bool,
    epoch: u64,
    check: Pin<Box<Sleep>>,
    closed: bool,
}

impl NatsFeed {
    fn new(
        messages: Option<Subscriber>,
        confirmed: bool,
        standing: watch::Receiver<Standing>,
        epoch: u64,
    ) -> NatsFeed {
        let connected = standing.borrow().connected;
        let mut feed = NatsFeed {
            messages,
            confirmed,
            news: ReusableBoxFuture::new(changed(standing)),
            connected,
            epoch,
            check: Box::pin(tokio::time::sleep(QUIET_POLL)),
            closed: false,
        };
        feed.reset_check();
        feed
    }

    /// The next store check: soon while degraded, rarely while all is well.
    fn reset_check(&mut self) {
        let degraded = !self.connected || !self.confirmed || self.messages.is_none();
        let after = if degraded { DEGRADED_POLL } else { QUIET_POLL };
        self.check.as_mut().reset(Instant::now() + after);
    }
}

async fn changed(mut news: watch::Receiver<Standing>) -> watch::Receiver<Standing> {
    if news.changed().await.is_err() {
        // The client is gone; the store checks go on.
        std::future::pending::<()>().await;
    }
    news
}

impl Feed for NatsFeed {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Live> {
        if self.closed {
            return Poll::Ready(Live::Closed);
        }
        while let Poll::Ready(news) = self.news.poll(cx) {
            let now = *news.borrow();
            self.news.set(changed(news));
            if now.epoch != self.epoch {
                (self.epoch, self.connected) = (now.epoch, now.connected);
                self.reset_check();
                return Poll::Ready(Live::Lagged);
            }
        }
        if let Some(messages) = &mut self.messages {
            match messages.poll_next_unpin(cx) {
                Poll::Ready(Some(message)) => {
                    self.confirmed = true;
                    self.reset_check();
                    let Some((batch, finished)) = decode(&message.payload) else {
                        return Poll::Ready(Live::Lagged);
                    };
                    self.closed = finished;
                    return Poll::Ready(Live::Batch(batch));
                }
                // The client was closed: store checks only.
                Poll::Ready(None) => {
                    self.messages = None;
                    self.reset_check();
                }
                Poll::Pending => {}
            }
        }
        if self.check.as_mut().poll(cx).is_ready() {
            // A subscription that has been in place over a working connection for a whole
            // check interval has reached the server, echo or not: the store read that this
            // `Lagged` causes comes after it.
            self.confirmed |= self.connected && self.messages.is_some();
            self.reset_check();
            // Register the new deadline's wake-up.
            let _ = self.check.as_mut().poll(cx);
            return Poll::Ready(Live::Lagged);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(sizes: &[usize]) -> Vec<SharedEvent> {
        let event = |(i, size): (usize, &usize)| {
            SharedEvent::new(Event {
                seq: i as u64 + 1,
                kind: EventKind::Log,
                data: serde_json::value::to_raw_value(&"x".repeat(*size)).unwrap(),
                timestamp: 7,
            })
        };
        sizes.iter().enumerate().map(event).collect()
    }

    #[test]
    fn a_batch_is_split_under_the_limit_and_an_event_too_large_alone_is_left_out() {
        let batch = events(&[100, 100, 5000, 100, 100, 100]);
        let mut messages = Vec::new();
        assert_eq!(encode(&batch, 400, &mut messages), 1);
        let mut seqs = Vec::new();
        for message in &messages {
            let bytes = serde_json::to_vec(message).unwrap();
            assert!(bytes.len() <= 400, "{}", bytes.len());
            let (decoded, _) = decode(&bytes).unwrap();
            seqs.extend(decoded.iter().map(|e| e.event.seq));
        }
        assert_eq!(seqs, [1, 2, 4, 5, 6]);
    }

    #[test]
    fn credentials_leave_the_address_for_the_options() {
        let (addr, _) = credentials("nats://us%40r:p%3Ass@nats.example:4333").unwrap();
        assert_eq!(addr.as_url_str(), "nats://nats.example:4333");
        assert!(!addr.has_user_pass());
        let (addr, _) = credentials("tls://s3cret@nats.example").unwrap();
        assert_eq!((addr.host(), addr.port()), ("nats.example", 4222));
        assert!(addr.tls_required());
        assert_eq!(decode_percent("us%40r%zz%4"), "us@r%zz%4");
    }

    #[test]
    fn signals_come_back_as_they_were_sent_and_anything_else_is_ignored() {
        let id = ExecutionId::generate();
        for signal in [Signal::Submitted, Signal::Cancel(id)] {
            let (subject, payload) = signal_message(&signal);
            assert_eq!(read_signal(&subject, &payload), Some(signal));
        }
        assert_eq!(read_signal("agentnexus.signals.cancel", b"nope"), None);
        assert_eq!(read_signal("agentnexus.signals.other", b""), None);
        assert_eq!(read_signal("agentnexus.events.x", b""), None);
    }

    #[test]
    fn events_come_back_as_they_were_sent() {
        let batch = events(&[3]);
        let bytes = serde_json::to_vec(&Outgoing {
            finished: true,
            events: vec![&batch[0].event],
        })
        .unwrap();
        let (decoded, finished) = decode(&bytes).unwrap();
        assert!(finished);
        let event = &decoded[0].event;
        assert_eq!(
            (event.seq, event.kind, event.timestamp),
            (1, EventKind::Log, 7)
        );
        assert_eq!(event.data.get(), r#""xxx""#);
    }
}
