//! The bus: how committed event batches reach followers, per execution. A store publishes each
//! batch after its commit; a follower subscribes, then reads the store, so nothing committed in
//! between is missed. The bus is a transport, never a source of truth: a follower that misses
//! batches (it lagged, or the bus lost them) is told so and reads them from the store.

use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;

use crate::domain::{Event, ExecutionId};

/// Events committed together for one execution, in seq order. Shared, never copied: every
/// follower of an execution holds the same batch.
pub type Batch = Arc<[Event]>;

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Subscribes to an execution's live batches. Returns once the subscription is live: every
    /// batch published after it returns reaches the subscription (or is reported `Lagged`).
    async fn subscribe(&self, id: &ExecutionId) -> Subscription;
    /// Publishes a committed batch; `finished` when it holds the execution's end, after which
    /// the execution's subscriptions report `Closed`. Never waits, never fails: a follower that
    /// misses it fills the hole from the store.
    fn publish(&self, id: &ExecutionId, batch: Batch, finished: bool);
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
