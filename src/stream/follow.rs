//! The read end of an execution's stream: `Follow` gets a reader every event exactly once, in
//! order, stored ones first, then live ones from the bus.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures_util::future::BoxFuture;

use bytes::Bytes;

use crate::bus::{Batch, Bus, Live, Subscription};
use crate::domain::{Event, Execution, ExecutionId, Status};
use crate::store::{self, Store};

/// Events read from the store per round trip while catching up: at most this many, and no
/// more than about `PAGE_BYTES` of data, because a follower holds its page until its reader
/// has taken every event (a thousand 16 KiB lines would be 16 MB per follower).
const PAGE: usize = 1000;
const PAGE_BYTES: usize = 256 * 1024;

/// Follows one execution's stream from `since` (exclusive) to its final status event.
///
/// It subscribes to live events before reading the store, so nothing published in between is
/// missed; it drops live events it already has; and whenever the live feed has a hole (it
/// lagged, or joined late) it reads the hole from the store, where every published event
/// already is. Hence: every event once, in order, whatever the timing.
///
/// It is a poll-driven state machine (`poll_next`) so that a WebSocket connection can drive many
/// of them from its one task; an idle follower is this struct and its bus subscription.
pub struct Follow {
    /// The execution's status and last seq when following began (after subscribing).
    pub start_status: Status,
    pub start_last_seq: u64,
    store: Arc<dyn Store>,
    id: ExecutionId,
    last_seq: u64,
    live: Subscription,
    /// A store read in flight while catching up.
    reading: Option<BoxFuture<'static, store::Result<Vec<Event>>>>,
    /// Events read from the store, not delivered yet.
    queue: VecDeque<Event>,
    /// The live batch being delivered, and the position in it. Shared with every other follower
    /// of the execution, never copied: a thousand followers of a large commit hold one batch.
    batch: Option<(Batch, usize)>,
    catching_up: bool,
    live_closed: bool,
    /// Deliver what is committed, then end (`drain`).
    draining: bool,
    /// The follow had nothing to deliver from the start (finished, and `since` at its end).
    started_complete: bool,
    /// The final status event was delivered.
    saw_final: bool,
    done: bool,
}

impl Follow {
    pub async fn start(
        store: Arc<dyn Store>,
        bus: &dyn Bus,
        execution: &Execution,
        since: u64,
    ) -> store::Result<Follow> {
        let id = execution.execution_id.clone();
        // Live before the store is read: whatever commits in between arrives on it.
        let live = bus.subscribe(&id).await;
        // Re-read after subscribing: if it is finished now, its last event is in the store.
        let (start_status, start_last_seq) = match store.get_execution(&id).await {
            Ok(found) => found.map_or((execution.status, execution.last_seq), |e| {
                (e.status, e.last_seq)
            }),
            Err(e) => return Err(e),
        };
        let done = start_status.is_terminal() && start_last_seq <= since;
        Ok(Follow {
            start_status,
            start_last_seq,
            store,
            id,
            last_seq: since,
            live,
            reading: None,
            queue: VecDeque::new(),
            batch: None,
            catching_up: true,
            live_closed: false,
            draining: false,
            started_complete: done,
            saw_final: false,
            done,
        })
    }

    /// The next event, or `None` once the final status event has been delivered (after `drain`,
    /// once every committed event has).
    pub async fn next(&mut self) -> store::Result<Option<Event>> {
        let next = std::future::poll_fn(|cx| self.poll_next(cx)).await;
        next.map(|followed| followed.map(Followed::into_event))
    }

    /// `next` for callers that drive followers by hand, without copying live events: what
    /// comes live is a place in the batch every follower of the execution shares.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<store::Result<Option<Followed>>> {
        loop {
            if let Some(event) = self.pop_queued() {
                return Poll::Ready(Ok(Some(event)));
            }
            if self.done {
                return Poll::Ready(Ok(None));
            }
            if self.draining && !self.catching_up {
                // Read up to the end of the store, which holds everything committed.
                self.done = true;
                return Poll::Ready(Ok(None));
            }
            if self.catching_up {
                let reading = self.reading.get_or_insert_with(|| {
                    let (store, id, after) = (self.store.clone(), self.id.clone(), self.last_seq);
                    Box::pin(async move { store.events(&id, after, PAGE, PAGE_BYTES).await })
                });
                let page = ready!(reading.as_mut().poll(cx));
                self.reading = None;
                let page = page?;
                let bytes: usize = page.iter().map(|e| e.data.get().len()).sum();
                if page.len() < PAGE && bytes < PAGE_BYTES {
                    self.catching_up = false;
                    // Finished before we began: the store holds all there will ever be, even
                    // when its end could not be stored as an event (`ended_unrecorded`).
                    if self.start_status.is_terminal() {
                        self.done = true;
                    }
                }
                if page.is_empty() && self.live_closed {
                    // The stream ended at or before `since`.
                    self.done = true;
                }
                self.queue.extend(page);
                continue;
            }
            match ready!(self.live.poll_next(cx)) {
                Live::Batch(batch) => {
                    let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
                        continue;
                    };
                    let (first, last) = (&first.event, &last.event);
                    if last.seq <= self.last_seq {
                        continue;
                    }
                    if first.seq > self.last_seq + 1 {
                        self.catching_up = true;
                        continue;
                    }
                    self.batch = Some((batch, 0));
                }
                Live::Lagged => self.catching_up = true,
                Live::Closed => {
                    self.live_closed = true;
                    self.catching_up = true;
                }
            }
        }
    }

    /// The next event already read (from the store or a live batch), skipping any the reader
    /// has.
    fn pop_queued(&mut self) -> Option<Followed> {
        loop {
            let followed = if let Some(event) = self.queue.pop_front() {
                Followed::Stored(event)
            } else if let Some((batch, next)) = &mut self.batch {
                let Some(shared) = batch.get(*next) else {
                    self.batch = None;
                    continue;
                };
                *next += 1;
                if shared.event.seq <= self.last_seq {
                    continue;
                }
                Followed::Live(batch.clone(), *next - 1)
            } else {
                // An idle follower keeps no buffer (after catching up, a large one).
                self.queue = VecDeque::new();
                return None;
            };
            let event = followed.event();
            if event.seq <= self.last_seq {
                continue;
            }
            self.last_seq = event.seq;
            if event.status().is_some_and(|s| s.is_terminal()) {
                self.done = true;
                self.saw_final = true;
                self.queue.clear();
                self.batch = None;
            }
            return Some(followed);
        }
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Whether the follow ended because the execution did, without a final status event to
    /// deliver: the store could not write it (the execution's record has its end). A client
    /// must be told, or it would wait for that event for ever.
    pub fn ended_unrecorded(&self) -> bool {
        self.done && !self.saw_final && !self.started_complete && !self.draining
    }

    /// Ends the follow once every event committed so far has been delivered, instead of waiting
    /// for live ones: for a server that is closing, after the runtime has committed everything.
    pub fn drain(&mut self) {
        self.draining = true;
        self.catching_up = true;
    }
}

/// An event a follower delivers: read from the store (its own copy), or live (a place in the
/// batch that every follower of the execution shares).
pub enum Followed {
    Stored(Event),
    Live(Batch, usize),
}

impl Followed {
    pub fn event(&self) -> &Event {
        match self {
            Followed::Stored(event) => event,
            Followed::Live(batch, at) => &batch[*at].event,
        }
    }

    pub fn into_event(self) -> Event {
        match self {
            Followed::Stored(event) => event,
            Followed::Live(batch, at) => batch[at].event.clone(),
        }
    }

    /// The event's text as `make` writes it: for a live event, made once and shared by every
    /// follower (`SharedEvent::text`).
    pub fn text(&self, make: impl FnOnce(&Event) -> String) -> Bytes {
        match self {
            Followed::Stored(event) => Bytes::from(make(event)),
            Followed::Live(batch, at) => batch[*at].text(make),
        }
    }
}
