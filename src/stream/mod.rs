//! An execution's event stream at both ends, beside the bus that joins them: `recorder.rs` the
//! write end (what executors write through, with the log budget) into the store, which
//! publishes each commit on the bus (`crate::bus`); `follow.rs` the read end (stored events,
//! then live ones from the bus, exactly once).

mod follow;
mod recorder;

pub use follow::{Follow, Followed};
pub use recorder::{DEFAULT_MAX_SPANS, Recorder};
