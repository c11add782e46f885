//! An execution's event stream, from the agent's pipe to its readers, one file per step:
//! `recorder.rs` the write end (what executors write through, with the log budget) into the
//! store; `bus.rs` the seam through which committed batches reach followers (`local.rs` the
//! in-process bus); `follow.rs` the read end (stored events, then live ones, exactly once).

pub mod bus;
mod follow;
pub mod local;
mod recorder;

pub use bus::{Batch, Bus, Live, SharedEvent, Subscription, batch};
pub use follow::{Follow, Followed};
pub use local::LocalBus;
pub use recorder::Recorder;
