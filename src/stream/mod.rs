//! An execution's event stream between the store and its readers: `bus` the seam through
//! which committed batches reach followers (`local` the in-process bus).

pub mod bus;
pub mod local;

pub use bus::{Batch, Bus, Live, Subscription};
pub use local::LocalBus;
