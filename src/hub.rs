//! In-process publish/subscribe of committed events, per execution. The store publishes here
//! after each commit; followers (`events::Follow`) subscribe. A seam for a network bus later.
//!
//! Channels exist only while someone listens: publishing to an execution nobody follows costs
//! one map lookup. A follower that falls behind loses live batches (`Lagged`) and re-reads them
//! from the store, so a slow follower never holds memory here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::domain::{Event, ExecutionId};

/// Events committed together for one execution, in seq order.
pub type Batch = Arc<[Event]>;

/// Live batches kept per execution for followers that are momentarily behind. Small on
/// purpose: a batch can hold thousands of events, and a follower further behind than this
/// reads from the store instead.
const CHANNEL_CAPACITY: usize = 16;

#[derive(Default)]
pub struct Hub {
    channels: Mutex<HashMap<ExecutionId, broadcast::Sender<Batch>>>,
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn subscribe(&self, id: &ExecutionId) -> broadcast::Receiver<Batch> {
        let mut channels = self.channels.lock().unwrap();
        channels
            .entry(id.clone())
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe()
    }

    /// Called by a follower after dropping its receiver: forget channels nobody listens to.
    pub fn release(&self, id: &ExecutionId) {
        let mut channels = self.channels.lock().unwrap();
        if channels.get(id).is_some_and(|s| s.receiver_count() == 0) {
            channels.remove(id);
        }
    }

    pub fn publish(&self, id: &ExecutionId, batch: Vec<Event>, finished: bool) {
        let mut channels = self.channels.lock().unwrap();
        if let Some(sender) = channels.get(id) {
            // An error only means every receiver is gone.
            let _ = sender.send(batch.into());
        }
        if finished {
            // Dropping the sender lets followers drain what is buffered, then see `Closed`.
            channels.remove(id);
        }
    }

    pub fn channel_count(&self) -> usize {
        self.channels.lock().unwrap().len()
    }
}
