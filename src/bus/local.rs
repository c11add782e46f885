//! The in-process bus: a broadcast channel per execution that someone follows. The embedded
//! default, with nothing to install.
//!
//! Replicas that share a database but no bus hear nothing of each other's commits: there the
//! bus is made `polling`, and every subscription also says `Lagged` once per interval, so its
//! follower re-reads the store (the cluster works without NATS, by polling only).
//!
//! Channels exist only while someone listens: publishing to an execution nobody follows costs
//! one map lookup. A follower that falls behind loses live batches (`Lagged`) and re-reads them
//! from the store, so a slow follower never holds memory here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::ReusableBoxFuture;

use super::{Batch, Bus, Feed, Live, Subscription, batches};
use crate::domain::{Event, ExecutionId};

/// Live batches kept per execution for followers that are momentarily behind: with bounded
/// batches, at most 64 × `BATCH_EVENTS` events (65,536; about 20 MB with their texts), enough
/// that one large commit does not leave a lone follower behind. A follower further behind
/// reads from the store instead.
const CHANNEL_CAPACITY: usize = 64;

type Channels = Mutex<HashMap<ExecutionId, broadcast::Sender<Batch>>>;

#[derive(Default)]
pub struct LocalBus {
    channels: Arc<Channels>,
    poll: Option<Duration>,
}

impl LocalBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// A bus for replicas that share a database but not this bus: each subscription also says
    /// `Lagged` every `interval`, so its follower reads what other replicas committed.
    pub fn polling(interval: Duration) -> Self {
        LocalBus {
            poll: Some(interval),
            ..Self::default()
        }
    }

    /// Executions with at least one subscription.
    pub fn channel_count(&self) -> usize {
        self.channels.lock().unwrap().len()
    }
}

#[async_trait]
impl Bus for LocalBus {
    /// Live as soon as the receiver exists: a publish takes the same lock.
    async fn subscribe(&self, id: &ExecutionId) -> Subscription {
        let receiver = self
            .channels
            .lock()
            .unwrap()
            .entry(id.clone())
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe();
        Subscription::new(LocalFeed {
            channels: self.channels.clone(),
            id: id.clone(),
            receive: Some(ReusableBoxFuture::new(receive(receiver))),
            poll: self.poll.map(|period| {
                let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
                ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
                Box::new(ticks)
            }),
        })
    }

    fn publish(&self, id: &ExecutionId, events: Vec<Event>, finished: bool) {
        let mut channels = self.channels.lock().unwrap();
        if let Some(sender) = channels.get(id) {
            for batch in batches(events) {
                // An error only means every receiver is gone.
                let _ = sender.send(batch);
            }
        }
        if finished {
            // Dropping the sender lets followers drain what is buffered, then see `Closed`.
            channels.remove(id);
        }
    }
}

/// A live batch and the receiver, handed back so that the next receive reuses the box.
type Received = (Result<Batch, RecvError>, broadcast::Receiver<Batch>);

async fn receive(mut live: broadcast::Receiver<Batch>) -> Received {
    (live.recv().await, live)
}

/// A subscription to one channel: an idle one is this struct and one small boxed receive.
struct LocalFeed {
    channels: Arc<Channels>,
    id: ExecutionId,
    /// `None` only while dropping.
    receive: Option<ReusableBoxFuture<'static, Received>>,
    /// The polling bus's ticks (boxed: most buses do not poll, and an idle feed stays small).
    poll: Option<Box<Interval>>,
}

impl Feed for LocalFeed {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Live> {
        let receive = self.receive.as_mut().expect("present until drop");
        let Poll::Ready((received, receiver)) = receive.poll(cx) else {
            return match self.poll.as_mut().map(|ticks| ticks.poll_tick(cx)) {
                Some(Poll::Ready(_)) => Poll::Ready(Live::Lagged),
                _ => Poll::Pending,
            };
        };
        receive.set(self::receive(receiver));
        Poll::Ready(match received {
            Ok(batch) => Live::Batch(batch),
            Err(RecvError::Lagged(_)) => Live::Lagged,
            Err(RecvError::Closed) => Live::Closed,
        })
    }
}

impl Drop for LocalFeed {
    /// Forgets the channel once nobody listens to it.
    fn drop(&mut self) {
        // The receiver lives in the boxed receive; it must be gone before the count.
        drop(self.receive.take());
        let mut channels = self.channels.lock().unwrap();
        if channels
            .get(&self.id)
            .is_some_and(|s| s.receiver_count() == 0)
        {
            channels.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BATCH_EVENTS;
    use crate::domain::EventKind;

    fn batch(seqs: std::ops::RangeInclusive<u64>) -> Vec<Event> {
        seqs.map(|seq| Event {
            seq,
            kind: EventKind::Log,
            data: serde_json::value::to_raw_value(&serde_json::json!({})).unwrap(),
            timestamp: 0,
        })
        .collect()
    }

    fn seqs(live: Live) -> Vec<u64> {
        match live {
            Live::Batch(batch) => batch.iter().map(|e| e.event.seq).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_subscription_gets_what_is_published_after_it_returns_then_the_end() {
        let bus = LocalBus::new();
        let id = ExecutionId::generate();
        bus.publish(&id, batch(1..=1), false);
        let mut live = bus.subscribe(&id).await;
        bus.publish(&id, batch(2..=3), false);
        bus.publish(&id, batch(4..=4), true);
        assert_eq!(seqs(live.next().await), [2, 3]);
        assert_eq!(seqs(live.next().await), [4]);
        assert!(matches!(live.next().await, Live::Closed));
    }

    #[tokio::test]
    async fn a_polling_bus_tells_an_idle_subscription_to_read_the_store() {
        let bus = LocalBus::polling(Duration::from_millis(20));
        let id = ExecutionId::generate();
        let mut live = bus.subscribe(&id).await;
        assert!(matches!(live.next().await, Live::Lagged));
        assert!(matches!(live.next().await, Live::Lagged));
        bus.publish(&id, batch(1..=2), false);
        assert_eq!(seqs(live.next().await), [1, 2]);
    }

    #[tokio::test]
    async fn a_follower_far_behind_is_told_it_lagged() {
        let bus = LocalBus::new();
        let id = ExecutionId::generate();
        let mut live = bus.subscribe(&id).await;
        for seq in 1..=(CHANNEL_CAPACITY as u64 + 1) {
            bus.publish(&id, batch(seq..=seq), false);
        }
        assert!(matches!(live.next().await, Live::Lagged));
    }

    #[tokio::test]
    async fn a_large_commit_goes_out_in_bounded_batches() {
        let bus = LocalBus::new();
        let id = ExecutionId::generate();
        let mut live = bus.subscribe(&id).await;
        let total = 2 * BATCH_EVENTS as u64 + 1;
        bus.publish(&id, batch(1..=total), true);
        let mut seen = Vec::new();
        while let Live::Batch(batch) = live.next().await {
            assert!(batch.len() <= BATCH_EVENTS, "{}", batch.len());
            seen.extend(batch.iter().map(|e| e.event.seq));
        }
        assert_eq!(seen, (1..=total).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn channels_exist_only_while_someone_listens() {
        let bus = LocalBus::new();
        let (one, two) = (ExecutionId::generate(), ExecutionId::generate());
        let first = bus.subscribe(&one).await;
        let second = bus.subscribe(&one).await;
        let other = bus.subscribe(&two).await;
        assert_eq!(bus.channel_count(), 2);
        drop(first);
        assert_eq!(bus.channel_count(), 2);
        drop(second);
        assert_eq!(bus.channel_count(), 1);
        bus.publish(&two, batch(1..=1), true);
        assert_eq!(bus.channel_count(), 0, "the end forgets the channel");
        drop(other);
        bus.publish(&one, batch(1..=1), false);
        assert_eq!(bus.channel_count(), 0, "publishing creates none");
    }
}
