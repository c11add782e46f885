//! The bus: how committed event batches reach followers, per execution. A store publishes each
//! batch after its commit; a follower subscribes, then reads the store, so nothing committed in
//! between is missed. The bus is a transport, never a source of truth: a follower that misses
//! batches (it lagged, or the bus lost them) is told so and reads them from the store.
//!
//! Beside the batches, replicas that share a database tell each other what saves a wait
//! (`Signal`: a submission, a cancel request). Signals are hints: the database carries each of
//! them too, and a replica that misses one acts at its next poll or lease renewal.
//!
//! It sits below the store (which publishes to it) and below `stream` (whose followers
//! subscribe); `local` is the in-process implementation, `nats` the one between replicas.

mod local;
mod nats;

pub use local::LocalBus;
pub use nats::{DEGRADED_POLL, NatsBus, NatsError, QUIET_POLL};

use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;

use crate::domain::{Event, ExecutionId};

/// Events committed together for one execution, in seq order. Shared, never copied: every
/// follower of an execution holds the same batch.
pub type Batch = Arc<[SharedEvent]>;

/// A committed event as the bus carries it, with the text readers send it as, made once by the
/// first reader that needs it and then shared by all the others: a thousand followers of an
/// execution serialize each of its events once, not a thousand times.
#[derive(Debug)]
pub struct SharedEvent {
    pub event: Event,
    text: OnceLock<Bytes>,
}

impl SharedEvent {
    pub fn new(event: Event) -> SharedEvent {
        SharedEvent {
            event,
            text: OnceLock::new(),
        }
    }

    /// The event's text (valid UTF-8), made by `make` if no reader has made it yet. Every reader
    /// of an event sends it in the same form, so the first one's is everyone's.
    pub fn text(&self, make: impl FnOnce(&Event) -> String) -> Bytes {
        // Exactly sized: the text lives as long as the batch.
        let make = || Bytes::from(make(&self.event).into_boxed_str().into_boxed_bytes());
        self.text.get_or_init(make).clone()
    }
}

/// At most this many events, and no more than about `BATCH_BYTES` of their data, go in one
/// batch: a bus keeps a few recent batches for followers that are momentarily behind, and
/// one commit can hold hundreds of thousands of lines. Bounded batches bound what is kept.
pub const BATCH_EVENTS: usize = 1024;
pub const BATCH_BYTES: usize = 256 * 1024;

/// Cuts an execution's committed events, in seq order, into bounded batches.
pub fn batches(events: Vec<Event>) -> impl Iterator<Item = Batch> {
    let mut events = events.into_iter().peekable();
    std::iter::from_fn(move || {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while batch.len() < BATCH_EVENTS && bytes < BATCH_BYTES {
            let Some(event) = events.next() else { break };
            bytes += event.data.get().len();
            batch.push(SharedEvent::new(event));
        }
        (!batch.is_empty()).then(|| Batch::from(batch))
    })
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Subscribes to an execution's live batches. Returns once the subscription is live: every
    /// batch published after it returns reaches the subscription (or is reported `Lagged`).
    async fn subscribe(&self, id: &ExecutionId) -> Subscription;
    /// Publishes events committed together, in seq order, as bounded batches (`batches`);
    /// `finished` when they hold the execution's end, after which the execution's subscriptions
    /// report `Closed`. Never waits, never fails: a follower that misses a batch fills the hole
    /// from the store.
    fn publish(&self, id: &ExecutionId, events: Vec<Event>, finished: bool);
    /// What carries the batches, and how it stands (readiness and metrics report it).
    fn transport(&self) -> Transport {
        Transport::InProcess
    }
    /// Tells the other replicas (and this one) of `signal`. Never waits, never fails: a signal
    /// lost is a wait longer, since the database carries the same fact. Nothing to tell by
    /// default: within one process the runtime acts on the spot.
    fn signal(&self, _signal: Signal) {}
    /// The signals of every replica on this bus, this one's included, from the moment this
    /// returns; `None` for a bus that carries none.
    async fn signals(&self) -> Option<Signals> {
        None
    }
}

/// What one replica tells the others so they act at once rather than at their next look at the
/// database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    /// An execution was submitted: a replica with a free slot claims now, not at its next poll.
    Submitted,
    /// A cancel of this execution was requested (and recorded in the database): its owner stops
    /// it now, not at its next lease renewal.
    Cancel(ExecutionId),
}

/// The signals a bus hears, in the order they come.
pub type Signals = BoxStream<'static, Signal>;

/// What a bus carries batches over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Within this process: nothing to lose.
    InProcess,
    /// A NATS server: `connected` now or not; `dropped` commits (or parts) that never reached
    /// it, which followers read from the store instead.
    Nats { connected: bool, dropped: u64 },
}

/// What a subscription receives next.
#[derive(Debug)]
pub enum Live {
    Batch(Batch),
    /// Batches were missed: read the store from the last event seen.
    Lagged,
    /// The execution ended; nothing more will come.
    Closed,
}

/// One bus's side of a subscription, polled by its follower's task.
pub trait Feed: Send {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Live>;
}

/// A live subscription to one execution. Dropping it unsubscribes.
pub struct Subscription(Box<dyn Feed>);

impl Subscription {
    pub fn new(feed: impl Feed + 'static) -> Subscription {
        Subscription(Box::new(feed))
    }

    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Live> {
        self.0.poll_next(cx)
    }

    pub async fn next(&mut self) -> Live {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EventKind;

    #[test]
    fn an_event_is_written_once_for_all_its_readers() {
        let shared = SharedEvent::new(Event {
            seq: 1,
            kind: EventKind::Log,
            data: serde_json::value::to_raw_value(&serde_json::json!({"log": "hi"})).unwrap(),
            timestamp: 0,
        });
        let mut made = 0;
        let first = shared.text(|event| {
            made += 1;
            format!("{}", event.seq)
        });
        let second = shared.text(|_| {
            made += 1;
            "again".into()
        });
        assert_eq!(made, 1);
        assert_eq!(second, "1");
        assert_eq!(
            first.as_ptr(),
            second.as_ptr(),
            "the same bytes, not a copy"
        );
    }
}
